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
                push::push_fees(conn, &portal, &setup, &fee_ids, true, run_id, &utc_now)?.0
            } else {
                push::drain_outbox(conn, &portal, &setup, run_id, &utc_now)?
            };
            let waiting = outbox::pending_count(conn)?;
            print_report("send-fees", &report, waiting, args.json)?;
            Ok(outcome_of(&report))
        },
    )
}

/// The run outcome of a push pass: failed pushes fail the run (they stay
/// pending), refused ones need review.
pub(super) fn outcome_of(report: &PushReport) -> TaskOutcome {
    let records = report.pushed + report.unchanged + report.ineligible + report.refused;
    let mut outcome = TaskOutcome::succeeded(report, records);
    outcome.counts.needs_review = report.refused as i64;
    if report.failed > 0 {
        outcome.status = crate::db::runs::RunStatus::Failed;
        outcome.exit_code = exit::FAILURE;
    } else if report.refused > 0 {
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
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "{command}: {} pushed ({} new, {} replayed), {} unchanged, {} not eligible, {} refused, {} deleted, {} failed; {} change(s) still waiting",
        report.pushed, report.created, report.replayed, report.unchanged, report.ineligible,
        report.refused, report.deleted, report.failed, waiting
    );
    for (fee, why) in &report.problems {
        println!("  fee {fee}: {why}");
    }
    Ok(())
}
