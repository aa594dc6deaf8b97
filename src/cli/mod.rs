//! The command line: global options, one module per subcommand (each with
//! its `Args` and `run`), logging set-up and the documented exit codes.

#[macro_use]
mod output;

mod batch;
mod demo;
mod demo_nights;
mod export;
mod fee_history;
mod get_balances;
mod get_payments;
mod held_pushes;
mod lock;
mod metrics;
mod migrate;
mod nightly;
mod nightly_report;
mod portal_view;
mod preflight;
mod report;
mod review;
mod runs;
mod seed;
mod send_fees;
mod setup;
pub mod sim;
mod task;
mod unprocessed;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::{self, DatabaseUrl, DbConnection, OpenMode};

/// Exit codes for schedulers. Documented in the README.
pub mod exit {
    /// The command did what was asked and nothing needs a person.
    pub const OK: u8 = 0;
    /// The command failed; the message says why.
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The run completed but left items that need review.
    pub const NEEDS_REVIEW: u8 = 3;
    /// Another run holds the district's lock; nothing was done.
    pub const LOCKED: u8 = 4;
    /// The nightly applied corrections, but re-reading both sides still
    /// finds differences: the books do not agree (each fee is named).
    pub const NOT_CONVERGED: u8 = 5;
}

const AFTER_HELP: &str = "\
Examples:
  cpsync migrate                                  create or upgrade ./cpsync.db
  cpsync --database-url-file /etc/cpsync/database-url migrate   URL and password from a 0600 file
  cpsync seed --students 2000 --seed 1            a sample district to try things on
  cpsync runs --limit 10                          recent run history
  cpsync export --dry-run                         build and check the OneRoster files only
  cpsync export --to /var/lib/cpsync/exports      write them into a new private folder
  cpsync --config cpsync.toml export --sftp       upload them to the [sftp] server
  cpsync preflight --out reports                  before enabling: what cannot be synced
  cpsync watch                                    push fee changes within a second (a service)
  cpsync get-payments --guardian 5000001          a parent logs in: post their payments now
  cpsync portal-view --guardian 5000001           what that parent sees, locked out or not
  cpsync fee-history 1234                         one fee's whole life with run ids
  cpsync review list --new                        review items first seen last night
  cpsync review resolve 17 --note \"refunded\"      close an item (who, when, why)

  cpsync lock status                              who holds the district lock, and is it alive
  cpsync lock release --force                     clear a lock a dead or replaced process left

Exit codes: 0 ok, 1 failure, 2 usage error, 3 completed with items needing review,
4 another run holds the lock, 5 corrections applied but the sides still differ.";

