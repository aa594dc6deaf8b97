//! Nightly marks (`cp_nightly_marks`): where each completed nightly run over
//! the whole district started reading, so the next `--incremental` run
//! examines only what changed since; and the outbox position they hold.
//!
//! The outbox position is exact, not a clock: the highest outbox id read,
//! plus the ids below it that were not visible then. On PostgreSQL a
//! transaction can take id 99, stay open while id 100 commits, and commit
//! after the mark was taken; id 99 is then a gap, and the next run reads it.

use std::collections::BTreeSet;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::discrepancies::Outcome;
use super::schema::{cp_discrepancies, cp_nightly_marks, cp_outbox};
use super::{DbConnection, DbError};
use crate::domain::{FeeId, StudentId};

/// The outcomes that leave an item open for the next run.
const OPEN_OUTCOMES: [Outcome; 4] = [
    Outcome::NeedsReview,
    Outcome::Failed,
    Outcome::NotConverged,
    Outcome::CreditOnAccount,
];

/// How far below the highest outbox id a run looks for ids not visible yet
/// (the changes of Genesis transactions still open), when it has no mark.
pub const OUTBOX_GAP_WINDOW: i64 = 10_000;

/// The most gaps a mark keeps (the oldest go first): an id whose
/// transaction rolled back never appears, and must not pile up forever.
pub const OUTBOX_GAPS_MAX: usize = 10_000;

/// How a nightly run covered the district.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Full,
    Incremental,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Full => "full",
            Coverage::Incremental => "incremental",
        }
    }

    fn parse(text: &str) -> Result<Coverage, DbError> {
        match text {
            "full" => Ok(Coverage::Full),
            "incremental" => Ok(Coverage::Incremental),
            other => Err(invalid("coverage", format!("unknown coverage {other:?}"))),
        }
    }
}

fn invalid(key: &str, reason: String) -> DbError {
    DbError::InvalidRow {
        table: "cp_nightly_marks",
        key: key.to_string(),
        reason,
    }
}

/// Where the outbox stood when a run read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxPosition {
    /// The highest id read.
    pub last_id: i64,
    /// Ids below `last_id` not visible then, ascending.
    pub gaps: Vec<i64>,
}

/// What a completed run had read when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightlyMark {
    pub run_id: i64,
    pub coverage: Coverage,
    pub outbox: OutboxPosition,
    /// Community Pass's clock before the fee listing.
    pub vendor_as_of: NaiveDateTime,
    /// The last transaction sequence the run read.
    pub txn_sequence: i64,
    /// The sending policy and account the run judged under.
    pub policy_fingerprint: String,
    /// The latest full run this mark descends from (itself when full).
    pub full_run_id: i64,
    pub created_at: NaiveDateTime,
}

#[derive(Queryable, Insertable)]
#[diesel(table_name = cp_nightly_marks)]
struct MarkRow {
    run_id: i64,
    coverage: String,
    outbox_id: i64,
    outbox_gaps: String,
    vendor_as_of: NaiveDateTime,
    txn_sequence: i64,
    policy_fingerprint: String,
    full_run_id: i64,
    created_at: NaiveDateTime,
}

