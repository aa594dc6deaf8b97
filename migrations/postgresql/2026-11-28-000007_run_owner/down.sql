DROP INDEX cp_runs_running;
ALTER TABLE cp_runs DROP COLUMN pid, DROP COLUMN host;
UPDATE cp_runs SET status = 'failed' WHERE status IN ('interrupted', 'not_converged');
ALTER TABLE cp_runs DROP CONSTRAINT cp_runs_status_check;
ALTER TABLE cp_runs ADD CONSTRAINT cp_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'needs_review', 'failed'));
