//! `cpsync demo`: the whole product on the embedded default, with nothing but
//! this binary: a SQLite file and the Community Pass simulator started
//! in-process on a free loopback port. It seeds a district, runs setup in
//! order, sends fees, lets parents pay (and refund, waive, bounce checks) in
//! Community Pass, lets staff drift in Genesis, then runs the real commands:
//! get-payments, get-balances, nightly, export. Each step is the same
//! command a district would run, called in-process.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use chrono::NaiveDate;
use clap::Parser;

use super::{exit, Cli, Context};
use crate::domain::VendorFeeStatus;
use crate::portal::{all_fees, CommunityPass};
use crate::scenario::{self, SentFee};
use crate::secret::Secret;
use crate::sim::{SimConfig, Simulator};

/// The most students the demo seeds (the benchmark goes further).
const DEMO_STUDENTS_MAX: usize = 200_000;
/// The steps of one night; `--nights` adds one for the others.
const STEPS_ONE_NIGHT: usize = 10;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many students the sample district has.
    #[arg(long, default_value_t = 2_000)]
    students: usize,
    /// Where the database, reports and export go (replaced if it exists).
    #[arg(long, default_value = "cpsync-demo")]
    dir: PathBuf,
    /// The random seed of the district and of the parents' activity.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many nights to play: the first as always, then one a day (the
    /// demo's clock starts this many days back) with parents paying, office
    /// staff editing and a nightly report each night, so the trend, the
    /// review queue's ages and the credits on account fill up.
    #[arg(long, default_value_t = 1)]
    nights: u32,
}

struct Step {
    number: usize,
    started: Instant,
}

/// How many steps this demo has (set once, before the first step).
static STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(STEPS_ONE_NIGHT);

impl Step {
    fn begin(number: usize, title: &str) -> Step {
        let steps = STEPS.load(std::sync::atomic::Ordering::Relaxed);
        out!("\n[{number:>2}/{steps}] {title}");
        let _ = std::io::stdout().flush();
        Step {
            number,
            started: Instant::now(),
        }
    }

    fn end(self) {
        out!(
            "        step {} done in {:.1} s",
            self.number,
            self.started.elapsed().as_secs_f64()
        );
    }
}

