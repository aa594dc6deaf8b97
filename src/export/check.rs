//! Reads a built bundle back with a standard CSV reader and checks what a
//! receiver would: UTF-8, the exact OneRoster headers, one width per file,
//! the row counts recorded, unique `sourcedId`s and that every reference
//! (`orgSourcedIds`, `agentSourcedIds`, demographics) names a row that
//! exists. `--dry-run` runs this; so does every real export before sending.

use std::collections::BTreeSet;

use super::oneroster::{
    DEMOGRAPHICS_FILE, DEMOGRAPHICS_HEADER, MANIFEST_FILE, MANIFEST_HEADER, ORGS_FILE, ORGS_HEADER,
    USERS_FILE, USERS_HEADER,
};
use super::{Bundle, ExportError, ExportFile};

/// The roles OneRoster 1.1 allows in `users.csv`.
const ROLES: [&str; 8] = [
    "administrator",
    "aide",
    "guardian",
    "parent",
    "proctor",
    "relative",
    "student",
    "teacher",
];

/// Checks every file of `bundle`; the first problem found is the error.
pub fn check(bundle: &Bundle) -> Result<(), ExportError> {
    let orgs = read(bundle, ORGS_FILE, &ORGS_HEADER)?;
    let users = read(bundle, USERS_FILE, &USERS_HEADER)?;
    let demographics = read(bundle, DEMOGRAPHICS_FILE, &DEMOGRAPHICS_HEADER)?;
    let manifest = read(bundle, MANIFEST_FILE, &MANIFEST_HEADER)?;
    let org_ids = unique_ids(ORGS_FILE, &orgs)?;
    let user_ids = unique_ids(USERS_FILE, &users)?;
    check_users(&users, &org_ids, &user_ids)?;
    for row in &demographics {
        if !user_ids.contains(&row[0]) {
            return Err(invalid(
                DEMOGRAPHICS_FILE,
                format!("{} is not a user", row[0]),
            ));
        }
    }
    check_manifest(&manifest)
}

fn invalid(file: &str, reason: String) -> ExportError {
    ExportError::Invalid {
        file: file.to_string(),
        reason,
    }
}

