//! Bad input, each with a clear error naming the record, and the run going
//! on with the rest where the record is separable: the hostile-server
//! corpus of transaction pages (`common/hostile.rs`), repeated on-demand
//! pulls, a push cut off before its answer was recorded, hostile text in
//! Genesis on its way to the export, invalid UTF-8 in database text, and
//! config files with unknown keys or bad values.

mod common;

use std::time::Duration;

use common::hostile::{self, Expect, HostileServer};
use common::world::World;
use common::{cpsync, cpsync_in_district, Backend, TestDb, BACKENDS};
use cpsync::db::schema::{fee_transactions, student_fees};
use cpsync::db::{audit, links, postings, runs, DbConnection};
use cpsync::domain::{FeeId, StudentId};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::{intent_key, push_digest, CommunityPass};
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::sync::pull::{get_payments, PullScope};
use cpsync::sync::utc_now;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

const KEY: &str = "sk_bad_input_77e1";

/// A client of `base_url` that gives up fast (the corpus needs no waiting).
fn fast_portal(base_url: &str) -> HttpPortal {
    let mut config = HttpPortalConfig::new(base_url, Secret::new(KEY));
    config.retry.retries = 1;
    config.retry.backoff_base = Duration::from_millis(1);
    config.retry.backoff_max = Duration::from_millis(2);
    config.request_timeout = Duration::from_secs(5);
    HttpPortal::new(config).unwrap()
}

fn seeded(backend: Backend) -> (TestDb, i64, i64) {
    let db = TestDb::migrated(backend);
    let mut conn = db.connect();
    seed::store(
        &mut conn,
        &seed::generate(SeedOptions {
            students: 3,
            seed: 5,
        }),
    )
    .unwrap();
    let (fee, student): (i64, i64) = student_fees::table
        .select((student_fees::id, student_fees::student_id))
        .order(student_fees::id)
        .first(&mut conn)
        .unwrap();
    (db, fee, student)
}

fn posted_ids(conn: &mut DbConnection) -> Vec<String> {
    fee_transactions::table
        .filter(fee_transactions::vendor_txn_id.is_not_null())
        .select(fee_transactions::vendor_txn_id.assume_not_null())
        .order(fee_transactions::vendor_txn_id)
        .load(conn)
        .unwrap()
}

fn run_case(backend: Backend, index: usize) {
    let (db, fee, student) = seeded(backend);
    let case = hostile::corpus(fee, 987_654_321).swap_remove(index);
    let answer = hostile::answer_for(&case, fee);
    let server = HostileServer::start(Box::new(move |_| answer.clone()));
    let portal = fast_portal(&server.base_url);
    let mut conn = db.connect();
    let run_id = runs::start_run(&mut conn, "get_payments", "test", false, utc_now()).unwrap();
    let pulled = get_payments(
        &mut conn,
        &portal,
        PullScope::Student(StudentId(student)),
        run_id,
        &utc_now,
    );
    let name = case.name;
    match case.expect {
        Expect::Fails(needle) => {
            let error = pulled.expect_err(name).to_string();
            assert!(error.contains(needle), "{backend:?} {name}: {error}");
            assert!(posted_ids(&mut conn).is_empty(), "{name}: nothing posted");
        }
        Expect::Parks(needle) => {
            let report = pulled.unwrap_or_else(|e| panic!("{backend:?} {name}: {e}"));
            let problems = report.problems.join("; ");
            assert!(problems.contains(needle), "{name}: {problems}");
            assert_eq!(
                posted_ids(&mut conn),
                ["G1", "G3"],
                "{name}: the rest is posted"
            );
            let parked = postings::list_unprocessed(&mut conn, false).unwrap();
            assert_eq!(parked.len(), 1, "{name}: {parked:?}");
            assert_eq!(parked[0].vendor_txn_id, "B1", "{name}");
            assert!(!parked[0].reason.is_empty());
        }
    }
}

#[test]
fn the_hostile_server_corpus_on_both_backends() {
    let cases = hostile::corpus(1, 2).len();
    for backend in BACKENDS {
        for index in 0..cases {
            run_case(backend, index);
        }
    }
}

