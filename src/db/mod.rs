//! The database layer: the only module that knows SQL. It chooses the backend
//! from the URL scheme, opens tuned connections, runs the embedded migrations,
//! and offers a narrow set of queries over the Genesis contract and the
//! integration's own `cp_` tables.

use std::fmt;
use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

/// One connection to either backend; every query in this crate runs on it.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(diesel::SqliteConnection),
    Pg(diesel::PgConnection),
}

/// Runs the same diesel code on whichever backend `conn` is, for the few
/// statements the multi-connection cannot express (batch inserts, upserts).
#[macro_export]
macro_rules! with_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite($c) => $body,
            $crate::db::DbConnection::Pg($c) => $body,
        }
    };
}

/// Inserts `rows` (a `Vec` of insertable rows) into `table` in multi-row
/// batches of `INSERT_BATCH_ROWS`; evaluates to `Result<usize, DbError>`.
macro_rules! insert_batched {
    ($conn:expr, $table:expr, $rows:expr) => {{
        let mut inserted = 0usize;
        for chunk in $rows.chunks($crate::db::genesis::INSERT_BATCH_ROWS) {
            inserted += $crate::with_backend!($conn, |c| diesel::insert_into($table)
                .values(chunk)
                .execute(c))?;
        }
        Ok(inserted)
    }};
}

pub mod audit;
pub mod balances;
pub mod cached_sql;
pub mod cursors;
pub mod discrepancies;
pub mod genesis;
pub mod genesis_contract;
pub mod links;
pub mod lock;
pub mod marks;
pub mod migrate;
pub mod outbox;
pub mod owner;
pub mod postings;
pub mod report_mail;
pub mod review_items;
pub mod run_reports;
pub mod runs;
pub mod schema;
pub mod settings;
mod sql_time;
pub mod tasks;

/// How long a SQLite connection waits for another writer before failing.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// libpq `connect_timeout` (seconds) unless the URL sets one: a server
/// that accepts and never answers fails the connection after this long.
pub const PG_CONNECT_TIMEOUT_SECS: u32 = 10;
/// PostgreSQL `statement_timeout` (milliseconds) unless the URL sets
/// `options`: no single statement runs longer (a nightly's largest read of
/// a big district takes seconds).
pub const PG_STATEMENT_TIMEOUT_MS: u32 = 600_000;
/// TCP keepalive: idle seconds before the first probe, seconds between
/// probes, and probes lost before the connection counts as dead — a
/// server that vanished is noticed in about a minute and a half.
pub const PG_KEEPALIVES_IDLE_SECS: u32 = 60;
pub const PG_KEEPALIVES_INTERVAL_SECS: u32 = 10;
pub const PG_KEEPALIVES_COUNT: u32 = 3;
/// libpq `tcp_user_timeout` (milliseconds): data sent and not acknowledged
/// for this long fails the connection.
pub const PG_TCP_USER_TIMEOUT_MS: u32 = 90_000;

