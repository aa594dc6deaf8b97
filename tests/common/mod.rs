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

/// `cpsync` with a config that names the district (the report, its email
/// and the export refuse to run without one).
#[allow(dead_code)]
pub fn cpsync_in_district(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("cpsync.toml");
    std::fs::write(&config, "district = \"Test District\"\n").expect("the config is written");
    let config = config.display().to_string();
    let all: Vec<&str> = ["--config", config.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    cpsync(&all)
}

/// Runs the built `cpsync` binary; returns (exit code, stdout, stderr).
/// The API key is the one `world::World`'s simulator accepts (read from
/// `CPSYNC_API_KEY`, as the database holds only its fingerprint).
pub fn cpsync(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env_remove("CPSYNC_API_KEY_FILE")
        .env("CPSYNC_API_KEY", world::API_KEY)
        .output()
        .expect("run cpsync");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One Community Pass transaction as the vendor's own log holds it, read
/// with raw HTTP and a decoder of the test's own (never `portal::`), so a
/// check against it cannot agree with cpsync by construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawVendorTxn {
    pub id: String,
    pub genesis_fee_id: Option<i64>,
    pub kind: String,
    pub amount_cents: i64,
}

/// Every transaction in the vendor's log, each delivery once per id.
#[allow(dead_code)]
pub fn raw_vendor_transactions(base_url: &str, api_key: &str) -> Vec<RawVendorTxn> {
    cpsync::portal::http::install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let mut after = 0i64;
    let mut found = std::collections::BTreeMap::new();
    for _ in 0..100_000 {
        let page: serde_json::Value = client
            .get(format!(
                "{base_url}/v1/transactions?after={after}&limit=1000"
            ))
            .bearer_auth(api_key)
            .send()
            .expect("the simulator answers")
            .json()
            .expect("a JSON page");
        for item in page["items"].as_array().expect("items") {
            let amount = item["amount"].as_str().expect("an amount string");
            let (whole, cents) = amount.split_once('.').expect("two places");
            let sign = if whole.starts_with('-') { -1 } else { 1 };
            let cents_value = whole.trim_start_matches('-').parse::<i64>().unwrap() * 100
                + cents.parse::<i64>().unwrap();
            let txn = RawVendorTxn {
                id: item["id"].as_str().expect("an id").to_string(),
                genesis_fee_id: item["genesis_fee_id"].as_i64(),
                kind: item["kind"].as_str().expect("a kind").to_string(),
                amount_cents: sign * cents_value,
            };
            found.entry(txn.id.clone()).or_insert(txn);
        }
        after = page["next_after"].as_i64().expect("next_after");
        if page["has_more"] != true {
            return found.into_values().collect();
        }
    }
    panic!("the transaction log never ended");
}
