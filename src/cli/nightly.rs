//! `cpsync nightly`: the reconciliation run. Takes the district lock,
//! checks the email settings, validates both sides, applies what the rules
//! allow (not with `--dry-run`), records every discrepancy, the report
//! files and the run, releases the lock, and only then sends the email;
//! exits 0 (in agreement or corrected), 3 (items need review), 5 (not
//! converged: a correction was applied but re-reading still finds the
//! difference), 1 (failed, or the email could not be sent) or 4 (another
//! run holds the lock).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::json;

use super::nightly_report::{self, ReportInput};
use super::task::{self, run_task, TaskOutcome};
use super::{exit, Context};
use crate::db::discrepancies::Outcome;
use crate::db::lock::{self, DISTRICT_LOCK};
use crate::db::runs::{self, RunCounts, RunStatus};
use crate::db::settings;
use crate::domain::StudentId;
use crate::reconcile::Scope;
use crate::report::ItemCounts;
use crate::sync::nightly::{self, NightlyOptions, NightlyResult};
use crate::sync::utc_now;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Validate and report only; change nothing on either side.
    #[arg(long)]
    dry_run: bool,
    /// Only fees dated on or after this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    from: Option<NaiveDate>,
    /// Only fees dated on or before this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    to: Option<NaiveDate>,
    /// Only this student's fees.
    #[arg(long)]
    student: Option<StudentId>,
    /// Examine only the fees changed on either side since the last
    /// completed run (and the items it left open); runs in full when there
    /// is no such run or the sending policy changed since.
    #[arg(long, conflicts_with_all = ["from", "to", "student"])]
    incremental: bool,
    /// With --incremental: run in full when the last full run is this many
    /// days old.
    #[arg(long, value_name = "DAYS", default_value_t = 7, requires = "incremental",
          value_parser = clap::value_parser!(u16).range(1..=366))]
    full_every_days: u16,
    /// Print one JSON object for schedulers and monitoring.
    #[arg(long)]
    json: bool,
    /// Email the report even if this run's report was already sent.
    #[arg(long)]
    resend_email: bool,
    /// Email the report of a dry or scoped run too (by default only a
    /// whole-district run that applies its corrections mails the office).
    #[arg(long)]
    email: bool,
    /// Skip the report files and the email.
    #[arg(long)]
    no_report: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let command_started = std::time::Instant::now();
    let mut conn = match context.connect() {
        Ok(conn) => conn,
        Err(error) => {
            mail_database_unreachable(context, &args, &error);
            return Err(error);
        }
    };
    if let Some((refusal, code)) = refuse_scope(&mut conn, &args)? {
        eprintln!("cpsync: {refusal}; nothing was done");
        return Ok(code);
    }
    let held = lock::try_acquire(&context.database_url, DISTRICT_LOCK, None, utc_now())?;
    let mut district_lock = match held {
        Ok(lock) => lock,
        Err(holder) => {
            eprintln!(
                "cpsync: another run holds the district lock ({}); nothing was done{}",
                holder.describe(),
                if holder.releasable() {
                    " (if no cpsync run is active, clear it with `cpsync lock release --force`)"
                } else {
                    ""
                }
            );
            return Ok(exit::LOCKED);
        }
    };
    if !args.no_report {
        context.district()?;
        nightly_report::check_mail_settings(context)?;
    }
    let setup = settings::load_setup(&mut conn)?;
    let portal = task::portal(context, &mut conn)?;
    let options = NightlyOptions {
        dry_run: args.dry_run,
        scope: Scope {
            from: args.from,
            to: args.to,
            student: args.student,
        },
        incremental: args.incremental,
        full_run_every: chrono::Duration::days(i64::from(args.full_every_days)),
        credit_review_after_days: i64::from(context.config.reports.credit_review_after_days),
        ..NightlyOptions::default()
    };
    let scoped = options.scope != Scope::everything();
    let trigger = if scoped { "scoped" } else { "manual" };
    // The office gets the whole-district run that applied its corrections;
    // a dry or scoped run is mailed only when asked.
    let mail_office = args.email || (!args.dry_run && !scoped);
    // Written under the lock, mailed after it is released.
    let mut mail: Option<(nightly_report::Prepared, bool)> = None;
    // A report that could not be written: recorded on the run once it is.
    let mut report_failed: Option<(i64, String)> = None;
    let ran = run_task(
        &mut conn,
        task::NIGHTLY_SYNC,
        trigger,
        args.dry_run,
        |conn, run_id| {
            district_lock.set_run(run_id)?;
            let started_at = utc_now();
            let report_input = |result, error| ReportInput {
                run_id,
                started_at,
                dry_run: args.dry_run,
                scope: &options.scope,
                result,
                error,
            };
            let result = match nightly::run(conn, &portal, &setup, &options, run_id, &utc_now) {
                Ok(result) => result,
                Err(error) => {
                    if !args.no_report {
                        let input = report_input(None, Some(error.to_string()));
                        mail = prepare_failure(context, conn, &input).map(|p| (p, false));
                    }
                    return Err(error.into());
                }
            };
            let mut outcome = task_outcome(run_id, &options, &result);
            if !args.no_report {
                let report_started = std::time::Instant::now();
                let input = report_input(Some(&result), None);
                let prepared = nightly_report::prepare(context, conn, &input);
                if let Err(error) = &prepared {
                    report_failed = Some((run_id, super::one_line_chain(error)));
                }
                mail = record_report(&mut outcome, prepared).map(|p| (p, true));
                outcome.summary["report_ms"] = json!(report_started.elapsed().as_millis() as u64);
            }
            outcome.summary["elapsed_ms"] = json!(command_started.elapsed().as_millis() as u64);
            if args.json {
                out!("{}", serde_json::to_string_pretty(&outcome.summary)?);
            } else {
                print_human(&outcome.summary);
            }
            Ok(outcome)
        },
    );
    // The run and its corrections are recorded: free the district before
    // talking to a mail server that may be slow.
    drop(district_lock);
    if let Some((run_id, reason)) = &report_failed {
        if let Err(error) = runs::note_report_failure(&mut conn, *run_id, "report", reason) {
            eprintln!("cpsync: could not record the report failure on run {run_id}: {error}");
        }
    }
    let Some((prepared, succeeded)) = mail else {
        return ran;
    };
    if !mail_office {
        if !args.json {
            out!(
                "report {}\n  exceptions CSV {}\n  summary {}\n  not emailed: a dry or scoped run is mailed only with --email",
                prepared.files.html.display(),
                prepared.files.csv.display(),
                prepared.files.json.display()
            );
        }
        return ran;
    }
    let resend = succeeded && args.resend_email;
    match nightly_report::deliver(context, &mut conn, &prepared, resend) {
        Ok(delivery) => {
            let line = nightly_report::describe(&prepared.files, &delivery);
            if !succeeded {
                eprintln!("{line}");
            } else if !args.json {
                out!("{line}");
            }
            ran
        }
        Err(error) => {
            let reason = super::one_line_chain(&error);
            eprintln!("cpsync: the report was written but could not be sent: {reason}");
            let run_id = prepared.report.run_id;
            if let Err(error) = runs::note_report_failure(&mut conn, run_id, "mail", &reason) {
                eprintln!("cpsync: could not record the mail failure on run {run_id}: {error}");
            }
            ran.map(|_| exit::FAILURE)
        }
    }
}

