-- The outbox is filled by triggers on the Genesis tables, in the same
-- transaction as the change, so a change made by the SIS itself is caught.
-- Triggers record changes once setup has a cutoff date; `cpsync setup cutoff`
-- enqueues the fees that already exist. Only Genesis-recorded transactions
-- change what is pushed (Community Pass ones came from the vendor).

CREATE TRIGGER cp_outbox_fee_insert AFTER INSERT ON student_fees
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (NEW.id, 'fee_insert', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

CREATE TRIGGER cp_outbox_fee_update AFTER UPDATE ON student_fees
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (NEW.id, 'fee_update', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

CREATE TRIGGER cp_outbox_fee_delete AFTER DELETE ON student_fees
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (OLD.id, 'fee_delete', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

CREATE TRIGGER cp_outbox_transaction_insert AFTER INSERT ON fee_transactions
WHEN NEW.source = 'genesis' AND EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at) VALUES (NEW.fee_id, 'transaction_insert', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;

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
