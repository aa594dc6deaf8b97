//! Crash safety of the nightly apply: the process is aborted right after its
//! k-th write (for every k the scenario has), then run again. The end state
//! must be what an uninterrupted run leaves: nothing lost, nothing doubled,
//! and a further run with nothing to do.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::world::World;
use common::Backend;
use cpsync::money::Money;
use cpsync::sync::nightly::{counts_by_kind, CRASH_AFTER_WRITES_ENV};
use diesel::prelude::*;

/// Drift that needs every kind of write: postings, locks and pushes.
fn drift(world: &World) {
    use diesel::connection::SimpleConnection;
    let mut conn = world.conn();
    let ids: Vec<i64> = {
        use cpsync::db::schema::cp_fee_links::dsl::*;
        cp_fee_links
            .select(fee_id)
            .order(fee_id)
            .limit(8)
            .load(&mut conn)
            .unwrap()
    };
    for (i, id) in ids.iter().take(3).enumerate() {
        let paid = world
            .admin
            .pay(
                cpsync::domain::FeeId(*id),
                Some(Money::from_cents(100 + i as i64)),
            )
            .unwrap();
        if i == 0 {
            world.admin.reverse(&paid.id, 3).unwrap();
        }
    }
    for id in &ids[3..6] {
        conn.batch_execute(&format!(
            "UPDATE student_fees SET amount_cents = amount_cents + 250 WHERE id = {id}"
        ))
        .unwrap();
    }
    conn.batch_execute(
        "UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL",
    )
    .unwrap();
}

/// What the end state looks like, for comparison across worlds.
/// What a finished world holds: the discrepancies a dry run still finds
/// by kind, and every Community Pass posting as (fee, vendor id, kind,
/// cents), sorted — compared with the world that never crashed, so a
/// posting lost, doubled, or put on another fee or amount shows.
type EndState = (BTreeMap<&'static str, u64>, Vec<(i64, String, String, i64)>);

fn end_state(world: &World) -> EndState {
    let after = world.nightly(true);
    assert!(after.reconciliation.plan().is_empty(), "nothing left to do");
    let mut conn = world.conn();
    use cpsync::db::schema::fee_transactions::dsl::*;
    let mut postings: Vec<(i64, String, String, i64)> = fee_transactions
        .filter(source.eq("community_pass"))
        .select((fee_id, vendor_txn_id.assume_not_null(), kind, amount_cents))
        .load(&mut conn)
        .unwrap();
    postings.sort();
    (counts_by_kind(&after.reconciliation), postings)
}

/// The exit codes of a nightly that finished: agreement or corrected, or
/// items for review.
fn finished(status: std::process::ExitStatus) -> bool {
    matches!(status.code(), Some(0 | 3))
}

/// Aborted at the crash point (SIGABRT), not by anything else.
fn aborted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

/// A config whose report folder is a private temporary one.
fn report_config(reports: &std::path::Path) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    use std::io::Write;
    writeln!(
        file,
        "district = \"Crash Test SD\"\n[reports]\ndir = \"{}\"",
        reports.display()
    )
    .unwrap();
    file
}

fn nightly_binary(
    world: &World,
    crash_after: Option<u64>,
    config: &std::path::Path,
) -> std::process::ExitStatus {
    cpsync_binary(world, "nightly", crash_after, Some(config))
}

/// `cpsync COMMAND` against the world, aborting after write `crash_after`.
fn cpsync_binary(
    world: &World,
    command_name: &str,
    crash_after: Option<u64>,
    config: Option<&std::path::Path>,
) -> std::process::ExitStatus {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpsync"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args([
            "--database-url",
            &world.db.url_text,
            "--cp-url",
            &world.sim.base_url(),
            command_name,
        ])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(k) = crash_after {
        command.env(CRASH_AFTER_WRITES_ENV, k.to_string());
    }
    command.status().unwrap()
}

fn crash_at_every_write(backend: Backend) {
    let reports = tempfile::tempdir().unwrap();
    let config = report_config(&reports.path().join("reports"));
    let config = config.path();
    let reference = World::new(backend, 40, 9);
    drift(&reference);
    assert!(finished(nightly_binary(&reference, None, config)));
    let expected = end_state(&reference);
    let written = std::fs::read_dir(reports.path().join("reports"))
        .unwrap()
        .count();
    assert!(
        written >= 4,
        "report HTML, CSV, JSON and .eml written ({written})"
    );
    assert!(!expected.1.is_empty(), "the scenario posts transactions");

    let mut crashes = 0;
    for k in 1.. {
        let world = World::new(backend, 40, 9);
        drift(&world);
        let first = nightly_binary(&world, Some(k), config);
        if finished(first) {
            // The run finished before reaching write k: every write point was tried.
            assert_eq!(
                end_state(&world),
                expected,
                "{backend:?}: no crash at k = {k}"
            );
            break;
        }
        assert!(aborted(first), "{backend:?}: write {k}: {first:?}");
        crashes += 1;
        let second = nightly_binary(&world, None, config);
        assert!(
            finished(second),
            "{backend:?}: the re-run after a crash at write {k} finished: {second:?}"
        );
        assert_eq!(
            end_state(&world),
            expected,
            "{backend:?}: crash after write {k}"
        );
    }
    assert!(
        crashes >= 3,
        "{backend:?}: the scenario has several write points ({crashes})"
    );
}

