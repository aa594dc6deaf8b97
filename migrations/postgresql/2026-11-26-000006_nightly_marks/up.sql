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
-- trigger now fires on updates and deletes whatever the row's source, and
-- an update that moves a transaction to another fee names both fees.
-- Inserts of Community Pass rows (cpsync's own postings) still enqueue
-- nothing.
CREATE OR REPLACE FUNCTION cp_enqueue_fee_change() RETURNS trigger AS $$
DECLARE
    changed_fee_id BIGINT;
    change_reason TEXT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null') THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'student_fees' THEN
        IF TG_OP = 'DELETE' THEN
            changed_fee_id := OLD.id;
        ELSE
            changed_fee_id := NEW.id;
        END IF;
        change_reason := 'fee_' || lower(TG_OP);
    ELSE
        IF TG_OP = 'INSERT' AND NEW.source <> 'genesis' THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'DELETE' THEN
            changed_fee_id := OLD.fee_id;
        ELSE
            changed_fee_id := NEW.fee_id;
        END IF;
        change_reason := 'transaction_' || lower(TG_OP);
        IF TG_OP = 'UPDATE' AND OLD.fee_id <> NEW.fee_id THEN
            INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
                VALUES (OLD.fee_id, change_reason, now() AT TIME ZONE 'UTC');
            PERFORM pg_notify('cp_outbox', OLD.fee_id::text);
        END IF;
    END IF;
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        VALUES (changed_fee_id, change_reason, now() AT TIME ZONE 'UTC');
    PERFORM pg_notify('cp_outbox', changed_fee_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
