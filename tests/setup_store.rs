//! Setup values and the outbox triggers on both backends: settings round
//! trip with an audit row per change, the API key never stored (only its
//! fingerprint) and never in the audit trail,
//! and the triggers enqueueing exactly the changes that must be pushed.

mod common;

use chrono::{NaiveDate, NaiveDateTime};
use common::{Backend, TestDb};
use cpsync::db::{audit, settings, DbConnection};
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::setup::{CategorySelection, PatronIdRule, SetupStep};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

fn now() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 8, 1)
        .unwrap()
        .and_hms_opt(9, 30, 0)
        .unwrap()
}

fn settings_round_trip(backend: Backend) {
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    let fresh = settings::load_setup(&mut conn).unwrap();
    assert_eq!(fresh.next_step(), Some(SetupStep::ApiKey));

    let key = Secret::new("cp_live_0123456789abcdef");
    let (mut state, _) = settings::record_api_key(&mut conn, &key, "north", now()).unwrap();
    assert_eq!(
        state.api_key_fingerprint.as_deref(),
        Some(settings::fingerprint(&key).as_str())
    );
    assert!(settings::legacy_plain_api_key(&mut conn).unwrap().is_none());
    state.categories = CategorySelection::Only(["LAB".into(), "TECH".into()].into());
    state.categories_confirmed_at = Some(now());
    state.patron_id = PatronIdRule::BillingGuardianId;
    state.excluded_schools.insert("HS02".into());
    state.portal.lock_out_on_balance = true;
    let changed = settings::save_setup(&mut conn, &state, now()).unwrap();
    assert_eq!(changed, 5);
    assert_eq!(
        settings::save_setup(&mut conn, &state, now()).unwrap(),
        0,
        "no change, no write"
    );
    assert_eq!(settings::load_setup(&mut conn).unwrap(), state);

    let trail = audit::for_entity(&mut conn, "setting", "categories").unwrap();
    assert_eq!(trail.len(), 1);
    let fingerprint_rows = audit::for_entity(&mut conn, "setting", "api_key_fingerprint").unwrap();
    assert_eq!(fingerprint_rows.len(), 1);
    let everything: Vec<String> = cpsync::db::schema::cp_audit_log::table
        .select(cpsync::db::schema::cp_audit_log::detail.assume_not_null())
        .load(&mut conn)
        .unwrap();
    assert!(
        everything.iter().all(|d| !d.contains("cp_live_")),
        "key leaked: {everything:?}"
    );
}

#[test]
fn sqlite_settings_round_trip() {
    settings_round_trip(Backend::Sqlite);
}

#[test]
fn postgres_settings_round_trip() {
    settings_round_trip(Backend::Postgres);
}

fn outbox(conn: &mut DbConnection) -> Vec<(i64, String)> {
    use cpsync::db::schema::cp_outbox::dsl::*;
    cp_outbox
        .order(id)
        .select((fee_id, reason))
        .load(conn)
        .unwrap()
}

fn triggers_fill_the_outbox(backend: Backend) {
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    seed::store(
        &mut conn,
        &seed::generate(SeedOptions {
            students: 20,
            seed: 4,
        }),
    )
    .unwrap();
    assert!(
        outbox(&mut conn).is_empty(),
        "nothing is captured before setup has a cutoff"
    );

    let mut state = settings::load_setup(&mut conn).unwrap();
    state.cutoff = NaiveDate::from_ymd_opt(2026, 7, 1);
    settings::save_setup(&mut conn, &state, now()).unwrap();

    conn.batch_execute(
        "INSERT INTO student_fees (id, student_id, category_code, school_code, description, \
         amount_cents, fee_date, due_date, status, created_at, modified_at) \
         SELECT 777001, id, 'LAB', school_code, 'Chemistry lab fee', 3500, '2026-09-15', NULL, \
         'open', '2026-09-15 08:00:00', '2026-09-15 08:00:00' FROM students ORDER BY id LIMIT 1",
    )
    .unwrap();
    conn.batch_execute("UPDATE student_fees SET amount_cents = 4000 WHERE id = 777001")
        .unwrap();
    conn.batch_execute(
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
         VALUES (777001, 'payment', 1000, 'cash', 'genesis', '2026-09-16 10:00:00')",
    )
    .unwrap();
    conn.batch_execute(
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, vendor_txn_id, posted_at) \
         VALUES (777001, 'payment', 500, 'card', 'community_pass', 'cp-1', '2026-09-16 11:00:00')",
    )
    .unwrap();
    conn.batch_execute("DELETE FROM student_fees WHERE id = 777001")
        .unwrap();
    let expected: Vec<(i64, String)> = [
        "fee_insert",
        "fee_update",
        "transaction_insert",
        "fee_delete",
    ]
    .iter()
    .map(|r| (777001, r.to_string()))
    .collect();
    assert_eq!(outbox(&mut conn), expected, "{backend:?}");
}

#[test]
fn sqlite_triggers_fill_the_outbox() {
    triggers_fill_the_outbox(Backend::Sqlite);
}

#[test]
fn postgres_triggers_fill_the_outbox() {
    triggers_fill_the_outbox(Backend::Postgres);
}
