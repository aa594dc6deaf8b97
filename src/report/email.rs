//! The report email: built with lettre (subject with district, date and
//! verdict; multipart/alternative text and HTML; the needs-review CSV and,
//! if configured, the full HTML report attached; a short variant without
//! attachments for a failed run), sent over SMTP (STARTTLS or implicit TLS
//! with rustls, plain only to a loopback relay, optional authentication,
//! timeouts) or, with no SMTP configured, written as an owner-only `.eml`
//! next to the report. Each send is recorded in `cp_report_mail` so a re-run
//! of the same night does not mail twice unless asked.
//!
//! **Architecture invariant:** the SMTP password is read from its
//! `SecretSource` only to open the connection; it is never in a message, a
//! file, a log line or an error (errors are scrubbed of it besides).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{Message, SmtpTransport, Transport};

use crate::config::{ReportsConfig, SmtpConfig, SmtpTls};
use crate::db::report_mail::{self, MailStatus, MailTransport, NewReportMail};
use crate::db::{DbConnection, DbError};
use crate::retry::{self, Failed, GaveUp, RetryPolicy, RunBudget};
use crate::secret::{Secret, SecretError, REDACTED};

use super::files::{report_file_stem, write_private_file, ReportFiles};
use super::html::render_email_html;
use super::view::verdict_label;
use super::{render_html, render_text, review_csv, ReportError, RunReport, Verdict};

/// The variable read for the SMTP password when `smtp.password` names none.
pub const DEFAULT_SMTP_PASSWORD_ENV: &str = "CPSYNC_SMTP_PASSWORD";
/// Sender of a message written as `.eml` (no SMTP configured).
pub const EML_FROM: &str = "cpsync <cpsync@localhost>";
/// Recipient of a message written as `.eml` (no SMTP configured).
pub const EML_TO: &str = "Business office <business-office@localhost>";

/// Why a report email could not be built, sent or recorded. Never holds a
/// password.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("smtp.{field} {value:?} is not a valid email address: {reason}")]
    Address {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the report email: {0}")]
    Build(String),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("smtp.tls = \"none\" is only allowed for a loopback host (127.0.0.1, ::1, localhost), not {host:?}: use starttls or implicit")]
    PlaintextNotLoopback { host: String },
    #[error("smtp.password: {0}")]
    Password(#[from] SecretError),
    #[error("cannot set up TLS for SMTP host {host}: {reason}")]
    Tls { host: String, reason: String },
    #[error("sending the report email through {host}:{port} failed: {reason}")]
    Send {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("recording the report email: {0}")]
    Db(#[from] DbError),
}

/// What happened to a run's report email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Sent over SMTP now.
    Sent {
        message_id: String,
        recipients: Vec<String>,
    },
    /// Already sent for this run (and no resend was asked): nothing done.
    AlreadySent {
        message_id: String,
        sent_at: Option<NaiveDateTime>,
    },
    /// No SMTP configured: written as an `.eml` file.
    WrittenEml { path: PathBuf, message_id: String },
}

/// The subject: `[cpsync] Springfield SD — 2026-11-26 — Needs review (3)`.
pub fn subject(report: &RunReport) -> String {
    let label = verdict_label(report.verdict, report.dry_run);
    let counts = report.item_counts();
    let items = counts.needs_review + counts.held;
    let count = match report.verdict {
        Verdict::NeedsReview | Verdict::NotConverged if items > 0 => format!(" ({items})"),
        _ => String::new(),
    };
    // A dry run says so once, whether or not its verdict's label does.
    let dry_mark = report.dry_run && !label.contains("dry run");
    let marks: String = super::run_marks(dry_mark, !report.incomplete.is_empty(), &report.scope)
        .iter()
        .map(|mark| format!(" — {mark}"))
        .collect();
    format!(
        "[cpsync] {} — {}{marks} — {label}{count}",
        one_line(&report.district),
        report.date()
    )
}

/// A Message-ID unique to this run and moment:
/// `<cpsync.run-42.20261126T020014123@district.example>`.
pub fn message_id(report: &RunReport, from: &Mailbox, now: NaiveDateTime) -> String {
    format!(
        "<cpsync.run-{}.{}@{}>",
        report.run_id,
        now.format("%Y%m%dT%H%M%S%3f"),
        from.email.domain()
    )
}

