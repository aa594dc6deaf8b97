//! Posting Community Pass transactions into Genesis, exactly once each: the
//! insert skips any vendor transaction id Genesis already holds (the UNIQUE
//! constraint decides, so concurrent pulls cannot double-post), and each row
//! actually inserted gets an audit row with the run id. Transactions that
//! cannot be applied are parked in `cp_unprocessed` with the reason.

use std::collections::HashSet;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::audit::{self, AuditEntry, AuditSide};
use super::schema::{cp_unprocessed, fee_transactions};
use super::{DbConnection, DbError};
use crate::domain::{FeeId, TxnKind, TxnSource, VendorTxn, VendorTxnId};
use crate::money::Money;
use crate::portal::RejectedRecord;

/// The `kind` of a parked record that could not even be read (it breaks the
/// contract); such rows are shown to the office, never retried as postings.
pub const MALFORMED_KIND: &str = "malformed";

/// One Community Pass transaction as a Genesis row (`None` notes are NULL).
#[derive(Insertable)]
#[diesel(table_name = fee_transactions, treat_none_as_default_value = false)]
struct PostingRow<'a> {
    fee_id: i64,
    kind: &'a str,
    amount_cents: i64,
    method: &'a str,
    source: &'a str,
    vendor_txn_id: &'a str,
    posted_at: NaiveDateTime,
    note: Option<String>,
}

fn posting_row(fee_id: FeeId, txn: &VendorTxn) -> PostingRow<'_> {
    PostingRow {
        fee_id: fee_id.0,
        kind: txn.kind.as_str(),
        amount_cents: txn.amount.cents(),
        method: &txn.method,
        source: TxnSource::CommunityPass.as_str(),
        vendor_txn_id: &txn.id.0,
        posted_at: txn.occurred_at,
        note: txn
            .reverses
            .as_ref()
            .map(|r| format!("{} of Community Pass transaction {r}", txn.kind)),
    }
}

/// Which vendor transaction ids Genesis already holds, of these.
pub fn known_vendor_ids(
    conn: &mut DbConnection,
    ids: &[&VendorTxnId],
) -> Result<HashSet<VendorTxnId>, DbError> {
    let mut known = HashSet::new();
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let texts: Vec<&str> = chunk.iter().map(|id| id.0.as_str()).collect();
        let found: Vec<Option<String>> = fee_transactions::table
            .filter(fee_transactions::vendor_txn_id.eq_any(texts))
            .select(fee_transactions::vendor_txn_id)
            .load(conn)?;
        known.extend(found.into_iter().flatten().map(VendorTxnId));
    }
    Ok(known)
}

/// The fees on which Genesis holds any of these vendor transaction ids,
/// ascending, without repeats.
pub fn fees_posting(conn: &mut DbConnection, ids: &[&VendorTxnId]) -> Result<Vec<FeeId>, DbError> {
    let mut fees = Vec::new();
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let texts: Vec<&str> = chunk.iter().map(|id| id.0.as_str()).collect();
        let found: Vec<i64> = fee_transactions::table
            .filter(fee_transactions::vendor_txn_id.eq_any(texts))
            .select(fee_transactions::fee_id)
            .load(conn)?;
        fees.extend(found.into_iter().map(FeeId));
    }
    fees.sort();
    fees.dedup();
    Ok(fees)
}

/// Inserts the transactions not yet in Genesis; returns the ids inserted by
/// this call (the others were already there). Writes one audit row each.
/// Call inside a transaction to keep postings and audit together.
pub fn post(
    conn: &mut DbConnection,
    postings: &[(FeeId, &VendorTxn)],
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Vec<VendorTxnId>, DbError> {
    let mut inserted: Vec<VendorTxnId> = Vec::new();
    for chunk in postings.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let rows: Vec<PostingRow> = chunk.iter().map(|(f, t)| posting_row(*f, t)).collect();
        inserted.extend(insert_new(conn, &rows)?.into_iter().map(VendorTxnId));
    }
    let inserted_set: HashSet<&VendorTxnId> = inserted.iter().collect();
    let entries: Vec<AuditEntry> = postings
        .iter()
        .filter(|(_, t)| inserted_set.contains(&t.id))
        .map(|(fee_id, t)| AuditEntry {
            run_id,
            at: now,
            side: AuditSide::Genesis,
            entity: "fee",
            entity_id: fee_id.to_string(),
            action: format!("posted_{}", t.kind),
            detail: Some(format!(
                "Community Pass {} {} of ${} by {} at {}",
                t.kind, t.id, t.amount, t.method, t.occurred_at
            )),
        })
        .collect();
    audit::record(conn, &entries)?;
    Ok(inserted)
}

