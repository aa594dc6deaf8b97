//! Who owns a lock row or a running run: this host's name and process id,
//! and what a recorded (host, pid) is now — this process, a live cpsync,
//! gone, reused (a process started after the record was written), a live
//! process that is not cpsync, or a process on another host that this one
//! cannot see. Linux `/proc` only; elsewhere a pid counts as alive, so
//! nothing is ever taken over wrongly.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

/// The longest host name kept (Linux allows 64 bytes).
const HOST_CHARS_MAX: usize = 255;
/// How much later than a record a process may have started and still be
/// the one that wrote it (the boot time `/proc` gives is whole seconds).
const START_SLACK_SECS: i64 = 2;
/// Clock ticks per second in `/proc/PID/stat` (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// This machine's host name, as recorded in lock rows and runs.
pub fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        return "localhost".to_string();
    }
    host.chars().take(HOST_CHARS_MAX).collect()
}

/// This process's id.
pub fn own_pid() -> i64 {
    i64::from(std::process::id())
}

/// What a recorded owner (host, pid) is now, as seen from this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The recorded owner is this very process.
    ThisProcess,
    /// A live cpsync process on this host.
    Cpsync { command: String },
    /// No process with that pid runs on this host.
    Gone,
    /// A process with that pid runs, but it started after the record was
    /// written: the pid was reused and the writer is gone.
    Reused { command: String },
    /// A live process on this host, older than the record, that is not
    /// the cpsync binary (a program embedding cpsync, or a reused pid whose
    /// start could not be read).
    NotCpsync { command: String },
    /// Recorded by another host (or container): this one cannot tell.
    OtherHost { host: String },
}

impl Liveness {
    /// Whether the owner is demonstrably alive on this host.
    pub fn alive_here(&self) -> bool {
        matches!(self, Liveness::ThisProcess | Liveness::Cpsync { .. })
    }

    /// Whether the owner is demonstrably gone (its pid is free or reused).
    pub fn gone(&self) -> bool {
        matches!(self, Liveness::Gone | Liveness::Reused { .. })
    }

    /// A stable word for JSON and tests.
    pub fn as_str(&self) -> &'static str {
        match self {
            Liveness::ThisProcess => "this_process",
            Liveness::Cpsync { .. } => "running",
            Liveness::Gone => "gone",
            Liveness::Reused { .. } => "pid_reused",
            Liveness::NotCpsync { .. } => "pid_not_cpsync",
            Liveness::OtherHost { .. } => "other_host",
        }
    }

    /// What was found, in words, for messages.
    pub fn describe(&self, pid: i64) -> String {
        match self {
            Liveness::ThisProcess => format!("process {pid} is this very process"),
            Liveness::Cpsync { command } => format!("process {pid} ({command}) is running"),
            Liveness::Gone => format!("process {pid} no longer runs on this host"),
            Liveness::Reused { command } => format!(
                "process {pid} is now {command:?}, started after the record was written (the pid was reused)"
            ),
            Liveness::NotCpsync { command } => format!(
                "process {pid} is alive but is {command:?}, not cpsync (a program embedding cpsync, or a reused pid)"
            ),
            Liveness::OtherHost { host } => format!(
                "recorded by host {host:?}, not this one ({}): whether process {pid} still runs there cannot be checked from here",
                host_name()
            ),
        }
    }
}

/// What the recorded owner `host`/`pid`, which wrote its record at
/// `recorded_at` (UTC), is now.
pub fn liveness(host: &str, pid: i64, recorded_at: NaiveDateTime) -> Liveness {
    if host != host_name() {
        return Liveness::OtherHost {
            host: host.to_string(),
        };
    }
    if pid == own_pid() {
        return Liveness::ThisProcess;
    }
    if !cfg!(target_os = "linux") {
        // No /proc to look at: assume alive, never take over wrongly.
        return Liveness::Cpsync {
            command: "unknown".to_string(),
        };
    }
    let Ok(pid) = u32::try_from(pid) else {
        return Liveness::Gone;
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if pid == 0 || !proc_dir.exists() {
        return Liveness::Gone;
    }
    let command = std::fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let started = process_started_at(&proc_dir);
    if started.is_some_and(|s| s > recorded_at + chrono::Duration::seconds(START_SLACK_SECS)) {
        return Liveness::Reused { command };
    }
    if is_cpsync(&proc_dir, &command) {
        Liveness::Cpsync { command }
    } else if command.is_empty() {
        // A zombie or a process being torn down: nothing left to wait for.
        Liveness::Gone
    } else {
        Liveness::NotCpsync { command }
    }
}

/// When the process in `proc_dir` started (UTC), from its start time in
/// clock ticks after boot and the boot time in `/proc/stat`.
fn process_started_at(proc_dir: &Path) -> Option<NaiveDateTime> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its last ')'. starttime is field 22, the 20th after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot_secs: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let millis = i64::try_from(ticks.checked_mul(1000)? / USER_HZ).ok()?;
    let started =
        chrono::DateTime::from_timestamp(boot_secs, 0)? + chrono::Duration::milliseconds(millis);
    Some(started.naive_utc())
}

/// Whether the process in `proc_dir` is cpsync: its command name or its
/// executable's file name starts with `cpsync`, or it runs the same
/// executable as this process (a test binary holding a lock).
fn is_cpsync(proc_dir: &Path, command: &str) -> bool {
    if command.starts_with("cpsync") {
        return true;
    }
    let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) else {
        return false;
    };
    let name_is_cpsync = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("cpsync"));
    name_is_cpsync || std::env::current_exe().is_ok_and(|own| own == exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_other_hosts_are_told_apart() {
        let now = chrono::Utc::now().naive_utc();
        assert_eq!(
            liveness(&host_name(), own_pid(), now),
            Liveness::ThisProcess
        );
        assert!(matches!(
            liveness("elsewhere.example", own_pid(), now),
            Liveness::OtherHost { .. }
        ));
        assert_eq!(
            liveness(&host_name(), i64::from(u32::MAX), now),
            Liveness::Gone
        );
        assert_eq!(liveness(&host_name(), -5, now), Liveness::Gone);
    }

    #[test]
    fn a_live_process_that_is_not_cpsync_is_named_and_a_reused_pid_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let pid = i64::from(child.id());
        let later = chrono::Utc::now().naive_utc() + chrono::Duration::seconds(30);
        let long_ago = chrono::Utc::now().naive_utc() - chrono::Duration::hours(1);
        let older_record = liveness(&host_name(), pid, later);
        let newer_process = liveness(&host_name(), pid, long_ago);
        child.kill().expect("kill sleep");
        let _ = child.wait();
        let sleep = "sleep".to_string();
        assert_eq!(
            older_record,
            Liveness::NotCpsync {
                command: sleep.clone()
            }
        );
        assert_eq!(newer_process, Liveness::Reused { command: sleep });
    }
}
