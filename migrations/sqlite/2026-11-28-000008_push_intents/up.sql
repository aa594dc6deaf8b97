-- A push names one intended write, not a body: each intent gets the next
-- sequence number of its fee (`intent_seq`), its content digest is kept
-- beside the digest of the last push Community Pass acknowledged, so
-- "unchanged" compares every field Community Pass shows, and returning a fee
-- to an earlier state is a new intent that is applied. A push Community Pass
-- refused for a reason a retry cannot fix is held (`refused_*`) until the
-- fee changes again or is re-sent.
ALTER TABLE cp_fee_links ADD COLUMN intent_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cp_fee_links ADD COLUMN intent_digest TEXT;
ALTER TABLE cp_fee_links ADD COLUMN pushed_digest TEXT;
ALTER TABLE cp_fee_links ADD COLUMN pushed_revision BIGINT;
ALTER TABLE cp_fee_links ADD COLUMN refused_digest TEXT;
ALTER TABLE cp_fee_links ADD COLUMN refused_reason TEXT;
ALTER TABLE cp_fee_links ADD COLUMN refused_at TIMESTAMP;

-- A guardian linked to or unlinked from a student in Genesis changes who
-- sees the student's fees in Community Pass (and, under the billing
-- guardian rule, the patron): every fee of that student is enqueued.
CREATE TRIGGER cp_outbox_guardian_insert AFTER INSERT ON student_guardians
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        SELECT id, 'guardian_link', strftime('%Y-%m-%d %H:%M:%f', 'now') FROM student_fees WHERE student_id = NEW.student_id;
END;

CREATE TRIGGER cp_outbox_guardian_update AFTER UPDATE ON student_guardians
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        SELECT id, 'guardian_link', strftime('%Y-%m-%d %H:%M:%f', 'now') FROM student_fees WHERE student_id IN (OLD.student_id, NEW.student_id);
END;

CREATE TRIGGER cp_outbox_guardian_delete AFTER DELETE ON student_guardians
WHEN EXISTS (SELECT 1 FROM cp_settings WHERE key = 'cutoff' AND value <> 'null')
BEGIN
    INSERT INTO cp_outbox (fee_id, reason, enqueued_at)
        SELECT id, 'guardian_link', strftime('%Y-%m-%d %H:%M:%f', 'now') FROM student_fees WHERE student_id = OLD.student_id;
END;