/// Parses the sender and recipients.
pub fn mailboxes(from: &str, to: &[String]) -> Result<(Mailbox, Vec<Mailbox>), MailError> {
    let parse = |field: &'static str, value: &str| {
        value.parse::<Mailbox>().map_err(|e| MailError::Address {
            field,
            value: value.to_string(),
            reason: e.to_string(),
        })
    };
    let sender = parse("from", from)?;
    let recipients = to
        .iter()
        .map(|address| parse("to", address))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((sender, recipients))
}

/// Builds the run's message: the nightly report email, or for a failed run
/// the short failure email (no attachments, no student data).
pub fn build_message(
    report: &RunReport,
    from: &Mailbox,
    to: &[Mailbox],
    attach_html: bool,
    message_id: &str,
) -> Result<Message, MailError> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(subject(report))
        .message_id(Some(message_id.to_string()));
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    let body = MultiPart::alternative_plain_html(render_text(report), render_email_html(report)?);
    let message = if report.verdict == Verdict::Failed {
        builder.multipart(body)
    } else {
        builder.multipart(with_attachments(body, report, attach_html)?)
    };
    message.map_err(|e| MailError::Build(e.to_string()))
}

fn with_attachments(
    body: MultiPart,
    report: &RunReport,
    attach_html: bool,
) -> Result<MultiPart, MailError> {
    let stem = report_file_stem(report);
    let csv_type = content_type("text/csv; charset=utf-8")?;
    let mut mixed = MultiPart::mixed().multipart(body).singlepart(attachment(
        format!("{stem}-needs-review.csv"),
        review_csv(report)?,
        csv_type,
    ));
    if attach_html {
        let html = render_html(report)?.into_bytes();
        mixed = mixed.singlepart(attachment(
            format!("{stem}.html"),
            html,
            ContentType::TEXT_HTML,
        ));
    }
    Ok(mixed)
}

fn attachment(filename: String, body: Vec<u8>, kind: ContentType) -> SinglePart {
    Attachment::new(filename).body(body, kind)
}

fn content_type(text: &str) -> Result<ContentType, MailError> {
    ContentType::parse(text).map_err(|e| MailError::Build(e.to_string()))
}

/// The short email for a night the database could not be reached: no run
/// could be recorded and no report built, so this is the office's only
/// word that nothing was checked. Plain text, no student data; the error is
/// the connection error as cpsync prints it (passwords already redacted).
pub fn database_unreachable_message(
    district: &str,
    date: chrono::NaiveDate,
    error: &str,
    from: &Mailbox,
    to: &[Mailbox],
) -> Result<Message, MailError> {
    let mut builder = Message::builder().from(from.clone()).subject(format!(
        "[cpsync] {} — {date} — Failed: the database could not be reached",
        one_line(district)
    ));
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    let body = format!(
        "FAILED\n\
         The nightly reconciliation could not reach the database, so nothing was checked\n\
         or changed tonight and no run could be recorded.\n\n\
         Error: {}\n\n\
         The next scheduled run tries again. Once the database is back, it is safe to\n\
         run it now by hand: cpsync batch (or cpsync nightly).\n",
        one_line(error)
    );
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::Build(e.to_string()))
}

/// Delivers the run's report email once: over SMTP when `smtp` is set
/// (skipped if this run's email was already sent, unless `resend`), else
/// written as the `.eml` beside the report files. Recorded either way.
pub fn deliver_report(
    conn: &mut DbConnection,
    report: &RunReport,
    files: &ReportFiles,
    smtp: Option<&SmtpConfig>,
    reports: &ReportsConfig,
    resend: bool,
    now: NaiveDateTime,
) -> Result<Delivery, MailError> {
    match smtp {
        Some(smtp) => send_once(conn, report, smtp, reports.attach_html, resend, now),
        None => write_eml(conn, report, files, reports.attach_html, now),
    }
}

