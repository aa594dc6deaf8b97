//! The review queue (`cp_review_items`): the stored side of `review`'s
//! rules. `apply_run` writes one nightly run's `review::QueueUpdate` (call
//! it inside the transaction that records the run's discrepancies);
//! `list`, `get`, `by_keys` read; `person_acts` records an
//! acknowledgement or a resolution.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::schema::cp_review_items;
use super::{DbConnection, DbError};
use crate::domain::FeeId;
use crate::money::Money;
use crate::reconcile::Discrepancy;
use crate::review::{self, ItemState, PersonAction, QueueItem, Reach, ReviewError};

/// The most items one listing returns.
pub const LIST_ROWS_MAX: i64 = 10_000;

/// One stored review item.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = cp_review_items)]
pub struct ReviewItem {
    pub id: i64,
    pub item_key: String,
    pub kind: String,
    pub fee_id: Option<i64>,
    pub student_id: Option<i64>,
    pub vendor_txn_id: Option<String>,
    pub state: String,
    pub at_stake_cents: i64,
    pub reason: Option<String>,
    pub genesis_value: Option<String>,
    pub cp_value: Option<String>,
    pub first_seen_run: i64,
    pub first_seen_at: NaiveDateTime,
    pub last_seen_run: i64,
    pub last_seen_at: NaiveDateTime,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<NaiveDateTime>,
    pub acknowledged_note: Option<String>,
    pub resolved_run: Option<i64>,
    pub resolved_at: Option<NaiveDateTime>,
    pub resolved_by: Option<String>,
    pub resolved_note: Option<String>,
}

impl ReviewItem {
    pub fn item_state(&self) -> ItemState {
        ItemState::parse(&self.state).unwrap_or(ItemState::Open)
    }

    pub fn at_stake(&self) -> Money {
        Money::from_cents(self.at_stake_cents)
    }
}

#[derive(Insertable)]
#[diesel(table_name = cp_review_items)]
struct NewItem<'a> {
    item_key: &'a str,
    kind: &'a str,
    fee_id: Option<i64>,
    student_id: Option<i64>,
    vendor_txn_id: Option<&'a str>,
    state: &'a str,
    at_stake_cents: i64,
    reason: Option<&'a str>,
    genesis_value: Option<&'a str>,
    cp_value: Option<&'a str>,
    first_seen_run: i64,
    first_seen_at: NaiveDateTime,
    last_seen_run: i64,
    last_seen_at: NaiveDateTime,
}

/// The item key of a discrepancy.
pub fn key_of(discrepancy: &Discrepancy) -> String {
    review::item_key(
        discrepancy.fee_id,
        discrepancy.kind.as_str(),
        discrepancy.vendor_txn_id.as_ref(),
    )
}

fn reason_of(discrepancy: &Discrepancy) -> Option<&str> {
    match &discrepancy.resolution {
        crate::reconcile::Resolution::NeedsReview { reason, .. } => Some(reason.as_str()),
        crate::reconcile::Resolution::Planned(_) => None,
    }
}

/// Every stored item (any state), as the rules need them.
fn all_for_rules(conn: &mut DbConnection) -> Result<Vec<QueueItem>, DbError> {
    let rows: Vec<(i64, String, Option<i64>, String)> = cp_review_items::table
        .select((
            cp_review_items::id,
            cp_review_items::item_key,
            cp_review_items::fee_id,
            cp_review_items::state,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, key, fee_id, state)| QueueItem {
            id,
            key,
            fee_id: fee_id.map(FeeId),
            state: ItemState::parse(&state).unwrap_or(ItemState::Open),
        })
        .collect())
}

/// Brings the queue up to date with one whole-district, non-dry run: the
/// run's `sighted` discrepancies (those needing a person, credits
/// included) are inserted or marked seen, the unresolved items within
/// `reach` it no longer found are resolved automatically with the run.
/// Returns how many items were resolved.
pub fn apply_run(
    conn: &mut DbConnection,
    run_id: i64,
    sighted: &[&Discrepancy],
    reach: &Reach,
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    let existing = all_for_rules(conn)?;
    let keys: Vec<String> = sighted.iter().map(|d| key_of(d)).collect();
    let update = review::plan_update(&existing, &keys, reach);
    let by_key: std::collections::BTreeMap<&str, &Discrepancy> = keys
        .iter()
        .map(String::as_str)
        .zip(sighted.iter().copied())
        .collect();
    let rows: Vec<NewItem> = update
        .inserts
        .iter()
        .map(|key| {
            let d = by_key[key.as_str()];
            NewItem {
                item_key: key,
                kind: d.kind.as_str(),
                fee_id: d.fee_id.map(|f| f.0),
                student_id: d.student_id.map(|s| s.0),
                vendor_txn_id: d.vendor_txn_id.as_ref().map(|v| v.0.as_str()),
                state: ItemState::New.as_str(),
                at_stake_cents: d.at_stake.cents(),
                reason: reason_of(d),
                genesis_value: d.genesis_value.as_deref(),
                cp_value: d.cp_value.as_deref(),
                first_seen_run: run_id,
                first_seen_at: now,
                last_seen_run: run_id,
                last_seen_at: now,
            }
        })
        .collect();
    let inserted: Result<usize, DbError> = insert_batched!(conn, cp_review_items::table, rows);
    inserted?;
    let keys_by_id: std::collections::BTreeMap<i64, &str> =
        existing.iter().map(|i| (i.id, i.key.as_str())).collect();
    for (id, state) in &update.seen {
        let d = by_key[keys_by_id[id]];
        let reopened = *state == ItemState::Open;
        let target = cp_review_items::table.find(id);
        diesel::update(target)
            .set((
                cp_review_items::state.eq(state.as_str()),
                cp_review_items::at_stake_cents.eq(d.at_stake.cents()),
                cp_review_items::reason.eq(reason_of(d)),
                cp_review_items::genesis_value.eq(d.genesis_value.as_deref()),
                cp_review_items::cp_value.eq(d.cp_value.as_deref()),
                cp_review_items::last_seen_run.eq(run_id),
                cp_review_items::last_seen_at.eq(now),
            ))
            .execute(conn)?;
        if reopened {
            // An item that came back is no longer resolved.
            diesel::update(target)
                .set((
                    cp_review_items::resolved_run.eq(None::<i64>),
                    cp_review_items::resolved_at.eq(None::<NaiveDateTime>),
                ))
                .execute(conn)?;
        }
    }
    for chunk in update.resolved.chunks(500) {
        diesel::update(cp_review_items::table.filter(cp_review_items::id.eq_any(chunk)))
            .set((
                cp_review_items::state.eq(ItemState::ResolvedAutomatically.as_str()),
                cp_review_items::resolved_run.eq(Some(run_id)),
                cp_review_items::resolved_at.eq(Some(now)),
            ))
            .execute(conn)?;
    }
    Ok(update.resolved.len())
}

