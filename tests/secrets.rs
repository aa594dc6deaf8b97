//! Issue 18's secrets, end to end through the `cpsync` binary on both
//! backends (a real SQLite file and the real PostgreSQL server of
//! `CPSYNC_TEST_PG_URL`): the API key is in no table after `setup api-key`
//! (every column of every table read as text, and the SQLite file's bytes);
//! a rotated key in the key file is what the next run uses (the simulator
//! refuses the old one); a key stored by an older cpsync is kept before the
//! migration removes it; report and export files are 0600 in 0700 folders
//! under umask 022; a remote `postgres://` without TLS is refused before
//! connecting, naming the host and never the password.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb, BACKENDS};
use cpsync::db::{migrate, settings, DbConnection};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::CommunityPass;
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::sim::{SimConfig, Simulator};
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Binary, Nullable, Text};
use diesel::RunQueryDsl;

const KEY_BEFORE: &str = "sk_test_secrets_before_7c1e93";
const KEY_AFTER: &str = "sk_test_secrets_after_4b20d8";

extern "C" {
    fn umask(mask: u32) -> u32;
}

/// Every file the tests' children create is made under the umask of a
/// stock server.
fn stock_umask() {
    // Safety: sets the process's file creation mask; no memory involved.
    unsafe { umask(0o022) };
}

