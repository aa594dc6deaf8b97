//! Mail outside the lock (issue 17), on both backends, driving the real
//! `cpsync nightly` against the in-process simulator: while the report
//! email waits on a mail server that accepts and never greets, the district
//! lock is already free and the run already recorded; and SMTP settings
//! that cannot work stop the nightly before it applies anything.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::world::World;
use common::{Backend, BACKENDS};
use cpsync::db::lock::{self, DISTRICT_LOCK};
use cpsync::db::runs;

fn config(reports: &std::path::Path, smtp_host: &str, smtp_port: u16) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "district = \"Mail Test SD\"\n[reports]\ndir = \"{}\"\n[smtp]\nhost = \"{smtp_host}\"\nport = {smtp_port}\ntls = \"none\"\nfrom = \"cpsync@district.example\"\nto = [\"office@district.example\"]\ntimeout_secs = 30",
        reports.display()
    )
    .unwrap();
    file
}

fn nightly(world: &World, config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpsync"));
    command
        .arg("--config")
        .arg(config)
        .args(["--database-url", &world.db.url_text])
        .args(["--cp-url", &world.sim.base_url(), "nightly"])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_API_KEY", common::world::API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn nightly_runs(world: &World) -> Vec<runs::RunRecord> {
    runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 10).unwrap()
}

fn the_lock_is_free_while_the_mail_server_stalls(backend: Backend) {
    let world = World::new(backend, 12, 5);
    // A mail server that accepts and never sends its greeting.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, on_accept) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
            let _ = accepted.send(());
        }
        std::thread::sleep(Duration::from_secs(120));
    });
    let reports = tempfile::tempdir().unwrap();
    let config = config(reports.path(), "127.0.0.1", port);
    let mut child = nightly(&world, config.path()).spawn().unwrap();
    let reached_mail = on_accept.recv_timeout(Duration::from_secs(90));
    let status = lock::status(&world.db.url, DISTRICT_LOCK).unwrap();
    let recorded = nightly_runs(&world);
    let _ = child.kill();
    let _ = child.wait();
    reached_mail.expect("the nightly reached the email");
    assert!(
        !status.held(),
        "{backend:?}: lock still held while mailing: {status:?}"
    );
    assert_eq!(recorded.len(), 1, "{backend:?}");
    assert_ne!(
        recorded[0].status, "running",
        "{backend:?}: {:?}",
        recorded[0]
    );
    assert!(recorded[0].finished_at.is_some());
}

#[test]
fn the_district_lock_is_released_before_any_email_is_attempted() {
    for backend in BACKENDS {
        the_lock_is_free_while_the_mail_server_stalls(backend);
    }
}

#[test]
fn smtp_settings_that_cannot_work_stop_the_nightly_before_it_applies_anything() {
    for backend in BACKENDS {
        let world = World::new(backend, 8, 6);
        let reports = tempfile::tempdir().unwrap();
        // Plain text to a remote host is refused.
        let config = config(reports.path(), "smtp.district.example", 25);
        let output = nightly(&world, config.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{backend:?}: {stderr}");
        assert!(stderr.contains("[smtp] settings cannot work"), "{stderr}");
        assert!(
            nightly_runs(&world).is_empty(),
            "{backend:?}: no run started"
        );
        assert!(!lock::status(&world.db.url, DISTRICT_LOCK).unwrap().held());
    }
}

/// A mail server that trickles its greeting, a byte every 400 ms, for ever:
/// lettre's timeout is per read, so without a whole-send deadline the
/// conversation would never end. The nightly gives up after
/// `SEND_DEADLINE_READS` × `smtp.timeout_secs`, says so in words, and
/// exits 1 (the run itself is recorded).
#[test]
fn a_trickling_mail_server_cannot_stretch_the_send() {
    use std::io::Read;
    let world = World::new(Backend::Sqlite, 12, 6);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, on_accept) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let _ = accepted.send(std::time::Instant::now());
            std::thread::spawn(move || {
                let greeting = b"220 slow.example ESMTP ".iter().cycle();
                for byte in greeting.take(10_000) {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(400));
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.read(&mut [0u8; 64]);
                    let _ = stream.set_nonblocking(false);
                }
            });
        }
    });
    let reports = tempfile::tempdir().unwrap();
    let config = config(reports.path(), "127.0.0.1", port);
    let text = std::fs::read_to_string(config.path())
        .unwrap()
        .replace("timeout_secs = 30", "timeout_secs = 1");
    std::fs::write(config.path(), text).unwrap();
    let child = nightly(&world, config.path()).spawn().unwrap();
    let output = child.wait_with_output().unwrap();
    let mail_started = on_accept.try_recv().expect("the nightly reached the email");
    let mail_took = mail_started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not finish within 4 s"),
        "the deadline is named: {stderr}"
    );
    assert!(
        mail_took < Duration::from_secs(20),
        "the send took {mail_took:?} (deadline 4 s)"
    );
    let recorded = nightly_runs(&world);
    assert_ne!(recorded[0].status, "running");
}
