-- Each nightly run's report as it was built (the `RunReport` as JSON), kept
-- with the run: `cpsync report --run ID` rebuilds the files and resends the
-- email from it even when the report folder could not be written at the
-- time (read-only, full disk) or the files were since removed.
CREATE TABLE cp_run_reports (
    run_id BIGINT PRIMARY KEY NOT NULL,
    report_json TEXT NOT NULL,
    stored_at TIMESTAMP NOT NULL
);
