//! The benchmark driver behind `scripts/bench`: builds a large district,
//! runs the engine as the district would (release binary, child processes),
//! and measures each figure beside a floor and peers measured in the same
//! run (DuckDB, polars, datacompy on the same CSVs), so the ratios hold on
//! any machine. Ends with the targets table of issue 19, one row per target
//! with its figure, ratio and whether it is met, for SQLite and (with
//! `--database-url`) PostgreSQL side by side; writes the same as JSON.
//!
//! Usage: bench --bin target/release/cpsync --work DIR [--students N]
//!              [--database-url URL] [--json OUT] [--python VENV_PYTHON]
//!              [--memory-students 25000,50000,100000]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cpsync::db::{self, DatabaseUrl, OpenMode};
use cpsync::domain::{FeeId, VendorFee};
use cpsync::money::Money;
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::{all_fees, CommunityPass};
use cpsync::scenario::{self, SentFee};
use cpsync::secret::Secret;
use cpsync::sim::model::FeeRef;
use cpsync::sim::{ParentAction, SimConfig, SimHandle, Simulator};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const API_KEY: &str = "sk_bench_0b5e7c";
/// Samples of the per-call latency figures.
const LATENCY_SAMPLES: usize = 100;
/// Longest a `watch` sample may wait for its fee to arrive.
const WATCH_SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The district size issue 19's targets are stated for.
const TARGET_STUDENTS: usize = 50_000;
/// The fee and transaction counts the time targets are stated for; at
/// another size a time target is scaled by the count actually moved.
const TARGET_FEES: f64 = 450_000.0;
const TARGET_TXNS: f64 = 350_000.0;
/// The peers, each run in its own process on the same two CSVs.
const PEERS: [&str; 3] = ["duckdb", "polars", "datacompy"];

struct Options {
    bin: PathBuf,
    work: PathBuf,
    students: usize,
    database_url: Option<String>,
    json_out: PathBuf,
    python: Option<PathBuf>,
    memory_students: Vec<usize>,
}

fn options() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        bin: PathBuf::from("target/release/cpsync"),
        work: PathBuf::from("target/bench"),
        students: 50_000,
        database_url: None,
        json_out: PathBuf::from("target/bench/bench.json"),
        python: None,
        memory_students: vec![25_000, 50_000, 100_000],
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bin" => options.bin = value.into(),
            "--work" => options.work = value.into(),
            "--students" => options.students = value.parse()?,
            "--database-url" => options.database_url = Some(value),
            "--json" => options.json_out = value.into(),
            "--python" => options.python = Some(value.into()),
            "--memory-students" => {
                options.memory_students = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--memory-students takes a comma-separated list")?;
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(options)
}

/// Runs the cpsync binary with the bench's database and simulator.
struct Engine {
    bin: PathBuf,
    database_url: String,
    cp_url: String,
    /// The API key's file, handed over as `CPSYNC_API_KEY_FILE`.
    key_file: PathBuf,
    /// A config naming the district (the nightly's report needs it) and
    /// the bench's report folder.
    config: PathBuf,
}

impl Engine {
    fn new(bin: &Path, database_url: &str, cp_url: String, work: &Path) -> anyhow::Result<Engine> {
        let config = work.join("cpsync.toml");
        let reports = work.join("reports");
        std::fs::write(
            &config,
            format!(
                "district = \"Bench District\"\n\n[reports]\ndir = {:?}\n",
                reports.display().to_string()
            ),
        )?;
        Ok(Engine {
            bin: bin.to_path_buf(),
            database_url: database_url.to_string(),
            cp_url,
            key_file: work.join("api-key"),
            config,
        })
    }