/// Errors of the database layer. Messages name the cause in one line and
/// never include a password from the URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL scheme {scheme:?}: use sqlite://PATH, a plain file path, or postgres://...")]
    UnknownScheme { scheme: String },
    #[error("the database URL is empty")]
    EmptyUrl,
    #[error("SQLite database {path} does not exist (run `cpsync migrate` to create it)")]
    SqliteMissing { path: PathBuf },
    #[error("cannot open SQLite database {path}: {reason}")]
    SqliteOpen { path: PathBuf, reason: String },
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    PostgresConnect { target: String, reason: String },
    #[error(
        "refusing to connect to PostgreSQL host {host} without TLS: a remote database needs \
         sslmode=verify-full (cpsync's default for a host that is not loopback), and no root \
         certificate is available to verify the server (none of sslrootcert= in the URL, \
         PGSSLROOTCERT, ~/.postgresql/root.crt exists); add sslrootcert=/path/to/ca.crt to the \
         URL, or name the sslmode you accept in the URL (e.g. sslmode=require); nothing was sent \
         to {host}"
    )]
    PostgresTlsUnavailable { host: String },
    #[error(
        "database schema is not migrated: {pending} migration(s) pending (run `cpsync migrate`)"
    )]
    NotMigrated { pending: usize },
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("invalid data in {table} row {key}: {reason}")]
    InvalidRow {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// Which backend a URL selects, decided from its scheme alone.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, a plain path, or
    /// `postgres://` / `postgresql://`. Any other `scheme://` is refused, so a
    /// typo never silently becomes a new SQLite file.
    pub fn parse(text: &str) -> Result<DatabaseUrl, DbError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DbError::EmptyUrl);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(text.to_string()));
        }
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(DbError::EmptyUrl);
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(DbError::UnknownScheme {
                scheme: scheme.to_string(),
            });
        }
        if text.contains('=') && !text.contains('/') {
            // A libpq "host=... dbname=..." string must not become a file.
            return Err(DbError::UnknownScheme {
                scheme: "libpq key=value".to_string(),
            });
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(text)))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgresql",
        }
    }

    /// Whether the URL carries a password (in its user information or a
    /// `password=` parameter).
    pub fn has_password(&self) -> bool {
        match self {
            DatabaseUrl::Sqlite(_) => false,
            DatabaseUrl::Postgres(url) => {
                !postgres_url_passwords(url).is_empty()
                    || pg_query_pairs(url).iter().any(|(key, _)| key == "password")
            }
        }
    }

    /// The URL with any password replaced, for messages and logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => redact_postgres_url(url),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_postgres_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The user information ends at the last '@' before the query: a
    // password may itself hold '/' or '@' (libpq reads it that way).
    let (shown_user, host_and_path) = match before_query.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let user = user.split('/').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            (format!("{user}{hidden}@"), after)
        }
        None => (String::new(), before_query),
    };
    // Query parameters may carry a password too.
    let shown_query = if query.is_some() { "?***" } else { "" };
    format!("{scheme}://{shown_user}{host_and_path}{shown_query}")
}

/// The password a PostgreSQL URL carries (as written and percent-decoded),
/// so libpq's own messages can be scrubbed of it.
fn postgres_url_passwords(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let before_query = rest.split('?').next().unwrap_or(rest);
    let mut found = Vec::new();
    if let Some((userinfo, _)) = before_query.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password.to_string());
            if let Ok(decoded) = percent_decode(password) {
                found.push(decoded);
            }
        }
    }
    for pair in rest.split_once('?').map_or("", |(_, q)| q).split('&') {
        if let Some(("password", value)) = pair.split_once('=') {
            found.push(value.to_string());
        }
    }
    found.retain(|password| password.len() >= 2);
    found
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// `text` with every password of `url` replaced by `***`.
fn scrub_postgres_passwords(text: &str, url: &str) -> String {
    postgres_url_passwords(url)
        .iter()
        .fold(text.to_string(), |scrubbed, password| {
            scrubbed.replace(password.as_str(), "***")
        })
}

/// Whether opening may create a missing SQLite file (only `migrate` and the demo may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    MustExist,
    CreateIfMissing,
}

/// Opens a connection on the backend the URL names, tuned for this engine.
pub fn connect(url: &DatabaseUrl, mode: OpenMode) -> Result<DbConnection, DbError> {
    match url {
        DatabaseUrl::Sqlite(path) => connect_sqlite(path, mode).map(DbConnection::Sqlite),
        DatabaseUrl::Postgres(text) => connect_postgres(url, text).map(DbConnection::Pg),
    }
}

/// A transaction that writes after it reads. On SQLite it begins with
/// `BEGIN IMMEDIATE`, taking the write lock at once: a deferred transaction
/// that has read cannot wait for a concurrent writer when it starts to
/// write (WAL answers "database is locked" at once, the busy timeout does
/// not apply), so two pulls racing would fail instead of queueing. On
/// PostgreSQL it is an ordinary transaction. Nested `transaction` calls in
/// `body` become savepoints as usual.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, body: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    match conn {
        DbConnection::Sqlite(sqlite) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?
        }
        DbConnection::Pg(pg) => AnsiTransactionManager::begin_transaction(pg)?,
    }
    let result = body(conn);
    // The first error is the one shown: SQLite rolls a transaction back by
    // itself on some failures (a full disk), and "cannot rollback - no
    // transaction is active" must not replace what went wrong.
    match result {
        Ok(value) => match commit(conn) {
            Ok(()) => Ok(value),
            Err(error) => {
                quiet_rollback(conn);
                Err(error.into())
            }
        },
        Err(error) => {
            quiet_rollback(conn);
            Err(error)
        }
    }
}

