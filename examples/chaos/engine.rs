//! The engine as real processes: every `cpsync` run of a scenario is a
//! child with its output in a file, a hard timeout, and optionally a
//! SIGKILL after a chosen delay. Nothing waits unbounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest any one engine process may run before it counts as hung.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a running child is polled.
const POLL: Duration = Duration::from_millis(5);

/// How an engine process ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub label: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The driver killed it while it was still running.
    pub killed: bool,
    /// It ran past `CHILD_TIMEOUT` and was killed.
    pub hung: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ended {
    /// Exit 101 is a Rust panic; a signal the driver did not send is a crash.
    pub fn crashed(&self, abort_expected: bool) -> Option<String> {
        if self.hung {
            return Some(format!(
                "{} hung (killed after {CHILD_TIMEOUT:?})",
                self.label
            ));
        }
        if self.code == Some(101) || self.stderr.contains("panicked at") {
            return Some(format!("{} panicked: {}", self.label, tail(&self.stderr)));
        }
        match self.signal {
            Some(9) if self.killed => None,
            Some(6) if abort_expected => None,
            Some(signal) => Some(format!("{} died of signal {signal}", self.label)),
            None => None,
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.code, Some(0) | Some(3))
    }
}

/// The last line of some output, for messages.
pub fn tail(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(400)
        .collect()
}

/// How to run `cpsync` for one scenario.
pub struct Engine {
    bin: PathBuf,
    globals: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    runs: AtomicU32,
}

/// A started engine process.
pub struct Running {
    child: Child,
    label: String,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

impl Engine {
    pub fn new(
        bin: &Path,
        globals: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: PathBuf,
    ) -> Engine {
        Engine {
            bin: bin.to_path_buf(),
            globals,
            env,
            log_dir,
            runs: AtomicU32::new(0),
        }
    }

    pub fn runs(&self) -> u64 {
        u64::from(self.runs.load(Ordering::SeqCst))
    }

    /// `cpsync GLOBALS ARGS` with the scenario's environment and nothing
    /// inherited that could point it elsewhere; stdin closed.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(&self.globals)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("CPSYNC_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts `cpsync GLOBALS ARGS` with extra environment variables.
    pub fn spawn(&self, args: &[&str], extra_env: &[(&str, String)]) -> anyhow::Result<Running> {
        let number = self.runs.fetch_add(1, Ordering::SeqCst);
        let label = format!("{number:03} cpsync {}", args.join(" "));
        let stem = format!("{number:03}-{}", args.first().copied().unwrap_or("none"));
        let out = self.log_dir.join(format!("{stem}.out"));
        let err = self.log_dir.join(format!("{stem}.err"));
        let mut command = self.command(args);
        command
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let child = command.spawn()?;
        Ok(Running {
            child,
            label,
            out,
            err,
            started: Instant::now(),
        })
    }

    /// Runs to the end (bounded by `CHILD_TIMEOUT`).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Ended> {
        self.spawn(args, &[])?.wait(None)
    }

    /// Runs `cpsync GLOBALS ARGS` whose reader of standard output has gone
    /// away before it writes (`cpsync runs --json | head -0`): the writes
    /// meet a closed pipe. Its stdout is not kept.
    pub fn run_with_closed_stdout(&self, args: &[&str]) -> anyhow::Result<Ended> {
        let number = self.runs.fetch_add(1, Ordering::SeqCst);
        let label = format!("{number:03} cpsync {} | (closed)", args.join(" "));
        let err = self.log_dir.join(format!("{number:03}-closed-pipe.err"));
        let mut command = self.command(args);
        command.stdout(Stdio::piped()).stderr(File::create(&err)?);
        let mut child = command.spawn()?;
        drop(child.stdout.take()); // the reader is gone
        Running {
            child,
            label,
            started: Instant::now(),
            out: self.log_dir.join(format!("{number:03}-closed-pipe.out")),
            err,
        }
        .wait(None)
    }
}

impl Running {
    /// Waits for the end; with `kill_after`, SIGKILLs it at that age if it
    /// is still running then.
    pub fn wait(mut self, kill_after: Option<Duration>) -> anyhow::Result<Ended> {
        let mut killed = false;
        let mut hung = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            let age = self.started.elapsed();
            if kill_after.is_some_and(|limit| age >= limit) && !killed {
                self.child.kill()?;
                killed = true;
            } else if age >= CHILD_TIMEOUT && !hung {
                self.child.kill()?;
                hung = true;
            }
            std::thread::sleep(POLL);
        };
        use std::os::unix::process::ExitStatusExt;
        Ok(Ended {
            label: self.label,
            code: status.code(),
            signal: status.signal(),
            killed: killed && status.signal() == Some(9),
            hung,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        })
    }
}
