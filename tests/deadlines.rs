//! Every wait has a deadline (issue 17): hostile peers as real sockets on
//! loopback — a body or the headers trickled at 1 byte/s, a server that accepts and never
//! answers, a huge `Retry-After`, 4xx answers, a PostgreSQL "server" that
//! accepts and never answers — each must end within its documented bound
//! (with margin) with a clear message, never retried when a retry cannot
//! help.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::hostile::{self, HostileServer};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig, RunBudget};
use cpsync::portal::{CommunityPass, PortalError};
use cpsync::secret::Secret;

const KEY: &str = "sk_deadline_test_5e2a";
/// Slack for thread scheduling on a loaded two-core machine.
const MARGIN: Duration = Duration::from_millis(1_500);

fn portal(
    base_url: &str,
    request_timeout: Duration,
    call_budget: Duration,
    retries: u32,
) -> HttpPortal {
    let mut config = HttpPortalConfig::new(base_url, Secret::new(KEY));
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = request_timeout;
    config.retry.call_budget = call_budget;
    config.retry.retries = retries;
    config.retry.backoff_base = Duration::from_millis(50);
    config.retry.backoff_max = Duration::from_millis(200);
    HttpPortal::new(config).unwrap()
}

/// A well-formed test-pull answer head promising `length` body bytes.
fn head(length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn a_body_trickled_at_one_byte_a_second_ends_at_the_deadline() {
    let body = br#"{"ok": true, "server_time": "2026-11-28T00:00:00", "detail": "trickled"}"#;
    let server = HostileServer::start_raw(Box::new(move |mut stream| {
        let _ = stream.write_all(&head(body.len()));
        hostile::trickle(&mut stream, body, Duration::from_secs(1));
    }));
    let client = portal(
        &server.base_url,
        Duration::from_secs(2),
        Duration::from_secs(2),
        3,
    );
    let started = Instant::now();
    let error = client.test_pull().expect_err("cannot finish in time");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2) + MARGIN, "took {took:?}");
    assert!(matches!(error, PortalError::Timeout { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("deadline") && text.contains("request_timeout_secs"),
        "{text}"
    );
    assert!(!text.contains(KEY));
}

#[test]
fn headers_trickled_at_one_byte_a_second_end_at_the_deadline() {
    // The status line and the headers themselves arrive a byte a second:
    // the attempt's deadline runs from sending the request, so the head
    // cannot stretch it any more than the body can.
    let server = HostileServer::start_raw(Box::new(|mut stream| {
        hostile::trickle(&mut stream, &head(10), Duration::from_secs(1));
    }));
    let client = portal(
        &server.base_url,
        Duration::from_secs(2),
        Duration::from_secs(2),
        3,
    );
    let started = Instant::now();
    let error = client.test_pull().expect_err("cannot finish in time");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2) + MARGIN, "took {took:?}");
    assert!(matches!(error, PortalError::Timeout { .. }), "{error}");
    assert!(!error.to_string().contains(KEY));
}

#[test]
fn a_server_that_accepts_and_never_answers_ends_within_the_budget() {
    let server = HostileServer::start_raw(Box::new(|stream| {
        std::thread::sleep(Duration::from_secs(30));
        drop(stream);
    }));
    // One attempt: the attempt's deadline.
    let client = portal(
        &server.base_url,
        Duration::from_secs(2),
        Duration::from_secs(60),
        0,
    );
    let started = Instant::now();
    let error = client.test_pull().expect_err("no answer");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2) + MARGIN, "took {took:?}");
    assert!(took >= Duration::from_millis(1_900), "took {took:?}");
    assert!(matches!(error, PortalError::Timeout { .. }), "{error}");
    // Many retries allowed: the call's budget still ends it.
    let client = portal(
        &server.base_url,
        Duration::from_secs(1),
        Duration::from_secs(3),
        8,
    );
    let started = Instant::now();
    let error = client.test_pull().expect_err("no answer");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3) + MARGIN, "took {took:?}");
    assert!(error.to_string().contains("gave up after"), "{error}");
}

