//! One scenario's world: a private folder, a seeded district in a fresh
//! database (SQLite, or PostgreSQL for a share of scenarios), the simulator
//! on loopback, a config file whose secrets live only in the environment,
//! and setup done in the handbook's order through the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use diesel::connection::SimpleConnection;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use cpsync::db::{self, DatabaseUrl, DbConnection, OpenMode};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::sim::{AdminClient, SimConfig, SimHandle, Simulator};

use crate::engine::Engine;

/// The smallest and largest district a scenario seeds.
pub const STUDENTS_MIN: usize = 6;
pub const STUDENTS_MAX: usize = 40;
/// The environment variables the config names for the SMTP and SFTP passwords.
pub const SMTP_PASSWORD_ENV: &str = "CPSYNC_SMTP_PASSWORD";
pub const SFTP_PASSWORD_ENV: &str = "CPSYNC_SFTP_PASSWORD";

/// The scenario's secrets: each one distinctive, so a scan cannot miss it.
#[derive(Clone)]
pub struct Secrets {
    pub api_key: String,
    pub smtp_password: String,
    pub sftp_password: String,
}

impl Secrets {
    fn new(rng: &mut ChaCha8Rng) -> Secrets {
        let mut word =
            |prefix: &str| format!("{prefix}{:016x}{:08x}", rng.gen::<u64>(), rng.gen::<u32>());
        Secrets {
            api_key: word("sk_chaos_"),
            smtp_password: word("smtp_pw_"),
            sftp_password: word("sftp_pw_"),
        }
    }

    pub fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("API key", &self.api_key),
            ("SMTP password", &self.smtp_password),
            ("SFTP password", &self.sftp_password),
        ]
    }
}

/// A PostgreSQL database made for one scenario, dropped with it.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(url) = DatabaseUrl::parse(&self.admin_url) {
            if let Ok(mut conn) = db::connect(&url, OpenMode::MustExist) {
                let _ = conn.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        }
    }
}

pub struct World {
    pub seed: u64,
    pub dir: PathBuf,
    pub database: DatabaseUrl,
    pub secrets: Secrets,
    /// The database URL the engine is given.
    pub url_text: String,
    pub students: usize,
    pub request_timeout_secs: u64,
    pub sim: SimHandle,
    pub admin: AdminClient,
    /// The driver's own client, used only while faults are off.
    pub portal: HttpPortal,
    pub engine: Engine,
    _pg: Option<PgDatabase>,
}

/// The campaign's folder: private, new.
pub fn work_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir().join(format!("cpsync-chaos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.canonicalize()?)
}

pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(cpsync::files::write_private(path, text.as_bytes())?)
}

