//! The instant path: a fee inserted by plain SQL reaches Community Pass
//! through `cpsync watch` (how fast is `scripts/bench`'s to measure); SIGTERM stops it cleanly with
//! the run recorded; idle passes leave no runs behind; `--once` drains once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cpsync::db::{outbox, runs};
use cpsync::domain::FeeId;
use cpsync::portal::CommunityPass;
use cpsync::sync::push;

use super::common::Backend;
use super::{insert_fee_sql, Env};

/// How long the test waits for anything before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Starts `cpsync watch` and returns once it says it is waiting.
fn spawn_watch(env: &Env) -> Child {
    let mut child = env
        .command(&["watch", "--max-seconds", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cpsync watch");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|line| {
        eprintln!("watch: {line}");
        line.contains("waiting for fee changes")
    });
    assert!(ready, "cpsync watch never said it was waiting");
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("watch: {l}"))
    });
    child
}

fn terminate(mut child: Child) -> i32 {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for watch") {
            return status.code().unwrap_or(-1);
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("cpsync watch did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until Community Pass has the fee; returns how long it took.
fn until_in_community_pass(env: &Env, fee: FeeId, since: Instant) -> Duration {
    while since.elapsed() < PATIENCE {
        if env.portal.fee(fee).is_ok() {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("fee {fee} never reached Community Pass");
}

fn watch_runs(env: &Env) -> Vec<runs::RunRecord> {
    runs::recent_runs(&mut env.conn(), Some("send_fees"), 1000)
        .expect("run history")
        .into_iter()
        .filter(|r| r.trigger == "watch")
        .collect()
}

fn watch_pushes_a_fee_inserted_by_sql(backend: Backend) {
    let env = Env::new(backend);
    env.seed(15);
    env.set_up();
    env.ok(&["send-fees"]);
    let template = env
        .fees()
        .into_iter()
        .find(|f| f.fee_date >= chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap())
        .expect("an eligible fee");
    let watch = spawn_watch(&env);
    // Idle passes are not recorded.
    std::thread::sleep(Duration::from_millis(600));
    assert!(watch_runs(&env).is_empty(), "idle passes recorded");

    insert_fee_sql(
        &env,
        991_001,
        &template,
        "2026-10-02",
        &template.category,
        &template.school,
    );
    // Latency is measured by scripts/bench, not asserted here (a debug
    // build on a loaded machine is no measure); this checks it arrives.
    let latency = until_in_community_pass(&env, FeeId(991_001), Instant::now());
    eprintln!("{backend:?}: fee inserted by SQL reached Community Pass in {latency:?}");

    // A change to it travels the same way.
    env.sql("UPDATE student_fees SET amount_cents = 4321 WHERE id = 991001");
    let since = Instant::now();
    while env.portal.fee(FeeId(991_001)).unwrap().amount.cents() != 4321 {
        assert!(
            since.elapsed() < PATIENCE,
            "{backend:?}: the update never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    assert_eq!(terminate(watch), 0, "SIGTERM is a clean stop");
    assert_eq!(outbox::pending_count(&mut env.conn()).unwrap(), 0);
    let recorded = watch_runs(&env);
    assert!(
        (1..=2).contains(&recorded.len()),
        "one run per pass with work, none for idle passes: {recorded:?}"
    );
    assert!(
        recorded.iter().all(|r| r.status == "succeeded"),
        "{recorded:?}"
    );

    // --once drains and exits.
    insert_fee_sql(
        &env,
        991_002,
        &template,
        "2026-10-03",
        &template.category,
        &template.school,
    );
    env.ok(&["watch", "--once"]);
    assert!(env.portal.fee(FeeId(991_002)).is_ok());
    assert_eq!(watch_runs(&env).len(), recorded.len() + 1);
}

#[test]
fn sqlite_watch_pushes_a_fee_inserted_by_sql() {
    watch_pushes_a_fee_inserted_by_sql(Backend::Sqlite);
}

#[test]
fn postgres_watch_pushes_a_fee_inserted_by_sql() {
    watch_pushes_a_fee_inserted_by_sql(Backend::Postgres);
}

/// Waits until Community Pass holds at least `count` fees.
fn until_fees_in_community_pass(env: &Env, count: u64) {
    let since = Instant::now();
    while env.admin.summary().unwrap().fees < count {
        assert!(since.elapsed() < PATIENCE, "no fee reached Community Pass");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stops_and_crashes_lose_nothing(backend: Backend) {
    let env = Env::new(backend);
    env.seed(150);
    env.set_up();
    let queued = outbox::pending_count(&mut env.conn()).unwrap();
    assert!(
        queued > 2 * push::OUTBOX_BATCH_MAX,
        "several batches wait: {queued}"
    );
    // Each batch of pushes takes a moment, so a drain is still going when
    // the signals come (batch writes drain these few fees in milliseconds).
    env.admin
        .set_faults(&cpsync::sim::FaultConfig {
            latency_ms: 150,
            ..cpsync::sim::FaultConfig::default()
        })
        .unwrap();

    // SIGTERM while draining: the batch in hand is finished and recorded.
    let watch = spawn_watch(&env);
    until_fees_in_community_pass(&env, 1);
    assert_eq!(terminate(watch), 0);
    let recorded = watch_runs(&env);
    assert!(!recorded.is_empty(), "the interrupted pass is recorded");
    assert!(
        recorded.iter().all(|r| r.finished_at.is_some()),
        "{recorded:?}"
    );

    // SIGKILL while draining (a crash): whatever was not completed waits.
    let mut watch = spawn_watch(&env);
    let sent = env.admin.summary().unwrap().fees;
    until_fees_in_community_pass(&env, sent + 1);
    watch.kill().expect("SIGKILL");
    let _ = watch.wait();
    assert!(
        outbox::pending_count(&mut env.conn()).unwrap() > 0,
        "the kill came while the drain was going"
    );

    env.admin
        .set_faults(&cpsync::sim::FaultConfig::default())
        .unwrap();
    env.ok(&["watch", "--once"]);
    assert_eq!(outbox::pending_count(&mut env.conn()).unwrap(), 0);
    let cutoff = chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap();
    let eligible = env.fees().iter().filter(|f| f.fee_date >= cutoff).count();
    let summary = env.admin.summary().unwrap();
    assert_eq!(
        summary.fees as usize, eligible,
        "every eligible fee arrived once"
    );
    assert_eq!(summary.invariant_violations, 0);
}

#[test]
fn sqlite_watch_stopped_or_killed_mid_drain_loses_nothing() {
    stops_and_crashes_lose_nothing(Backend::Sqlite);
}

#[test]
fn postgres_watch_stopped_or_killed_mid_drain_loses_nothing() {
    stops_and_crashes_lose_nothing(Backend::Postgres);
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and
/// refuse new ones for a while, as a server restart or a network cut does.
struct CuttableProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn start(upstream: std::net::SocketAddr) -> CuttableProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (cut_flag, streams) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut held = streams.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { port, cut, open }
    }

    /// Cuts every connection and refuses new ones until `restore`.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, port: u16) -> (String, std::net::SocketAddr) {
    let parsed = url::Url::parse(url).expect("a PostgreSQL URL");
    let upstream = format!(
        "{}:{}",
        parsed.host_str().expect("a host"),
        parsed.port().expect("a port")
    )
    .parse()
    .expect("a socket address");
    let mut proxied = parsed;
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(port)).unwrap();
    (proxied.to_string(), upstream)
}

/// The database goes away under `watch` and comes back: watch reconnects
/// (LISTEN included) and pushes the change made meanwhile; when it stays
/// away past `--db-unreachable-max-secs`, watch exits 1 for the service
/// manager to restart it.
#[test]
fn postgres_watch_reconnects_after_the_database_goes_away() {
    let env = Env::new(Backend::Postgres);
    env.seed(15);
    env.set_up();
    env.ok(&["send-fees"]);
    let template = env
        .fees()
        .into_iter()
        .find(|f| f.fee_date >= chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap())
        .expect("an eligible fee");
    let (_, upstream) = through(&env.db.url_text, 1);
    let proxy = CuttableProxy::start(upstream);
    let (url, _) = through(&env.db.url_text, proxy.port);
    let mut watch = env
        .command_with_url(
            &url,
            &[
                "watch",
                "--max-seconds",
                "120",
                "--db-unreachable-max-secs",
                "4",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cpsync watch");
    let stderr = watch.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| eprintln!("watch: {l}"))
    });
    std::thread::sleep(Duration::from_millis(800));

    proxy.cut();
    insert_fee_sql(
        &env,
        992_001,
        &template,
        "2026-10-04",
        &template.category,
        &template.school,
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        env.portal.fee(FeeId(992_001)).is_err(),
        "pushed without a database?"
    );
    proxy.restore();
    until_in_community_pass(&env, FeeId(992_001), Instant::now());
    assert!(watch.try_wait().unwrap().is_none(), "watch kept running");

    // Gone for good: watch gives up with exit 1 within its bound.
    proxy.cut();
    insert_fee_sql(
        &env,
        992_002,
        &template,
        "2026-10-05",
        &template.category,
        &template.school,
    );
    let since = Instant::now();
    let code = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "watch never gave up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(1), "exit 1 so the service manager restarts it");
}
