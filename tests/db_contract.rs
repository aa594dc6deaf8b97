//! The Genesis data contract on both backends: migrations up, down and up
//! again, exact money at the boundary, reproducible seeding, and clear
//! errors for bad database URLs.

mod common;

use common::{cpsync, Backend, TestDb, BACKENDS};
use cpsync::db::{genesis, migrate, runs};
use cpsync::domain::{FeeId, FeeStatus, GenesisFee, NewGenesisTxn, TxnKind, TxnSource};
use cpsync::money::Money;
use cpsync::seed::{self, SeedOptions};

fn migrations_round_trip(backend: Backend) {
    let test_db = TestDb::empty(backend);
    let mut conn = test_db.connect_creating();
    let applied = migrate::run_pending(&mut conn).unwrap();
    assert!(applied.len() >= 3, "{applied:?}");
    assert_eq!(migrate::pending_count(&mut conn).unwrap(), 0);
    let reverted = migrate::revert_all(&mut conn).unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(migrate::pending_count(&mut conn).unwrap(), applied.len());
    assert_eq!(
        migrate::run_pending(&mut conn).unwrap().len(),
        applied.len()
    );
    let district = seed::generate(SeedOptions {
        students: 50,
        seed: 1,
    });
    seed::store(&mut conn, &district).unwrap();
}

#[test]
fn sqlite_migrations_go_down_and_up() {
    migrations_round_trip(Backend::Sqlite);
}

#[test]
fn postgres_migrations_go_down_and_up() {
    migrations_round_trip(Backend::Postgres);
}

fn seeded_rows(backend: Backend, options: SeedOptions) -> (Vec<GenesisFee>, Vec<String>) {
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    let district = seed::generate(options);
    let counts = seed::store(&mut conn, &district).unwrap();
    assert_eq!(counts.students as usize, options.students);
    assert_eq!(counts.fees as usize, district.fees.len());
    assert_eq!(counts.transactions as usize, district.txns.len());
    let fees = genesis::load_fees(&mut conn, None).unwrap();
    assert!(fees.rejected.is_empty(), "{:?}", fees.rejected);
    let txns = genesis::load_txns(&mut conn, None).unwrap();
    let txn_lines = txns
        .records
        .iter()
        .map(|t| {
            format!(
                "{}|{}|{}|{}|{}|{}",
                t.id, t.fee_id, t.kind, t.amount, t.source, t.posted_at
            )
        })
        .collect();
    (fees.records, txn_lines)
}

#[test]
fn same_seed_gives_the_same_rows_on_both_backends() {
    let options = SeedOptions {
        students: 400,
        seed: 11,
    };
    let sqlite_first = seeded_rows(Backend::Sqlite, options);
    let sqlite_again = seeded_rows(Backend::Sqlite, options);
    let postgres = seeded_rows(Backend::Postgres, options);
    assert_eq!(sqlite_first, sqlite_again, "SQLite: same seed, same rows");
    assert_eq!(
        sqlite_first, postgres,
        "PostgreSQL holds exactly what SQLite holds"
    );
    let generated = seed::generate(options);
    assert_eq!(
        sqlite_first.0, generated.fees,
        "stored fees read back unchanged"
    );
}

fn money_is_exact_at_the_boundary(backend: Backend) {
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    let district = seed::generate(SeedOptions {
        students: 1,
        seed: 5,
    });
    seed::store(&mut conn, &district).unwrap();
    let template = district.fees[0].clone();
    let awkward = ["0.01", "0.10", "19.99", "1234567.89", "0.29", "4.35"];
    let fees: Vec<GenesisFee> = awkward
        .iter()
        .enumerate()
        .map(|(i, text)| GenesisFee {
            id: FeeId(900_000 + i as i64),
            amount: Money::parse(text).unwrap(),
            status: FeeStatus::Open,
            ..template.clone()
        })
        .collect();
    genesis::insert_fees(&mut conn, &fees).unwrap();
    let txns: Vec<NewGenesisTxn> = fees
        .iter()
        .map(|f| NewGenesisTxn {
            fee_id: f.id,
            kind: TxnKind::Payment,
            amount: f.amount,
            method: "check".into(),
            source: TxnSource::Genesis,
            vendor_txn_id: None,
            posted_at: f.created_at,
            note: None,
        })
        .collect();
    genesis::insert_txns(&mut conn, &txns).unwrap();
    let loaded = genesis::load_fees(&mut conn, Some(template.student_id)).unwrap();
    for (fee, text) in fees.iter().zip(awkward) {
        let back = loaded.records.iter().find(|f| f.id == fee.id).unwrap();
        assert_eq!(back.amount.to_string(), text);
    }
    let total: Money = genesis::load_txns(&mut conn, Some(template.student_id))
        .unwrap()
        .records
        .iter()
        .filter(|t| t.fee_id.0 >= 900_000)
        .map(|t| t.amount)
        .sum();
    assert_eq!(total.to_string(), "1234592.63");
}

