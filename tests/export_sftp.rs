//! The SFTP upload against a real OpenSSH server on loopback, started by
//! `scripts/test` (`start_sshd`), which exports `CPSYNC_TEST_SFTP_*`.
//! Without them every test here fails loudly: they are never skipped.
//! Connection drops are made deterministic by a small proxy thread that cuts
//! the TCP stream after a given number of bytes from the client.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use cpsync::export::oneroster::{MANIFEST_FILE, USERS_FILE, USERS_HEADER};
use cpsync::export::sftp::{self, SftpError, SftpTarget, OLD_SUFFIX, PART_SUFFIX};
use cpsync::export::{self, Bundle, Snapshot};
use cpsync::retry::RetryPolicy;
use cpsync::seed::{self, SeedOptions};

const RUN_DATE: (i32, u32, u32) = (2026, 11, 27);

struct SftpEnv {
    host: String,
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    dir: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the SFTP tests need the loopback OpenSSH server. \
             Run the suite with scripts/test, which starts one (start_sshd)."
        )
    })
}

fn sftp_env() -> SftpEnv {
    SftpEnv {
        host: var("CPSYNC_TEST_SFTP_HOST"),
        port: var("CPSYNC_TEST_SFTP_PORT")
            .parse()
            .expect("port is a number"),
        user: var("CPSYNC_TEST_SFTP_USER"),
        key: var("CPSYNC_TEST_SFTP_KEY").into(),
        known_hosts: var("CPSYNC_TEST_SFTP_KNOWN_HOSTS").into(),
        dir: var("CPSYNC_TEST_SFTP_DIR").into(),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A remote base folder of this test's own.
fn fresh_remote_dir(env: &SftpEnv, name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    env.dir.join(format!("{name}-{}-{n}", std::process::id()))
}

fn target(env: &SftpEnv, port: u16, known_hosts: &Path, remote_dir: &Path) -> SftpTarget {
    SftpTarget {
        host: env.host.clone(),
        port,
        username: env.user.clone(),
        private_key_file: Some(env.key.clone()),
        password: None,
        known_hosts_file: known_hosts.to_path_buf(),
        remote_dir: remote_dir.display().to_string(),
    }
}

fn run_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2).unwrap()
}

fn fast_retries(attempts_max: u32) -> RetryPolicy {
    RetryPolicy {
        retries: attempts_max - 1,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..sftp::retry_policy_default()
    }
}

/// The export of a seeded district of `students` students.
fn bundle(students: usize, seed: u64) -> Bundle {
    let district = seed::generate(SeedOptions { students, seed });
    let snapshot = Snapshot {
        district_name: "Test District".into(),
        schools: district.schools,
        students: district.students,
        guardians: district.guardians,
        links: district.links,
    };
    let bundle = export::build(&snapshot).expect("build");
    export::check::check(&bundle).expect("check");
    bundle
}

/// The files now in the run date's folder, by name.
fn remote_names(base: &Path) -> Vec<String> {
    let dir = base.join("2026-11-27");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_arrived_whole(base: &Path, bundle: &Bundle) {
    let dir = base.join("2026-11-27");
    for file in &bundle.files {
        let path = dir.join(file.name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes == file.bytes,
            "{} differs from what was sent",
            file.name
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.name);
    }
    let mut expected: Vec<String> = bundle.files.iter().map(|f| f.name.to_string()).collect();
    expected.sort();
    assert_eq!(remote_names(base), expected, "no temporaries left");
}

/// A known_hosts file naming the test server's key for `port` (the proxy's).
fn known_hosts_for_port(env: &SftpEnv, port: u16, dir: &Path) -> PathBuf {
    let line = std::fs::read_to_string(&env.known_hosts).unwrap();
    let key = line.split_once(' ').expect("known_hosts line").1;
    let path = dir.join(format!("known_hosts_{port}"));
    std::fs::write(&path, format!("[{}]:{port} {key}", env.host)).unwrap();
    path
}

/// A TCP proxy to the server that cuts each of the first `cut_connections`
/// connections once `cut_after_bytes` bytes came from the client.
fn cutting_proxy(upstream: SocketAddr, cut_after_bytes: usize, cut_connections: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (index, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let limit = (index < cut_connections).then_some(cut_after_bytes);
            pipe(client, server, limit);
        }
    });
    port
}

/// A TCP proxy to the server that, once `stall_after_bytes` bytes came
/// from the client, forwards nothing more either way and keeps the
/// connection open: a server that has stopped answering without closing.
fn stalling_proxy(upstream: SocketAddr, stall_after_bytes: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (mut server_read, mut client_write) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            let seen = stalled.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                while let Ok(n) = server_read.read(&mut buffer) {
                    if n == 0 || seen.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    if client_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_secs(120));
            });
            let (mut client_read, mut server_write) = (client, server);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                let mut forwarded = 0usize;
                while let Ok(n) = client_read.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    let allowed = n.min(stall_after_bytes.saturating_sub(forwarded));
                    let _ = server_write.write_all(&buffer[..allowed]);
                    forwarded += allowed;
                    if allowed < n {
                        stalled.store(true, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(120));
                        break;
                    }
                }
            });
        }
    });
    port
}