#[test]
fn a_retry_after_beyond_the_budget_fails_at_once() {
    let server = HostileServer::start(Box::new(|_| {
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 100000\r\ncontent-type: application/json\r\ncontent-length: 45\r\nconnection: close\r\n\r\n{\"code\":\"rate_limited\",\"message\":\"slow down\"}".to_vec()
    }));
    let client = portal(
        &server.base_url,
        Duration::from_secs(5),
        Duration::from_secs(120),
        8,
    );
    let started = Instant::now();
    let error = client.test_pull().expect_err("rate limited");
    assert!(
        started.elapsed() < Duration::from_secs(1) + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "not retried");
    let text = error.to_string();
    assert!(
        text.contains("Retry-After asks for 100000s") && text.contains("not retried"),
        "{text}"
    );
}

#[test]
fn answers_a_retry_cannot_fix_are_never_retried_and_408_is() {
    for status in [400u16, 401, 403, 404, 409, 422] {
        let server = HostileServer::start(Box::new(move |_| {
            hostile::http(status, br#"{"code":"no","message":"refused"}"#)
        }));
        let client = portal(
            &server.base_url,
            Duration::from_secs(5),
            Duration::from_secs(10),
            8,
        );
        client.test_pull().expect_err("refused");
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            1,
            "{status} not retried"
        );
    }
    let server = HostileServer::start(Box::new(|_| {
        hostile::http(408, br#"{"code":"timeout","message":"too slow"}"#)
    }));
    let client = portal(
        &server.base_url,
        Duration::from_secs(5),
        Duration::from_secs(10),
        2,
    );
    let error = client.test_pull().expect_err("408 every time");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        3,
        "408 retried twice"
    );
    assert!(matches!(error, PortalError::Timeout { .. }), "{error}");
}

#[test]
fn a_postgres_server_that_accepts_and_never_answers_fails_within_the_connect_timeout() {
    // Accepts every connection, reads nothing, answers nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let url = format!("postgres://cpsync:hunter2@{address}/genesis");
    let started = Instant::now();
    let (code, _, err) = common::cpsync(&["--database-url", &url, "runs"]);
    let took = started.elapsed();
    let bound = Duration::from_secs(u64::from(cpsync::db::PG_CONNECT_TIMEOUT_SECS));
    assert_eq!(code, 1, "{err}");
    assert!(took < bound + MARGIN, "took {took:?}: {err}");
    assert!(err.contains("connect timeout"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

#[test]
fn every_postgres_connection_has_a_statement_timeout() {
    use diesel::RunQueryDsl;
    let db = common::TestDb::migrated(common::Backend::Postgres);
    let mut conn = db.connect();
    let shown: Setting = diesel::sql_query("SELECT current_setting('statement_timeout') AS value")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(shown.value, "10min");
}

/// An `openssl s_server` with a self-signed certificate; killed on drop.
struct UntrustedTlsServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl UntrustedTlsServer {
    fn start() -> UntrustedTlsServer {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(made.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        UntrustedTlsServer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for UntrustedTlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_rejected_tls_certificate_is_never_retried() {
    let server = UntrustedTlsServer::start();
    let url = format!("https://localhost:{}", server.port);
    let client = portal(&url, Duration::from_secs(5), Duration::from_secs(60), 8);
    let started = Instant::now();
    let error = client.test_pull().expect_err("untrusted certificate");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, PortalError::Config { .. }), "{error}");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(client.retry_stats().requests, 1);
    assert_eq!(
        client.retry_stats().retries(),
        0,
        "{:?}",
        client.retry_stats()
    );
}

/// A vendor failing every call cannot stretch a run: the waiting between
/// retries is one budget for all the run's calls. Once it is spent, calls
/// fail at their first failure, saying why, and the run ends.
#[test]
fn the_run_budget_of_waiting_bounds_every_call_of_a_run() {
    let server = HostileServer::start(Box::new(|_| {
        hostile::http(503, b"{\"code\":\"unavailable\",\"message\":\"down\"}")
    }));
    let mut config = HttpPortalConfig::new(server.base_url.as_str(), Secret::new(KEY));
    config.retry.retries = 8;
    config.retry.backoff_base = Duration::from_millis(100);
    config.retry.backoff_max = Duration::from_millis(100);
    config.run_budget = RunBudget::new(Duration::from_millis(500));
    let client = HttpPortal::new(config).unwrap();
    let started = Instant::now();
    let errors: Vec<String> = (0..20)
        .map(|_| client.test_pull().expect_err("always 503").to_string())
        .collect();
    let took = started.elapsed();
    // 500 ms of waiting in all (each wait 50..=100 ms), where twenty calls
    // of eight retries each could have waited up to 16 s.
    assert!(took < Duration::from_millis(500) + MARGIN, "took {took:?}");
    let requests = server.requests.load(Ordering::SeqCst);
    assert!(
        (20 + 5..=20 + 10).contains(&requests),
        "twenty calls and the retries 500 ms allows: {requests}"
    );
    let spent = errors
        .iter()
        .filter(|e| {
            e.contains("gave up after 1 attempt(s)") && e.contains("retry_wait_budget_secs")
        })
        .count();
    assert!(
        spent >= 10,
        "calls told the run's budget is spent: {spent}\n{errors:#?}"
    );
    // The next run (watch's next pass) starts with its whole allowance.
    client.renew_run_budget();
    let before = server.requests.load(Ordering::SeqCst);
    client.test_pull().expect_err("always 503");
    let retried = server.requests.load(Ordering::SeqCst) - before - 1;
    assert!((5..=8).contains(&retried), "retried again: {retried}");
}

/// A server that ignores the page limit (3,000 items where 1,000 were
/// asked) fails the listing at its first page, naming the bound, instead of
/// reading on into memory.
#[test]
fn a_server_that_ignores_the_page_limit_fails_at_once_naming_the_bound() {
    let items: Vec<serde_json::Value> = (1..=3_000)
        .map(|i| hostile::txn_json(&format!("T{i}"), i, 1, "1.00"))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "items": items, "next_after": 3_000, "has_more": true
    }))
    .unwrap();
    let server = HostileServer::start(Box::new(move |_| hostile::http(200, &body)));
    let client = portal(
        &server.base_url,
        Duration::from_secs(5),
        Duration::from_secs(30),
        0,
    );
    let started = Instant::now();
    let error = cpsync::portal::transactions_after(&client, cpsync::portal::TxnScope::All, 0)
        .expect_err("the bound");
    assert!(
        started.elapsed() < Duration::from_secs(2) + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains("PAGE_ITEMS_MAX"), "{error}");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "stopped at the first page"
    );
}
