//! The five tasks end to end on both backends, driving the `cpsync` binary
//! against an in-process Community Pass simulator: setup order and what is
//! (never) sent, the instant path through `cpsync watch`, the three payment
//! paths at once, the preflight, and the parent portal's lock-out. Each
//! scenario is one function run once per backend; PostgreSQL comes from
//! `CPSYNC_TEST_PG_URL` and its absence fails the test.

#[path = "../common/mod.rs"]
mod common;

mod disk_full;
mod payments;
mod portal_view;
mod preflight;
mod setup_send;
mod watch;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{Backend, TestDb};
use cpsync::db::{genesis, DbConnection};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::sim::{AdminClient, SimConfig, SimHandle, Simulator};
use diesel::connection::SimpleConnection;

/// The simulator's API key in every test.
pub const API_KEY: &str = "cp_test_tasks_key_0001";
/// The cutoff date every set-up district uses.
pub const CUTOFF: &str = "2026-08-01";

/// A migrated database, a running simulator and the binary between them.
pub struct Env {
    pub db: TestDb,
    pub sim: SimHandle,
    pub admin: AdminClient,
    pub portal: HttpPortal,
    dir: tempfile::TempDir,
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        Env::with_db(TestDb::migrated(backend))
    }

    /// An environment around a database made elsewhere (a SQLite file on
    /// a small disk, say).
    pub fn with_db(db: TestDb) -> Env {
        let sim = Simulator::start(SimConfig::new(Secret::new(API_KEY))).expect("simulator");
        let admin = sim.admin().expect("admin client");
        let portal = HttpPortal::new(HttpPortalConfig::new(sim.base_url(), Secret::new(API_KEY)))
            .expect("portal client");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("api-key"), format!("{API_KEY}\n")).expect("key file");
        Env {
            db,
            sim,
            admin,
            portal,
            dir,
        }
    }

    /// A scratch folder that lives as long as the environment.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The binary, pointed at this database and simulator.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with_url(&self.db.url_text, args)
    }

    /// The binary, pointed at this simulator and the database at `url`
    /// (for instance through a proxy that can cut it off).
    pub fn command_with_url(&self, url: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cpsync"));
        command
            .args(["--database-url", url, "--cp-url", &self.sim.base_url()])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("CPSYNC_DATABASE_URL")
            .env_remove("CPSYNC_CONFIG")
            .env_remove("CPSYNC_CP_URL")
            .env_remove("CPSYNC_API_KEY")
            .env("CPSYNC_API_KEY_FILE", self.key_file())
            .stdin(Stdio::null());
        command
    }

    /// Runs the binary; (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let Output {
            status,
            stdout,
            stderr,
        } = self.command(args).output().expect("run cpsync");
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    }

    /// Runs the binary and insists on exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(
            code, 0,
            "cpsync {args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// Runs the binary and insists it is refused naming `missing`.
    pub fn refused(&self, args: &[&str], missing: &str) {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(
            code, 1,
            "cpsync {args:?} must be refused\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            stderr.contains(missing),
            "cpsync {args:?}: the refusal must name {missing:?}: {stderr}"
        );
    }

    pub fn conn(&self) -> DbConnection {
        self.db.connect()
    }

    pub fn sql(&self, statements: &str) {
        self.conn()
            .batch_execute(statements)
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// A sample district of `students` students.
    pub fn seed(&self, students: usize) {
        let district = seed::generate(SeedOptions { students, seed: 5 });
        seed::store(&mut self.conn(), &district).expect("seed");
    }

    /// The file every command reads the API key from (`CPSYNC_API_KEY_FILE`).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("api-key")
    }

    /// `setup api-key`: checks the key in `key_file` and records its fingerprint.
    pub fn store_key(&self) {
        self.ok(&["setup", "api-key"]);
    }

    /// Every setup step in order with all categories, and the tasks on.
    pub fn set_up(&self) {
        self.store_key();
        self.ok(&["setup", "categories", "--all"]);
        self.ok(&["setup", "test-pull"]);
        self.ok(&["setup", "test-push"]);
        self.ok(&["setup", "cutoff", CUTOFF]);
        for task in ["send_fees", "get_payments", "get_balances", "nightly_sync"] {
            self.ok(&["setup", "tasks", "enable", task]);
        }
    }

    pub fn fees(&self) -> Vec<cpsync::domain::GenesisFee> {
        let loaded = genesis::load_fees(&mut self.conn(), None).expect("fees");
        assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
        loaded.records
    }
}

/// Inserts a fee with plain SQL, as the SIS would.
pub fn insert_fee_sql(
    env: &Env,
    id: i64,
    like: &cpsync::domain::GenesisFee,
    date: &str,
    category: &str,
    school: &str,
) {
    env.sql(&format!(
        "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, fee_date, due_date, status, created_at, modified_at) \
         VALUES ({id}, {}, '{category}', '{school}', 'Inserted fee {id}', 1234, '{date}', NULL, 'open', '{date} 08:00:00', '{date} 08:00:00')",
        like.student_id.0
    ));
}
