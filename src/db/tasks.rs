//! The five tasks' switches (`cp_tasks`): a disabled task does nothing and
//! says so. A task with no row is treated as disabled, so a district that
//! has not set it up is never surprised by it running.

use diesel::prelude::*;

use super::schema::cp_tasks;
use super::{DbConnection, DbError};

/// Whether the task named `name` is switched on.
pub fn is_enabled(conn: &mut DbConnection, name: &str) -> Result<bool, DbError> {
    let enabled: Option<bool> = cp_tasks::table
        .filter(cp_tasks::name.eq(name))
        .select(cp_tasks::enabled)
        .first(conn)
        .optional()?;
    Ok(enabled.unwrap_or(false))
}

/// Switches the task named `name` on or off (creating its row if missing).
pub fn set_enabled(
    conn: &mut DbConnection,
    name: &str,
    enabled: bool,
    now: chrono::NaiveDateTime,
) -> Result<(), DbError> {
    let updated = diesel::update(cp_tasks::table.filter(cp_tasks::name.eq(name)))
        .set((cp_tasks::enabled.eq(enabled), cp_tasks::updated_at.eq(now)))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(cp_tasks::table)
            .values((
                cp_tasks::name.eq(name),
                cp_tasks::enabled.eq(enabled),
                cp_tasks::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}
