//! The Community Pass simulator: a real HTTP server on loopback that
//! implements `api/community-pass.openapi.yaml` over in-memory state, with a
//! seeded fault injector and an admin surface under `/_sim` (documented in
//! `api/simulator-admin.openapi.yaml`). Tests and the demo start it
//! in-process with `Simulator::start`; `cpsync sim` runs it standalone.
//!
//! Why hyper on tokio: reqwest already brings both, hyper lets a handler
//! close a connection without answering (the dropped-connection fault), and
//! handlers run on the blocking pool so a 1,000-record page never stalls
//! the accept loop.

pub mod admin;
pub mod faults;
pub mod generate;
pub mod model;
pub mod server;
pub mod state;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

pub use admin::AdminClient;
pub use model::{ActionOutcome, FaultConfig, GenerateSpec, ParentAction, SimStats};

use crate::secret::Secret;
use faults::FaultInjector;
use server::{lock, Shared};
use state::District;

/// The district a single `--api-key` belongs to.
pub const DEFAULT_DISTRICT: &str = "default";
/// Async worker threads of the server (handlers run on the blocking pool).
const WORKER_THREADS: usize = 2;
/// How long shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How to start a simulator. `Debug` shows keys redacted.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Must be a loopback address; port 0 picks a free port.
    pub listen: SocketAddr,
    pub seed: u64,
    /// District name and its API key; at least one.
    pub districts: Vec<(String, Secret)>,
    pub faults: FaultConfig,
    /// Loaded at start if it exists; written on shutdown and `POST /_sim/save`.
    pub state_file: Option<PathBuf>,
}

impl SimConfig {
    /// One district (`DEFAULT_DISTRICT`) with this key, on a free loopback port.
    pub fn new(api_key: Secret) -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 0,
            districts: vec![(DEFAULT_DISTRICT.to_string(), api_key)],
            faults: FaultConfig::default(),
            state_file: None,
        }
    }
}

/// The simulator, started.
pub struct Simulator;

/// A running simulator; dropping it stops the server.
pub struct SimHandle {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds, loads the state file if any, and serves on a background thread.
    pub fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        check_config(&config)?;
        let shared = Arc::new(shared_state(&config)?);
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cpsync-sim".to_string())
            .spawn(move || run_server(listener, serving, stopped))?;
        Ok(SimHandle {
            address,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn check_config(config: &SimConfig) -> anyhow::Result<()> {
    if !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "the simulator listens on loopback only (its admin surface has no authentication), not {}",
            config.listen
        );
    }
    if config.districts.is_empty() || config.districts.iter().any(|(_, key)| key.is_empty()) {
        anyhow::bail!("the simulator needs at least one district with a non-empty API key");
    }
    config.faults.validate().map_err(anyhow::Error::msg)
}

fn shared_state(config: &SimConfig) -> anyhow::Result<Shared> {
    let mut districts: BTreeMap<String, District> = BTreeMap::new();
    if let Some(path) = config.state_file.as_ref().filter(|p| p.exists()) {
        let snapshot = server::load_snapshot(path)
            .with_context(|| format!("cannot load simulator state {}", path.display()))?;
        for (name, district) in snapshot.districts {
            districts.insert(name, District::from_snapshot(district));
        }
    }
    for (name, _) in &config.districts {
        districts.entry(name.clone()).or_default();
    }
    Ok(Shared {
        seed: config.seed,
        initial_faults: config.faults.clone(),
        districts: Mutex::new(districts),
        keys: Mutex::new(config.districts.clone()),
        faults: Mutex::new(FaultInjector::new(config.faults.clone(), config.seed)),
        state_file: config.state_file.clone(),
        clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
    })
}

fn run_server(listener: TcpListener, shared: Arc<Shared>, stopped: watch::Receiver<bool>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("cpsync-sim-io")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "simulator runtime failed to start");
            return;
        }
    };
    if let Err(error) = runtime.block_on(accept_loop(listener, shared, stopped)) {
        tracing::error!(%error, "simulator stopped on an error");
    }
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        tokio::select! {
            _ = stopped.changed() => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| server::handle(Arc::clone(&shared), request));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, "connection ended");
    }
}

impl SimHandle {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// e.g. `http://127.0.0.1:40123`, the base URL for `HttpPortal`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A typed admin client bound to `DEFAULT_DISTRICT`.
    pub fn admin(&self) -> anyhow::Result<AdminClient> {
        AdminClient::new(&self.base_url())
    }

    /// Statistics without an HTTP call.
    pub fn stats(&self) -> SimStats {
        lock(&self.shared.faults).stats.clone()
    }

    /// Stops serving and writes the state file if one is configured.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_server();
        if self.shared.state_file.is_some() {
            self.shared.save()?;
        }
        Ok(())
    }

    fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_server();
    }
}
