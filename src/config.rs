//! Infrastructure configuration from a TOML file (`--config` or
//! `CPSYNC_CONFIG`): database, Community Pass endpoint, SMTP, SFTP and the
//! report directory. Unknown keys are errors. Secrets are never in the file
//! itself: it names the environment variable or file that holds each one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::{self, Secret, SecretError};

/// The database used when neither `--database-url`, `DATABASE_URL` nor the
/// config file names one: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://cpsync.db";
/// The environment variable read for the Community Pass API key by default.
pub const DEFAULT_API_KEY_ENV: &str = "CPSYNC_API_KEY";
/// The environment variable naming a file that holds the API key, read
/// before `CPSYNC_API_KEY` when the config names no source (systemd's
/// `LoadCredential=` gives such a file: `%d/api-key`).
pub const DEFAULT_API_KEY_FILE_ENV: &str = "CPSYNC_API_KEY_FILE";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path} is invalid: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config file {path}: {field} {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The whole configuration file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The district's name, shown in reports and email subjects.
    pub district: Option<String>,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub community_pass: Option<CommunityPassConfig>,
    #[serde(default)]
    pub reports: ReportsConfig,
    pub smtp: Option<SmtpConfig>,
    pub sftp: Option<SftpConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[metrics]`: where to write the Prometheus text file that
/// node_exporter's textfile collector reads (`cpsync.prom`), after every
/// run. Absent: no file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub textfile_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Option<String>,
}

/// Where a secret comes from: a file (preferred) or an environment variable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// Loads the secret, from the file if one is named, else the variable
    /// (or `default_env` when neither is named).
    pub fn load(&self, default_env: &str) -> Result<Secret, SecretError> {
        match (&self.file, &self.env) {
            (Some(file), _) => secret::from_file(file),
            (None, Some(env)) => secret::from_env(env),
            (None, None) => secret::from_env(default_env),
        }
    }
}

/// Where the Community Pass API key is read at run time: a file or an
/// environment variable, resolved from the config (`api_key_source`). The
/// database never holds the key, only its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl KeySource {
    /// Reads the key now (a rotated file or variable takes effect at once).
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            KeySource::File(path) => secret::from_file(path),
            KeySource::Env(name) => secret::from_env(name),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// The API key's source: `[community_pass] api_key = { file = … }` or
/// `{ env = … }`; when the config names neither, the file named by
/// `CPSYNC_API_KEY_FILE` if that is set, else `CPSYNC_API_KEY`.
pub fn api_key_source(section: Option<&CommunityPassConfig>) -> KeySource {
    let named = section.map(|c| &c.api_key);
    match named {
        Some(SecretSource {
            file: Some(file), ..
        }) => KeySource::File(file.clone()),
        Some(SecretSource { env: Some(env), .. }) => KeySource::Env(env.clone()),
        _ => match std::env::var(DEFAULT_API_KEY_FILE_ENV) {
            Ok(path) if !path.trim().is_empty() => KeySource::File(PathBuf::from(path.trim())),
            _ => KeySource::Env(DEFAULT_API_KEY_ENV.to_string()),
        },
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunityPassConfig {
    /// Base URL of the InstantSync API, e.g. `https://api.example/v1`.
    pub base_url: String,
    #[serde(default)]
    pub api_key: SecretSource,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// The whole-attempt deadline: from sending to the last body byte.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// The budget of one call, all its attempts and waits together.
    #[serde(default = "default_call_budget_secs")]
    pub call_budget_secs: u64,
    /// The waiting between retries one run may spend, all calls together;
    /// once spent, failed calls are not retried and the work is left for
    /// the next run.
    #[serde(default = "default_retry_wait_budget_secs")]
    pub retry_wait_budget_secs: u64,
}

fn default_retry_wait_budget_secs() -> u64 {
    crate::retry::RUN_WAIT_BUDGET_DEFAULT.as_secs()
}

fn default_connect_timeout_secs() -> u64 {
    5
}

fn default_call_budget_secs() -> u64 {
    crate::portal::http::CALL_BUDGET_DEFAULT.as_secs()
}

fn default_request_timeout_secs() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Where reports, exception CSVs and .eml files are written.
    #[serde(default = "default_reports_dir")]
    pub dir: PathBuf,
    /// Attach the full HTML report to the email, not only the CSV.
    #[serde(default = "default_true")]
    pub attach_html: bool,
    /// A credit on account (an overpayment both systems agree on) is listed
    /// for the business office, and becomes an item needing review only
    /// once it is this many days old.
    #[serde(default = "default_credit_review_after_days")]
    pub credit_review_after_days: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            dir: default_reports_dir(),
            attach_html: true,
            credit_review_after_days: default_credit_review_after_days(),
        }
    }
}

fn default_credit_review_after_days() -> u32 {
    30
}

fn default_reports_dir() -> PathBuf {
    PathBuf::from("cpsync-reports")
}

