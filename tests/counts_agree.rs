//! One number, one name (issue 16): for one nightly run, on both backends,
//! the counts in items agree across `nightly --json`, the `-summary.json`
//! file, `runs --json` (and the summary it stores), the needs-review CSV
//! and the email subject.

mod common;

use std::io::Write;
use std::process::Command;

use common::world::World;
use common::Backend;
use cpsync::db::genesis;
use cpsync::domain::FeeStatus;
use cpsync::money::Money;
use diesel::connection::SimpleConnection;

fn run(world: &World, config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .arg("--config")
        .arg(config)
        .args(["--database-url", &world.db.url_text])
        .args(["--cp-url", &world.sim.base_url()])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn file_ending(dir: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}

fn counts_agree(backend: Backend) {
    let world = World::new(backend, 60, 23);
    let mut conn = world.conn();
    let fees: Vec<_> = genesis::load_fees(&mut conn, None)
        .unwrap()
        .records
        .into_iter()
        .filter(|f| world.setup.policy().eligibility(f).is_ok())
        .filter(|f| f.status == FeeStatus::Open && f.amount >= Money::from_cents(1_000))
        .collect();
    let txns = genesis::load_txns(&mut conn, None).unwrap().records;
    let fees: Vec<_> = fees
        .into_iter()
        .filter(|f| !txns.iter().any(|t| t.fee_id == f.id))
        .collect();
    // A payment to post, an overpayment (a credit), an amount edited after
    // a payment (review).
    world.admin.pay(fees[0].id, None).unwrap();
    world
        .admin
        .pay(fees[1].id, Some(fees[1].amount + Money::from_cents(300)))
        .unwrap();
    world.admin.pay(fees[2].id, None).unwrap();
    conn.batch_execute(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 900 WHERE id = {}",
        fees[2].id
    ))
    .unwrap();

    let reports = tempfile::tempdir().unwrap();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        config,
        "district = \"Counts SD\"\n[reports]\ndir = \"{}\"",
        reports.path().display()
    )
    .unwrap();
    let (code, out, err) = run(&world, config.path(), &["nightly", "--json"]);
    assert_eq!(code, 3, "{backend:?}: {err}");
    let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
    let counts = &cli["counts"];
    assert_eq!(counts["needs_review"], 1, "{backend:?}: {counts}");
    assert_eq!(counts["credits_on_account"], 1, "{counts}");
    assert!(counts["corrected"].as_u64().unwrap() >= 2, "{counts}");

    // The headline is the state after the run's corrections: only the
    // $9.00 edited after a payment is left between the sides.
    assert_eq!(cli["difference"], "9.00", "{backend:?}");
    assert_ne!(cli["difference_before_corrections"], "9.00");

    // -summary.json: the same numbers under the same names.
    let summary_path = file_ending(reports.path(), "-summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary_path).unwrap()).unwrap();
    assert_eq!(&summary["counts"], counts, "{backend:?}");

    // runs --json: the row's items, and the summary it stores.
    let (code, out, _) = run(
        &world,
        config.path(),
        &["runs", "--json", "--task", "nightly_sync"],
    );
    assert_eq!(code, 0);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &runs[0];
    assert_eq!(row["corrected"], counts["corrected"]);
    let waiting = counts["needs_review"].as_u64().unwrap() + counts["held"].as_u64().unwrap();
    assert_eq!(row["needs_review"].as_u64().unwrap(), waiting);
    let stored: serde_json::Value =
        serde_json::from_str(row["summary_json"].as_str().unwrap()).unwrap();
    assert_eq!(&stored["counts"], counts);

    // The CSV: one row per item needing a person (held ones included).
    let csv = std::fs::read_to_string(file_ending(reports.path(), "-needs-review.csv")).unwrap();
    assert!(csv.starts_with('\u{feff}'), "a byte order mark for Excel");
    assert_eq!(csv.lines().count() as u64 - 1, waiting, "{csv}");

    // The corrections CSV: one row per item corrected.
    let corrections =
        std::fs::read_to_string(file_ending(reports.path(), "-corrections.csv")).unwrap();
    assert_eq!(
        corrections.lines().count() as u64 - 1,
        counts["corrected"].as_u64().unwrap(),
        "{corrections}"
    );

    // The email subject.
    let eml = std::fs::read_to_string(file_ending(reports.path(), ".eml")).unwrap();
    let unfolded = eml.replace("\r\n ", " ").replace("\n ", " ");
    assert!(
        unfolded.contains(&format!("review ({waiting})")),
        "{backend:?}: {}",
        unfolded
            .lines()
            .find(|l| l.starts_with("Subject"))
            .unwrap_or("")
    );
}

#[test]
fn sqlite_counts_agree_across_every_output() {
    counts_agree(Backend::Sqlite);
}

#[test]
fn postgres_counts_agree_across_every_output() {
    counts_agree(Backend::Postgres);
}
