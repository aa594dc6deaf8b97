//! The report email against a real SMTP server (aiosmtpd on loopback, started
//! by `scripts/test`, which exports `CPSYNC_TEST_SMTP_PORT` and
//! `CPSYNC_TEST_SMTP_MAILDIR`): the message arrives with its text and HTML
//! parts, the CSV and the HTML report; a re-run does not mail twice unless
//! asked; the failure email is short; without SMTP an `.eml` is written; no
//! password reaches a file, a record or an error. Without the server these
//! tests fail loudly; they never skip.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use common::{Backend, TestDb};
use cpsync::config::{ReportsConfig, SecretSource, SmtpConfig, SmtpTls};
use cpsync::db::report_mail;
use cpsync::db::runs;
use cpsync::db::DbConnection;
use cpsync::report::email::{deliver_report, Delivery, MailError};
use cpsync::report::{sample, write_report_files, ReportFiles, RunReport};
use mail_parser::{MessageParser, MimeHeaders};

/// How long a delivered message may take to appear in the maildir.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(10);

fn smtp_server() -> (u16, PathBuf) {
    let missing = |name: &str| -> ! {
        panic!(
            "{name} is not set: the email tests need the SMTP server that scripts/test starts \
             (start_smtp in scripts/lib/services.sh). Run the suite with scripts/test."
        )
    };
    let port = std::env::var("CPSYNC_TEST_SMTP_PORT")
        .unwrap_or_else(|_| missing("CPSYNC_TEST_SMTP_PORT"))
        .parse()
        .expect("CPSYNC_TEST_SMTP_PORT is a port number");
    let maildir = std::env::var("CPSYNC_TEST_SMTP_MAILDIR")
        .unwrap_or_else(|_| missing("CPSYNC_TEST_SMTP_MAILDIR"));
    (port, PathBuf::from(maildir))
}

fn smtp_config(port: u16) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".to_string(),
        port,
        tls: SmtpTls::None,
        username: None,
        password: SecretSource::default(),
        from: "cpsync <cpsync@springfield.example>".to_string(),
        to: vec![
            "Business Office <business.office@springfield.example>".to_string(),
            "it@springfield.example".to_string(),
        ],
        timeout_secs: 10,
    }
}

fn now() -> NaiveDateTime {
    chrono::Local::now().naive_local()
}

/// A sample report for a fresh run row, with a district name unique to the
/// test so its messages are told apart in the shared maildir.
fn report_for_run(conn: &mut DbConnection, district: &str, failed: bool) -> RunReport {
    let run_id = runs::start_run(conn, "nightly_sync", "schedule", false, now()).unwrap();
    let mut report = if failed {
        sample::sample_failed_report()
    } else {
        sample::sample_report()
    };
    report.run_id = run_id;
    report.district = format!("{district} {}", std::process::id());
    report
}

fn reports_config(dir: &Path, attach_html: bool) -> ReportsConfig {
    ReportsConfig {
        dir: dir.to_path_buf(),
        attach_html,
        ..ReportsConfig::default()
    }
}

