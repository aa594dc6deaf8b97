//! Upload of an export over SFTP (ssh2/libssh2), built so that student data
//! travels encrypted to a verified host and arrives whole or not at all:
//!
//! - the server's host key must match `known_hosts_file`; an unknown or a
//!   changed key is refused right after the key exchange, before any
//!   credential is sent;
//! - key authentication (an account password from a `SecretSource` is the
//!   optional fallback); no secret appears in any error or log;
//! - files go into `remote_dir/YYYY-MM-DD`, each written under a temporary
//!   name (`.NAME.cpsync-part`, mode 0600), its size and SHA-256 re-read
//!   from the server and compared, and only then renamed to its final name.
//!   OpenSSH's SFTP (v3) rename never overwrites, so replacing a file moves
//!   the old one aside first: the final name may be absent for an instant
//!   but never holds a partial file. `manifest.csv` goes last;
//! - connect and read timeouts, a bounded number of attempts with
//!   exponential backoff, each attempt on a fresh connection, and one
//!   deadline for the whole upload (each operation's timeout is cut to
//!   what is left of it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use serde::Serialize;
use ssh2::{
    CheckResult, HashType, HostKeyType, KnownHostFileKind, OpenFlags, OpenType, Session, Sftp,
};

use super::{ExportFile, Sha256Stream};
use crate::config::{SecretSource, SftpConfig};
use crate::retry::{self, Exhausted, Failed, GaveUp, RetryPolicy, RunBudget};
use crate::secret::{Secret, SecretError};

/// How long opening the TCP connection may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long any one SSH/SFTP operation may wait for the server.
pub const IO_TIMEOUT_MS: u32 = 30_000;
/// How long a whole upload may take, retries and waits included: libssh2
/// bounds each operation (`IO_TIMEOUT_MS`), so without this a server that
/// answers each one just in time could stretch an export for hours.
pub const UPLOAD_DEADLINE_SECS: u64 = 20 * 60;
/// Most upload attempts per export (each on a new connection).
pub const UPLOAD_ATTEMPTS_MAX: u32 = 3;
/// Wait before the second attempt; doubled for each further one.
pub const BACKOFF_INITIAL_MS: u64 = 2_000;
/// Longest wait between two attempts.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// The environment variable read for the SFTP password when the config
/// names a password source without saying where.
pub const DEFAULT_PASSWORD_ENV: &str = "CPSYNC_SFTP_PASSWORD";
/// Bytes written or read per SFTP call.
const CHUNK_BYTES: usize = 32 * 1024;
/// Deepest remote directory path created.
const REMOTE_DIR_DEPTH_MAX: usize = 32;
/// Permissions of uploaded files and created directories: owner only.
const REMOTE_FILE_MODE: i32 = 0o600;
const REMOTE_DIR_MODE: i32 = 0o700;
/// Suffixes of a file being uploaded and of a file being replaced.
pub const PART_SUFFIX: &str = ".cpsync-part";
pub const OLD_SUFFIX: &str = ".cpsync-old";

