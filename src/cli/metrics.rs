//! The Prometheus text file for node_exporter's textfile collector
//! (`[metrics] textfile_dir`, file `cpsync.prom`), rewritten after every run
//! from what the database says now: each task's latest run (start, duration,
//! status, items corrected and needing review) and latest completed run,
//! the outbox depth and its oldest entry's age, unprocessed records, held
//! pushes and the credits on account of the latest nightly. Written to a
//! temporary file in the same folder and renamed, so the collector never
//! reads half a file. A metrics failure is logged, never the run's failure.

use std::fmt::Write as _;
use std::path::Path;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::runs::{self, RunRecord};
use crate::db::schema::{cp_outbox, cp_unprocessed};
use crate::db::{links, DbConnection};

/// The file node_exporter reads.
pub const METRICS_FILE: &str = "cpsync.prom";

/// The tasks a district schedules, as run history names them.
const TASKS: [&str; 6] = [
    "send_fees",
    "get_payments",
    "get_balances",
    "nightly_sync",
    "demographic_export",
    "watch",
];

/// A run's statuses, each a series of `cpsync_last_run_status`.
const STATUSES: [&str; 6] = [
    "succeeded",
    "needs_review",
    "not_converged",
    "failed",
    "interrupted",
    "running",
];

/// What the file says, read from the database.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per task: its latest run and its latest completed one.
    pub tasks: Vec<(&'static str, Option<RunRecord>, Option<RunRecord>)>,
    pub outbox_pending: i64,
    pub outbox_oldest: Option<NaiveDateTime>,
    pub unprocessed: i64,
    pub held_pushes: i64,
    pub credits_on_account: Option<i64>,
    pub now: NaiveDateTime,
}

/// Reads the snapshot.
pub fn read(conn: &mut DbConnection, now: NaiveDateTime) -> anyhow::Result<Snapshot> {
    let mut tasks = Vec::with_capacity(TASKS.len());
    for task in TASKS {
        let recent = runs::recent_runs(conn, Some(task), 50)?;
        let latest = recent.first().cloned();
        let completed = recent
            .iter()
            .find(|r| matches!(r.status.as_str(), "succeeded" | "needs_review"))
            .cloned();
        tasks.push((task, latest, completed));
    }
    let credits_on_account = tasks
        .iter()
        .find(|(task, _, _)| *task == "nightly_sync")
        .and_then(|(_, _, completed)| completed.as_ref())
        .and_then(|run| run.summary_json.as_deref())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|summary| summary["counts"]["credits_on_account"].as_i64());
    Ok(Snapshot {
        tasks,
        outbox_pending: crate::db::outbox::pending_count(conn)?,
        outbox_oldest: cp_outbox::table
            .filter(cp_outbox::processed_at.is_null())
            .select(diesel::dsl::min(cp_outbox::enqueued_at))
            .first::<Option<NaiveDateTime>>(conn)?,
        unprocessed: cp_unprocessed::table
            .filter(cp_unprocessed::resolved_at.is_null())
            .count()
            .get_result(conn)?,
        held_pushes: links::refused(conn)?.len() as i64,
        credits_on_account,
        now,
    })
}

fn unix(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp()
}

/// One metric's HELP and TYPE lines, then its samples.
fn family(text: &mut String, name: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(text, "{name}{labels} {value}");
    }
}

fn task_label(task: &str) -> String {
    format!("{{task=\"{task}\"}}")
}

