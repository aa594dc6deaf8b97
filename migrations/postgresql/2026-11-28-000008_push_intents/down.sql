DROP TRIGGER cp_outbox_guardian_change ON student_guardians;
DROP FUNCTION cp_enqueue_guardian_change();
ALTER TABLE cp_fee_links DROP COLUMN refused_at;
ALTER TABLE cp_fee_links DROP COLUMN refused_reason;
ALTER TABLE cp_fee_links DROP COLUMN refused_digest;
ALTER TABLE cp_fee_links DROP COLUMN pushed_revision;
ALTER TABLE cp_fee_links DROP COLUMN pushed_digest;
ALTER TABLE cp_fee_links DROP COLUMN intent_digest;
ALTER TABLE cp_fee_links DROP COLUMN intent_seq;