fn pipe(client: TcpStream, server: TcpStream, limit: Option<usize>) {
    let (mut client_read, mut server_write) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut server_read, mut client_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut forwarded = 0usize;
        let mut buffer = [0u8; 8192];
        loop {
            let n = match client_read.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let allowed = limit.map_or(n, |l| n.min(l.saturating_sub(forwarded)));
            if server_write.write_all(&buffer[..allowed]).is_err() {
                break;
            }
            forwarded += allowed;
            if allowed < n {
                break;
            }
        }
        let _ = server_write.shutdown(Shutdown::Both);
        let _ = client_read.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_good_upload_arrives_whole_and_verified() {
    let env = sftp_env();
    let base = fresh_remote_dir(&env, "good");
    let bundle = bundle(1_500, 7);
    let target = target(&env, env.port, &env.known_hosts, &base);
    let report = sftp::upload(&target, run_date(), &bundle.files, &fast_retries(1)).unwrap();
    assert_eq!(report.attempts, 1);
    assert_eq!(report.remote_dir, format!("{}/2026-11-27", base.display()));
    assert_eq!(report.files.len(), 4);
    assert!(
        report.files[3].path.ends_with(MANIFEST_FILE),
        "manifest goes last"
    );
    for (remote, file) in report.files.iter().zip(&bundle.files) {
        assert_eq!(
            (remote.bytes, &remote.sha256),
            (file.bytes.len() as u64, &file.sha256)
        );
    }
    assert_arrived_whole(&base, &bundle);
    let dir_mode = std::fs::metadata(base.join("2026-11-27"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let users = std::fs::read(base.join("2026-11-27").join(USERS_FILE)).unwrap();
    let mut reader = csv::Reader::from_reader(users.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header, USERS_HEADER);
    assert_eq!(
        reader.records().inspect(|r| assert!(r.is_ok())).count(),
        bundle.file(USERS_FILE).unwrap().rows
    );
}

#[test]
fn an_unknown_host_key_is_refused_before_logging_in() {
    let env = sftp_env();
    let scratch = tempfile::tempdir().unwrap();
    let empty = scratch.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let base = fresh_remote_dir(&env, "unknown");
    let target = target(&env, env.port, &empty, &base);
    let error =
        sftp::upload(&target, run_date(), &bundle(20, 1).files, &fast_retries(3)).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, SftpError::UnknownHostKey { .. }),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{}", env.port)),
        "{message}"
    );
    assert!(
        message.contains("ssh-ed25519 SHA256:") && message.contains("refusing"),
        "{message}"
    );
    assert!(!base.exists(), "nothing was created on the server");
}

#[test]
fn a_changed_host_key_is_refused() {
    let env = sftp_env();
    let scratch = tempfile::tempdir().unwrap();
    let other_key = scratch.path().join("other");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    let known_hosts = scratch.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", env.port, key.join(" ")),
    )
    .unwrap();
    let base = fresh_remote_dir(&env, "changed");
    let target = target(&env, env.port, &known_hosts, &base);
    let error =
        sftp::upload(&target, run_date(), &bundle(20, 1).files, &fast_retries(3)).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, SftpError::ChangedHostKey { .. }),
        "{message}"
    );
    assert!(
        message.contains("CHANGED") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(!base.exists(), "nothing was created on the server");
}

#[test]
fn a_connection_dropped_mid_upload_leaves_no_partial_file_under_a_final_name() {
    let env = sftp_env();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = bundle(2_000, 3);
    let users_bytes = bundle.file(USERS_FILE).unwrap().bytes.len();
    assert!(
        users_bytes > 400_000,
        "users.csv is big enough to be cut: {users_bytes}"
    );
    let upstream: SocketAddr = format!("{}:{}", env.host, env.port).parse().unwrap();
    let proxy_port = cutting_proxy(upstream, 250_000, usize::MAX);
    let known_hosts = known_hosts_for_port(&env, proxy_port, scratch.path());
    let base = fresh_remote_dir(&env, "dropped");
    let through_proxy = target(&env, proxy_port, &known_hosts, &base);

    let error =
        sftp::upload(&through_proxy, run_date(), &bundle.files, &fast_retries(2)).unwrap_err();
    assert!(
        matches!(error, SftpError::AttemptsExhausted { attempts: 2, .. }),
        "{error}"
    );
    let names = remote_names(&base);
    assert!(names.contains(&"orgs.csv".to_string()), "{names:?}");
    assert!(!names.contains(&USERS_FILE.to_string()), "{names:?}");
    assert!(!names.contains(&MANIFEST_FILE.to_string()), "{names:?}");
    for file in &bundle.files {
        let path = base.join("2026-11-27").join(file.name);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                bytes == file.bytes,
                "{} is under its final name but not whole",
                file.name
            );
        }
    }
    let part = base
        .join("2026-11-27")
        .join(format!(".{USERS_FILE}{PART_SUFFIX}"));
    let part_size = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        part_size < users_bytes as u64,
        "the cut left a short temporary"
    );

    // The next run, on a sound connection, completes and clears the leftovers.
    let direct = target(&env, env.port, &env.known_hosts, &base);
    sftp::upload(&direct, run_date(), &bundle.files, &fast_retries(1)).unwrap();
    assert_arrived_whole(&base, &bundle);
}

