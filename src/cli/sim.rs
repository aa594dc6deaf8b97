//! `cpsync sim`: runs the Community Pass simulator standalone on loopback
//! until SIGTERM or Ctrl-C, optionally pre-loaded with a generated district
//! and with faults switched on from the start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::secret::Secret;
use crate::sim::{FaultConfig, GenerateSpec, SimConfig, Simulator, DEFAULT_DISTRICT};

/// Options of `cpsync sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Loopback address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Seed of every random choice (faults, generated data).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// API key of the default district. Prefer CPSYNC_SIM_API_KEY or
    /// --api-key-file: a key here is visible in the process list.
    #[arg(long, env = "CPSYNC_SIM_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub api_key: Option<Secret>,
    /// File of API keys, one per line: `district:key`, or a bare key for
    /// the default district. Lines starting with `#` are ignored.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Load state from this file at start (if it exists), save it on exit.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Generate this many fees in the default district at start.
    #[arg(long, default_value_t = 0)]
    pub generate_fees: u32,
    /// Generate this many transactions on them at start.
    #[arg(long, default_value_t = 0)]
    pub generate_transactions: u32,
    /// Generate this many unmanaged fees at start.
    #[arg(long, default_value_t = 0)]
    pub generate_unmanaged: u32,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault injection from the start (also settable with `PUT /_sim/faults`).
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Latency added to every vendor API request, in ms.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability of a latency spike per request.
    #[arg(long, default_value_t = 0.0)]
    pub latency_spike_rate: f64,
    /// Length of a latency spike, in ms.
    #[arg(long, default_value_t = 1000)]
    pub latency_spike_ms: u64,
    /// Probability of a 500/502/503 answer per request.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability that a request starts a burst of 429 answers.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_burst_rate: f64,
    /// Requests refused with 429 in one burst.
    #[arg(long, default_value_t = 3)]
    pub rate_limit_burst_len: u32,
    /// `Retry-After` seconds sent with a 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Probability of closing the connection without answering.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Probability that a transaction page carries duplicates.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Probability that a transaction page is shuffled.
    #[arg(long, default_value_t = 0.0)]
    pub reorder_rate: f64,
    /// Probability that a fee upsert is answered as applied but not applied.
    #[arg(long, default_value_t = 0.0)]
    pub lost_write_rate: f64,
}

impl FaultArgs {
    pub fn to_config(&self) -> FaultConfig {
        FaultConfig {
            latency_ms: self.latency_ms,
            latency_spike_rate: self.latency_spike_rate,
            latency_spike_ms: self.latency_spike_ms,
            error_5xx_rate: self.error_rate,
            rate_limit_burst_rate: self.rate_limit_burst_rate,
            rate_limit_burst_len: self.rate_limit_burst_len,
            retry_after_secs: self.retry_after_secs,
            drop_rate: self.drop_rate,
            duplicate_rate: self.duplicate_rate,
            reorder_rate: self.reorder_rate,
            lost_write_rate: self.lost_write_rate,
        }
    }
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    if text.trim().is_empty() {
        return Err("the API key is empty".to_string());
    }
    Ok(Secret::new(text.trim()))
}

/// Parses an API key file: `district:key` or a bare key per line.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<(String, Secret)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read API key file {}", path.display()))?;
    let keys: Vec<(String, Secret)> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| match line.split_once(':') {
            Some((district, key)) => (district.trim().to_string(), Secret::new(key.trim())),
            None => (DEFAULT_DISTRICT.to_string(), Secret::new(line)),
        })
        .collect();
    if keys.is_empty() {
        anyhow::bail!("API key file {} holds no key", path.display());
    }
    Ok(keys)
}

/// Whether `--api-key` itself (not the environment variable clap also
/// reads into it) is on this process's command line.
fn api_key_on_command_line() -> bool {
    std::env::args().any(|arg| arg == "--api-key" || arg.starts_with("--api-key="))
}

fn config(args: &SimArgs) -> anyhow::Result<SimConfig> {
    if args.api_key.is_some() && api_key_on_command_line() {
        super::warn_password_on_command_line(
            "sim --api-key gives an API key",
            "CPSYNC_SIM_API_KEY or --api-key-file",
        );
    }
    let mut districts = Vec::new();
    if let Some(key) = &args.api_key {
        districts.push((DEFAULT_DISTRICT.to_string(), key.clone()));
    }
    if let Some(path) = &args.api_key_file {
        districts.extend(read_key_file(path)?);
    }
    if districts.is_empty() {
        anyhow::bail!("give an API key: --api-key, CPSYNC_SIM_API_KEY or --api-key-file");
    }
    Ok(SimConfig {
        listen: args.listen,
        seed: args.seed,
        districts,
        faults: args.faults.to_config(),
        state_file: args.state_file.clone(),
    })
}

/// Runs the simulator until SIGTERM or Ctrl-C.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let handle = Simulator::start(config(&args)?)?;
    if args.generate_fees > 0 || args.generate_unmanaged > 0 {
        let spec = GenerateSpec {
            fees: args.generate_fees,
            transactions: args.generate_transactions,
            unmanaged_fees: args.generate_unmanaged,
            students: None,
            first_fee_id: 1,
            seed: None,
        };
        let report = handle.admin()?.generate(&spec)?;
        eprintln!(
            "generated {} fees, {} transactions, {} unmanaged fees",
            report.fees, report.transactions, report.unmanaged_fees
        );
    }
    eprintln!("cpsync sim listening on {}", handle.base_url());
    wait_for_signal()?;
    eprintln!("cpsync sim stopping");
    handle.shutdown()
}

fn wait_for_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                result = tokio::signal::ctrl_c() => result,
                _ = terminate.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# keys\nbarekey123\nnorth:k_north_1\n\n").unwrap();
        let keys = read_key_file(&path).unwrap();
        assert_eq!(keys[0].0, DEFAULT_DISTRICT);
        assert_eq!(keys[1].0, "north");
        assert_eq!(keys[1].1.expose(), "k_north_1");
        assert!(!format!("{keys:?}").contains("k_north_1"));
    }
}
