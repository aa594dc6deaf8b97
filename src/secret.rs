//! `Secret`: a string that must never be shown (API keys, SMTP and SFTP
//! passwords). Its `Debug` and `Display` print a fixed redaction marker, it is
//! not `Serialize`, and the value is read only through `expose()`, so every
//! place that handles the clear text is easy to find with grep.

use std::fmt;

/// What `Debug` and `Display` print instead of the value.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string. Compare with `ct_eq` (constant time), show never.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for the one call that must send it (a header, a login).
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

    /// Reads a secret from the first non-empty line of a file; surrounding
    /// whitespace is dropped. The error names the file, never the content.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        match line {
            Some(value) => Ok(Secret::new(value)),
            None => anyhow::bail!("secret file {} is empty", path.display()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let secret = Secret::new("sk_live_abc123");
        assert_eq!(format!("{secret}"), REDACTED);
        assert!(!format!("{secret:?}").contains("abc123"));
        assert!(!format!("{:?}", Some(&secret)).contains("abc123"));
        assert_eq!(secret.expose(), "sk_live_abc123");
    }

    #[test]
    fn compares_exactly() {
        let secret = Secret::new("k1");
        assert!(secret.ct_eq("k1"));
        assert!(!secret.ct_eq("k2"));
        assert!(!secret.ct_eq("k1 "));
        assert!(!secret.ct_eq(""));
    }

    #[test]
    fn reads_first_line_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n  sk_test \nother\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "sk_test");
        std::fs::write(&path, "\n\n").unwrap();
        let err = Secret::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("empty"));
    }
}