/// Runs `cpsync` with `args` and only what the test gives it.
fn cpsync(args: &[&str], envs: &[(&str, &Path)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpsync"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env_remove("CPSYNC_CP_URL")
        .env_remove("CPSYNC_API_KEY")
        .env_remove("CPSYNC_API_KEY_FILE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGHOST")
        .stdin(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command.output().expect("run cpsync");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    t: String,
    #[diesel(sql_type = Text)]
    c: String,
}

#[derive(diesel::QueryableByName)]
struct Value {
    #[diesel(sql_type = Nullable<Binary>)]
    v: Option<Vec<u8>>,
}

/// Every value of every column of every table, as text bytes.
fn dump(conn: &mut DbConnection) -> Vec<u8> {
    let columns: Vec<(String, String)> = match conn {
        DbConnection::Sqlite(c) => {
            let tables: Vec<Name> = diesel::sql_query(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            )
            .load(c)
            .unwrap();
            tables
                .into_iter()
                .flat_map(|table| {
                    let names: Vec<Name> = diesel::sql_query(format!(
                        "SELECT name FROM pragma_table_info('{}')",
                        table.name
                    ))
                    .load(c)
                    .unwrap();
                    names
                        .into_iter()
                        .map(move |column| (table.name.clone(), column.name))
                })
                .collect()
        }
        DbConnection::Pg(c) => {
            let found: Vec<Column> = diesel::sql_query(
                "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c \
                 FROM information_schema.columns WHERE table_schema = 'public' \
                 AND table_name IN (SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE')",
            )
            .load(c)
            .unwrap();
            found.into_iter().map(|col| (col.t, col.c)).collect()
        }
    };
    assert!(
        columns.len() > 50,
        "the dump reads every table: {columns:?}"
    );
    let mut text = Vec::new();
    for (table, column) in columns {
        let values: Vec<Value> = match conn {
            DbConnection::Sqlite(c) => diesel::sql_query(format!(
                "SELECT CAST(\"{column}\" AS BLOB) AS v FROM \"{table}\""
            ))
            .load(c)
            .unwrap(),
            DbConnection::Pg(c) => diesel::sql_query(format!(
                "SELECT convert_to(CAST(\"{column}\" AS TEXT), 'UTF8') AS v FROM \"{table}\""
            ))
            .load(c)
            .unwrap(),
        };
        for value in values.into_iter().filter_map(|v| v.v) {
            text.extend(value);
            text.push(b'\n');
        }
    }
    text
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The key is nowhere in the database: not in any column of any table, and
/// for SQLite not in the bytes of the file and its WAL either.
fn assert_key_absent(db: &TestDb, key: &str, backend: Backend) {
    let text = dump(&mut db.connect());
    assert!(
        contains(&text, "sha256:"),
        "{backend:?}: the dump holds the fingerprint"
    );
    assert!(
        !contains(&text, key),
        "{backend:?}: the API key is in a table"
    );
    if let cpsync::db::DatabaseUrl::Sqlite(path) = &db.url {
        for suffix in ["", "-wal"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(!contains(&bytes, key), "the key is in {}", file.display());
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file below `dir` is 0600 and every folder 0700; returns how many
/// files there were.
fn assert_owner_only(dir: &Path) -> usize {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files += assert_owner_only(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
    }
    files
}

/// A district set up through the binary, the key read from a file the
/// config names.
struct Install {
    db: TestDb,
    dir: tempfile::TempDir,
    config: String,
}

impl Install {
    fn new(backend: Backend, base_url: &str) -> Install {
        let db = TestDb::migrated(backend);
        seed::store(
            &mut db.connect(),
            &seed::generate(SeedOptions {
                students: 12,
                seed: 18,
            }),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cpsync.toml");
        let text = format!(
            "district = \"Secrets Test District\"\n\n[community_pass]\nbase_url = \"{base_url}\"\napi_key = {{ file = \"{}\" }}\n\n[reports]\ndir = \"{}\"\n",
            dir.path().join("api-key").display(),
            dir.path().join("reports").display(),
        );
        cpsync::files::write_private(&config, text.as_bytes()).unwrap();
        Install {
            config: config.display().to_string(),
            db,
            dir,
        }
    }

    fn put_key(&self, key: &str) {
        cpsync::files::write_private(&self.dir.path().join("api-key"), key.as_bytes()).unwrap();
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let all: Vec<&str> = [
            "--config",
            &self.config,
            "--database-url",
            &self.db.url_text,
        ]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
        cpsync(&all, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert!(
            code == 0 || code == 3,
            "cpsync {args:?} exited {code}\n{stdout}\n{stderr}"
        );
        stdout
    }
}

#[test]
fn setup_keeps_only_a_fingerprint_and_a_rotated_key_file_takes_effect() {
    stock_umask();
    for backend in BACKENDS {
        let sim = Simulator::start(SimConfig::new(Secret::new(KEY_BEFORE))).unwrap();
        let admin = sim.admin().unwrap();
        let install = Install::new(backend, &sim.base_url());
        install.put_key(KEY_BEFORE);
        let before = settings::fingerprint(&Secret::new(KEY_BEFORE));
        let after = settings::fingerprint(&Secret::new(KEY_AFTER));

        let recorded = install.ok(&["setup", "api-key"]);
        assert!(recorded.contains(&before), "{backend:?}: {recorded}");
        assert!(!recorded.contains(KEY_BEFORE), "{recorded}");
        for step in [
            &["setup", "categories", "--all"][..],
            &["setup", "test-pull"],
            &["setup", "test-push"],
            &["setup", "cutoff", "2026-08-01"],
            &["setup", "tasks", "enable", "get_balances"],
            &["setup", "tasks", "enable", "nightly_sync"],
            &["setup", "tasks", "enable", "demographic_export"],
        ] {
            install.ok(step);
        }
        install.ok(&["get-balances"]);
        let shown = install.ok(&["setup", "show"]);
        assert!(
            shown.contains("read from the file") && shown.contains(&format!("{before}, matches")),
            "{backend:?}: {shown}"
        );
        assert_key_absent(&install.db, KEY_BEFORE, backend);

        // The vendor rotates the key: the old one is refused from now on.
        admin.rotate_key(&Secret::new(KEY_AFTER)).unwrap();
        let old = HttpPortal::new(HttpPortalConfig::new(
            sim.base_url(),
            Secret::new(KEY_BEFORE),
        ))
        .unwrap();
        assert!(
            old.test_pull().is_err(),
            "the simulator refuses the old key"
        );
        let (code, _, stderr) = install.run(&["get-balances"]);
        assert_eq!(
            code, 1,
            "{backend:?}: the old key in the file is refused: {stderr}"
        );
        assert!(!stderr.contains(KEY_BEFORE), "{stderr}");

        // The new key in the file is read by the next run: refused until
        // `setup api-key` has checked it, naming both fingerprints.
        install.put_key(KEY_AFTER);
        let (code, _, stderr) = install.run(&["get-balances"]);
        assert_eq!(code, 1, "{backend:?}: {stderr}");
        assert!(
            stderr.contains(&after) && stderr.contains(&before) && stderr.contains("setup api-key"),
            "{backend:?}: {stderr}"
        );
        let shown = install.ok(&["setup", "show"]);
        assert!(shown.contains("DOES NOT MATCH"), "{backend:?}: {shown}");
        let rotated = install.ok(&["setup", "api-key"]);
        assert!(
            rotated.contains("API key rotated") && rotated.contains(&after),
            "{backend:?}: {rotated}"
        );
        assert!(
            rotated.contains("setup is complete"),
            "a rotation within the district keeps the connection tests: {rotated}"
        );
        // Only the new key works at the simulator, so this run used it.
        install.ok(&["get-balances"]);
        let shown = install.ok(&["setup", "show"]);
        assert!(
            shown.contains(&format!("{after}, matches")),
            "{backend:?}: {shown}"
        );

        // Reports and exports written under umask 022 are owner-only.
        install.ok(&["nightly"]);
        let exports = install.dir.path().join("exports");
        install.ok(&["export", "--to", &exports.display().to_string()]);
        let reports = install.dir.path().join("reports");
        assert!(
            assert_owner_only(&reports) >= 5,
            "{backend:?}: the report files"
        );
        assert!(
            assert_owner_only(&exports) >= 4,
            "{backend:?}: the export files"
        );

        assert_key_absent(&install.db, KEY_BEFORE, backend);
        assert_key_absent(&install.db, KEY_AFTER, backend);
    }
}

/// A database as an older cpsync left it: every migration but the one
/// that removes the key, the key stored in plain text beside an unlabelled
/// fingerprint.
fn older_install(backend: Backend, key: &Secret) -> TestDb {
    let db = TestDb::migrated(backend);
    let mut conn = db.connect_creating();
    let reverted = migrate::revert_last(&mut conn).unwrap();
    assert!(
        reverted.starts_with("2026-11-29-000018") || reverted.starts_with("20261129000018"),
        "{reverted}"
    );
    let unlabelled = settings::fingerprint(key)
        .trim_start_matches("sha256:")
        .to_string();
    conn.batch_execute(&format!(
        "INSERT INTO cp_settings (key, value, updated_at) VALUES \
         ('api_key', '{}', '2026-08-01 09:00:00'), \
         ('api_key_fingerprint', '\"{unlabelled}\"', '2026-08-01 09:00:00')",
        key.expose()
    ))
    .unwrap();
    db
}

#[test]
fn a_key_an_older_cpsync_stored_is_kept_before_the_migration_removes_it() {
    stock_umask();
    for backend in BACKENDS {
        let key = Secret::new("sk_test_legacy_0a9f17c3");
        let db = older_install(backend, &key);
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("api-key");
        let url = db.url_text.clone();
        let file_env = [("CPSYNC_API_KEY_FILE", key_file.as_path())];

        assert!(
            contains(&dump(&mut db.connect_creating()), key.expose()),
            "{backend:?}: the dump finds a key that is there"
        );
        // No key where cpsync now reads it: refused, nothing migrated.
        let (code, _, stderr) = cpsync(&["--database-url", &url, "migrate"], &file_env);
        assert_eq!(code, 1, "{backend:?}: {stderr}");
        assert!(
            stderr.contains("--move-api-key-to") && stderr.contains(&settings::fingerprint(&key)),
            "{backend:?}: {stderr}"
        );
        assert!(!stderr.contains(key.expose()), "{stderr}");
        assert_eq!(
            migrate::pending_count(&mut db.connect_creating()).unwrap(),
            1
        );

        // cpsync writes the key to a new owner-only file, then migrates.
        let key_file_text = key_file.display().to_string();
        let (code, stdout, stderr) = cpsync(
            &[
                "--database-url",
                &url,
                "migrate",
                "--move-api-key-to",
                &key_file_text,
            ],
            &file_env,
        );
        assert_eq!(code, 0, "{backend:?}: {stdout}{stderr}");
        assert_eq!(
            std::fs::read_to_string(&key_file).unwrap().trim(),
            key.expose()
        );
        assert_eq!(mode(&key_file), 0o600);
        let state = settings::load_setup(&mut db.connect()).unwrap();
        assert_eq!(state.api_key_fingerprint, Some(settings::fingerprint(&key)));
        assert_key_absent(&db, key.expose(), backend);
        let (code, shown, stderr) = cpsync(&["--database-url", &url, "setup", "show"], &file_env);
        assert_eq!(code, 0, "{stderr}");
        assert!(shown.contains("matches"), "{backend:?}: {shown}");

        // The same older database, the key already in the configured file:
        // migrate goes ahead and says so; it never overwrites a file.
        let again = older_install(backend, &key);
        let (code, stdout, stderr) = cpsync(
            &[
                "--database-url",
                &again.url_text,
                "migrate",
                "--move-api-key-to",
                &key_file_text,
            ],
            &file_env,
        );
        assert_eq!(
            code, 1,
            "{backend:?}: an existing file is never replaced: {stdout}{stderr}"
        );
        let (code, stdout, stderr) =
            cpsync(&["--database-url", &again.url_text, "migrate"], &file_env);
        assert_eq!(code, 0, "{backend:?}: {stdout}{stderr}");
        assert!(stdout.contains("is also in the file"), "{stdout}");
        assert_key_absent(&again, key.expose(), backend);
    }
}

#[test]
fn a_remote_postgres_url_without_tls_is_refused_before_connecting() {
    let home = tempfile::tempdir().unwrap();
    let no_root_certificate = [("HOME", home.path())];
    let started = Instant::now();
    let (code, stdout, stderr) = cpsync(
        &[
            "--database-url",
            "postgres://cpsync:hunter2secret@192.0.2.1:5432/genesis",
            "runs",
        ],
        &no_root_certificate,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("refusing to connect to PostgreSQL host 192.0.2.1 without TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("sslrootcert="), "{stderr}");
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
    assert!(
        stderr.contains("warning: --database-url carries a password on the command line"),
        "{stderr}"
    );

    // From a file: the same refusal, and no warning.
    let url_file = home.path().join("database-url");
    cpsync::files::write_private(
        &url_file,
        b"postgresql://cpsync:hunter2secret@10.255.255.1/genesis?connect_timeout=30\n",
    )
    .unwrap();
    let (code, _, stderr) = cpsync(
        &[
            "--database-url-file",
            &url_file.display().to_string(),
            "runs",
        ],
        &no_root_certificate,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("host 10.255.255.1 without TLS"), "{stderr}");
    assert!(
        !stderr.contains("hunter2secret") && !stderr.contains("warning"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused before any network wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn the_database_url_comes_from_the_environment_without_a_warning() {
    let db = TestDb::migrated(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("url");
    cpsync::files::write_private(&url_file, db.url_text.as_bytes()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpsync"));
    let output = command
        .args(["runs"])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env("CPSYNC_DATABASE_URL", &db.url_text)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (code, _, stderr) = cpsync(
        &[
            "--database-url-file",
            &url_file.display().to_string(),
            "runs",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_key_given_to_the_simulator_on_the_command_line_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-key-file").display().to_string();
    // The missing key file stops the simulator before it listens.
    let (code, _, stderr) = cpsync(
        &[
            "sim",
            "--api-key",
            "sk_test_on_the_command_line",
            "--api-key-file",
            &missing,
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr
            .matches("warning: sim --api-key gives an API key on the command line")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("sk_test_on_the_command_line"), "{stderr}");
    let (code, _, stderr) = cpsync(
        &["sim", "--api-key-file", &missing],
        &[(
            "CPSYNC_SIM_API_KEY",
            Path::new("sk_test_from_the_environment"),
        )],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
