//! What every task command shares: the task switch, run history (start,
//! finish with counts and summary, failure recorded with its error, runs
//! abandoned by a gone process marked interrupted first, a panic recorded
//! as a failure by the hook `cli::main` installs), and the Community Pass
//! client built from the config and the API key read from its file or
//! environment variable, held to the fingerprint setup recorded.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;

use super::{exit, Context};
use crate::config::KeySource;
use crate::db::runs::{self, RunCounts, RunStatus};
use crate::db::{settings, tasks, DatabaseUrl, DbConnection, OpenMode};
use crate::portal::http::{HttpPortal, HttpPortalConfig};
use crate::secret::Secret;
use crate::setup::SetupState;
use crate::sync::utc_now;

/// The task names in `cp_tasks`.
pub const SEND_FEES: &str = "send_fees";
pub const GET_PAYMENTS: &str = "get_payments";
pub const GET_BALANCES: &str = "get_balances";
pub const NIGHTLY_SYNC: &str = "nightly_sync";

/// How a task run ended, for run history and the exit code.
pub struct TaskOutcome {
    pub status: RunStatus,
    pub counts: RunCounts,
    pub summary: serde_json::Value,
    pub exit_code: u8,
}

impl TaskOutcome {
    /// A run that did its work with nothing for a person.
    pub fn succeeded(summary: impl Serialize, records: u64) -> TaskOutcome {
        TaskOutcome {
            status: RunStatus::Succeeded,
            counts: RunCounts {
                records_in: records as i64,
                matched: 0,
                corrected: records as i64,
                needs_review: 0,
            },
            summary: serde_json::to_value(summary).expect("summaries serialise"),
            exit_code: exit::OK,
        }
    }
}

/// The run this process is in, for the panic hook: the database and run id.
static CURRENT_RUN: Mutex<Option<(DatabaseUrl, i64)>> = Mutex::new(None);
/// The database URL of this command, set by `cli::run` for the panic hook.
static DATABASE: Mutex<Option<DatabaseUrl>> = Mutex::new(None);
/// How long the panic hook waits for SQLite's write lock (the panicking
/// thread may hold it); past this the next command marks the run
/// interrupted instead.
const PANIC_RECORD_BUSY_MS: u32 = 2_000;
/// The most characters of a panic message stored as the run's error.
const PANIC_MESSAGE_CHARS_MAX: usize = 300;

/// Set in the environment, every task run panics right after it is
/// recorded: the tests' way to prove the panic hook records the failure.
pub const PANIC_TEST_ENV: &str = "CPSYNC_TEST_PANIC_IN_RUN";

