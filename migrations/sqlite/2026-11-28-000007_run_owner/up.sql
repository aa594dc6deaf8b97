-- Who ran each run (pid and host), so a run whose process is gone can be
-- marked 'interrupted' by the next command that looks, instead of staying
-- 'running' for ever. The status check also admits 'not_converged' (a
-- nightly whose corrections did not all hold), which the engine records. SQLite cannot alter a CHECK constraint: the table is
-- rebuilt (the documented twelve steps), keeping every row and id.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE cp_runs_new (
    id INTEGER PRIMARY KEY NOT NULL,
    task TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'needs_review', 'failed', 'not_converged', 'interrupted')),
    dry_run BOOLEAN NOT NULL,
    records_in BIGINT NOT NULL DEFAULT 0,
    matched BIGINT NOT NULL DEFAULT 0,
    corrected BIGINT NOT NULL DEFAULT 0,
    needs_review BIGINT NOT NULL DEFAULT 0,
    summary_json TEXT,
    error TEXT,
    pid BIGINT,
    host TEXT
);
INSERT INTO cp_runs_new (id, task, trigger, started_at, finished_at, status, dry_run, records_in, matched, corrected, needs_review, summary_json, error)
    SELECT id, task, trigger, started_at, finished_at, status, dry_run, records_in, matched, corrected, needs_review, summary_json, error FROM cp_runs;
DROP TABLE cp_runs;
ALTER TABLE cp_runs_new RENAME TO cp_runs;
CREATE INDEX cp_runs_task_started ON cp_runs (task, started_at);
CREATE INDEX cp_runs_running ON cp_runs (status) WHERE status = 'running';
COMMIT;
PRAGMA foreign_keys = ON;
