//! The one file writer: every file cpsync creates (reports, `.eml` files,
//! exports, preflight, metrics, the simulator's state, key files) is
//! written here, atomically (a temporary file in the same folder, synced,
//! then renamed over the final name, so a reader never sees half a file)
//! and owner-only whatever the umask. Folders cpsync creates are 0700.
//!
//! A leaf module: it knows nothing of the rest of the crate, so every
//! layer may use it.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file cpsync creates: owner read and write only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a file other local users must read: only the metrics file, read
/// by node_exporter's textfile collector running as its own user.
pub const SHARED_FILE_MODE: u32 = 0o644;
/// Mode of every folder cpsync creates: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Who may read a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// The owner only (0600): anything with student data, keys or mail.
    Owner,
    /// Everyone on the host (0644): counts only, never names or secrets.
    Everyone,
}

impl Readers {
    pub fn mode(self) -> u32 {
        match self {
            Readers::Owner => FILE_MODE,
            Readers::Everyone => SHARED_FILE_MODE,
        }
    }
}

/// Writes `bytes` to `path` owner-only (0600), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, Readers::Owner)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it
/// (`.NAME.XXXXXX.tmp`, created 0600 by `tempfile`), the mode set, the data
/// synced, renamed over `path`, then the folder synced so the rename
/// survives a crash. On any error the temporary file is removed and `path`
/// is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], readers: Readers) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)?;
    // The umask can only take bits away; set the mode explicitly.
    temporary
        .as_file()
        .set_permissions(Permissions::from_mode(readers.mode()))?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, each new one 0700. An existing
/// folder is left as it is (the files cpsync writes into it are 0600).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `dir`, which must not exist yet, 0700 whatever the umask.
pub fn create_new_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates `path`, which must not exist yet, as an empty 0600 file (the
/// SQLite database before SQLite opens it: SQLite gives its `-wal` and
/// `-shm` files the database file's mode).
pub fn create_new_private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `bytes` to a new owner-only file at `path` and syncs it; refuses
/// (`AlreadyExists`) to replace an existing file. For a key file cpsync
/// writes once and a person keeps.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_new_private_file(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The permission bits of `path` (`mode & 0o777`).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` with the umask at 022, as on a stock server.
    fn under_umask_022<T>(body: impl FnOnce() -> T) -> T {
        // Safety: umask is process-wide but these tests only create files.
        let old = unsafe { umask(0o022) };
        let result = body();
        unsafe { umask(old) };
        result
    }

    extern "C" {
        fn umask(mask: u32) -> u32;
    }

    #[test]
    fn files_are_owner_only_and_replaced_atomically() {
        under_umask_022(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("report.csv");
            write_private(&path, b"first").unwrap();
            assert_eq!(mode_of(&path).unwrap(), 0o600);
            write_private(&path, b"second").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"second");
            assert_eq!(mode_of(&path).unwrap(), 0o600);
            let shared = dir.path().join("cpsync.prom");
            write_atomic(&shared, b"x 1\n", Readers::Everyone).unwrap();
            assert_eq!(mode_of(&shared).unwrap(), 0o644);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        });
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private(&path, b"old").unwrap();
        let error = write_private(&dir.path().join("missing/state.json"), b"new").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn folders_and_new_files_are_owner_only() {
        under_umask_022(|| {
            let dir = tempfile::tempdir().unwrap();
            let nested = dir.path().join("a/b");
            create_private_dir_all(&nested).unwrap();
            assert_eq!(mode_of(&nested).unwrap(), 0o700);
            assert_eq!(mode_of(&dir.path().join("a")).unwrap(), 0o700);
            let own = dir.path().join("own");
            create_new_private_dir(&own).unwrap();
            assert_eq!(mode_of(&own).unwrap(), 0o700);
            let key = dir.path().join("api-key");
            write_new_private(&key, b"k").unwrap();
            assert_eq!(mode_of(&key).unwrap(), 0o600);
            assert_eq!(
                write_new_private(&key, b"other").unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            assert_eq!(std::fs::read(&key).unwrap(), b"k");
        });
    }
}
