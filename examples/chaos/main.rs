//! The chaos campaign (`scripts/chaos`): seeded scenarios that run the real
//! `cpsync` binary against the simulator with seeded faults, kill it at
//! seeded points (after its n-th operation, `CPSYNC_KILL_AFTER_OPERATIONS`:
//! the count, not the clock, picks the point), run rounds of tasks while
//! parents and office staff keep working, restart a private PostgreSQL
//! server under `watch` on PostgreSQL scenarios (`pg_restart.rs`), then let
//! it finish with the faults off and check the invariants a district relies
//! on: every vendor transaction posted exactly once, no fee created twice,
//! conservation on both sides, a further nightly with nothing to do, a
//! complete audit trail, and no secret in anything the campaign wrote. Any
//! failure names the seed that replays the scenario (`scripts/chaos
//! --scenarios 1 --seed S`).
//!
//! Replay: a scenario's rounds run serially (each task and live action one
//! after another in a seeded order) or concurrently (all at once; real lock
//! contention, whose outcome is the scheduler's). Serial is the default for
//! a single scenario and makes it exact: its event trace (`trace.rs`) is
//! byte-identical run after run (`scripts/chaos-replay`). Concurrent is the
//! default for a campaign; its trace records the same plan, not the same
//! ends. See `scenario.rs` and ARCHITECTURE.md ("Chaos replay").
//!
//! Usage: `chaos --bin target/release/cpsync [--scenarios N] [--seed S]
//! [--jobs J] [--rounds serial|concurrent] [--trace FILE]
//! [--database-url postgres://...] [--pg-every K] [--keep]`.

mod checks;
mod convergence;
mod engine;
mod hostile;
mod pg_restart;
mod scenario;
mod secrets;
mod tally;
mod trace;
mod vendor_records;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;

use tally::Tally;

/// The most scenarios one campaign runs.
const SCENARIOS_MAX: u64 = 100_000;
/// The most scenarios run at once.
const JOBS_MAX: usize = 16;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chaos",
    about = "cpsync chaos campaign: faults, kills, invariants"
)]
pub struct Args {
    /// The cpsync binary under test.
    #[arg(long, env = "CPSYNC_BIN")]
    bin: PathBuf,
    /// How many scenarios to run.
    #[arg(long, default_value_t = 200)]
    scenarios: u64,
    /// The seed of the first scenario; scenario i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios run at once (each has its own database and simulator).
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    /// A PostgreSQL server (admin URL) for a share of the scenarios.
    #[arg(long, env = "CPSYNC_TEST_PG_URL")]
    database_url: Option<String>,
    /// With a PostgreSQL server: every K-th scenario runs on it.
    #[arg(long, default_value_t = 4)]
    pg_every: u64,
    /// Where scenario folders go (default: a new temporary folder).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep every scenario folder (by default only failing ones are kept).
    #[arg(long)]
    keep: bool,
    /// Run every scenario on SQLite: without it, a campaign with no
    /// PostgreSQL server (`--database-url` or `CPSYNC_TEST_PG_URL`) is
    /// refused rather than silently covering one backend.
    #[arg(long, conflicts_with = "database_url")]
    sqlite_only: bool,
    /// How each round's tasks run: serial (one after another in a seeded
    /// order; the scenario replays exactly) or concurrent (all at once:
    /// real contention, not exact). Default: serial for a single scenario
    /// (`--scenarios 1`, the replay of a seed), concurrent for a campaign.
    #[arg(long, value_enum)]
    rounds: Option<scenario::Rounds>,
    /// Also write every scenario's event trace to FILE, in seed order
    /// (each scenario's own is `trace.txt` in its folder).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

impl Args {
    fn rounds(&self) -> scenario::Rounds {
        self.rounds.unwrap_or(if self.scenarios == 1 {
            scenario::Rounds::Serial
        } else {
            scenario::Rounds::Concurrent
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos: error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.database_url.is_some() || args.sqlite_only,
        "no PostgreSQL server for the campaign: give --database-url (or CPSYNC_TEST_PG_URL), or --sqlite-only to run every scenario on SQLite"
    );
    anyhow::ensure!(
        (1..=SCENARIOS_MAX).contains(&args.scenarios),
        "--scenarios must be 1..={SCENARIOS_MAX}"
    );
    anyhow::ensure!(
        (1..=JOBS_MAX).contains(&args.jobs),
        "--jobs must be 1..={JOBS_MAX}"
    );
    anyhow::ensure!(args.pg_every >= 1, "--pg-every must be at least 1");
    let bin = args.bin.canonicalize()?;
    let work = world::work_dir(args.work_dir.as_deref())?;
    let started = Instant::now();
    let tally = Mutex::new(Tally::default());
    let traces = Mutex::new(BTreeMap::new());
    let next = AtomicU64::new(0);
    std::thread::scope(|threads| {
        // The one-off probes wait out real retries: they run beside the scenarios.
        threads.spawn(|| {
            if let Err(error) = hostile::campaign_probes(&bin, &work, &tally) {
                let mut tally = tally.lock().expect("tally lock");
                tally.violation(format!("the probes could not run: {error:#}"));
            }
        });
        for _ in 0..args.jobs.min(args.scenarios as usize) {
            threads.spawn(|| worker(args, &bin, &work, &next, &tally, &traces));
        }
    });
    let tally = tally
        .into_inner()
        .expect("no worker panicked holding the tally");
    if let Some(path) = &args.trace {
        let traces = traces
            .into_inner()
            .expect("no worker panicked holding the traces");
        let lines: Vec<String> = traces.into_values().flatten().collect();
        trace::write(path, &lines)?;
    }
    println!("rounds: {:?}", args.rounds());
    tally.print(started.elapsed(), &work);
    if tally.clean() && !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(tally.clean())
}

fn worker(
    args: &Args,
    bin: &std::path::Path,
    work: &std::path::Path,
    next: &AtomicU64,
    tally: &Mutex<Tally>,
    traces: &Mutex<BTreeMap<u64, Vec<String>>>,
) {
    loop {
        let index = next.fetch_add(1, Ordering::SeqCst);
        if index >= args.scenarios {
            return;
        }
        let seed = args.seed + index;
        let pg = args
            .database_url
            .as_deref()
            .filter(|_| index % args.pg_every == args.pg_every - 1);
        let mut result = scenario::run(seed, bin, work, pg, args.rounds(), args.keep);
        traces
            .lock()
            .expect("traces lock")
            .insert(seed, std::mem::take(&mut result.trace));
        let mut tally = tally.lock().expect("tally lock");
        tally.absorb(seed, result);
        tally.progress(args.scenarios);
    }
}