/// The stored items with these keys (any state).
pub fn by_keys(conn: &mut DbConnection, keys: &[String]) -> Result<Vec<ReviewItem>, DbError> {
    let mut items = Vec::new();
    for chunk in keys.chunks(500) {
        items.extend(
            cp_review_items::table
                .filter(cp_review_items::item_key.eq_any(chunk))
                .select(ReviewItem::as_select())
                .load(conn)?,
        );
    }
    Ok(items)
}

/// Items resolved (automatically or by a person) after `since`.
pub fn resolved_since(
    conn: &mut DbConnection,
    since: NaiveDateTime,
) -> Result<Vec<ReviewItem>, DbError> {
    Ok(cp_review_items::table
        .filter(cp_review_items::resolved_at.gt(since))
        .order(cp_review_items::id)
        .limit(LIST_ROWS_MAX)
        .select(ReviewItem::as_select())
        .load(conn)?)
}

/// What `list` shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only items first seen by the latest run that changed the queue.
    pub new_only: bool,
    pub kind: Option<String>,
    /// Resolved items too.
    pub all: bool,
}

/// Items, oldest first (unresolved only unless `filter.all`).
pub fn list(conn: &mut DbConnection, filter: &ListFilter) -> Result<Vec<ReviewItem>, DbError> {
    let mut query = cp_review_items::table
        .select(ReviewItem::as_select())
        .order((cp_review_items::first_seen_at, cp_review_items::id))
        .limit(LIST_ROWS_MAX)
        .into_boxed();
    if filter.new_only {
        query = query.filter(cp_review_items::state.eq(ItemState::New.as_str()));
    } else if !filter.all {
        let open: Vec<&str> = ItemState::ALL
            .into_iter()
            .filter(|s| s.is_unresolved())
            .map(ItemState::as_str)
            .collect();
        query = query.filter(cp_review_items::state.eq_any(open));
    }
    if let Some(kind) = &filter.kind {
        query = query.filter(cp_review_items::kind.eq(kind.clone()));
    }
    Ok(query.load(conn)?)
}

/// One item by id.
pub fn get(conn: &mut DbConnection, id: i64) -> Result<Option<ReviewItem>, DbError> {
    Ok(cp_review_items::table
        .find(id)
        .select(ReviewItem::as_select())
        .first(conn)
        .optional()?)
}

/// Why a person's action was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("there is no review item {0}")]
    NotFound(i64),
    #[error(transparent)]
    Refused(#[from] ReviewError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ActError {
    fn from(error: diesel::result::Error) -> ActError {
        ActError::Db(error.into())
    }
}

/// Records a person's acknowledgement or resolution, checked against the
/// item's state in the same transaction.
pub fn person_acts(
    conn: &mut DbConnection,
    id: i64,
    action: PersonAction,
    by: &str,
    note: &str,
    now: NaiveDateTime,
) -> Result<ReviewItem, ActError> {
    super::write_transaction(conn, |conn| {
        let item = get(conn, id)?.ok_or(ActError::NotFound(id))?;
        let state = review::person_acts(id, item.item_state(), action, note)?;
        let target = cp_review_items::table.find(id);
        match action {
            PersonAction::Acknowledge => diesel::update(target)
                .set((
                    cp_review_items::state.eq(state.as_str()),
                    cp_review_items::acknowledged_by.eq(Some(by)),
                    cp_review_items::acknowledged_at.eq(Some(now)),
                    cp_review_items::acknowledged_note.eq(Some(note)),
                ))
                .execute(conn)?,
            PersonAction::Resolve => diesel::update(target)
                .set((
                    cp_review_items::state.eq(state.as_str()),
                    cp_review_items::resolved_by.eq(Some(by)),
                    cp_review_items::resolved_at.eq(Some(now)),
                    cp_review_items::resolved_note.eq(Some(note)),
                ))
                .execute(conn)?,
        };
        get(conn, id)?.ok_or(ActError::NotFound(id))
    })
}