#[test]
fn a_malformed_record_is_parked_once_and_never_retried_as_a_posting() {
    let (db, fee, student) = seeded(Backend::Sqlite);
    let case = hostile::corpus(fee, 987_654_321).remove(0);
    let answer = hostile::answer_for(&case, fee);
    let server = HostileServer::start(Box::new(move |_| answer.clone()));
    let portal = fast_portal(&server.base_url);
    let mut conn = db.connect();
    for _ in 0..2 {
        let run_id = runs::start_run(&mut conn, "get_payments", "test", false, utc_now()).unwrap();
        get_payments(
            &mut conn,
            &portal,
            PullScope::Student(StudentId(student)),
            run_id,
            &utc_now,
        )
        .unwrap();
    }
    let parked = postings::list_unprocessed(&mut conn, false).unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].kind, postings::MALFORMED_KIND);
    assert!(
        parked[0].reason.contains("more than two decimal places"),
        "{}",
        parked[0].reason
    );
    assert!(postings::parked_txns(&mut conn).unwrap().is_empty());
}

/// Regression: on SQLite a pull that met an already-posted transaction
/// failed whole with "Record not found"; an on-demand pull reads from the
/// start every time, so the second one always failed.
#[test]
fn repeated_on_demand_pulls_succeed_on_both_backends() {
    for backend in BACKENDS {
        let world = World::new(backend, 12, 4);
        let mut conn = world.conn();
        let (fee, student): (i64, i64) = {
            use cpsync::db::schema::cp_fee_links::dsl::*;
            let id: i64 = cp_fee_links
                .select(fee_id)
                .order(fee_id)
                .first(&mut conn)
                .unwrap();
            let owner: i64 = student_fees::table
                .find(id)
                .select(student_fees::student_id)
                .first(&mut conn)
                .unwrap();
            (id, owner)
        };
        world
            .admin
            .pay(FeeId(fee), Some(cpsync::money::Money::from_cents(100)))
            .unwrap();
        for round in 0..3 {
            let run_id = world.run_id(&mut conn, "get_payments");
            let scope = PullScope::Student(StudentId(student));
            let report = get_payments(&mut conn, &world.portal, scope, run_id, &utc_now)
                .unwrap_or_else(|e| panic!("{backend:?} round {round}: {e}"));
            assert_eq!(
                report.posted,
                u64::from(round == 0),
                "{backend:?} round {round}"
            );
        }
    }
}

/// A push that reached Community Pass but whose answer was never recorded
/// (the process was killed in between): the nightly records the vendor id
/// and audits the creation.
#[test]
fn a_push_cut_off_before_its_answer_is_adopted_and_audited() {
    for backend in BACKENDS {
        let world = World::new(backend, 12, 6);
        let mut conn = world.conn();
        conn.batch_execute(
            "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
             fee_date, due_date, status, created_at, modified_at) \
             SELECT 9100001, student_id, category_code, school_code, 'Locker', 500, '2026-11-20', NULL, \
             'open', '2026-11-20 09:00:00', '2026-11-20 09:00:00' FROM student_fees \
             WHERE id = (SELECT MIN(fee_id) FROM cp_fee_links)",
        )
        .unwrap();
        let run_id = world.run_id(&mut conn, "send_fees");
        let fee = FeeId(9_100_001);
        let push = {
            let loaded = cpsync::db::genesis::load_fees_by_ids(&mut conn, &[fee]).unwrap();
            let genesis = &loaded.records[0];
            let txns: Vec<cpsync::domain::GenesisTxn> = Vec::new();
            cpsync::reconcile::fee_push(
                genesis,
                txns.iter(),
                genesis.student_id.to_string(),
                vec![],
            )
        };
        let key = first_intent_key(&push);
        let intent = links::PushIntent {
            fee_id: fee,
            seq: 1,
            digest: push_digest(&push),
            key: key.clone(),
        };
        links::record_push_intents(&mut conn, &[&intent], run_id).unwrap();
        world.portal.upsert_fee(&push, &key).unwrap();
        // ... killed here: no outcome recorded.
        let result = world.nightly(false);
        assert_eq!(result.failed(), 0, "{backend:?}");
        let link = links::detail(&mut conn, fee).unwrap().unwrap();
        assert!(link.vendor_fee_id.is_some(), "{backend:?}: {link:?}");
        let trail = audit::for_entity(&mut conn, "fee", "9100001").unwrap();
        assert!(
            trail
                .iter()
                .any(|a| a.action == "created" && a.run_id.is_some()),
            "{backend:?}: {trail:?}"
        );
    }
}