fn commit(conn: &mut DbConnection) -> diesel::QueryResult<()> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    match conn {
        DbConnection::Sqlite(sqlite) => AnsiTransactionManager::commit_transaction(sqlite),
        DbConnection::Pg(pg) => AnsiTransactionManager::commit_transaction(pg),
    }
}

/// Rolls back after a failure, logging (not returning) a rollback error.
fn quiet_rollback(conn: &mut DbConnection) {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let rolled_back = match conn {
        DbConnection::Sqlite(sqlite) => AnsiTransactionManager::rollback_transaction(sqlite),
        DbConnection::Pg(pg) => AnsiTransactionManager::rollback_transaction(pg),
    };
    if let Err(error) = rolled_back {
        tracing::debug!(%error, "rollback after a failed transaction");
    }
}

/// SQLite's `PRAGMA data_version` on this connection: a number that
/// changes when another connection commits (this one's own commits leave
/// it), read from the WAL index without touching the tables. `watch` polls
/// it to learn of a commit cheaply. PostgreSQL has no such number (its
/// `watch` LISTENs): an error there.
pub fn data_version(conn: &mut DbConnection) -> Result<i64, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        data_version: i64,
    }
    match conn {
        DbConnection::Sqlite(sqlite) => {
            let version: Version = diesel::sql_query("PRAGMA data_version").get_result(sqlite)?;
            Ok(version.data_version)
        }
        DbConnection::Pg(_) => Err(DbError::Query(diesel::result::Error::QueryBuilderError(
            "PRAGMA data_version is SQLite's".into(),
        ))),
    }
}

/// Opens a connection and checks that every migration has run.
pub fn connect_migrated(url: &DatabaseUrl) -> Result<DbConnection, DbError> {
    let mut conn = connect(url, OpenMode::MustExist)?;
    let pending = migrate::pending_count(&mut conn)?;
    if pending > 0 {
        return Err(DbError::NotMigrated { pending });
    }
    Ok(conn)
}

fn connect_sqlite(path: &Path, mode: OpenMode) -> Result<diesel::SqliteConnection, DbError> {
    if mode == OpenMode::MustExist && !path.exists() {
        return Err(DbError::SqliteMissing {
            path: path.to_path_buf(),
        });
    }
    let open_error = |reason: String| DbError::SqliteOpen {
        path: path.to_path_buf(),
        reason,
    };
    let path_text = path
        .to_str()
        .ok_or_else(|| open_error("path is not valid UTF-8".to_string()))?;
    if mode == OpenMode::CreateIfMissing && !path.exists() {
        create_private_file(path).map_err(|e| open_error(e.to_string()))?;
    }
    let mut conn = diesel::SqliteConnection::establish(path_text)
        .map_err(|e| open_error(one_line(&e.to_string())))?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;"
    ))
    .map_err(|e| open_error(one_line(&e.to_string())))?;
    Ok(conn)
}

/// Creates an empty SQLite file readable by its owner only (it holds
/// student data), whatever the umask: SQLite opens an empty file as an
/// empty database and gives its `-wal` and `-shm` files the same mode.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    crate::files::create_new_private_file(path).map(drop)
}

fn connect_postgres(url: &DatabaseUrl, text: &str) -> Result<diesel::PgConnection, DbError> {
    let with_tls = with_pg_tls(text, &PgTlsEnvironment::of_process())?;
    let with_deadlines = with_pg_deadlines(&with_tls);
    diesel::PgConnection::establish(&with_deadlines).map_err(|e| {
        let mut reason = scrub_postgres_passwords(&one_line(&e.to_string()), text);
        if reason.contains("timeout expired") {
            reason = format!(
                "no answer within the connect timeout ({} s unless the URL sets connect_timeout): {reason}",
                PG_CONNECT_TIMEOUT_SECS
            );
        }
        DbError::PostgresConnect {
            target: url.redacted(),
            reason,
        }
    })
}

/// The TLS mode cpsync asks of libpq for a PostgreSQL host that is not on
/// this machine, unless the URL names its own `sslmode`: encrypted, the
/// certificate signed by a trusted root and naming the host.
pub const PG_REMOTE_SSLMODE: &str = "verify-full";

