//! The imperative shell around the pure core: the five tasks' engine. Each
//! submodule reads what it needs from the database and Community Pass, calls
//! pure rules (`reconcile`, `setup`), and writes back idempotently with an
//! audit row per change.
//!
//! **Architecture invariant:** every write to Community Pass is an upsert keyed
//! by the Genesis fee id with an idempotency key naming one intended write
//! (the link's intent sequence and the body's digest), recorded before the
//! call; every write to Genesis is keyed by the vendor's transaction id and
//! refused by the database if it already exists.

pub mod balances;
pub use crate::failpoint;
pub mod incremental;
pub mod nightly;
pub mod progress;
pub mod pull;
pub mod push;

use chrono::NaiveDateTime;

use crate::db::DbError;
use crate::portal::PortalError;

/// Errors of a sync task that stop it (per-record problems are reported, not raised).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Portal(#[from] PortalError),
    #[error("setup is incomplete: {0}")]
    Setup(#[from] crate::setup::OutOfOrder),
    #[error("accounting does not add up: {0}")]
    Accounting(String),
    #[error("conservation check failed after apply: {0}")]
    Conservation(String),
}

impl From<diesel::result::Error> for SyncError {
    fn from(error: diesel::result::Error) -> SyncError {
        SyncError::Db(DbError::Query(error))
    }
}

/// Whether a write failed because the database refused these rows (a
/// constraint, a trigger) rather than because it could not be reached or
/// was busy: only then is the refusal one row's, not the run's.
pub fn refused_by_genesis(error: &SyncError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    let SyncError::Db(DbError::Query(Error::DatabaseError(kind, info))) = error else {
        return false;
    };
    let transient = matches!(
        kind,
        DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
    );
    let busy = [
        "database is locked",
        "database table is locked",
        "disk I/O error",
        "database or disk is full",
    ]
    .iter()
    .any(|words| info.message().contains(words));
    !transient && !busy
}

/// Students beyond which the guardian links are read whole rather than by
/// student id.
const PARTY_STUDENTS_BY_ID_MAX: usize = 5_000;

/// Fills the snapshot's parties (patron and guardians of every student with
/// fees in it, under the district's patron id rule), so the core compares
/// them with what Community Pass holds.
pub fn attach_parties(
    conn: &mut crate::db::DbConnection,
    setup: &crate::setup::SetupState,
    genesis: &mut crate::reconcile::GenesisSnapshot,
) -> Result<(), SyncError> {
    let mut students: Vec<crate::domain::StudentId> =
        genesis.fees.iter().map(|fee| fee.student_id).collect();
    students.sort();
    students.dedup();
    let links = if students.len() > PARTY_STUDENTS_BY_ID_MAX {
        crate::db::genesis::load_guardian_links(conn)?
    } else {
        crate::db::genesis::load_guardian_links_for(conn, &students)?
    };
    genesis.parties = setup.patron_id.parties(students, &links);
    Ok(())
}

/// The clock, passed in so runs can be replayed in tests.
pub type Clock<'a> = &'a dyn Fn() -> NaiveDateTime;

/// How many seconds this process's clock is set back. Only `cpsync demo
/// --nights N`, which plays a month of nights in a minute inside one
/// process, ever sets it; every other command runs on the wall clock.
static CLOCK_SET_BACK_SECS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Sets this process's clock back by `by` (the demo's nights in the past).
pub fn set_clock_back(by: chrono::Duration) {
    CLOCK_SET_BACK_SECS.store(by.num_seconds(), std::sync::atomic::Ordering::SeqCst);
}

/// The wall clock in UTC (set back only inside `cpsync demo --nights`).
pub fn utc_now() -> NaiveDateTime {
    let back = CLOCK_SET_BACK_SECS.load(std::sync::atomic::Ordering::SeqCst);
    chrono::Utc::now().naive_utc() - chrono::Duration::seconds(back)
}
