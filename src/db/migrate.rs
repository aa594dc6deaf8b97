//! Embedded migrations, one folder per backend with identical names: run,
//! revert and list them on whichever backend the connection is.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{genesis_contract, DbConnection, DbError};

/// The migration that creates the Genesis contract tables (for the demo,
/// tests and a district without Genesis in this database).
pub const GENESIS_CONTRACT_MIGRATION: &str = "2026-11-26-000001_genesis_contract";
/// Its version as diesel records it.
const GENESIS_CONTRACT_VERSION: &str = "20261126000001";
/// The `cp_settings` key saying the Genesis objects belong to the district
/// (installed with `--integration-only`): nothing may drop them.
const GENESIS_OWNER_KEY: &str = "genesis_contract_owner";
/// Diesel's own record of applied migrations, as diesel creates it.
const DIESEL_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
    version VARCHAR(50) PRIMARY KEY NOT NULL, \
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

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

/// Applies every pending migration; returns the names applied. Refuses to
/// create the Genesis contract tables where some Genesis object already
/// exists (that is a district's Genesis: `run_integration_only`).
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    if !is_applied(conn, GENESIS_CONTRACT_VERSION)? && genesis_contract::any_present(conn)? {
        return Err(DbError::Migration(
            "this database already holds Genesis tables or views (students, student_fees, …): \
             cpsync does not create or change them; install with `cpsync migrate \
             --integration-only`, which checks them and creates only cpsync's own cp_ objects"
                .to_string(),
        ));
    }
    apply_pending(conn)
}

/// Installs cpsync beside an existing Genesis: checks the Genesis contract
/// (tables or views, columns and types, a unique vendor transaction id,
/// tables where the outbox triggers go) and, only if nothing is missing,
/// records the contract migration as applied without running it and
/// applies cpsync's own migrations. The Genesis objects are marked as the
/// district's, so `revert_all` never drops them. Returns the names applied,
/// or the problems found (nothing created).
pub fn run_integration_only(
    conn: &mut DbConnection,
) -> Result<Result<Vec<String>, Vec<genesis_contract::Problem>>, DbError> {
    let problems = genesis_contract::check(conn)?;
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    if !is_applied(conn, GENESIS_CONTRACT_VERSION)? {
        conn.batch_execute(DIESEL_MIGRATIONS_TABLE)?;
        diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
            .bind::<Text, _>(GENESIS_CONTRACT_VERSION)
            .execute(conn)?;
    }
    let applied = apply_pending(conn)?;
    diesel::sql_query(
        "INSERT INTO cp_settings (key, value, updated_at) VALUES ($1, $2, CURRENT_TIMESTAMP) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind::<Text, _>(GENESIS_OWNER_KEY)
    .bind::<Text, _>("\"district\"")
    .execute(conn)?;
    Ok(Ok(applied))
}

/// Whether the Genesis objects were the district's when cpsync was
/// installed (`run_integration_only`).
pub fn genesis_belongs_to_district(conn: &mut DbConnection) -> Result<bool, DbError> {
    if !is_applied(conn, "20261126000002")? {
        return Ok(false);
    }
    use super::schema::cp_settings;
    let found: Option<String> = cp_settings::table
        .filter(cp_settings::key.eq(GENESIS_OWNER_KEY))
        .select(cp_settings::value)
        .first(conn)
        .optional()?;
    Ok(found.is_some())
}

/// Whether a name `status` lists (a migration's name, or an applied one's
/// version) is the Genesis contract migration.
pub fn is_genesis_contract(name: &str) -> bool {
    name == GENESIS_CONTRACT_MIGRATION || name == GENESIS_CONTRACT_VERSION
}

fn is_applied(conn: &mut DbConnection, version: &str) -> Result<bool, DbError> {
    let applied = crate::with_backend!(conn, |c| {
        c.applied_migrations()
            .map_err(migration_error)?
            .iter()
            .any(|v| v.to_string() == version)
    });
    Ok(applied)
}

fn apply_pending(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
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

/// Reverts every applied migration, newest first; returns the names
/// reverted. Where the Genesis objects are the district's (installed with
/// `--integration-only`), the contract migration is only forgotten, never
/// reverted: only what cpsync created is dropped (its `cp_` tables, and
/// its triggers on the Genesis tables).
pub fn revert_all(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    if !genesis_belongs_to_district(conn)? {
        let reverted = crate::with_backend!(conn, |c| {
            let source = source_for(c);
            c.revert_all_migrations(source)
                .map_err(migration_error)?
                .into_iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        });
        return Ok(reverted);
    }
    let mut reverted = Vec::new();
    loop {
        let newest = crate::with_backend!(conn, |c| {
            c.applied_migrations()
                .map_err(migration_error)?
                .into_iter()
                .map(|v| v.to_string())
                .max()
        });
        match newest {
            Some(version) if version != GENESIS_CONTRACT_VERSION => {
                let name = crate::with_backend!(conn, |c| {
                    let source = source_for(c);
                    c.revert_last_migration(source)
                        .map_err(migration_error)?
                        .to_string()
                });
                reverted.push(name);
            }
            _ => break,
        }
    }
    diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = $1")
        .bind::<Text, _>(GENESIS_CONTRACT_VERSION)
        .execute(conn)?;
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

/// How many migrations have not been applied yet: one read of the applied
/// versions (every command checks it before it starts).
pub fn pending_count(conn: &mut DbConnection) -> Result<usize, DbError> {
    crate::with_backend!(conn, |c| {
        let source = source_for(c);
        Ok(c.pending_migrations(source).map_err(migration_error)?.len())
    })
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