fn send_once(
    conn: &mut DbConnection,
    report: &RunReport,
    smtp: &SmtpConfig,
    attach_html: bool,
    resend: bool,
    now: NaiveDateTime,
) -> Result<Delivery, MailError> {
    if !resend {
        if let Some(sent) = report_mail::find_sent(conn, report.run_id)? {
            return Ok(Delivery::AlreadySent {
                message_id: sent.message_id,
                sent_at: sent.sent_at,
            });
        }
    }
    let (from, to) = mailboxes(&smtp.from, &smtp.to)?;
    let message_id = message_id(report, &from, now);
    let message = build_message(report, &from, &to, attach_html, &message_id)?;
    let transport = SmtpSender::connect_settings(smtp)?;
    let id = report_mail::record(
        conn,
        &NewReportMail {
            run_id: report.run_id,
            recipients: &smtp.to,
            transport: MailTransport::Smtp,
            status: MailStatus::Sending,
            message_id: &message_id,
            now,
        },
    )?;
    match transport.send(&message) {
        Ok(()) => {
            report_mail::mark_sent(conn, id, now)?;
            Ok(Delivery::Sent {
                message_id,
                recipients: smtp.to.clone(),
            })
        }
        Err(error) => {
            report_mail::mark_failed(conn, id, &error.to_string())?;
            Err(error)
        }
    }
}

fn write_eml(
    conn: &mut DbConnection,
    report: &RunReport,
    files: &ReportFiles,
    attach_html: bool,
    now: NaiveDateTime,
) -> Result<Delivery, MailError> {
    let (from, to) = mailboxes(EML_FROM, &[EML_TO.to_string()])?;
    let message_id = message_id(report, &from, now);
    let message = build_message(report, &from, &to, attach_html, &message_id)?;
    let path = files.eml();
    write_private_file(&path, &message.formatted())?;
    report_mail::record(
        conn,
        &NewReportMail {
            run_id: report.run_id,
            recipients: &[EML_TO.to_string()],
            transport: MailTransport::Eml,
            status: MailStatus::Written,
            message_id: &message_id,
            now,
        },
    )?;
    Ok(Delivery::WrittenEml { path, message_id })
}

/// An SMTP connection set up from `SmtpConfig`, ready to send.
pub struct SmtpSender {
    transport: SmtpTransport,
    host: String,
    port: u16,
    password: Option<Secret>,
    /// lettre's timeout is per read; this bounds the whole conversation.
    read_timeout: Duration,
    deadline: Duration,
}

/// The whole SMTP conversation (connect, greeting, TLS, authentication,
/// the message) may take this many times `smtp.timeout_secs`: a server
/// that trickles its answers cannot stretch a send beyond it.
pub const SEND_DEADLINE_READS: u32 = 4;
/// Retries of a send the server refused for now (a 4xx reply, a refused
/// connection), all within the send's deadline.
pub const SEND_RETRIES: u32 = 2;
/// The first wait before such a retry; doubled, up to four times it.
pub const SEND_BACKOFF_BASE: Duration = Duration::from_secs(1);

impl SmtpSender {
    /// Validates the settings (plain text only to loopback), loads the
    /// password if a username is set, and prepares the transport. Nothing is
    /// sent and no connection is made until `send`.
    pub fn connect_settings(smtp: &SmtpConfig) -> Result<SmtpSender, MailError> {
        SmtpSender::connect_settings_trusting(smtp, &[])
    }

    /// As `connect_settings`, also trusting the given PEM CA certificates
    /// (a district relay with an internal CA) besides the public roots.
    pub fn connect_settings_trusting(
        smtp: &SmtpConfig,
        extra_roots_pem: &[&[u8]],
    ) -> Result<SmtpSender, MailError> {
        let timeout = Duration::from_secs(smtp.timeout_secs.max(1));
        let builder = SmtpTransport::builder_dangerous(smtp.host.as_str())
            .port(smtp.port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(1))
            .tls(tls_mode(smtp, extra_roots_pem)?);
        let password = match &smtp.username {
            Some(_) => Some(smtp.password.load(DEFAULT_SMTP_PASSWORD_ENV)?),
            None => None,
        };
        let builder = match (&smtp.username, &password) {
            (Some(user), Some(secret)) => {
                builder.credentials(Credentials::new(user.clone(), secret.expose().to_string()))
            }
            _ => builder,
        };
        Ok(SmtpSender {
            transport: builder.build(),
            host: smtp.host.clone(),
            port: smtp.port,
            password,
            read_timeout: timeout,
            deadline: timeout * SEND_DEADLINE_READS,
        })
    }

