//! Fee links (`cp_fee_links`): the integration's record of each fee it
//! created in Community Pass: the vendor id, what was last pushed (and the
//! digest of its whole body), the intent in flight (sequence number, digest
//! and idempotency key), a push Community Pass refused, and the amount lock.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use diesel::sql_types::{BigInt, Nullable, Text};

use super::cached_sql::{bind, cached_sql, Binds, CachedSql};
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
    pub intent_seq: i64,
    pub pushed_revision: Option<i64>,
    pub refused_reason: Option<String>,
    pub refused_at: Option<NaiveDateTime>,
}

/// What Send Fees needs of a link to name its next intent: the last intent
/// (sequence, digest, key), the digest Community Pass acknowledged last,
/// and a refusal that holds the same content back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = cp_fee_links)]
pub struct PushState {
    pub fee_id: i64,
    pub intent_seq: i64,
    pub intent_digest: Option<String>,
    pub last_idempotency_key: Option<String>,
    pub pushed_digest: Option<String>,
    pub refused_digest: Option<String>,
    pub refused_reason: Option<String>,
}

impl PushState {
    /// An intent was recorded that Community Pass never acknowledged (its
    /// answer was lost, or the run was cut off before recording it).
    pub fn intent_pending(&self) -> bool {
        self.intent_digest.is_some() && self.intent_digest != self.pushed_digest
    }
}

/// The push states of these fees.
pub fn push_states_for(
    conn: &mut DbConnection,
    fee_ids: &[FeeId],
) -> Result<Vec<PushState>, DbError> {
    let mut states = Vec::new();
    for chunk in fee_ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let ids: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<PushState> = cp_fee_links::table
            .filter(cp_fee_links::fee_id.eq_any(ids))
            .select(PushState::as_select())
            .load(conn)?;
        states.extend(rows);
    }
    Ok(states)
}

/// A push Community Pass refused for a reason a retry cannot fix.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = cp_fee_links)]
pub struct RefusedPush {
    pub fee_id: i64,
    pub refused_reason: Option<String>,
    pub refused_at: Option<NaiveDateTime>,
    pub last_run_id: Option<i64>,
}

/// Every push held because Community Pass refused it, oldest first.
pub fn refused(conn: &mut DbConnection) -> Result<Vec<RefusedPush>, DbError> {
    Ok(cp_fee_links::table
        .filter(cp_fee_links::refused_digest.is_not_null())
        .select(RefusedPush::as_select())
        .order((cp_fee_links::refused_at, cp_fee_links::fee_id))
        .load(conn)?)
}

/// Records that Community Pass refused this content of the fee: it is
/// held (not sent again) until the fee changes or is re-sent.
pub fn record_refusal(
    conn: &mut DbConnection,
    fee_id: FeeId,
    digest: &str,
    reason: &str,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    ensure(conn, fee_id)?;
    diesel::update(cp_fee_links::table.find(fee_id.0))
        .set((
            cp_fee_links::refused_digest.eq(digest),
            cp_fee_links::refused_reason.eq(reason),
            cp_fee_links::refused_at.eq(now),
            cp_fee_links::last_run_id.eq(run_id),
        ))
        .execute(conn)?;
    Ok(())
}

