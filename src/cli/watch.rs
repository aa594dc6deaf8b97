//! `cpsync watch`: the instant path of Send Fees. A long-running loop that
//! drains the outbox (`sync::push::drain_outbox_until`) as soon as a fee
//! change is committed: on PostgreSQL it LISTENs on channel `cp_outbox`
//! (the outbox triggers NOTIFY it) with a slow fallback poll; on SQLite it
//! reads `PRAGMA data_version` every `--poll-ms` (a few milliseconds: the
//! number changes when another connection commits, and reading it touches
//! only the WAL index in shared memory) and looks at the outbox only when it
//! changed, or every `FALLBACK_POLL_INTERVAL` regardless.
//!
//! Shaped for a supervisor (systemd `Restart=always`): SIGTERM or SIGINT
//! finishes the batch in hand, records the run and exits 0; a second signal
//! exits at once. Nothing is lost on a crash: outbox rows are completed only
//! after their push, and a push cut off is replayed with the same
//! idempotency key. Each pass that found work is one `send_fees` run with
//! trigger `watch`; idle passes are not recorded. When Community Pass fails
//! every push of a pass, the loop backs off (doubling up to
//! `BACKOFF_MAX`) instead of filling run history with failures.
//!
//! A lost database connection (a PostgreSQL restart, a network cut) is
//! re-established after every failed pass, with the same backoff, and the
//! LISTEN is issued again on the new connection. When the database stays
//! unreachable for `--db-unreachable-max-secs`, the loop exits 1 so the
//! service manager restarts it and the operator sees the failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use diesel::RunQueryDsl;

use super::task::{self, run_task};
use super::{exit, send_fees, Context};
use crate::db::{outbox, settings, tasks, DbConnection};
use crate::portal::http::HttpPortal;
use crate::setup::SetupState;
use crate::sync::push::{self, PushReport};
use crate::sync::utc_now;

/// The channel the PostgreSQL outbox trigger notifies.
const CHANNEL: &str = "cp_outbox";
/// Bounds of `--poll-ms`.
const POLL_MS_MIN: u64 = 1;
const POLL_MS_MAX: u64 = 60_000;
/// The default of `--poll-ms`: SQLite's change check is cheap enough to
/// run this often (issue 19: commit → Community Pass p99 ≤ 60 ms).
const POLL_MS_DEFAULT: u64 = 5;
/// How often the LISTEN connection's socket is read for notifications (a
/// local read, no round trip to the server).
const LISTEN_CHECK_INTERVAL: Duration = Duration::from_millis(2);
/// How often the outbox is looked at without a notification (PostgreSQL:
/// a notification is lost only if the listening connection broke) or
/// without a change of `data_version` (SQLite: a change it cannot see,
/// e.g. a file replaced under the connection).
const FALLBACK_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The longest single sleep, so a signal is noticed promptly.
const SLEEP_SLICE_MAX: Duration = Duration::from_millis(100);
/// Waits after a pass that made no progress (Community Pass down, setup
/// incomplete, task switched off): doubled each time, within these bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long the database may stay unreachable before `watch` gives up
/// (exit 1) so the service manager restarts it, unless given.
const DB_UNREACHABLE_MAX_SECS_DEFAULT: u64 = 300;
/// Exit status when a second signal interrupts the graceful shutdown.
const FORCED_EXIT_STATUS: i32 = 1;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs until SIGTERM or SIGINT (Ctrl-C); the batch in hand is finished and its
run recorded, then it exits 0. A second signal exits at once (nothing is lost:
unfinished changes stay in the outbox). Install it as a service with
scripts/systemd/cpsync-watch.service.")]
pub struct Args {
    /// Drain the outbox once and exit (the exit code of that pass).
    #[arg(long)]
    once: bool,
    /// Stop gracefully after this many seconds (for tests and timed runs).
    #[arg(long, value_name = "N")]
    max_seconds: Option<u64>,
    /// SQLite: check for a commit (PRAGMA data_version) every this many
    /// milliseconds; the outbox is read only after one.
    #[arg(long, value_name = "MS", default_value_t = POLL_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(POLL_MS_MIN..=POLL_MS_MAX))]
    poll_ms: u64,
    /// Exit 1 when the database has been unreachable this long (the service
    /// manager then restarts watch); reconnects with backoff until then.
    #[arg(long, value_name = "N", default_value_t = DB_UNREACHABLE_MAX_SECS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    db_unreachable_max_secs: u64,
}