/// Inserts the rows whose vendor id Genesis does not hold yet; returns the
/// vendor ids inserted. PostgreSQL does it in one statement with RETURNING.
/// SQLite cannot: diesel runs a batch with RETURNING there as one
/// single-row statement each, and a row skipped by ON CONFLICT DO NOTHING
/// returns nothing, which diesel reports as "Record not found" (a pull that
/// met one already-posted transaction failed whole). So on SQLite each row
/// is inserted on its own and counted (SQLite has one writer at a time, so
/// the count is exact inside the caller's transaction).
fn insert_new(conn: &mut DbConnection, rows: &[PostingRow]) -> Result<Vec<String>, DbError> {
    match conn {
        DbConnection::Pg(c) => {
            let ids: Vec<Option<String>> = diesel::insert_into(fee_transactions::table)
                .values(rows)
                .on_conflict(fee_transactions::vendor_txn_id)
                .do_nothing()
                .returning(fee_transactions::vendor_txn_id)
                .get_results(c)?;
            Ok(ids.into_iter().flatten().collect())
        }
        DbConnection::Sqlite(c) => {
            let mut ids = Vec::new();
            use super::cached_sql::{bind, cached_sql};
            use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
            for row in rows {
                // Kept prepared: one parse for the whole pull.
                let count = cached_sql(
                    "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, \
                     vendor_txn_id, posted_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (vendor_txn_id) DO NOTHING",
                    (
                        bind::<BigInt, _>(row.fee_id),
                        bind::<Text, _>(row.kind),
                        bind::<BigInt, _>(row.amount_cents),
                        bind::<Text, _>(row.method),
                        bind::<Text, _>(row.source),
                        bind::<Nullable<Text>, _>(Some(row.vendor_txn_id)),
                        bind::<Timestamp, _>(row.posted_at),
                        bind::<Nullable<Text>, _>(row.note.as_deref()),
                    ),
                )
                .execute(c)?;
                if count == 1 {
                    ids.push(row.vendor_txn_id.to_string());
                }
            }
            Ok(ids)
        }
    }
}

/// A pulled transaction that could not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unprocessed {
    pub vendor_txn_id: String,
    pub fee_id: Option<i64>,
    pub student_id: Option<i64>,
    pub kind: String,
    pub amount: Money,
    pub occurred_at: NaiveDateTime,
    pub reason: String,
    pub first_seen_at: NaiveDateTime,
    pub last_seen_at: NaiveDateTime,
    pub resolved_at: Option<NaiveDateTime>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = cp_unprocessed)]
struct UnprocessedRow {
    vendor_txn_id: String,
    fee_id: Option<i64>,
    student_id: Option<i64>,
    kind: String,
    amount_cents: i64,
    occurred_at: NaiveDateTime,
    reason: String,
    first_seen_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
    resolved_at: Option<NaiveDateTime>,
}