/// Forgets the intent in flight, so the next push of the fee is a new
/// intent with a new key (after Community Pass said the key was used for
/// another body).
pub fn forget_intent(conn: &mut DbConnection, fee_id: FeeId) -> Result<(), DbError> {
    diesel::update(cp_fee_links::table.find(fee_id.0))
        .set(cp_fee_links::intent_digest.eq(None::<String>))
        .execute(conn)?;
    Ok(())
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

/// The revision Community Pass answered to the last acknowledged push of
/// each of these fees (fees never acknowledged are absent).
pub fn pushed_revisions(
    conn: &mut DbConnection,
    fee_ids: &[FeeId],
) -> Result<std::collections::HashMap<FeeId, i64>, DbError> {
    let mut revisions = std::collections::HashMap::with_capacity(fee_ids.len());
    for chunk in fee_ids.chunks(super::genesis::INSERT_BATCH_ROWS) {
        let ids: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<(i64, Option<i64>)> = cp_fee_links::table
            .filter(cp_fee_links::fee_id.eq_any(ids))
            .select((cp_fee_links::fee_id, cp_fee_links::pushed_revision))
            .load(conn)?;
        revisions.extend(
            rows.into_iter()
                .filter_map(|(fee, revision)| revision.map(|r| (FeeId(fee), r))),
        );
    }
    Ok(revisions)
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

/// How many links one upsert statement writes (PostgreSQL; SQLite, which
/// diesel cannot batch-upsert and which costs no round trip, writes a
/// statement per link).
pub const LINK_BATCH_ROWS: usize = 500;

/// One intended write of a fee: its sequence number, content digest and
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushIntent {
    pub fee_id: FeeId,
    pub seq: i64,
    pub digest: String,
    pub key: String,
}

/// Records each intent before it is sent, so a push cut off by a crash is
/// retried with the same key (`LINK_BATCH_ROWS` links per statement; a
/// missing link is created).
pub fn record_push_intents(
    conn: &mut DbConnection,
    intents: &[&PushIntent],
    run_id: i64,
) -> Result<(), DbError> {
    match conn {
        DbConnection::Sqlite(c) => {
            for intent in intents {
                cached_intent_upsert(intent, run_id).execute(c)?;
            }
        }
        DbConnection::Pg(c) => {
            for chunk in intents.chunks(LINK_BATCH_ROWS) {
                pg_intent_upsert(chunk, run_id).execute(c)?;
            }
        }
    }
    Ok(())
}

/// What an intent's upsert updates on conflict (both backends).
macro_rules! intent_upsert_set {
    () => {
        "ON CONFLICT (fee_id) DO UPDATE SET \
         last_idempotency_key = excluded.last_idempotency_key, intent_seq = excluded.intent_seq, \
         intent_digest = excluded.intent_digest, last_run_id = excluded.last_run_id"
    };
}

/// Many intents' upsert in one statement of fixed text (the rows go as
/// arrays), kept prepared.
fn pg_intent_upsert<'a>(
    intents: &'a [&'a PushIntent],
    run_id: i64,
) -> CachedSql<impl Binds<diesel::pg::Pg> + 'a> {
    use diesel::sql_types::Array;
    const SQL: &str = concat!(
        "INSERT INTO cp_fee_links (fee_id, last_idempotency_key, intent_seq, intent_digest, last_run_id) \
         SELECT * FROM unnest(?::bigint[], ?::text[], ?::bigint[], ?::text[], ?::bigint[]) ",
        intent_upsert_set!()
    );
    cached_sql(
        SQL,
        (
            bind::<Array<BigInt>, _>(intents.iter().map(|i| i.fee_id.0).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(intents.iter().map(|i| i.key.as_str()).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(intents.iter().map(|i| i.seq).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(
                intents
                    .iter()
                    .map(|i| i.digest.as_str())
                    .collect::<Vec<_>>(),
            ),
            bind::<Array<BigInt>, _>(vec![run_id; intents.len()]),
        ),
    )
}

/// One intent's upsert, kept prepared (SQLite runs one row per statement).
fn cached_intent_upsert(
    intent: &PushIntent,
    run_id: i64,
) -> CachedSql<impl Binds<diesel::sqlite::Sqlite> + '_> {
    cached_sql(
        concat!(
            "INSERT INTO cp_fee_links (fee_id, last_idempotency_key, intent_seq, intent_digest, last_run_id) \
             VALUES (?, ?, ?, ?, ?) ",
            intent_upsert_set!()
        ),
        (
            bind::<BigInt, _>(intent.fee_id.0),
            bind::<Nullable<Text>, _>(Some(intent.key.as_str())),
            bind::<BigInt, _>(intent.seq),
            bind::<Nullable<Text>, _>(Some(intent.digest.as_str())),
            bind::<Nullable<BigInt>, _>(Some(run_id)),
        ),
    )
}

/// Records what Community Pass acknowledged for each push: the values and
/// digest pushed, the revision it answered, and no refusal; the first
/// acknowledgement sets `first_sent_at`.
pub fn record_push_outcomes(
    conn: &mut DbConnection,
    acknowledged: &[(&FeePush, &str, &UpsertOutcome)],
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    match conn {
        DbConnection::Sqlite(c) => {
            for (push, digest, outcome) in acknowledged {
                cached_outcome_upsert(push, digest, outcome, run_id, now).execute(c)?;
            }
        }
        DbConnection::Pg(c) => {
            for chunk in acknowledged.chunks(LINK_BATCH_ROWS) {
                pg_outcome_upsert(chunk, run_id, now).execute(c)?;
            }
        }
    }
    Ok(())
}

/// What an acknowledgement's upsert updates on conflict (both backends).
macro_rules! outcome_upsert_set {
    () => {
        "ON CONFLICT (fee_id) DO UPDATE SET \
         vendor_fee_id = excluded.vendor_fee_id, \
         first_sent_at = COALESCE(cp_fee_links.first_sent_at, excluded.first_sent_at), \
         last_pushed_at = excluded.last_pushed_at, \
         pushed_amount_cents = excluded.pushed_amount_cents, \
         pushed_status = excluded.pushed_status, \
         pushed_credit_cents = excluded.pushed_credit_cents, \
         pushed_digest = excluded.pushed_digest, pushed_revision = excluded.pushed_revision, \
         refused_digest = NULL, refused_reason = NULL, refused_at = NULL, \
         last_run_id = excluded.last_run_id"
    };
}

/// Many acknowledgements' upsert in one statement of fixed text (the rows
/// go as arrays), kept prepared.
fn pg_outcome_upsert<'a>(
    acknowledged: &'a [(&'a FeePush, &'a str, &'a UpsertOutcome)],
    run_id: i64,
    now: NaiveDateTime,
) -> CachedSql<impl Binds<diesel::pg::Pg> + 'a> {
    use diesel::sql_types::{Array, Timestamp};
    const SQL: &str = concat!(
        "INSERT INTO cp_fee_links (fee_id, vendor_fee_id, first_sent_at, last_pushed_at, \
         pushed_amount_cents, pushed_status, pushed_credit_cents, pushed_digest, pushed_revision, \
         last_run_id) \
         SELECT fee_id, vendor_fee_id, ?, ?, amount, status, credit, digest, revision, ? \
         FROM unnest(?::bigint[], ?::text[], ?::bigint[], ?::text[], ?::bigint[], ?::text[], \
         ?::bigint[]) AS r(fee_id, vendor_fee_id, amount, status, credit, digest, revision) ",
        outcome_upsert_set!()
    );
    fn column<'a, T>(
        rows: &'a [(&'a FeePush, &'a str, &'a UpsertOutcome)],
        get: fn(&'a (&'a FeePush, &'a str, &'a UpsertOutcome)) -> T,
    ) -> Vec<T> {
        rows.iter().map(get).collect()
    }
    cached_sql(
        SQL,
        (
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(now),
            bind::<BigInt, _>(run_id),
            bind::<Array<BigInt>, _>(column(acknowledged, |(push, _, _)| push.genesis_fee_id.0)),
            bind::<Array<Text>, _>(column(acknowledged, |(_, _, o)| o.vendor_fee_id.as_str())),
            bind::<Array<BigInt>, _>(column(acknowledged, |(push, _, _)| push.amount.cents())),
            bind::<Array<Text>, _>(column(acknowledged, |(push, _, _)| push.status.as_str())),
            bind::<Array<BigInt>, _>(column(acknowledged, |(push, _, _)| {
                push.genesis_credit.cents()
            })),
            bind::<Array<Text>, _>(column(acknowledged, |(_, digest, _)| *digest)),
            bind::<Array<BigInt>, _>(column(acknowledged, |(_, _, outcome)| outcome.revision)),
        ),
    )
}