pub fn run(_context: &Context, args: Args) -> anyhow::Result<u8> {
    if args.students == 0 || args.students > DEMO_STUDENTS_MAX {
        bail!("--students must be between 1 and {DEMO_STUDENTS_MAX}");
    }
    if args.nights == 0 || args.nights > super::demo_nights::NIGHTS_MAX {
        bail!(
            "--nights must be between 1 and {}",
            super::demo_nights::NIGHTS_MAX
        );
    }
    let steps = STEPS_ONE_NIGHT + usize::from(args.nights > 1);
    STEPS.store(steps, std::sync::atomic::Ordering::Relaxed);
    // The first night is `nights - 1` days ago; each later one a day on.
    crate::sync::set_clock_back(chrono::Duration::days(i64::from(args.nights - 1)));
    let started = Instant::now();
    let step = Step::begin(
        1,
        "Preparing an embedded district: SQLite file and Community Pass simulator",
    );
    let dir = prepare_dir(&args.dir)?;
    let api_key = Secret::new(format!(
        "sk_demo_{:016x}",
        args.seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    ));
    let key_file = write_private(&dir.join("api-key"), api_key.expose())?;
    let sim = Simulator::start(SimConfig {
        seed: args.seed,
        ..SimConfig::new(api_key)
    })?;
    let config_file = write_private(
        &dir.join("cpsync.toml"),
        &demo_config(&dir, &sim.base_url(), &key_file),
    )?;
    let database = format!("sqlite://{}", dir.join("demo.db").display());
    let globals = [
        "--config".to_string(),
        config_file.display().to_string(),
        "--database-url".to_string(),
        database,
        "--cp-url".to_string(),
        sim.base_url(),
    ];
    let cpsync = |words: &[&str]| command(&globals, words);
    out!(
        "        database {}, simulator {}",
        dir.join("demo.db").display(),
        sim.base_url()
    );
    cpsync(&["migrate"])?;
    step.end();

    let step = Step::begin(
        2,
        &format!(
            "Seeding a sample district of {} students (seed {})",
            args.students, args.seed
        ),
    );
    cpsync(&[
        "seed",
        "--students",
        &args.students.to_string(),
        "--seed",
        &args.seed.to_string(),
    ])?;
    step.end();

    let step = Step::begin(
        3,
        "Setup in the handbook's order: API key, categories, Test Pull, Test Push, cutoff",
    );
    cpsync(&["setup", "api-key"])?;
    cpsync(&["setup", "categories", "--all"])?;
    cpsync(&["setup", "test-pull"])?;
    cpsync(&["setup", "test-push"])?;
    cpsync(&[
        "setup",
        "portal",
        "--vendor-url",
        "https://pay.communitypass.example/sample-township",
        "--payment-message",
        "Fees can be paid online with Community Pass.",
    ])?;
    cpsync(&["setup", "cutoff", "2026-08-01"])?;
    step.end();

    let step = Step::begin(
        4,
        "Preflight, then Send Fees: every fee dated on or after the cutoff goes to Community Pass",
    );
    cpsync(&[
        "preflight",
        "--out",
        &dir.join("preflight").display().to_string(),
    ])?;
    cpsync(&["send-fees"])?;
    step.end();

    let step = Step::begin(
        5,
        "Parents at work in Community Pass; office staff drifting in Genesis",
    );
    let context = Context::from_cli(&Cli::try_parse_from(
        std::iter::once("cpsync".to_string())
            .chain(globals.iter().cloned())
            .chain(["runs".to_string()]),
    )?)?;
    let mut conn = context.connect()?;
    let sent = sent_fees(&super::task::portal(&context, &mut conn)?)?;
    // Parents' activity runs up to 75 days past its start (payments over a
    // month, reversals up to 45 days later): with nights, the clock starts
    // back, so the activity starts back too (nothing dated ahead of it).
    let start = NaiveDate::from_ymd_opt(2026, 9, 1)
        .expect("valid")
        .and_hms_opt(8, 0, 0)
        .expect("valid")
        .min(crate::sync::utc_now() - chrono::Duration::days(80));
    let activity = scenario::drive_parents(&sim.admin()?, &sent, args.seed, start)?;
    out!("        parents: {}", serde_json::to_string(&activity)?);
    let drift = scenario::inject_genesis_drift(&mut conn, &sent, 3, 9_000_001)?;
    out!("        Genesis drift: {}", serde_json::to_string(&drift)?);
    step.end();

    let step = Step::begin(
        6,
        "Get Payments: Community Pass transactions posted to Genesis, each once",
    );
    cpsync(&["get-payments"])?;
    step.end();

    let step = Step::begin(7, "Get Balances: patron balances for the parent portal");
    cpsync(&["get-balances"])?;
    step.end();

    let step = Step::begin(
        8,
        "Nightly Sync: both sides validated, corrections applied, the rest for review",
    );
    let nightly_code = cpsync(&["nightly"])?;
    step.end();

    let step = Step::begin(9, "Nightly Sync again: nothing left to correct");
    cpsync(&["nightly", "--dry-run"])?;
    step.end();

    let step = Step::begin(10, "Demographic Export: OneRoster 1.1 CSV files");
    cpsync(&["export", "--to", &dir.join("export").display().to_string()])?;
    step.end();

    if args.nights > 1 {
        let step = Step::begin(
            11,
            &format!(
                "{} more nights, one a day: parents pay, the office edits, a nightly report each night",
                args.nights - 1
            ),
        );
        let portal = super::task::portal(&context, &mut conn)?;
        super::demo_nights::Nights {
            conn: &mut conn,
            portal: &portal,
            admin: sim.admin()?,
            cpsync: &cpsync,
            seed: args.seed,
            total: args.nights,
        }
        .play()?;
        step.end();
    }

    out!(
        "\ncpsync demo finished in {:.1} s. Everything is under {}:",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    out!("  database  {}", dir.join("demo.db").display());
    out!(
        "  reports   {} (HTML report, exceptions CSV, summary JSON, email .eml)",
        dir.join("reports").display()
    );
    out!("  preflight {}", dir.join("preflight").display());
    out!("  export    {}", dir.join("export").display());
    out!(
        "  history   cpsync --database-url {} runs",
        dir.join("demo.db").display()
    );
    sim.shutdown()?;
    Ok(if nightly_code == exit::FAILURE {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// Runs one cpsync command in-process, exactly as the command line would.
fn command(globals: &[String], words: &[&str]) -> anyhow::Result<u8> {
    let argv = std::iter::once("cpsync".to_string())
        .chain(globals.iter().cloned())
        .chain(words.iter().map(|w| w.to_string()));
    let cli = Cli::try_parse_from(argv)?;
    let code = super::run(cli).with_context(|| format!("cpsync {}", words.join(" ")))?;
    if code != exit::OK && code != exit::NEEDS_REVIEW {
        bail!("cpsync {} exited with {code}", words.join(" "));
    }
    Ok(code)
}

fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    crate::files::create_private_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for stale in ["demo.db", "demo.db-wal", "demo.db-shm"] {
        let path = dir.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(dir.canonicalize()?)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<PathBuf> {
    crate::files::write_private(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The demo's config: the simulator, its API key read from an owner-only
/// file (never the database), reports and metrics in the demo folder.
fn demo_config(dir: &Path, base_url: &str, key_file: &Path) -> String {
    format!(
        "district = \"Sample Township Public Schools\"\n\n[community_pass]\nbase_url = \"{base_url}\"\napi_key = {{ file = \"{}\" }}\n\n[reports]\ndir = \"{}\"\nattach_html = true\n\n[metrics]\ntextfile_dir = \"{}\"\n",
        key_file.display(),
        dir.join("reports").display(),
        dir.display()
    )
}

/// The open fees Community Pass holds with nothing paid or credited yet.
fn sent_fees(portal: &dyn CommunityPass) -> anyhow::Result<Vec<SentFee>> {
    Ok(all_fees(portal, None)?
        .iter()
        .filter(|f| {
            f.status == VendorFeeStatus::Open && f.balance == f.amount && f.balance.is_positive()
        })
        .map(|f| SentFee {
            fee_id: f.genesis_fee_id,
            student_id: f.student_id,
            amount: f.balance,
        })
        .collect())
}