/// Set by SIGTERM/SIGINT; checked between batches and while waiting.
#[derive(Clone)]
struct Stop {
    signalled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Stop {
    fn install(max_seconds: Option<u64>) -> anyhow::Result<Stop> {
        let signalled = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // The conditional shutdown goes first: it fires only when the
            // flag is already set, i.e. on the second signal.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                FORCED_EXIT_STATUS,
                Arc::clone(&signalled),
            )
            .context("installing the signal handlers")?;
            signal_hook::flag::register(signal, Arc::clone(&signalled))
                .context("installing the signal handlers")?;
        }
        Ok(Stop {
            signalled,
            deadline: max_seconds.map(|s| Instant::now() + Duration::from_secs(s)),
        })
    }

    fn requested(&self) -> bool {
        self.signalled.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps up to `duration` in short slices; false if stopped meanwhile.
    fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while !self.requested() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(SLEEP_SLICE_MAX));
        }
        false
    }
}

/// How the loop learns that something was committed.
enum Waker {
    /// SQLite: read `PRAGMA data_version` every `interval`; wake when it
    /// changed (another connection committed) or `FALLBACK_POLL_INTERVAL`
    /// passed. `seen` is the last value read (None: not read yet, or the
    /// read failed, which wakes at once so the pass reports the error).
    Poll {
        interval: Duration,
        seen: Option<i64>,
    },
    /// PostgreSQL: a connection LISTENing on `cp_outbox`; `None` while it
    /// is broken (re-established at the next fallback poll).
    Listen {
        listener: Option<diesel::PgConnection>,
        context_url: crate::db::DatabaseUrl,
    },
}

impl Waker {
    fn new(context: &Context, poll: Duration) -> anyhow::Result<Waker> {
        if !matches!(context.database_url, crate::db::DatabaseUrl::Postgres(_)) {
            return Ok(Waker::Poll {
                interval: poll,
                seen: None,
            });
        }
        let listener = listen(&context.database_url)?;
        Ok(Waker::Listen {
            listener: Some(listener),
            context_url: context.database_url.clone(),
        })
    }

    fn describe(&self) -> String {
        match self {
            Waker::Poll { interval, .. } => format!(
                "PRAGMA data_version every {} ms, the outbox every {} s regardless",
                interval.as_millis(),
                FALLBACK_POLL_INTERVAL.as_secs()
            ),
            Waker::Listen { .. } => format!(
                "LISTEN {CHANNEL}, fallback poll every {} s",
                FALLBACK_POLL_INTERVAL.as_secs()
            ),
        }
    }

    /// A new connection: its `data_version` is not comparable with the old one's.
    fn forget_commit_check(&mut self) {
        if let Waker::Poll { seen, .. } = self {
            *seen = None;
        }
    }

    /// Returns when a change may be waiting: notified, a commit seen, the
    /// fallback interval passed, or a stop was requested.
    fn wait(&mut self, conn: &mut DbConnection, stop: &Stop) {
        match self {
            Waker::Poll { interval, seen } => wait_for_commit(conn, *interval, seen, stop),
            Waker::Listen {
                listener,
                context_url,
            } => wait_for_notification(listener, context_url, stop),
        }
    }
}