/// Why the asked scope cannot run (checked before the lock is taken):
/// a reversed date range, or a student Genesis does not have.
/// Without a database there is no run to record and no report to build:
/// the office still hears that nothing was checked, by a short email, when
/// this run would have mailed it (a whole-district run with its report, or
/// `--email`) and SMTP is configured. Its own failure is only printed.
fn mail_database_unreachable(context: &Context, args: &Args, error: &anyhow::Error) {
    let scoped = args.from.is_some() || args.to.is_some() || args.student.is_some();
    let mails = !args.no_report && (args.email || !(scoped || args.dry_run));
    let (Some(smtp), Some(district), true) = (
        context.config.smtp.as_ref(),
        context.config.district_name(),
        mails,
    ) else {
        return;
    };
    let sent = crate::report::email::mailboxes(&smtp.from, &smtp.to).and_then(|(from, to)| {
        let message = crate::report::email::database_unreachable_message(
            district,
            utc_now().date(),
            &super::one_line_chain(error),
            &from,
            &to,
        )?;
        crate::report::email::SmtpSender::connect_settings(smtp)?.send(&message)
    });
    match sent {
        Ok(()) => {
            eprintln!("cpsync: the office was told by email that the database could not be reached")
        }
        Err(mail_error) => eprintln!(
            "cpsync: the email saying the database could not be reached failed too: {mail_error}"
        ),
    }
}

