//! Writes a bundle into a new folder of its own, owner-only (0700 folder,
//! 0600 files): the files hold student data. Each file is written under a
//! temporary name, synced, then renamed, so a reader never sees half a file
//! under its final name.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use super::{Bundle, ExportError};

/// Permissions of the export folder: owner only.
pub const DIR_MODE: u32 = crate::files::DIR_MODE;
/// Permissions of each exported file: owner read and write only.
pub const FILE_MODE: u32 = crate::files::FILE_MODE;

/// The per-run folder name, e.g. `oneroster-20261127T020000-run42`.
pub fn folder_name(started_at: NaiveDateTime, run_id: i64) -> String {
    format!(
        "oneroster-{}-run{run_id}",
        started_at.format("%Y%m%dT%H%M%S")
    )
}

/// Writes every file of `bundle` into `parent/folder`, which must not exist
/// yet (`parent` is created if needed). Returns the folder's path.
pub fn write_bundle(parent: &Path, folder: &str, bundle: &Bundle) -> Result<PathBuf, ExportError> {
    let error = |path: &Path, e: std::io::Error| ExportError::Local {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    crate::files::create_private_dir_all(parent).map_err(|e| error(parent, e))?;
    let dir = parent.join(folder);
    crate::files::create_new_private_dir(&dir).map_err(|e| error(&dir, e))?;
    let written = fill_folder(&dir, bundle);
    if written.is_err() {
        // A failed export leaves nothing behind: the folder is this run's
        // own, so no half-written bundle is ever mistaken for a good one.
        if let Err(cleanup) = fs::remove_dir_all(&dir) {
            tracing::warn!(folder = %dir.display(), %cleanup, "could not remove a failed export");
        }
    }
    written?;
    std::path::absolute(&dir).map_err(|e| error(&dir, e))
}

/// Writes each file with `files::write_private` (a temporary name, synced,
/// renamed, the folder synced).
fn fill_folder(dir: &Path, bundle: &Bundle) -> Result<(), ExportError> {
    for file in &bundle.files {
        let path = dir.join(file.name);
        crate::files::write_private(&path, &file.bytes).map_err(|e| ExportError::Local {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportFile;

    fn file(name: &'static str) -> ExportFile {
        ExportFile {
            name,
            bytes: b"sourcedId\r\n".to_vec(),
            rows: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn a_failed_export_leaves_no_partial_files() {
        let parent = tempfile::tempdir().unwrap();
        let bundle = Bundle {
            // The second file cannot be written (its folder does not exist),
            // as a full disk would stop it half way.
            files: vec![file("orgs.csv"), file("missing/users.csv")],
            omitted: Default::default(),
        };
        let error = write_bundle(parent.path(), "oneroster-test", &bundle).unwrap_err();
        assert!(error.to_string().contains("users.csv"), "{error}");
        assert!(
            !parent.path().join("oneroster-test").exists(),
            "the failed bundle's folder is removed"
        );
        let good = Bundle {
            files: vec![file("orgs.csv")],
            omitted: Default::default(),
        };
        let dir = write_bundle(parent.path(), "oneroster-test", &good).unwrap();
        assert!(
            dir.join("orgs.csv").exists(),
            "a later export is not blocked"
        );
    }
}