/// One acknowledgement's upsert (as `record_push_outcomes` on PostgreSQL),
/// kept prepared.
fn cached_outcome_upsert<'a>(
    push: &'a FeePush,
    digest: &'a str,
    outcome: &'a UpsertOutcome,
    run_id: i64,
    now: NaiveDateTime,
) -> CachedSql<impl Binds<diesel::sqlite::Sqlite> + 'a> {
    use diesel::sql_types::Timestamp;
    cached_sql(
        concat!(
            "INSERT INTO cp_fee_links (fee_id, vendor_fee_id, first_sent_at, last_pushed_at, \
             pushed_amount_cents, pushed_status, pushed_credit_cents, pushed_digest, \
             pushed_revision, last_run_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ",
            outcome_upsert_set!()
        ),
        (
            bind::<BigInt, _>(push.genesis_fee_id.0),
            bind::<Text, _>(outcome.vendor_fee_id.as_str()),
            bind::<Timestamp, _>(now),
            bind::<Timestamp, _>(now),
            bind::<BigInt, _>(push.amount.cents()),
            bind::<Text, _>(push.status.as_str()),
            bind::<BigInt, _>(push.genesis_credit.cents()),
            bind::<Text, _>(digest),
            bind::<BigInt, _>(outcome.revision),
            bind::<BigInt, _>(run_id),
        ),
    )
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
    if let DbConnection::Pg(pg) = conn {
        return lock_amounts_in_batches(pg, locks, run_id, now);
    }
    let DbConnection::Sqlite(c) = conn else {
        unreachable!("PostgreSQL locks in batches above");
    };
    let mut newly_locked = Vec::new();
    for (fee_id, by_txn) in locks {
        // Two statements kept prepared, run once per fee.
        cached_sql(
            "INSERT INTO cp_fee_links (fee_id) VALUES (?) ON CONFLICT DO NOTHING",
            (bind::<BigInt, _>(fee_id.0),),
        )
        .execute(c)?;
        let changed = cached_sql(
            "UPDATE cp_fee_links SET amount_locked = ?, locked_at = ?, \
             locked_by_vendor_txn = ?, last_run_id = ? WHERE fee_id = ? AND amount_locked = ?",
            (
                bind::<diesel::sql_types::Bool, _>(true),
                bind::<diesel::sql_types::Timestamp, _>(now),
                bind::<Nullable<Text>, _>(by_txn.as_ref().map(|t| t.0.as_str())),
                bind::<Nullable<BigInt>, _>(run_id),
                bind::<BigInt, _>(fee_id.0),
                bind::<diesel::sql_types::Bool, _>(false),
            ),
        )
        .execute(c)?;
        if changed > 0 {
            newly_locked.push(*fee_id);
        }
    }
    Ok(newly_locked)
}

