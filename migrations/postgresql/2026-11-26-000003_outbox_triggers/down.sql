DROP TRIGGER cp_outbox_transaction_change ON fee_transactions;
DROP TRIGGER cp_outbox_fee_change ON student_fees;
DROP FUNCTION cp_enqueue_fee_change();
