//! Writes a bundle into a new folder of its own, owner-only (0700 folder,
//! 0600 files): the files hold student data. Each file is written under a
//! temporary name, synced, then renamed, so a reader never sees half a file
//! under its final name.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use super::{Bundle, ExportError};

/// Permissions of the export folder: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Permissions of each exported file: owner read and write only.
pub const FILE_MODE: u32 = 0o600;
/// Suffix of a file being written, before its rename.
const PART_SUFFIX: &str = ".part";

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
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(parent)
        .map_err(|e| error(parent, e))?;
    let dir = parent.join(folder);
    DirBuilder::new()
        .mode(DIR_MODE)
        .create(&dir)
        .map_err(|e| error(&dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|e| error(&dir, e))?;
    for file in &bundle.files {
        let path = dir.join(file.name);
        let part = dir.join(format!(".{}{PART_SUFFIX}", file.name));
        write_private(&part, &file.bytes).map_err(|e| error(&part, e))?;
        fs::rename(&part, &path).map_err(|e| error(&path, e))?;
    }
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| error(&dir, e))?;
    std::path::absolute(&dir).map_err(|e| error(&dir, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}
