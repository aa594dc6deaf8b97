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

DROP TABLE cp_nightly_marks;
