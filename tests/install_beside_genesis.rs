//! Installing beside a district's real Genesis, on both backends: the
//! Genesis objects are made "by the district" (the contract's SQL, run by
//! hand, with rows in them, and one relation as a view over a differently
//! named table). A plain `migrate` refuses to create Genesis tables there;
//! `migrate --integration-only` names every gap of a database that does not
//! meet the contract and creates nothing; on one that does, it creates only
//! cpsync's objects; and `--revert-all` drops those and never the
//! district's tables or rows.

mod common;

use common::{cpsync, cpsync_in_district, Backend, TestDb, BACKENDS};
use cpsync::db::DbConnection;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

const SQLITE_CONTRACT: &str =
    include_str!("../migrations/sqlite/2026-11-26-000001_genesis_contract/up.sql");
const POSTGRES_CONTRACT: &str =
    include_str!("../migrations/postgresql/2026-11-26-000001_genesis_contract/up.sql");

fn contract_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => SQLITE_CONTRACT,
        Backend::Postgres => POSTGRES_CONTRACT,
    }
}

/// The contract's SQL without the `schools` table (nor references to it).
fn without_schools(sql: &str) -> String {
    sql.replace("REFERENCES schools (code)", "")
        .split(';')
        .filter(|statement| !statement.contains("CREATE TABLE schools"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The district's Genesis: the contract, `schools` as a view over the
/// district's own differently named table, and a few rows.
fn district_genesis(db: &TestDb, backend: Backend) {
    let mut conn = db.connect_creating();
    conn.batch_execute(&without_schools(contract_sql(backend)))
        .expect("the contract");
    conn.batch_execute(
        "CREATE TABLE district_buildings (bldg_code TEXT PRIMARY KEY, bldg_name TEXT NOT NULL, lo TEXT NOT NULL, hi TEXT NOT NULL);
         INSERT INTO district_buildings VALUES ('HS', 'High School', '9', '12');
         CREATE VIEW schools AS SELECT bldg_code AS code, bldg_name AS name, lo AS low_grade, hi AS high_grade FROM district_buildings;
         INSERT INTO fee_categories VALUES ('LIB', 'Library fine', 500);
         INSERT INTO students VALUES (1, 'Ada', 'Lovelace', '10', 'HS', 'active', '2010-12-10', NULL);
         INSERT INTO student_fees VALUES (7, 1, 'LIB', 'HS', 'Late book', 500, '2026-09-01', NULL, 'open', '2026-09-01 08:00:00', '2026-09-01 08:00:00');",
    )
    .expect("the district's rows");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(conn: &mut DbConnection, sql: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(sql).load(conn).expect(sql);
    rows[0].count
}

/// cpsync's own tables in the database.
fn cp_tables(conn: &mut DbConnection, backend: Backend) -> i64 {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) AS count FROM sqlite_master WHERE type = 'table' AND name LIKE 'cp\\_%' ESCAPE '\\'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) AS count FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'cp\\_%'"
        }
    };
    count(conn, sql)
}

fn migrate(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--database-url", db.url_text.as_str(), "migrate"];
    all.extend_from_slice(args);
    cpsync(&all)
}