/// Why an upload failed. Names the host, paths and key fingerprints; never
/// a password, key or file content.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("sftp settings: {0}")]
    InvalidTarget(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("SSH handshake with {target} failed: {reason}")]
    Handshake { target: String, reason: String },
    #[error("cannot read known_hosts file {path}: {reason}")]
    KnownHostsFile { path: PathBuf, reason: String },
    #[error(
        "host key of {target} ({key_type} {fingerprint}) is not in {known_hosts}; \
         refusing to connect (verify the fingerprint with the server's operator, then add it)"
    )]
    UnknownHostKey {
        target: String,
        key_type: &'static str,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "host key of {target} has CHANGED: the server offered {key_type} {fingerprint}, \
         which does not match {known_hosts}; refusing to connect (possible impersonation)"
    )]
    ChangedHostKey {
        target: String,
        key_type: &'static str,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error("cannot check the host key of {target}: {reason}")]
    HostKeyCheck { target: String, reason: String },
    #[error("authentication as {username} on {target} failed: {reason}")]
    Auth {
        target: String,
        username: String,
        reason: String,
    },
    #[error("{operation} {path} on {target} failed: {reason}")]
    Remote {
        target: String,
        operation: &'static str,
        path: String,
        reason: String,
    },
    #[error("uploaded {path} on {target} does not match what was sent: {reason}")]
    Mismatch {
        target: String,
        path: String,
        reason: String,
    },
    #[error(
        "upload to {target} did not finish within {secs} s (the deadline of the whole upload, \
         retries included); files not yet renamed into place stay as {PART_SUFFIX} and are \
         removed by the next upload, and manifest.csv goes last, so no receiver sees a partial export"
    )]
    Deadline { target: String, secs: u64 },
    #[error("upload to {target} failed after {attempts} attempts; last error: {last}")]
    AttemptsExhausted {
        target: String,
        attempts: u32,
        last: Box<SftpError>,
    },
}

impl SftpError {
    /// Whether a new attempt may succeed (network and server trouble), as
    /// opposed to a refusal that needs a person (host key, credentials).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SftpError::Connect { .. }
                | SftpError::Handshake { .. }
                | SftpError::Remote { .. }
                | SftpError::Mismatch { .. }
        )
    }
}

/// Where and as whom to upload; the password, if any, already loaded.
#[derive(Debug, Clone)]
pub struct SftpTarget {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub private_key_file: Option<PathBuf>,
    pub password: Option<Secret>,
    pub known_hosts_file: PathBuf,
    pub remote_dir: String,
}

impl SftpTarget {
    /// The target named by the `[sftp]` config section (loads the password
    /// only when a password source is configured).
    pub fn from_config(config: &SftpConfig) -> Result<SftpTarget, SftpError> {
        let password = if config.password == SecretSource::default() {
            None
        } else {
            Some(config.password.load(DEFAULT_PASSWORD_ENV)?)
        };
        let target = SftpTarget {
            host: config.host.clone(),
            port: config.port,
            username: config.username.clone(),
            private_key_file: config.private_key_file.clone(),
            password,
            known_hosts_file: config.known_hosts_file.clone(),
            remote_dir: config.remote_dir.clone(),
        };
        target.validate()?;
        Ok(target)
    }

    pub fn validate(&self) -> Result<(), SftpError> {
        let invalid = |what: &str| Err(SftpError::InvalidTarget(what.to_string()));
        if self.host.trim().is_empty() || self.host.contains('\0') {
            return invalid("host is empty or contains a NUL byte");
        }
        if self.port == 0 {
            return invalid("port must not be 0");
        }
        if self.username.is_empty() || self.username.contains('\0') {
            return invalid("username is empty or contains a NUL byte");
        }
        if self.private_key_file.is_none() && self.password.is_none() {
            return invalid("needs private_key_file or a password source");
        }
        if self.remote_dir.contains('\0') {
            return invalid("remote_dir contains a NUL byte");
        }
        Ok(())
    }

    /// `host:port`, for messages.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The upload's retry policy unless a caller gives another: at most
/// `UPLOAD_ATTEMPTS_MAX` attempts, backoff from `BACKOFF_INITIAL_MS` up to
/// `BACKOFF_MAX_MS`, and `UPLOAD_DEADLINE_SECS` for the whole upload.
pub fn retry_policy_default() -> RetryPolicy {
    RetryPolicy {
        retries: UPLOAD_ATTEMPTS_MAX - 1,
        backoff_base: Duration::from_millis(BACKOFF_INITIAL_MS),
        backoff_max: Duration::from_millis(BACKOFF_MAX_MS),
        retry_after_max: Duration::ZERO,
        call_budget: Duration::from_secs(UPLOAD_DEADLINE_SECS),
    }
}

/// One file as it stands on the server after the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What an upload did, for run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadReport {
    pub host: String,
    pub port: u16,
    pub remote_dir: String,
    pub attempts: u32,
    pub files: Vec<RemoteFile>,
}

