//! Manual runs (issue 16), on both backends, driving the real `cpsync
//! nightly` against the in-process simulator and the test SMTP server
//! (aiosmtpd): a dry run and a `--student` run write their report but send
//! no mail unless `--email` is given; a reversed date range or an unknown
//! student is refused (exit 2) before anything runs; a scoped run never
//! says "Full run"; a report or email that fails is recorded on the run
//! ("report failed: …", "mail failed: …").

mod common;

use std::io::Write;
use std::process::Command;

use common::world::World;
use common::Backend;
use cpsync::db::runs;

fn smtp_port() -> u16 {
    std::env::var("CPSYNC_TEST_SMTP_PORT")
        .expect("CPSYNC_TEST_SMTP_PORT is not set: run the suite with scripts/test")
        .parse()
        .unwrap()
}

fn maildir() -> std::path::PathBuf {
    std::env::var("CPSYNC_TEST_SMTP_MAILDIR")
        .expect("CPSYNC_TEST_SMTP_MAILDIR is not set")
        .into()
}

/// Messages in the shared maildir sent from `domain` (unique to one test).
fn messages_from(domain: &str) -> usize {
    let mut count = 0;
    for folder in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir().join(folder)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(domain) {
                count += 1;
            }
        }
    }
    count
}

fn config(reports: &std::path::Path, domain: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "district = \"Manual Runs SD\"\n[reports]\ndir = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"cpsync@{domain}\"\nto = [\"office@{domain}\"]\ntimeout_secs = 30",
        reports.display(),
        smtp_port()
    )
    .unwrap();
    file
}

fn nightly(world: &World, config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let all: Vec<&str> = std::iter::once("nightly")
        .chain(args.iter().copied())
        .collect();
    common::cpsync_in_world(world, config, &all)
}

fn manual_runs_do_not_mail_the_office(backend: Backend) {
    let world = World::new(backend, 12, 8);
    let domain = format!("manual-{}-{backend:?}.example", std::process::id()).to_lowercase();
    let reports = tempfile::tempdir().unwrap();
    let config = config(reports.path(), &domain);
    let student = cpsync::db::genesis::load_students(&mut world.conn())
        .unwrap()
        .records[0]
        .id
        .to_string();

    let (code, out, err) = nightly(&world, config.path(), &["--dry-run"]);
    assert!(code == 0 || code == 3, "{backend:?}: {code} {err}");
    assert!(out.contains("not emailed"), "{out}");
    assert!(
        !err.contains("done in"),
        "no progress lines into a log without -v: {err}"
    );
    let (code, _, err) = nightly(&world, config.path(), &["--dry-run", "-v"]);
    assert!(code == 0 || code == 3, "{backend:?}: {code} {err}");
    for phase in ["nightly: fetch done in", "nightly: reconcile done in"] {
        assert!(err.contains(phase), "-v shows each phase ({phase}): {err}");
    }
    let (code, out, err) = nightly(&world, config.path(), &["--student", &student]);
    assert!(code == 0 || code == 3, "{backend:?}: {code} {err}");
    assert!(!out.contains("Full run"), "{out}");
    assert!(out.contains("Scoped run"), "{out}");
    assert_eq!(
        messages_from(&domain),
        0,
        "{backend:?}: no mail without --email"
    );

    let (code, _, err) = nightly(&world, config.path(), &["--dry-run", "--email"]);
    assert!(code == 0 || code == 3, "{backend:?}: {code} {err}");
    assert_eq!(messages_from(&domain), 1, "{backend:?}: --email mails");

    // Rebuilding that run's report does not mail it twice; --resend does.
    let mailed = runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 1).unwrap()[0].id;
    let (code, out, err) = report(&world, config.path(), mailed, &[]);
    assert_eq!(code, 0, "{backend:?}: {err}");
    assert!(out.contains("already emailed at"), "{out}");
    assert_eq!(messages_from(&domain), 1, "{backend:?}: not mailed twice");
    let (code, _, err) = report(&world, config.path(), mailed, &["--resend"]);
    assert_eq!(code, 0, "{backend:?}: {err}");
    assert_eq!(
        messages_from(&domain),
        2,
        "{backend:?}: --resend mails again"
    );

    let before = runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 50)
        .unwrap()
        .len();
    let (code, _, err) = nightly(
        &world,
        config.path(),
        &["--from", "2026-12-01", "--to", "2026-09-01"],
    );
    assert_eq!(code, 2, "{backend:?}: {err}");
    assert!(err.contains("reversed"), "{err}");
    let (code, _, err) = nightly(&world, config.path(), &["--student", "999"]);
    assert_eq!(
        code, 1,
        "{backend:?}: an unknown id, as in every command: {err}"
    );
    assert!(err.contains("student 999 is not in Genesis"), "{err}");
    let after = runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 50)
        .unwrap()
        .len();
    assert_eq!(before, after, "a refused run records nothing");
    assert_eq!(messages_from(&domain), 2);
}

