PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE cp_runs_old (
    id INTEGER PRIMARY KEY NOT NULL,
    task TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'needs_review', 'failed')),
    dry_run BOOLEAN NOT NULL,
    records_in BIGINT NOT NULL DEFAULT 0,
    matched BIGINT NOT NULL DEFAULT 0,
    corrected BIGINT NOT NULL DEFAULT 0,
    needs_review BIGINT NOT NULL DEFAULT 0,
    summary_json TEXT,
    error TEXT
);
INSERT INTO cp_runs_old (id, task, trigger, started_at, finished_at, status, dry_run, records_in, matched, corrected, needs_review, summary_json, error)
    SELECT id, task, trigger, started_at, finished_at,
           CASE WHEN status IN ('interrupted', 'not_converged') THEN 'failed' ELSE status END,
           dry_run, records_in, matched, corrected, needs_review, summary_json, error
    FROM cp_runs;
DROP TABLE cp_runs;
ALTER TABLE cp_runs_old RENAME TO cp_runs;
CREATE INDEX cp_runs_task_started ON cp_runs (task, started_at);
COMMIT;
PRAGMA foreign_keys = ON;
