//! Issue 17: a PostgreSQL restart under `watch`. On a PostgreSQL scenario,
//! at its end, the driver starts a private cluster of its own (so that
//! restarting it disturbs neither the other scenarios nor anything else on
//! the shared server), copies the scenario's database into it, and runs
//! `cpsync watch` against the copy. Once watch LISTENs, a new fee is added
//! and the server restarted (`pg_ctl restart -m fast`) at once, and another
//! fee is added after the restart. Watch must reconnect, LISTEN again (a
//! session whose last statement is `LISTEN cp_outbox` shows in
//! `pg_stat_activity` of the restarted server), drain the outbox and put
//! both fees in Community Pass within `RESTART_DRAIN_MAX`, then stop with
//! exit 0 on SIGTERM. The alternative its documentation allows — exiting 1
//! after `--db-unreachable-max-secs` so the service manager restarts it —
//! is not what a restart of a second or so should produce, and is a
//! violation here.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;

use cpsync::db::{self, DatabaseUrl, DbConnection, OpenMode};
use cpsync::domain::FeeId;
use cpsync::portal::CommunityPass;

use crate::engine::{tail, Planned};
use crate::tally::ScenarioResult;
use crate::world::World;

/// How long watch may take to reconnect, LISTEN again and drain.
const RESTART_DRAIN_MAX: Duration = Duration::from_secs(90);
/// How often the driver looks.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// Ids of the fees the stage adds (above any the scenario uses).
const FEE_BEFORE_RESTART: i64 = 8_100_000_001;
const FEE_AFTER_RESTART: i64 = 8_100_000_002;

/// A cluster of the driver's own, stopped and removed on drop.
struct PrivateCluster {
    dir: PathBuf,
    as_postgres: bool,
    url: String,
}

