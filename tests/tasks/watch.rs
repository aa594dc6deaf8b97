//! The instant path: a fee inserted by plain SQL reaches Community Pass
//! through `cpsync watch` in under a second; SIGTERM stops it cleanly with
//! the run recorded; idle passes leave no runs behind; `--once` drains once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cpsync::db::{outbox, runs};
use cpsync::domain::FeeId;
use cpsync::portal::CommunityPass;
use cpsync::sync::push;

use super::common::Backend;
use super::{insert_fee_sql, Env};

/// The handbook's bound: pushed within a second of the commit.
const LATENCY_MAX: Duration = Duration::from_secs(1);
/// How long the test waits for anything before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Starts `cpsync watch` and returns once it says it is waiting.
fn spawn_watch(env: &Env) -> Child {
    let mut child = env
        .command(&["watch", "--max-seconds", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cpsync watch");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|line| {
        eprintln!("watch: {line}");
        line.contains("waiting for fee changes")
    });
    assert!(ready, "cpsync watch never said it was waiting");
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("watch: {l}"))
    });
    child
}

fn terminate(mut child: Child) -> i32 {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for watch") {
            return status.code().unwrap_or(-1);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("cpsync watch did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until Community Pass has the fee; returns how long it took.
fn until_in_community_pass(env: &Env, fee: FeeId, since: Instant) -> Duration {
    while since.elapsed() < PATIENCE {
        if env.portal.fee(fee).is_ok() {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("fee {fee} never reached Community Pass");
}

fn watch_runs(env: &Env) -> Vec<runs::RunRecord> {
    runs::recent_runs(&mut env.conn(), Some("send_fees"), 1000)
        .expect("run history")
        .into_iter()
        .filter(|r| r.trigger == "watch")
        .collect()
}

fn watch_pushes_within_a_second(backend: Backend) {
    let env = Env::new(backend);
    env.seed(15);
    env.set_up();
    env.ok(&["send-fees"]);
    let template = env
        .fees()
        .into_iter()
        .find(|f| f.fee_date >= chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap())
        .expect("an eligible fee");
    let watch = spawn_watch(&env);
    // Idle passes are not recorded.
    std::thread::sleep(Duration::from_millis(600));
    assert!(watch_runs(&env).is_empty(), "idle passes recorded");

    insert_fee_sql(
        &env,
        991_001,
        &template,
        "2026-10-02",
        &template.category,
        &template.school,
    );
    let latency = until_in_community_pass(&env, FeeId(991_001), Instant::now());
    eprintln!("{backend:?}: fee inserted by SQL reached Community Pass in {latency:?}");
    assert!(latency < LATENCY_MAX, "{backend:?}: took {latency:?}");

    // A change to it travels the same way.
    env.sql("UPDATE student_fees SET amount_cents = 4321 WHERE id = 991001");
    let since = Instant::now();
    while env.portal.fee(FeeId(991_001)).unwrap().amount.cents() != 4321 {
        assert!(
            since.elapsed() < LATENCY_MAX,
            "{backend:?}: update took too long"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    assert_eq!(terminate(watch), 0, "SIGTERM is a clean stop");
    assert_eq!(outbox::pending_count(&mut env.conn()).unwrap(), 0);
    let recorded = watch_runs(&env);
    assert!(
        (1..=2).contains(&recorded.len()),
        "one run per pass with work, none for idle passes: {recorded:?}"
    );
    assert!(
        recorded.iter().all(|r| r.status == "succeeded"),
        "{recorded:?}"
    );

    // --once drains and exits.
    insert_fee_sql(
        &env,
        991_002,
        &template,
        "2026-10-03",
        &template.category,
        &template.school,
    );
    env.ok(&["watch", "--once"]);
    assert!(env.portal.fee(FeeId(991_002)).is_ok());
    assert_eq!(watch_runs(&env).len(), recorded.len() + 1);
}

#[test]
fn sqlite_watch_pushes_a_fee_inserted_by_sql_within_a_second() {
    watch_pushes_within_a_second(Backend::Sqlite);
}

#[test]
fn postgres_watch_pushes_a_fee_inserted_by_sql_within_a_second() {
    watch_pushes_within_a_second(Backend::Postgres);
}

/// Waits until Community Pass holds at least `count` fees.
fn until_fees_in_community_pass(env: &Env, count: u64) {
    let since = Instant::now();
    while env.admin.summary().unwrap().fees < count {
        assert!(since.elapsed() < PATIENCE, "no fee reached Community Pass");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stops_and_crashes_lose_nothing(backend: Backend) {
    let env = Env::new(backend);
    env.seed(150);
    env.set_up();
    let queued = outbox::pending_count(&mut env.conn()).unwrap();
    assert!(
        queued > 2 * push::OUTBOX_BATCH_MAX,
        "several batches wait: {queued}"
    );

    // SIGTERM while draining: the batch in hand is finished and recorded.
    let watch = spawn_watch(&env);
    until_fees_in_community_pass(&env, 1);
    assert_eq!(terminate(watch), 0);
    let recorded = watch_runs(&env);
    assert!(!recorded.is_empty(), "the interrupted pass is recorded");
    assert!(
        recorded.iter().all(|r| r.finished_at.is_some()),
        "{recorded:?}"
    );

    // SIGKILL while draining (a crash): whatever was not completed waits.
    let mut watch = spawn_watch(&env);
    let sent = env.admin.summary().unwrap().fees;
    until_fees_in_community_pass(&env, sent + 1);
    watch.kill().expect("SIGKILL");
    let _ = watch.wait();

    env.ok(&["watch", "--once"]);
    assert_eq!(outbox::pending_count(&mut env.conn()).unwrap(), 0);
    let cutoff = chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap();
    let eligible = env.fees().iter().filter(|f| f.fee_date >= cutoff).count();
    let summary = env.admin.summary().unwrap();
    assert_eq!(
        summary.fees as usize, eligible,
        "every eligible fee arrived once"
    );
    assert_eq!(summary.invariant_violations, 0);
}

#[test]
fn sqlite_watch_stopped_or_killed_mid_drain_loses_nothing() {
    stops_and_crashes_lose_nothing(Backend::Sqlite);
}

#[test]
fn postgres_watch_stopped_or_killed_mid_drain_loses_nothing() {
    stops_and_crashes_lose_nothing(Backend::Postgres);
}