/// What libpq would read from the environment and the home folder to pick
/// a host and verify a server certificate; `of_process` reads them.
#[derive(Debug, Clone, Default)]
pub struct PgTlsEnvironment {
    /// `PGHOST`: the host(s) libpq uses when the URL names none.
    pub pghost: Option<String>,
    /// `PGSSLROOTCERT`.
    pub pgsslrootcert: Option<PathBuf>,
    /// `HOME`, for libpq's default `~/.postgresql/root.crt`.
    pub home: Option<PathBuf>,
}

impl PgTlsEnvironment {
    pub fn of_process() -> PgTlsEnvironment {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        PgTlsEnvironment {
            pghost: non_empty("PGHOST"),
            pgsslrootcert: non_empty("PGSSLROOTCERT").map(PathBuf::from),
            home: non_empty("HOME").map(PathBuf::from),
        }
    }
}

/// The query parameters of a PostgreSQL URL, keys lower-cased and values
/// percent-decoded.
fn pg_query_pairs(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map_or("", |(_, query)| query)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).unwrap_or_else(|_| value.to_string());
            (key.to_ascii_lowercase(), value)
        })
        .collect()
}

/// Every host a PostgreSQL URL may connect to: the URL's hosts
/// (`host1:5432,host2`), `host=` and `hostaddr=` parameters, else
/// `PGHOST`; an empty list means libpq's default Unix socket.
pub fn postgres_hosts(url: &str, environment: &PgTlsEnvironment) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let before_query = rest.split('?').next().unwrap_or(rest);
    // The user information ends at the last '@' before the query (a
    // password may hold '@' or '/', as libpq reads it); the hosts end at
    // the first '/' after it.
    let after_user = before_query
        .rsplit_once('@')
        .map_or(before_query, |(_, h)| h);
    let host_list = after_user.split('/').next().unwrap_or("");
    let mut hosts: Vec<String> = split_host_list(host_list)
        .into_iter()
        .map(|h| percent_decode(&h).unwrap_or(h))
        .collect();
    for (key, value) in pg_query_pairs(url) {
        if key == "host" || key == "hostaddr" {
            hosts.extend(split_host_list(&value));
        }
    }
    if hosts.is_empty() {
        if let Some(pghost) = &environment.pghost {
            hosts.extend(split_host_list(pghost));
        }
    }
    hosts
}

/// `a:1,[::1]:2,b` → `a`, `::1`, `b` (ports and brackets dropped).
fn split_host_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            if let Some(inner) = entry.strip_prefix('[') {
                return inner.split(']').next().unwrap_or(inner).to_string();
            }
            if entry.starts_with('/') || entry.parse::<std::net::Ipv6Addr>().is_ok() {
                return entry.to_string();
            }
            entry.split(':').next().unwrap_or(entry).to_string()
        })
        .filter(|host| !host.is_empty())
        .collect()
}

