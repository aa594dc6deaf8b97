-- The review queue with memory: one row per thing a person has to look at,
-- identified across runs by (fee, kind, vendor transaction) in `item_key`.
-- Whole-district nightly runs keep it current in the transaction that
-- records their discrepancies: a new item is `new`, seen again `open`;
-- one whose cause went away is `resolved_automatically` (with the run);
-- a person acknowledges (`acknowledged`) or resolves
-- (`resolved_by_person`: who, when, note), and a resolved-by-person item
-- stays resolved.
CREATE TABLE cp_review_items (
    id INTEGER PRIMARY KEY NOT NULL,
    item_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    fee_id BIGINT,
    student_id BIGINT,
    vendor_txn_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('new', 'open', 'acknowledged', 'resolved_automatically', 'resolved_by_person')),
    at_stake_cents BIGINT NOT NULL,
    reason TEXT,
    genesis_value TEXT,
    cp_value TEXT,
    first_seen_run BIGINT NOT NULL,
    first_seen_at TIMESTAMP NOT NULL,
    last_seen_run BIGINT NOT NULL,
    last_seen_at TIMESTAMP NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at TIMESTAMP,
    acknowledged_note TEXT,
    resolved_run BIGINT,
    resolved_at TIMESTAMP,
    resolved_by TEXT,
    resolved_note TEXT
);
CREATE INDEX cp_review_items_state ON cp_review_items (state);
CREATE INDEX cp_review_items_fee ON cp_review_items (fee_id);