/// Records the mark of a completed run (once per run).
pub fn record(conn: &mut DbConnection, mark: &NightlyMark) -> Result<(), DbError> {
    let row = MarkRow {
        run_id: mark.run_id,
        coverage: mark.coverage.as_str().to_string(),
        outbox_id: mark.outbox.last_id,
        outbox_gaps: serde_json::to_string(&mark.outbox.gaps).expect("ids serialise"),
        vendor_as_of: mark.vendor_as_of,
        txn_sequence: mark.txn_sequence,
        policy_fingerprint: mark.policy_fingerprint.clone(),
        full_run_id: mark.full_run_id,
        created_at: mark.created_at,
    };
    crate::with_backend!(conn, |c| diesel::insert_into(cp_nightly_marks::table)
        .values(&row)
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// The mark of the latest completed run, if any.
pub fn latest(conn: &mut DbConnection) -> Result<Option<NightlyMark>, DbError> {
    let row: Option<MarkRow> = cp_nightly_marks::table
        .order(cp_nightly_marks::run_id.desc())
        .first(conn)
        .optional()?;
    row.map(|row| {
        let gaps: Vec<i64> = serde_json::from_str(&row.outbox_gaps)
            .map_err(|e| invalid("outbox_gaps", e.to_string()))?;
        Ok(NightlyMark {
            run_id: row.run_id,
            coverage: Coverage::parse(&row.coverage)?,
            outbox: OutboxPosition {
                last_id: row.outbox_id,
                gaps,
            },
            vendor_as_of: row.vendor_as_of,
            txn_sequence: row.txn_sequence,
            policy_fingerprint: row.policy_fingerprint,
            full_run_id: row.full_run_id,
            created_at: row.created_at,
        })
    })
    .transpose()
}

/// When the mark of run `run_id` was taken, if it exists.
pub fn taken_at(conn: &mut DbConnection, run_id: i64) -> Result<Option<NaiveDateTime>, DbError> {
    Ok(cp_nightly_marks::table
        .find(run_id)
        .select(cp_nightly_marks::created_at)
        .first(conn)
        .optional()?)
}

/// The outbox position now, for a run without a mark to start from: the
/// highest id, and the ids missing in the `OUTBOX_GAP_WINDOW` below it.
pub fn outbox_position(conn: &mut DbConnection) -> Result<OutboxPosition, DbError> {
    let last_id: Option<i64> = cp_outbox::table
        .select(diesel::dsl::max(cp_outbox::id))
        .first(conn)?;
    let last_id = last_id.unwrap_or(0);
    let floor = (last_id - OUTBOX_GAP_WINDOW).max(0);
    let present: Vec<i64> = cp_outbox::table
        .filter(cp_outbox::id.gt(floor))
        .select(cp_outbox::id)
        .load(conn)?;
    Ok(OutboxPosition {
        last_id,
        gaps: missing_ids(floor, last_id, &present, &[]),
    })
}

/// The fees of the outbox rows that appeared since `position` (above its
/// last id, or filling one of its gaps), ascending, and the position after
/// reading them.
pub fn outbox_changes_since(
    conn: &mut DbConnection,
    position: &OutboxPosition,
) -> Result<(Vec<FeeId>, OutboxPosition), DbError> {
    let mut rows: Vec<(i64, i64)> = cp_outbox::table
        .filter(cp_outbox::id.gt(position.last_id))
        .select((cp_outbox::id, cp_outbox::fee_id))
        .load(conn)?;
    for chunk in position.gaps.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let filled: Vec<(i64, i64)> = cp_outbox::table
            .filter(cp_outbox::id.eq_any(chunk))
            .select((cp_outbox::id, cp_outbox::fee_id))
            .load(conn)?;
        rows.extend(filled);
    }
    let last_id = rows
        .iter()
        .map(|(id, _)| *id)
        .fold(position.last_id, i64::max);
    let present: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let gaps = missing_ids(position.last_id, last_id, &present, &position.gaps);
    let fees: BTreeSet<FeeId> = rows.iter().map(|(_, fee)| FeeId(*fee)).collect();
    Ok((fees.into_iter().collect(), OutboxPosition { last_id, gaps }))
}

/// The ids in `(after, up_to]` and among `earlier_gaps` that are not in
/// `present`, ascending, at most `OUTBOX_GAPS_MAX` (the highest kept).
fn missing_ids(after: i64, up_to: i64, present: &[i64], earlier_gaps: &[i64]) -> Vec<i64> {
    let present: BTreeSet<i64> = present.iter().copied().collect();
    let candidates = earlier_gaps.iter().copied().chain(after + 1..=up_to);
    let missing: BTreeSet<i64> = candidates.filter(|id| !present.contains(id)).collect();
    let skip = missing.len().saturating_sub(OUTBOX_GAPS_MAX);
    missing.into_iter().skip(skip).collect()
}

/// The items a run left open (needing review, or failed): the fees they
/// name, and the students of those that name no fee.
pub fn open_items(
    conn: &mut DbConnection,
    run_id: i64,
) -> Result<(Vec<FeeId>, Vec<StudentId>), DbError> {
    let rows: Vec<(Option<i64>, Option<i64>)> = cp_discrepancies::table
        .filter(cp_discrepancies::run_id.eq(run_id))
        .filter(cp_discrepancies::resolution.eq_any(OPEN_OUTCOMES.map(Outcome::as_str)))
        .select((cp_discrepancies::fee_id, cp_discrepancies::student_id))
        .load(conn)?;
    let fees: BTreeSet<FeeId> = rows.iter().filter_map(|(fee, _)| fee.map(FeeId)).collect();
    let students: BTreeSet<StudentId> = rows
        .iter()
        .filter(|(fee, _)| fee.is_none())
        .filter_map(|(_, student)| student.map(StudentId))
        .collect();
    Ok((fees.into_iter().collect(), students.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ids_are_new_gaps_and_unfilled_old_ones() {
        assert_eq!(
            missing_ids(10, 15, &[11, 13, 15, 7], &[4, 7]),
            vec![4, 12, 14]
        );
        assert_eq!(missing_ids(10, 10, &[], &[]), Vec::<i64>::new());
        assert_eq!(missing_ids(0, 3, &[1, 2, 3], &[]), Vec::<i64>::new());
    }

    #[test]
    fn gaps_are_capped_keeping_the_newest() {
        let cap = OUTBOX_GAPS_MAX as i64;
        let gaps = missing_ids(0, cap + 5, &[], &[]);
        assert_eq!(gaps.len(), OUTBOX_GAPS_MAX);
        assert_eq!(gaps.first(), Some(&6));
        assert_eq!(gaps.last(), Some(&(cap + 5)));
    }
}
