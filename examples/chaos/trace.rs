//! The event trace of one scenario: every engine invocation (its arguments
//! and planned kill point), every fault setting, drift, office and parent
//! action the driver injected, how each process ended (exit code, killed
//! after operation n, aborted after write k, SIGTERM), and the final checks'
//! figures. Stable text — no clock readings, pids or temporary paths (the
//! scenario folder is written `<scenario>`) — so two runs of one seed with
//! serial rounds give byte-identical traces, and a difference points at the
//! first event where a replay went another way. Written to `trace.txt` in
//! the scenario's folder and, with `--trace FILE`, to FILE for the whole
//! campaign in seed order.

use std::path::Path;
use std::sync::Mutex;

/// The events of one scenario, in the order the driver saw them.
#[derive(Debug, Default)]
pub struct Trace {
    lines: Mutex<Vec<String>>,
    /// The scenario's folder, replaced by `<scenario>` in every event.
    dir: String,
}

impl Trace {
    pub fn new(dir: &Path) -> Trace {
        Trace {
            lines: Mutex::new(Vec::new()),
            dir: dir.display().to_string(),
        }
    }

    /// Records one event (one line; the scenario folder made relative).
    pub fn event(&self, text: impl AsRef<str>) {
        let mut line = text.as_ref().replace('\n', " ");
        if !self.dir.is_empty() {
            line = line.replace(&self.dir, "<scenario>");
        }
        self.lines.lock().expect("trace lock").push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("trace lock").clone()
    }
}

/// Writes trace lines to `path`, one per line.
pub fn write(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text)?;
    Ok(())
}