/// `cpsync report --run ID [ARGS]` with `config`.
fn report(
    world: &World,
    config: &std::path::Path,
    run_id: i64,
    args: &[&str],
) -> (i32, String, String) {
    let run_id = run_id.to_string();
    let all: Vec<&str> = ["report", "--run", run_id.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    common::cpsync_in_world(world, config, &all)
}

/// `nightly --incremental --full-every-days N` at the command line: an
/// incremental run while the last full run is younger than N days, a full
/// one (saying why) once it is as old.
#[test]
fn full_every_days_bounds_the_age_of_the_last_full_run() {
    use diesel::connection::SimpleConnection;
    let world = World::new(Backend::Sqlite, 10, 4);
    let domain = format!("full-every-{}.example", std::process::id());
    let reports = tempfile::tempdir().unwrap();
    let config = config(reports.path(), &domain);
    let coverage = |args: &[&str]| {
        let mut all = vec!["--incremental", "--json", "--no-report"];
        all.extend_from_slice(args);
        let (code, out, err) = nightly(&world, config.path(), &all);
        assert!(code == 0 || code == 3, "{code} {err}");
        let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        summary["coverage"].to_string()
    };
    let (code, _, err) = nightly(&world, config.path(), &["--no-report"]);
    assert!(code == 0 || code == 3, "the first full run: {code} {err}");
    let shown = coverage(&[]);
    assert!(
        shown.contains("since_run"),
        "incremental after a full run: {shown}"
    );
    // Three days pass.
    world
        .conn()
        .batch_execute("UPDATE cp_nightly_marks SET created_at = datetime(created_at, '-3 days')")
        .unwrap();
    let shown = coverage(&["--full-every-days", "7"]);
    assert!(
        shown.contains("since_run"),
        "3 days < 7: still incremental: {shown}"
    );
    let shown = coverage(&["--full-every-days", "2"]);
    assert!(
        shown.contains("is 2 days old or more"),
        "3 days ≥ 2: a full run, saying why: {shown}"
    );
    let (code, _, err) = nightly(
        &world,
        config.path(),
        &["--incremental", "--full-every-days", "0"],
    );
    assert_eq!(code, 2, "0 days is refused: {err}");
    assert_eq!(messages_from(&domain), 0, "--no-report mails nobody");
}

#[test]
fn sqlite_manual_runs_do_not_mail_the_office() {
    manual_runs_do_not_mail_the_office(Backend::Sqlite);
}

#[test]
fn postgres_manual_runs_do_not_mail_the_office() {
    manual_runs_do_not_mail_the_office(Backend::Postgres);
}

fn config_with(reports: &std::path::Path, smtp_port: u16) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "district = \"Failures SD\"\n[reports]\ndir = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\nfrom = \"cpsync@failures.example\"\nto = [\"office@failures.example\"]\ntimeout_secs = 5",
        reports.display()
    )
    .unwrap();
    file
}

/// `cpsync report --run ID` with `config`; it must succeed.
fn rebuild_report(world: &World, config: &std::path::Path, run_id: i64, backend: Backend) {
    let (code, _, err) = report(world, config, run_id, &[]);
    assert_eq!(code, 0, "{backend:?}: {err}");
}

fn latest_nightly(world: &World) -> runs::RunRecord {
    runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 1).unwrap()[0].clone()
}