/// Parses one file: header checked, data rows returned.
fn read(bundle: &Bundle, name: &str, header: &[&str]) -> Result<Vec<Vec<String>>, ExportError> {
    let file: &ExportFile = bundle
        .file(name)
        .ok_or_else(|| invalid(name, "missing from the bundle".to_string()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file.bytes.as_slice());
    let found = reader
        .headers()
        .map_err(|e| invalid(name, e.to_string()))?
        .clone();
    if found.iter().ne(header.iter().copied()) {
        return Err(invalid(name, format!("header is {found:?}")));
    }
    let mut rows = Vec::with_capacity(file.rows);
    for record in reader.records() {
        let record = record.map_err(|e| invalid(name, e.to_string()))?;
        rows.push(record.iter().map(str::to_string).collect::<Vec<_>>());
    }
    if rows.len() != file.rows {
        return Err(invalid(
            name,
            format!("{} data rows, {} recorded", rows.len(), file.rows),
        ));
    }
    Ok(rows)
}

fn unique_ids(name: &str, rows: &[Vec<String>]) -> Result<BTreeSet<String>, ExportError> {
    let mut ids = BTreeSet::new();
    for row in rows {
        if row[0].is_empty() || !ids.insert(row[0].clone()) {
            return Err(invalid(
                name,
                format!("sourcedId {:?} is empty or repeated", row[0]),
            ));
        }
    }
    Ok(ids)
}

fn list(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(',').filter(|s| !s.is_empty())
}

fn check_users(
    users: &[Vec<String>],
    org_ids: &BTreeSet<String>,
    user_ids: &BTreeSet<String>,
) -> Result<(), ExportError> {
    let column = |name: &str| USERS_HEADER.iter().position(|h| *h == name).unwrap_or(0);
    let (enabled, orgs, role, agents) = (
        column("enabledUser"),
        column("orgSourcedIds"),
        column("role"),
        column("agentSourcedIds"),
    );
    for row in users {
        let id = &row[0];
        if row[enabled] != "true" && row[enabled] != "false" {
            return Err(invalid(
                USERS_FILE,
                format!("{id}: enabledUser {:?}", row[enabled]),
            ));
        }
        if !ROLES.contains(&row[role].as_str()) {
            return Err(invalid(USERS_FILE, format!("{id}: role {:?}", row[role])));
        }
        if list(&row[orgs]).next().is_none() {
            return Err(invalid(USERS_FILE, format!("{id}: no orgSourcedIds")));
        }
        if let Some(org) = list(&row[orgs]).find(|o| !org_ids.contains(*o)) {
            return Err(invalid(USERS_FILE, format!("{id}: unknown org {org}")));
        }
        if let Some(agent) = list(&row[agents]).find(|a| !user_ids.contains(*a)) {
            return Err(invalid(USERS_FILE, format!("{id}: unknown agent {agent}")));
        }
    }
    Ok(())
}

fn check_manifest(rows: &[Vec<String>]) -> Result<(), ExportError> {
    let value = |key: &str| rows.iter().find(|r| r[0] == key).map(|r| r[1].as_str());
    if value("manifest.version") != Some("1.0") || value("oneroster.version") != Some("1.1") {
        return Err(invalid(
            MANIFEST_FILE,
            "manifest.version must be 1.0 and oneroster.version 1.1".to_string(),
        ));
    }
    for (file, mode) in [
        ("orgs", "bulk"),
        ("users", "bulk"),
        ("demographics", "bulk"),
    ] {
        if value(&format!("file.{file}")) != Some(mode) {
            return Err(invalid(
                MANIFEST_FILE,
                format!("file.{file} must be {mode}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A bundle built from a seeded district passes; each way a receiver
    //! would reject one is made by editing one file, and `check` names it.
    use super::*;
    use crate::export::{build, Snapshot};
    use crate::seed::{self, SeedOptions};

    fn good_bundle() -> Bundle {
        let district = seed::generate(SeedOptions {
            students: 12,
            seed: 5,
        });
        build(&Snapshot {
            district_name: "Check District".into(),
            schools: district.schools,
            students: district.students,
            guardians: district.guardians,
            links: district.links,
        })
        .expect("the seeded district builds")
    }

    fn rows_of(file: &ExportFile) -> (Vec<String>, Vec<Vec<String>>) {
        let mut reader = csv::Reader::from_reader(file.bytes.as_slice());
        let header = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_string)
            .collect();
        let rows = reader
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        (header, rows)
    }

    /// The bundle with `name` rewritten by `edit` (header and rows).
    fn edited(name: &str, edit: impl FnOnce(&mut Vec<String>, &mut Vec<Vec<String>>)) -> Bundle {
        let mut bundle = good_bundle();
        let slot = bundle.files.iter_mut().find(|f| f.name == name).unwrap();
        let (mut header, mut rows) = rows_of(slot);
        edit(&mut header, &mut rows);
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(&header).unwrap();
        for row in &rows {
            writer.write_record(row).unwrap();
        }
        *slot = ExportFile::new(slot.name, writer.into_inner().unwrap(), rows.len());
        bundle
    }

    fn refused(bundle: &Bundle, file: &str, words: &str) {
        match check(bundle) {
            Err(ExportError::Invalid {
                file: named,
                reason,
            }) => {
                assert_eq!(named, file, "{reason}");
                assert!(reason.contains(words), "{file}: {reason}");
            }
            other => panic!("{file}: expected a refusal naming {words:?}, got {other:?}"),
        }
    }

    fn column(name: &str) -> usize {
        USERS_HEADER.iter().position(|h| *h == name).unwrap()
    }

    #[test]
    fn a_built_bundle_passes() {
        check(&good_bundle()).unwrap();
    }

    #[test]
    fn a_user_in_an_unknown_org_is_refused() {
        let bundle = edited(USERS_FILE, |_, rows| {
            rows[0][column("orgSourcedIds")] = "org-nowhere".into();
        });
        refused(&bundle, USERS_FILE, "unknown org org-nowhere");
    }

    #[test]
    fn a_user_without_an_org_is_refused() {
        let bundle = edited(USERS_FILE, |_, rows| {
            rows[1][column("orgSourcedIds")].clear()
        });
        refused(&bundle, USERS_FILE, "no orgSourcedIds");
    }

    #[test]
    fn an_unknown_agent_a_bad_role_or_flag_is_refused() {
        let agent = edited(USERS_FILE, |_, rows| {
            rows[0][column("agentSourcedIds")] = "g-0000".into();
        });
        refused(&agent, USERS_FILE, "unknown agent g-0000");
        let role = edited(USERS_FILE, |_, rows| {
            rows[0][column("role")] = "janitor".into()
        });
        refused(&role, USERS_FILE, "role \"janitor\"");
        let flag = edited(USERS_FILE, |_, rows| {
            rows[0][column("enabledUser")] = "yes".into();
        });
        refused(&flag, USERS_FILE, "enabledUser \"yes\"");
    }

    #[test]
    fn a_repeated_or_empty_sourced_id_is_refused() {
        let repeated = edited(ORGS_FILE, |_, rows| {
            let first = rows[0].clone();
            rows.push(first);
        });
        refused(&repeated, ORGS_FILE, "is empty or repeated");
        let empty = edited(USERS_FILE, |_, rows| rows[0][0].clear());
        refused(&empty, USERS_FILE, "is empty or repeated");
    }

    #[test]
    fn demographics_for_someone_not_a_user_are_refused() {
        let bundle = edited(DEMOGRAPHICS_FILE, |_, rows| rows[0][0] = "s-nobody".into());
        refused(&bundle, DEMOGRAPHICS_FILE, "s-nobody is not a user");
    }

    #[test]
    fn a_wrong_header_a_wrong_count_or_a_missing_file_is_refused() {
        let header = edited(ORGS_FILE, |header, _| header[3] = "title".into());
        refused(&header, ORGS_FILE, "header is");
        let mut count = good_bundle();
        let users = count
            .files
            .iter_mut()
            .find(|f| f.name == USERS_FILE)
            .unwrap();
        *users = ExportFile::new(USERS_FILE, users.bytes.clone(), users.rows + 1);
        refused(&count, USERS_FILE, "recorded");
        let mut missing = good_bundle();
        missing.files.retain(|f| f.name != DEMOGRAPHICS_FILE);
        refused(&missing, DEMOGRAPHICS_FILE, "missing from the bundle");
    }

    #[test]
    fn a_manifest_of_another_version_or_mode_is_refused() {
        let version = edited(MANIFEST_FILE, |_, rows| {
            for row in rows.iter_mut().filter(|r| r[0] == "oneroster.version") {
                row[1] = "1.2".into();
            }
        });
        refused(&version, MANIFEST_FILE, "oneroster.version 1.1");
        let mode = edited(MANIFEST_FILE, |_, rows| {
            for row in rows.iter_mut().filter(|r| r[0] == "file.users") {
                row[1] = "delta".into();
            }
        });
        refused(&mode, MANIFEST_FILE, "file.users must be bulk");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        let mut bundle = good_bundle();
        let orgs = bundle
            .files
            .iter_mut()
            .find(|f| f.name == ORGS_FILE)
            .unwrap();
        let mut bytes = orgs.bytes.clone();
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        *orgs = ExportFile::new(ORGS_FILE, bytes, orgs.rows);
        assert!(matches!(
            check(&bundle),
            Err(ExportError::Invalid { ref file, .. }) if file == ORGS_FILE
        ));
    }
}
