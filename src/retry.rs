//! One retry policy for every network peer — Community Pass, the SFTP
//! server, the SMTP server: capped exponential backoff with equal jitter, a
//! most number of retries, a budget for the whole call (every attempt and
//! every wait), a peer's own "retry after" honoured only while it fits in
//! that budget, errors a retry cannot fix never retried, and a budget of
//! waiting shared by every call of one run, so a flaky peer cannot stretch a
//! nightly of 450,000 calls into days. The loop is generic over the error;
//! each client says what is retryable and what an attempt is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

/// The most retries of one call, whatever a policy says.
pub const RETRIES_MAX: u32 = 10;
/// The longest wait a peer may ask for ("Retry-After"); a longer ask fails
/// the call at once.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// The waiting one run may spend between retries, all calls together,
/// unless configured (`[community_pass] retry_wait_budget_secs`).
pub const RUN_WAIT_BUDGET_DEFAULT: Duration = Duration::from_secs(600);

/// How hard a client tries before giving up on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; capped at `RETRIES_MAX`.
    pub retries: u32,
    /// The first backoff; doubled on each retry.
    pub backoff_base: Duration,
    /// The largest backoff between two attempts.
    pub backoff_max: Duration,
    /// The longest wait a peer may ask for (capped at `RETRY_AFTER_MAX`).
    pub retry_after_max: Duration,
    /// The whole call: every attempt and every wait between them.
    pub call_budget: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry):
    /// exponential, capped, half of it fixed and half drawn at random so
    /// many clients failing together do not come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.backoff_max);
        let half = exponential / 2;
        let spread = half.as_millis() as u64;
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=spread))
    }

    fn retries_allowed(&self) -> u32 {
        self.retries.min(RETRIES_MAX)
    }

    fn retry_after_allowed(&self) -> Duration {
        self.retry_after_max.min(RETRY_AFTER_MAX)
    }
}

/// The waiting a whole run may spend between retries, shared by every call
/// of the run (clones share it). Once spent, a failed call is not retried:
/// it fails, and the run's own rules (the outbox, the cursor) leave the work
/// for the next run.
#[derive(Debug, Clone)]
pub struct RunBudget {
    allowed_ms: u64,
    spent_ms: Arc<AtomicU64>,
}

impl RunBudget {
    pub fn new(allowed: Duration) -> RunBudget {
        RunBudget {
            allowed_ms: allowed.as_millis() as u64,
            spent_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The run's whole allowance.
    pub fn allowed(&self) -> Duration {
        Duration::from_millis(self.allowed_ms)
    }

    /// The waiting spent so far.
    pub fn spent(&self) -> Duration {
        Duration::from_millis(self.spent_ms.load(Ordering::Relaxed))
    }

    /// Starts a new run's allowance (a long-lived client, as `watch`'s,
    /// serves one run per pass).
    pub fn renew(&self) {
        self.spent_ms.store(0, Ordering::Relaxed);
    }

    /// Takes `wait` from the budget if it still fits; false when it does not.
    fn take(&self, wait: Duration) -> bool {
        let wait_ms = wait.as_millis() as u64;
        self.spent_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |spent| {
                let after = spent.saturating_add(wait_ms);
                (after <= self.allowed_ms).then_some(after)
            })
            .is_ok()
    }
}

impl Default for RunBudget {
    fn default() -> RunBudget {
        RunBudget::new(RUN_WAIT_BUDGET_DEFAULT)
    }
}

/// How one attempt failed.
#[derive(Debug)]
pub enum Failed<E> {
    /// A retry cannot fix it (a rejected certificate, a refusal, a bad
    /// request): the call ends with it at once.
    Final(E),
    /// A retry may succeed; `after` is the wait the peer asked for, if any.
    Transient { error: E, after: Option<Duration> },
}

/// Why a call with transient failures stopped trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// `retries` retries were made (the policy's, at most `RETRIES_MAX`).
    Retries { retries: u32 },
    /// The peer asked to wait longer than the call may still wait.
    RetryAfterTooLong { asked: Duration, longest: Duration },
    /// The next wait would pass the call's budget.
    CallBudget { budget: Duration },
    /// The run has spent its waiting allowance (`retry_wait_budget_secs`).
    RunBudget { allowed: Duration },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Retries { retries } => {
                write!(f, "retries = {retries} (RETRIES_MAX = {RETRIES_MAX})")
            }
            Exhausted::RetryAfterTooLong { asked, longest } => write!(
                f,
                "Retry-After asks for {}s, more than the {}s this call may still wait \
                 (RETRY_AFTER_MAX = {}s); not retried",
                asked.as_secs(),
                longest.as_secs(),
                RETRY_AFTER_MAX.as_secs()
            ),
            Exhausted::CallBudget { budget } => {
                write!(f, "the call's budget of {}s is spent", budget.as_secs())
            }
            Exhausted::RunBudget { allowed } => write!(
                f,
                "this run has spent its {:.1}s of waiting between retries \
                 (retry_wait_budget_secs); the next run tries again",
                allowed.as_secs_f64()
            ),
        }
    }
}