impl PrivateCluster {
    fn start(seed: u64) -> anyhow::Result<PrivateCluster> {
        let dir =
            std::env::temp_dir().join(format!("cpsync-chaos-pg-{}-{seed}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let as_postgres = is_root()?;
        let user = if as_postgres {
            let status = Command::new("chown").arg("postgres").arg(&dir).status()?;
            anyhow::ensure!(status.success(), "chown postgres {}", dir.display());
            "postgres".to_string()
        } else {
            whoami()?
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = PrivateCluster {
            dir: dir.clone(),
            as_postgres,
            url: format!("postgres://{user}@127.0.0.1:{port}/cpsync"),
        };
        let data = dir.join("data");
        cluster.pg(&[
            "initdb",
            "-D",
            &data.display().to_string(),
            "-U",
            &user,
            "-A",
            "trust",
            "--no-sync",
        ])?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        cluster.pg(&[
            "pg_ctl",
            "-D",
            &data.display().to_string(),
            "-l",
            &dir.join("server.log").display().to_string(),
            "-w",
            "-o",
            &options,
            "start",
        ])?;
        let admin = cluster.url.replace("/cpsync", "/postgres");
        let mut conn = db::connect(&DatabaseUrl::parse(&admin)?, OpenMode::MustExist)?;
        diesel::connection::SimpleConnection::batch_execute(&mut conn, "CREATE DATABASE cpsync")?;
        Ok(cluster)
    }

    /// Runs a PostgreSQL tool, as the postgres user when the driver is root
    /// (`initdb` refuses root).
    fn pg(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        // Output to a file, not a pipe: the server pg_ctl starts keeps the
        // descriptors it inherits, and a pipe would never reach its end.
        let log = self.dir.join(format!("{}.log", args[0]));
        let status = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(
                self.dir.join(format!("{}.err", args[0])),
            )?)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "{} failed: {}",
            args[0],
            tail(
                &std::fs::read_to_string(self.dir.join(format!("{}.err", args[0])))
                    .unwrap_or_default()
            )
        );
        Ok(())
    }

    fn restart(&self) -> anyhow::Result<()> {
        self.pg(&[
            "pg_ctl",
            "-D",
            &self.dir.join("data").display().to_string(),
            "-m",
            "fast",
            "-w",
            "restart",
        ])
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.pg(&[
            "pg_ctl",
            "-D",
            &self.dir.join("data").display().to_string(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn whoami() -> anyhow::Result<String> {
    let output = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Copies a database with `pg_dump | psql`.
fn copy_database(from: &str, to: &str) -> anyhow::Result<()> {
    let mut dump = Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", "--dbname", from])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let dumped = dump.stdout.take().expect("piped stdout");
    let restore = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "--dbname", to])
        .stdin(dumped)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let dump = dump.wait_with_output()?;
    anyhow::ensure!(
        dump.status.success(),
        "pg_dump failed: {}",
        tail(&String::from_utf8_lossy(&dump.stderr))
    );
    anyhow::ensure!(
        restore.status.success(),
        "psql (restoring the copy) failed: {}",
        tail(&String::from_utf8_lossy(&restore.stderr))
    );
    Ok(())
}

/// Whether a session of the server LISTENs on the outbox channel.
fn listening(conn: &mut DbConnection) -> bool {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT COUNT(*) AS n FROM pg_stat_activity WHERE query = 'LISTEN cp_outbox'")
        .get_result::<Count>(conn)
        .is_ok_and(|c| c.n > 0)
}

/// Waits until `condition` holds, at most until `deadline`.
fn until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// Runs the stage on a PostgreSQL scenario whose sent fees include `like`
/// (the new fees copy its student, category and school).
pub fn under_watch(world: &World, like: FeeId, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let trace = &world.engine.trace;
    let cluster = PrivateCluster::start(world.seed)?;
    copy_database(&world.url_text, &cluster.url)?;
    trace.event("pg restart: the scenario's database copied to a private cluster");
    let url = DatabaseUrl::parse(&cluster.url)?;
    let log_dir = world.dir.join("logs-pg-restart");
    std::fs::create_dir_all(&log_dir)?;
    let engine = world.engine.on_database(&cluster.url, log_dir, &world.dir);
    let watch = engine.spawn(
        &["watch", "--db-unreachable-max-secs", "60"],
        Planned::Nothing,
    )?;
    let checked = AtomicBool::new(false);
    let (ended, found) = std::thread::scope(|threads| {
        let waiting = threads.spawn(|| {
            watch.wait_or_terminate("cpsync watch: waiting for fee changes", || {
                checked.load(Ordering::SeqCst)
            })
        });
        let found = restart_and_drain(world, &cluster, &url, like);
        checked.store(true, Ordering::SeqCst);
        let ended = waiting.join().expect("the waiting thread does not panic");
        (ended, found)
    });
    let ended = ended?;
    for line in engine.trace.lines() {
        trace.event(format!("pg restart: {line}"));
    }
    let mut problems = found?;
    if ended.code != Some(0) || ended.crashed(false).is_some() {
        problems.push(format!(
            "watch after the restart ended {} (want exit 0 on SIGTERM): {}",
            ended.describe(),
            tail(&ended.stderr)
        ));
    }
    trace.event(format!(
        "pg restart: {}",
        if problems.is_empty() {
            "watch reconnected, LISTENed again and drained the outbox; both fees in Community Pass"
                .to_string()
        } else {
            format!("{} problem(s)", problems.len())
        }
    ));
    result.violations.extend(
        problems
            .into_iter()
            .map(|p| format!("PostgreSQL restart under watch: {p}")),
    );
    result.pg_restarts += 1;
    Ok(())
}

/// The restart itself and what must follow; returns what went wrong.
fn restart_and_drain(
    world: &World,
    cluster: &PrivateCluster,
    url: &DatabaseUrl,
    like: FeeId,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut conn = db::connect(url, OpenMode::MustExist)?;
    let deadline = Instant::now() + RESTART_DRAIN_MAX;
    if !until(deadline, || listening(&mut conn)) {
        problems.push("watch never LISTENed before the restart".to_string());
        return Ok(problems);
    }
    crate::scenario::add_fee(&mut conn, like.0, FEE_BEFORE_RESTART)?;
    cluster.restart()?;
    let mut conn = db::connect(url, OpenMode::MustExist)?;
    crate::scenario::add_fee(&mut conn, like.0, FEE_AFTER_RESTART)?;
    let in_community_pass = |id: i64| {
        world
            .portal
            .fee(FeeId(id))
            .is_ok_and(|fee| fee.genesis_fee_id == FeeId(id))
    };
    let drained = until(deadline, || {
        cpsync::db::outbox::pending_count(&mut conn).is_ok_and(|n| n == 0)
            && in_community_pass(FEE_BEFORE_RESTART)
            && in_community_pass(FEE_AFTER_RESTART)
    });
    if !drained {
        problems.push(format!(
            "within {} s of the restart the outbox was not drained into Community Pass",
            RESTART_DRAIN_MAX.as_secs()
        ));
    }
    if !until(deadline, || listening(&mut conn)) {
        problems.push("watch did not LISTEN again after the restart".to_string());
    }
    Ok(problems)
}