fn report_and_mail_failures_are_recorded(backend: Backend) {
    let world = World::new(backend, 12, 9);
    // A mail server that is not there.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let reports = tempfile::tempdir().unwrap();
    let failing = config_with(reports.path(), closed_port);
    let (code, _, err) = nightly(&world, failing.path(), &[]);
    assert_eq!(code, 1, "{backend:?}: {err}");
    let run = latest_nightly(&world);
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .starts_with("mail failed: "),
        "{backend:?}: {run:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(run.summary_json.as_deref().unwrap()).unwrap();
    assert_eq!(summary["report_failure"]["stage"], "mail");

    // Once the mail server is back, `report --run` rebuilds and sends it.
    let domain = format!("rebuilt-{}-{backend:?}.example", std::process::id()).to_lowercase();
    let working = config(reports.path(), &domain);
    rebuild_report(&world, working.path(), run.id, backend);
    assert_eq!(
        messages_from(&domain),
        1,
        "{backend:?}: the report was sent"
    );

    // A report folder that cannot be created (a file is in the way).
    let blocked = reports.path().join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let blocked_config = config_with(&blocked.join("reports"), closed_port);
    let (code, _, err) = nightly(&world, blocked_config.path(), &[]);
    assert_eq!(code, 1, "{backend:?}: {err}");
    let run = latest_nightly(&world);
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .starts_with("report failed: "),
        "{backend:?}: {run:?}"
    );
    assert!(
        err.contains(&format!("cpsync report --run {}", run.id)),
        "{backend:?}: the failure says how to get the report: {err}"
    );

    // The report was kept with the run (without student names), so it can
    // be written and sent once there is a folder.
    let kept = cpsync::db::run_reports::load(&mut world.conn(), run.id)
        .unwrap()
        .expect("the report is kept with the run");
    let students = cpsync::db::genesis::load_students_by_ids(
        &mut world.conn(),
        &(100_001..=100_012)
            .map(cpsync::domain::StudentId)
            .collect::<Vec<_>>(),
    )
    .unwrap()
    .records;
    assert!(!students.is_empty());
    for student in &students {
        let name = format!("{} {}", student.first_name, student.last_name);
        assert!(
            !kept.contains(&name),
            "{backend:?}: {name} in the kept report"
        );
    }
    let domain = format!("kept-{}-{backend:?}.example", std::process::id()).to_lowercase();
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let working = config(rebuilt_dir.path(), &domain);
    rebuild_report(&world, working.path(), run.id, backend);
    let html = std::fs::read_dir(rebuilt_dir.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.path()
                .to_string_lossy()
                .ends_with(&format!("-run-{}.html", run.id))
        })
        .expect("the rebuilt HTML report");
    assert!(std::fs::read_to_string(html.path())
        .unwrap()
        .contains("Failures SD"));
    assert_eq!(
        messages_from(&domain),
        1,
        "{backend:?}: the kept report was sent"
    );
}

#[test]
fn sqlite_report_and_mail_failures_are_recorded_on_the_run() {
    report_and_mail_failures_are_recorded(Backend::Sqlite);
}

#[test]
fn postgres_report_and_mail_failures_are_recorded_on_the_run() {
    report_and_mail_failures_are_recorded(Backend::Postgres);
}

/// `cpsync batch` runs every step even when the ones before fail: with
/// Community Pass unreachable, send-fees, get-payments and get-balances
/// fail, the nightly still runs and mails its failure report, and the
/// batch exits 1 (the worst step) for the scheduler.
fn batch_runs_every_step(backend: Backend) {
    let world = World::new(backend, 12, 10);
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let domain = format!("batch-{}-{backend:?}.example", std::process::id()).to_lowercase();
    let reports = tempfile::tempdir().unwrap();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        config,
        "district = \"Batch SD\"\n[community_pass]\nbase_url = \"http://127.0.0.1:{closed_port}/\"\nconnect_timeout_secs = 1\nrequest_timeout_secs = 1\ncall_budget_secs = 2\n[reports]\ndir = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"cpsync@{domain}\"\nto = [\"office@{domain}\"]\ntimeout_secs = 30",
        reports.path().display(),
        smtp_port()
    )
    .unwrap();
    let before = runs::recent_runs(&mut world.conn(), None, 100)
        .unwrap()
        .len();
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .arg("--config")
        .arg(config.path())
        .args(["--database-url", &world.db.url_text, "batch"])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .env_remove("CPSYNC_CP_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{backend:?}: {stdout}");
    assert!(
        stdout.contains("no [sftp] section") && stdout.contains("step 4/4: cpsync nightly"),
        "{backend:?}: {stdout}"
    );
    let recorded = runs::recent_runs(&mut world.conn(), None, 100).unwrap();
    let tasks: std::collections::BTreeSet<String> = recorded[..recorded.len() - before]
        .iter()
        .map(|r| r.task.clone())
        .collect();
    for task in ["send_fees", "get_payments", "get_balances", "nightly_sync"] {
        assert!(tasks.contains(task), "{backend:?}: {task} ran: {tasks:?}");
    }
    assert_eq!(
        messages_from(&domain),
        1,
        "{backend:?}: the nightly's failure report reached the office"
    );
}

#[test]
fn batch_runs_every_step_even_after_a_failure() {
    for backend in common::BACKENDS {
        batch_runs_every_step(backend);
    }
}

/// A nightly that cannot reach the database has no run to record and no
/// report to build; the office still gets a short email saying nothing was
/// checked, and the command exits 1.
#[test]
fn an_unreachable_database_still_tells_the_office() {
    let domain = format!("nodb-{}.example", std::process::id());
    let reports = tempfile::tempdir().unwrap();
    let config = config(reports.path(), &domain);
    let missing = reports.path().join("no-such-folder").join("genesis.db");
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .arg("--config")
        .arg(config.path())
        .args([
            "--database-url",
            &format!("sqlite://{}", missing.display()),
            "nightly",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert_eq!(messages_from(&domain), 1, "the office was told: {stderr}");
    // A dry run by hand mails nobody, database or not.
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .arg("--config")
        .arg(config.path())
        .args([
            "--database-url",
            &format!("sqlite://{}", missing.display()),
            "nightly",
            "--dry-run",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(messages_from(&domain), 1, "no mail for a dry run");
}
