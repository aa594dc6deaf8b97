-- Each report email: recorded as 'sending' before it goes out and marked
-- 'sent' (or 'failed') after, so a re-run of a night does not mail twice
-- unless asked. 'written' is a message saved as an .eml file instead (no
-- SMTP configured). Never holds a password.
CREATE TABLE cp_report_mail (
    id INTEGER PRIMARY KEY NOT NULL,
    run_id BIGINT NOT NULL REFERENCES cp_runs (id),
    recipients TEXT NOT NULL,
    transport TEXT NOT NULL CHECK (transport IN ('smtp', 'eml')),
    status TEXT NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'written')),
    message_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    error TEXT
);
CREATE INDEX cp_report_mail_run ON cp_report_mail (run_id, status);