/// cpsync keeps Genesis student fees and Community Pass payments in agreement.
#[derive(Debug, Parser)]
#[command(name = "cpsync", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file (TOML); see cpsync.example.toml.
    #[arg(long, global = true, env = "CPSYNC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Database: sqlite://PATH, a plain file path, or postgres://... A URL
    /// with a password belongs in CPSYNC_DATABASE_URL or
    /// --database-url-file, not here (the process list shows it).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// A file (owner-only) holding the database URL, for a URL with a
    /// password. Without --database-url and this: CPSYNC_DATABASE_URL,
    /// then DATABASE_URL, then the config's [database] url.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,

    /// Community Pass API base URL (overrides [community_pass] base_url).
    #[arg(long, global = true, env = "CPSYNC_CP_URL", value_name = "URL")]
    pub cp_url: Option<String>,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More detail in logs (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The nightly batch in one command: send-fees, get-payments,
    /// get-balances, nightly (report and email) and the SFTP export, each
    /// run even when one before it failed; exits with the worst step's code.
    Batch(batch::Args),
    /// The whole product end to end on a SQLite file and an in-process simulator.
    Demo(demo::Args),
    /// Create or upgrade the database schema (Genesis contract and cp_ tables).
    Migrate(migrate::Args),
    /// Fill an empty database with a reproducible sample district.
    Seed(seed::Args),
    /// Show the run history of every task.
    Runs(runs::Args),
    /// Set up the integration in order: api-key, categories, test-pull, test-push, cutoff.
    Setup(setup::Args),
    /// Push new and changed fees to Community Pass (the outbox), or --resend.
    SendFees(send_fees::Args),
    /// Post Community Pass payments, refunds, waivers and reversals into Genesis.
    GetPayments(get_payments::Args),
    /// Store every patron's Community Pass balance for the parent portal.
    GetBalances(get_balances::Args),
    /// Reconcile both sides, correct what the rules allow, report the rest.
    Nightly(nightly::Args),
    /// Run the Community Pass simulator on loopback (for demos and tests).
    Sim(sim::SimArgs),
    /// Export students, guardians and schools as OneRoster 1.1 CSV (folder or SFTP).
    Export(export::Args),
    /// Push fee changes within a second of their commit, until stopped.
    Watch(watch::Args),
    /// Pulled Community Pass transactions that could not be applied, with why.
    Unprocessed(unprocessed::Args),
    /// Fee pushes Community Pass refused, held with its reason; exit 3 while some wait.
    HeldPushes(held_pushes::Args),
    /// One fee's whole life in time order, with times and run ids.
    FeeHistory(fee_history::Args),
    /// Before enabling: unmanaged unpaid fees and likely duplicates (CSV, HTML).
    Preflight(preflight::Args),
    /// What a parent sees on the portal's fees page, and whether it is locked.
    PortalView(portal_view::Args),
    /// Who holds the district lock (status), or clear one a gone process left (release --force).
    Lock(lock::Args),
    /// The review queue: list, show, acknowledge or resolve items needing a person.
    Review(review::Args),
    /// Rebuild a nightly run's report files and send its email (again with --resend).
    Report(report::Args),
}

/// What every subcommand gets: the configuration and the chosen database.
pub struct Context {
    pub config: Config,
    pub database_url: DatabaseUrl,
    pub cp_url: Option<String>,
}

impl Context {
    /// Where the Community Pass API key is read at run time.
    pub fn api_key_source(&self) -> crate::config::KeySource {
        crate::config::api_key_source(self.config.community_pass.as_ref())
    }

    /// The district's name from the config, or why the command refuses.
    fn district(&self) -> anyhow::Result<&str> {
        self.config.district_name().ok_or_else(|| {
            anyhow::anyhow!(
                "the config names no district (district = \"…\" at the top of the file, --config PATH): \
                 the report, its email and the export show it; nothing was done"
            )
        })
    }

    fn from_cli(cli: &Cli) -> anyhow::Result<Context> {
        let config = match &cli.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let chosen = chosen_database_url(cli)?;
        let database_url = DatabaseUrl::parse(&config.database_url(chosen.as_deref()))?;
        Ok(Context {
            config,
            database_url,
            cp_url: cli.cp_url.clone(),
        })
    }

    /// A connection to a database whose schema is fully migrated.
    pub fn connect(&self) -> anyhow::Result<DbConnection> {
        Ok(db::connect_migrated(&self.database_url)?)
    }

    /// A connection that may create the SQLite file (for `migrate`).
    pub fn connect_creating(&self) -> anyhow::Result<DbConnection> {
        Ok(db::connect(&self.database_url, OpenMode::CreateIfMissing)?)
    }
}

/// The environment variables read for the database URL, in order, when
/// neither `--database-url` nor `--database-url-file` is given.
pub const DATABASE_URL_ENVS: [&str; 2] = ["CPSYNC_DATABASE_URL", "DATABASE_URL"];