/// A host on this machine: a Unix socket folder, `localhost`, or a
/// loopback address (127.0.0.0/8, ::1). Only these may be reached without
/// TLS by default.
pub fn is_local_pg_host(host: &str) -> bool {
    if host.starts_with('/') || host.starts_with('@') {
        return true;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

/// Whether libpq can verify a server certificate: a root certificate named
/// by `sslrootcert=`, `PGSSLROOTCERT`, or `~/.postgresql/root.crt` exists.
fn pg_root_certificate_available(url: &str, environment: &PgTlsEnvironment) -> bool {
    let named = pg_query_pairs(url)
        .into_iter()
        .find(|(key, _)| key == "sslrootcert")
        .map(|(_, value)| PathBuf::from(value))
        .or_else(|| environment.pgsslrootcert.clone())
        .or_else(|| {
            environment
                .home
                .as_ref()
                .map(|home| home.join(".postgresql/root.crt"))
        });
    named.is_some_and(|path| path.is_file())
}

/// The URL libpq gets, as far as TLS goes. An explicit `sslmode=` in the
/// URL is respected as written; a URL whose hosts are all on this machine
/// is left alone (libpq's default, plain on a Unix socket); any other gets
/// `sslmode=verify-full`, and is refused here, before anything is sent,
/// when no root certificate is available to verify the server (libpq would
/// only find out after connecting). The error names the host, never the
/// password.
pub fn with_pg_tls(url: &str, environment: &PgTlsEnvironment) -> Result<String, DbError> {
    if pg_query_pairs(url).iter().any(|(key, _)| key == "sslmode") {
        return Ok(url.to_string());
    }
    let hosts = postgres_hosts(url, environment);
    let Some(remote) = hosts.iter().find(|host| !is_local_pg_host(host)) else {
        return Ok(url.to_string());
    };
    if !pg_root_certificate_available(url, environment) {
        return Err(DbError::PostgresTlsUnavailable {
            host: remote.clone(),
        });
    }
    let separator = match url.split_once('?') {
        Some((_, query)) if !query.is_empty() => "&",
        Some(_) => "",
        None => "?",
    };
    Ok(format!("{url}{separator}sslmode={PG_REMOTE_SSLMODE}"))
}

/// The URL with the deadline parameters it does not set itself appended:
/// `connect_timeout`, TCP keepalives, `tcp_user_timeout`, and
/// `options=-c statement_timeout=...` (left alone when the URL has its own
/// `options`). Values are percent-encoded (libpq does not read `+` as a
/// space).
pub fn with_pg_deadlines(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let present: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .map(|key| key.to_ascii_lowercase())
        .collect();
    let defaults = [
        ("connect_timeout", PG_CONNECT_TIMEOUT_SECS.to_string()),
        ("keepalives", "1".to_string()),
        ("keepalives_idle", PG_KEEPALIVES_IDLE_SECS.to_string()),
        (
            "keepalives_interval",
            PG_KEEPALIVES_INTERVAL_SECS.to_string(),
        ),
        ("keepalives_count", PG_KEEPALIVES_COUNT.to_string()),
        ("tcp_user_timeout", PG_TCP_USER_TIMEOUT_MS.to_string()),
        (
            "options",
            format!("-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"),
        ),
    ];
    let mut pairs: Vec<String> = query
        .filter(|q| !q.is_empty())
        .map(|q| vec![q.to_string()])
        .unwrap_or_default();
    for (key, value) in defaults {
        if !present.iter().any(|p| p == key) {
            pairs.push(format!("{key}={}", percent_encode(&value)));
        }
    }
    format!("{base}?{}", pairs.join("&"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// libpq's messages span lines; keep the first meaningful one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_schemes_choose_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://a/b.db").unwrap(),
            DatabaseUrl::Sqlite("a/b.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("x.db").unwrap(),
            DatabaseUrl::Sqlite("x.db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgresql://u@h/d").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!(matches!(
            DatabaseUrl::parse("foo://x"),
            Err(DbError::UnknownScheme { .. })
        ));
        assert!(matches!(
            DatabaseUrl::parse("host=localhost dbname=x"),
            Err(DbError::UnknownScheme { .. })
        ));
        assert!(matches!(DatabaseUrl::parse("  "), Err(DbError::EmptyUrl)));
    }

    #[test]
    fn passwords_with_slashes_and_at_signs_are_redacted() {
        let cases: [(&str, &[&str]); 4] = [
            ("postgres://cp:pa/ss@db:5432/genesis", &["pa/ss", "ss@"]),
            ("postgres://cp:p@ss@db/genesis", &["p@ss"]),
            (
                "postgres://cp:p%40ss%2Fw@db/genesis?sslmode=require",
                &["p%40ss"],
            ),
            (
                "postgresql://cp:a/b@c@db/genesis?password=xyz",
                &["a/b@c", "xyz"],
            ),
        ];
        for (url, secrets) in cases {
            let shown = DatabaseUrl::parse(url).unwrap().to_string();
            for secret in secrets {
                assert!(!shown.contains(secret), "{url} shown as {shown}");
            }
            assert!(shown.contains("cp:***@db"), "{url} shown as {shown}");
        }
        let scrubbed = scrub_postgres_passwords(
            "FATAL: password p@ss/w rejected; also p%40ss%2Fw",
            "postgres://cp:p%40ss%2Fw@db/genesis",
        );
        assert_eq!(scrubbed, "FATAL: password *** rejected; also ***");
    }

    #[test]
    fn passwords_are_redacted() {
        let url = DatabaseUrl::parse("postgres://cp:hunter2@db:5432/genesis?password=x").unwrap();
        let shown = url.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("cp:***@db:5432/genesis"), "{shown}");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    fn no_tls_environment() -> PgTlsEnvironment {
        PgTlsEnvironment {
            pghost: None,
            pgsslrootcert: None,
            home: Some(PathBuf::from("/nonexistent-home-for-tests")),
        }
    }

    #[test]
    fn hosts_are_read_from_the_url_its_parameters_and_pghost() {
        let env = no_tls_environment();
        let hosts = |url: &str| postgres_hosts(url, &env);
        assert_eq!(
            hosts("postgres://u:p@ss@db.example.org:5432/g"),
            ["db.example.org"]
        );
        assert_eq!(hosts("postgres://a:1,[::1]:2,b/g"), ["a", "::1", "b"]);
        assert_eq!(hosts("postgres://cp:pa/ss@10.0.0.5/g"), ["10.0.0.5"]);
        assert_eq!(
            hosts("postgres:///g?host=/var/run/postgresql"),
            ["/var/run/postgresql"]
        );
        assert_eq!(hosts("postgres://%2Ftmp%2Fpg/g"), ["/tmp/pg"]);
        assert!(hosts("postgres:///g").is_empty());
        let with_pghost = PgTlsEnvironment {
            pghost: Some("10.1.2.3".into()),
            ..no_tls_environment()
        };
        assert_eq!(postgres_hosts("postgres:///g", &with_pghost), ["10.1.2.3"]);
    }

    #[test]
    fn loopback_and_sockets_are_local_everything_else_is_remote() {
        for local in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "localhost",
            "LOCALHOST",
            "/tmp/pg",
        ] {
            assert!(is_local_pg_host(local), "{local}");
        }
        for remote in [
            "192.0.2.1",
            "10.255.255.1",
            "db.example.org",
            "::2",
            "128.0.0.1",
        ] {
            assert!(!is_local_pg_host(remote), "{remote}");
        }
    }

    #[test]
    fn a_remote_host_gets_verify_full_or_is_refused_naming_the_host_only() {
        let env = no_tls_environment();
        let local = "postgres://cp@127.0.0.1:5432/g?connect_timeout=3";
        assert_eq!(with_pg_tls(local, &env).unwrap(), local);
        let explicit = "postgres://cp:pw@db.example.org/g?sslmode=disable";
        assert_eq!(with_pg_tls(explicit, &env).unwrap(), explicit);
        let error = with_pg_tls("postgres://cp:hunter2@192.0.2.1/g", &env)
            .unwrap_err()
            .to_string();
        assert!(error.contains("host 192.0.2.1 without TLS"), "{error}");
        assert!(error.contains("sslrootcert="), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = with_pg_tls("postgres://127.0.0.1,db.example.org/g", &env).unwrap_err();
        assert!(error.to_string().contains("db.example.org"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let url = format!(
            "postgres://cp@db.example.org/g?sslrootcert={}",
            ca.display()
        );
        assert_eq!(
            with_pg_tls(&url, &env).unwrap(),
            format!("{url}&sslmode=verify-full")
        );
        let home = PgTlsEnvironment {
            home: Some(dir.path().to_path_buf()),
            ..no_tls_environment()
        };
        std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
        std::fs::copy(&ca, dir.path().join(".postgresql/root.crt")).unwrap();
        assert_eq!(
            with_pg_tls("postgres://cp@db.example.org/g", &home).unwrap(),
            "postgres://cp@db.example.org/g?sslmode=verify-full"
        );
    }

    #[test]
    fn postgres_urls_get_deadlines_they_do_not_set() {
        let url = with_pg_deadlines("postgres://u:p@h:5432/db");
        assert!(
            url.starts_with("postgres://u:p@h:5432/db?connect_timeout=10&keepalives=1"),
            "{url}"
        );
        assert!(
            url.contains("options=-c%20statement_timeout%3D600000"),
            "{url}"
        );
        let own = with_pg_deadlines("postgres://h/db?connect_timeout=3&options=-c%20x%3D1");
        assert!(
            own.starts_with("postgres://h/db?connect_timeout=3&options=-c%20x%3D1&keepalives=1"),
            "{own}"
        );
        assert_eq!(own.matches("connect_timeout").count(), 1, "{own}");
        assert!(!own.contains("statement_timeout"), "{own}");
    }

    #[test]
    fn missing_sqlite_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        let url = DatabaseUrl::Sqlite(path.clone());
        assert!(matches!(
            connect(&url, OpenMode::MustExist),
            Err(DbError::SqliteMissing { .. })
        ));
        assert!(!path.exists());
    }
}
