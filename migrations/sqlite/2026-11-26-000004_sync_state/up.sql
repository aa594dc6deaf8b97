-- Community Pass transactions that were pulled but could not be applied in
-- Genesis (the fee is gone, the student is unknown...), with the reason.
-- Each is retried by later pulls and marked resolved once posted.
CREATE TABLE cp_unprocessed (
    vendor_txn_id TEXT PRIMARY KEY NOT NULL,
    fee_id BIGINT,
    student_id BIGINT,
    kind TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    first_seen_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL,
    run_id BIGINT,
    resolved_at TIMESTAMP
);

-- One row per held lock: one nightly (or other exclusive task) at a time per
-- district. SQLite has no advisory locks; PostgreSQL uses pg_try_advisory_lock
-- and records the holder here too, for messages.
CREATE TABLE cp_locks (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    pid BIGINT NOT NULL,
    run_id BIGINT,
    acquired_at TIMESTAMP NOT NULL
);