/// Why the scope cannot be run, with the exit code: a reversed date range
/// is a wrong command line (2); a student Genesis does not have is refused
/// like an unknown id in every command (1).
fn refuse_scope(
    conn: &mut crate::db::DbConnection,
    args: &Args,
) -> anyhow::Result<Option<(String, u8)>> {
    if let (Some(from), Some(to)) = (args.from, args.to) {
        if from > to {
            return Ok(Some((
                format!("the date range is reversed: --from {from} is after --to {to}"),
                exit::USAGE,
            )));
        }
    }
    if let Some(student) = args.student {
        let found = crate::db::genesis::load_students_by_ids(conn, &[student])?;
        if found.records.is_empty() {
            return Ok(Some((
                format!("student {student} is not in Genesis"),
                exit::FAILURE,
            )));
        }
    }
    Ok(None)
}

/// One sentence on what the run examined; a scoped run never says "Full run".
fn coverage_text(options: &NightlyOptions, result: &NightlyResult) -> String {
    if options.scope == Scope::everything() {
        result.coverage.describe()
    } else {
        format!(
            "Scoped run ({}): every managed fee in that scope was examined; fees outside it were not.",
            crate::report::describe_scope(&options.scope)
        )
    }
}

/// Adds the verdict, the difference and where the report went to the
/// summary; a report failure is reported but does not undo the run.
fn record_report(
    outcome: &mut TaskOutcome,
    prepared: anyhow::Result<nightly_report::Prepared>,
) -> Option<nightly_report::Prepared> {
    match prepared {
        Ok(prepared) => {
            let (report, files) = (&prepared.report, &prepared.files);
            outcome.summary["verdict"] = json!(report.verdict.as_str());
            outcome.summary["difference"] = json!(report.difference().to_string());
            outcome.summary["difference_before_corrections"] =
                json!(report.difference_before().to_string());
            outcome.summary["report"] = json!({
                "html": files.html, "csv": files.csv, "json": files.json,
            });
            Some(prepared)
        }
        Err(error) => {
            let message = super::one_line_chain(&error);
            eprintln!("cpsync: the report could not be written: {message}");
            outcome.summary["report_error"] = json!(message);
            outcome.exit_code = exit::FAILURE;
            None
        }
    }
}

/// The short failure report's files; its own failure is only logged.
fn prepare_failure(
    context: &Context,
    conn: &mut crate::db::DbConnection,
    input: &ReportInput,
) -> Option<nightly_report::Prepared> {
    nightly_report::prepare(context, conn, input)
        .map_err(|error| {
            eprintln!(
                "cpsync: the failure report could not be written: {}",
                super::one_line_chain(&error)
            )
        })
        .ok()
}

/// The run's counts in items (`report::ItemCounts`), from its outcomes:
/// the same numbers the report counts from the same outcomes.
pub fn item_counts(result: &NightlyResult) -> ItemCounts {
    let mut counts = ItemCounts::default();
    for (discrepancy, (outcome, _)) in result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
    {
        match outcome {
            Outcome::Corrected | Outcome::Planned => counts.corrected += 1,
            Outcome::NeedsReview if !discrepancy.resolution.is_review() => counts.held += 1,
            Outcome::NeedsReview | Outcome::Failed | Outcome::NotConverged => {
                counts.needs_review += 1
            }
            Outcome::CreditOnAccount => counts.credits_on_account += 1,
        }
    }
    counts.discrepancies = result.reconciliation.discrepancies.len() - counts.credits_on_account;
    counts
}