    /// Sends one message within the whole-send deadline, trying again
    /// (`crate::retry`) when the server refuses for now (a 4xx reply) or
    /// refuses the connection — answers that mean the message was not
    /// taken; a timeout is not retried (the server may hold the message).
    /// The error names the server and says what happened in words, never
    /// the password.
    pub fn send(&self, message: &Message) -> Result<(), MailError> {
        let policy = RetryPolicy {
            retries: SEND_RETRIES,
            backoff_base: SEND_BACKOFF_BASE,
            backoff_max: SEND_BACKOFF_BASE * 4,
            retry_after_max: Duration::ZERO,
            call_budget: self.deadline,
        };
        let outcome = retry::run(
            &policy,
            &RunBudget::new(self.deadline),
            |_, until| self.send_attempt(message, until),
            |error, attempt, wait| {
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %error, "the mail server refused for now; retrying");
            },
        );
        outcome.map_err(|gave_up| match gave_up {
            GaveUp::Final(error) => error,
            GaveUp::Exhausted {
                last,
                attempts,
                why,
                ..
            } => match last {
                MailError::Send { host, port, reason } => MailError::Send {
                    host,
                    port,
                    reason: format!("{reason} (gave up after {attempts} attempt(s): {why})"),
                },
                other => other,
            },
        })
    }

    /// One SMTP conversation, over by `until` whatever the server does: it
    /// runs on its own thread, and a thread left behind ends at its next
    /// read timeout, or with the process.
    fn send_attempt(&self, message: &Message, until: Instant) -> Result<(), Failed<MailError>> {
        let (sent, outcome) = std::sync::mpsc::channel();
        let (transport, message) = (self.transport.clone(), message.clone());
        std::thread::spawn(move || {
            let _ = sent.send(transport.send(&message).map(|_| ()));
        });
        let failed = |reason: String| MailError::Send {
            host: self.host.clone(),
            port: self.port,
            reason: self.scrub(&reason),
        };
        match outcome.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if error.is_timeout() || is_would_block(&error) => {
                Err(Failed::Final(failed(format!(
                    "the server did not answer within {} s (smtp.timeout_secs)",
                    self.read_timeout.as_secs()
                ))))
            }
            Ok(Err(error)) if error.is_transient() || is_refused(&error) => {
                Err(Failed::Transient {
                    error: failed(error_chain(&error)),
                    after: None,
                })
            }
            Ok(Err(error)) => Err(Failed::Final(failed(error_chain(&error)))),
            Err(_) => Err(Failed::Final(failed(format!(
                "the conversation did not finish within {} s ({SEND_DEADLINE_READS} × smtp.timeout_secs): the server is too slow or stalled",
                self.deadline.as_secs()
            )))),
        }
    }

    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(secret) if !secret.is_empty() => text.replace(secret.expose(), REDACTED),
            _ => text.to_string(),
        }
    }
}

/// Whether the connection itself was refused (nothing was sent).
fn is_refused(error: &lettre::transport::smtp::Error) -> bool {
    io_kind_in_chain(error, &[std::io::ErrorKind::ConnectionRefused])
}

/// A read that timed out shows as "Resource temporarily unavailable" (an
/// `EAGAIN` from a socket with a read timeout): the same thing in words.
fn is_would_block(error: &lettre::transport::smtp::Error) -> bool {
    io_kind_in_chain(
        error,
        &[std::io::ErrorKind::WouldBlock, std::io::ErrorKind::TimedOut],
    )
}

/// Whether an I/O error of one of `kinds` is anywhere in the error's chain.
fn io_kind_in_chain(error: &lettre::transport::smtp::Error, kinds: &[std::io::ErrorKind]) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if kinds.contains(&io.kind()) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