/// Names a district's staff can type reach the export as data: the
/// OneRoster feed is read by machines, so a cell that looks like a formula
/// arrives as it is (no `'`), control characters are dropped, HTML stays
/// text.
#[test]
fn hostile_names_reach_the_export_as_data() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let mut conn = db.connect();
        seed::store(
            &mut conn,
            &seed::generate(SeedOptions {
                students: 4,
                seed: 8,
            }),
        )
        .unwrap();
        let escape = match backend {
            Backend::Sqlite => "char(27)",
            Backend::Postgres => "chr(27)",
        };
        conn.batch_execute(&format!(
            "UPDATE students SET first_name = '=HYPERLINK(\"http://x\")', last_name = 'Lee' || {escape} || '[31m' \
             WHERE id = (SELECT MIN(id) FROM students);
             UPDATE guardians SET last_name = '<b>@SUM(1)</b>' WHERE id = (SELECT MIN(id) FROM guardians);"
        ))
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let folder = out.path().join("export");
        let (code, _, stderr) = cpsync_in_district(&[
            "--database-url",
            &db.url_text,
            "export",
            "--to",
            folder.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        let written = std::fs::read_dir(&folder)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let users = std::fs::read_to_string(written.join("users.csv")).unwrap();
        assert!(
            users.contains(",\"=HYPERLINK(\"\"http://x\"\")\","),
            "{users}"
        );
        assert!(
            !users.contains("'=HYPERLINK"),
            "{backend:?}: no spreadsheet prefix in a machine feed"
        );
        assert!(
            users.contains("Lee[31m"),
            "{backend:?}: control characters dropped"
        );
        assert!(users.contains("<b>@SUM(1)</b>"), "HTML is data in a CSV");
        assert!(!users
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t')));
    }
}

/// Invalid UTF-8 can only be stored on SQLite (PostgreSQL refuses it). The
/// export fails cleanly, naming the column; it does not panic. (Known
/// limitation: the row is not yet skipped on its own.)
#[test]
fn invalid_utf8_in_genesis_text_fails_the_export_cleanly() {
    let db = TestDb::migrated(Backend::Sqlite);
    let mut conn = db.connect();
    seed::store(
        &mut conn,
        &seed::generate(SeedOptions {
            students: 3,
            seed: 9,
        }),
    )
    .unwrap();
    conn.batch_execute(
        "UPDATE guardians SET last_name = CAST(X'4fe9ff' AS TEXT) WHERE id = (SELECT MIN(id) FROM guardians)",
    )
    .unwrap();
    let (code, _, stderr) =
        cpsync_in_district(&["--database-url", &db.url_text, "export", "--dry-run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("last_name") && stderr.contains("utf-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn config_files_with_unknown_keys_or_bad_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[community_pass]\nbase_url = 'https://x'\nretries = 3\n",
            "retries",
        ),
        (
            "[community_pass]\nbase_url = 'https://x'\nrequest_timeout_secs = 0\n",
            "timeouts",
        ),
        (
            "[community_pass]\nbase_url = 'ftp://x'\n",
            "community_pass.base_url",
        ),
        (
            "[smtp]\nhost = 'h'\nport = 'hunter2'\ntls = 'none'\nfrom = 'a@b'\nto = ['c']\n",
            "port",
        ),
        (
            "[sftp]\nhost = 'h'\nusername = 'u'\nknown_hosts_file = 'k'\n",
            "sftp",
        ),
    ];
    for (index, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{index}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = cpsync(&["--config", path.to_str().unwrap(), "runs"]);
        assert_eq!(code, 1, "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "a value is never echoed: {stderr}"
        );
    }
}

/// A server that echoes the API key in its error: the error shows it redacted.
#[test]
fn an_echoed_api_key_is_scrubbed_from_errors() {
    let body = format!("{{\"code\":\"unauthorized\",\"message\":\"bad key {KEY}\"}}");
    let answer = hostile::http(401, body.as_bytes());
    let server = HostileServer::start(Box::new(move |_| answer.clone()));
    let error = fast_portal(&server.base_url)
        .test_pull()
        .unwrap_err()
        .to_string();
    assert!(!error.contains(KEY), "{error}");
    assert!(error.contains("[REDACTED]"), "{error}");
}

/// The key of a fee's first intended write.
fn first_intent_key(push: &cpsync::domain::FeePush) -> String {
    intent_key(push.genesis_fee_id, 1, &push_digest(push))
}

/// A `--json` command that fails still prints one JSON object (the error
/// and the exit code) for the scheduler reading it, and the line on stderr.
#[test]
fn a_failing_json_command_prints_a_json_error() {
    let missing = tempfile::tempdir()
        .unwrap()
        .path()
        .join("gone")
        .join("x.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [
        &["runs", "--json"][..],
        &["nightly", "--json", "--no-report"][..],
    ] {
        let all: Vec<&str> = ["--database-url", url.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (code, stdout, stderr) = cpsync(&all);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let error: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {stdout:?}"));
        assert!(
            error["error"]
                .as_str()
                .unwrap_or("")
                .contains("does not exist"),
            "{error}"
        );
        assert_eq!(error["exit_code"], 1);
        assert!(stderr.contains("does not exist"), "{stderr}");
    }
}