fn task_outcome(run_id: i64, options: &NightlyOptions, result: &NightlyResult) -> TaskOutcome {
    let accounting = &result.reconciliation.accounting;
    let sides = [&accounting.genesis, &accounting.community_pass];
    let items = item_counts(result);
    // History keeps records in and matched (records), and the items
    // corrected and needing review (held ones included: a person acts).
    let counts = RunCounts {
        records_in: sides.iter().map(|s| s.records_in as i64).sum(),
        matched: sides.iter().map(|s| s.matched as i64).sum(),
        corrected: items.corrected as i64,
        needs_review: (items.needs_review + items.held) as i64,
    };
    let not_converged = result.not_converged();
    let (status, exit_code) = if result.failed() > 0 {
        (RunStatus::Failed, exit::FAILURE)
    } else if !not_converged.is_empty() {
        (RunStatus::NotConverged, exit::NOT_CONVERGED)
    } else if result.needs_review() > 0 || !result.incomplete.is_empty() {
        (RunStatus::NeedsReview, exit::NEEDS_REVIEW)
    } else {
        (RunStatus::Succeeded, exit::OK)
    };
    let phases: BTreeMap<&str, u64> = result
        .phases
        .iter()
        .map(|(n, ms)| (n.as_str(), *ms))
        .collect();
    let failures: Vec<_> = result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
        .filter(|(_, (o, _))| *o == Outcome::Failed)
        .map(|(d, (_, e))| json!({"kind": d.kind.as_str(), "fee_id": d.fee_id, "error": e}))
        .collect();
    let summary = json!({
        "run_id": run_id,
        "status": status.as_str(),
        "dry_run": options.dry_run,
        "scope": {"from": options.scope.from, "to": options.scope.to, "student": options.scope.student},
        "coverage": result.coverage,
        "coverage_text": coverage_text(options, result),
        "counts": items,
        "failed_corrections": result.failed() + not_converged.len(),
        "records": {
            "genesis": accounting.genesis.records_in,
            "community_pass": accounting.community_pass.records_in,
            "matched": counts.matched,
        },
        "accounting": accounting,
        "discrepancies": nightly::counts_by_kind(&result.reconciliation),
        "totals": result.reconciliation.totals,
        "phases": phases,
        "retries": result.retries,
        "rejected_rows": result.rejected_rows,
        "incomplete": result.incomplete,
        "remaining_after_apply": result.remaining_after_apply,
        "not_converged": not_converged
            .iter()
            .map(|(fee, why)| json!({"fee_id": fee, "why": why}))
            .collect::<Vec<_>>(),
        "changed_during_run": result
            .still_different
            .iter()
            .filter(|(fee, _)| !result.not_applied.contains_key(fee))
            .map(|(fee, kinds)| json!({"fee_id": fee, "kinds": kinds}))
            .collect::<Vec<_>>(),
        "failures": failures,
    });
    TaskOutcome {
        status,
        counts,
        summary,
        exit_code,
    }
}

fn print_human(summary: &serde_json::Value) {
    let counts = &summary["counts"];
    let records = &summary["records"];
    let dry = summary["dry_run"] == true;
    out!(
        "nightly run {}: {}{} — {} discrepancies: {} {}, {} need review, {} held; {} credits on account",
        summary["run_id"],
        summary["status"].as_str().unwrap_or("?"),
        if dry { " (dry run: nothing changed)" } else { "" },
        counts["discrepancies"],
        counts["corrected"],
        if dry { "would be corrected" } else { "corrected" },
        counts["needs_review"],
        counts["held"],
        counts["credits_on_account"],
    );
    out!(
        "  records read: {} Genesis and {} Community Pass, {} matched",
        records["genesis"],
        records["community_pass"],
        records["matched"],
    );
    if let Some(coverage) = summary["coverage_text"].as_str() {
        out!("  {coverage}");
    }
    if let Some(fees) = summary["not_converged"]
        .as_array()
        .filter(|f| !f.is_empty())
    {
        out!(
            "  NOT CONVERGED: {} correction(s) were applied but Community Pass still differs:",
            fees.len()
        );
        for fee in fees {
            out!(
                "    fee {}: {}",
                fee["fee_id"],
                fee["why"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(gaps) = summary["incomplete"].as_array().filter(|g| !g.is_empty()) {
        out!("  INCOMPLETE: not everything could be read, so not everything was judged:");
        for gap in gaps {
            out!("    {}", gap.as_str().unwrap_or(""));
        }
    }
    if let Some(kinds) = summary["discrepancies"].as_object() {
        for (kind, count) in kinds {
            out!("  {count:>6}  {kind}");
        }
    }
    let totals = &summary["totals"];
    for side in ["genesis", "community_pass"] {
        let t = &totals[side];
        out!(
            "  {side:<15} billed ${} paid ${} refunded ${} waived ${} outstanding ${}",
            t["billed"].as_str().unwrap_or("?"),
            t["paid"].as_str().unwrap_or("?"),
            t["refunded"].as_str().unwrap_or("?"),
            t["waived"].as_str().unwrap_or("?"),
            t["outstanding"].as_str().unwrap_or("?"),
        );
    }
}
