//! Embedded migrations, one folder per backend with identical names: run,
//! revert and list them on whichever backend the connection is.

use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{DbConnection, DbError};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");

/// One migration's name and whether it has been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub name: String,
    pub applied: bool,
}

fn migration_error(e: impl std::fmt::Display) -> DbError {
    DbError::Migration(e.to_string())
}

/// Applies every pending migration; returns the names applied.
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let applied = crate::with_backend!(conn, |c| {
        let source = source_for(c);
        c.run_pending_migrations(source)
            .map_err(migration_error)?
            .into_iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
    });
    Ok(applied)
}

/// Reverts every applied migration, newest first; returns the names reverted.
pub fn revert_all(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    let reverted = crate::with_backend!(conn, |c| {
        let source = source_for(c);
        c.revert_all_migrations(source)
            .map_err(migration_error)?
            .into_iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
    });
    Ok(reverted)
}

/// Reverts the newest applied migration; returns its version. (Tests use
/// it to stand where an older cpsync left a database.)
pub fn revert_last(conn: &mut DbConnection) -> Result<String, DbError> {
    let reverted = crate::with_backend!(conn, |c| {
        let source = source_for(c);
        c.revert_last_migration(source)
            .map_err(migration_error)?
            .to_string()
    });
    Ok(reverted)
}

/// Every migration with whether it has been applied: the applied ones (by
/// version) first, then the pending ones, each group oldest first.
pub fn status(conn: &mut DbConnection) -> Result<Vec<MigrationState>, DbError> {
    crate::with_backend!(conn, |c| {
        let source = source_for(c);
        let mut applied: Vec<String> = c
            .applied_migrations()
            .map_err(migration_error)?
            .iter()
            .map(|v| v.to_string())
            .collect();
        applied.sort();
        let pending: Vec<String> = c
            .pending_migrations(source)
            .map_err(migration_error)?
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let applied_states = applied.into_iter().map(|name| MigrationState {
            name,
            applied: true,
        });
        let pending_states = pending.into_iter().map(|name| MigrationState {
            name,
            applied: false,
        });
        Ok(applied_states.chain(pending_states).collect())
    })
}

/// How many migrations have not been applied yet.
pub fn pending_count(conn: &mut DbConnection) -> Result<usize, DbError> {
    Ok(status(conn)?.iter().filter(|m| !m.applied).count())
}

/// Picks the embedded folder matching the backend of `_conn`.
trait MigrationsFor {
    fn migrations() -> EmbeddedMigrations;
}

impl MigrationsFor for diesel::SqliteConnection {
    fn migrations() -> EmbeddedMigrations {
        SQLITE_MIGRATIONS
    }
}

impl MigrationsFor for diesel::PgConnection {
    fn migrations() -> EmbeddedMigrations {
        POSTGRES_MIGRATIONS
    }
}

fn source_for<C: MigrationsFor>(_conn: &C) -> EmbeddedMigrations {
    C::migrations()
}
