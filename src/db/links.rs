//! Fee links (`cp_fee_links`): the integration's record of each fee it
//! created in Community Pass: the vendor id, what was last pushed, the
//! idempotency key of the push in flight, and the amount lock.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_fee_links;
use super::{DbConnection, DbError};
use crate::domain::{FeeId, FeePush, VendorTxnId};
use crate::money::Money;
use crate::portal::UpsertOutcome;
use crate::reconcile::FeeLink;

#[derive(Queryable, Selectable)]
#[diesel(table_name = cp_fee_links)]
struct LinkRow {
    fee_id: i64,
    vendor_fee_id: Option<String>,
    pushed_amount_cents: Option<i64>,
    pushed_status: Option<String>,
    pushed_credit_cents: Option<i64>,
    amount_locked: bool,
}

/// What the fee-history view shows of a link.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = cp_fee_links)]
pub struct LinkDetail {
    pub fee_id: i64,
    pub vendor_fee_id: Option<String>,
    pub first_sent_at: Option<NaiveDateTime>,
    pub last_pushed_at: Option<NaiveDateTime>,
    pub pushed_amount_cents: Option<i64>,
    pub pushed_status: Option<String>,
    pub pushed_credit_cents: Option<i64>,
    pub last_idempotency_key: Option<String>,
    pub amount_locked: bool,
    pub locked_at: Option<NaiveDateTime>,
    pub locked_by_vendor_txn: Option<String>,
    pub last_run_id: Option<i64>,
}

impl LinkRow {
    fn into_link(self) -> Result<FeeLink, DbError> {
        let invalid = |reason: String| DbError::InvalidRow {
            table: "cp_fee_links",
            key: self.fee_id.to_string(),
            reason,
        };
        let pushed_status = match &self.pushed_status {
            Some(code) => Some(code.parse().map_err(|e| invalid(format!("{e}")))?),
            None => None,
        };
        Ok(FeeLink {
            fee_id: FeeId(self.fee_id),
            vendor_fee_id: self.vendor_fee_id,
            pushed_amount: self.pushed_amount_cents.map(Money::from_cents),
            pushed_status,
            pushed_credit: self.pushed_credit_cents.map(Money::from_cents),
            amount_locked: self.amount_locked,
        })
    }
}

/// Every link, ordered by fee id.
pub fn load_all(conn: &mut DbConnection) -> Result<Vec<FeeLink>, DbError> {
    let rows: Vec<LinkRow> = crate::with_backend!(conn, |c| cp_fee_links::table
        .select(LinkRow::as_select())
        .order(cp_fee_links::fee_id)
        .load(c))?;
    rows.into_iter().map(LinkRow::into_link).collect()
}

/// The links of these fees.
pub fn load_for(conn: &mut DbConnection, fee_ids: &[FeeId]) -> Result<Vec<FeeLink>, DbError> {
    let mut links = Vec::new();
    for chunk in fee_ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let ids: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<LinkRow> = cp_fee_links::table
            .filter(cp_fee_links::fee_id.eq_any(ids))
            .select(LinkRow::as_select())
            .order(cp_fee_links::fee_id)
            .load(conn)?;
        for row in rows {
            links.push(row.into_link()?);
        }
    }
    Ok(links)
}

/// The full link row of one fee, for its history.
pub fn detail(conn: &mut DbConnection, fee_id: FeeId) -> Result<Option<LinkDetail>, DbError> {
    Ok(cp_fee_links::table
        .find(fee_id.0)
        .select(LinkDetail::as_select())
        .first(conn)
        .optional()?)
}

/// Creates the link row of a fee if it does not exist yet.
fn ensure(conn: &mut DbConnection, fee_id: FeeId) -> Result<(), DbError> {
    crate::with_backend!(conn, |c| diesel::insert_into(cp_fee_links::table)
        .values(cp_fee_links::fee_id.eq(fee_id.0))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// Records the idempotency key of a push before it is sent, so a push cut
/// off by a crash is retried with the same key.
pub fn record_push_intent(
    conn: &mut DbConnection,
    fee_id: FeeId,
    idempotency_key: &str,
    run_id: i64,
) -> Result<(), DbError> {
    ensure(conn, fee_id)?;
    diesel::update(cp_fee_links::table.find(fee_id.0))
        .set((
            cp_fee_links::last_idempotency_key.eq(idempotency_key),
            cp_fee_links::last_run_id.eq(run_id),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records what Community Pass acknowledged for a push.
pub fn record_push_outcome(
    conn: &mut DbConnection,
    push: &FeePush,
    outcome: &UpsertOutcome,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    ensure(conn, push.genesis_fee_id)?;
    let row = cp_fee_links::table.find(push.genesis_fee_id.0);
    diesel::update(row)
        .set((
            cp_fee_links::vendor_fee_id.eq(&outcome.vendor_fee_id),
            cp_fee_links::last_pushed_at.eq(now),
            cp_fee_links::pushed_amount_cents.eq(push.amount.cents()),
            cp_fee_links::pushed_status.eq(push.status.as_str()),
            cp_fee_links::pushed_credit_cents.eq(push.genesis_credit.cents()),
            cp_fee_links::last_run_id.eq(run_id),
        ))
        .execute(conn)?;
    diesel::update(row.filter(cp_fee_links::first_sent_at.is_null()))
        .set(cp_fee_links::first_sent_at.eq(now))
        .execute(conn)?;
    Ok(())
}

/// Records the vendor id of a fee whose push was sent (its intent is
/// recorded) but whose answer never was (the run was cut off). Returns
/// whether the link changed; a link already acknowledged is left alone.
pub fn adopt_vendor_id(
    conn: &mut DbConnection,
    fee_id: FeeId,
    vendor_fee_id: &str,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let changed = diesel::update(
        cp_fee_links::table
            .find(fee_id.0)
            .filter(cp_fee_links::vendor_fee_id.is_null())
            .filter(cp_fee_links::last_idempotency_key.is_not_null()),
    )
    .set((
        cp_fee_links::vendor_fee_id.eq(vendor_fee_id),
        cp_fee_links::first_sent_at.eq(now),
        cp_fee_links::last_run_id.eq(run_id),
    ))
    .execute(conn)?;
    Ok(changed > 0)
}

/// Marks fees' amounts read-only because Community Pass applied a payment.
/// Returns the fees newly locked (an existing lock is left as it was).
pub fn lock_amounts(
    conn: &mut DbConnection,
    locks: &[(FeeId, Option<VendorTxnId>)],
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Vec<FeeId>, DbError> {
    let mut newly_locked = Vec::new();
    for (fee_id, by_txn) in locks {
        ensure(conn, *fee_id)?;
        let changed = diesel::update(
            cp_fee_links::table
                .find(fee_id.0)
                .filter(cp_fee_links::amount_locked.eq(false)),
        )
        .set((
            cp_fee_links::amount_locked.eq(true),
            cp_fee_links::locked_at.eq(now),
            cp_fee_links::locked_by_vendor_txn.eq(by_txn.as_ref().map(|t| t.0.as_str())),
            cp_fee_links::last_run_id.eq(run_id),
        ))
        .execute(conn)?;
        if changed > 0 {
            newly_locked.push(*fee_id);
        }
    }
    Ok(newly_locked)
}
