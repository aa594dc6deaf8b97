//! The report mail log (`cp_report_mail`): each nightly email is recorded as
//! `sending` before it goes out and marked `sent` or `failed` after, so a
//! re-run of the same night does not mail twice unless asked. Messages saved
//! as `.eml` files (no SMTP configured) are recorded as `written`. A message
//! left `sending` (cpsync died during the SMTP conversation) does not count
//! as sent: it goes out again, since twice is better than never.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::schema::cp_report_mail;
use super::{DbConnection, DbError};

/// How a report message left cpsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailTransport {
    Smtp,
    Eml,
}

impl MailTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            MailTransport::Smtp => "smtp",
            MailTransport::Eml => "eml",
        }
    }
}

/// Where a recorded message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    /// Recorded before the SMTP conversation; still so if cpsync died during it.
    Sending,
    Sent,
    Failed,
    /// Saved as an `.eml` file.
    Written,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Sending => "sending",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
            MailStatus::Written => "written",
        }
    }
}

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = cp_report_mail)]
pub struct ReportMailRecord {
    pub id: i64,
    pub run_id: i64,
    /// Recipients, comma-separated.
    pub recipients: String,
    pub transport: String,
    pub status: String,
    pub message_id: String,
    pub created_at: NaiveDateTime,
    pub sent_at: Option<NaiveDateTime>,
    pub error: Option<String>,
}

/// A message about to be sent or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReportMail<'a> {
    pub run_id: i64,
    pub recipients: &'a [String],
    pub transport: MailTransport,
    pub status: MailStatus,
    pub message_id: &'a str,
    pub now: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = cp_report_mail)]
struct ReportMailRow<'a> {
    run_id: i64,
    recipients: &'a str,
    transport: &'a str,
    status: &'a str,
    message_id: &'a str,
    created_at: NaiveDateTime,
    sent_at: Option<NaiveDateTime>,
}

/// Records a message; returns its id. A `written` message counts as done at once.
pub fn record(conn: &mut DbConnection, mail: &NewReportMail<'_>) -> Result<i64, DbError> {
    let recipients = mail.recipients.join(", ");
    let done = matches!(mail.status, MailStatus::Sent | MailStatus::Written);
    let id = diesel::insert_into(cp_report_mail::table)
        .values(&ReportMailRow {
            run_id: mail.run_id,
            recipients: &recipients,
            transport: mail.transport.as_str(),
            status: mail.status.as_str(),
            message_id: mail.message_id,
            created_at: mail.now,
            sent_at: done.then_some(mail.now),
        })
        .returning(cp_report_mail::id)
        .get_result(conn)?;
    Ok(id)
}

/// Marks a `sending` message as sent.
pub fn mark_sent(conn: &mut DbConnection, id: i64, now: NaiveDateTime) -> Result<(), DbError> {
    diesel::update(cp_report_mail::table.find(id))
        .set((
            cp_report_mail::status.eq(MailStatus::Sent.as_str()),
            cp_report_mail::sent_at.eq(Some(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Marks a `sending` message as failed, with the (secret-free) reason.
pub fn mark_failed(conn: &mut DbConnection, id: i64, error: &str) -> Result<(), DbError> {
    diesel::update(cp_report_mail::table.find(id))
        .set((
            cp_report_mail::status.eq(MailStatus::Failed.as_str()),
            cp_report_mail::error.eq(Some(error)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The message already sent over SMTP for this run, if any.
pub fn find_sent(
    conn: &mut DbConnection,
    run_id: i64,
) -> Result<Option<ReportMailRecord>, DbError> {
    Ok(cp_report_mail::table
        .filter(cp_report_mail::run_id.eq(run_id))
        .filter(cp_report_mail::status.eq(MailStatus::Sent.as_str()))
        .order(cp_report_mail::id.desc())
        .select(ReportMailRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Every message recorded for a run, oldest first.
pub fn for_run(conn: &mut DbConnection, run_id: i64) -> Result<Vec<ReportMailRecord>, DbError> {
    Ok(cp_report_mail::table
        .filter(cp_report_mail::run_id.eq(run_id))
        .order(cp_report_mail::id.asc())
        .select(ReportMailRecord::as_select())
        .load(conn)?)
}
