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
