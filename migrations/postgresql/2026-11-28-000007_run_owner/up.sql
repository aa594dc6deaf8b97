-- Who ran each run (pid and host), so a run whose process is gone can be
-- marked 'interrupted' by the next command that looks, instead of staying
-- 'running' for ever. The status check also admits 'not_converged' (a
-- nightly whose corrections did not all hold), which the engine records.
ALTER TABLE cp_runs DROP CONSTRAINT cp_runs_status_check;
ALTER TABLE cp_runs ADD CONSTRAINT cp_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'needs_review', 'failed', 'not_converged', 'interrupted'));
ALTER TABLE cp_runs ADD COLUMN pid BIGINT, ADD COLUMN host TEXT;
CREATE INDEX cp_runs_running ON cp_runs (status) WHERE status = 'running';
