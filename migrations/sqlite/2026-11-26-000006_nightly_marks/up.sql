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

-- A posted Community Pass transaction edited or deleted in Genesis is a
-- change the nightly must see (an incremental run reads the outbox): the
-- update and delete triggers now fire whatever the row's source, and an
-- update that moves a transaction to another fee names both fees. Inserts
-- of Community Pass rows (cpsync's own postings) still enqueue nothing.
DROP TRIGGER cp_outbox_transaction_update;
DROP TRIGGER cp_outbox_transaction_delete;

CREATE TRIGGER cp_outbox_transaction_update AFTER UPDATE ON fee_transactions
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (NEW.fee_id, 'transaction_update', strftime('%Y-%m-%d %H:%M:%f', 'now'));
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        SELECT OLD.fee_id, 'transaction_update', strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE OLD.fee_id <> NEW.fee_id;
END;

CREATE TRIGGER cp_outbox_transaction_delete AFTER DELETE ON fee_transactions
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (OLD.fee_id, 'transaction_delete', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;
