//! Standard output the way a Unix tool writes it: `out!` is `println!`
//! that never panics. A closed pipe (`cpsync runs --json | head -1`) ends
//! the output quietly — later lines are dropped, the command finishes its
//! work and records its run, and exits with its normal code. Any other
//! write error (a full disk behind a redirect) is remembered and turns a
//! successful exit into a failure naming it (`cli::main`).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set once the reader of standard output has gone away.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set while the demo plays its nights: each command's own lines are left
/// out and the demo prints one line per night.
static MUTED: AtomicBool = AtomicBool::new(false);
/// The first write error other than a closed pipe.
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// `println!` for command output; see the module doc.
macro_rules! out {
    () => {
        $crate::cli::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to standard output; never panics.
pub fn write_line(line: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) || MUTED.load(Ordering::Relaxed) {
        return;
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let written = lock
        .write_fmt(line)
        .and_then(|()| lock.write_all(b"\n"))
        .and_then(|()| lock.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
        }
        Err(error) => {
            CLOSED.store(true, Ordering::Relaxed);
            let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
            failed.get_or_insert_with(|| error.to_string());
        }
    }
}

/// Runs `work` with command output left out (errors still go to stderr).
pub fn muted<T>(work: impl FnOnce() -> T) -> T {
    MUTED.store(true, Ordering::Relaxed);
    let result = work();
    MUTED.store(false, Ordering::Relaxed);
    result
}

/// The first write error that was not a closed pipe, if any.
pub fn write_failure() -> Option<String> {
    FAILED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