#[test]
fn a_server_that_stops_answering_mid_upload_ends_at_the_deadline() {
    let env = sftp_env();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = bundle(2_000, 4);
    let upstream: SocketAddr = format!("{}:{}", env.host, env.port).parse().unwrap();
    let proxy_port = stalling_proxy(upstream, 250_000);
    let known_hosts = known_hosts_for_port(&env, proxy_port, scratch.path());
    let base = fresh_remote_dir(&env, "stalled");
    let through_proxy = target(&env, proxy_port, &known_hosts, &base);
    let policy = RetryPolicy {
        call_budget: Duration::from_secs(3),
        ..fast_retries(3)
    };
    let started = std::time::Instant::now();
    let error = sftp::upload(&through_proxy, run_date(), &bundle.files, &policy).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, SftpError::Deadline { secs: 3, .. }),
        "{error}"
    );
    // Without the deadline one stalled operation alone waits
    // IO_TIMEOUT_MS (30 s), and each retry again.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let names = remote_names(&base);
    assert!(!names.contains(&MANIFEST_FILE.to_string()), "{names:?}");
}

#[test]
fn a_dropped_first_attempt_is_retried_on_a_new_connection() {
    let env = sftp_env();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = bundle(2_000, 4);
    let upstream: SocketAddr = format!("{}:{}", env.host, env.port).parse().unwrap();
    let proxy_port = cutting_proxy(upstream, 150_000, 1);
    let known_hosts = known_hosts_for_port(&env, proxy_port, scratch.path());
    let base = fresh_remote_dir(&env, "retried");
    let target = target(&env, proxy_port, &known_hosts, &base);
    let report = sftp::upload(&target, run_date(), &bundle.files, &fast_retries(3)).unwrap();
    assert_eq!(report.attempts, 2);
    assert_arrived_whole(&base, &bundle);
}

#[test]
fn a_full_rerun_replaces_every_file() {
    let env = sftp_env();
    let base = fresh_remote_dir(&env, "rerun");
    let target = target(&env, env.port, &env.known_hosts, &base);
    let first = bundle(300, 11);
    sftp::upload(&target, run_date(), &first.files, &fast_retries(1)).unwrap();
    assert_arrived_whole(&base, &first);
    let second = bundle(450, 12);
    assert_ne!(first.file(USERS_FILE), second.file(USERS_FILE));
    let report = sftp::upload(&target, run_date(), &second.files, &fast_retries(1)).unwrap();
    assert_eq!(report.attempts, 1);
    assert_arrived_whole(&base, &second);
    assert!(remote_names(&base).iter().all(|n| !n.ends_with(OLD_SUFFIX)));
}

#[test]
fn a_missing_key_file_fails_authentication_without_retrying() {
    let env = sftp_env();
    let base = fresh_remote_dir(&env, "nokey");
    let mut target = target(&env, env.port, &env.known_hosts, &base);
    target.private_key_file = Some("/nonexistent/key".into());
    let error =
        sftp::upload(&target, run_date(), &bundle(20, 1).files, &fast_retries(3)).unwrap_err();
    assert!(matches!(error, SftpError::Auth { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/key"), "{error}");
}

#[test]
fn the_command_uploads_and_records_the_run() {
    let env = sftp_env();
    let db = common::TestDb::migrated(common::Backend::Sqlite);
    let (code, _, stderr) =
        common::cpsync(&["--database-url", &db.url_text, "seed", "--students", "600"]);
    assert_eq!(code, 0, "{stderr}");
    let scratch = tempfile::tempdir().unwrap();
    let base = fresh_remote_dir(&env, "cli");
    let config = scratch.path().join("cpsync.toml");
    std::fs::write(
        &config,
        format!(
            "district = \"Test District\"\n[sftp]\nhost = \"{}\"\nport = {}\nusername = \"{}\"\n\
             private_key_file = \"{}\"\nknown_hosts_file = \"{}\"\nremote_dir = \"{}\"\n",
            env.host,
            env.port,
            env.user,
            env.key.display(),
            env.known_hosts.display(),
            base.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let args = [
        "--config",
        &config,
        "--database-url",
        &db.url_text,
        "export",
        "--sftp",
    ];
    let (code, stdout, stderr) = common::cpsync(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("uploaded to 127.0.0.1"), "{stdout}");
    let dated: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dated.len(), 1, "one folder per run date");
    let users = std::fs::read(dated[0].join(USERS_FILE)).unwrap();
    let mut reader = csv::Reader::from_reader(users.as_slice());
    assert_eq!(reader.headers().unwrap(), USERS_HEADER.as_slice());
    assert!(reader.records().all(|r| r.is_ok()));

    let (code, stdout, _) = common::cpsync(&[
        "--database-url",
        &db.url_text,
        "runs",
        "--task",
        "demographic_export",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\\\"kind\\\":\\\"sftp\\\""), "{stdout}");
    assert!(stdout.contains("\\\"sha256\\\""), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
}