/// Where the Prometheus text file goes (`[metrics] textfile_dir`), if anywhere.
static METRICS_DIR: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Remembers the metrics folder for `run_task`.
pub fn set_metrics_dir(dir: Option<std::path::PathBuf>) {
    *METRICS_DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Rewrites the metrics file after a run; a failure is logged, never the run's.
pub fn write_metrics(conn: &mut DbConnection) {
    let dir = METRICS_DIR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(dir) = dir {
        if let Err(error) = super::metrics::write(conn, &dir, utc_now()) {
            tracing::warn!(dir = %dir.display(), error = %super::one_line_chain(&error), "the metrics file could not be written");
        }
    }
}

/// Remembers the command's database for the panic hook.
pub fn set_database(url: &DatabaseUrl) {
    *DATABASE.lock().unwrap_or_else(|e| e.into_inner()) = Some(url.clone());
}

/// Called by the panic hook: records the current run, if any, as failed.
pub fn record_panic(message: &str) {
    let Some((url, run_id)) = CURRENT_RUN.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let message: String = message.chars().take(PANIC_MESSAGE_CHARS_MAX).collect();
    let error = format!("the process panicked: {message}");
    let recorded = crate::db::connect(&url, OpenMode::MustExist).and_then(|mut conn| {
        if let DbConnection::Sqlite(sqlite) = &mut conn {
            use diesel::connection::SimpleConnection;
            sqlite.batch_execute(&format!("PRAGMA busy_timeout = {PANIC_RECORD_BUSY_MS};"))?;
        }
        runs::finish_run(
            &mut conn,
            run_id,
            RunStatus::Failed,
            &RunCounts::default(),
            None,
            Some(&error),
            utc_now(),
        )
    });
    match recorded {
        Ok(()) => eprintln!("cpsync: run {run_id} recorded as failed (panic)"),
        Err(db_error) => eprintln!("cpsync: could not record run {run_id} as failed: {db_error}"),
    }
}

/// Forgets the current run when `run_task` returns (normally or not).
struct CurrentRun;

impl CurrentRun {
    fn enter(run_id: i64) -> CurrentRun {
        let url = DATABASE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        *CURRENT_RUN.lock().unwrap_or_else(|e| e.into_inner()) = url.map(|url| (url, run_id));
        CurrentRun
    }
}

impl Drop for CurrentRun {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            *CURRENT_RUN.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Runs `body` as one recorded run of `task`, unless the task is switched
/// off. Runs left `running` by processes that are gone are marked
/// interrupted first.
pub fn run_task(
    conn: &mut DbConnection,
    task: &str,
    trigger: &str,
    dry_run: bool,
    body: impl FnOnce(&mut DbConnection, i64) -> anyhow::Result<TaskOutcome>,
) -> anyhow::Result<u8> {
    if !tasks::is_enabled(conn, task)? {
        eprintln!("cpsync: the {task} task is switched off (cpsync setup tasks enable {task}); nothing was done");
        return Ok(exit::OK);
    }
    runs::mark_interrupted(conn, utc_now())?;
    let run_id = runs::start_run(conn, task, trigger, dry_run, utc_now())?;
    let _current = CurrentRun::enter(run_id);
    if std::env::var_os(PANIC_TEST_ENV).is_some() {
        panic!("{PANIC_TEST_ENV} is set: panicking inside run {run_id}");
    }
    match body(conn, run_id) {
        Ok(outcome) => {
            let summary = serde_json::to_string(&outcome.summary)?;
            runs::finish_run(
                conn,
                run_id,
                outcome.status,
                &outcome.counts,
                Some(&summary),
                None,
                utc_now(),
            )?;
            write_metrics(conn);
            Ok(outcome.exit_code)
        }
        Err(error) => {
            let message = super::one_line_chain(&error);
            let recorded = runs::finish_run(
                conn,
                run_id,
                RunStatus::Failed,
                &RunCounts::default(),
                None,
                Some(&message),
                utc_now(),
            );
            if let Err(db_error) = recorded {
                tracing::error!(%db_error, "could not record the failed run");
            } else {
                write_metrics(conn);
            }
            Err(error.context(format!("{task} run {run_id} failed")))
        }
    }
}

/// The Community Pass client: base URL from `--cp-url`/`CPSYNC_CP_URL` or the
/// config file; the API key read now from its source (`checked_api_key`).
pub fn portal(context: &Context, conn: &mut DbConnection) -> anyhow::Result<HttpPortal> {
    HttpPortal::new(portal_config(context, conn)?).context("building the Community Pass client")
}

/// The whole budget of one Community Pass call made while a parent waits
/// (`get-payments --student` or `--guardian`).
pub const INTERACTIVE_CALL_BUDGET: Duration = Duration::from_secs(5);
/// The bound of one attempt of such a call.
pub const INTERACTIVE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for pulls a parent waits on: the configured one, held to
/// `INTERACTIVE_CALL_BUDGET` per call (a few seconds, not minutes).
pub fn interactive_portal(
    context: &Context,
    conn: &mut DbConnection,
) -> anyhow::Result<HttpPortal> {
    let mut config = portal_config(context, conn)?;
    config.page_size = crate::portal::PAGE_SIZE_DEFAULT;
    config.retry.call_budget = config.retry.call_budget.min(INTERACTIVE_CALL_BUDGET);
    config.request_timeout = config.request_timeout.min(INTERACTIVE_REQUEST_TIMEOUT);
    config.connect_timeout = config.connect_timeout.min(INTERACTIVE_REQUEST_TIMEOUT);
    HttpPortal::new(config).context("building the Community Pass client")
}

fn portal_config(
    context: &Context,
    conn: &mut DbConnection,
) -> anyhow::Result<crate::portal::http::HttpPortalConfig> {
    let setup = settings::load_setup(conn)?;
    let api_key = checked_api_key(context, &setup)?;
    portal_config_with_key(context, api_key)
}

/// The API key read now from its file or environment variable (a rotated
/// key takes effect at once), refused unless its fingerprint is the one
/// `setup api-key` recorded after checking it: a key changed without that
/// check (another district's, a typo) never reaches Community Pass.
pub fn checked_api_key(context: &Context, setup: &SetupState) -> anyhow::Result<Secret> {
    let source = context.api_key_source();
    let key = load_api_key(&source)?;
    let in_use = settings::fingerprint(&key);
    match &setup.api_key_fingerprint {
        None => bail!(
            "the Community Pass API key has not been checked yet: run `cpsync setup api-key` \
             (it reads the key from the {source})"
        ),
        Some(recorded) if *recorded == in_use => Ok(key),
        Some(recorded) => bail!(
            "the Community Pass API key in the {source} (fingerprint {in_use}) is not the one \
             setup checked (fingerprint {recorded}, recorded {} UTC): after rotating the key run \
             `cpsync setup api-key` to check and record it; nothing was sent",
            setup
                .api_key_set_at
                .map(|at| at.to_string())
                .unwrap_or_else(|| "at an unknown time".to_string())
        ),
    }
}

/// Reads the API key from `source`; the error names the source, never a value.
pub fn load_api_key(source: &KeySource) -> anyhow::Result<Secret> {
    source.load().map_err(|error| {
        anyhow!(
            "no Community Pass API key: {error} (cpsync reads it from the {source}; \
             README \"Secrets\" says how to provide it)"
        )
    })
}

/// The client's settings with `api_key` (for `setup api-key`'s check of a
/// key not yet recorded, and every other call once it is).
pub fn portal_config_with_key(
    context: &Context,
    api_key: Secret,
) -> anyhow::Result<crate::portal::http::HttpPortalConfig> {
    let section = context.config.community_pass.as_ref();
    let base_url = context
        .cp_url
        .clone()
        .or_else(|| section.map(|c| c.base_url.clone()))
        .ok_or_else(|| {
            anyhow!(
                "no Community Pass URL: set [community_pass] base_url in the config, or --cp-url"
            )
        })?;
    let mut config = HttpPortalConfig::new(base_url, api_key);
    // Whole-district reads: the largest page the API allows, fewest round trips.
    config.page_size = crate::portal::PAGE_SIZE_MAX;
    if let Some(section) = section {
        config.connect_timeout = Duration::from_secs(section.connect_timeout_secs);
        config.request_timeout = Duration::from_secs(section.request_timeout_secs);
        config.retry.call_budget = Duration::from_secs(section.call_budget_secs);
        config.run_budget =
            crate::retry::RunBudget::new(Duration::from_secs(section.retry_wait_budget_secs));
    }
    Ok(config)
}
