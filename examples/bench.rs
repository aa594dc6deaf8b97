//! The benchmark driver behind `scripts/bench`: builds a large district,
//! runs the engine as the district would (release binary, child processes),
//! and measures each figure beside a floor and a peer measured in the same
//! run, so the ratios hold on any machine. Prints a table and writes JSON.
//!
//! Usage: bench --bin target/release/cpsync --work DIR [--students N]
//!              [--database-url URL] [--json OUT] [--python VENV_PYTHON]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cpsync::db::{self, DatabaseUrl, OpenMode};
use cpsync::domain::FeeId;
use cpsync::money::Money;
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::{all_fees, CommunityPass};
use cpsync::scenario::{self, SentFee};
use cpsync::secret::Secret;
use cpsync::sim::model::FeeRef;
use cpsync::sim::{ParentAction, SimConfig, Simulator};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const API_KEY: &str = "sk_bench_0b5e7c";
/// Samples of the per-call latency figures.
const LATENCY_SAMPLES: usize = 100;
/// Longest a `watch` sample may wait for its fee to arrive.
const WATCH_SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    bin: PathBuf,
    work: PathBuf,
    students: usize,
    database_url: Option<String>,
    json_out: PathBuf,
    python: Option<PathBuf>,
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
}

impl Engine {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args([
                "--database-url",
                &self.database_url,
                "--cp-url",
                &self.cp_url,
            ])
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
            .args([
                "--database-url",
                &self.database_url,
                "--cp-url",
                &self.cp_url,
            ])
            .args(args)
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

fn main() -> anyhow::Result<()> {
    let options = options()?;
    std::fs::create_dir_all(&options.work)?;
    let work = options.work.canonicalize()?;
    let mut figures: BTreeMap<&str, Value> = BTreeMap::new();
    let sim = Simulator::start(SimConfig {
        seed: 7,
        ..SimConfig::new(Secret::new(API_KEY))
    })?;
    let database_url = options
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", work.join("bench.db").display()));
    reset_database(&database_url, &work)?;
    let engine = Engine {
        bin: options.bin.clone(),
        database_url: database_url.clone(),
        cp_url: sim.base_url(),
        key_file: work.join("api-key"),
    };
    let backend = if database_url.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    };
    println!(
        "cpsync bench: {} students on {backend}, simulator {}",
        options.students,
        sim.base_url()
    );

    engine.run(&["migrate"])?;
    let (seed_s, _) = engine.run(&[
        "seed",
        "--students",
        &options.students.to_string(),
        "--seed",
        "1",
    ])?;
    figures.insert("seed_seconds", json!(seed_s));
    println!("  seed                {seed_s:>8.2} s");

    cpsync::files::write_private(&engine.key_file, API_KEY.as_bytes())?;
    engine.run(&["setup", "api-key"])?;
    engine.run(&["setup", "categories", "--all"])?;
    engine.run(&["setup", "test-pull"])?;
    engine.run(&["setup", "test-push"])?;
    engine.run(&["setup", "cutoff", "2025-07-01"])?;
    let (send_s, _) = engine.run(&["send-fees"])?;
    figures.insert("initial_send_seconds", json!(send_s));
    println!("  initial send-fees   {send_s:>8.2} s");

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
    let (pull_s, _) = engine.run(&["get-payments"])?;
    figures.insert("initial_get_payments_seconds", json!(pull_s));
    println!("  initial get-payments{pull_s:>8.2} s");

    let drift_count = (vendor_fees.len() / 100 / 3).max(1);
    let mut conn = db::connect(&DatabaseUrl::parse(&database_url)?, OpenMode::MustExist)?;
    scenario::inject_genesis_drift(&mut conn, &sent[sent.len() / 2..], drift_count, 90_000_001)?;
    cp_side_drift(&sim, &sent[..sent.len() / 2], drift_count)?;

    let (nightly_s, rss_kib, out) = engine.run_measured(&["nightly", "--json"], &work)?;
    let summary: Value = serde_json::from_str(&out)?;
    figures.insert("nightly_seconds", json!(nightly_s));
    figures.insert("nightly_peak_rss_mib", json!(rss_kib / 1024));
    figures.insert("nightly_phases_ms", summary["phases"].clone());
    figures.insert("nightly_counts", summary["counts"].clone());
    println!(
        "  nightly (full)      {nightly_s:>8.2} s, peak {} MiB, phases {}, report {} ms, command {} ms",
        rss_kib / 1024,
        summary["phases"],
        summary["report_ms"],
        summary["elapsed_ms"],
    );

    let floor_s = floor_seconds(
        &database_url,
        &work,
        &sim.base_url(),
        &conn_fee_cursor_ids(&vendor_fees),
        summary["records"]["community_pass"].as_u64().unwrap_or(0),
    )?;
    figures.insert("floor_seconds", json!(floor_s));
    figures.insert("nightly_over_floor", json!(nightly_s / floor_s));
    println!(
        "  floor (db client + curl) {floor_s:>5.2} s  → nightly/floor = {:.2} (target ≤ 2)",
        nightly_s / floor_s
    );

