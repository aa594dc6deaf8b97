//! The engine as real processes: every `cpsync` run of a scenario is a
//! child with its output in a file and a hard timeout. A kill is planned by
//! count, never by the clock: the child SIGKILLs itself after its n-th
//! operation (`CPSYNC_KILL_AFTER_OPERATIONS`) or aborts after its k-th
//! write (`CPSYNC_CRASH_AFTER_WRITES`); `watch` is stopped with SIGTERM when
//! a condition the driver names holds. Every start and end goes to the
//! scenario's trace. Nothing waits unbounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cpsync::failpoint::{CRASH_AFTER_WRITES_ENV, KILL_AFTER_OPERATIONS_ENV};

use crate::trace::Trace;

/// The longest any one engine process may run before it counts as hung.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a running child is polled.
const POLL: Duration = Duration::from_millis(5);

/// A kill planned for one engine process, by count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// Runs to its end.
    Nothing,
    /// SIGKILLs itself after its n-th operation (if it gets that far).
    KillAfterOperations(u64),
    /// Aborts after its k-th write that matters (if it gets that far).
    CrashAfterWrites(u64),
}

impl Planned {
    fn describe(self) -> String {
        match self {
            Planned::Nothing => String::new(),
            Planned::KillAfterOperations(n) => format!(" [kill after operation {n}]"),
            Planned::CrashAfterWrites(k) => format!(" [abort after write {k}]"),
        }
    }

    fn env(self) -> Option<(&'static str, String)> {
        match self {
            Planned::Nothing => None,
            Planned::KillAfterOperations(n) => Some((KILL_AFTER_OPERATIONS_ENV, n.to_string())),
            Planned::CrashAfterWrites(k) => Some((CRASH_AFTER_WRITES_ENV, k.to_string())),
        }
    }
}

/// How an engine process ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub label: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// It SIGKILLed itself at its planned operation.
    pub killed: bool,
    /// The driver stopped it with SIGTERM.
    pub terminated: bool,
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

    /// How it ended, for the trace: no times, pids or output.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            _ if self.hung => "hung, killed by the driver".to_string(),
            (Some(code), _) => format!("exit {code}"),
            (None, Some(9)) if self.killed => "killed itself at its planned operation".to_string(),
            (None, Some(6)) => "aborted (SIGABRT)".to_string(),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "ended without a code or signal".to_string(),
        };
        if self.terminated {
            format!("{how} after SIGTERM")
        } else {
            how
        }
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
    /// The scenario's event trace.
    pub trace: Trace,
}

/// A started engine process.
pub struct Running<'e> {
    child: Child,
    number: u32,
    label: String,
    planned: Planned,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    trace: &'e Trace,
}

impl Engine {
    pub fn new(
        bin: &Path,
        globals: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: PathBuf,
        scenario_dir: &Path,
    ) -> Engine {
        Engine {
            bin: bin.to_path_buf(),
            globals,
            env,
            log_dir,
            runs: AtomicU32::new(0),
            trace: Trace::new(scenario_dir),
        }
    }

    /// The same engine on another database, its logs in `log_dir`.
    pub fn on_database(&self, url: &str, log_dir: PathBuf, scenario_dir: &Path) -> Engine {
        let mut globals = self.globals.clone();
        if let Some(at) = globals.iter().position(|g| g == "--database-url") {
            if let Some(value) = globals.get_mut(at + 1) {
                *value = url.to_string();
            }
        }
        Engine::new(&self.bin, globals, self.env.clone(), log_dir, scenario_dir)
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

    /// Starts `cpsync GLOBALS ARGS` with its planned kill.
    pub fn spawn(&self, args: &[&str], planned: Planned) -> anyhow::Result<Running<'_>> {
        let number = self.runs.fetch_add(1, Ordering::SeqCst);
        let label = format!("{number:03} cpsync {}", args.join(" "));
        let stem = format!("{number:03}-{}", args.first().copied().unwrap_or("none"));
        let out = self.log_dir.join(format!("{stem}.out"));
        let err = self.log_dir.join(format!("{stem}.err"));
        let mut command = self.command(args);
        command
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        if let Some((name, value)) = planned.env() {
            command.env(name, value);
        }
        self.trace.event(format!(
            "run {number:03}: cpsync {}{}",
            args.join(" "),
            planned.describe()
        ));
        let child = command.spawn()?;
        Ok(Running {
            child,
            number,
            label,
            planned,
            out,
            err,
            started: Instant::now(),
            trace: &self.trace,
        })
    }

    /// Runs to the end (bounded by `CHILD_TIMEOUT`).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Ended> {
        self.spawn(args, Planned::Nothing)?.wait()
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
        self.trace.event(format!(
            "run {number:03}: cpsync {} | (closed)",
            args.join(" ")
        ));
        let mut child = command.spawn()?;
        drop(child.stdout.take()); // the reader is gone
        Running {
            child,
            number,
            label,
            planned: Planned::Nothing,
            started: Instant::now(),
            out: self.log_dir.join(format!("{number:03}-closed-pipe.out")),
            err,
            trace: &self.trace,
        }
        .wait()
    }
}

impl Running<'_> {
    /// Waits for the end.
    pub fn wait(self) -> anyhow::Result<Ended> {
        self.wait_or_terminate("", || false)
    }

    /// Waits for the end; once the process has said `ready` on standard
    /// error (its SIGTERM handler is installed), sends SIGTERM as soon as
    /// `done` says the driver's reason to keep it running is gone (asked at
    /// every poll).
    pub fn wait_or_terminate(
        mut self,
        ready: &str,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<Ended> {
        let mut terminated = false;
        let mut hung = false;
        let mut is_ready = ready.is_empty();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if !is_ready {
                is_ready = std::fs::read_to_string(&self.err).is_ok_and(|e| e.contains(ready));
            }
            if !terminated && is_ready && done() {
                let sent = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status()?;
                anyhow::ensure!(sent.success(), "could not send SIGTERM to {}", self.label);
                terminated = true;
            } else if self.started.elapsed() >= CHILD_TIMEOUT && !hung {
                self.child.kill()?;
                hung = true;
            }
            std::thread::sleep(POLL);
        };
        use std::os::unix::process::ExitStatusExt;
        let killed = !hung
            && matches!(self.planned, Planned::KillAfterOperations(_))
            && status.signal() == Some(9);
        let ended = Ended {
            label: self.label,
            code: status.code(),
            signal: status.signal(),
            killed,
            terminated,
            hung,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        };
        self.trace
            .event(format!("end {:03}: {}", self.number, ended.describe()));
        Ok(ended)
    }
}