/// `remote_dir/YYYY-MM-DD`, the folder of one run date.
pub fn dated_dir(remote_dir: &str, run_date: NaiveDate) -> String {
    let date = run_date.format("%Y-%m-%d");
    let base = remote_dir.trim_end_matches('/');
    match (base.is_empty(), remote_dir.starts_with('/')) {
        (true, true) => format!("/{date}"),
        (true, false) => date.to_string(),
        (false, _) => format!("{base}/{date}"),
    }
}

/// Uploads `files` (in order) into the run date's folder, retrying network
/// and server failures within `policy` (`crate::retry`): its retries, and
/// its `call_budget` as the deadline of the whole upload.
pub fn upload(
    target: &SftpTarget,
    run_date: NaiveDate,
    files: &[ExportFile],
    policy: &RetryPolicy,
) -> Result<UploadReport, SftpError> {
    target.validate()?;
    let dir = dated_dir(&target.remote_dir, run_date);
    let past_deadline = || SftpError::Deadline {
        target: target.label(),
        secs: policy.call_budget.as_secs(),
    };
    // One upload is the run's only call: its budget is the whole upload's.
    let run_budget = RunBudget::new(policy.call_budget);
    let mut attempts = 0;
    let uploaded = retry::run(
        policy,
        &run_budget,
        |attempt, until| {
            attempts = attempt;
            match upload_once(target, &dir, files, until) {
                Ok(uploaded) => Ok(uploaded),
                // Out of time (libssh2's own timeout, cut to the deadline,
                // or our check between operations): say so, whatever failed.
                Err(_) if Instant::now() >= until => Err(Failed::Final(past_deadline())),
                Err(error) if error.is_retryable() => Err(Failed::Transient { error, after: None }),
                Err(error) => Err(Failed::Final(error)),
            }
        },
        |error, attempt, wait| {
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %error, "upload attempt failed; retrying");
        },
    );
    match uploaded {
        Ok(uploaded) => Ok(UploadReport {
            host: target.host.clone(),
            port: target.port,
            remote_dir: dir,
            attempts,
            files: uploaded,
        }),
        Err(GaveUp::Final(error)) => Err(error),
        Err(GaveUp::Exhausted {
            why: Exhausted::CallBudget { .. } | Exhausted::RunBudget { .. },
            ..
        }) => Err(past_deadline()),
        Err(GaveUp::Exhausted { last, attempts, .. }) => Err(SftpError::AttemptsExhausted {
            target: target.label(),
            attempts,
            last: Box::new(last),
        }),
    }
}

/// One attempt on a new connection.
fn upload_once(
    target: &SftpTarget,
    dir: &str,
    files: &[ExportFile],
    until: Instant,
) -> Result<Vec<RemoteFile>, SftpError> {
    let session = connect_until(target, until)?;
    let remote = Remote {
        session: session.clone(),
        until,
        sftp: session.sftp().map_err(|e| SftpError::Remote {
            target: target.label(),
            operation: "start SFTP",
            path: String::new(),
            reason: e.message().to_string(),
        })?,
        target: target.label(),
    };
    remote.ensure_dir(dir)?;
    remote.remove_leftovers(dir)?;
    let mut uploaded = Vec::with_capacity(files.len());
    for file in files {
        uploaded.push(remote.put(dir, file)?);
        tracing::info!(file = file.name, bytes = file.bytes.len(), "uploaded");
    }
    drop(remote);
    let _ = session.disconnect(None, "export complete", None);
    Ok(uploaded)
}

