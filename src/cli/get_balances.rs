//! `cpsync get-balances`: stores every patron's whole-account Community Pass
//! balance, with its as-of time, for the parent portal.

use super::task::{self, run_task, TaskOutcome};
use super::Context;
use crate::sync::balances;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the run summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let portal = task::portal(context, &mut conn)?;
    run_task(
        &mut conn,
        task::GET_BALANCES,
        "manual",
        false,
        |conn, run_id| {
            let report = balances::get_balances(conn, &portal, run_id)?;
            if args.json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!(
                    "get-balances: {} patrons stored, {} with a balance, ${} outstanding in all",
                    report.patrons,
                    report.with_balance,
                    report.total
                );
                for rejected in &report.rejected {
                    out!("  not stored: {rejected}");
                }
            }
            let records = report.patrons + report.rejected.len() as u64;
            let mut outcome = TaskOutcome::succeeded(&report, records);
            if !report.rejected.is_empty() {
                outcome.counts.corrected = report.patrons as i64;
                outcome.counts.needs_review = report.rejected.len() as i64;
                outcome.status = crate::db::runs::RunStatus::NeedsReview;
                outcome.exit_code = super::exit::NEEDS_REVIEW;
            }
            Ok(outcome)
        },
    )
}