fn tls_mode(smtp: &SmtpConfig, extra_roots_pem: &[&[u8]]) -> Result<Tls, MailError> {
    let tls_error = |e: lettre::transport::smtp::Error| MailError::Tls {
        host: smtp.host.clone(),
        reason: e.to_string(),
    };
    let parameters = || {
        let mut builder = TlsParameters::builder(smtp.host.clone());
        for pem in extra_roots_pem {
            builder = builder.add_root_certificate(Certificate::from_pem(pem).map_err(tls_error)?);
        }
        builder.build_rustls().map_err(tls_error)
    };
    match smtp.tls {
        SmtpTls::Starttls => Ok(Tls::Required(parameters()?)),
        SmtpTls::Implicit => Ok(Tls::Wrapper(parameters()?)),
        SmtpTls::None if is_loopback(&smtp.host) => Ok(Tls::None),
        SmtpTls::None => Err(MailError::PlaintextNotLoopback {
            host: smtp.host.clone(),
        }),
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets allowed).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;
    use crate::report::sample::{sample_failed_report, sample_report};

    fn smtp(host: &str, tls: SmtpTls) -> SmtpConfig {
        SmtpConfig {
            host: host.to_string(),
            port: 2525,
            tls,
            username: None,
            password: SecretSource::default(),
            from: "cpsync <cpsync@district.example>".to_string(),
            to: vec!["office@district.example".to_string()],
            timeout_secs: 5,
        }
    }

    /// How a fake SMTP server answers one connection.
    #[derive(Clone, Copy)]
    enum Greeting {
        /// "421 try later", then it hangs up.
        Busy,
        /// "554 go away", then it hangs up.
        Refuse,
        /// A whole, minimal conversation that takes the message.
        Take,
    }

    /// A fake SMTP server on loopback answering each connection as the
    /// next of `script`; returns its port and the connections it saw.
    fn fake_smtp(script: Vec<Greeting>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for (stream, greeting) in listener.incoming().zip(script) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut stream = stream.unwrap();
                match greeting {
                    Greeting::Busy => {
                        let _ = stream.write_all(b"421 4.3.2 busy, try again later\r\n");
                        continue;
                    }
                    Greeting::Refuse => {
                        let _ = stream.write_all(b"554 5.7.1 not accepting mail\r\n");
                        continue;
                    }
                    Greeting::Take => {}
                }
                let _ = stream.write_all(b"220 fake ESMTP\r\n");
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut in_data = false;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let answer: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 2.0.0 queued\r\n"
                        } else {
                            b""
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = stream.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = stream.write_all(answer);
                    line.clear();
                }
            }
        });
        (port, seen)
    }

    fn plain_message() -> Message {
        Message::builder()
            .from("cpsync@district.example".parse().unwrap())
            .to("office@district.example".parse().unwrap())
            .subject("test")
            .body("hello".to_string())
            .unwrap()
    }

    #[test]
    fn a_server_busy_for_now_is_tried_again_and_a_refusal_is_not() {
        let sent_at = |script| {
            let (port, seen) = fake_smtp(script);
            let config = SmtpConfig {
                port,
                ..smtp("127.0.0.1", SmtpTls::None)
            };
            let result = SmtpSender::connect_settings(&config)
                .unwrap()
                .send(&plain_message());
            (result, seen.load(std::sync::atomic::Ordering::SeqCst))
        };
        let (result, connections) = sent_at(vec![Greeting::Busy, Greeting::Take]);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(connections, 2, "a 421 is tried again, and taken once");

        let (result, connections) = sent_at(vec![Greeting::Refuse, Greeting::Take]);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("554"), "{error}");
        assert_eq!(connections, 1, "a 554 is never tried again");

        let (result, connections) = sent_at(vec![
            Greeting::Busy,
            Greeting::Busy,
            Greeting::Busy,
            Greeting::Take,
        ]);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("gave up after 3 attempt(s)"), "{error}");
        assert_eq!(connections, 3, "SEND_RETRIES bounds the tries");
    }

    #[test]
    fn subjects_name_district_date_and_verdict() {
        assert_eq!(
            subject(&sample_report()),
            "[cpsync] Springfield Public Schools — 2026-11-26 — Needs review (5)"
        );
        assert_eq!(
            subject(&sample_failed_report()),
            "[cpsync] Springfield Public Schools — 2026-11-26 — Failed"
        );
        let mut report = sample_report();
        report.dry_run = true;
        report.scope.student = Some(crate::domain::StudentId(100052));
        report.scope.from = chrono::NaiveDate::from_ymd_opt(2026, 9, 1);
        report.scope.to = chrono::NaiveDate::from_ymd_opt(2026, 9, 30);
        assert_eq!(
            subject(&report),
            "[cpsync] Springfield Public Schools — 2026-11-26 — dry run — student 100052 — 2026-09-01 to 2026-09-30 — Needs review (5)"
        );
        report.dry_run = false;
        report.scope = crate::reconcile::Scope::everything();
        report.district = "Evil\r\nBcc: x@y".to_string();
        report.verdict = Verdict::InAgreement;
        assert_eq!(
            subject(&report),
            "[cpsync] Evil Bcc: x@y — 2026-11-26 — In agreement"
        );
    }

    #[test]
    fn plain_text_smtp_is_refused_off_loopback() {
        let error = SmtpSender::connect_settings(&smtp("smtp.district.example", SmtpTls::None))
            .err()
            .unwrap();
        assert!(
            matches!(error, MailError::PlaintextNotLoopback { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("smtp.district.example"));
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.53"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "localhost.evil.example", "0.0.0.0"] {
            assert!(!is_loopback(host), "{host}");
        }
        assert!(SmtpSender::connect_settings(&smtp("127.0.0.1", SmtpTls::None)).is_ok());
        assert!(SmtpSender::connect_settings(&smtp("smtp.example", SmtpTls::Starttls)).is_ok());
        assert!(SmtpSender::connect_settings(&smtp("smtp.example", SmtpTls::Implicit)).is_ok());
    }

    #[test]
    fn a_missing_password_is_named_not_shown() {
        let mut settings = smtp("smtp.example", SmtpTls::Starttls);
        settings.username = Some("cpsync".to_string());
        settings.password = SecretSource {
            env: Some("CPSYNC_TEST_SURELY_UNSET_PASSWORD".to_string()),
            file: None,
        };
        let error = SmtpSender::connect_settings(&settings).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("CPSYNC_TEST_SURELY_UNSET_PASSWORD"),
            "{error}"
        );
    }

    #[test]
    fn the_failure_email_has_no_attachments() {
        let (from, to) = mailboxes(EML_FROM, &[EML_TO.to_string()]).unwrap();
        let failed = build_message(&sample_failed_report(), &from, &to, true, "<a@b>").unwrap();
        let text = String::from_utf8_lossy(&failed.formatted()).into_owned();
        assert!(text.contains("multipart/alternative"));
        assert!(!text.contains("multipart/mixed") && !text.contains("attachment"));
        let nightly = build_message(&sample_report(), &from, &to, false, "<a@b>").unwrap();
        let text = String::from_utf8_lossy(&nightly.formatted()).into_owned();
        assert!(text.contains("cpsync-2026-11-26-run-42-needs-review.csv"));
        assert!(!text.contains("filename=\"cpsync-2026-11-26-run-42.html\""));
    }

    /// The Date header and MIME boundaries change on every build.
    fn volatile_parts(formatted: &str) -> Vec<(String, &'static str)> {
        let mut volatile = Vec::new();
        for line in formatted.lines() {
            if let Some(date) = line.strip_prefix("Date: ") {
                volatile.push((date.to_string(), "[date]"));
            }
            if let Some((_, rest)) = line.split_once("boundary=\"") {
                let boundary = rest.trim_end_matches('"').to_string();
                volatile.push((boundary, "[boundary]"));
            }
        }
        volatile
    }

    #[test]
    fn snapshot_the_whole_message() {
        let (from, to) = mailboxes(
            "cpsync <cpsync@springfield.example>",
            &["Business Office <office@springfield.example>".to_string()],
        )
        .unwrap();
        let id = message_id(&sample_report(), &from, sample_report().finished_at);
        assert_eq!(id, "<cpsync.run-42.20261126T020014000@springfield.example>");
        let message = build_message(&sample_report(), &from, &to, false, &id).unwrap();
        let formatted = String::from_utf8(message.formatted()).unwrap();
        let volatile = volatile_parts(&formatted);
        assert_eq!(volatile.len(), 3, "a date and two boundaries");
        let redactions: Vec<(&str, &str)> = volatile
            .iter()
            .map(|(text, mark)| (text.as_str(), *mark))
            .collect();
        crate::report::tests::assert_snapshot("email.eml", &formatted, &redactions);
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let error = mailboxes("not an address", &[]).unwrap_err();
        assert!(error.to_string().starts_with("smtp.from"), "{error}");
    }
}
