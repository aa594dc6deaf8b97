//! Shared test fixtures: a fresh database on either backend, dropped when the
//! test ends. PostgreSQL comes from `CPSYNC_TEST_PG_URL`, which `scripts/test`
//! provides; without it the PostgreSQL tests fail loudly instead of skipping.
#![allow(dead_code)]

pub mod hostile;
pub mod world;

use std::sync::atomic::{AtomicU32, Ordering};

use cpsync::db::{self, DatabaseUrl, DbConnection, OpenMode};
use diesel::connection::SimpleConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A throwaway database, migrated or not. Dropping it removes it.
pub struct TestDb {
    pub url: DatabaseUrl,
    pub url_text: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn pg_admin_url() -> String {
    std::env::var("CPSYNC_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CPSYNC_TEST_PG_URL is not set: PostgreSQL tests need a server. \
             Run the suite with scripts/test, which starts one."
        )
    })
}

impl TestDb {
    /// An empty database (no schema) on `backend`.
    pub fn empty(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("test.db");
                let url_text = format!("sqlite://{}", path.display());
                TestDb {
                    url: DatabaseUrl::parse(&url_text).unwrap(),
                    url_text,
                    _dir: Some(dir),
                    pg_admin: None,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!(
                    "cpsync_t{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst)
                );
                let mut conn =
                    db::connect(&DatabaseUrl::parse(&admin).unwrap(), OpenMode::MustExist)
                        .expect("connect to the test PostgreSQL server");
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                    .expect("drop stale test database");
                conn.batch_execute(&format!("CREATE DATABASE {name}"))
                    .expect("create test database");
                let base = admin.rsplit_once('/').unwrap().0;
                let url_text = format!("{base}/{name}");
                TestDb {
                    url: DatabaseUrl::parse(&url_text).unwrap(),
                    url_text,
                    _dir: None,
                    pg_admin: Some((admin, name)),
                }
            }
        }
    }

    /// A database with every migration applied.
    pub fn migrated(backend: Backend) -> TestDb {
        let test_db = TestDb::empty(backend);
        let mut conn = test_db.connect_creating();
        db::migrate::run_pending(&mut conn).expect("migrations apply");
        test_db
    }

    pub fn connect(&self) -> DbConnection {
        db::connect_migrated(&self.url).expect("connect to migrated test database")
    }

    pub fn connect_creating(&self) -> DbConnection {
        db::connect(&self.url, OpenMode::CreateIfMissing).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg_admin {
            if let Ok(mut conn) =
                db::connect(&DatabaseUrl::parse(admin).unwrap(), OpenMode::MustExist)
            {
                let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// Runs the built `cpsync` binary; returns (exit code, stdout, stderr).
pub fn cpsync(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .output()
        .expect("run cpsync");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
