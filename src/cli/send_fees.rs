//! `cpsync send-fees`: drains the outbox (every fee change since the last
//! push), or `--resend` re-sends fees safely (Community Pass deduplicates on
//! the Genesis fee id, so a resend never creates a second fee).

use super::task::{self, run_task, TaskOutcome};
use super::{exit, Context};
use crate::db::{outbox, settings};
use crate::domain::{FeeId, StudentId};
use crate::sync::push::{self, PushReport};
use crate::sync::utc_now;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Re-send fees even if Community Pass already has them as they are.
    #[arg(long)]
    resend: bool,
    /// With --resend: only this fee.
    #[arg(long, requires = "resend", conflicts_with = "student")]
    fee: Option<FeeId>,
    /// With --resend: only this student's fees.
    #[arg(long, requires = "resend")]
    student: Option<StudentId>,
    /// Print the run summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let setup = settings::load_setup(&mut conn)?;
    setup.ready_to_send()?;
    if let Some(unknown) = unknown_id(&mut conn, &args)? {
        eprintln!("cpsync: {unknown}; nothing was sent");
        return Ok(exit::FAILURE);
    }
    let portal = task::portal(context, &mut conn)?;
    let trigger = if args.resend { "resend" } else { "manual" };
    run_task(
        &mut conn,
        task::SEND_FEES,
        trigger,
        false,
        |conn, run_id| {
            let report = if args.resend {
                let fee_ids = match args.fee {
                    Some(fee) => vec![fee],
                    None => push::eligible_fee_ids(conn, &setup, args.student)?,
                };
                let mode = push::PushMode::Resend;
                push::push_fees(conn, &portal, &setup, &fee_ids, mode, run_id, &utc_now)?.0
            } else {
                push::drain_outbox(conn, &portal, &setup, run_id, &utc_now)?
            };
            let waiting = outbox::pending_count(conn)?;
            print_report("send-fees", &report, waiting, args.json)?;
            Ok(outcome_of(&report))
        },
    )
}

/// A fee neither Genesis nor the integration knows, or a student Genesis
/// does not know, named the way every command names it.
fn unknown_id(conn: &mut crate::db::DbConnection, args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(fee) = args.fee {
        let in_genesis = !crate::db::genesis::load_fees_by_ids(conn, &[fee])?
            .records
            .is_empty();
        let linked = !crate::db::links::load_for(conn, &[fee])?.is_empty();
        if !in_genesis && !linked {
            return Ok(Some(format!("fee {fee} is not in Genesis")));
        }
    }
    if let Some(student) = args.student {
        let found = crate::db::genesis::load_students_by_ids(conn, &[student])?;
        if found.records.is_empty() && found.rejected.is_empty() {
            return Ok(Some(format!("student {student} is not in Genesis")));
        }
    }
    Ok(None)
}

/// The run outcome of a push pass: failed pushes fail the run (they stay
/// pending); refused and held ones (Community Pass said no for a reason a
/// retry cannot fix) need review and leave the queue, so later tasks run.
pub(super) fn outcome_of(report: &PushReport) -> TaskOutcome {
    let records = report.pushed
        + report.unchanged
        + report.ineligible
        + report.refused
        + report.rejected
        + report.deleted
        + report.failed;
    let mut outcome = TaskOutcome::succeeded(report, records);
    let review = report.refused + report.rejected;
    outcome.counts.needs_review = review as i64;
    if report.failed > 0 {
        outcome.status = crate::db::runs::RunStatus::Failed;
        outcome.exit_code = exit::FAILURE;
    } else if review > 0 {
        outcome.status = crate::db::runs::RunStatus::NeedsReview;
        outcome.exit_code = exit::NEEDS_REVIEW;
    }
    outcome
}

/// One line (or JSON) per push pass, headed by the command's name.
pub(super) fn print_report(
    command: &str,
    report: &PushReport,
    waiting: i64,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    out!(
        "{command}: {} pushed ({} new, {} replayed, {} deleted fees voided), {} unchanged, {} not eligible, {} refused, {} held (Community Pass refused), {} deleted, {} failed; {} change(s) still waiting",
        report.pushed, report.created, report.replayed, report.voided_deleted, report.unchanged,
        report.ineligible, report.refused, report.rejected, report.deleted, report.failed, waiting
    );
    if report.rejected > 0 {
        out!("  see `cpsync held-pushes`; each is sent again when the fee changes, or with `send-fees --resend --fee ID`");
    }
    for (fee, why) in &report.problems {
        out!("  fee {fee}: {why}");
    }
    Ok(())
}
