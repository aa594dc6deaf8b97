DROP TRIGGER cp_outbox_transaction_update;
DROP TRIGGER cp_outbox_transaction_delete;

CREATE TRIGGER cp_outbox_transaction_update AFTER UPDATE ON fee_transactions
WHEN NEW.source = 'genesis' AND EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (NEW.fee_id, 'transaction_update', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

CREATE TRIGGER cp_outbox_transaction_delete AFTER DELETE ON fee_transactions
WHEN OLD.source = 'genesis' AND EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (OLD.fee_id, 'transaction_delete', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

DROP TABLE cp_nightly_marks;