/// The raw message whose Message-ID is `message_id`, waiting for delivery.
fn delivered(maildir: &Path, message_id: &str) -> Vec<u8> {
    let started = Instant::now();
    loop {
        let found = delivered_all(maildir)
            .into_iter()
            .find(|raw| message_id_of(raw).as_deref() == Some(message_id.trim_matches(['<', '>'])));
        if let Some(raw) = found {
            return raw;
        }
        assert!(
            started.elapsed() < DELIVERY_WAIT_MAX,
            "message {message_id} never reached {}",
            maildir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivered_all(maildir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .collect()
}

fn message_id_of(raw: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse(raw)?
        .message_id()
        .map(str::to_string)
}

fn messages_with_subject(maildir: &Path, subject: &str) -> usize {
    delivered_all(maildir)
        .iter()
        .filter(|raw| {
            MessageParser::default()
                .parse(raw.as_slice())
                .and_then(|m| m.subject().map(|s| s == subject))
                .unwrap_or(false)
        })
        .count()
}

/// (content type, attachment name, decoded contents) of every leaf part.
fn leaf_parts(raw: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let message = MessageParser::default()
        .parse(raw)
        .expect("a parsable message");
    message
        .parts
        .iter()
        .filter_map(|part| {
            let kind = part.content_type()?;
            if kind.ctype() == "multipart" {
                return None;
            }
            let name = format!("{}/{}", kind.ctype(), kind.subtype().unwrap_or(""));
            let attachment = part.attachment_name().map(str::to_string);
            Some((name, attachment, part.contents().to_vec()))
        })
        .collect()
}

fn write_files(report: &RunReport) -> (tempfile::TempDir, ReportFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = write_report_files(&dir.path().join("reports"), report).unwrap();
    (dir, files)
}

fn the_report_email_arrives(backend: Backend) {
    let (port, maildir) = smtp_server();
    let db = TestDb::migrated(backend);
    let mut conn = db.connect();
    let report = report_for_run(&mut conn, "Arrival SD", false);
    let (dir, files) = write_files(&report);
    let smtp = smtp_config(port);
    let delivery = deliver_report(
        &mut conn,
        &report,
        &files,
        Some(&smtp),
        &reports_config(dir.path(), true),
        false,
        now(),
    )
    .unwrap();
    let Delivery::Sent {
        message_id,
        recipients,
    } = delivery
    else {
        panic!("expected Sent, got {delivery:?}");
    };
    assert_eq!(recipients, smtp.to);
    let raw = delivered(&maildir, &message_id);
    let message = MessageParser::default().parse(raw.as_slice()).unwrap();
    let subject = format!(
        "[cpsync] {} — 2026-11-26 — Needs review (5)",
        report.district
    );
    assert_eq!(message.subject(), Some(subject.as_str()));
    assert_eq!(
        message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("cpsync@springfield.example")
    );
    let to: Vec<&str> = message
        .to()
        .map(|a| a.iter().filter_map(|a| a.address()).collect())
        .unwrap_or_default();
    assert_eq!(
        to,
        [
            "business.office@springfield.example",
            "it@springfield.example"
        ]
    );
    assert!(message.date().is_some(), "no Date header");
    let raw_text = String::from_utf8_lossy(&raw);
    assert!(raw_text.contains("multipart/mixed") && raw_text.contains("multipart/alternative"));

    let parts = leaf_parts(&raw);
    let body = |kind: &str| {
        parts
            .iter()
            .find(|(k, name, _)| k == kind && name.is_none())
            .map(|(_, _, bytes)| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_else(|| panic!("no {kind} body part in {parts:?}"))
    };
    let text = body("text/plain");
    assert!(
        text.contains("NEEDS REVIEW") && text.contains("$48,215.00"),
        "{text}"
    );
    let html = body("text/html");
    assert!(
        html.contains("Needs review") && html.contains("$20.00"),
        "the difference after corrections"
    );
    assert!(
        !html.contains("Haddad, Omar"),
        "the email body names no student"
    );

    let attachment = |suffix: &str| {
        parts
            .iter()
            .find(|(_, name, _)| name.as_deref().is_some_and(|n| n.ends_with(suffix)))
            .map(|(kind, name, bytes)| (kind.clone(), name.clone().unwrap(), bytes.clone()))
            .unwrap_or_else(|| panic!("no attachment *{suffix}"))
    };
    let (kind, name, csv) = attachment("-needs-review.csv");
    assert_eq!(kind, "text/csv");
    assert_eq!(
        name,
        format!("cpsync-2026-11-26-run-{}-needs-review.csv", report.run_id)
    );
    assert_eq!(
        csv,
        std::fs::read(&files.csv).unwrap(),
        "the CSV sent is the file"
    );
    assert!(String::from_utf8_lossy(&csv).contains("\"Haddad, Omar\""));
    let (kind, _, report_html) = attachment(&format!("run-{}.html", report.run_id));
    assert_eq!(kind, "text/html");
    assert_eq!(
        report_html,
        std::fs::read(&files.html).unwrap(),
        "the report sent is the file"
    );

    let records = report_mail::for_run(&mut conn, report.run_id).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].status.as_str(), records[0].transport.as_str()),
        ("sent", "smtp")
    );
    assert_eq!(records[0].message_id, message_id);
    assert!(records[0].recipients.contains("it@springfield.example"));
    assert!(records[0].sent_at.is_some());
}

#[test]
fn the_report_email_arrives_with_both_parts_and_attachments_sqlite() {
    the_report_email_arrives(Backend::Sqlite);
}

#[test]
fn the_report_email_arrives_with_both_parts_and_attachments_postgres() {
    the_report_email_arrives(Backend::Postgres);
}

fn a_rerun_does_not_mail_twice(backend: Backend) {
    let (port, maildir) = smtp_server();
    let db = TestDb::migrated(backend);
    let mut conn = db.connect();
    let report = report_for_run(&mut conn, &format!("Rerun {backend:?} SD"), false);
    let (dir, files) = write_files(&report);
    let smtp = smtp_config(port);
    let reports = reports_config(dir.path(), false);
    let mut deliver = |resend: bool| {
        deliver_report(
            &mut conn,
            &report,
            &files,
            Some(&smtp),
            &reports,
            resend,
            now(),
        )
        .unwrap()
    };
    let Delivery::Sent { message_id, .. } = deliver(false) else {
        panic!("the first delivery sends");
    };
    delivered(&maildir, &message_id);
    match deliver(false) {
        Delivery::AlreadySent {
            message_id: again,
            sent_at,
        } => {
            assert_eq!(again, message_id);
            assert!(sent_at.is_some());
        }
        other => panic!("a re-run mailed again: {other:?}"),
    }
    let Delivery::Sent {
        message_id: resent, ..
    } = deliver(true)
    else {
        panic!("a resend asked for sends");
    };
    delivered(&maildir, &resent);
    let subject = cpsync::report::email::subject(&report);
    assert_eq!(messages_with_subject(&maildir, &subject), 2);
    let statuses: Vec<String> = report_mail::for_run(&mut conn, report.run_id)
        .unwrap()
        .into_iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(statuses, ["sent", "sent"]);
}

#[test]
fn a_rerun_does_not_mail_twice_unless_asked_sqlite() {
    a_rerun_does_not_mail_twice(Backend::Sqlite);
}

#[test]
fn a_rerun_does_not_mail_twice_unless_asked_postgres() {
    a_rerun_does_not_mail_twice(Backend::Postgres);
}

#[test]
fn the_failure_email_is_short_and_has_no_attachments() {
    let (port, maildir) = smtp_server();
    let db = TestDb::migrated(Backend::Sqlite);
    let mut conn = db.connect();
    let report = report_for_run(&mut conn, "Failure SD", true);
    let (dir, files) = write_files(&report);
    let delivery = deliver_report(
        &mut conn,
        &report,
        &files,
        Some(&smtp_config(port)),
        &reports_config(dir.path(), true),
        false,
        now(),
    )
    .unwrap();
    let Delivery::Sent { message_id, .. } = delivery else {
        panic!("expected Sent");
    };
    let raw = delivered(&maildir, &message_id);
    let message = MessageParser::default().parse(raw.as_slice()).unwrap();
    assert!(message
        .subject()
        .unwrap()
        .ends_with("— 2026-11-26 — Failed"));
    assert_eq!(message.attachment_count(), 0);
    let kinds: Vec<String> = leaf_parts(&raw)
        .into_iter()
        .map(|(kind, _, _)| kind)
        .collect();
    assert_eq!(kinds, ["text/plain", "text/html"]);
    let text = message.body_text(0).unwrap();
    assert!(text.contains("server error 502"), "{text}");
}

#[test]
fn without_smtp_the_email_is_an_eml_file_beside_the_report() {
    let (port, maildir) = smtp_server();
    let db = TestDb::migrated(Backend::Sqlite);
    let mut conn = db.connect();
    let report = report_for_run(&mut conn, "Offline SD", false);
    let (dir, files) = write_files(&report);
    let reports = reports_config(dir.path(), true);
    let delivery =
        deliver_report(&mut conn, &report, &files, None, &reports, false, now()).unwrap();
    let Delivery::WrittenEml { path, message_id } = delivery else {
        panic!("expected an .eml, got {delivery:?}");
    };
    assert_eq!(path.parent(), files.html.parent());
    assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(
        message_id_of(&raw).as_deref(),
        Some(message_id.trim_matches(['<', '>']))
    );
    assert_eq!(leaf_parts(&raw).len(), 4, "text, html, csv and report");
    let records = report_mail::for_run(&mut conn, report.run_id).unwrap();
    assert_eq!(
        (records[0].status.as_str(), records[0].transport.as_str()),
        ("written", "eml")
    );
    // A written .eml is not a sent email: configuring SMTP later still sends.
    let smtp = smtp_config(port);
    let delivery = deliver_report(
        &mut conn,
        &report,
        &files,
        Some(&smtp),
        &reports,
        false,
        now(),
    )
    .unwrap();
    let Delivery::Sent { message_id, .. } = delivery else {
        panic!("expected Sent after the .eml, got {delivery:?}");
    };
    delivered(&maildir, &message_id);
}

#[test]
fn no_password_in_any_file_record_or_error() {
    let (port, _maildir) = smtp_server();
    let db = TestDb::migrated(Backend::Sqlite);
    let mut conn = db.connect();
    let report = report_for_run(&mut conn, "Secret SD", false);
    let (dir, files) = write_files(&report);
    let password = "pw-Zq9-very-secret-7741";
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let mut smtp = smtp_config(port);
    smtp.username = Some("cpsync".to_string());
    smtp.password = SecretSource {
        env: None,
        file: Some(password_file.clone()),
    };
    let reports = reports_config(dir.path(), true);
    // The test server offers no AUTH, so the login fails after connecting.
    let error = deliver_report(
        &mut conn,
        &report,
        &files,
        Some(&smtp),
        &reports,
        false,
        now(),
    )
    .unwrap_err();
    assert!(matches!(error, MailError::Send { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains(password), "{message}");
    assert!(!format!("{error:?}").contains(password));
    let records = report_mail::for_run(&mut conn, report.run_id).unwrap();
    assert_eq!(records[0].status, "failed");
    assert!(!format!("{records:?}").contains(password));
    deliver_report(&mut conn, &report, &files, None, &reports, false, now()).unwrap();
    for file in files_under(dir.path()) {
        if file == password_file {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(password),
            "{} holds the password",
            file.display()
        );
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// (port, maildir, CA PEM) of the STARTTLS or implicit-TLS test server.
fn tls_server(kind: &str) -> (u16, PathBuf, Vec<u8>) {
    let var = |name: String| {
        std::env::var(&name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the suite with scripts/test (start_smtp)")
        })
    };
    let port = var(format!("CPSYNC_TEST_SMTP_{kind}_PORT"))
        .parse()
        .unwrap();
    let maildir = PathBuf::from(var(format!("CPSYNC_TEST_SMTP_{kind}_MAILDIR")));
    let ca = std::fs::read(var("CPSYNC_TEST_SMTP_CA".to_string())).unwrap();
    (port, maildir, ca)
}

fn tls_delivery(kind: &str, tls: SmtpTls) {
    use cpsync::report::email::{build_message, mailboxes, message_id, SmtpSender};
    let (port, maildir, ca) = tls_server(kind);
    let mut smtp = smtp_config(port);
    smtp.tls = tls;
    let mut report = sample::sample_report();
    report.district = format!("TLS {kind} SD {}", std::process::id());
    let (from, to) = mailboxes(&smtp.from, &smtp.to).unwrap();
    let id = message_id(&report, &from, now());
    let message = build_message(&report, &from, &to, true, &id).unwrap();

    // The server's certificate is checked: its CA is not a public root.
    let untrusting = SmtpSender::connect_settings(&smtp).unwrap();
    let error = untrusting.send(&message).unwrap_err().to_string();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{kind}: {error}"
    );

    let trusting = SmtpSender::connect_settings_trusting(&smtp, &[ca.as_slice()]).unwrap();
    trusting.send(&message).unwrap();
    let raw = delivered(&maildir, &id);
    assert_eq!(
        leaf_parts(&raw).len(),
        4,
        "text, html, csv and report over {kind}"
    );
}

#[test]
fn starttls_checks_the_certificate_and_delivers() {
    tls_delivery("STARTTLS", SmtpTls::Starttls);
}

#[test]
fn implicit_tls_checks_the_certificate_and_delivers() {
    tls_delivery("IMPLICIT", SmtpTls::Implicit);
}

#[test]
fn starttls_is_required_not_optional() {
    use cpsync::report::email::{build_message, mailboxes, SmtpSender};
    // The plain server offers no STARTTLS: a starttls setting must refuse
    // to send in clear text rather than fall back.
    let (port, _) = smtp_server();
    let mut smtp = smtp_config(port);
    smtp.tls = SmtpTls::Starttls;
    let (from, to) = mailboxes(&smtp.from, &smtp.to).unwrap();
    let message = build_message(&sample::sample_report(), &from, &to, false, "<x@y>").unwrap();
    let error = SmtpSender::connect_settings(&smtp)
        .unwrap()
        .send(&message)
        .unwrap_err();
    assert!(matches!(error, MailError::Send { .. }), "{error}");
    assert!(error.to_string().contains("STARTTLS"), "{error}");
}
