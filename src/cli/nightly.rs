//! `cpsync nightly`: the reconciliation run. Takes the district lock,
//! validates both sides, applies what the rules allow (not with
//! `--dry-run`), records every discrepancy and the run, and exits 0 (in
//! agreement or corrected), 3 (items need review), 1 (failed) or 4 (another
//! run holds the lock).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::json;

use super::task::{self, run_task, TaskOutcome};
use super::{exit, Context};
use crate::db::discrepancies::{self, Outcome};
use crate::db::lock::{self, DISTRICT_LOCK};
use crate::db::runs::{RunCounts, RunStatus};
use crate::db::settings;
use crate::domain::StudentId;
use crate::reconcile::Scope;
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
    /// Print one JSON object for schedulers and monitoring.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let held = lock::try_acquire(&context.database_url, DISTRICT_LOCK, None, utc_now())?;
    let mut district_lock = match held {
        Ok(lock) => lock,
        Err(holder) => {
            eprintln!(
                "cpsync: another run holds the district lock ({} since {} UTC); nothing was done",
                holder.holder, holder.acquired_at
            );
            return Ok(exit::LOCKED);
        }
    };
    let setup = settings::load_setup(&mut conn)?;
    let portal = task::portal(context, &mut conn)?;
    let options = NightlyOptions {
        dry_run: args.dry_run,
        scope: Scope {
            from: args.from,
            to: args.to,
            student: args.student,
        },
    };
    let trigger = if args.student.is_some() || args.from.is_some() || args.to.is_some() {
        "scoped"
    } else {
        "manual"
    };
    run_task(
        &mut conn,
        task::NIGHTLY_SYNC,
        trigger,
        args.dry_run,
        |conn, run_id| {
            district_lock.set_run(run_id)?;
            let result = nightly::run(conn, &portal, &setup, &options, run_id, &utc_now)?;
            let items: Vec<_> = result
                .reconciliation
                .discrepancies
                .iter()
                .zip(&result.outcomes)
                .map(|(d, (outcome, error))| (d, *outcome, error.clone()))
                .collect();
            discrepancies::record(conn, run_id, &items, utc_now())?;
            let outcome = task_outcome(run_id, &options, &result);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&outcome.summary)?);
            } else {
                print_human(&outcome.summary);
            }
            Ok(outcome)
        },
    )
}

fn task_outcome(run_id: i64, options: &NightlyOptions, result: &NightlyResult) -> TaskOutcome {
    let accounting = &result.reconciliation.accounting;
    let sides = [&accounting.genesis, &accounting.community_pass];
    let counts = RunCounts {
        records_in: sides.iter().map(|s| s.records_in as i64).sum(),
        matched: sides.iter().map(|s| s.matched as i64).sum(),
        corrected: sides.iter().map(|s| s.corrected as i64).sum(),
        needs_review: sides.iter().map(|s| s.needs_review as i64).sum(),
    };
    let (status, exit_code) = if result.failed() > 0 {
        (RunStatus::Failed, exit::FAILURE)
    } else if result.needs_review() > 0 {
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
        "counts": {
            "genesis_records": accounting.genesis.records_in,
            "cp_records": accounting.community_pass.records_in,
            "matched": counts.matched,
            "corrected": counts.corrected,
            "needs_review": counts.needs_review,
            "actions_failed": result.failed(),
        },
        "accounting": accounting,
        "discrepancies": nightly::counts_by_kind(&result.reconciliation),
        "totals": result.reconciliation.totals,
        "phases": phases,
        "retries": result.retries,
        "rejected_rows": result.rejected_rows,
        "remaining_after_apply": result.remaining_after_apply,
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
    println!(
        "nightly run {}: {}{} — {} Genesis and {} Community Pass records: {} matched, {} corrected, {} need review",
        summary["run_id"],
        summary["status"].as_str().unwrap_or("?"),
        if summary["dry_run"] == true { " (dry run: nothing changed)" } else { "" },
        counts["genesis_records"],
        counts["cp_records"],
        counts["matched"],
        counts["corrected"],
        counts["needs_review"],
    );
    if let Some(kinds) = summary["discrepancies"].as_object() {
        for (kind, count) in kinds {
            println!("  {count:>6}  {kind}");
        }
    }
    let totals = &summary["totals"];
    for side in ["genesis", "community_pass"] {
        let t = &totals[side];
        println!(
            "  {side:<15} billed ${} paid ${} refunded ${} waived ${} outstanding ${}",
            t["billed"].as_str().unwrap_or("?"),
            t["paid"].as_str().unwrap_or("?"),
            t["refunded"].as_str().unwrap_or("?"),
            t["waived"].as_str().unwrap_or("?"),
            t["outstanding"].as_str().unwrap_or("?"),
        );
    }
}
