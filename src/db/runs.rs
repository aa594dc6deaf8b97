//! Run history (`cp_runs`): every task run is recorded when it starts (with
//! the pid and host running it) and completed with its outcome, counts and
//! summary when it ends. A run left `running` by a process that is gone is
//! marked `interrupted` by the next command that looks (`mark_interrupted`).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::owner;
use super::schema::cp_runs;
use super::{DbConnection, DbError};

/// The most abandoned runs one look marks interrupted (the rest next time).
pub const INTERRUPTED_PER_LOOK_MAX: i64 = 1_000;

/// The status a run ends with, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    NeedsReview,
    Failed,
    /// Corrections were applied but a re-read still finds differences.
    NotConverged,
    /// The process running it went away without finishing it.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::NeedsReview => "needs_review",
            RunStatus::Failed => "failed",
            RunStatus::NotConverged => "not_converged",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = cp_runs)]
struct NewRun<'a> {
    task: &'a str,
    trigger: &'a str,
    started_at: NaiveDateTime,
    status: &'a str,
    dry_run: bool,
    pid: i64,
    host: &'a str,
}

/// The counts a finished run stores beside its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub records_in: i64,
    pub matched: i64,
    pub corrected: i64,
    pub needs_review: i64,
}

/// One row of run history.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = cp_runs)]
pub struct RunRecord {
    pub id: i64,
    pub task: String,
    pub trigger: String,
    pub started_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
    pub status: String,
    pub dry_run: bool,
    pub records_in: i64,
    pub matched: i64,
    pub corrected: i64,
    pub needs_review: i64,
    pub summary_json: Option<String>,
    pub error: Option<String>,
    /// The process that ran it (absent for runs recorded before 0.1's
    /// run-owner migration).
    pub pid: Option<i64>,
    pub host: Option<String>,
}

/// Records that a run of `task` has started; returns its run id.
pub fn start_run(
    conn: &mut DbConnection,
    task: &str,
    trigger: &str,
    dry_run: bool,
    now: NaiveDateTime,
) -> Result<i64, DbError> {
    let host = owner::host_name();
    let id = diesel::insert_into(cp_runs::table)
        .values(&NewRun {
            task,
            trigger,
            started_at: now,
            status: RunStatus::Running.as_str(),
            dry_run,
            pid: owner::own_pid(),
            host: &host,
        })
        .returning(cp_runs::id)
        .get_result(conn)?;
    crate::failpoint::operation("run started");
    Ok(id)
}

/// Completes a run with its final status, counts, summary and error text.
pub fn finish_run(
    conn: &mut DbConnection,
    run_id: i64,
    status: RunStatus,
    counts: &RunCounts,
    summary_json: Option<&str>,
    error: Option<&str>,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    diesel::update(cp_runs::table.find(run_id))
        .set((
            cp_runs::finished_at.eq(Some(now)),
            cp_runs::status.eq(status.as_str()),
            cp_runs::records_in.eq(counts.records_in),
            cp_runs::matched.eq(counts.matched),
            cp_runs::corrected.eq(counts.corrected),
            cp_runs::needs_review.eq(counts.needs_review),
            cp_runs::summary_json.eq(summary_json),
            cp_runs::error.eq(error),
        ))
        .execute(conn)?;
    crate::failpoint::operation("run finished");
    Ok(())
}

/// Records on a finished run that its report could not be written
/// (`stage` "report") or its email not sent (`stage` "mail"): the run's
/// `error` says "report failed: …" / "mail failed: …", and its summary
/// gains `report_failure` with the stage and the reason. The run's status
/// (what the reconciliation found) is left as it was.
pub fn note_report_failure(
    conn: &mut DbConnection,
    run_id: i64,
    stage: &str,
    reason: &str,
) -> Result<(), DbError> {
    let stored: Option<Option<String>> = cp_runs::table
        .find(run_id)
        .select(cp_runs::summary_json)
        .first(conn)
        .optional()?;
    let mut summary: serde_json::Value = stored
        .flatten()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    summary["report_failure"] = serde_json::json!({"stage": stage, "reason": reason});
    diesel::update(cp_runs::table.find(run_id))
        .set((
            cp_runs::error.eq(Some(format!("{stage} failed: {reason}"))),
            cp_runs::summary_json.eq(Some(summary.to_string())),
        ))
        .execute(conn)?;
    Ok(())
}

/// The most recent runs, newest first, optionally of one task only.
pub fn recent_runs(
    conn: &mut DbConnection,
    task: Option<&str>,
    limit: i64,
) -> Result<Vec<RunRecord>, DbError> {
    let mut query = cp_runs::table
        .select(RunRecord::as_select())
        .order(cp_runs::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(task) = task {
        query = query.filter(cp_runs::task.eq(task.to_string()));
    }
    Ok(query.load(conn)?)
}

/// Marks `interrupted` every run still `running` whose process on this
/// host is gone (its pid free, or reused by a process started later);
/// returns the ids marked. Runs of other hosts are left alone: this host
/// cannot see their processes.
pub fn mark_interrupted(conn: &mut DbConnection, now: NaiveDateTime) -> Result<Vec<i64>, DbError> {
    let host = owner::host_name();
    let running: Vec<(i64, i64, NaiveDateTime)> = cp_runs::table
        .filter(cp_runs::status.eq(RunStatus::Running.as_str()))
        .filter(cp_runs::host.eq(&host))
        .filter(cp_runs::pid.is_not_null())
        .select((
            cp_runs::id,
            cp_runs::pid.assume_not_null(),
            cp_runs::started_at,
        ))
        .order(cp_runs::id)
        .limit(INTERRUPTED_PER_LOOK_MAX)
        .load(conn)?;
    let mut marked = Vec::new();
    for (id, pid, started_at) in running {
        let found = owner::liveness(&host, pid, started_at);
        if !found.gone() {
            continue;
        }
        let error = format!(
            "interrupted: the run never finished; {}",
            found.describe(pid)
        );
        let updated = diesel::update(
            cp_runs::table
                .find(id)
                .filter(cp_runs::status.eq(RunStatus::Running.as_str())),
        )
        .set((
            cp_runs::status.eq(RunStatus::Interrupted.as_str()),
            cp_runs::finished_at.eq(Some(now)),
            cp_runs::error.eq(Some(error)),
        ))
        .execute(conn)?;
        if updated == 1 {
            tracing::warn!(
                run_id = id,
                pid,
                "marked a run left running by a gone process as interrupted"
            );
            marked.push(id);
        }
    }
    Ok(marked)
}