/// SQLite: sleeps in steps of `interval` until `PRAGMA data_version` on
/// this connection differs from `seen` (another connection committed), the
/// fallback interval passed or a stop is requested. Its own commits do not
/// change the number, so a pass never wakes the loop by itself.
fn wait_for_commit(
    conn: &mut DbConnection,
    interval: Duration,
    seen: &mut Option<i64>,
    stop: &Stop,
) {
    if seen.is_none() {
        // Read before the pass that follows, so a commit after this read
        // is never missed (the pass may not have seen it). When it cannot
        // be read, the outbox itself is looked at every `interval`.
        match crate::db::data_version(conn) {
            Ok(version) => *seen = Some(version),
            Err(error) => {
                tracing::warn!(%error, "cannot read PRAGMA data_version; polling the outbox");
                stop.sleep(interval);
            }
        }
        return;
    }
    let until = Instant::now() + FALLBACK_POLL_INTERVAL;
    while Instant::now() < until && stop.sleep(interval) {
        match crate::db::data_version(conn) {
            Ok(version) if Some(version) == *seen => {}
            Ok(version) => {
                *seen = Some(version);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read PRAGMA data_version; looking at the outbox");
                *seen = None;
                return;
            }
        }
    }
}

fn listen(url: &crate::db::DatabaseUrl) -> anyhow::Result<diesel::PgConnection> {
    match crate::db::connect(url, crate::db::OpenMode::MustExist)? {
        DbConnection::Pg(mut pg) => {
            diesel::sql_query(format!("LISTEN {CHANNEL}"))
                .execute(&mut pg)
                .context("LISTEN cp_outbox")?;
            Ok(pg)
        }
        DbConnection::Sqlite(_) => anyhow::bail!("LISTEN needs PostgreSQL"),
    }
}

fn wait_for_notification(
    listener: &mut Option<diesel::PgConnection>,
    url: &crate::db::DatabaseUrl,
    stop: &Stop,
) {
    let until = Instant::now() + FALLBACK_POLL_INTERVAL;
    while Instant::now() < until && !stop.requested() {
        let Some(connection) = listener.as_mut() else {
            stop.sleep(until.saturating_duration_since(Instant::now()));
            break;
        };
        match take_notifications(connection) {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "the LISTEN connection broke; polling until it is back");
                *listener = None;
            }
        }
        stop.sleep(LISTEN_CHECK_INTERVAL);
    }
    if listener.is_none() && !stop.requested() {
        match listen(url) {
            Ok(connection) => *listener = Some(connection),
            Err(error) => {
                tracing::warn!(error = %super::one_line_chain(&error), "cannot LISTEN yet")
            }
        }
    }
}

/// Reads every notification already received; true if there was one.
fn take_notifications(connection: &mut diesel::PgConnection) -> diesel::QueryResult<bool> {
    let mut notified = false;
    for notification in connection.notifications_iter() {
        notification?;
        notified = true;
    }
    Ok(notified)
}

/// What one pass found.
enum Pass {
    /// The outbox was empty: nothing recorded.
    Idle,
    /// Changes wait but cannot be sent now (task off, setup incomplete).
    Blocked,
    /// A recorded run; `progress` is false when every push failed.
    Drained { exit_code: u8, progress: bool },
}