#[test]
fn sqlite_money_is_exact_at_the_boundary() {
    money_is_exact_at_the_boundary(Backend::Sqlite);
}

#[test]
fn postgres_money_is_exact_at_the_boundary() {
    money_is_exact_at_the_boundary(Backend::Postgres);
}

fn constraints_guard_the_contract(backend: Backend) {
    use diesel::connection::SimpleConnection;
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    seed::store(
        &mut conn,
        &seed::generate(SeedOptions {
            students: 3,
            seed: 2,
        }),
    )
    .unwrap();
    for bad in [
        "UPDATE student_fees SET status = 'pending' WHERE id = 2",
        "UPDATE student_fees SET amount_cents = -5 WHERE id = 2",
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
         VALUES (2, 'payment', 0, 'cash', 'genesis', '2026-09-01 10:00:00')",
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
         VALUES (2, 'gift', 100, 'cash', 'genesis', '2026-09-01 10:00:00')",
    ] {
        assert!(
            conn.batch_execute(bad).is_err(),
            "{backend:?} accepted: {bad}"
        );
    }
    // A vendor transaction id can be posted once only: the exactly-once backstop.
    let posted = NewGenesisTxn {
        fee_id: FeeId(2),
        kind: TxnKind::Payment,
        amount: Money::from_cents(500),
        method: "card".into(),
        source: TxnSource::CommunityPass,
        vendor_txn_id: Some(cpsync::domain::VendorTxnId("cp-txn-1".into())),
        posted_at: chrono::NaiveDate::from_ymd_opt(2026, 9, 1)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap(),
        note: None,
    };
    genesis::insert_txns(&mut conn, std::slice::from_ref(&posted)).unwrap();
    assert!(
        genesis::insert_txns(&mut conn, &[posted]).is_err(),
        "{backend:?}: posted twice"
    );
}

#[test]
fn sqlite_constraints_guard_the_contract() {
    constraints_guard_the_contract(Backend::Sqlite);
}

#[test]
fn postgres_constraints_guard_the_contract() {
    constraints_guard_the_contract(Backend::Postgres);
}

fn run_history_is_recorded(backend: Backend) {
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 26)
        .unwrap()
        .and_hms_opt(2, 0, 0)
        .unwrap();
    let first = runs::start_run(&mut conn, "nightly_sync", "schedule", false, now).unwrap();
    let second = runs::start_run(&mut conn, "send_fees", "watch", true, now).unwrap();
    assert!(second > first);
    let counts = runs::RunCounts {
        records_in: 10,
        matched: 7,
        corrected: 2,
        needs_review: 1,
    };
    runs::finish_run(
        &mut conn,
        first,
        runs::RunStatus::NeedsReview,
        &counts,
        Some("{}"),
        None,
        now,
    )
    .unwrap();
    let all = runs::recent_runs(&mut conn, None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, second, "newest first");
    let nightly = runs::recent_runs(&mut conn, Some("nightly_sync"), 10).unwrap();
    assert_eq!(nightly.len(), 1);
    assert_eq!(nightly[0].status, "needs_review");
    assert_eq!(
        (
            nightly[0].matched,
            nightly[0].corrected,
            nightly[0].needs_review
        ),
        (7, 2, 1)
    );
}

#[test]
fn sqlite_run_history_is_recorded() {
    run_history_is_recorded(Backend::Sqlite);
}

#[test]
fn postgres_run_history_is_recorded() {
    run_history_is_recorded(Backend::Postgres);
}

#[test]
fn unknown_scheme_is_one_clear_line() {
    let (code, stdout, stderr) = cpsync(&["--database-url", "foo://x", "migrate"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unsupported database URL scheme \"foo\""),
        "{stderr}"
    );
}