/// Parks transactions that cannot be applied (new ones inserted, known ones
/// get their reason and last-seen time refreshed).
pub fn park(
    conn: &mut DbConnection,
    parked: &[(&VendorTxn, String)],
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    for (txn, reason) in parked {
        let payload = serde_json::to_string(txn).expect("a VendorTxn serialises");
        let refreshed = diesel::update(cp_unprocessed::table.find(&txn.id.0))
            .set((
                cp_unprocessed::reason.eq(reason),
                cp_unprocessed::last_seen_at.eq(now),
                cp_unprocessed::run_id.eq(run_id),
            ))
            .execute(conn)?;
        if refreshed > 0 {
            continue;
        }
        crate::with_backend!(conn, |c| diesel::insert_into(cp_unprocessed::table)
            .values((
                cp_unprocessed::vendor_txn_id.eq(&txn.id.0),
                cp_unprocessed::fee_id.eq(txn.genesis_fee_id.map(|f| f.0)),
                cp_unprocessed::student_id.eq(txn.student_id.map(|s| s.0)),
                cp_unprocessed::kind.eq(txn.kind.as_str()),
                cp_unprocessed::amount_cents.eq(txn.amount.cents()),
                cp_unprocessed::occurred_at.eq(txn.occurred_at),
                cp_unprocessed::reason.eq(reason),
                cp_unprocessed::payload.eq(&payload),
                cp_unprocessed::first_seen_at.eq(now),
                cp_unprocessed::last_seen_at.eq(now),
                cp_unprocessed::run_id.eq(run_id),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(())
}

/// The id a malformed record is parked under: its own when readable, else
/// one derived from its content (the same record parks once).
pub fn malformed_id(record: &RejectedRecord) -> String {
    match &record.id {
        Some(id) => id.clone(),
        None => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(record.raw.as_bytes());
            format!("malformed-{}", &crate::portal::hex(&digest)[..24])
        }
    }
}

/// Parks records that break the contract, with the reason and the record as
/// received, so the office sees them (`kind` = `MALFORMED_KIND`, amount 0).
pub fn park_malformed(
    conn: &mut DbConnection,
    records: &[RejectedRecord],
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    for record in records {
        let id = malformed_id(record);
        let reason = format!("malformed record: {}", record.reason);
        let refreshed = diesel::update(cp_unprocessed::table.find(&id))
            .set((
                cp_unprocessed::reason.eq(&reason),
                cp_unprocessed::last_seen_at.eq(now),
                cp_unprocessed::run_id.eq(run_id),
            ))
            .execute(conn)?;
        if refreshed > 0 {
            continue;
        }
        crate::with_backend!(conn, |c| diesel::insert_into(cp_unprocessed::table)
            .values((
                cp_unprocessed::vendor_txn_id.eq(&id),
                cp_unprocessed::kind.eq(MALFORMED_KIND),
                cp_unprocessed::amount_cents.eq(0_i64),
                cp_unprocessed::occurred_at.eq(now),
                cp_unprocessed::reason.eq(&reason),
                cp_unprocessed::payload.eq(&record.raw),
                cp_unprocessed::first_seen_at.eq(now),
                cp_unprocessed::last_seen_at.eq(now),
                cp_unprocessed::run_id.eq(run_id),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(())
}

/// The `kind` of a parked vendor id whose copies conflict: its payload is
/// the JSON array of every copy seen. Never retried as a posting: a person
/// decides.
pub const CONFLICTING_KIND: &str = "conflicting";

/// Parks every copy of one vendor id whose copies conflict, as one row
/// (kind `CONFLICTING_KIND`, the copies as the payload, the reason naming
/// each), replacing an earlier parked row of the id.
pub fn park_conflicting(
    conn: &mut DbConnection,
    copies: &[&VendorTxn],
    reason: &str,
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    let Some(first) = copies.first() else {
        return Ok(());
    };
    let payload = serde_json::to_string(copies).expect("VendorTxns serialise");
    let refreshed = diesel::update(cp_unprocessed::table.find(&first.id.0))
        .set((
            cp_unprocessed::kind.eq(CONFLICTING_KIND),
            cp_unprocessed::payload.eq(&payload),
            cp_unprocessed::reason.eq(reason),
            cp_unprocessed::last_seen_at.eq(now),
            cp_unprocessed::run_id.eq(run_id),
            cp_unprocessed::resolved_at.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)?;
    if refreshed > 0 {
        return Ok(());
    }
    crate::with_backend!(conn, |c| diesel::insert_into(cp_unprocessed::table)
        .values((
            cp_unprocessed::vendor_txn_id.eq(&first.id.0),
            cp_unprocessed::fee_id.eq(first.genesis_fee_id.map(|f| f.0)),
            cp_unprocessed::student_id.eq(first.student_id.map(|s| s.0)),
            cp_unprocessed::kind.eq(CONFLICTING_KIND),
            cp_unprocessed::amount_cents.eq(first.amount.cents()),
            cp_unprocessed::occurred_at.eq(first.occurred_at),
            cp_unprocessed::reason.eq(reason),
            cp_unprocessed::payload.eq(&payload),
            cp_unprocessed::first_seen_at.eq(now),
            cp_unprocessed::last_seen_at.eq(now),
            cp_unprocessed::run_id.eq(run_id),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// The copies kept of those of these vendor ids parked as conflicting
/// (unresolved): evidence that a new copy joins.
pub fn conflicting_copies(
    conn: &mut DbConnection,
    ids: &[&VendorTxnId],
) -> Result<Vec<VendorTxn>, DbError> {
    let mut copies = Vec::new();
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let texts: Vec<&str> = chunk.iter().map(|id| id.0.as_str()).collect();
        let payloads: Vec<(String, String)> = cp_unprocessed::table
            .filter(cp_unprocessed::vendor_txn_id.eq_any(texts))
            .filter(cp_unprocessed::kind.eq(CONFLICTING_KIND))
            .filter(cp_unprocessed::resolved_at.is_null())
            .select((cp_unprocessed::vendor_txn_id, cp_unprocessed::payload))
            .load(conn)?;
        for (id, payload) in payloads {
            match serde_json::from_str::<Vec<VendorTxn>>(&payload) {
                Ok(kept) => copies.extend(kept),
                Err(error) => {
                    tracing::warn!(vendor_txn_id = %id, %error, "conflicting copies no longer read; left for the office")
                }
            }
        }
    }
    Ok(copies)
}

/// Marks parked transactions resolved (they have now been posted).
pub fn resolve(
    conn: &mut DbConnection,
    ids: &[VendorTxnId],
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    let mut resolved = 0;
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let texts: Vec<&str> = chunk.iter().map(|id| id.0.as_str()).collect();
        resolved += diesel::update(
            cp_unprocessed::table
                .filter(cp_unprocessed::vendor_txn_id.eq_any(texts))
                .filter(cp_unprocessed::resolved_at.is_null()),
        )
        .set(cp_unprocessed::resolved_at.eq(now))
        .execute(conn)?;
    }
    Ok(resolved)
}

/// Parked transactions, unresolved ones only unless `include_resolved`.
pub fn list_unprocessed(
    conn: &mut DbConnection,
    include_resolved: bool,
) -> Result<Vec<Unprocessed>, DbError> {
    let mut query = cp_unprocessed::table
        .order(cp_unprocessed::first_seen_at)
        .select(UnprocessedRow::as_select())
        .into_boxed();
    if !include_resolved {
        query = query.filter(cp_unprocessed::resolved_at.is_null());
    }
    let rows: Vec<UnprocessedRow> = query.load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| Unprocessed {
            vendor_txn_id: r.vendor_txn_id,
            fee_id: r.fee_id,
            student_id: r.student_id,
            kind: r.kind,
            amount: Money::from_cents(r.amount_cents),
            occurred_at: r.occurred_at,
            reason: r.reason,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            resolved_at: r.resolved_at,
        })
        .collect())
}

/// The most parked transactions one pull retries (oldest first); the rest
/// wait for the next pull, so a long backlog cannot make one run unbounded.
pub const PARKED_RETRY_MAX: i64 = 10_000;

/// The unresolved parked transactions as vendor records, to retry (at most
/// `PARKED_RETRY_MAX`, oldest first). Malformed records are not retried; a payload that no longer reads is
/// skipped with a warning (it stays listed for the office).
pub fn parked_txns(conn: &mut DbConnection) -> Result<Vec<VendorTxn>, DbError> {
    let payloads: Vec<(String, String)> = cp_unprocessed::table
        .filter(cp_unprocessed::resolved_at.is_null())
        .filter(cp_unprocessed::kind.ne(MALFORMED_KIND))
        .filter(cp_unprocessed::kind.ne(CONFLICTING_KIND))
        .order(cp_unprocessed::first_seen_at)
        .limit(PARKED_RETRY_MAX)
        .select((cp_unprocessed::vendor_txn_id, cp_unprocessed::payload))
        .load(conn)?;
    Ok(payloads
        .into_iter()
        .filter_map(|(id, payload)| match serde_json::from_str(&payload) {
            Ok(txn) => Some(txn),
            Err(error) => {
                tracing::warn!(vendor_txn_id = %id, %error, "a parked transaction no longer reads; left for the office");
                None
            }
        })
        .collect())
}

/// Whether a posting of this kind applies a payment (and so locks the amount).
pub fn locks_amount(kind: TxnKind) -> bool {
    kind == TxnKind::Payment
}

/// Fees that exist in Genesis, of these.
pub fn existing_fees(conn: &mut DbConnection, ids: &[FeeId]) -> Result<HashSet<FeeId>, DbError> {
    use super::schema::student_fees;
    let mut found = HashSet::new();
    for chunk in ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let raw: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<i64> = student_fees::table
            .filter(student_fees::id.eq_any(raw))
            .select(student_fees::id)
            .load(conn)?;
        found.extend(rows.into_iter().map(FeeId));
    }
    Ok(found)
}
