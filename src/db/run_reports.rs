//! Each nightly run's report as it was built (`cp_run_reports`), stored as
//! the JSON the report layer gives: `cpsync report --run ID` rebuilds the
//! files and resends the email from it, even when the report folder could
//! not be written at the time. This layer keeps text; it does not read it.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_run_reports;
use super::{DbConnection, DbError};

/// Stores (or replaces) run `run_id`'s report.
pub fn store(
    conn: &mut DbConnection,
    run_id: i64,
    report_json: &str,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    conn.transaction(|conn| {
        diesel::delete(cp_run_reports::table.find(run_id)).execute(conn)?;
        crate::with_backend!(conn, |c| diesel::insert_into(cp_run_reports::table)
            .values((
                cp_run_reports::run_id.eq(run_id),
                cp_run_reports::report_json.eq(report_json),
                cp_run_reports::stored_at.eq(now),
            ))
            .execute(c))?;
        Ok(())
    })
}

/// Run `run_id`'s stored report, if it has one.
pub fn load(conn: &mut DbConnection, run_id: i64) -> Result<Option<String>, DbError> {
    Ok(cp_run_reports::table
        .find(run_id)
        .select(cp_run_reports::report_json)
        .first::<String>(conn)
        .optional()?)
}