#[test]
fn unreachable_postgres_is_one_clear_line_without_password() {
    // A URL with a password comes from the environment, never the command
    // line (which would add a warning line).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env(
            "CPSYNC_DATABASE_URL",
            "postgres://cp:s3cret@127.0.0.1:1/genesis",
        )
        .output()
        .unwrap();
    let code = output.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn a_missing_sqlite_file_is_not_created_by_ordinary_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let (code, _, stderr) = cpsync(&["--database-url", path.to_str().unwrap(), "runs"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!path.exists());
}

#[test]
fn commands_refuse_an_unmigrated_database() {
    for backend in BACKENDS {
        let test_db = TestDb::empty(backend);
        drop(test_db.connect_creating());
        let (code, _, stderr) = cpsync(&["--database-url", &test_db.url_text, "runs"]);
        assert_eq!(code, 1, "{backend:?}");
        assert!(stderr.contains("not migrated"), "{backend:?}: {stderr}");
    }
}

#[test]
fn sqlite_connections_use_wal() {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }
    let test_db = TestDb::migrated(Backend::Sqlite);
    let mut conn = match test_db.connect() {
        cpsync::db::DbConnection::Sqlite(c) => c,
        _ => unreachable!(),
    };
    let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(mode.journal_mode, "wal");
}

/// Push bookkeeping and amount locks, written in batches on PostgreSQL and
/// one by one on SQLite, mean the same on both.
fn links_record_pushes_and_locks(backend: Backend) {
    use cpsync::db::links;
    use cpsync::domain::{FeePush, StudentId, VendorFeeStatus, VendorTxnId};
    use cpsync::portal::UpsertOutcome;
    let test_db = TestDb::migrated(backend);
    let mut conn = test_db.connect();
    let at = |hour| {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 26)
            .unwrap()
            .and_hms_opt(hour, 0, 0)
            .unwrap()
    };
    let (a, b, c) = (FeeId(11), FeeId(12), FeeId(13));
    let intent = |fee_id, seq: i64, digest: &str| links::PushIntent {
        fee_id,
        seq,
        digest: digest.to_string(),
        key: format!("key-{}-{seq}", fee_id),
    };
    let (a1, b1, a2) = (
        intent(a, 1, "da1"),
        intent(b, 1, "db1"),
        intent(a, 2, "da2"),
    );
    links::record_push_intents(&mut conn, &[&a1, &b1], 1).unwrap();
    let pending = links::push_states_for(&mut conn, &[a]).unwrap();
    assert!(
        pending[0].intent_pending(),
        "{backend:?}: recorded, not acknowledged"
    );
    let push = |id: FeeId, cents| FeePush {
        genesis_fee_id: id,
        student_id: StudentId(5),
        patron_id: "S5".into(),
        guardian_ids: vec![],
        category: "BUS".into(),
        school: "HS".into(),
        description: "Bus pass".into(),
        amount: Money::from_cents(cents),
        genesis_credit: Money::from_cents(100),
        status: FeeStatus::Open,
        fee_date: chrono::NaiveDate::from_ymd_opt(2026, 9, 1).unwrap(),
        due_date: None,
    };
    let answer = |id: FeeId, cents| UpsertOutcome {
        genesis_fee_id: id,
        vendor_fee_id: format!("CPF{}", id.0),
        created: true,
        amount: Money::from_cents(cents),
        balance: Money::from_cents(cents - 100),
        status: VendorFeeStatus::Open,
        revision: 1,
        replayed: false,
    };
    let (push_a, answer_a) = (push(a, 5_000), answer(a, 5_000));
    links::record_push_outcomes(&mut conn, &[(&push_a, "da1", &answer_a)], 1, at(2)).unwrap();
    let (push_a2, answer_a2) = (push(a, 6_000), answer(a, 6_000));
    links::record_push_intents(&mut conn, &[&a2], 2).unwrap();
    links::record_refusal(&mut conn, a, "da2", "409 amount_locked", 2, at(3)).unwrap();
    assert_eq!(links::refused(&mut conn).unwrap().len(), 1);
    links::record_push_outcomes(&mut conn, &[(&push_a2, "da2", &answer_a2)], 2, at(3)).unwrap();
    assert!(
        links::refused(&mut conn).unwrap().is_empty(),
        "{backend:?}: an acknowledgement ends the hold"
    );
    let state_a = &links::push_states_for(&mut conn, &[a]).unwrap()[0];
    assert_eq!(
        (state_a.intent_seq, state_a.pushed_digest.as_deref()),
        (2, Some("da2"))
    );
    assert!(!state_a.intent_pending());
    let link_a = links::detail(&mut conn, a).unwrap().unwrap();
    assert_eq!(
        link_a.first_sent_at,
        Some(at(2)),
        "{backend:?}: the first send is kept"
    );
    assert_eq!(link_a.last_pushed_at, Some(at(3)));
    assert_eq!(link_a.pushed_amount_cents, Some(6_000));
    assert_eq!(link_a.pushed_credit_cents, Some(100));
    assert_eq!(link_a.last_idempotency_key.as_deref(), Some("key-11-2"));
    assert_eq!(link_a.vendor_fee_id.as_deref(), Some("CPF11"));
    let link_b = links::detail(&mut conn, b).unwrap().unwrap();
    assert_eq!((link_b.vendor_fee_id, link_b.first_sent_at), (None, None));

    let txn = |id: &str| Some(VendorTxnId(id.to_string()));
    let first = links::lock_amounts(&mut conn, &[(b, txn("T1"))], Some(3), at(4)).unwrap();
    assert_eq!(first, vec![b]);
    let locks = [(a, txn("T2")), (a, txn("T3")), (b, txn("T4")), (c, None)];
    let newly = links::lock_amounts(&mut conn, &locks, Some(4), at(5)).unwrap();
    assert_eq!(newly, vec![a, c], "{backend:?}: b was locked already");
    let link_a = links::detail(&mut conn, a).unwrap().unwrap();
    assert!(link_a.amount_locked);
    assert_eq!(
        link_a.locked_by_vendor_txn.as_deref(),
        Some("T2"),
        "the first txn locks"
    );
    let link_b = links::detail(&mut conn, b).unwrap().unwrap();
    assert_eq!(
        (link_b.locked_by_vendor_txn.as_deref(), link_b.locked_at),
        (Some("T1"), Some(at(4)))
    );
    let link_c = links::detail(&mut conn, c).unwrap().unwrap();
    assert!(link_c.amount_locked && link_c.locked_by_vendor_txn.is_none());
    assert_eq!(link_c.last_run_id, Some(4));
}

