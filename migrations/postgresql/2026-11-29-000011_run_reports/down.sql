DROP TABLE cp_run_reports;
