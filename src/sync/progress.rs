//! Progress of long work as log records of their own (target
//! `cpsync::progress`): a line when a phase ends, and for work counted in
//! items a line at most every `PROGRESS_EVERY` with done, total, rate and
//! what is left. The CLI shows them to a person at a terminal by default
//! and to a log (journald) with `-v`, so a first `send-fees` of 450,000
//! fees or a long nightly is never silent.

use std::time::{Duration, Instant};

use crate::money::group_thousands;

/// The log target of progress records.
pub const TARGET: &str = "cpsync::progress";
/// The most often a counted piece of work reports.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Counts one piece of work and reports it now and then.
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_report: Instant,
    reported: bool,
}

impl Progress {
    /// `what` names the items ("fees pushed"); `total` if known.
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            started: now,
            last_report: now,
            reported: false,
        }
    }

    /// `items` more are done; reports if `PROGRESS_EVERY` has passed.
    pub fn advance(&mut self, items: u64) {
        self.done += items;
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.report();
        }
    }

    /// The closing line of work long enough to have reported on the way
    /// (short work, such as one `watch` pass, stays quiet).
    pub fn finish(&mut self) {
        if self.reported {
            self.report();
        }
    }

    /// Reports where the work stands now.
    pub fn report(&mut self) {
        self.last_report = Instant::now();
        self.reported = true;
        let line = describe(self.what, self.done, self.total, self.started.elapsed());
        tracing::info!(target: TARGET, "{line}");
    }
}

/// Records that a phase of a run ended, and how long it took.
pub fn phase_done(run: &str, phase: &str, took: Duration) {
    tracing::info!(
        target: TARGET,
        run,
        phase,
        ms = took.as_millis() as u64,
        "{run}: {phase} done in {:.1}s",
        took.as_secs_f64()
    );
}

/// "12,000 of 40,513 fees pushed (29%), 2,400/s, about 12 s left".
fn describe(what: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate_text = format!("{}/s", group_thousands(rate.round() as u64));
    match total {
        Some(total) if total > 0 => {
            let percent = (done.min(total) * 100) / total;
            let left = total.saturating_sub(done);
            let eta = if rate > 0.0 && left > 0 {
                format!(", about {} s left", (left as f64 / rate).ceil() as u64)
            } else {
                String::new()
            };
            format!(
                "{} of {} {what} ({percent}%), {rate_text}{eta}",
                group_thousands(done),
                group_thousands(total)
            )
        }
        _ => format!("{} {what}, {rate_text}", group_thousands(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_done_total_rate_and_time_left() {
        assert_eq!(
            describe("fees pushed", 12_000, Some(40_513), Duration::from_secs(5)),
            "12,000 of 40,513 fees pushed (29%), 2,400/s, about 12 s left"
        );
        assert_eq!(
            describe("fees pushed", 40_513, Some(40_513), Duration::from_secs(10)),
            "40,513 of 40,513 fees pushed (100%), 4,051/s"
        );
        assert_eq!(
            describe("transactions pulled", 1_500, None, Duration::from_secs(3)),
            "1,500 transactions pulled, 500/s"
        );
        assert_eq!(
            describe("fees pushed", 0, Some(0), Duration::ZERO),
            "0 fees pushed, 0/s"
        );
    }
}