#[test]
fn sqlite_links_record_pushes_and_locks() {
    links_record_pushes_and_locks(Backend::Sqlite);
}

#[test]
fn postgres_links_record_pushes_and_locks() {
    links_record_pushes_and_locks(Backend::Postgres);
}

/// The first error is the one shown: when the database already rolled the
/// transaction back by itself (SQLite does on a full disk), the failed
/// rollback that follows must not replace what went wrong.
#[test]
fn a_failed_write_transaction_reports_its_own_error() {
    use diesel::connection::SimpleConnection;
    for backend in BACKENDS {
        let test_db = TestDb::migrated(backend);
        let mut conn = test_db.connect();
        let result: Result<(), cpsync::db::DbError> =
            cpsync::db::write_transaction(&mut conn, |conn| {
                conn.batch_execute("ROLLBACK").unwrap();
                Err(cpsync::db::DbError::InvalidRow {
                    table: "fee_transactions",
                    key: "T1".to_string(),
                    reason: "database or disk is full".to_string(),
                })
            });
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("database or disk is full"),
            "{backend:?}: {message}"
        );
        // The connection is usable afterwards, transactions included.
        conn.batch_execute("SELECT 1").unwrap();
        let again: Result<i32, cpsync::db::DbError> =
            cpsync::db::write_transaction(&mut conn, |conn| {
                conn.batch_execute("SELECT 1")?;
                Ok(1)
            });
        assert_eq!(again.unwrap(), 1, "{backend:?}");
    }
}

/// `migrate` under the usual umask 022 still creates the SQLite file (and
/// its WAL files) owner-only: it holds student data.
#[test]
fn migrate_creates_an_owner_only_sqlite_file_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpsync.db");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022 && exec '{}' --database-url 'sqlite://{}' migrate",
            env!("CARGO_BIN_EXE_cpsync"),
            path.display()
        ))
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut checked = 0;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("cpsync.db{suffix}"));
        if let Ok(meta) = std::fs::metadata(&file) {
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