fn installs_beside_the_districts_genesis(backend: Backend) {
    let db = TestDb::empty(backend);
    district_genesis(&db, backend);

    let (code, _, stderr) = migrate(&db, &[]);
    assert_eq!(code, 1, "a plain migrate refuses: {stderr}");
    assert!(stderr.contains("--integration-only"), "{stderr}");
    assert_eq!(
        cp_tables(&mut db.connect_creating(), backend),
        0,
        "nothing created"
    );

    let (code, stdout, stderr) = migrate(&db, &["--integration-only"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("no Genesis object created or changed"),
        "{stdout}"
    );
    let mut conn = db.connect();
    assert!(cp_tables(&mut conn, backend) >= 10, "cpsync's tables exist");
    let (code, status, _) = migrate(&db, &["--status"]);
    assert_eq!(code, 0);
    assert!(!status.contains("pending"), "{status}");
    assert!(
        status.contains("the district's own Genesis objects"),
        "{status}"
    );
    // cpsync reads the district's Genesis, the view included.
    let (code, stdout, stderr) =
        cpsync_in_district(&["--database-url", &db.url_text, "export", "--dry-run"]);
    assert_eq!(
        code, 0,
        "cpsync reads the district's Genesis: {stdout}\n{stderr}"
    );
    // cpsync's outbox triggers fire on the district's fee table.
    conn.batch_execute(
        "UPDATE student_fees SET amount_cents = 600, modified_at = '2026-09-03 08:00:00' WHERE id = 7",
    )
    .expect("an edit in Genesis");

    let (code, _, stderr) = migrate(&db, &["--revert-all"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the district's Genesis tables stay"),
        "{stderr}"
    );
    let (code, stdout, stderr) = migrate(&db, &["--revert-all", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let mut conn = db.connect_creating();
    assert_eq!(cp_tables(&mut conn, backend), 0, "cpsync's tables are gone");
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) AS count FROM student_fees"),
        1
    );
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) AS count FROM students"),
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS count FROM district_buildings"
        ),
        1
    );
    // Without cpsync's triggers the district's tables take rows as before.
    conn.batch_execute(
        "INSERT INTO student_fees VALUES (8, 1, 'LIB', 'HS', 'Lost book', 900, '2026-09-02', NULL, 'open', '2026-09-02 08:00:00', '2026-09-02 08:00:00')",
    )
    .expect("the district's table is untouched");
    // And it installs again.
    let (code, _, stderr) = migrate(&db, &["--integration-only"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn sqlite_installs_beside_the_districts_genesis() {
    installs_beside_the_districts_genesis(Backend::Sqlite);
}

#[test]
fn postgres_installs_beside_the_districts_genesis() {
    installs_beside_the_districts_genesis(Backend::Postgres);
}

fn names_every_gap_and_creates_nothing(backend: Backend) {
    let db = TestDb::empty(backend);
    let mut conn = db.connect_creating();
    // The contract without the unique vendor id, with student_fees lacking
    // its due date, and no schools at all.
    let partial = contract_sql(backend)
        .replace("vendor_txn_id TEXT UNIQUE", "vendor_txn_id TEXT")
        .replace("    due_date DATE,\n", "");
    conn.batch_execute(&without_schools(&partial))
        .expect("the partial contract");

    let (code, stdout, stderr) = migrate(&db, &["--integration-only"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    for gap in [
        "schools: no such table or view",
        "student_fees.due_date: missing (must be a date)",
        "fee_transactions.vendor_txn_id: needs a unique index",
        "nothing was created",
    ] {
        assert!(stderr.contains(gap), "names {gap:?}: {stderr}");
    }
    assert_eq!(cp_tables(&mut conn, backend), 0, "nothing created");
}

#[test]
fn sqlite_names_every_gap_of_the_contract_and_creates_nothing() {
    names_every_gap_and_creates_nothing(Backend::Sqlite);
}

#[test]
fn postgres_names_every_gap_of_the_contract_and_creates_nothing() {
    names_every_gap_and_creates_nothing(Backend::Postgres);
}

#[test]
fn a_database_cpsync_created_is_still_reverted_whole() {
    for backend in BACKENDS {
        let db = TestDb::migrated(backend);
        let (code, _, stderr) = migrate(&db, &["--revert-all", "--yes"]);
        assert_eq!(code, 0, "{stderr}");
        let mut conn = db.connect_creating();
        let genesis = match backend {
            Backend::Sqlite => count(
                &mut conn,
                "SELECT COUNT(*) AS count FROM sqlite_master WHERE name = 'student_fees'",
            ),
            Backend::Postgres => count(
                &mut conn,
                "SELECT COUNT(*) AS count FROM pg_tables WHERE tablename = 'student_fees' AND schemaname = current_schema()",
            ),
        };
        assert_eq!(genesis, 0, "the demo's own Genesis tables are dropped too");
    }
}