/// The file's text (Prometheus exposition format 0.0.4, gauges only).
pub fn render(snapshot: &Snapshot) -> String {
    let mut text = String::new();
    let latest = |f: &dyn Fn(&RunRecord) -> Option<String>| -> Vec<(String, String)> {
        snapshot
            .tasks
            .iter()
            .filter_map(|(task, run, _)| Some((task_label(task), f(run.as_ref()?)?)))
            .collect()
    };
    family(
        &mut text,
        "cpsync_last_run_start_timestamp_seconds",
        "When the latest run of the task started (Unix time).",
        &latest(&|r| Some(unix(r.started_at).to_string())),
    );
    family(
        &mut text,
        "cpsync_last_run_duration_seconds",
        "How long the latest finished run of the task took.",
        &latest(&|r| {
            r.finished_at.map(|f| {
                format!(
                    "{:.3}",
                    (f - r.started_at).num_milliseconds().max(0) as f64 / 1000.0
                )
            })
        }),
    );
    let mut statuses = Vec::new();
    for (task, run, _) in &snapshot.tasks {
        let Some(run) = run else { continue };
        for status in STATUSES {
            let value = u8::from(run.status == status);
            statuses.push((
                format!("{{task=\"{task}\",status=\"{status}\"}}"),
                value.to_string(),
            ));
        }
    }
    family(
        &mut text,
        "cpsync_last_run_status",
        "1 for the status of the task's latest run, 0 for the others.",
        &statuses,
    );
    let mut items = Vec::new();
    for (task, run, _) in &snapshot.tasks {
        let Some(run) = run else { continue };
        for (kind, count) in [
            ("corrected", run.corrected),
            ("needs_review", run.needs_review),
        ] {
            items.push((
                format!("{{task=\"{task}\",kind=\"{kind}\"}}"),
                count.to_string(),
            ));
        }
    }
    family(
        &mut text,
        "cpsync_last_run_items",
        "Items the task's latest run corrected or left for review.",
        &items,
    );
    let completed: Vec<(String, String)> = snapshot
        .tasks
        .iter()
        .filter_map(|(task, _, done)| {
            let done = done.as_ref()?;
            Some((
                task_label(task),
                unix(done.finished_at.unwrap_or(done.started_at)).to_string(),
            ))
        })
        .collect();
    family(
        &mut text,
        "cpsync_last_success_timestamp_seconds",
        "When the task last completed (succeeded, or needed review) (Unix time).",
        &completed,
    );
    let plain = |value: String| vec![(String::new(), value)];
    family(
        &mut text,
        "cpsync_outbox_pending_changes",
        "Fee changes waiting to be pushed to Community Pass.",
        &plain(snapshot.outbox_pending.to_string()),
    );
    let oldest = snapshot
        .outbox_oldest
        .map_or(0, |at| (snapshot.now - at).num_seconds().max(0));
    family(
        &mut text,
        "cpsync_outbox_oldest_age_seconds",
        "Age of the oldest waiting fee change (0 when none waits).",
        &plain(oldest.to_string()),
    );
    family(
        &mut text,
        "cpsync_unprocessed_records",
        "Community Pass records held, not posted, until a person or a later pull resolves them.",
        &plain(snapshot.unprocessed.to_string()),
    );
    family(
        &mut text,
        "cpsync_held_pushes",
        "Fee pushes Community Pass refused, held for a person.",
        &plain(snapshot.held_pushes.to_string()),
    );
    if let Some(credits) = snapshot.credits_on_account {
        family(
            &mut text,
            "cpsync_credits_on_account",
            "Families holding a credit both systems agree on, at the latest completed nightly.",
            &plain(credits.to_string()),
        );
    }
    family(
        &mut text,
        "cpsync_metrics_written_timestamp_seconds",
        "When cpsync wrote this file (Unix time).",
        &plain(unix(snapshot.now).to_string()),
    );
    text
}

/// Writes `cpsync.prom` into `dir` atomically (`files::write_atomic`).
/// The one file cpsync writes readable by others (0644): node_exporter's
/// textfile collector runs as its own user, and the file holds counts and
/// times only, never a name, an amount of one family or a secret.
pub fn write(conn: &mut DbConnection, dir: &Path, now: NaiveDateTime) -> anyhow::Result<()> {
    let text = render(&read(conn, now)?);
    let path = dir.join(METRICS_FILE);
    crate::files::write_atomic(&path, text.as_bytes(), crate::files::Readers::Everyone)
        .map_err(|error| anyhow::anyhow!("writing {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn run(task: &str, status: &str) -> RunRecord {
        RunRecord {
            id: 7,
            task: task.to_string(),
            trigger: "schedule".to_string(),
            started_at: at("2026-11-28 02:00:00"),
            finished_at: Some(at("2026-11-28 02:00:12")),
            status: status.to_string(),
            dry_run: false,
            records_in: 100,
            matched: 90,
            corrected: 3,
            needs_review: 2,
            summary_json: Some(r#"{"counts":{"credits_on_account":41}}"#.to_string()),
            error: None,
            pid: None,
            host: None,
        }
    }

    #[test]
    fn the_file_names_each_task_and_the_queues() {
        let nightly = run("nightly_sync", "needs_review");
        let snapshot = Snapshot {
            tasks: vec![
                ("nightly_sync", Some(nightly.clone()), Some(nightly)),
                ("send_fees", Some(run("send_fees", "failed")), None),
                ("watch", None, None),
            ],
            outbox_pending: 4,
            outbox_oldest: Some(at("2026-11-28 01:00:00")),
            unprocessed: 2,
            held_pushes: 1,
            credits_on_account: Some(41),
            now: at("2026-11-28 03:00:00"),
        };
        let text = render(&snapshot);
        for line in [
            "cpsync_last_run_start_timestamp_seconds{task=\"nightly_sync\"} 1795831200",
            "cpsync_last_run_duration_seconds{task=\"nightly_sync\"} 12.000",
            "cpsync_last_run_status{task=\"nightly_sync\",status=\"needs_review\"} 1",
            "cpsync_last_run_status{task=\"nightly_sync\",status=\"succeeded\"} 0",
            "cpsync_last_run_status{task=\"send_fees\",status=\"failed\"} 1",
            "cpsync_last_run_items{task=\"nightly_sync\",kind=\"corrected\"} 3",
            "cpsync_last_success_timestamp_seconds{task=\"nightly_sync\"} 1795831212",
            "cpsync_outbox_pending_changes 4",
            "cpsync_outbox_oldest_age_seconds 7200",
            "cpsync_unprocessed_records 2",
            "cpsync_held_pushes 1",
            "cpsync_credits_on_account 41",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            !text.contains("task=\"watch\""),
            "a task never run has no series"
        );
        assert!(
            !text.contains("cpsync_last_success_timestamp_seconds{task=\"send_fees\"}"),
            "a task that never completed has no success time"
        );
    }
}
