//! The audit trail (`cp_audit_log`): one row per change the integration made
//! on either side, with the run id. Details never hold secrets.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::cached_sql::{bind, cached_sql, Binds, CachedSql};
use super::schema::cp_audit_log;
use super::{DbConnection, DbError};

/// Which side a change was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSide {
    Genesis,
    CommunityPass,
    Integration,
}

impl AuditSide {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSide::Genesis => "genesis",
            AuditSide::CommunityPass => "community_pass",
            AuditSide::Integration => "integration",
        }
    }
}

/// One change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub run_id: Option<i64>,
    pub at: NaiveDateTime,
    pub side: AuditSide,
    pub entity: &'static str,
    pub entity_id: String,
    pub action: String,
    pub detail: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = cp_audit_log)]
struct AuditRow<'a> {
    run_id: Option<i64>,
    at: NaiveDateTime,
    side: &'a str,
    entity: &'a str,
    entity_id: &'a str,
    action: &'a str,
    detail: Option<&'a str>,
}

/// A stored audit row.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = cp_audit_log)]
pub struct AuditRecord {
    pub id: i64,
    pub run_id: Option<i64>,
    pub at: NaiveDateTime,
    pub side: String,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub detail: Option<String>,
}

/// Appends audit rows (in the caller's transaction, if any).
pub fn record(conn: &mut DbConnection, entries: &[AuditEntry]) -> Result<usize, DbError> {
    let rows: Vec<AuditRow> = entries
        .iter()
        .map(|e| AuditRow {
            run_id: e.run_id,
            at: e.at,
            side: e.side.as_str(),
            entity: e.entity,
            entity_id: &e.entity_id,
            action: &e.action,
            detail: e.detail.as_deref(),
        })
        .collect();
    match conn {
        // One prepared statement for every row (diesel prepares a SQLite
        // batch insert row by row, parsing each).
        DbConnection::Sqlite(c) => {
            for row in &rows {
                cached_audit_insert(row).execute(c)?;
            }
        }
        // Every row in one statement of fixed text, the columns as arrays.
        DbConnection::Pg(c) => {
            for chunk in rows.chunks(crate::db::genesis::INSERT_BATCH_ROWS) {
                pg_audit_insert(chunk).execute(c)?;
            }
        }
    }
    Ok(rows.len())
}

fn pg_audit_insert<'a>(rows: &'a [AuditRow<'a>]) -> CachedSql<impl Binds<diesel::pg::Pg> + 'a> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamp};
    fn column<'a, T>(rows: &'a [AuditRow<'a>], get: fn(&AuditRow<'a>) -> T) -> Vec<T> {
        rows.iter().map(get).collect()
    }
    cached_sql(
        "INSERT INTO cp_audit_log (run_id, at, side, entity, entity_id, action, detail) \
         SELECT * FROM unnest(?::bigint[], ?::timestamp[], ?::text[], ?::text[], ?::text[], \
         ?::text[], ?::text[])",
        (
            bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.run_id)),
            bind::<Array<Timestamp>, _>(column(rows, |r| r.at)),
            bind::<Array<Text>, _>(column(rows, |r| r.side)),
            bind::<Array<Text>, _>(column(rows, |r| r.entity)),
            bind::<Array<Text>, _>(column(rows, |r| r.entity_id)),
            bind::<Array<Text>, _>(column(rows, |r| r.action)),
            bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.detail)),
        ),
    )
}

fn cached_audit_insert<'a>(
    row: &'a AuditRow<'a>,
) -> CachedSql<impl Binds<diesel::sqlite::Sqlite> + 'a> {
    use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
    cached_sql(
        "INSERT INTO cp_audit_log (run_id, at, side, entity, entity_id, action, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            bind::<Nullable<BigInt>, _>(row.run_id),
            bind::<Timestamp, _>(row.at),
            bind::<Text, _>(row.side),
            bind::<Text, _>(row.entity),
            bind::<Text, _>(row.entity_id),
            bind::<Text, _>(row.action),
            bind::<Nullable<Text>, _>(row.detail),
        ),
    )
}

/// Every audit row about one entity, oldest first.
pub fn for_entity(
    conn: &mut DbConnection,
    entity: &str,
    entity_id: &str,
) -> Result<Vec<AuditRecord>, DbError> {
    Ok(cp_audit_log::table
        .filter(cp_audit_log::entity.eq(entity.to_string()))
        .filter(cp_audit_log::entity_id.eq(entity_id.to_string()))
        .order(cp_audit_log::id)
        .select(AuditRecord::as_select())
        .load(conn)?)
}

/// Every audit row of one run, oldest first.
pub fn for_run(conn: &mut DbConnection, run_id: i64) -> Result<Vec<AuditRecord>, DbError> {
    Ok(cp_audit_log::table
        .filter(cp_audit_log::run_id.eq(run_id))
        .order(cp_audit_log::id)
        .select(AuditRecord::as_select())
        .load(conn)?)
}
