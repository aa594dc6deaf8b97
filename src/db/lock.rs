//! One run at a time per district: a named lock held for the length of a run.
//! PostgreSQL: a session advisory lock on a connection kept open by the
//! guard (released by the server if the process dies). SQLite: a row in
//! `cp_locks`, read and written in one immediate write transaction (so two
//! runs at once queue on the busy timeout and the second sees the first's
//! row), taken over when the process that wrote it is gone. A row whose pid
//! is now another program, or written by another host, is reported with
//! what was found and cleared only by `cpsync lock release --force`.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

use super::owner::{self, Liveness};
use super::schema::cp_locks;
use super::{connect, write_transaction, DatabaseUrl, DbConnection, DbError, OpenMode};

/// The lock every exclusive task (nightly, and anything that must not
/// overlap it) takes.
pub const DISTRICT_LOCK: &str = "district";

/// Who holds a lock, and what that holder is now, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `host:pid` as recorded.
    pub holder: String,
    pub pid: i64,
    pub run_id: Option<i64>,
    pub acquired_at: NaiveDateTime,
    /// What the recorded process is now, seen from this host.
    pub found: Liveness,
}

impl Holder {
    fn from_row(
        holder: String,
        pid: i64,
        run_id: Option<i64>,
        acquired_at: NaiveDateTime,
    ) -> Holder {
        let host = holder
            .rsplit_once(':')
            .map(|(host, _)| host.to_string())
            .unwrap_or_else(|| holder.clone());
        let found = owner::liveness(&host, pid, acquired_at);
        Holder {
            holder,
            pid,
            run_id,
            acquired_at,
            found,
        }
    }

    /// The host part of `holder`.
    pub fn host(&self) -> &str {
        self.holder
            .rsplit_once(':')
            .map_or(self.holder.as_str(), |(host, _)| host)
    }

    /// One line: who, since when, for which run, and what was found.
    pub fn describe(&self) -> String {
        let run = self
            .run_id
            .map(|id| format!(", run {id}"))
            .unwrap_or_default();
        format!(
            "{} since {} UTC{run}: {}",
            self.holder,
            self.acquired_at.format("%Y-%m-%d %H:%M:%S"),
            self.found.describe(self.pid)
        )
    }

    /// Whether `cpsync lock release --force` may remove this row.
    pub fn releasable(&self) -> bool {
        !self.found.alive_here()
    }
}

/// A held lock; dropping it releases the lock.
pub struct RunLock {
    name: String,
    holder: String,
    conn: DbConnection,
}

#[derive(QueryableByName)]
struct Acquired {
    #[diesel(sql_type = Bool)]
    acquired: bool,
}

