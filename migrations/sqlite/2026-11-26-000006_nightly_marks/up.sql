-- The anchor of an incremental nightly: what a completed nightly run over
-- the whole district had read when it started — the outbox position (the
-- highest id, and the ids below it not visible yet: a Genesis transaction
-- still open then), Community Pass's clock and the transaction log
-- position — and the fingerprint of the sending policy it ran under.
-- `cpsync nightly --incremental` examines only what changed since the
-- latest mark, and runs in full when there is none or the policy changed.
CREATE TABLE cp_nightly_marks (
    run_id BIGINT PRIMARY KEY NOT NULL REFERENCES cp_runs (id),
    coverage TEXT NOT NULL CHECK (coverage IN ('full', 'incremental')),
    outbox_id BIGINT NOT NULL CHECK (outbox_id >= 0),
    outbox_gaps TEXT NOT NULL,
    vendor_as_of TIMESTAMP NOT NULL,
    txn_sequence BIGINT NOT NULL CHECK (txn_sequence >= 0),
    policy_fingerprint TEXT NOT NULL,
    full_run_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
