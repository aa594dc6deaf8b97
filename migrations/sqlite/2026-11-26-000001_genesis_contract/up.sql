-- The Genesis side: the tables cpsync reads and writes in the district's SIS.
-- This is a contract, not Genesis's real schema: a district whose schema
-- differs maps it onto these names with SQL views. Money is integer cents.

CREATE TABLE schools (
    code TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    low_grade TEXT NOT NULL,
    high_grade TEXT NOT NULL
);

CREATE TABLE students (
    id BIGINT PRIMARY KEY NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    grade TEXT NOT NULL,
    school_code TEXT NOT NULL REFERENCES schools (code),
    status TEXT NOT NULL CHECK (status IN ('active', 'withdrawn')),
    birth_date DATE NOT NULL,
    email TEXT
);
CREATE INDEX students_school ON students (school_code);

CREATE TABLE guardians (
    id BIGINT PRIMARY KEY NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    portal_username TEXT UNIQUE
);

-- A student may have guardians in two households (household 1 and 2).
CREATE TABLE student_guardians (
    student_id BIGINT NOT NULL REFERENCES students (id),
    guardian_id BIGINT NOT NULL REFERENCES guardians (id),
    relationship TEXT NOT NULL,
    household INTEGER NOT NULL CHECK (household >= 1),
    portal_access BOOLEAN NOT NULL,
    billing_contact BOOLEAN NOT NULL,
    PRIMARY KEY (student_id, guardian_id)
);
CREATE INDEX student_guardians_guardian ON student_guardians (guardian_id);

-- The FEE_CATEGORY codes.
CREATE TABLE fee_categories (
    code TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    default_amount_cents BIGINT NOT NULL CHECK (default_amount_cents >= 0)
);

CREATE TABLE student_fees (
    id BIGINT PRIMARY KEY NOT NULL,
    student_id BIGINT NOT NULL REFERENCES students (id),
    category_code TEXT NOT NULL REFERENCES fee_categories (code),
    school_code TEXT NOT NULL REFERENCES schools (code),
    description TEXT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    fee_date DATE NOT NULL,
    due_date DATE,
    status TEXT NOT NULL CHECK (status IN ('open', 'waived', 'void')),
    created_at TIMESTAMP NOT NULL,
    modified_at TIMESTAMP NOT NULL
);
CREATE INDEX student_fees_student ON student_fees (student_id);
CREATE INDEX student_fees_modified ON student_fees (modified_at);

-- Payments, refunds, waivers and reversals recorded against a fee. Rows that
-- came from Community Pass carry the vendor's transaction id, unique.
-- fee_id has no foreign key: Genesis may delete a fee after it was paid, and
-- its transactions must survive to be reported.
CREATE TABLE fee_transactions (
    id INTEGER PRIMARY KEY NOT NULL,
    fee_id BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('payment', 'refund', 'waiver', 'reversal')),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    method TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('genesis', 'community_pass')),
    vendor_txn_id TEXT UNIQUE,
    posted_at TIMESTAMP NOT NULL,
    note TEXT
);
CREATE INDEX fee_transactions_fee ON fee_transactions (fee_id);