/// The database URL the command line or the environment gives, if any:
/// `--database-url` (warned about on standard error when it carries a
/// password), `--database-url-file`, `CPSYNC_DATABASE_URL`, `DATABASE_URL`.
fn chosen_database_url(cli: &Cli) -> anyhow::Result<Option<String>> {
    if let Some(url) = &cli.database_url {
        if DatabaseUrl::parse(url).is_ok_and(|parsed| parsed.has_password()) {
            warn_password_on_command_line(
                "--database-url carries a password",
                "CPSYNC_DATABASE_URL or --database-url-file",
            );
        }
        return Ok(Some(url.clone()));
    }
    if let Some(path) = &cli.database_url_file {
        let url = crate::secret::from_file(path)
            .map_err(|e| anyhow::anyhow!("reading the database URL: {e}"))?;
        return Ok(Some(url.expose().to_string()));
    }
    Ok(DATABASE_URL_ENVS.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    }))
}

/// One line on standard error, once per process: a secret given on the
/// command line is visible to every user of the host (`ps`, /proc).
pub(crate) fn warn_password_on_command_line(what: &str, instead: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "cpsync: warning: {what} on the command line, where every user of this host can read it (ps, /proc); use {instead} instead"
        );
    });
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = std::env::args().any(|arg| arg == "--json");
    init_logging(cli.log_format, cli.verbose);
    install_panic_hook();
    match run(cli) {
        Ok(code) => match output::write_failure() {
            Some(error) if code == exit::OK => {
                eprintln!("cpsync: error: cannot write to standard output: {error}");
                ExitCode::from(exit::FAILURE)
            }
            _ => ExitCode::from(code),
        },
        Err(error) => {
            let message = one_line_chain(&error);
            eprintln!("cpsync: error: {message}");
            if json {
                // A scheduler reading --json output gets an object, not nothing.
                out!(
                    "{}",
                    serde_json::json!({"error": message, "exit_code": exit::FAILURE})
                );
            }
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// After the default report, records the run in progress (if any) as
/// failed, so a panic never leaves it "running".
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        task::record_panic(&format!("{message}{place}"));
    }));
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let context = Context::from_cli(&cli)?;
    task::set_database(&context.database_url);
    task::set_metrics_dir(context.config.metrics.textfile_dir.clone());
    dispatch(&context, cli.command)
}

/// Runs one command with a context already made (also `batch`'s steps).
fn dispatch(context: &Context, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Batch(args) => batch::run(context, args),
        Command::Demo(args) => demo::run(context, args),
        Command::Migrate(args) => migrate::run(context, args),
        Command::Seed(args) => seed::run(context, args),
        Command::Runs(args) => runs::run(context, args),
        Command::Setup(args) => setup::run(context, args),
        Command::SendFees(args) => send_fees::run(context, args),
        Command::GetPayments(args) => get_payments::run(context, args),
        Command::GetBalances(args) => get_balances::run(context, args),
        Command::Nightly(args) => nightly::run(context, args),
        Command::Sim(args) => sim::run(args).map(|()| exit::OK),
        Command::Export(args) => export::run(context, args),
        Command::Watch(args) => watch::run(context, args),
        Command::Unprocessed(args) => unprocessed::run(context, args),
        Command::HeldPushes(args) => held_pushes::run(context, args),
        Command::FeeHistory(args) => fee_history::run(context, args),
        Command::Preflight(args) => preflight::run(context, args),
        Command::PortalView(args) => portal_view::run(context, args),
        Command::Lock(args) => lock::run(context, args),
        Command::Review(args) => review::run(context, args),
        Command::Report(args) => report::run(context, args),
    }
}

/// `outer: inner: root` on one line, so schedulers' logs keep it whole.
pub(crate) fn one_line_chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string().replace('\n', " "))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Colours only for a person at a terminal, never with `NO_COLOR` set
/// (journald and log files would store the escape codes as bytes).
fn log_colours() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stderr is a terminal (a person is watching).
fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn init_logging(format: LogFormat, verbose: u8) {
    // -v: cpsync's own records (phases, counts, timings); -vv: everything.
    // A person at a terminal sees progress lines without asking; a log
    // (journald, a file) gets them with -v.
    let default_level = match verbose {
        0 if stderr_is_terminal() => "warn,cpsync::progress=info",
        0 => "warn",
        1 => "warn,cpsync=info",
        2 => "info,cpsync=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
