//! Locks and run history that tell the truth (issue 17), on real SQLite
//! files and the real PostgreSQL: two acquisitions at once (one wins, the
//! other is told who holds it, never "database is locked"), stale, reused,
//! remote and live lock rows, `cpsync lock status` / `lock release --force`,
//! runs left "running" by a gone process marked interrupted, a panic
//! recorded as a failed run, and a closed stdout pipe ending quietly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use chrono::NaiveDateTime;
use common::{cpsync, Backend, TestDb, BACKENDS};
use cpsync::db::lock::{self, DISTRICT_LOCK};
use cpsync::db::owner::{self, Liveness};
use cpsync::db::runs;
use cpsync::db::schema::{cp_locks, cp_runs};
use cpsync::db::DbConnection;
use diesel::prelude::*;

fn now() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

/// A pid that no longer runs: a child that has exited and been reaped.
fn dead_pid() -> i64 {
    let mut child = Command::new("true").spawn().expect("true runs");
    child.wait().expect("true ends");
    i64::from(child.id())
}

/// A live process that is not cpsync; killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("120")
                .spawn()
                .expect("sleep runs"),
        )
    }
    fn pid(&self) -> i64 {
        i64::from(self.0.id())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn put_lock_row(conn: &mut DbConnection, holder: &str, pid: i64, at: NaiveDateTime) {
    diesel::insert_into(cp_locks::table)
        .values((
            cp_locks::name.eq(DISTRICT_LOCK),
            cp_locks::holder.eq(holder),
            cp_locks::pid.eq(pid),
            cp_locks::run_id.eq(Option::<i64>::None),
            cp_locks::acquired_at.eq(at),
        ))
        .execute(conn)
        .expect("insert lock row");
}

fn lock_rows(conn: &mut DbConnection) -> i64 {
    cp_locks::table.count().get_result(conn).expect("count")
}

fn here(pid: i64) -> String {
    format!("{}:{pid}", owner::host_name())
}

fn lock_status_json(db: &TestDb) -> serde_json::Value {
    let (code, out, err) = cpsync(&["--database-url", &db.url_text, "lock", "status", "--json"]);
    assert_eq!(code, 0, "lock status: {err}");
    serde_json::from_str(&out).expect("lock status JSON")
}

#[test]
fn two_acquisitions_at_once_one_wins_the_other_is_told_the_holder() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        for round in 0..12 {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (url, barrier) = (db.url.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let taken = lock::try_acquire(&url, DISTRICT_LOCK, None, now());
                        // Hold a winner until both have tried.
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        taken
                    })
                })
                .collect();
            let results: Vec<_> = threads
                .into_iter()
                .map(|t| t.join().expect("no panic"))
                .map(|r| r.unwrap_or_else(|e| panic!("{backend:?} round {round}: error {e}")))
                .collect();
            let winners = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(winners, 1, "{backend:?} round {round}: one winner");
            let holder = results
                .iter()
                .find_map(|r| r.as_ref().err())
                .expect("a loser");
            if backend == Backend::Sqlite {
                assert_eq!(holder.pid, owner::own_pid());
                assert_eq!(holder.found, Liveness::ThisProcess);
            }
            drop(results);
            assert_eq!(lock_rows(&mut db.connect()), 0, "released on drop");
        }
    }
}

#[test]
fn two_nightly_processes_at_once_never_say_database_is_locked() {
    let db = TestDb::migrated(Backend::Sqlite);
    for round in 0..6 {
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_cpsync"))
                .args(["--database-url", &db.url_text, "nightly", "--no-report"])
                .env_remove("DATABASE_URL")
                .env_remove("CPSYNC_CONFIG")
                .env_remove("CPSYNC_CP_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cpsync")
        };
        let children = [spawn(), spawn()];
        for child in children {
            let output = child.wait_with_output().expect("cpsync ends");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !stderr.contains("database is locked"),
                "round {round}: {stderr}"
            );
            // No Community Pass is configured: the winner fails after the
            // lock (exit 1), a loser is refused (exit 4).
            let code = output.status.code();
            assert!(
                code == Some(1) || code == Some(4),
                "round {round}: {code:?} {stderr}"
            );
        }
    }
}

