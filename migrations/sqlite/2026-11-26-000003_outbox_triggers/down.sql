DROP TRIGGER cp_outbox_fee_insert;
DROP TRIGGER cp_outbox_fee_update;
DROP TRIGGER cp_outbox_fee_delete;
DROP TRIGGER cp_outbox_transaction_insert;
DROP TRIGGER cp_outbox_transaction_update;
DROP TRIGGER cp_outbox_transaction_delete;