/// Opens a TCP connection with a timeout, does the SSH handshake, checks
/// the host key and authenticates.
pub fn connect(target: &SftpTarget) -> Result<Session, SftpError> {
    connect_until(
        target,
        Instant::now() + Duration::from_secs(UPLOAD_DEADLINE_SECS),
    )
}

/// `connect`, every wait cut to what is left before `until`.
fn connect_until(target: &SftpTarget, until: Instant) -> Result<Session, SftpError> {
    let tcp = open_tcp(target, until)?;
    let handshake = |e: ssh2::Error| SftpError::Handshake {
        target: target.label(),
        reason: e.message().to_string(),
    };
    let mut session = Session::new().map_err(handshake)?;
    session.set_timeout(timeout_ms(until));
    session.set_tcp_stream(tcp);
    session.handshake().map_err(handshake)?;
    check_host_key(&session, target)?;
    authenticate(&session, target)?;
    Ok(session)
}

/// libssh2's timeout for the next operation: `IO_TIMEOUT_MS`, or what is
/// left before `until` if less (at least 1 ms: 0 would mean no timeout).
fn timeout_ms(until: Instant) -> u32 {
    let left = until.saturating_duration_since(Instant::now()).as_millis();
    left.clamp(1, u128::from(IO_TIMEOUT_MS)) as u32
}

fn open_tcp(target: &SftpTarget, until: Instant) -> Result<TcpStream, SftpError> {
    let error = |reason: String| SftpError::Connect {
        target: target.label(),
        reason,
    };
    let addresses: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| error(e.to_string()))?
        .collect();
    let left = until.saturating_duration_since(Instant::now());
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS)
        .min(left)
        .max(Duration::from_millis(1));
    let mut last = "the host name has no address".to_string();
    for address in &addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e.to_string(),
        }
    }
    Err(error(last))
}

/// Refuses the server unless its host key is listed for it in known_hosts.
fn check_host_key(session: &Session, target: &SftpTarget) -> Result<(), SftpError> {
    let check_error = |reason: String| SftpError::HostKeyCheck {
        target: target.label(),
        reason,
    };
    let (key, key_type) = session
        .host_key()
        .ok_or_else(|| check_error("the server sent no host key".to_string()))?;
    let mut known = session
        .known_hosts()
        .map_err(|e| check_error(e.message().to_string()))?;
    known
        .read_file(&target.known_hosts_file, KnownHostFileKind::OpenSSH)
        .map_err(|e| SftpError::KnownHostsFile {
            path: target.known_hosts_file.clone(),
            reason: e.message().to_string(),
        })?;
    let fingerprint = session
        .host_key_hash(HashType::Sha256)
        .map(|hash| format!("SHA256:{}", base64_unpadded(hash)))
        .unwrap_or_else(|| "(no fingerprint)".to_string());
    let key_type = key_type_name(key_type);
    match known.check_port(&target.host, target.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound => Err(SftpError::UnknownHostKey {
            target: target.label(),
            key_type,
            fingerprint,
            known_hosts: target.known_hosts_file.clone(),
        }),
        CheckResult::Mismatch => Err(SftpError::ChangedHostKey {
            target: target.label(),
            key_type,
            fingerprint,
            known_hosts: target.known_hosts_file.clone(),
        }),
        CheckResult::Failure => Err(check_error("libssh2 could not compare the key".to_string())),
    }
}

fn key_type_name(key_type: HostKeyType) -> &'static str {
    match key_type {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown key type",
    }
}

/// Key authentication first; the account password, if configured, after.
/// The base64 of `openssh-key-v1\0` followed by the cipher name `none`:
/// how every OpenSSH private key without a passphrase begins.
const OPENSSH_KEY_PREFIX: &str = "b3BlbnNzaC1rZXktdjEA";
const OPENSSH_UNENCRYPTED_PREFIX: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU";