#[test]
fn a_row_left_by_a_dead_process_is_taken_over() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        put_lock_row(&mut db.connect(), &here(dead_pid()), dead_pid(), now());
        let status = lock_status_json(&db);
        assert_eq!(status["held"], false, "{backend:?} {status}");
        assert_eq!(status["row"]["found"], "gone", "{backend:?} {status}");
        let held = lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
            .expect("no error")
            .expect("taken over");
        drop(held);
        assert_eq!(lock_rows(&mut db.connect()), 0);
    }
}

#[test]
fn a_row_whose_pid_is_now_another_program_is_reported_and_releasable() {
    let sleeper = Sleeper::start();
    // Written after the sleeper started: the pid is alive and older than
    // the row, but it is not cpsync.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let db = TestDb::migrated(Backend::Sqlite);
    put_lock_row(
        &mut db.connect(),
        &here(sleeper.pid()),
        sleeper.pid(),
        now(),
    );

    let refused = lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
        .expect("no error")
        .err()
        .expect("refused");
    assert_eq!(
        refused.found,
        Liveness::NotCpsync {
            command: "sleep".to_string()
        }
    );
    assert!(
        refused.describe().contains("not cpsync"),
        "{}",
        refused.describe()
    );

    let status = lock_status_json(&db);
    assert_eq!(status["held"], true, "{status}");
    assert_eq!(status["row"]["found"], "pid_not_cpsync", "{status}");
    assert_eq!(status["row"]["releasable"], true, "{status}");
    let (code, out, _) = cpsync(&["--database-url", &db.url_text, "lock", "status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"sleep\"") && out.contains("lock release --force"),
        "{out}"
    );

    let (code, _, err) = cpsync(&["--database-url", &db.url_text, "lock", "release"]);
    assert_eq!(code, 2, "--force is required: {err}");
    let (code, out, err) = cpsync(&["--database-url", &db.url_text, "lock", "release", "--force"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("released"), "{out}");
    assert_eq!(lock_rows(&mut db.connect()), 0);
    lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
        .expect("no error")
        .expect("free now");
}

#[test]
fn a_row_whose_pid_was_reused_after_it_was_written_is_taken_over() {
    let sleeper = Sleeper::start();
    let db = TestDb::migrated(Backend::Sqlite);
    let long_ago = now() - chrono::Duration::hours(2);
    put_lock_row(
        &mut db.connect(),
        &here(sleeper.pid()),
        sleeper.pid(),
        long_ago,
    );
    assert_eq!(lock_status_json(&db)["row"]["found"], "pid_reused");
    lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
        .expect("no error")
        .expect("a reused pid is not the holder");
}

#[test]
fn a_row_from_another_host_is_reported_and_a_live_cpsync_is_never_released() {
    let db = TestDb::migrated(Backend::Sqlite);
    put_lock_row(&mut db.connect(), "other-host.example:4242", 4242, now());
    let refused = lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
        .expect("no error")
        .err()
        .expect("refused");
    assert!(matches!(refused.found, Liveness::OtherHost { .. }));
    assert!(refused.describe().contains("other-host.example"));
    let (code, out, err) = cpsync(&["--database-url", &db.url_text, "lock", "release", "--force"]);
    assert_eq!(code, 0, "{out} {err}");

    // A live cpsync process (the simulator) on this host: refused, explained.
    let mut sim = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .args(["sim", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cpsync sim runs");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = i64::from(sim.id());
    put_lock_row(&mut db.connect(), &here(pid), pid, now());
    let (code, _, err) = cpsync(&["--database-url", &db.url_text, "lock", "release", "--force"]);
    let _ = sim.kill();
    let _ = sim.wait();
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("refusing") && err.contains("is running"),
        "{err}"
    );
    assert_eq!(lock_rows(&mut db.connect()), 1);
}

#[test]
fn postgres_release_refuses_while_a_session_holds_the_advisory_lock() {
    let db = TestDb::migrated(Backend::Postgres);
    let held = lock::try_acquire(&db.url, DISTRICT_LOCK, None, now())
        .expect("no error")
        .expect("taken");
    let status = lock_status_json(&db);
    assert_eq!(status["held"], true, "{status}");
    assert_eq!(status["postgresql_session_holds"], true, "{status}");
    let (code, _, err) = cpsync(&["--database-url", &db.url_text, "lock", "release", "--force"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("PostgreSQL session"), "{err}");
    drop(held);
    assert_eq!(lock_status_json(&db)["held"], false);
}

fn put_running_run(conn: &mut DbConnection, pid: i64, started_at: NaiveDateTime) -> i64 {
    let id = runs::start_run(conn, "get_payments", "test", false, started_at).expect("start");
    diesel::update(cp_runs::table.find(id))
        .set(cp_runs::pid.eq(pid))
        .execute(conn)
        .expect("set pid");
    id
}

fn run_statuses(db: &TestDb) -> serde_json::Value {
    let (code, out, err) = cpsync(&["--database-url", &db.url_text, "runs", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("runs JSON")
}

fn status_of(runs: &serde_json::Value, id: i64) -> String {
    runs.as_array()
        .expect("array")
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["status"].as_str().expect("status").to_string())
        .expect("run listed")
}

#[test]
fn runs_of_gone_processes_are_marked_interrupted_and_live_ones_kept() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let mut conn = db.connect();
        let sleeper = Sleeper::start();
        let dead = put_running_run(&mut conn, dead_pid(), now());
        let reused = put_running_run(&mut conn, sleeper.pid(), now() - chrono::Duration::hours(1));
        let mine = runs::start_run(&mut conn, "send_fees", "test", false, now()).unwrap();
        let listed = run_statuses(&db);
        assert_eq!(status_of(&listed, dead), "interrupted", "{backend:?}");
        assert_eq!(status_of(&listed, reused), "interrupted", "{backend:?}");
        assert_eq!(
            status_of(&listed, mine),
            "running",
            "{backend:?}: this test still runs it"
        );
        let record = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == dead)
            .unwrap();
        assert!(
            record["error"].as_str().unwrap().contains("no longer runs"),
            "{record}"
        );
        assert!(record["finished_at"].is_string(), "{record}");
        let (_, table, _) = cpsync(&["--database-url", &db.url_text, "runs"]);
        assert!(table.contains("interrupted"), "{table}");
    }
}

#[test]
fn a_panic_inside_a_run_records_it_as_failed() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let key = cpsync::secret::Secret::new("sk_test_panic_hook");
        cpsync::db::settings::record_api_key(&mut db.connect(), &key, "north", now()).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
            .args([
                "--database-url",
                &db.url_text,
                "--cp-url",
                "http://127.0.0.1:9",
            ])
            .arg("get-balances")
            .env("CPSYNC_TEST_PANIC_IN_RUN", "1")
            .env("CPSYNC_API_KEY", key.expose())
            .env_remove("CPSYNC_API_KEY_FILE")
            .env_remove("DATABASE_URL")
            .env_remove("CPSYNC_CONFIG")
            .output()
            .expect("run cpsync");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(101), "{stderr}");
        assert!(stderr.contains("recorded as failed"), "{stderr}");
        let listed = run_statuses(&db);
        let run = &listed[0];
        assert_eq!(run["status"], "failed", "{backend:?} {run}");
        assert!(run["error"].as_str().unwrap().contains("panicked"), "{run}");
    }
}

