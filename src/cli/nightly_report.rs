//! The nightly run's report step: fills a `report::RunReport` from the run's
//! result and the database (labels only for the students and fees the
//! report names, the 30-run trend) and writes the files (owner-only) while
//! the run holds the district lock (`prepare`); sends the email, or writes
//! it as an `.eml` when no SMTP server is configured, after the lock is
//! released (`deliver`), so a slow mail server never holds up the next
//! run. `check_mail_settings` runs before the nightly applies anything.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

use super::Context;
use crate::db::discrepancies::Outcome;
use crate::db::{genesis, runs, DbConnection};
use crate::db::{review_items, run_reports};
use crate::domain::{FeeId, StudentId};
use crate::reconcile::{Discrepancy, Reconciliation, Scope};
use crate::report::email::{deliver_report, mailboxes, Delivery, SmtpSender};
use crate::report::{
    self, describe_scope, named_ids, trend_from_runs, ContactLabel, CreditOnAccount,
    FailedCorrection, FeeLabel, Phase, QueueEntry, QueueReport, ReportFiles, RunReport,
    StudentLabel, Verdict,
};
use crate::review;
use crate::sync::nightly::NightlyResult;
use crate::sync::nightly::RunCoverage;
use crate::sync::utc_now;

/// What a run leaves for the report, whether it finished or failed.
pub struct ReportInput<'a> {
    pub run_id: i64,
    pub started_at: NaiveDateTime,
    pub dry_run: bool,
    pub scope: &'a Scope,
    pub result: Option<&'a NightlyResult>,
    pub error: Option<String>,
}

/// A report written to disk whose email is still to be sent.
pub struct Prepared {
    pub report: RunReport,
    pub files: ReportFiles,
}

/// Checks the email settings without connecting: addresses parse, plain
/// text only to a loopback host, the password is readable. Run before the
/// nightly applies anything, so bad settings cost nothing but the run.
pub fn check_mail_settings(context: &Context) -> anyhow::Result<()> {
    if let Some(smtp) = context.config.smtp.as_ref() {
        mailboxes(&smtp.from, &smtp.to)
            .and_then(|_| SmtpSender::connect_settings(smtp).map(|_| ()))
            .map_err(|e| {
                anyhow::anyhow!("the [smtp] settings cannot work: {e}; nothing was done")
            })?;
    }
    Ok(())
}