/// The client, rebuilt when `setup api-key` stores a new key.
struct Client {
    portal: HttpPortal,
    fingerprint: Option<String>,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let stop = Stop::install(args.max_seconds)?;
    let mut conn = context.connect()?;
    let mut waker = Waker::new(context, Duration::from_millis(args.poll_ms))?;
    let mut client: Option<Client> = None;
    if args.once {
        return match pass(context, &mut conn, &mut client, &stop)? {
            Pass::Drained { exit_code, .. } => Ok(exit_code),
            Pass::Idle => {
                out!("watch: no fee changes waiting");
                Ok(exit::OK)
            }
            Pass::Blocked => {
                eprintln!("cpsync watch: fee changes wait but cannot be sent now (task switched off or setup incomplete; see cpsync setup show)");
                Ok(exit::OK)
            }
        };
    }
    eprintln!(
        "cpsync watch: waiting for fee changes ({}); SIGTERM or Ctrl-C stops after the batch in hand",
        waker.describe()
    );
    let mut backoff = BACKOFF_MIN;
    let unreachable_max = Duration::from_secs(args.db_unreachable_max_secs);
    let mut unreachable_since: Option<Instant> = None;
    while !stop.requested() {
        match pass(context, &mut conn, &mut client, &stop) {
            Ok(Pass::Idle) => {
                backoff = BACKOFF_MIN;
                unreachable_since = None;
                waker.wait(&mut conn, &stop);
            }
            Ok(Pass::Drained { progress: true, .. }) => backoff = BACKOFF_MIN,
            Ok(
                Pass::Blocked
                | Pass::Drained {
                    progress: false, ..
                },
            ) => {
                stop.sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(error) => {
                eprintln!(
                    "cpsync watch: pass failed, retrying in {} s: {}",
                    backoff.as_secs(),
                    super::one_line_chain(&error)
                );
                stop.sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // The connection may be what failed (a database restart):
                // a fresh one for the next pass, or a deadline to give up.
                match context.connect() {
                    Ok(fresh) => {
                        conn = fresh;
                        waker.forget_commit_check();
                        unreachable_since = None;
                    }
                    Err(error) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        eprintln!(
                            "cpsync watch: the database is unreachable ({} s so far): {}",
                            since.elapsed().as_secs(),
                            super::one_line_chain(&error)
                        );
                        if since.elapsed() >= unreachable_max {
                            eprintln!(
                                "cpsync watch: no database for {} s (--db-unreachable-max-secs); exiting so the service manager restarts watch",
                                unreachable_max.as_secs()
                            );
                            return Ok(exit::FAILURE);
                        }
                    }
                }
            }
        }
    }
    eprintln!("cpsync watch: stopped");
    Ok(exit::OK)
}

/// One pass: look at the outbox and, if changes wait and may be sent,
/// drain it as one recorded run.
fn pass(
    context: &Context,
    conn: &mut DbConnection,
    client: &mut Option<Client>,
    stop: &Stop,
) -> anyhow::Result<Pass> {
    if outbox::pending_count(conn)? == 0 {
        return Ok(Pass::Idle);
    }
    if !tasks::is_enabled(conn, task::SEND_FEES)? {
        tracing::warn!("changes wait but the send_fees task is switched off");
        return Ok(Pass::Blocked);
    }
    let setup = settings::load_setup(conn)?;
    if let Err(missing) = setup.ready_to_send() {
        tracing::warn!(%missing, "changes wait but setup is incomplete");
        return Ok(Pass::Blocked);
    }
    let portal = client_for(context, conn, client, &setup)?;
    portal.renew_run_budget();
    let mut report: Option<PushReport> = None;
    let exit_code = run_task(conn, task::SEND_FEES, "watch", false, |conn, run_id| {
        let drained = push::drain_outbox_until(
            conn,
            portal,
            &setup,
            run_id,
            &utc_now,
            push::OUTBOX_BATCH_MAX,
            &|| stop.requested(),
        )?;
        let waiting = outbox::pending_count(conn)?;
        send_fees::print_report("watch", &drained, waiting, false)?;
        let outcome = send_fees::outcome_of(&drained);
        report = Some(drained);
        Ok(outcome)
    })?;
    let progress = report.is_some_and(|r| {
        r.failed == 0 || r.pushed + r.unchanged + r.ineligible + r.refused + r.deleted > 0
    });
    Ok(Pass::Drained {
        exit_code,
        progress,
    })
}

fn client_for<'a>(
    context: &Context,
    conn: &mut DbConnection,
    client: &'a mut Option<Client>,
    setup: &SetupState,
) -> anyhow::Result<&'a HttpPortal> {
    let stale = client
        .as_ref()
        .is_none_or(|c| c.fingerprint != setup.api_key_fingerprint);
    if stale {
        *client = Some(Client {
            portal: task::portal(context, conn)?,
            fingerprint: setup.api_key_fingerprint.clone(),
        });
    }
    client
        .as_ref()
        .map(|c| &c.portal)
        .ok_or_else(|| anyhow::anyhow!("no Community Pass client"))
}