    /// The arguments every run starts with.
    fn common_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            self.config.clone().into_os_string(),
            "--database-url".into(),
            self.database_url.clone().into(),
            "--cp-url".into(),
            self.cp_url.clone().into(),
        ]
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(self.common_args())
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("CPSYNC_CONFIG")
            .env(cpsync::config::DEFAULT_API_KEY_FILE_ENV, &self.key_file);
        command
    }

    /// Runs to completion; returns (seconds, stdout). Exit 0 or 3 is success.
    fn run(&self, args: &[&str]) -> anyhow::Result<(f64, String)> {
        let started = Instant::now();
        let output = self.command(args).stderr(Stdio::inherit()).output()?;
        let seconds = started.elapsed().as_secs_f64();
        match output.status.code() {
            Some(0) | Some(3) => Ok((
                seconds,
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )),
            other => bail!("cpsync {} exited with {other:?}", args.join(" ")),
        }
    }

    /// Runs under GNU time; returns (seconds, peak RSS in KiB, stdout).
    fn run_measured(&self, args: &[&str], work: &Path) -> anyhow::Result<(f64, u64, String)> {
        let rss_file = work.join("rss.txt");
        let started = Instant::now();
        let output = Command::new("/usr/bin/time")
            .args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg(&self.bin)
            .args(self.common_args())
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("CPSYNC_CONFIG")
            .env(cpsync::config::DEFAULT_API_KEY_FILE_ENV, &self.key_file)
            .stderr(Stdio::inherit())
            .output()
            .context("running /usr/bin/time (GNU time)")?;
        let seconds = started.elapsed().as_secs_f64();
        if !matches!(output.status.code(), Some(0) | Some(3)) {
            bail!(
                "cpsync {} exited with {:?}",
                args.join(" "),
                output.status.code()
            );
        }
        let rss: u64 = std::fs::read_to_string(&rss_file)?
            .trim()
            .lines()
            .last()
            .unwrap_or("0")
            .parse()?;
        Ok((
            seconds,
            rss,
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The figures of one backend, by name (what the JSON holds).
type Figures = BTreeMap<String, Value>;

fn main() -> anyhow::Result<()> {
    let options = options()?;
    std::fs::create_dir_all(&options.work)?;
    let work = options.work.canonicalize()?;
    let sqlite_url = format!("sqlite://{}", work.join("bench.db").display());
    let mut backends: Vec<(&str, String)> = vec![("sqlite", sqlite_url)];
    if let Some(url) = &options.database_url {
        if !url.starts_with("postgres") {
            bail!("--database-url names the PostgreSQL database to bench beside SQLite");
        }
        backends.push(("postgresql", url.clone()));
    }
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for (backend, url) in &backends {
        let mut figures = bench_backend(&options, &work, backend, url)?;
        let memory = memory_runs(&options, &work, backend, url)?;
        figures.insert("memory_peak_mib_by_students".into(), json!(memory));
        results.push((backend, figures));
    }
    let rows = target_rows(&results);
    print_table(&options, &results, &rows);
    let report = json!({
        "students": options.students,
        "backends": results.iter().cloned().collect::<BTreeMap<_, _>>(),
        "targets": rows,
    });
    std::fs::write(&options.json_out, serde_json::to_string_pretty(&report)?)?;
    println!("figures written to {}", options.json_out.display());
    Ok(())
}

/// A district as the first day leaves it: seeded, set up, every fee sent
/// (timed), parents active, their payments pulled (timed).
struct District {
    sim: SimHandle,
    engine: Engine,
    portal: HttpPortal,
    vendor_fees: Vec<VendorFee>,
    sent: Vec<SentFee>,
    figures: Figures,
}

fn start_simulator() -> anyhow::Result<SimHandle> {
    Simulator::start(SimConfig {
        seed: 7,
        ..SimConfig::new(Secret::new(API_KEY))
    })
}

fn first_day(
    options: &Options,
    work: &Path,
    database_url: &str,
    students: usize,
) -> anyhow::Result<District> {
    let sim = start_simulator()?;
    reset_database(database_url)?;
    let engine = Engine::new(&options.bin, database_url, sim.base_url(), work)?;
    let mut figures = Figures::new();
    engine.run(&["migrate"])?;
    let (seed_s, _) = engine.run(&["seed", "--students", &students.to_string(), "--seed", "1"])?;
    figures.insert("seed_seconds".into(), json!(seed_s));
    println!("  seed                {seed_s:>8.2} s");

    cpsync::files::write_private(&engine.key_file, API_KEY.as_bytes())?;
    engine.run(&["setup", "api-key"])?;
    engine.run(&["setup", "categories", "--all"])?;
    engine.run(&["setup", "test-pull"])?;
    engine.run(&["setup", "test-push"])?;
    engine.run(&["setup", "cutoff", "2025-07-01"])?;
    let (send_s, out) = engine.run(&["send-fees", "--json"])?;
    let pushed = serde_json::from_str::<Value>(&out)?["pushed"]
        .as_u64()
        .unwrap_or(0);
    figures.insert("initial_send_seconds".into(), json!(send_s));
    figures.insert("initial_send_fees".into(), json!(pushed));
    println!("  initial send-fees   {send_s:>8.2} s ({pushed} fees pushed)");

    let portal = HttpPortal::new(HttpPortalConfig::new(sim.base_url(), Secret::new(API_KEY)))?;
    let vendor_fees = all_fees(&portal, None)?;
    let sent: Vec<SentFee> = vendor_fees
        .iter()
        .filter(|f| {
            f.status == cpsync::domain::VendorFeeStatus::Open
                && f.balance == f.amount
                && f.balance.is_positive()
        })
        .map(|f| SentFee {
            fee_id: f.genesis_fee_id,
            student_id: f.student_id,
            amount: f.balance,
        })
        .collect();
    let started = Instant::now();
    // Half the fees get the realistic mix, the other half many small payments,
    // so Community Pass holds about 0.8 transactions per fee.
    let (mixed, topped): (Vec<SentFee>, Vec<SentFee>) =
        sent.iter().partition(|f| f.fee_id.0 % 2 == 0);
    let activity = scenario::drive_parents(&sim.admin()?, &mixed, 7, start_time())?;
    let made = activity.payments
        + activity.partial_payments
        + activity.over_payments
        + activity.waivers
        + activity.refunds
        + activity.reversals;
    let extra = top_up_transactions(
        &sim,
        &topped,
        (vendor_fees.len() * 8 / 10).saturating_sub(made as usize),
    )?;
    println!(
        "  parent activity     {:>8.2} s ({} payments, {} extra partial payments)",
        started.elapsed().as_secs_f64(),
        activity.payments,
        extra
    );
    let (pull_s, out) = engine.run(&["get-payments", "--json"])?;
    let fetched = serde_json::from_str::<Value>(&out)?["fetched"]
        .as_u64()
        .unwrap_or(0);
    figures.insert("initial_get_payments_seconds".into(), json!(pull_s));
    figures.insert("initial_get_payments_txns".into(), json!(fetched));
    println!("  initial get-payments{pull_s:>8.2} s ({fetched} transactions)");
    figures.insert("vendor_fees".into(), json!(vendor_fees.len()));
    Ok(District {
        sim,
        engine,
        portal,
        vendor_fees,
        sent,
        figures,
    })
}

/// Injects the 1% drift on both sides the full nightly corrects.
fn drift(district: &District, database_url: &str) -> anyhow::Result<()> {
    let drift_count = (district.vendor_fees.len() / 100 / 3).max(1);
    let sent = &district.sent;
    let mut conn = db::connect(&DatabaseUrl::parse(database_url)?, OpenMode::MustExist)?;
    scenario::inject_genesis_drift(&mut conn, &sent[sent.len() / 2..], drift_count, 90_000_001)?;
    cp_side_drift(&district.sim, &sent[..sent.len() / 2], drift_count)
}

/// Every figure of one backend at `--students`.
fn bench_backend(
    options: &Options,
    work: &Path,
    backend: &str,
    database_url: &str,
) -> anyhow::Result<Figures> {
    println!("cpsync bench: {} students on {backend}", options.students);
    let district = first_day(options, work, database_url, options.students)?;
    let engine = &district.engine;
    let mut figures = district.figures.clone();
    drift(&district, database_url)?;

    let (nightly_s, rss_kib, out) = engine.run_measured(&["nightly", "--json"], work)?;
    let summary: Value = serde_json::from_str(&out)?;
    figures.insert("nightly_seconds".into(), json!(nightly_s));
    figures.insert("nightly_peak_rss_mib".into(), json!(rss_kib / 1024));
    figures.insert("nightly_phases_ms".into(), summary["phases"].clone());
    figures.insert("nightly_counts".into(), summary["counts"].clone());
    println!(
        "  nightly (full)      {nightly_s:>8.2} s, peak {} MiB, phases {}, report {} ms, command {} ms",
        rss_kib / 1024,
        summary["phases"],
        summary["report_ms"],
        summary["elapsed_ms"],
    );

    let floor_s = floor_seconds(
        database_url,
        work,
        &district.sim.base_url(),
        &conn_fee_cursor_ids(&district.vendor_fees),
        summary["records"]["community_pass"].as_u64().unwrap_or(0),
    )?;
    figures.insert("floor_seconds".into(), json!(floor_s));
    figures.insert("nightly_over_floor".into(), json!(nightly_s / floor_s));
    println!(
        "  floor (db client + curl) {floor_s:>5.2} s  → nightly/floor = {:.2}",
        nightly_s / floor_s
    );

    let reconcile_s = summary["phases"]["reconcile"].as_f64().unwrap_or(0.0) / 1000.0;
    figures.insert("reconcile_seconds".into(), json!(reconcile_s));
    if let Some(python) = &options.python {
        let peers = peer_figures(python, database_url, &district.portal, work, reconcile_s)?;
        figures.insert("peers".into(), peers);
    }

    let mut conn = db::connect(&DatabaseUrl::parse(database_url)?, OpenMode::MustExist)?;
    let changed = change_one_percent(&mut conn, &district.sent, district.vendor_fees.len() / 100)?;
    let (incremental_s, out) = engine.run(&["nightly", "--incremental", "--json"])?;
    let incremental: Value = serde_json::from_str(&out)?;
    figures.insert("incremental_nightly_seconds".into(), json!(incremental_s));
    figures.insert(
        "incremental_pct_of_full".into(),
        json!(100.0 * incremental_s / nightly_s),
    );
    figures.insert("incremental_changed_fees".into(), json!(changed));
    figures.insert(
        "incremental_coverage".into(),
        incremental["coverage"].clone(),
    );
    figures.insert(
        "incremental_phases_ms".into(),
        incremental["phases"].clone(),
    );
    println!(
        "  nightly --incremental after 1% ({changed} fees) changed {incremental_s:>6.2} s → {:.1}% of full; {} fees examined, phases {}, report {} ms, command {} ms",
        100.0 * incremental_s / nightly_s,
        incremental["coverage"]["fees_examined"],
        incremental["phases"],
        incremental["report_ms"],
        incremental["elapsed_ms"],
    );

    let (resend_s, out) = engine.run(&["send-fees", "--resend", "--json"])?;
    let resent = serde_json::from_str::<Value>(&out)?["pushed"]
        .as_u64()
        .unwrap_or(0);
    figures.insert("resend_seconds".into(), json!(resend_s));
    figures.insert("resend_fees".into(), json!(resent));
    println!("  send-fees --resend  {resend_s:>8.2} s ({resent} fees pushed)");

    let (p50, p99) = per_student_latency(engine, &district.sent, &["get-payments"])?;
    figures.insert("student_pull_ms".into(), json!({"p50": p50, "p99": p99}));
    println!("  get-payments --student  p50 {p50:.1} ms, p99 {p99:.1} ms (process start included)");

    let (p50, p99) = per_student_latency(engine, &district.sent, &["nightly", "--json"])?;
    figures.insert("student_nightly_ms".into(), json!({"p50": p50, "p99": p99}));
    println!("  nightly --student       p50 {p50:.1} ms, p99 {p99:.1} ms (process start included)");

    match watch_latency(engine, &mut conn, &district.portal, &district.sent)? {
        Some((p50, p99)) => {
            figures.insert("watch_ms".into(), json!({"p50": p50, "p99": p99}));
            println!("  watch commit→Community Pass p50 {p50:.1} ms, p99 {p99:.1} ms");
        }
        None => println!("  watch: not available in this build"),
    }
    figures.insert("students".into(), json!(options.students));
    drop(conn);
    district.sim.shutdown()?;
    Ok(figures)
}

/// The nightly's peak memory at each of `--memory-students`: for each size
/// a fresh district through the same first day and drift as the main run,
/// then one full nightly under GNU time.
fn memory_runs(
    options: &Options,
    work: &Path,
    backend: &str,
    database_url: &str,
) -> anyhow::Result<BTreeMap<usize, u64>> {
    let mut peaks = BTreeMap::new();
    for &students in &options.memory_students {
        println!("  memory run: {students} students on {backend}");
        let url = match backend {
            "sqlite" => format!("sqlite://{}", work.join("memory.db").display()),
            _ => database_url.to_string(),
        };
        let district = first_day(options, work, &url, students)?;
        drift(&district, &url)?;
        let (seconds, rss_kib, _) = district.engine.run_measured(&["nightly", "--json"], work)?;
        println!(
            "  memory run: nightly {seconds:.2} s, peak {} MiB",
            rss_kib / 1024
        );
        peaks.insert(students, rss_kib / 1024);
        district.sim.shutdown()?;
    }
    Ok(peaks)
}

/// Growth of peak memory per 10,000 students: the least-squares slope over
/// the memory runs (None with fewer than two sizes).
fn growth_per_10k(peaks: &BTreeMap<usize, u64>) -> Option<f64> {
    if peaks.len() < 2 {
        return None;
    }
    let n = peaks.len() as f64;
    let mean_x = peaks.keys().map(|&s| s as f64).sum::<f64>() / n;
    let mean_y = peaks.values().map(|&m| m as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (&s, &m) in peaks {
        covariance += (s as f64 - mean_x) * (m as f64 - mean_y);
        variance += (s as f64 - mean_x).powi(2);
    }
    Some(covariance / variance * 10_000.0)
}

/// One row of the targets table for one backend.
#[derive(Clone, serde::Serialize)]
struct Cell {
    value: Option<f64>,
    target: Option<f64>,
    ratio: Option<f64>,
    met: Option<bool>,
    note: String,
}

#[derive(Clone, serde::Serialize)]
struct Row {
    figure: &'static str,
    unit: &'static str,
    target: String,
    backends: BTreeMap<String, Cell>,
}

fn cell(value: Option<f64>, target: Option<f64>, note: String) -> Cell {
    let ratio = match (value, target) {
        (Some(v), Some(t)) if t > 0.0 => Some(v / t),
        _ => None,
    };
    Cell {
        value,
        target,
        ratio,
        met: ratio.map(|r| r <= 1.0),
        note,
    }
}

fn number(figures: &Figures, path: &[&str]) -> Option<f64> {
    let mut value = figures.get(path[0])?;
    for key in &path[1..] {
        value = value.get(key)?;
    }
    value.as_f64()
}

/// Issue 19's targets, each row's figure for each backend.
fn target_rows(results: &[(&str, Figures)]) -> Vec<Row> {
    type Judge = fn(&str, &Figures) -> Cell;
    let specs: Vec<(&'static str, &'static str, &'static str, Judge)> = vec![
        (
            "nightly --incremental after 1% changed, share of full",
            "%",
            "≤ 5 %",
            |_, f| {
                cell(
                    number(f, &["incremental_pct_of_full"]),
                    Some(5.0),
                    String::new(),
                )
            },
        ),
        ("initial send-fees", "s", "≤ 20 s at 450k fees", |_, f| {
            let fees = number(f, &["initial_send_fees"]).unwrap_or(0.0);
            cell(
                number(f, &["initial_send_seconds"]),
                Some(20.0 * fees / TARGET_FEES),
                format!("{fees:.0} fees"),
            )
        }),
        (
            "send-fees --resend of every fee",
            "s",
            "≤ 20 s at 450k fees",
            |_, f| {
                let fees = number(f, &["resend_fees"]).unwrap_or(0.0);
                cell(
                    number(f, &["resend_seconds"]),
                    Some(20.0 * fees / TARGET_FEES),
                    format!("{fees:.0} fees"),
                )
            },
        ),
        (
            "initial get-payments",
            "s",
            "≤ 10 s at 350k txns",
            |_, f| {
                let txns = number(f, &["initial_get_payments_txns"]).unwrap_or(0.0);
                cell(
                    number(f, &["initial_get_payments_seconds"]),
                    Some(10.0 * txns / TARGET_TXNS),
                    format!("{txns:.0} txns"),
                )
            },
        ),
        ("full nightly / floor", "×", "≤ 1.5", |_, f| {
            cell(number(f, &["nightly_over_floor"]), Some(1.5), String::new())
        }),
        (
            "reconcile phase / DuckDB load+compare",
            "×",
            "≤ 1",
            |_, f| {
                cell(
                    number(f, &["peers", "duckdb", "reconcile_over_load_compare"]),
                    Some(1.0),
                    match number(f, &["peers", "duckdb", "load_compare_s"]) {
                        Some(s) => format!("DuckDB {s:.3} s"),
                        None => "no --python: peers not run".into(),
                    },
                )
            },
        ),
        (
            "nightly peak memory at 50k students",
            "MiB",
            "≤ 1024 MiB",
            |_, f| {
                let peak = f
                    .get("memory_peak_mib_by_students")
                    .and_then(|m| m.get(TARGET_STUDENTS.to_string()))
                    .and_then(Value::as_f64)
                    .or_else(|| {
                        (number(f, &["students"]) == Some(TARGET_STUDENTS as f64))
                            .then(|| number(f, &["nightly_peak_rss_mib"]))
                            .flatten()
                    });
                let note = if peak.is_some() {
                    String::new()
                } else {
                    "no run at 50k students".into()
                };
                cell(peak, Some(1024.0), note)
            },
        ),
        (
            "nightly peak memory growth per 10k students",
            "MiB",
            "printed",
            |_, f| {
                let peaks: BTreeMap<usize, u64> = f
                    .get("memory_peak_mib_by_students")
                    .and_then(|m| serde_json::from_value(m.clone()).ok())
                    .unwrap_or_default();
                let runs: Vec<String> = peaks.iter().map(|(s, m)| format!("{s}: {m}")).collect();
                cell(
                    growth_per_10k(&peaks),
                    None,
                    format!("peaks {}", runs.join(", ")),
                )
            },
        ),
        (
            "nightly --student p99, process start included",
            "ms",
            "≤ 100 ms",
            |_, f| {
                cell(
                    number(f, &["student_nightly_ms", "p99"]),
                    Some(100.0),
                    String::new(),
                )
            },
        ),
        (
            "get-payments --student p99, process start included",
            "ms",
            "≤ 10 ms SQLite, ≤ 15 ms PostgreSQL",
            |backend, f| {
                let target = if backend == "sqlite" { 10.0 } else { 15.0 };
                cell(
                    number(f, &["student_pull_ms", "p99"]),
                    Some(target),
                    String::new(),
                )
            },
        ),
        (
            "watch commit → Community Pass p99",
            "ms",
            "≤ 60 ms SQLite, ≤ 15 ms PostgreSQL",
            |backend, f| {
                let target = if backend == "sqlite" { 60.0 } else { 15.0 };
                let p50 = number(f, &["watch_ms", "p50"]);
                cell(
                    number(f, &["watch_ms", "p99"]),
                    Some(target),
                    p50.map(|p| format!("p50 {p:.1} ms")).unwrap_or_default(),
                )
            },
        ),
    ];
    specs
        .into_iter()
        .map(|(figure, unit, target, judge)| Row {
            figure,
            unit,
            target: target.to_string(),
            backends: results
                .iter()
                .map(|(backend, figures)| (backend.to_string(), judge(backend, figures)))
                .collect(),
        })
        .collect()
}

fn describe(cell: &Cell, unit: &str) -> String {
    let value = match cell.value {
        Some(v) if unit == "MiB" => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
        None => "not measured".to_string(),
    };
    let verdict = match (cell.target, cell.ratio, cell.met) {
        (Some(t), Some(r), Some(met)) => {
            format!(" / {t:.2} = {r:.2} {}", if met { "met" } else { "NOT met" })
        }
        _ => String::new(),
    };
    let note = if cell.note.is_empty() {
        String::new()
    } else {
        format!(" ({})", cell.note)
    };
    format!("{value}{verdict}{note}")
}

fn print_table(options: &Options, results: &[(&str, Figures)], rows: &[Row]) {
    println!();
    println!(
        "targets (issue 19) at {} students; each cell: figure / target = ratio, met when ≤ 1{}",
        options.students,
        if options.students == TARGET_STUDENTS {
            String::new()
        } else {
            "; time targets scaled to the fees or transactions moved".to_string()
        }
    );
    for row in rows {
        println!("- {} (target {})", row.figure, row.target);
        for (backend, _) in results {
            if let Some(cell) = row.backends.get(*backend) {
                println!("    {backend:<10} {}", describe(cell, row.unit));
            }
        }
    }
    for (backend, figures) in results {
        if let Some(peers) = figures.get("peers") {
            println!(
                "peers on {backend} (same CSVs; reconcile phase {:.3} s):",
                number(figures, &["reconcile_seconds"]).unwrap_or(0.0)
            );
            for peer in PEERS {
                let p = &peers[peer];
                println!(
                    "    {peer:<10} load+compare {:.3} s (reconcile/it {:.2}), compare alone {:.3} s (reconcile/it {:.2}), {} differences, version {}",
                    p["load_compare_s"].as_f64().unwrap_or(0.0),
                    p["reconcile_over_load_compare"].as_f64().unwrap_or(0.0),
                    p["compare_s"].as_f64().unwrap_or(0.0),
                    p["reconcile_over_compare"].as_f64().unwrap_or(0.0),
                    p["differences"],
                    p["version"].as_str().unwrap_or("?"),
                );
            }
        }
    }
}

fn start_time() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 9, 1)
        .expect("valid")
        .and_hms_opt(8, 0, 0)
        .expect("valid")
}

fn reset_database(url: &str) -> anyhow::Result<()> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Sqlite(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        DatabaseUrl::Postgres(_) => {
            let mut conn = db::connect(&DatabaseUrl::parse(url)?, OpenMode::MustExist)?;
            db::migrate::revert_all(&mut conn).ok();
        }
    }
    Ok(())
}

/// Partial payments of $1–$5 on `fees` until `wanted` are made, keeping each
/// fee's balance positive (tracked here, so no action is refused and the
/// simulator takes them in batches).
fn top_up_transactions(sim: &SimHandle, fees: &[SentFee], wanted: usize) -> anyhow::Result<usize> {
    let admin = sim.admin()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut left: Vec<i64> = fees.iter().map(|f| f.amount.cents()).collect();
    let mut actions = Vec::with_capacity(wanted);
    let mut misses = 0;
    while actions.len() < wanted && misses < wanted * 4 + 1_000 {
        let index = rng.gen_range(0..fees.len());
        let cents = rng.gen_range(100..500);
        if left[index] <= cents {
            misses += 1;
            continue;
        }
        left[index] -= cents;
        actions.push(ParentAction::Payment {
            fee: FeeRef::Genesis(fees[index].fee_id),
            amount: Some(Money::from_cents(cents)),
            method: Some("card".into()),
            occurred_at: Some(start_time()),
        });
    }
    for chunk in actions.chunks(scenario::ACTIONS_PER_CALL_MAX) {
        admin.act(chunk.to_vec())?;
    }
    Ok(actions.len())
}

/// 1% drift on the Community Pass side: payments made after the pull.
fn cp_side_drift(sim: &SimHandle, fees: &[SentFee], count: usize) -> anyhow::Result<()> {
    let admin = sim.admin()?;
    for fee in fees.iter().take(count) {
        let _ = admin.pay(fee.fee_id, Some(Money::from_cents(100)));
    }
    Ok(())
}

/// The page boundaries of the fee listing (its cursor is the last fee id of a page).
fn conn_fee_cursor_ids(fees: &[VendorFee]) -> Vec<FeeId> {
    let mut ids: Vec<FeeId> = fees.iter().map(|f| f.genesis_fee_id).collect();
    ids.sort();
    ids.chunks(cpsync::portal::PAGE_SIZE_MAX as usize)
        .filter_map(|c| c.last().copied())
        .collect()
}

/// The floor: the database's own client reading the same rows, plus curl
/// fetching every page of fees and transactions over one keep-alive connection.
fn floor_seconds(
    database_url: &str,
    work: &Path,
    base_url: &str,
    fee_cursors: &[FeeId],
    cp_records: u64,
) -> anyhow::Result<f64> {
    let tables = ["student_fees", "fee_transactions", "cp_fee_links"];
    let started = Instant::now();
    match DatabaseUrl::parse(database_url)? {
        DatabaseUrl::Sqlite(path) => {
            let sql: String = tables
                .iter()
                .map(|t| format!("SELECT * FROM {t};\n"))
                .collect();
            let status = Command::new("sqlite3")
                .arg(&path)
                .arg(sql)
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("sqlite3 failed");
            }
        }
        DatabaseUrl::Postgres(url) => {
            for t in tables {
                let status = Command::new("psql")
                    .arg(&url)
                    .arg("-c")
                    .arg(format!("\\copy {t} to '/dev/null'"))
                    .stdout(Stdio::null())
                    .status()?;
                if !status.success() {
                    bail!("psql failed");
                }
            }
        }
    }
    let db_s = started.elapsed().as_secs_f64();
    let size = cpsync::portal::PAGE_SIZE_MAX;
    let mut config = std::fs::File::create(work.join("curl.cfg"))?;
    writeln!(config, "header = \"Authorization: Bearer {API_KEY}\"")?;
    let mut after_fee: Option<FeeId> = None;
    for cursor in fee_cursors {
        let query = after_fee
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        writeln!(
            config,
            "url = \"{base_url}/v1/fees?limit={size}{query}\"\noutput = \"/dev/null\""
        )?;
        after_fee = Some(*cursor);
    }
    let txn_pages = (cp_records as usize).div_ceil(size as usize) + 1;
    for page in 0..txn_pages {
        writeln!(
            config,
            "url = \"{base_url}/v1/transactions?limit={size}&after={}\"\noutput = \"/dev/null\"",
            page * size as usize
        )?;
    }
    drop(config);
    let started = Instant::now();
    let status = Command::new("curl")
        .args(["-s", "-K"])
        .arg(work.join("curl.cfg"))
        .status()?;
    if !status.success() {
        bail!("curl failed");
    }
    let http_s = started.elapsed().as_secs_f64();
    println!("  floor parts: database client {db_s:.2} s, curl {http_s:.2} s");
    Ok(db_s + http_s)
}

