//! Demographic export (task 5): the district's schools, students, guardians
//! and their links as OneRoster 1.1 CSV files, written to a private local
//! folder or uploaded over SFTP.
//!
//! The shape follows the rest of the engine: `oneroster` builds every file
//! from a [`Snapshot`] with pure functions (no IO, no clock), `check`
//! re-reads what was built, `local` writes a bundle into a new owner-only
//! folder, and `sftp` uploads it atomically to a verified host. The shell
//! that reads the database and records the run lives in `cli::export`.

pub mod check;
pub(crate) mod csv_cell;
pub mod local;
pub mod oneroster;
pub mod sftp;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{Guardian, GuardianLink, School, Student};

pub use oneroster::build;

/// The run-history task name of the export (also its switch in `cp_tasks`).
pub const TASK_NAME: &str = "demographic_export";

/// What one export is built from: a consistent read of the Genesis side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub district_name: String,
    pub schools: Vec<School>,
    pub students: Vec<Student>,
    pub guardians: Vec<Guardian>,
    pub links: Vec<GuardianLink>,
}

/// One built CSV file: its name, its bytes (UTF-8, CRLF rows) and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Data rows, the header not counted.
    pub rows: usize,
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: String,
}

impl ExportFile {
    pub fn new(name: &'static str, bytes: Vec<u8>, rows: usize) -> ExportFile {
        let sha256 = sha256_hex(&bytes);
        ExportFile {
            name,
            bytes,
            rows,
            sha256,
        }
    }

    /// What run history and reports say about the file (no content).
    pub fn summary(&self) -> FileSummary {
        FileSummary {
            name: self.name.to_string(),
            rows: self.rows,
            bytes: self.bytes.len() as u64,
            sha256: self.sha256.clone(),
        }
    }
}

/// A file as recorded in run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSummary {
    pub name: String,
    pub rows: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// Records of the snapshot that are not in the files, and why. Counted in
/// run history so nothing leaves silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Omitted {
    /// Guardians linked to no student: no family account to build.
    pub guardians_without_students: usize,
    /// Links naming a student or guardian absent from the snapshot.
    pub unresolved_links: usize,
}

/// The files of one export, in upload order (`manifest.csv` last, so a
/// receiver that sees the manifest knows the set is complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub files: Vec<ExportFile>,
    pub omitted: Omitted,
}

impl Bundle {
    pub fn file(&self, name: &str) -> Option<&ExportFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn summaries(&self) -> Vec<FileSummary> {
        self.files.iter().map(ExportFile::summary).collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }
}

/// Why an export could not be built, written or sent. Messages name files,
/// hosts and keys, never a secret or a student's data beyond an id.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("student {student} belongs to school {school:?}, which is not in the schools table")]
    UnknownSchool { student: i64, school: String },
    #[error("cannot write {file}: {reason}")]
    Csv { file: &'static str, reason: String },
    #[error("built {file} is invalid: {reason}")]
    Invalid { file: String, reason: String },
    #[error("cannot write the export to {path}: {reason}")]
    Local { path: String, reason: String },
    #[error(transparent)]
    Sftp(#[from] sftp::SftpError),
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// A streaming SHA-256, for re-reading a file in chunks.
#[derive(Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut stream = Sha256Stream::default();
        stream.update(b"a");
        stream.update(b"bc");
        assert_eq!(stream.finish_hex(), sha256_hex(b"abc"));
    }
}