#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let mut conn = db.connect();
        for _ in 0..3 {
            let id = runs::start_run(&mut conn, "seed", "test", false, now()).unwrap();
            runs::finish_run(
                &mut conn,
                id,
                runs::RunStatus::Succeeded,
                &runs::RunCounts::default(),
                None,
                None,
                now(),
            )
            .unwrap();
        }
        for args in [
            &["runs", "--json"][..],
            &["runs"][..],
            &["lock", "status"][..],
        ] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_cpsync"))
                .args(["--database-url", &db.url_text])
                .args(args)
                .env_remove("DATABASE_URL")
                .env_remove("CPSYNC_CONFIG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cpsync");
            // The reader goes away before a byte is written (`| head -0`).
            drop(child.stdout.take());
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(0), "{backend:?} {args:?}: {stderr}");
            assert!(stderr.is_empty(), "{backend:?} {args:?}: {stderr}");
        }
    }
}

#[test]
fn every_run_status_the_engine_records_is_accepted_by_the_schema() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let mut conn = db.connect();
        for status in [
            runs::RunStatus::Succeeded,
            runs::RunStatus::NeedsReview,
            runs::RunStatus::Failed,
            runs::RunStatus::NotConverged,
            runs::RunStatus::Interrupted,
        ] {
            let id = runs::start_run(&mut conn, "nightly_sync", "test", false, now()).unwrap();
            runs::finish_run(
                &mut conn,
                id,
                status,
                &runs::RunCounts::default(),
                None,
                None,
                now(),
            )
            .unwrap_or_else(|e| panic!("{backend:?} {status:?}: {e}"));
        }
    }
}
