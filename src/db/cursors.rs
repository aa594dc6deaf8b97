//! Cursors (`cp_cursors`): positions on the vendor's monotonic streams. A
//! cursor only moves forward, even when two pulls race.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_cursors;
use super::{DbConnection, DbError};

/// The transaction cursor of Get Payments.
pub const TRANSACTIONS: &str = "transactions";

/// The stored position, 0 when never set.
pub fn position(conn: &mut DbConnection, name: &str) -> Result<i64, DbError> {
    Ok(cp_cursors::table
        .find(name)
        .select(cp_cursors::position)
        .first(conn)
        .optional()?
        .unwrap_or(0))
}

/// Moves the cursor forward to `to` (never backward).
pub fn advance(
    conn: &mut DbConnection,
    name: &str,
    to: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    crate::with_backend!(conn, |c| diesel::insert_into(cp_cursors::table)
        .values((
            cp_cursors::name.eq(name),
            cp_cursors::position.eq(0i64),
            cp_cursors::updated_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    diesel::update(
        cp_cursors::table
            .find(name)
            .filter(cp_cursors::position.lt(to)),
    )
    .set((cp_cursors::position.eq(to), cp_cursors::updated_at.eq(now)))
    .execute(conn)?;
    Ok(())
}

/// Sets the cursor to `to`, backwards too: only for a re-read from a chosen
/// point (`get-payments --from-sequence`), which stores what it actually read.
pub fn set(
    conn: &mut DbConnection,
    name: &str,
    to: i64,
    now: NaiveDateTime,
) -> Result<(), DbError> {
    advance(conn, name, to, now)?;
    diesel::update(cp_cursors::table.find(name))
        .set((cp_cursors::position.eq(to), cp_cursors::updated_at.eq(now)))
        .execute(conn)?;
    Ok(())
}