fn default_true() -> bool {
    true
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: accepted only for a loopback host (a local relay or a test server).
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(default)]
    pub password: SecretSource,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default = "default_request_timeout_secs")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    pub host: String,
    #[serde(default = "default_sftp_port")]
    pub port: u16,
    pub username: String,
    pub private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub password: SecretSource,
    pub known_hosts_file: PathBuf,
    #[serde(default = "default_remote_dir")]
    pub remote_dir: String,
}

fn default_sftp_port() -> u16 {
    22
}

fn default_remote_dir() -> String {
    ".".to_string()
}

/// The parser's message with where it happened: the line and the key on it,
/// never the value (a misplaced secret must not end up in an error).
fn parse_reason(text: &str, error: &toml::de::Error) -> String {
    let message = without_quoted_value(error.message());
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_number = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('[') => {
            format!("line {line_number}, key {:?}: {message}", key.trim())
        }
        _ => format!("line {line_number}: {message}"),
    }
}

/// serde quotes the offending value (`invalid type: string "…", expected
/// u16`); that value may be a secret put in the wrong place, so it is cut.
fn without_quoted_value(message: &str) -> String {
    match (message.find(" \""), message.rfind('"')) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{}", &message[..start], &message[end + 1..])
        }
        _ => message.to_string(),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.kind().to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: parse_reason(text, &e),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason: reason.to_string(),
        };
        if let Some(cp) = &self.community_pass {
            if !(cp.base_url.starts_with("https://") || cp.base_url.starts_with("http://")) {
                return Err(invalid(
                    "community_pass.base_url",
                    "must start with https://",
                ));
            }
            if cp.request_timeout_secs == 0
                || cp.connect_timeout_secs == 0
                || cp.call_budget_secs == 0
            {
                return Err(invalid(
                    "community_pass timeouts",
                    "must be at least 1 second",
                ));
            }
        }
        if let Some(smtp) = &self.smtp {
            if smtp.to.is_empty() {
                return Err(invalid("smtp.to", "must list at least one recipient"));
            }
            if smtp.port == 0 {
                return Err(invalid("smtp.port", "must not be 0"));
            }
        }
        if let Some(sftp) = &self.sftp {
            if sftp.private_key_file.is_none() && sftp.password == SecretSource::default() {
                return Err(invalid(
                    "sftp",
                    "needs private_key_file (or a password source)",
                ));
            }
        }
        Ok(())
    }

    /// The database URL: the one the command line or the environment gives
    /// (`--database-url`, `--database-url-file`, `CPSYNC_DATABASE_URL`,
    /// `DATABASE_URL`) first, then the file, then the default SQLite file.
    pub fn database_url(&self, from_command_line: Option<&str>) -> String {
        from_command_line
            .map(str::to_string)
            .or_else(|| self.database.url.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string())
    }

    /// The district's name; none (or blank) when the config does not name
    /// one: the report, its email and the export then refuse to run rather
    /// than print a made-up name.
    pub fn district_name(&self) -> Option<&str> {
        self.district
            .as_deref()
            .filter(|name| !name.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../cpsync.example.toml");
        let config = parse(text).unwrap();
        assert!(config.smtp.is_some() && config.sftp.is_some());
        assert_eq!(config.smtp.unwrap().tls, SmtpTls::Starttls);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("[database]\nurl = 'x.db'\nuser = 'a'\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_line_and_key_but_not_the_value() {
        let text = "[smtp]\nhost = 'h'\nport = 'secret-looking-value'\ntls = 'none'\nfrom = 'a@b'\nto = ['c']\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("line 3, key \"port\""), "{err}");
        assert!(!err.contains("secret-looking-value"), "{err}");
        let err = parse("[smtp]\npassword = 'hunter2'\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let err = parse("[community_pass]\nbase_url = 'ftp://x'\n").unwrap_err();
        assert!(err.to_string().contains("community_pass.base_url"), "{err}");
        let err = parse("[smtp]\nhost='h'\nport=25\ntls='none'\nfrom='a@b'\nto=[]\n").unwrap_err();
        assert!(err.to_string().contains("smtp.to"), "{err}");
    }

    #[test]
    fn the_api_key_source_is_the_configured_file_or_variable() {
        let config = parse(
            "[community_pass]\nbase_url = 'https://cp.example/api'\napi_key = { file = '/etc/cpsync/api-key' }\n",
        )
        .unwrap();
        let source = api_key_source(config.community_pass.as_ref());
        assert_eq!(source, KeySource::File("/etc/cpsync/api-key".into()));
        assert_eq!(source.to_string(), "file /etc/cpsync/api-key");
        let config = parse(
            "[community_pass]\nbase_url = 'https://cp.example/api'\napi_key = { env = 'DISTRICT_KEY' }\n",
        )
        .unwrap();
        assert_eq!(
            api_key_source(config.community_pass.as_ref()),
            KeySource::Env("DISTRICT_KEY".into())
        );
    }

    #[test]
    fn database_url_precedence() {
        let config = parse("[database]\nurl = 'sqlite://file.db'\n").unwrap();
        assert_eq!(config.database_url(Some("other.db")), "other.db");
        assert_eq!(config.database_url(None), "sqlite://file.db");
        assert_eq!(Config::default().database_url(None), DEFAULT_DATABASE_URL);
    }
}