impl World {
    pub fn build(
        seed: u64,
        rng: &mut ChaCha8Rng,
        bin: &Path,
        work: &Path,
        pg_admin: Option<&str>,
    ) -> anyhow::Result<World> {
        let dir = work.join(format!("seed-{seed}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let secrets = Secrets::new(rng);
        let students = rng.gen_range(STUDENTS_MIN..=STUDENTS_MAX);
        let (database, url_text, pg) = create_database(&dir, seed, pg_admin)?;
        seed_district(&database, students, seed)?;
        let sim = Simulator::start(SimConfig {
            seed,
            ..SimConfig::new(Secret::new(secrets.api_key.clone()))
        })?;
        let request_timeout_secs = rng.gen_range(1..=2u64);
        let config = config_text(&dir, &sim.base_url(), request_timeout_secs);
        write_private(&dir.join("cpsync.toml"), &config)?;
        write_private(&dir.join("api-key"), &secrets.api_key)?;
        let globals = vec![
            "--config".to_string(),
            dir.join("cpsync.toml").display().to_string(),
            "--database-url".to_string(),
            url_text.clone(),
        ];
        let env = vec![
            (SMTP_PASSWORD_ENV.to_string(), secrets.smtp_password.clone()),
            (SFTP_PASSWORD_ENV.to_string(), secrets.sftp_password.clone()),
        ];
        let engine = Engine::new(bin, globals, env, dir.join("logs"), &dir);
        let portal = HttpPortal::new(HttpPortalConfig::new(
            sim.base_url(),
            Secret::new(secrets.api_key.clone()),
        ))?;
        Ok(World {
            seed,
            url_text,
            students,
            request_timeout_secs,
            admin: sim.admin()?,
            dir,
            database,
            secrets,
            sim,
            portal,
            engine,
            _pg: pg,
        })
    }

    /// What was built, for the trace (no paths, ports or secrets).
    pub fn describe(&self) -> String {
        format!(
            "world: {} students, request timeout {} s",
            self.students, self.request_timeout_secs
        )
    }

    pub fn connect(&self) -> anyhow::Result<DbConnection> {
        Ok(db::connect_migrated(&self.database)?)
    }

    /// Setup in the handbook's order through the binary; every step must pass.
    pub fn setup(&self) -> anyhow::Result<()> {
        // The key is read from the file the config names (api-key).
        let steps: [&[&str]; 5] = [
            &["setup", "api-key"],
            &["setup", "categories", "--all"],
            &["setup", "test-pull"],
            &["setup", "test-push"],
            &["setup", "cutoff", "2026-08-01"],
        ];
        for step in steps {
            let ended = self.engine.run(step)?;
            anyhow::ensure!(
                ended.code == Some(0),
                "{} exited {:?}: {}",
                ended.label,
                ended.code,
                crate::engine::tail(&ended.stderr)
            );
        }
        Ok(())
    }
}

fn create_database(
    dir: &Path,
    seed: u64,
    pg_admin: Option<&str>,
) -> anyhow::Result<(DatabaseUrl, String, Option<PgDatabase>)> {
    let Some(admin_url) = pg_admin else {
        let text = format!("sqlite://{}", dir.join("genesis.db").display());
        return Ok((DatabaseUrl::parse(&text)?, text, None));
    };
    let name = format!("cpsync_chaos_{}_{seed}", std::process::id());
    let mut conn = db::connect(&DatabaseUrl::parse(admin_url)?, OpenMode::MustExist)?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    conn.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .context("the PostgreSQL URL names no database")?;
    let text = format!("{base}/{name}");
    let pg = PgDatabase {
        admin_url: admin_url.to_string(),
        name,
    };
    Ok((DatabaseUrl::parse(&text)?, text, Some(pg)))
}

fn seed_district(database: &DatabaseUrl, students: usize, seed: u64) -> anyhow::Result<()> {
    let mut conn = db::connect(database, OpenMode::CreateIfMissing)?;
    db::migrate::run_pending(&mut conn)?;
    seed::store(&mut conn, &seed::generate(SeedOptions { students, seed }))?;
    Ok(())
}

/// Infrastructure config: the simulator, short timeouts (so latency spikes
/// become client timeouts), and SMTP and SFTP sections whose passwords come
/// from the environment only (nothing listens on the SFTP port).
fn config_text(dir: &Path, base_url: &str, request_timeout_secs: u64) -> String {
    format!(
        r#"district = "Chaos Township Public Schools"

[community_pass]
base_url = "{base_url}"
api_key = {{ file = "{api_key}" }}
connect_timeout_secs = 1
request_timeout_secs = {request_timeout_secs}

[reports]
dir = "{reports}"

{smtp}
[sftp]
host = "127.0.0.1"
port = 9
username = "district"
password = {{ env = "{SFTP_PASSWORD_ENV}" }}
known_hosts_file = "{known_hosts}"
remote_dir = "/incoming"
"#,
        reports = dir.join("reports").display(),
        api_key = dir.join("api-key").display(),
        known_hosts = dir.join("known_hosts").display(),
        smtp = smtp_section(),
    )
}

/// The report email goes to the suite's SMTP server when `scripts/test`
/// started one (`CPSYNC_TEST_SMTP_PORT`); otherwise there is no `[smtp]`
/// section and each report's email is written as an `.eml` file, which the
/// secret scan reads like every other output.
fn smtp_section() -> String {
    match std::env::var("CPSYNC_TEST_SMTP_PORT") {
        Ok(port) => format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
             from = \"cpsync <cpsync@chaos.example>\"\nto = [\"office@chaos.example\"]\ntimeout_secs = 5\n"
        ),
        Err(_) => String::new(),
    }
}
