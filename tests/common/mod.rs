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

    /// A migrated SQLite database in `dir` (which outlives it).
    pub fn migrated_sqlite_in(dir: &std::path::Path) -> TestDb {
        let url_text = format!("sqlite://{}", dir.join("genesis.db").display());
        let test_db = TestDb {
            url: DatabaseUrl::parse(&url_text).unwrap(),
            url_text,
            _dir: None,
            pg_admin: None,
        };
        let mut conn = test_db.connect_creating();
        db::migrate::run_pending(&mut conn).expect("migrations apply");
        test_db
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

/// Runs the built `cpsync` binary with `config`, pointed at the database
/// and simulator of `world`; returns (exit code, stdout, stderr).
#[allow(dead_code)]
pub fn cpsync_in_world(
    world: &world::World,
    config: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let config = config.display().to_string();
    let cp_url = world.sim.base_url();
    let all: Vec<&str> = [
        "--config",
        config.as_str(),
        "--database-url",
        world.db.url_text.as_str(),
        "--cp-url",
        cp_url.as_str(),
    ]
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

/// One integration fee as Community Pass holds it, read with raw HTTP and
/// a decoder of the test's own (never `portal::`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawVendorFee {
    pub genesis_fee_id: i64,
    pub student_id: i64,
    pub patron_id: String,
    pub category: String,
    pub school: String,
    pub description: String,
    pub amount_cents: i64,
    pub genesis_credit_cents: i64,
    pub status: String,
    pub fee_date: String,
    pub due_date: Option<String>,
}

/// "12.34" / "-0.50" → cents, strictly two places.
fn raw_cents(text: &str) -> i64 {
    let (whole, cents) = text.split_once('.').expect("two places");
    assert_eq!(cents.len(), 2, "two places: {text}");
    let sign = if whole.starts_with('-') { -1 } else { 1 };
    sign * (whole.trim_start_matches('-').parse::<i64>().unwrap() * 100
        + cents.parse::<i64>().unwrap())
}

/// Every integration fee Community Pass holds, by Genesis fee id.
#[allow(dead_code)]
pub fn raw_vendor_fees(
    base_url: &str,
    api_key: &str,
) -> std::collections::BTreeMap<i64, RawVendorFee> {
    cpsync::portal::http::install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let mut cursor: Option<String> = None;
    let mut found = std::collections::BTreeMap::new();
    for _ in 0..100_000 {
        let mut url = format!("{base_url}/v1/fees?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: serde_json::Value = client
            .get(url)
            .bearer_auth(api_key)
            .send()
            .expect("the simulator answers")
            .json()
            .expect("a JSON page");
        for item in page["items"].as_array().expect("items") {
            let text = |field: &str| {
                item[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("{field}"))
                    .to_string()
            };
            let fee = RawVendorFee {
                genesis_fee_id: item["genesis_fee_id"].as_i64().expect("genesis_fee_id"),
                student_id: item["student_id"].as_i64().expect("student_id"),
                patron_id: text("patron_id"),
                category: text("category"),
                school: text("school"),
                description: text("description"),
                amount_cents: raw_cents(&text("amount")),
                genesis_credit_cents: raw_cents(&text("genesis_credit")),
                status: text("status"),
                fee_date: text("fee_date"),
                due_date: item["due_date"].as_str().map(str::to_string),
            };
            assert!(
                found.insert(fee.genesis_fee_id, fee).is_none(),
                "Community Pass lists one Genesis fee twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return found,
        }
    }
    panic!("the fee listing never ended");
}

/// Every Genesis fee dated on or after `cutoff` whose category and school
/// the district sends (`sent(category, school)`) is in Community Pass with what
/// Genesis says now, field by field — the expectation written out here,
/// not taken from cpsync: the student, the student id as patron (the
/// default rule), category, school, description, amount, dates; the
/// Genesis credit is its own manual payments and waivers net of its own
/// refunds and reversals; a void fee is void, a waived one waived, an open
/// one open or paid. A fee deleted in Genesis is void in Community Pass,
/// and no fee dated before the cutoff was sent. Returns the fees compared.
#[allow(dead_code)]
pub fn assert_genesis_fees_reached_community_pass(
    conn: &mut DbConnection,
    base_url: &str,
    api_key: &str,
    cutoff: &str,
    sent: &dyn Fn(&str, &str) -> bool,
) -> usize {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Nullable, Text};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        student_id: i64,
        #[diesel(sql_type = Text)]
        category_code: String,
        #[diesel(sql_type = Text)]
        school_code: String,
        #[diesel(sql_type = Text)]
        description: String,
        #[diesel(sql_type = BigInt)]
        amount_cents: i64,
        #[diesel(sql_type = Text)]
        fee_date: String,
        #[diesel(sql_type = Nullable<Text>)]
        due_date: Option<String>,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = BigInt)]
        credit_cents: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT f.id, f.student_id, f.category_code, f.school_code, f.description, f.amount_cents, \
                CAST(f.fee_date AS TEXT) AS fee_date, CAST(f.due_date AS TEXT) AS due_date, f.status, \
                CAST(COALESCE((SELECT SUM(CASE WHEN t.kind IN ('payment', 'waiver') THEN t.amount_cents \
                                          ELSE -t.amount_cents END) \
                      FROM fee_transactions t WHERE t.fee_id = f.id AND t.source = 'genesis'), 0) AS BIGINT) \
                  AS credit_cents \
         FROM student_fees f",
    )
    .load(conn)
    .expect("the Genesis fees");
    let vendor = raw_vendor_fees(base_url, api_key);
    let mut compared = 0;
    let eligible =
        |r: &&Row| r.fee_date.as_str() >= cutoff && sent(&r.category_code, &r.school_code);
    for row in rows.iter().filter(eligible) {
        let Some(fee) = vendor.get(&row.id) else {
            panic!(
                "Genesis fee {} (dated {}) never reached Community Pass",
                row.id, row.fee_date
            );
        };
        let expected_status_ok = match row.status.as_str() {
            "open" => fee.status == "open" || fee.status == "paid",
            other => fee.status == other,
        };
        let shown = format!(
            "fee {}: Genesis {:?} / Community Pass {fee:?}",
            row.id,
            (
                row.student_id,
                &row.category_code,
                &row.school_code,
                &row.description,
                row.amount_cents,
                &row.fee_date,
                &row.due_date,
                &row.status,
                row.credit_cents,
            )
        );
        assert_eq!(fee.student_id, row.student_id, "{shown}");
        assert_eq!(fee.patron_id, row.student_id.to_string(), "{shown}");
        assert_eq!(fee.category, row.category_code, "{shown}");
        assert_eq!(fee.school, row.school_code, "{shown}");
        assert_eq!(fee.description, row.description, "{shown}");
        assert_eq!(fee.amount_cents, row.amount_cents, "{shown}");
        assert_eq!(fee.fee_date, row.fee_date, "{shown}");
        assert_eq!(fee.due_date, row.due_date, "{shown}");
        assert_eq!(fee.genesis_credit_cents, row.credit_cents, "{shown}");
        assert!(expected_status_ok, "status: {shown}");
        compared += 1;
    }
    let in_genesis: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
    for fee in vendor.values() {
        assert!(
            fee.fee_date.as_str() >= cutoff,
            "a fee dated before the cutoff was sent: {fee:?}"
        );
        assert!(
            sent(&fee.category, &fee.school),
            "a fee of a category or school not sent: {fee:?}"
        );
        if !in_genesis.contains(&fee.genesis_fee_id) {
            assert_eq!(fee.status, "void", "deleted in Genesis, so void: {fee:?}");
        }
    }
    compared
}
