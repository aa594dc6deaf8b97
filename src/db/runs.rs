//! Run history (`cp_runs`): every task run is recorded when it starts and
//! completed with its outcome, counts and summary when it ends.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::schema::cp_runs;
use super::{DbConnection, DbError};

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
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::NeedsReview => "needs_review",
            RunStatus::Failed => "failed",
            RunStatus::NotConverged => "not_converged",
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
}

/// Records that a run of `task` has started; returns its run id.
pub fn start_run(
    conn: &mut DbConnection,
    task: &str,
    trigger: &str,
    dry_run: bool,
    now: NaiveDateTime,
) -> Result<i64, DbError> {
    let id = diesel::insert_into(cp_runs::table)
        .values(&NewRun {
            task,
            trigger,
            started_at: now,
            status: RunStatus::Running.as_str(),
            dry_run,
        })
        .returning(cp_runs::id)
        .get_result(conn)?;
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