/// Whether a private key file is protected by a passphrase (an OpenSSH key
/// whose cipher is not `none`, or a PEM key marked `ENCRYPTED`): libssh2
/// then only says "Unsupported private key format".
fn key_needs_passphrase(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    if text.contains("ENCRYPTED") {
        return true;
    }
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    body.starts_with(OPENSSH_KEY_PREFIX) && !body.starts_with(OPENSSH_UNENCRYPTED_PREFIX)
}

fn authenticate(session: &Session, target: &SftpTarget) -> Result<(), SftpError> {
    let auth_error = |reason: String| SftpError::Auth {
        target: target.label(),
        username: target.username.clone(),
        reason,
    };
    let mut reasons = Vec::new();
    if let Some(key) = &target.private_key_file {
        if !key.is_file() {
            reasons.push(format!("private key file {} does not exist", key.display()));
        } else if key_needs_passphrase(key) {
            reasons.push(format!(
                "key {} is protected by a passphrase, which cpsync does not support: use a key without one, readable only by the cpsync user (chmod 600)",
                key.display()
            ));
        } else if let Err(e) = session.userauth_pubkey_file(&target.username, None, key, None) {
            reasons.push(format!("key {}: {}", key.display(), e.message()));
        }
    }
    if !session.authenticated() {
        if let Some(password) = &target.password {
            if let Err(e) = session.userauth_password(&target.username, password.expose()) {
                reasons.push(format!("password: {}", e.message()));
            }
        }
    }
    if session.authenticated() {
        Ok(())
    } else {
        Err(auth_error(reasons.join("; ")))
    }
}

/// An open SFTP channel and the label of its server, for messages.
struct Remote {
    sftp: Sftp,
    target: String,
    /// The session, to cut each operation's timeout to the deadline.
    session: Session,
    until: Instant,
}

impl Remote {
    /// Before each operation: out of time is an error; otherwise the
    /// operation may wait at most what is left.
    fn tick(&self, operation: &'static str, path: &str) -> Result<(), SftpError> {
        if Instant::now() >= self.until {
            return Err(self.error(
                operation,
                path,
                "the upload's deadline has passed".to_string(),
            ));
        }
        self.session.set_timeout(timeout_ms(self.until));
        Ok(())
    }

    fn error(&self, operation: &'static str, path: &str, reason: String) -> SftpError {
        // This attempt is over (the next one, if any, opens a new
        // connection): the handles closed on the way out (file, SFTP
        // channel) must not each wait again for an answer. Waiting only
        // when the deadline had passed missed an operation that timed out
        // a moment before it, and each close then waited up to seconds.
        self.session.set_timeout(1);
        SftpError::Remote {
            target: self.target.clone(),
            operation,
            path: path.to_string(),
            reason,
        }
    }

