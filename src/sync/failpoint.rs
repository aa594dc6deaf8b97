//! Crash points for the crash tests and the chaos campaign: with
//! `CPSYNC_CRASH_AFTER_WRITES=k`, the process aborts right after its k-th
//! write that matters (each counted by `wrote`): the vendor upserts sent
//! and not yet recorded in their links, each batch the nightly applies, and
//! the discrepancies, queue and mark it records. Compiled in only for debug
//! builds and the `failpoints` feature (`scripts/chaos` builds its release
//! binary with it): a district's release build never reads the variable.

/// The environment variable naming the write to abort after.
pub const CRASH_AFTER_WRITES_ENV: &str = "CPSYNC_CRASH_AFTER_WRITES";

/// Whether this build has crash points at all.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "failpoints"));

#[cfg(any(debug_assertions, feature = "failpoints"))]
mod counting {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static WRITES: AtomicU64 = AtomicU64::new(0);

    fn abort_after() -> Option<u64> {
        static AFTER: OnceLock<Option<u64>> = OnceLock::new();
        *AFTER.get_or_init(|| {
            std::env::var(super::CRASH_AFTER_WRITES_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
        })
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
}

/// Counts one write that matters; aborts the process when it is the one
/// `CPSYNC_CRASH_AFTER_WRITES` names (in builds with crash points).
#[inline]
pub fn wrote(what: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    counting::wrote(what);
    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    let _ = what;
}
