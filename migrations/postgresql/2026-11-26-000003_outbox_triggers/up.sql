-- The outbox is filled by triggers on the Genesis tables, in the same
-- transaction as the change, so a change made by the SIS itself is caught.
-- Triggers record changes once setup has a cutoff date; `cpsync setup cutoff`
-- enqueues the fees that already exist. Only Genesis-recorded transactions
-- change what is pushed (Community Pass ones came from the vendor).
-- On PostgreSQL each enqueue also sends NOTIFY cp_outbox, so `cpsync watch`
-- wakes at once.

CREATE FUNCTION cp_enqueue_fee_change() RETURNS trigger AS $$
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
        IF TG_OP = 'DELETE' THEN
            IF OLD.source <> 'genesis' THEN RETURN NULL; END IF;
            changed_fee_id := OLD.fee_id;
        ELSE
            IF NEW.source <> 'genesis' THEN RETURN NULL; END IF;
            changed_fee_id := NEW.fee_id;
        END IF;
        change_reason := 'transaction_' || lower(TG_OP);
    END IF;
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        VALUES (changed_fee_id, change_reason, now() AT TIME ZONE 'UTC');
    PERFORM pg_notify('cp_outbox', changed_fee_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER cp_outbox_fee_change AFTER INSERT OR UPDATE OR DELETE ON student_fees
    FOR EACH ROW EXECUTE FUNCTION cp_enqueue_fee_change();
CREATE TRIGGER cp_outbox_transaction_change AFTER INSERT OR UPDATE OR DELETE ON fee_transactions
    FOR EACH ROW EXECUTE FUNCTION cp_enqueue_fee_change();