    if let Some(python) = &options.python {
        let peer_s = peer_seconds(python, &database_url, &portal, &work)?;
        figures.insert("datacompy_seconds", json!(peer_s));
        figures.insert("nightly_over_datacompy", json!(nightly_s / peer_s));
        println!(
            "  datacompy compare   {peer_s:>8.2} s  → nightly/datacompy = {:.2} (target < 1)",
            nightly_s / peer_s
        );
        // The like-for-like part: datacompy's figure leaves out reading both
        // sides, as the reconcile phase does (which judges every rule on
        // fees and transactions, where datacompy compares four columns).
        let reconcile_s = summary["phases"]["reconcile"].as_f64().unwrap_or(0.0) / 1000.0;
        figures.insert("reconcile_over_datacompy", json!(reconcile_s / peer_s));
        println!(
            "  reconcile phase     {reconcile_s:>8.2} s  → reconcile/datacompy = {:.2}",
            reconcile_s / peer_s
        );
    }

    let changed = change_one_percent(&mut conn, &sent, vendor_fees.len() / 100)?;
    let (incremental_s, out) = engine.run(&["nightly", "--incremental", "--json"])?;
    let incremental: Value = serde_json::from_str(&out)?;
    figures.insert("incremental_nightly_seconds", json!(incremental_s));
    figures.insert("incremental_over_full", json!(incremental_s / nightly_s));
    figures.insert("incremental_coverage", incremental["coverage"].clone());
    figures.insert("incremental_phases_ms", incremental["phases"].clone());
    println!(
        "  nightly --incremental after 1% ({changed} fees) changed {incremental_s:>6.2} s → {:.1}% of full (target ≤ 10%); {} fees examined, phases {}, report {} ms, command {} ms",
        100.0 * incremental_s / nightly_s,
        incremental["coverage"]["fees_examined"],
        incremental["phases"],
        incremental["report_ms"],
        incremental["elapsed_ms"],
    );

    let (p50, p99) = student_pull_latency(&engine, &sent)?;
    figures.insert("student_pull_ms", json!({"p50": p50, "p99": p99}));
    println!("  get-payments --student  p50 {p50:.1} ms, p99 {p99:.1} ms (target p99 ≤ 50 ms)");

    match watch_latency(&engine, &mut conn, &portal, &sent)? {
        Some((p50, p99)) => {
            figures.insert("watch_ms", json!({"p50": p50, "p99": p99}));
            println!("  watch commit→Community Pass p50 {p50:.1} ms, p99 {p99:.1} ms (target p99 ≤ 1000 ms)");
        }
        None => println!("  watch: not available in this build"),
    }

    figures.insert("students", json!(options.students));
    figures.insert("backend", json!(backend));
    figures.insert("vendor_fees", json!(vendor_fees.len()));
    let report = serde_json::to_string_pretty(&figures)?;
    std::fs::write(&options.json_out, &report)?;
    println!("figures written to {}", options.json_out.display());
    sim.shutdown()?;
    Ok(())
}

fn start_time() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 9, 1)
        .expect("valid")
        .and_hms_opt(8, 0, 0)
        .expect("valid")
}

fn reset_database(url: &str, work: &Path) -> anyhow::Result<()> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Sqlite(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        DatabaseUrl::Postgres(_) => {
            let _ = work;
            let mut conn = db::connect(&DatabaseUrl::parse(url)?, OpenMode::MustExist)?;
            db::migrate::revert_all(&mut conn).ok();
        }
    }
    Ok(())
}

/// Partial payments of $1–$5 on `fees` until `wanted` are made, keeping each
/// fee's balance positive (tracked here, so no action is refused and the
/// simulator takes them in batches).
fn top_up_transactions(
    sim: &cpsync::sim::SimHandle,
    fees: &[SentFee],
    wanted: usize,
) -> anyhow::Result<usize> {
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
fn cp_side_drift(
    sim: &cpsync::sim::SimHandle,
    fees: &[SentFee],
    count: usize,
) -> anyhow::Result<()> {
    let admin = sim.admin()?;
    for fee in fees.iter().take(count) {
        let _ = admin.pay(fee.fee_id, Some(Money::from_cents(100)));
    }
    Ok(())
}

/// The page boundaries of the fee listing (its cursor is the last fee id of a page).
fn conn_fee_cursor_ids(fees: &[cpsync::domain::VendorFee]) -> Vec<FeeId> {
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

/// The peer: datacompy comparing both sides as CSV; only its comparison is timed.
fn peer_seconds(
    python: &Path,
    database_url: &str,
    portal: &HttpPortal,
    work: &Path,
) -> anyhow::Result<f64> {
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
    let output = Command::new(python)
        .arg("scripts/bench_peer.py")
        .arg(work.join("genesis.csv"))
        .arg(work.join("cp.csv"))
        .output()?;
    if !output.status.success() {
        bail!(
            "datacompy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
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

fn student_pull_latency(engine: &Engine, fees: &[SentFee]) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let student = fees[(i * 7919) % fees.len()].student_id.to_string();
        let started = Instant::now();
        let status = engine
            .command(&["get-payments", "--student", &student])
            .stdout(Stdio::null())
            .status()?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            bail!("get-payments --student failed");
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