#[test]
fn sqlite_nightly_survives_a_crash_at_every_write() {
    crash_at_every_write(Backend::Sqlite);
}

#[test]
fn postgres_nightly_survives_a_crash_at_every_write() {
    crash_at_every_write(Backend::Postgres);
}

/// `send-fees` aborted right after its pushes reached Community Pass and
/// before their links recorded them, then run again: every fee is in
/// Community Pass once, every link records it, and nothing is left to send.
fn send_fees_crash(backend: Backend) {
    let world = World::new(backend, 30, 13);
    use diesel::connection::SimpleConnection;
    // Changes to send: an edit of every sent fee's description.
    world
        .conn()
        .batch_execute("UPDATE student_fees SET description = description || ' (edited)'")
        .unwrap();
    let send = |crash_after: Option<u64>| cpsync_binary(&world, "send-fees", crash_after, None);
    let vendor_before = cpsync::portal::all_fees(&world.portal, None).unwrap().len();
    let first = send(Some(1));
    assert!(aborted(first), "{backend:?}: {first:?}");
    assert!(finished(send(None)), "{backend:?}: the re-run finishes");
    let vendor = cpsync::portal::all_fees(&world.portal, None).unwrap();
    assert_eq!(
        vendor.len(),
        vendor_before,
        "{backend:?}: nothing created twice"
    );
    let edited = vendor
        .iter()
        .filter(|f| f.description.ends_with(" (edited)"))
        .count();
    let pending = cpsync::db::outbox::pending_count(&mut world.conn()).unwrap();
    assert_eq!(pending, 0, "{backend:?}: nothing left to send");
    let sent = cpsync::sync::push::sent_fee_ids(&mut world.conn())
        .unwrap()
        .len();
    assert!(
        edited > 0 && edited <= sent,
        "{backend:?}: {edited} edited of {sent}"
    );
    let report = world.send_pending();
    assert_eq!(report.pushed, 0, "{backend:?}: {report:?}");
}

#[test]
fn send_fees_killed_between_the_vendor_write_and_its_link_finishes_next_run() {
    for backend in common::BACKENDS {
        send_fees_crash(backend);
    }
}

/// `send-fees` with `CPSYNC_KILL_AFTER_OPERATIONS=n`: SIGKILLed after its
/// n-th operation; returns its exit status and the operation it named.
fn send_fees_killed_after(world: &World, n: u64) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .args([
            "--database-url",
            &world.db.url_text,
            "--cp-url",
            &world.sim.base_url(),
            "send-fees",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .env(cpsync::failpoint::KILL_AFTER_OPERATIONS_ENV, n.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let named = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cpsync: killed after operation "))
        .unwrap_or("")
        .to_string();
    (output.status, named)
}

/// Every operation of a send-fees with changes to push is a kill point
/// (the chaos campaign's kills by count): for n = 1, 2, … the process
/// SIGKILLs itself after operation n, the same operation in two worlds
/// built alike, until n is past its last; the run after each kill finishes
/// the work with nothing created twice.
#[test]
fn send_fees_killed_after_each_operation_replays_and_finishes() {
    use diesel::connection::SimpleConnection;
    use std::os::unix::process::ExitStatusExt;
    let worlds = [
        World::new(Backend::Sqlite, 20, 17),
        World::new(Backend::Sqlite, 20, 17),
    ];
    let mut named: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (world, named) in worlds.iter().zip(named.iter_mut()) {
        let vendor_before = cpsync::portal::all_fees(&world.portal, None).unwrap().len();
        for n in 1..=60 {
            world
                .conn()
                .batch_execute(&format!(
                    "UPDATE student_fees SET description = 'edit {n}' WHERE id IN (SELECT fee_id FROM cp_fee_links)"
                ))
                .unwrap();
            let (status, what) = send_fees_killed_after(world, n);
            if status.signal() != Some(9) {
                assert!(finished(status), "operation {n}: {status:?}");
                break;
            }
            assert!(
                !what.is_empty(),
                "killed at {n} without naming the operation"
            );
            named.push(what);
            assert!(
                finished(cpsync_binary(world, "send-fees", None, None)),
                "the run after the kill at {n} finishes"
            );
            assert_eq!(
                cpsync::db::outbox::pending_count(&mut world.conn()).unwrap(),
                0,
                "nothing left to send after the kill at {n}"
            );
        }
        let vendor = cpsync::portal::all_fees(&world.portal, None).unwrap();
        assert_eq!(vendor.len(), vendor_before, "nothing created twice");
    }
    assert!(
        named[0].len() >= 4,
        "a send-fees has several kill points: {:?}",
        named[0]
    );
    assert_eq!(named[0], named[1], "the n-th operation is the same one");
}
