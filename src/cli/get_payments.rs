//! `cpsync get-payments`: posts Community Pass payments, refunds, waivers and
//! reversals into Genesis, exactly once each. Without options: everything
//! after the stored cursor (the nightly trigger). `--student ID`: the fee
//! page is opened. `--guardian ID`: the parent logs in. `--from-sequence N`:
//! re-read the cursor from N (after Community Pass named a cursor it could
//! not have meant). Exit code 3 when a record was held for a person (see
//! `cpsync unprocessed`) or the cursor was refused.

use anyhow::Context as _;

use super::task::{self, run_task, TaskOutcome};
use super::Context;
use crate::db::{genesis, DbConnection};
use crate::domain::{GuardianId, StudentId};
use crate::sync::pull::{self, PullScope};
use crate::sync::utc_now;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this student's transactions (their fee page was opened).
    #[arg(long, conflicts_with = "guardian")]
    student: Option<StudentId>,
    /// All of this guardian's students' transactions (the parent logged in).
    #[arg(long)]
    guardian: Option<GuardianId>,
    /// Re-read the transaction cursor from this sequence instead of the
    /// stored cursor (after Community Pass named a cursor it could not have
    /// meant). Safe: nothing is posted twice. The stored cursor is then
    /// set to what was actually read (backwards too).
    #[arg(long, conflicts_with_all = ["student", "guardian"], value_parser = clap::value_parser!(i64).range(0..))]
    from_sequence: Option<i64>,
    /// Print the run summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    if let Some(unknown) = unknown_id(&mut conn, &args)? {
        eprintln!("cpsync: {unknown}; nothing was pulled");
        return Ok(super::exit::FAILURE);
    }
    let interactive = args.student.is_some() || args.guardian.is_some();
    let portal = if interactive {
        task::interactive_portal(context, &mut conn)?
    } else {
        task::portal(context, &mut conn)?
    };
    let (scope, trigger) = match (args.student, args.guardian) {
        (Some(student), _) => (PullScope::Student(student), "fee_page"),
        (None, Some(guardian)) => (PullScope::Guardian(guardian), "parent_login"),
        (None, None) => (PullScope::Cursor, "cursor"),
    };
    run_task(
        &mut conn,
        task::GET_PAYMENTS,
        trigger,
        false,
        |conn, run_id| {
            let report = pull::get_payments_from(
                conn,
                &portal,
                scope,
                args.from_sequence,
                run_id,
                &utc_now,
            )
            .with_context(|| {
                if interactive {
                    format!(
                        "a parent's pull waits at most {} s per Community Pass call; nothing was posted, and the next cursor pull (nightly) fetches these payments",
                        task::INTERACTIVE_CALL_BUDGET.as_secs()
                    )
                } else {
                    "nothing was posted and the cursor did not move; the next run retries".to_string()
                }
            })?;
            if args.json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!(
                "get-payments: {} fetched, {} posted, {} already posted, {} on Community Pass-only fees (not synced), {} unprocessed (see cpsync unprocessed), {} malformed (parked), {} amounts locked{}",
                report.fetched,
                report.posted,
                report.already_posted,
                report.community_pass_only,
                report.parked,
                report.rejected,
                report.amounts_locked,
                match (report.cursor_from, report.cursor_to) {
                    (Some(from), Some(to)) => format!("; cursor {from} -> {to}"),
                    _ => String::new(),
                }
            );
                for problem in &report.problems {
                    out!("  {problem}");
                }
            }
            let mut outcome = TaskOutcome::succeeded(&report, report.fetched);
            outcome.counts.matched = report.already_posted as i64;
            outcome.counts.corrected = report.posted as i64;
            outcome.counts.needs_review = (report.parked + report.rejected) as i64;
            if outcome.counts.needs_review > 0 || report.cursor_refused.is_some() {
                // Held records (or a refused cursor) wait for a person.
                outcome.status = crate::db::runs::RunStatus::NeedsReview;
                outcome.exit_code = super::exit::NEEDS_REVIEW;
            }
            Ok(outcome)
        },
    )
}

/// Names the student or guardian asked for when Genesis does not know them
/// (a pull for them would read nothing that could be posted).
fn unknown_id(conn: &mut DbConnection, args: &Args) -> anyhow::Result<Option<String>> {
    if let Some(student) = args.student {
        let found = genesis::load_students_by_ids(conn, &[student])?;
        if found.records.is_empty() && found.rejected.is_empty() {
            return Ok(Some(format!("student {student} is not in Genesis")));
        }
    }
    if let Some(guardian) = args.guardian {
        if genesis::students_of_guardian(conn, guardian, false)?.is_empty() {
            return Ok(Some(format!(
                "guardian {guardian} has no students in Genesis"
            )));
        }
    }
    Ok(None)
}
