DROP TABLE cp_locks;
DROP TABLE cp_unprocessed;
