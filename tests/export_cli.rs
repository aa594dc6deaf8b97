//! `cpsync export` end to end on both backends, without SFTP: a private
//! folder per run, the dry run, the task switch and the refusals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::{cpsync, cpsync_in_district, Backend, TestDb, BACKENDS};
use cpsync::db::tasks;
use cpsync::export::oneroster::{ORGS_HEADER, USERS_FILE, USERS_HEADER};

const STUDENTS: &str = "300";

fn seeded(backend: Backend) -> TestDb {
    let db = TestDb::migrated(backend);
    let (code, _, stderr) = cpsync(&[
        "--database-url",
        &db.url_text,
        "seed",
        "--students",
        STUDENTS,
    ]);
    assert_eq!(code, 0, "{stderr}");
    db
}

fn export_runs(db: &TestDb) -> String {
    let (code, stdout, stderr) = cpsync(&[
        "--database-url",
        &db.url_text,
        "runs",
        "--task",
        "demographic_export",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

fn only_entry(dir: &std::path::Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

#[test]
fn export_to_a_folder_writes_private_oneroster_files_and_records_the_run() {
    for backend in BACKENDS {
        let db = seeded(backend);
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("exports");
        let to_text = to.display().to_string();
        let (code, stdout, stderr) =
            cpsync_in_district(&["--database-url", &db.url_text, "export", "--to", &to_text]);
        assert_eq!(code, 0, "{backend:?}: {stdout}{stderr}");
        let folder = only_entry(&to);
        assert_eq!(
            std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(
                entry.metadata().unwrap().permissions().mode() & 0o777,
                0o600
            );
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        assert_eq!(
            names,
            ["demographics.csv", "manifest.csv", "orgs.csv", "users.csv"]
        );

        let users = std::fs::read(folder.join(USERS_FILE)).unwrap();
        let mut reader = csv::Reader::from_reader(users.as_slice());
        assert_eq!(reader.headers().unwrap(), USERS_HEADER.as_slice());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        let students = records.iter().filter(|r| &r[5] == "student").count();
        assert_eq!(students.to_string(), STUDENTS, "{backend:?}");
        assert!(records.iter().any(|r| &r[5] == "parent"));
        let orgs = std::fs::read(folder.join("orgs.csv")).unwrap();
        let mut reader = csv::Reader::from_reader(orgs.as_slice());
        assert_eq!(reader.headers().unwrap(), ORGS_HEADER.as_slice());

        let history = export_runs(&db);
        assert!(history.contains("succeeded"), "{history}");
        assert!(history.contains("\\\"kind\\\":\\\"folder\\\""), "{history}");
        assert!(history.contains("\\\"rows\\\""), "{history}");
    }
}

#[test]
fn a_dry_run_writes_nothing_but_is_recorded() {
    let db = seeded(Backend::Sqlite);
    let out = tempfile::tempdir().unwrap();
    let to = out.path().join("exports");
    let to_text = to.display().to_string();
    let (code, stdout, stderr) = cpsync_in_district(&[
        "--database-url",
        &db.url_text,
        "export",
        "--to",
        &to_text,
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("dry run") && stdout.contains("users.csv"),
        "{stdout}"
    );
    assert!(!to.exists());
    let history = export_runs(&db);
    assert!(history.contains("\"dry_run\": true"), "{history}");
}

#[test]
fn a_switched_off_task_exports_nothing_and_says_so() {
    let db = seeded(Backend::Sqlite);
    let mut conn = db.connect();
    let now = chrono::Utc::now().naive_utc();
    tasks::set_enabled(&mut conn, "demographic_export", false, now).unwrap();
    assert!(!tasks::is_enabled(&mut conn, "demographic_export").unwrap());
    assert!(tasks::is_enabled(&mut conn, "nightly_sync").unwrap());
    let out = tempfile::tempdir().unwrap();
    let to = out.path().join("exports");
    let to_text = to.display().to_string();
    let (code, stdout, _) = cpsync(&["--database-url", &db.url_text, "export", "--to", &to_text]);
    assert_eq!(code, 0);
    assert!(stdout.contains("switched off"), "{stdout}");
    assert!(!to.exists());
}

#[test]
fn the_command_line_is_checked() {
    let db = seeded(Backend::Sqlite);
    let (code, _, stderr) = cpsync(&["--database-url", &db.url_text, "export"]);
    assert_eq!(code, 2, "no destination: {stderr}");
    let (code, _, _) = cpsync(&[
        "--database-url",
        &db.url_text,
        "export",
        "--to",
        "x",
        "--sftp",
    ]);
    assert_eq!(code, 2, "two destinations");
    let (code, _, stderr) = cpsync(&["--database-url", &db.url_text, "export", "--sftp"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("[sftp] section"), "{stderr}");
    // No district named in the config: refused, nothing written.
    let out = tempfile::tempdir().unwrap();
    let to = out.path().join("exports");
    let (code, _, stderr) = cpsync(&[
        "--database-url",
        &db.url_text,
        "export",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("names no district"), "{stderr}");
    assert!(!to.exists(), "nothing was written");
}
