//! Crash points for the crash tests and the chaos campaign, compiled in only
//! for debug builds and the `failpoints` feature (`scripts/chaos` builds its
//! release binary with it): a district's release build never reads the
//! variables below, and every function here is then empty.
//!
//! Two kinds, both counted by deterministic events rather than the clock, so
//! a seeded chaos scenario replays exactly:
//!
//! - `CPSYNC_CRASH_AFTER_WRITES=k` aborts (SIGABRT) right after the k-th
//!   write that matters (each counted by `wrote`): the vendor upserts sent
//!   and not yet recorded in their links, each batch the nightly applies,
//!   and the discrepancies, queue and mark it records.
//! - `CPSYNC_KILL_AFTER_OPERATIONS=n` SIGKILLs the process right after its
//!   n-th operation (each counted by `operation`): a Community Pass call
//!   (with its retries) has returned, or one of the engine's write
//!   transactions has committed (a run started or finished, push intents or
//!   outcomes recorded, outbox entries completed, payments posted, vendor
//!   ids adopted, and every write `wrote` counts). It stands in for the
//!   wall-clock SIGKILL the campaign used to send, at a point a seed names.
//!
//! Only operations on the process's main thread count. The pushes sent
//! several at a time and the Community Pass reads done while the database is
//! read run on other threads in an order the scheduler picks; counting them
//! would make the n-th operation a different one from run to run. The main
//! thread waits for those threads, and its next counted operation (the
//! outcomes recorded, the nightly's next write) comes after all of them.

/// The environment variable naming the write to abort after.
pub const CRASH_AFTER_WRITES_ENV: &str = "CPSYNC_CRASH_AFTER_WRITES";
/// The environment variable naming the operation to SIGKILL after.
pub const KILL_AFTER_OPERATIONS_ENV: &str = "CPSYNC_KILL_AFTER_OPERATIONS";

/// Whether this build has crash points at all.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "failpoints"));

#[cfg(any(debug_assertions, feature = "failpoints"))]
mod counting {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static WRITES: AtomicU64 = AtomicU64::new(0);
    static OPERATIONS: AtomicU64 = AtomicU64::new(0);

    fn env_number(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    fn abort_after() -> Option<u64> {
        static AFTER: OnceLock<Option<u64>> = OnceLock::new();
        *AFTER.get_or_init(|| env_number(super::CRASH_AFTER_WRITES_ENV))
    }

    fn kill_after() -> Option<u64> {
        static AFTER: OnceLock<Option<u64>> = OnceLock::new();
        *AFTER.get_or_init(|| env_number(super::KILL_AFTER_OPERATIONS_ENV))
    }

    pub fn wrote(what: &str) {
        let Some(after) = abort_after() else {
            return;
        };
        let count = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
        if count == after {
            eprintln!(
                "cpsync: aborting after write {count} ({what}; {})",
                super::CRASH_AFTER_WRITES_ENV
            );
            std::process::abort();
        }
    }

    pub fn operation(what: &str) {
        let Some(after) = kill_after() else {
            return;
        };
        if std::thread::current().name() != Some("main") {
            return;
        }
        let count = OPERATIONS.fetch_add(1, Ordering::SeqCst) + 1;
        if count == after {
            eprintln!(
                "cpsync: killed after operation {count} ({what}; {})",
                super::KILL_AFTER_OPERATIONS_ENV
            );
            // SIGKILL cannot be caught: nothing runs after this line, as
            // when an operator or the OOM killer ends the process.
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
            std::process::abort(); // not reached; a kill that failed still ends here
        }
    }
}

/// Counts one write that matters; aborts the process when it is the one
/// `CPSYNC_CRASH_AFTER_WRITES` names (in builds with crash points).
#[inline]
pub fn wrote(what: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    {
        counting::wrote(what);
        counting::operation(what);
    }
    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    let _ = what;
}

/// Counts one operation done on the main thread; SIGKILLs the process when
/// it is the one `CPSYNC_KILL_AFTER_OPERATIONS` names (in builds with crash
/// points).
#[inline]
pub fn operation(what: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    counting::operation(what);
    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    let _ = what;
}