#[derive(QueryableByName)]
struct LockedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    fee_id: i64,
}

/// `lock_amounts` on PostgreSQL: two statements per `LINK_BATCH_ROWS`
/// fees instead of two per fee. A fee named twice is locked by its first
/// transaction, as the one-by-one version does.
fn lock_amounts_in_batches(
    pg: &mut diesel::PgConnection,
    locks: &[(FeeId, Option<VendorTxnId>)],
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Vec<FeeId>, DbError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamp};
    let mut seen = std::collections::HashSet::new();
    let first_per_fee: Vec<&(FeeId, Option<VendorTxnId>)> =
        locks.iter().filter(|(fee, _)| seen.insert(*fee)).collect();
    let mut locked = std::collections::HashSet::new();
    for chunk in first_per_fee.chunks(LINK_BATCH_ROWS) {
        let fees: Vec<i64> = chunk.iter().map(|(fee, _)| fee.0).collect();
        let by_txns: Vec<Option<&str>> = chunk
            .iter()
            .map(|(_, txn)| txn.as_ref().map(|t| t.0.as_str()))
            .collect();
        diesel::sql_query(
            "INSERT INTO cp_fee_links (fee_id) SELECT UNNEST($1::bigint[]) ON CONFLICT DO NOTHING",
        )
        .bind::<Array<BigInt>, _>(&fees)
        .execute(pg)?;
        let rows: Vec<LockedRow> = diesel::sql_query(
            "UPDATE cp_fee_links AS link \
             SET amount_locked = TRUE, locked_at = $3, locked_by_vendor_txn = wanted.by_txn, \
                 last_run_id = $4 \
             FROM UNNEST($1::bigint[], $2::text[]) AS wanted (fee_id, by_txn) \
             WHERE link.fee_id = wanted.fee_id AND NOT link.amount_locked \
             RETURNING link.fee_id",
        )
        .bind::<Array<BigInt>, _>(&fees)
        .bind::<Array<Nullable<Text>>, _>(&by_txns)
        .bind::<Timestamp, _>(now)
        .bind::<Nullable<BigInt>, _>(run_id)
        .load(pg)?;
        locked.extend(rows.into_iter().map(|row| FeeId(row.fee_id)));
    }
    Ok(first_per_fee
        .into_iter()
        .map(|(fee, _)| *fee)
        .filter(|fee| locked.contains(fee))
        .collect())
}