    fn ssh_error(
        &self,
        operation: &'static str,
        path: &str,
    ) -> impl Fn(ssh2::Error) -> SftpError + '_ {
        let path = path.to_string();
        move |e| self.error(operation, &path, e.message().to_string())
    }

    /// `mkdir -p dir`, owner-only for the folders it creates.
    fn ensure_dir(&self, dir: &str) -> Result<(), SftpError> {
        self.tick("create folder", dir)?;
        let components: Vec<&str> = dir
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if components.len() > REMOTE_DIR_DEPTH_MAX {
            return Err(self.error(
                "create",
                dir,
                format!("deeper than {REMOTE_DIR_DEPTH_MAX} levels"),
            ));
        }
        let mut path = if dir.starts_with('/') {
            String::from("/")
        } else {
            String::new()
        };
        for component in components {
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(component);
            match self.sftp.stat(Path::new(&path)) {
                Ok(stat) if stat.is_dir() => continue,
                Ok(_) => {
                    return Err(self.error(
                        "create",
                        &path,
                        "exists and is not a directory".to_string(),
                    ))
                }
                Err(_) => {
                    if let Err(e) = self.sftp.mkdir(Path::new(&path), REMOTE_DIR_MODE) {
                        // Another process may have created it meanwhile.
                        if !self.sftp.stat(Path::new(&path)).is_ok_and(|s| s.is_dir()) {
                            return Err(self.error("create", &path, e.message().to_string()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes temporaries an interrupted earlier attempt left in `dir`.
    fn remove_leftovers(&self, dir: &str) -> Result<(), SftpError> {
        self.tick("list", dir)?;
        let entries = self
            .sftp
            .readdir(Path::new(dir))
            .map_err(self.ssh_error("list", dir))?;
        for (path, _) in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && (name.ends_with(PART_SUFFIX) || name.ends_with(OLD_SUFFIX))
            {
                let shown = path.display().to_string();
                self.sftp
                    .unlink(&path)
                    .map_err(self.ssh_error("remove", &shown))?;
                tracing::info!(path = %shown, "removed a leftover temporary file");
            }
        }
        Ok(())
    }

    /// Uploads one file: temporary name, verify, rename.
    fn put(&self, dir: &str, file: &ExportFile) -> Result<RemoteFile, SftpError> {
        let final_path = format!("{dir}/{}", file.name);
        let part_path = format!("{dir}/.{}{PART_SUFFIX}", file.name);
        self.write(&part_path, &file.bytes)?;
        self.verify(&part_path, file)?;
        self.replace(&part_path, &final_path)?;
        let size = self.size(&final_path)?;
        if size != file.bytes.len() as u64 {
            return Err(self.mismatch(
                &final_path,
                format!("{size} bytes after rename, {} sent", file.bytes.len()),
            ));
        }
        Ok(RemoteFile {
            path: final_path,
            bytes: size,
            sha256: file.sha256.clone(),
        })
    }

    fn mismatch(&self, path: &str, reason: String) -> SftpError {
        SftpError::Mismatch {
            target: self.target.clone(),
            path: path.to_string(),
            reason,
        }
    }

    fn write(&self, path: &str, bytes: &[u8]) -> Result<(), SftpError> {
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let mut remote = self
            .sftp
            .open_mode(Path::new(path), flags, REMOTE_FILE_MODE, OpenType::File)
            .map_err(self.ssh_error("open", path))?;
        // One libssh2 call at a time, each given only what is left of the
        // deadline (`write_all` would let every call wait in full).
        for chunk in bytes.chunks(CHUNK_BYTES) {
            let mut rest = chunk;
            while !rest.is_empty() {
                self.tick("write", path)?;
                let n = remote
                    .write(rest)
                    .map_err(|e| self.error("write", path, e.to_string()))?;
                if n == 0 {
                    return Err(self.error("write", path, "the server took no bytes".to_string()));
                }
                rest = &rest[n..];
            }
        }
        self.tick("fsync", path)?;
        if let Err(e) = remote.fsync() {
            // fsync@openssh.com is an extension; the re-read below still
            // proves the content.
            tracing::debug!(path, error = %e.message(), "server did not fsync");
        }
        self.tick("close", path)?;
        remote.close().map_err(self.ssh_error("close", path))
    }

    fn size(&self, path: &str) -> Result<u64, SftpError> {
        self.tick("stat", path)?;
        let stat = self
            .sftp
            .stat(Path::new(path))
            .map_err(self.ssh_error("stat", path))?;
        stat.size
            .ok_or_else(|| self.error("stat", path, "the server reported no size".to_string()))
    }

    /// Compares the remote size and the SHA-256 of the remote bytes.
    fn verify(&self, path: &str, file: &ExportFile) -> Result<(), SftpError> {
        self.tick("re-read", path)?;
        let expected = file.bytes.len() as u64;
        let size = self.size(path)?;
        if size != expected {
            return Err(self.mismatch(path, format!("{size} bytes on the server, {expected} sent")));
        }
        let mut remote = self
            .sftp
            .open(Path::new(path))
            .map_err(self.ssh_error("open", path))?;
        let mut hash = Sha256Stream::default();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut read_total = 0u64;
        while read_total <= expected {
            self.tick("read", path)?;
            let n = remote
                .read(&mut buffer)
                .map_err(|e| self.error("read", path, e.to_string()))?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            read_total += n as u64;
        }
        let sha256 = hash.finish_hex();
        if read_total != expected || sha256 != file.sha256 {
            return Err(self.mismatch(
                path,
                format!("read back {read_total} bytes with SHA-256 {sha256}"),
            ));
        }
        Ok(())
    }

    /// Renames `part` to `final_path`, moving an existing file aside first
    /// (SFTP v3 rename does not overwrite) and deleting it afterwards.
    fn replace(&self, part: &str, final_path: &str) -> Result<(), SftpError> {
        self.tick("rename", part)?;
        let rename = |from: &str, to: &str| {
            self.sftp
                .rename(Path::new(from), Path::new(to), None)
                .map_err(self.ssh_error("rename", from))
        };
        if self.sftp.stat(Path::new(final_path)).is_err() {
            return rename(part, final_path);
        }
        let (dir, name) = final_path.rsplit_once('/').unwrap_or(("", final_path));
        let old = format!("{dir}/.{name}{OLD_SUFFIX}");
        let _ = self.sftp.unlink(Path::new(&old));
        rename(final_path, &old)?;
        if let Err(error) = rename(part, final_path) {
            let _ = rename(&old, final_path);
            return Err(error);
        }
        self.sftp
            .unlink(Path::new(&old))
            .map_err(self.ssh_error("remove", &old))
    }
}

/// Standard base64 without padding, as OpenSSH prints fingerprints.
fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            text.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_protected_keys_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str, cipher: &[u8]| {
            let mut blob = b"openssh-key-v1\0".to_vec();
            blob.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
            blob.extend_from_slice(cipher);
            blob.extend_from_slice(&[0, 0, 0, 4]);
            blob.extend_from_slice(b"none rest of the key");
            let text = format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
                base64_unpadded(&blob)
            );
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert!(!key_needs_passphrase(&key("plain", b"none")));
        assert!(key_needs_passphrase(&key("encrypted", b"aes256-ctr")));
        let pem = dir.path().join("pem");
        std::fs::write(
            &pem,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nabc\n",
        )
        .unwrap();
        assert!(key_needs_passphrase(&pem));
        assert!(!key_needs_passphrase(&dir.path().join("absent")));
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_unpadded(b"abc"), "YWJj");
        assert_eq!(base64_unpadded(b"ab"), "YWI");
        assert_eq!(base64_unpadded(b"a"), "YQ");
        assert_eq!(base64_unpadded(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn dated_dir_joins_cleanly() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert_eq!(dated_dir("/incoming", date), "/incoming/2026-11-27");
        assert_eq!(dated_dir("/incoming/", date), "/incoming/2026-11-27");
        assert_eq!(dated_dir("/", date), "/2026-11-27");
        assert_eq!(dated_dir(".", date), "./2026-11-27");
        assert_eq!(dated_dir("", date), "2026-11-27");
    }

    #[test]
    fn refusals_are_not_retried() {
        let unknown = SftpError::UnknownHostKey {
            target: "h:22".into(),
            key_type: "ssh-ed25519",
            fingerprint: "SHA256:x".into(),
            known_hosts: "/k".into(),
        };
        assert!(!unknown.is_retryable());
        let dropped = SftpError::Connect {
            target: "h:22".into(),
            reason: "reset".into(),
        };
        assert!(dropped.is_retryable());
    }

    #[test]
    fn a_password_never_shows_in_the_target() {
        let target = SftpTarget {
            host: "h".into(),
            port: 22,
            username: "u".into(),
            private_key_file: None,
            password: Some(Secret::new("hunter2")),
            known_hosts_file: "/k".into(),
            remote_dir: "/in".into(),
        };
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
