//! The outbox (`cp_outbox`): fee changes waiting to be pushed. Rows are
//! written by triggers (or by `enqueue`) and completed once handled.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_outbox;
use super::{DbConnection, DbError};
use crate::domain::FeeId;

/// One pending change.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = cp_outbox)]
pub struct OutboxEntry {
    pub id: i64,
    pub fee_id: i64,
    pub reason: String,
    pub enqueued_at: NaiveDateTime,
    pub attempts: i32,
}

/// The oldest pending entries, at most `limit`.
pub fn pending(conn: &mut DbConnection, limit: i64) -> Result<Vec<OutboxEntry>, DbError> {
    pending_after(conn, 0, limit)
}

/// The oldest pending entries after entry `after_id` (a drain's position:
/// the entries it already took, completed or failed, are not read again,
/// nor the index entries of the ones completed before).
pub fn pending_after(
    conn: &mut DbConnection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<OutboxEntry>, DbError> {
    Ok(cp_outbox::table
        .filter(cp_outbox::processed_at.is_null())
        .filter(cp_outbox::id.gt(after_id))
        .order(cp_outbox::id)
        .limit(limit)
        .select(OutboxEntry::as_select())
        .load(conn)?)
}

/// How many entries wait.
pub fn pending_count(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(cp_outbox::table
        .filter(cp_outbox::processed_at.is_null())
        .count()
        .get_result(conn)?)
}

/// Marks entries handled (pushed, or skipped with a note saying why).
pub fn complete(
    conn: &mut DbConnection,
    ids: &[i64],
    note: Option<&str>,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        diesel::update(cp_outbox::table.filter(cp_outbox::id.eq_any(chunk)))
            .set((
                cp_outbox::processed_at.eq(now),
                cp_outbox::last_error.eq(note),
                cp_outbox::run_id.eq(run_id),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Records a failed attempt; the entry stays pending for the next run.
pub fn record_failure(
    conn: &mut DbConnection,
    ids: &[i64],
    error: &str,
    run_id: i64,
) -> Result<(), DbError> {
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        diesel::update(cp_outbox::table.filter(cp_outbox::id.eq_any(chunk)))
            .set((
                cp_outbox::attempts.eq(cp_outbox::attempts + 1),
                cp_outbox::last_error.eq(error),
                cp_outbox::run_id.eq(run_id),
            ))
            .execute(conn)?;
    }
    Ok(())
}

#[derive(Insertable)]
#[diesel(table_name = cp_outbox)]
struct NewEntry<'a> {
    fee_id: i64,
    reason: &'a str,
    enqueued_at: NaiveDateTime,
}

/// Enqueues fees by hand (cutoff set, resend); returns how many.
pub fn enqueue(
    conn: &mut DbConnection,
    fee_ids: &[FeeId],
    reason: &str,
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    let rows: Vec<NewEntry> = fee_ids
        .iter()
        .map(|f| NewEntry {
            fee_id: f.0,
            reason,
            enqueued_at: now,
        })
        .collect();
    insert_batched!(conn, cp_outbox::table, rows)
}

/// The most outbox entries a fee's history shows (the newest are kept).
pub const HISTORY_ROWS_MAX: i64 = 10_000;

/// One outbox entry, handled or not, as a fee's history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = cp_outbox)]
pub struct OutboxRecord {
    pub id: i64,
    pub fee_id: i64,
    pub reason: String,
    pub enqueued_at: NaiveDateTime,
    pub processed_at: Option<NaiveDateTime>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub run_id: Option<i64>,
}

/// Every outbox entry of one fee (at most `HISTORY_ROWS_MAX`, the newest),
/// oldest first.
pub fn for_fee(conn: &mut DbConnection, fee_id: FeeId) -> Result<Vec<OutboxRecord>, DbError> {
    let mut rows: Vec<OutboxRecord> = cp_outbox::table
        .filter(cp_outbox::fee_id.eq(fee_id.0))
        .order(cp_outbox::id.desc())
        .limit(HISTORY_ROWS_MAX)
        .select(OutboxRecord::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}