/// A stable 64-bit key for an advisory lock name.
fn advisory_key(name: &str) -> i64 {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("cpsync:{name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn this_holder() -> String {
    format!("{}:{}", owner::host_name(), owner::own_pid())
}

/// Tries the PostgreSQL advisory lock on `conn`; true on SQLite.
fn try_advisory(conn: &mut DbConnection, name: &str) -> Result<bool, DbError> {
    match conn {
        DbConnection::Pg(pg) => {
            let row: Acquired = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS acquired")
                .bind::<BigInt, _>(advisory_key(name))
                .get_result(pg)?;
            Ok(row.acquired)
        }
        DbConnection::Sqlite(_) => Ok(true),
    }
}

fn advisory_unlock(conn: &mut DbConnection, name: &str) {
    if let DbConnection::Pg(pg) = conn {
        let _ = diesel::sql_query("SELECT pg_advisory_unlock($1) AS acquired")
            .bind::<BigInt, _>(advisory_key(name))
            .execute(pg);
    }
}

/// Tries to take the lock; `Ok(Err(holder))` when someone else has it (or
/// when its row names a process this host cannot prove gone).
pub fn try_acquire(
    url: &DatabaseUrl,
    name: &str,
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Result<RunLock, Holder>, DbError> {
    let mut conn = connect(url, OpenMode::MustExist)?;
    if !try_advisory(&mut conn, name)? {
        return Ok(Err(current_holder(&mut conn, name)?.unwrap_or(Holder {
            holder: "another process".to_string(),
            pid: 0,
            run_id: None,
            acquired_at: now,
            found: Liveness::OtherHost {
                host: "a live PostgreSQL session".to_string(),
            },
        })));
    }
    let holder = this_holder();
    claim_row(&mut conn, name, &holder, run_id, now).map(|claimed| match claimed {
        Ok(()) => Ok(RunLock {
            name: name.to_string(),
            holder,
            conn,
        }),
        Err(found) => Err(found),
    })
}

fn current_holder(conn: &mut DbConnection, name: &str) -> Result<Option<Holder>, DbError> {
    let row: Option<(String, i64, Option<i64>, NaiveDateTime)> = cp_locks::table
        .find(name)
        .select((
            cp_locks::holder,
            cp_locks::pid,
            cp_locks::run_id,
            cp_locks::acquired_at,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|(holder, pid, run_id, acquired_at)| {
        Holder::from_row(holder, pid, run_id, acquired_at)
    }))
}

/// Writes this process into `cp_locks`, replacing a row left by a process
/// that no longer runs on this host. One immediate write transaction on
/// SQLite: a concurrent claimer waits on the busy timeout, then sees this
/// row, instead of failing with "database is locked".
fn claim_row(
    conn: &mut DbConnection,
    name: &str,
    me: &str,
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Result<(), Holder>, DbError> {
    let is_pg = matches!(conn, DbConnection::Pg(_));
    write_transaction(conn, |conn| {
        if let Some(existing) = current_holder(conn, name)? {
            // On PostgreSQL the advisory lock already proved the old holder gone.
            let stale = is_pg || existing.found.gone();
            if !stale {
                return Ok(Err(existing));
            }
            tracing::warn!(lock = name, previous = %existing.describe(), "taking over a stale lock row");
            diesel::delete(cp_locks::table.find(name)).execute(conn)?;
        }
        let inserted = crate::with_backend!(conn, |c| diesel::insert_into(cp_locks::table)
            .values((
                cp_locks::name.eq(name),
                cp_locks::holder.eq(me),
                cp_locks::pid.eq(owner::own_pid()),
                cp_locks::run_id.eq(run_id),
                cp_locks::acquired_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        if inserted == 0 {
            return Ok(Err(
                current_holder(conn, name)?.expect("row exists after conflict")
            ));
        }
        Ok(Ok(()))
    })
}

/// What `cpsync lock status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockStatus {
    pub name: String,
    /// The row in `cp_locks`, if any.
    pub holder: Option<Holder>,
    /// PostgreSQL only: whether a live session holds the advisory lock
    /// (the server's own truth; a row without it is stale).
    pub session_holds: Option<bool>,
}

impl LockStatus {
    /// Whether a run would be refused now.
    pub fn held(&self) -> bool {
        match self.session_holds {
            Some(held) => held,
            None => self.holder.as_ref().is_some_and(|h| !h.found.gone()),
        }
    }
}

/// The lock's row and, on PostgreSQL, whether a session holds it. Takes
/// nothing (an advisory lock taken to look is released at once).
pub fn status(url: &DatabaseUrl, name: &str) -> Result<LockStatus, DbError> {
    let mut conn = connect(url, OpenMode::MustExist)?;
    let holder = current_holder(&mut conn, name)?;
    let session_holds = if matches!(conn, DbConnection::Pg(_)) {
        let free = try_advisory(&mut conn, name)?;
        if free {
            advisory_unlock(&mut conn, name);
        }
        Some(!free)
    } else {
        None
    };
    Ok(LockStatus {
        name: name.to_string(),
        holder,
        session_holds,
    })
}

/// What `release_forced` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// There was no row to remove.
    NotHeld,
    /// The row was removed; this was in it.
    Released(Holder),
    /// The holder is demonstrably alive; nothing was removed.
    Refused {
        holder: Option<Holder>,
        reason: String,
    },
}

/// Removes the lock's row unless its holder is demonstrably alive on this
/// host (or, on PostgreSQL, a live session holds the advisory lock).
pub fn release_forced(url: &DatabaseUrl, name: &str) -> Result<Release, DbError> {
    let mut conn = connect(url, OpenMode::MustExist)?;
    if !try_advisory(&mut conn, name)? {
        return Ok(Release::Refused {
            holder: current_holder(&mut conn, name)?,
            reason: "a live PostgreSQL session holds the lock; the server releases it when that \
                     process ends (stop it, or end its session with pg_terminate_backend)"
                .to_string(),
        });
    }
    let is_pg = matches!(conn, DbConnection::Pg(_));
    let released = write_transaction(&mut conn, |conn| {
        let Some(existing) = current_holder(conn, name)? else {
            return Ok::<_, DbError>(Release::NotHeld);
        };
        if !is_pg && !existing.releasable() {
            let reason = format!(
                "{}: it is still running; stop it instead",
                existing.found.describe(existing.pid)
            );
            return Ok(Release::Refused {
                holder: Some(existing),
                reason,
            });
        }
        diesel::delete(
            cp_locks::table
                .find(name)
                .filter(cp_locks::holder.eq(&existing.holder))
                .filter(cp_locks::pid.eq(existing.pid)),
        )
        .execute(conn)?;
        Ok(Release::Released(existing))
    });
    advisory_unlock(&mut conn, name);
    released
}

impl RunLock {
    /// Records the run id holding the lock.
    pub fn set_run(&mut self, run_id: i64) -> Result<(), DbError> {
        diesel::update(cp_locks::table.find(&self.name))
            .set(cp_locks::run_id.eq(run_id))
            .execute(&mut self.conn)?;
        Ok(())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only this process's row: one removed by `release --force` and
        // taken by another run is not this guard's to delete.
        let _ = diesel::delete(
            cp_locks::table
                .find(&self.name)
                .filter(cp_locks::holder.eq(&self.holder)),
        )
        .execute(&mut self.conn);
        advisory_unlock(&mut self.conn, &self.name);
    }
}