/// A call that did not succeed.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// An error a retry cannot fix.
    Final(E),
    /// Transient failures until a bound was reached; `last` is the last one.
    Exhausted {
        last: E,
        attempts: u32,
        elapsed: Duration,
        why: Exhausted,
    },
}

/// Runs `attempt` until it succeeds, fails for good, or a bound is reached.
/// `attempt` gets the attempt number (1-based) and the call's deadline, and
/// must not run past it; `on_retry` sees each transient failure and the wait
/// before the next attempt (for logs and counters).
pub fn run<T, E>(
    policy: &RetryPolicy,
    run_budget: &RunBudget,
    mut attempt: impl FnMut(u32, Instant) -> Result<T, Failed<E>>,
    mut on_retry: impl FnMut(&E, u32, Duration),
) -> Result<T, GaveUp<E>> {
    let started = Instant::now();
    let deadline = started + policy.call_budget;
    let mut number = 1;
    loop {
        let (error, asked) = match attempt(number, deadline) {
            Ok(done) => return Ok(done),
            Err(Failed::Final(error)) => return Err(GaveUp::Final(error)),
            Err(Failed::Transient { error, after }) => (error, after),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let why = match next_wait(policy, number - 1, asked, remaining) {
            Ok(wait) if !run_budget.take(wait) => Err(Exhausted::RunBudget {
                allowed: run_budget.allowed(),
            }),
            other => other,
        };
        match why {
            Ok(wait) => {
                on_retry(&error, number, wait);
                std::thread::sleep(wait);
                number += 1;
            }
            Err(why) => {
                return Err(GaveUp::Exhausted {
                    last: error,
                    attempts: number,
                    elapsed: started.elapsed(),
                    why,
                })
            }
        }
    }
}

/// The wait before retry number `retry + 1`, or why there is none.
fn next_wait(
    policy: &RetryPolicy,
    retry: u32,
    asked: Option<Duration>,
    remaining: Duration,
) -> Result<Duration, Exhausted> {
    if retry >= policy.retries_allowed() {
        return Err(Exhausted::Retries {
            retries: policy.retries_allowed(),
        });
    }
    let wait = match asked {
        Some(asked) => {
            let longest = policy.retry_after_allowed().min(remaining);
            if asked > longest {
                return Err(Exhausted::RetryAfterTooLong { asked, longest });
            }
            // A little jitter on top, so clients told the same do not
            // come back in the same instant.
            let jitter_ms = policy.backoff_base.as_millis() as u64;
            asked + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
        }
        None => policy.backoff(retry),
    };
    if wait >= remaining {
        return Err(Exhausted::CallBudget {
            budget: policy.call_budget,
        });
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(5),
            retry_after_max: Duration::from_secs(30),
            call_budget: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_fixed() {
        let policy = RetryPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            ..policy()
        };
        for _ in 0..50 {
            let waits: Vec<u128> = (0..4).map(|r| policy.backoff(r).as_millis()).collect();
            assert!((50..=100).contains(&waits[0]), "{waits:?}");
            assert!((100..=200).contains(&waits[1]), "{waits:?}");
            assert!((175..=350).contains(&waits[2]), "{waits:?}");
            assert!((175..=350).contains(&waits[3]), "{waits:?}");
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_it_succeeds() {
        let mut seen = Vec::new();
        let result: Result<u32, GaveUp<&str>> = run(
            &policy(),
            &RunBudget::default(),
            |n, _| {
                if n < 3 {
                    Err(Failed::Transient {
                        error: "busy",
                        after: None,
                    })
                } else {
                    Ok(n)
                }
            },
            |e, n, _| seen.push((*e, n)),
        );
        assert_eq!(result.unwrap(), 3);
        assert_eq!(seen, vec![("busy", 1), ("busy", 2)]);
    }

    #[test]
    fn a_final_failure_is_never_retried() {
        let mut attempts = 0;
        let result: Result<(), GaveUp<&str>> = run(
            &policy(),
            &RunBudget::default(),
            |_, _| {
                attempts += 1;
                Err(Failed::Final("certificate rejected"))
            },
            |_, _, _| {},
        );
        assert!(matches!(result, Err(GaveUp::Final("certificate rejected"))));
        assert_eq!(attempts, 1);
    }

    #[test]
    fn retries_stop_at_the_policy_and_say_so() {
        let mut attempts = 0;
        let result: Result<(), GaveUp<&str>> = run(
            &policy(),
            &RunBudget::default(),
            |_, _| {
                attempts += 1;
                Err(Failed::Transient {
                    error: "503",
                    after: None,
                })
            },
            |_, _, _| {},
        );
        assert_eq!(attempts, 4, "the first attempt and 3 retries");
        match result {
            Err(GaveUp::Exhausted {
                last,
                attempts,
                why,
                ..
            }) => {
                assert_eq!((last, attempts), ("503", 4));
                assert_eq!(why, Exhausted::Retries { retries: 3 });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_after_beyond_what_is_left_fails_at_once() {
        let started = Instant::now();
        let result: Result<(), GaveUp<&str>> = run(
            &policy(),
            &RunBudget::default(),
            |_, _| {
                Err(Failed::Transient {
                    error: "429",
                    after: Some(Duration::from_secs(100_000)),
                })
            },
            |_, _, _| panic!("never waits"),
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        match result {
            Err(GaveUp::Exhausted {
                why: Exhausted::RetryAfterTooLong { asked, longest },
                ..
            }) => {
                assert_eq!(asked, Duration::from_secs(100_000));
                assert!(longest <= Duration::from_secs(5), "{longest:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wait_past_the_call_budget_ends_the_call() {
        let tight = RetryPolicy {
            backoff_base: Duration::from_secs(4),
            backoff_max: Duration::from_secs(4),
            call_budget: Duration::from_secs(1),
            ..policy()
        };
        let result: Result<(), GaveUp<&str>> = run(
            &tight,
            &RunBudget::default(),
            |_, _| {
                Err(Failed::Transient {
                    error: "timeout",
                    after: None,
                })
            },
            |_, _, _| {},
        );
        assert!(matches!(
            result,
            Err(GaveUp::Exhausted {
                why: Exhausted::CallBudget { .. },
                attempts: 1,
                ..
            })
        ));
    }

    #[test]
    fn the_run_budget_is_shared_by_every_call_and_stops_retries_once_spent() {
        let budget = RunBudget::new(Duration::from_millis(12));
        let steady = RetryPolicy {
            retries: 10,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            ..policy()
        };
        let mut retries = 0;
        let mut calls = Vec::new();
        for _ in 0..3 {
            let shared = budget.clone();
            let result: Result<(), GaveUp<&str>> = run(
                &steady,
                &shared,
                |_, _| {
                    Err(Failed::Transient {
                        error: "503",
                        after: None,
                    })
                },
                |_, _, _| retries += 1,
            );
            calls.push(result);
        }
        // Each wait is 5..=10 ms: one or two fit in 12 ms, for all calls.
        assert!((1..=2).contains(&retries), "{retries}");
        assert!(budget.spent() <= Duration::from_millis(12));
        for call in calls {
            assert!(matches!(
                call,
                Err(GaveUp::Exhausted {
                    why: Exhausted::RunBudget { .. },
                    ..
                })
            ));
        }
    }
}
