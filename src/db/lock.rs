//! One run at a time per district: a named lock held for the length of a run.
//! PostgreSQL: a session advisory lock on a connection kept open by the
//! guard (released by the server if the process dies). SQLite: a row in
//! `cp_locks`, taken over when the process that holds it is gone.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

use super::schema::cp_locks;
use super::{connect, DatabaseUrl, DbConnection, DbError, OpenMode};

/// The lock every exclusive task (nightly, and anything that must not
/// overlap it) takes.
pub const DISTRICT_LOCK: &str = "district";

/// Who holds a lock, for the refusal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub holder: String,
    pub pid: i64,
    pub acquired_at: NaiveDateTime,
}

/// A held lock; dropping it releases the lock.
pub struct RunLock {
    name: String,
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

fn process_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Tries to take the lock; `Ok(Err(holder))` when someone else has it.
pub fn try_acquire(
    url: &DatabaseUrl,
    name: &str,
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Result<RunLock, Holder>, DbError> {
    let mut conn = connect(url, OpenMode::MustExist)?;
    let taken = match &mut conn {
        DbConnection::Pg(pg) => {
            let row: Acquired = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS acquired")
                .bind::<BigInt, _>(advisory_key(name))
                .get_result(pg)?;
            row.acquired
        }
        DbConnection::Sqlite(_) => true,
    };
    if !taken {
        return Ok(Err(current_holder(&mut conn, name)?.unwrap_or(Holder {
            holder: "another process".to_string(),
            pid: 0,
            acquired_at: now,
        })));
    }
    claim_row(&mut conn, name, run_id, now).map(|claimed| match claimed {
        Ok(()) => Ok(RunLock {
            name: name.to_string(),
            conn,
        }),
        Err(holder) => Err(holder),
    })
}

fn current_holder(conn: &mut DbConnection, name: &str) -> Result<Option<Holder>, DbError> {
    let row: Option<(String, i64, NaiveDateTime)> = cp_locks::table
        .find(name)
        .select((cp_locks::holder, cp_locks::pid, cp_locks::acquired_at))
        .first(conn)
        .optional()?;
    Ok(row.map(|(holder, pid, acquired_at)| Holder {
        holder,
        pid,
        acquired_at,
    }))
}

/// Writes this process into `cp_locks`, replacing a row left by a process
/// that no longer runs on this host.
fn claim_row(
    conn: &mut DbConnection,
    name: &str,
    run_id: Option<i64>,
    now: NaiveDateTime,
) -> Result<Result<(), Holder>, DbError> {
    let me = this_holder();
    let host_prefix = me
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let is_pg = matches!(conn, DbConnection::Pg(_));
    conn.transaction(|conn| {
        if let Some(existing) = current_holder(conn, name)? {
            let same_host = existing.holder.starts_with(&format!("{host_prefix}:"));
            // On PostgreSQL the advisory lock already proved the old holder gone.
            let stale = is_pg || (same_host && !process_alive(existing.pid));
            if !stale {
                return Ok(Err(existing));
            }
            diesel::delete(cp_locks::table.find(name)).execute(conn)?;
        }
        let inserted = crate::with_backend!(conn, |c| diesel::insert_into(cp_locks::table)
            .values((
                cp_locks::name.eq(name),
                cp_locks::holder.eq(&me),
                cp_locks::pid.eq(i64::from(std::process::id())),
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
        let _ = diesel::delete(cp_locks::table.find(&self.name)).execute(&mut self.conn);
        if let DbConnection::Pg(pg) = &mut self.conn {
            let _ = diesel::sql_query("SELECT pg_advisory_unlock($1) AS acquired")
                .bind::<BigInt, _>(advisory_key(&self.name))
                .execute(pg);
        }
    }
}
