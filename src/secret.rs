//! Secrets (API key, SMTP and SFTP credentials): a wrapper whose `Debug` and
//! `Display` never show the value, and loading from an environment variable
//! or a file. Code that needs the value calls `expose` at the last moment.

use std::fmt;
use std::path::{Path, PathBuf};

/// What `Debug` and `Display` print instead of the value.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string. Printing it shows `[REDACTED]`; it is not `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with a candidate in time that depends only on the lengths,
    /// so a server checking keys does not leak how many bytes matched.
    pub fn ct_eq(&self, candidate: &str) -> bool {
        let ours = self.0.as_bytes();
        let theirs = candidate.as_bytes();
        if ours.len() != theirs.len() {
            return false;
        }
        let difference = ours
            .iter()
            .zip(theirs)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        difference == 0
    }

    /// Reads a secret from a file (see `from_file`).
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        from_file(path)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a secret could not be loaded. Names where it was looked for, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("secret file {0} is empty")]
    EmptyFile(PathBuf),
}

/// Reads a secret from an environment variable.
pub fn from_env(name: &str) -> Result<Secret, SecretError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret(value.trim().to_string())),
        _ => Err(SecretError::MissingEnv(name.to_string())),
    }
}

/// Reads a secret from a file, trimming the trailing newline.
pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::EmptyFile(path.to_path_buf()));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("sk_live_123");
        assert_eq!(format!("{s}"), REDACTED);
        assert!(!format!("{s:?}").contains("sk_live"));
        assert_eq!(s.expose(), "sk_live_123");
    }

    #[test]
    fn file_errors_name_the_file_not_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  \n").unwrap();
        let err = from_file(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(from_file(&path).unwrap().expose(), "abc");
    }
}
