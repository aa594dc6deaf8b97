DROP TABLE cp_nightly_marks;