/// The peers: DuckDB, polars and datacompy comparing both sides' fees as
/// CSV (`scripts/bench_peer.py`), each in its own process on the same two
/// files, timed with the load and without; with each, the reconcile
/// phase's ratio to it. The reconcile phase judges every rule on fees and
/// transactions, the peers compare four columns of fees.
fn peer_figures(
    python: &Path,
    database_url: &str,
    portal: &HttpPortal,
    work: &Path,
    reconcile_s: f64,
) -> anyhow::Result<Value> {
    let mut conn = db::connect(&DatabaseUrl::parse(database_url)?, OpenMode::MustExist)?;
    let fees = cpsync::db::genesis::load_fees(&mut conn, None)?.records;
    let txns = cpsync::db::genesis::load_txns(&mut conn, None)?.records;
    let mut effect: std::collections::HashMap<FeeId, Money> = std::collections::HashMap::new();
    for t in &txns {
        *effect.entry(t.fee_id).or_default() += t.kind.balance_effect(t.amount);
    }
    let mut genesis_csv = csv::Writer::from_path(work.join("genesis.csv"))?;
    genesis_csv.write_record(["fee_id", "amount", "balance", "status"])?;
    for f in &fees {
        let balance = f.amount + effect.get(&f.id).copied().unwrap_or_default();
        genesis_csv.write_record([
            f.id.to_string(),
            f.amount.to_string(),
            balance.to_string(),
            f.status.to_string(),
        ])?;
    }
    genesis_csv.flush()?;
    let mut cp_csv = csv::Writer::from_path(work.join("cp.csv"))?;
    cp_csv.write_record(["fee_id", "amount", "balance", "status"])?;
    for f in all_fees(portal, None)? {
        cp_csv.write_record([
            f.genesis_fee_id.to_string(),
            f.amount.to_string(),
            f.balance.to_string(),
            f.status.to_string(),
        ])?;
    }
    cp_csv.flush()?;
    let mut peers = serde_json::Map::new();
    for peer in PEERS {
        let output = Command::new(python)
            .arg("scripts/bench_peer.py")
            .arg(peer)
            .arg(work.join("genesis.csv"))
            .arg(work.join("cp.csv"))
            .output()?;
        if !output.status.success() {
            bail!(
                "the {peer} peer failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut figures: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("the {peer} peer's output"))?;
        let load_compare = figures["load_compare_s"].as_f64().unwrap_or(f64::NAN);
        let compare = figures["compare_s"].as_f64().unwrap_or(f64::NAN);
        figures["reconcile_over_load_compare"] = json!(reconcile_s / load_compare);
        figures["reconcile_over_compare"] = json!(reconcile_s / compare);
        println!(
            "  peer {peer:<10} load+compare {load_compare:.3} s, compare alone {compare:.3} s, {} differences → reconcile phase {reconcile_s:.3} s = {:.2}× its load+compare, {:.2}× its compare",
            figures["differences"],
            reconcile_s / load_compare,
            reconcile_s / compare,
        );
        peers.insert(peer.to_string(), figures);
    }
    Ok(Value::Object(peers))
}

/// Changes 1% of the fees (amount edits whose pushes are lost) for the incremental figure.
fn change_one_percent(
    conn: &mut cpsync::db::DbConnection,
    fees: &[SentFee],
    count: usize,
) -> anyhow::Result<usize> {
    use diesel::connection::SimpleConnection;
    let ids: Vec<String> = fees
        .iter()
        .rev()
        .skip(10_000.min(fees.len() / 2))
        .take(count)
        .map(|f| f.fee_id.to_string())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    conn.batch_execute(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 100 WHERE id IN ({}); \
         UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL;",
        ids.join(",")
    ))?;
    Ok(ids.len())
}

/// `cpsync ARGS --student ID` for `LATENCY_SAMPLES` students, each a new
/// process (its start included); returns (p50, p99) in milliseconds.
fn per_student_latency(
    engine: &Engine,
    fees: &[SentFee],
    args: &[&str],
) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let student = fees[(i * 7919) % fees.len()].student_id.to_string();
        let mut command_line = args.to_vec();
        command_line.extend(["--student", &student]);
        let started = Instant::now();
        let status = engine
            .command(&command_line)
            .stdout(Stdio::null())
            .status()?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if !matches!(status.code(), Some(0) | Some(3)) {
            bail!(
                "cpsync {} exited with {:?}",
                command_line.join(" "),
                status.code()
            );
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

fn watch_latency(
    engine: &Engine,
    conn: &mut cpsync::db::DbConnection,
    portal: &HttpPortal,
    fees: &[SentFee],
) -> anyhow::Result<Option<(f64, f64)>> {
    use diesel::connection::SimpleConnection;
    if !engine
        .command(&["watch", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        return Ok(None);
    }
    let mut child = engine
        .command(&["watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = Vec::new();
    for i in 0..50 {
        let fee_id = 95_000_001 + i as i64;
        let template = fees[i % fees.len()].fee_id;
        conn.batch_execute(&format!(
            "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, fee_date, due_date, status, created_at, modified_at) \
             SELECT {fee_id}, student_id, category_code, school_code, 'Watch latency probe', 1200, '2026-11-25', NULL, 'open', '2026-11-25 09:00:00', '2026-11-25 09:00:00' FROM student_fees WHERE id = {template}"
        ))?;
        let committed = Instant::now();
        loop {
            if portal.fee(FeeId(fee_id)).is_ok() {
                break;
            }
            if committed.elapsed() > WATCH_SAMPLE_TIMEOUT {
                bail!("watch did not push fee {fee_id} within {WATCH_SAMPLE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(committed.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(Some((
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
    )))
}