/// Builds the report and writes its files; the email waits for `deliver`.
///
/// The report (names left out) is kept with the run in the database first,
/// so a folder that cannot be written loses nothing: `cpsync report --run`
/// rebuilds it later.
pub fn prepare(
    context: &Context,
    conn: &mut DbConnection,
    input: &ReportInput,
) -> anyhow::Result<Prepared> {
    let report = build(context, conn, input)?;
    let kept = keep_with_run(conn, &report);
    match report::write_report_files(&context.config.reports.dir, &report) {
        Ok(files) => {
            if let Err(error) = kept {
                tracing::warn!(run_id = report.run_id, error = %super::one_line_chain(&error), "the report could not be kept with the run; its files were written");
            }
            Ok(Prepared { report, files })
        }
        Err(error) if kept.is_ok() => Err(anyhow::Error::new(error).context(format!(
            "the report is kept with run {0}: `cpsync report --run {0}` writes and sends it once the folder can be written",
            report.run_id
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Stores the report, without names, with its run.
fn keep_with_run(conn: &mut DbConnection, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_string(&report.without_names())?;
    run_reports::store(conn, report.run_id, &json, utc_now())?;
    Ok(())
}

/// A run's report kept in the database, with the names filled in again
/// from Genesis (as they are now), if the run kept one.
pub fn kept_report(conn: &mut DbConnection, run_id: i64) -> anyhow::Result<Option<RunReport>> {
    let Some(json) = run_reports::load(conn, run_id)? else {
        return Ok(None);
    };
    let mut report: RunReport = serde_json::from_str(&json)
        .map_err(|e| anyhow::anyhow!("run {run_id}'s kept report cannot be read: {e}"))?;
    let (student_ids, fee_ids) = named_ids(&report.reconciliation.discrepancies);
    report.students = student_labels(conn, &student_ids)?;
    report.fees = fee_labels(conn, &fee_ids)?;
    let credited: Vec<StudentId> = report
        .queue
        .credits
        .iter()
        .filter_map(|c| c.discrepancy.student_id)
        .collect();
    let contacts = contacts_of(conn, &credited)?;
    for credit in &mut report.queue.credits {
        credit.guardian = credit
            .discrepancy
            .student_id
            .and_then(|s| contacts.get(&s).cloned());
    }
    Ok(Some(report))
}

/// Sends the prepared report's email (or writes the `.eml`), recorded in
/// `cp_report_mail`; returns where it went.
pub fn deliver(
    context: &Context,
    conn: &mut DbConnection,
    prepared: &Prepared,
    resend: bool,
) -> anyhow::Result<Delivery> {
    Ok(deliver_report(
        conn,
        &prepared.report,
        &prepared.files,
        context.config.smtp.as_ref(),
        &context.config.reports,
        resend,
        utc_now(),
    )?)
}

fn build(
    context: &Context,
    conn: &mut DbConnection,
    input: &ReportInput,
) -> anyhow::Result<RunReport> {
    let reconciliation = input
        .result
        .map(|r| r.reconciliation.clone())
        .unwrap_or_else(empty_reconciliation);
    let (corrected, failed, held) = outcomes(input.result);
    let not_converged = input.result.map_or(0, |r| r.not_converged().len());
    let verdict = match (&input.error, input.result) {
        (Some(_), _) | (None, None) => Verdict::Failed,
        // A run that could not read everything did not verify it: never
        // "in agreement" (the exit code says needs review too).
        (None, Some(result)) => Verdict::decide(
            result.needs_review() - held.len() + result.incomplete.len(),
            failed.len() + held.len(),
            not_converged,
            reconciliation.discrepancies.len() - result.credits(),
        ),
    };
    let mut queue = match input.result {
        Some(result) => queue_report(context, conn, result)?,
        None => QueueReport::default(),
    };
    queue.held = held;
    let (student_ids, fee_ids) = named_ids(&reconciliation.discrepancies);
    // Dry and scoped runs are left out of the trend: read enough history
    // that a busy week of hand runs does not shorten it.
    let history = (report::TREND_RUNS_MAX as i64 + 1) * 4;
    let trend = trend_from_runs(&runs::recent_runs(conn, Some("nightly_sync"), history)?);
    Ok(RunReport {
        district: context.district()?.to_string(),
        run_id: input.run_id,
        started_at: input.started_at,
        finished_at: utc_now(),
        dry_run: input.dry_run,
        verdict,
        scope_text: scope_text(input),
        scope: input.scope.clone(),
        totals_after: input.result.map(|r| r.totals_after),
        phases: input
            .result
            .map(|r| {
                r.phases
                    .iter()
                    .map(|(name, ms)| Phase {
                        name: name.clone(),
                        elapsed_ms: *ms,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        reconciliation,
        corrected,
        failed_corrections: failed,
        trend,
        students: student_labels(conn, &student_ids)?,
        schools: genesis::load_schools(conn)?
            .into_iter()
            .map(|s| (s.code, s.name))
            .collect(),
        fees: fee_labels(conn, &fee_ids)?,
        error: input.error.clone(),
        queue,
        incomplete: input
            .result
            .map(|r| r.incomplete.clone())
            .unwrap_or_default(),
    })
}

/// The queue entries behind the run's items and its credits on account,
/// each with the guardian to contact.
fn queue_report(
    context: &Context,
    conn: &mut DbConnection,
    result: &NightlyResult,
) -> anyhow::Result<QueueReport> {
    let now = utc_now();
    let entries: BTreeMap<String, QueueEntry> = result
        .queue
        .items
        .iter()
        .map(|(key, item)| {
            let entry = QueueEntry {
                id: item.id,
                state: item.item_state(),
                first_seen_run: item.first_seen_run,
                age_days: review::age_days(item.first_seen_at, now),
            };
            (key.clone(), entry)
        })
        .collect();
    let credited: Vec<&Discrepancy> = result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
        .filter(|(_, (o, _))| *o == Outcome::CreditOnAccount)
        .map(|(d, _)| d)
        .collect();
    let students: Vec<StudentId> = credited.iter().filter_map(|d| d.student_id).collect();
    let contacts = contacts_of(conn, &students)?;
    let credits = credited
        .into_iter()
        .map(|d| {
            let entry = entries.get(&review_items::key_of(d));
            CreditOnAccount {
                discrepancy: d.clone(),
                item_id: entry.map(|e| e.id),
                age_days: entry.map_or(0, |e| e.age_days),
                guardian: d.student_id.and_then(|s| contacts.get(&s).cloned()),
            }
        })
        .collect();
    Ok(QueueReport {
        credits,
        credit_review_after_days: context.config.reports.credit_review_after_days,
        entries,
        resolved_by_run: result.queue.resolved_by_run,
        held: Vec::new(),
    })
}

/// The guardian to contact about each student: the billing contact, else
/// one with portal access, else the first linked.
fn contacts_of(
    conn: &mut DbConnection,
    students: &[StudentId],
) -> anyhow::Result<BTreeMap<StudentId, ContactLabel>> {
    let links = genesis::load_guardian_links_for(conn, students)?;
    let mut chosen: BTreeMap<StudentId, (u8, crate::domain::GuardianId)> = BTreeMap::new();
    for link in &links {
        let rank = if link.billing_contact {
            0
        } else if link.portal_access {
            1
        } else {
            2
        };
        let slot = chosen
            .entry(link.student_id)
            .or_insert((rank, link.guardian_id));
        if rank < slot.0 {
            *slot = (rank, link.guardian_id);
        }
    }
    let ids: Vec<_> = chosen.values().map(|(_, g)| *g).collect();
    let guardians: BTreeMap<_, _> = genesis::load_guardians_by_ids(conn, &ids)?
        .into_iter()
        .map(|g| (g.id, g))
        .collect();
    Ok(chosen
        .into_iter()
        .filter_map(|(student, (_, guardian))| {
            let g = guardians.get(&guardian)?;
            Some((
                student,
                ContactLabel {
                    name: format!("{} {}", g.first_name, g.last_name),
                    email: g.email.clone(),
                    phone: g.phone.clone(),
                },
            ))
        })
        .collect())
}

fn empty_reconciliation() -> Reconciliation {
    Reconciliation {
        discrepancies: Vec::new(),
        accounting: Default::default(),
        totals: Default::default(),
    }
}

/// The run's corrections made, failed (or not converged) and held.
type Outcomes = (
    Vec<Discrepancy>,
    Vec<FailedCorrection>,
    Vec<FailedCorrection>,
);

fn outcomes(result: Option<&NightlyResult>) -> Outcomes {
    let Some(result) = result else {
        return (Vec::new(), Vec::new(), Vec::new());
    };
    let mut corrected = Vec::new();
    let mut failed = Vec::new();
    let mut held = Vec::new();
    for (discrepancy, (outcome, error)) in result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
    {
        match outcome {
            Outcome::Corrected => corrected.push(discrepancy.clone()),
            Outcome::Failed | Outcome::NotConverged => failed.push(FailedCorrection {
                discrepancy: discrepancy.clone(),
                error: error.clone().unwrap_or_default(),
            }),
            Outcome::NeedsReview if !discrepancy.resolution.is_review() => {
                held.push(FailedCorrection {
                    discrepancy: discrepancy.clone(),
                    error: error.clone().unwrap_or_default(),
                })
            }
            Outcome::NeedsReview | Outcome::Planned | Outcome::CreditOnAccount => {}
        }
    }
    (corrected, failed, held)
}

fn student_labels(
    conn: &mut DbConnection,
    ids: &std::collections::BTreeSet<StudentId>,
) -> anyhow::Result<BTreeMap<StudentId, StudentLabel>> {
    let ids: Vec<StudentId> = ids.iter().copied().collect();
    let mut labels = BTreeMap::new();
    for chunk in ids.chunks(genesis::INSERT_BATCH_ROWS) {
        for student in genesis::load_students_by_ids(conn, chunk)?.records {
            labels.insert(
                student.id,
                StudentLabel {
                    name: format!("{} {}", student.first_name, student.last_name),
                    school: student.school,
                },
            );
        }
    }
    Ok(labels)
}

fn fee_labels(
    conn: &mut DbConnection,
    ids: &std::collections::BTreeSet<FeeId>,
) -> anyhow::Result<BTreeMap<FeeId, FeeLabel>> {
    let ids: Vec<FeeId> = ids.iter().copied().collect();
    Ok(genesis::load_fees_by_ids(conn, &ids)?
        .records
        .iter()
        .map(|f| (f.id, FeeLabel::of(f)))
        .collect())
}

/// One line for the terminal about where the report and email went.
pub fn describe(files: &ReportFiles, delivery: &Delivery) -> String {
    let mail = match delivery {
        Delivery::Sent { recipients, .. } => format!("emailed to {}", recipients.join(", ")),
        Delivery::AlreadySent { sent_at, .. } => format!(
            "already emailed{}",
            sent_at
                .map(|t| format!(
                    " at {} UTC (use --resend to send it again)",
                    t.format("%Y-%m-%d %H:%M:%S")
                ))
                .unwrap_or_default()
        ),
        Delivery::WrittenEml { path, .. } => {
            format!("email written to {} (no SMTP configured)", path.display())
        }
    };
    format!(
        "report {}\n  exceptions CSV {}\n  corrections CSV {}\n  summary {}\n  {mail}",
        files.html.display(),
        files.csv.display(),
        files.corrections_csv.display(),
        files.json.display()
    )
}

/// The scope, and for an incremental run which fees it examined.
fn scope_text(input: &ReportInput) -> String {
    let scope = describe_scope(input.scope);
    match input.result.map(|r| &r.coverage) {
        Some(RunCoverage::Incremental {
            since_run,
            full_run_id,
            fees_examined,
            ..
        }) => format!(
            "{scope}; incremental: the {fees_examined} fees changed since run #{since_run} or left open by it (last full run #{full_run_id})"
        ),
        _ => scope,
    }
}
