-- The integration's own tables, all prefixed cp_, kept apart from Genesis's.
-- Money is integer cents.

-- Setup values (api key fingerprint, categories, cutoff, portal options...).
CREATE TABLE cp_settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- The five tasks' enable switches.
CREATE TABLE cp_tasks (
    name TEXT PRIMARY KEY NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
INSERT INTO cp_tasks (name, enabled, updated_at) VALUES
    ('send_fees', 1, CURRENT_TIMESTAMP),
    ('get_payments', 1, CURRENT_TIMESTAMP),
    ('get_balances', 1, CURRENT_TIMESTAMP),
    ('nightly_sync', 1, CURRENT_TIMESTAMP),
    ('demographic_export', 1, CURRENT_TIMESTAMP);

-- Run history: one row per run of any task.
CREATE TABLE cp_runs (
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
CREATE INDEX cp_runs_task_started ON cp_runs (task, started_at);

-- Each Genesis fee created through the integration, its vendor id, what was
-- last pushed, and the amount lock set once Community Pass applied a payment.
CREATE TABLE cp_fee_links (
    fee_id BIGINT PRIMARY KEY NOT NULL,
    vendor_fee_id TEXT,
    first_sent_at TIMESTAMP,
    last_pushed_at TIMESTAMP,
    pushed_amount_cents BIGINT,
    pushed_status TEXT,
    pushed_credit_cents BIGINT,
    last_idempotency_key TEXT,
    amount_locked BOOLEAN NOT NULL DEFAULT 0,
    locked_at TIMESTAMP,
    locked_by_vendor_txn TEXT,
    last_run_id BIGINT
);

-- Changes waiting to be pushed: filled in the same transaction as the change,
-- drained by send-fees, watch and every other run.
CREATE TABLE cp_outbox (
    id INTEGER PRIMARY KEY NOT NULL,
    fee_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    enqueued_at TIMESTAMP NOT NULL,
    processed_at TIMESTAMP,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    run_id BIGINT
);
CREATE INDEX cp_outbox_pending ON cp_outbox (processed_at, id);

-- Positions on the vendor's monotonic cursors (e.g. the transaction sequence).
CREATE TABLE cp_cursors (
    name TEXT PRIMARY KEY NOT NULL,
    position BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- Whole-account balances per patron, for the parent portal.
CREATE TABLE cp_balances (
    patron_id TEXT PRIMARY KEY NOT NULL,
    balance_cents BIGINT NOT NULL,
    integration_balance_cents BIGINT NOT NULL,
    other_balance_cents BIGINT NOT NULL,
    as_of TIMESTAMP NOT NULL,
    run_id BIGINT
);

-- What each reconciliation run found, and what became of it.
CREATE TABLE cp_discrepancies (
    id INTEGER PRIMARY KEY NOT NULL,
    run_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    fee_id BIGINT,
    student_id BIGINT,
    vendor_txn_id TEXT,
    genesis_value TEXT,
    cp_value TEXT,
    resolution TEXT NOT NULL,
    action TEXT,
    reason TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX cp_discrepancies_run ON cp_discrepancies (run_id);
CREATE INDEX cp_discrepancies_fee ON cp_discrepancies (fee_id);

-- One row per change the integration made on either side, with its run id.
CREATE TABLE cp_audit_log (
    id INTEGER PRIMARY KEY NOT NULL,
    run_id BIGINT,
    at TIMESTAMP NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('genesis', 'community_pass', 'integration')),
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX cp_audit_log_entity ON cp_audit_log (entity, entity_id);
CREATE INDEX cp_audit_log_run ON cp_audit_log (run_id);
