//! `cpsync runs`: the run history, newest first, as a table or JSON. Runs
//! left `running` by a process that is gone are marked `interrupted` first.

use super::{exit, Context};
use crate::db::runs::{self, RunRecord};

/// The most rows `runs` prints at once.
const RUNS_LIMIT_MAX: i64 = 10_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only runs of this task, as `runs` prints it (nightly_sync, send_fees,
    /// get_payments, get_balances, demographic_export, seed) or as its
    /// command (nightly, send-fees, ...).
    #[arg(long)]
    task: Option<String>,
    /// How many runs to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=RUNS_LIMIT_MAX))]
    limit: i64,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// The task names `runs` prints (and `--task` accepts), with the short
/// names people type for them.
const TASK_NAMES: [(&str, &str); 6] = [
    ("send_fees", "send-fees"),
    ("get_payments", "get-payments"),
    ("get_balances", "get-balances"),
    ("nightly_sync", "nightly"),
    ("demographic_export", "export"),
    ("seed", "seed"),
];

/// The stored task name for what was typed: a stored name, or the command
/// that runs it (`nightly` for `nightly_sync`).
fn task_name(typed: &str) -> Option<&'static str> {
    TASK_NAMES
        .iter()
        .find(|(stored, command)| *stored == typed || *command == typed)
        .map(|(stored, _)| *stored)
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let task = match args.task.as_deref().map(|typed| (typed, task_name(typed))) {
        Some((typed, None)) => {
            let names: Vec<&str> = TASK_NAMES.iter().map(|(stored, _)| *stored).collect();
            eprintln!(
                "cpsync: no task {typed:?}; the tasks are {} (or the command names: nightly, send-fees, ...)",
                names.join(", ")
            );
            return Ok(exit::FAILURE);
        }
        Some((_, Some(stored))) => Some(stored),
        None => None,
    };
    let mut conn = context.connect()?;
    runs::mark_interrupted(&mut conn, crate::sync::utc_now())?;
    let records = runs::recent_runs(&mut conn, task, args.limit)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&records)?);
    } else if records.is_empty() {
        out!("no runs recorded yet");
    } else {
        print_table(&records);
    }
    Ok(exit::OK)
}

fn print_table(records: &[RunRecord]) {
    out!(
        "{:>6}  {:<20} {:<10} {:<19}  {:>8}  {:<12} {:>9} {:>8} {:>9} {:>7}",
        "run",
        "task",
        "trigger",
        "started (UTC)",
        "seconds",
        "status",
        "records",
        "matched",
        "corrected",
        "review"
    );
    for r in records {
        let seconds = r
            .finished_at
            .map(|f| {
                format!(
                    "{:.1}",
                    (f - r.started_at).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "-".to_string());
        let status = if r.dry_run {
            format!("{} (dry)", r.status)
        } else {
            r.status.clone()
        };
        out!(
            "{:>6}  {:<20} {:<10} {:<19}  {:>8}  {:<12} {:>9} {:>8} {:>9} {:>7}",
            r.id,
            r.task,
            r.trigger,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            seconds,
            status,
            r.records_in,
            r.matched,
            r.corrected,
            r.needs_review
        );
        if let Some(error) = &r.error {
            out!("        error: {error}");
        }
    }
    out!("records and matched count records read; corrected and review count items (discrepancies; for nightly_sync, review includes held corrections)");
}
