DROP TABLE fee_transactions;
DROP TABLE student_fees;
DROP TABLE fee_categories;
DROP TABLE student_guardians;
DROP TABLE guardians;
DROP TABLE students;
DROP TABLE schools;
