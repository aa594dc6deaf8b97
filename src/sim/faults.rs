//! Fault injection for the vendor API: a seeded generator decides, request by
//! request, on latency spikes, 5xx answers, 429 bursts, dropped connections,
//! and duplicated or reordered transaction pages, and counts what it did.
//!
//! Each request's faults are drawn from a generator of its own, seeded by
//! the simulator's seed, the fault epoch (how many times the faults were
//! set), the request's identity (method, path and query, without the
//! clock-valued `updated_since` and the list of fees an incremental run
//! chose by it) and how many times that identity was asked
//! before in this epoch. The client is not sequential — cpsync pushes fees
//! several at a time and reads the fee listing and the transaction log at
//! once — so one generator shared by all requests would hand out faults in
//! whatever order the threads happened to arrive; keyed this way, the same
//! requests get the same faults whatever their interleaving, and a seeded
//! chaos scenario replays exactly. A 429 burst refuses the identity that
//! drew it for its next `rate_limit_burst_len` asks (the client's retries).

use std::time::Duration;

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{FaultConfig, SimStats};

/// The most redelivered copies added to one transaction page.
const DUPLICATES_PER_PAGE_MAX: usize = 5;

/// An answer given instead of handling the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited { retry_after_secs: u64 },
    ServerError { status: u16 },
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub delay: Duration,
    pub refusal: Option<Refusal>,
    /// Handle the request, then close the connection without answering.
    pub drop_answer: bool,
    pub duplicate: bool,
    pub reorder: bool,
    /// Answer a fee upsert as applied without applying it.
    pub lose_write: bool,
    /// Seeds the item-by-item lost writes of a batch of fee upserts (0 for
    /// any other request).
    pub write_seed: u64,
    /// Seeds the shuffle and the copies of a duplicated or reordered page
    /// (0 when the page is served as it is).
    pub page_seed: u64,
}

/// The seeded fault generator and the statistics of what was served.
#[derive(Debug)]
pub struct FaultInjector {
    config: FaultConfig,
    seed: u64,
    /// How many times the faults were set: each setting starts afresh.
    epoch: u64,
    /// Per request identity (hashed): how many times it was asked this epoch.
    asked: HashMap<u64, u64>,
    /// Per request identity (hashed): refusals left in its 429 burst.
    burst_left: HashMap<u64, u32>,
    /// The generator of the request being planned.
    rng: ChaCha8Rng,
    pub stats: SimStats,
}

/// FNV-1a over bytes: a hash that is the same in every build and process.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A request's identity for fault keying: method, path and query, with the
/// values of `updated_since` (a clock reading) and `genesis_fee_ids` (which
/// fees an incremental run reads depends on that clock) left out.
pub fn request_identity(method: &str, path: &str, query: Option<&str>) -> String {
    let query: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            if pair.starts_with("updated_since=") {
                "updated_since=*"
            } else if pair.starts_with("genesis_fee_ids=") {
                "genesis_fee_ids=*"
            } else {
                pair
            }
        })
        .collect();
    format!("{method} {path}?{}", query.join("&"))
}

impl FaultInjector {
    pub fn new(config: FaultConfig, seed: u64) -> FaultInjector {
        FaultInjector {
            config,
            seed,
            epoch: 0,
            asked: HashMap::new(),
            burst_left: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: SimStats::default(),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: FaultConfig) {
        self.config = config;
        self.epoch += 1;
        self.asked.clear();
        self.burst_left.clear();
    }

    fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.gen_bool(rate.min(1.0))
    }

    /// Decides the faults of one vendor API request (`request` is its
    /// identity, see `request_identity`) and counts it.
    pub fn plan(
        &mut self,
        route: &str,
        request: &str,
        transaction_page: bool,
        fee_write: bool,
        fee_batch: bool,
    ) -> FaultPlan {
        let identity = stable_hash(&[request.as_bytes()]);
        let asked = self.asked.entry(identity).or_default();
        let occurrence = *asked;
        *asked += 1;
        self.rng = ChaCha8Rng::seed_from_u64(stable_hash(&[
            &self.seed.to_le_bytes(),
            &self.epoch.to_le_bytes(),
            &identity.to_le_bytes(),
            &occurrence.to_le_bytes(),
        ]));
        self.stats.requests += 1;
        *self
            .stats
            .requests_by_route
            .entry(route.to_string())
            .or_default() += 1;
        let mut plan = FaultPlan {
            delay: Duration::from_millis(self.config.latency_ms),
            ..FaultPlan::default()
        };
        if self.chance(self.config.latency_spike_rate) {
            plan.delay += Duration::from_millis(self.config.latency_spike_ms);
            self.stats.faults.latency_spikes += 1;
        }
        plan.refusal = self.refusal(identity);
        if plan.refusal.is_none() {
            plan.drop_answer = self.chance(self.config.drop_rate);
            if plan.drop_answer {
                self.stats.faults.dropped += 1;
            }
        }
        if fee_batch && plan.refusal.is_none() {
            plan.write_seed = self.rng.gen::<u64>() | 1;
        } else if fee_write && plan.refusal.is_none() {
            plan.lose_write = self.chance(self.config.lost_write_rate);
            if plan.lose_write {
                self.stats.faults.lost_writes += 1;
            }
        }
        if transaction_page && plan.refusal.is_none() {
            plan.duplicate = self.chance(self.config.duplicate_rate);
            plan.reorder = self.chance(self.config.reorder_rate);
            if plan.duplicate || plan.reorder {
                plan.page_seed = self.rng.gen::<u64>() | 1;
            }
        }
        plan
    }

    /// Which items of a batch of fee upserts are lost (answered as applied,
    /// not applied), drawn from the batch's `write_seed`; counted.
    pub fn lost_writes(&mut self, write_seed: u64, items: usize) -> Vec<bool> {
        let rate = self.config.lost_write_rate;
        let mut rng = ChaCha8Rng::seed_from_u64(write_seed);
        let lost: Vec<bool> = (0..items)
            .map(|_| rate > 0.0 && rng.gen_bool(rate.min(1.0)))
            .collect();
        self.stats.faults.lost_writes += lost.iter().filter(|lost| **lost).count() as u64;
        lost
    }

    fn refusal(&mut self, identity: u64) -> Option<Refusal> {
        let in_burst = self.burst_left.get(&identity).copied().unwrap_or(0);
        let left = if in_burst == 0
            && self.config.rate_limit_burst_len > 0
            && self.chance(self.config.rate_limit_burst_rate)
        {
            self.config.rate_limit_burst_len
        } else {
            in_burst
        };
        if left > 0 {
            self.burst_left.insert(identity, left - 1);
            self.stats.faults.rate_limited += 1;
            return Some(Refusal::RateLimited {
                retry_after_secs: self.config.retry_after_secs,
            });
        }
        if self.chance(self.config.error_5xx_rate) {
            self.stats.faults.errors_5xx += 1;
            let status = *[500u16, 502, 503].choose(&mut self.rng).unwrap_or(&503);
            return Some(Refusal::ServerError { status });
        }
        None
    }

    /// Counts an answer by status.
    pub fn record_status(&mut self, status: u16) {
        *self.stats.responses_by_status.entry(status).or_default() += 1;
    }

    /// Shuffles a page in place (a reordered delivery), as `plan` decided.
    pub fn reorder<T>(&mut self, items: &mut [T], plan: &FaultPlan) {
        let mut rng = ChaCha8Rng::seed_from_u64(plan.page_seed ^ 0x0072_656f_7264_6572);
        items.shuffle(&mut rng);
        self.stats.faults.reordered_pages += 1;
    }

    /// Picks up to `DUPLICATES_PER_PAGE_MAX` indexes in `0..len` to deliver
    /// twice, as `plan` decided. Counted as planned, even on an empty page
    /// (whose length can depend on the clock), so the count replays.
    pub fn duplicates(&mut self, len: usize, plan: &FaultPlan) -> Vec<usize> {
        self.stats.faults.duplicated_pages += 1;
        if len == 0 {
            return Vec::new();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(plan.page_seed ^ 0x0064_7570_6c69_6361);
        let count = rng.gen_range(1..=DUPLICATES_PER_PAGE_MAX.min(len));
        (0..count).map(|_| rng.gen_range(0..len)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faulty() -> FaultConfig {
        FaultConfig {
            latency_spike_rate: 0.1,
            latency_spike_ms: 1000,
            error_5xx_rate: 0.1,
            rate_limit_burst_rate: 0.02,
            rate_limit_burst_len: 3,
            retry_after_secs: 1,
            drop_rate: 0.05,
            duplicate_rate: 0.3,
            reorder_rate: 0.3,
            ..FaultConfig::default()
        }
    }

    #[test]
    fn same_seed_same_faults() {
        let plans = |seed| {
            let mut injector = FaultInjector::new(faulty(), seed);
            (0..500)
                .map(|_| injector.plan("GET /v1/fees", "GET /v1/fees?", true, false, false))
                .collect::<Vec<_>>()
        };
        assert_eq!(plans(42), plans(42));
        assert_ne!(plans(42), plans(43));
    }

    #[test]
    fn each_request_gets_its_faults_whatever_the_interleaving() {
        // Two clients' requests arriving in either order: each request's
        // sequence of plans is the same.
        let requests: Vec<String> = (1..=40)
            .map(|id| request_identity("PUT", &format!("/v1/fees/{id}"), None))
            .collect();
        let run = |order: &[usize]| {
            let mut injector = FaultInjector::new(faulty(), 7);
            let mut by_request: Vec<Vec<FaultPlan>> = vec![Vec::new(); requests.len()];
            for _ in 0..5 {
                for &index in order {
                    by_request[index].push(injector.plan(
                        "PUT /v1/fees/{id}",
                        &requests[index],
                        false,
                        true,
                        false,
                    ));
                }
            }
            (by_request, injector.stats.faults.errors_5xx)
        };
        let forward: Vec<usize> = (0..requests.len()).collect();
        let backward: Vec<usize> = forward.iter().rev().copied().collect();
        let (plans_forward, errors_forward) = run(&forward);
        let (plans_backward, errors_backward) = run(&backward);
        assert_eq!(plans_forward, plans_backward);
        assert_eq!(errors_forward, errors_backward);
        assert!(errors_forward > 0, "the faulty config injects 5xx answers");
        // A retry of one request is a new draw, not the same fault forever.
        assert!(plans_forward.iter().any(|plans| plans[0] != plans[1]));
    }

    #[test]
    fn the_clock_valued_query_is_not_part_of_the_identity() {
        assert_eq!(
            request_identity(
                "GET",
                "/v1/fees",
                Some("limit=50&updated_since=2026-11-28T01:00:00Z")
            ),
            request_identity(
                "GET",
                "/v1/fees",
                Some("limit=50&updated_since=2026-11-29T03:00:00Z")
            ),
        );
        assert_eq!(
            request_identity("GET", "/v1/fees", Some("genesis_fee_ids=1%2C2")),
            request_identity("GET", "/v1/fees", Some("genesis_fee_ids=3")),
        );
        assert_ne!(
            request_identity("GET", "/v1/transactions", Some("after=1")),
            request_identity("GET", "/v1/transactions", Some("after=2")),
        );
    }

    #[test]
    fn bursts_refuse_consecutive_requests() {
        let config = FaultConfig {
            rate_limit_burst_rate: 1.0,
            rate_limit_burst_len: 3,
            retry_after_secs: 2,
            ..FaultConfig::default()
        };
        let mut injector = FaultInjector::new(config, 1);
        for _ in 0..6 {
            let plan = injector.plan("GET /v1/fees", "GET /v1/fees?", false, false, false);
            assert_eq!(
                plan.refusal,
                Some(Refusal::RateLimited {
                    retry_after_secs: 2
                })
            );
        }
        assert_eq!(injector.stats.faults.rate_limited, 6);
        let mut calm = FaultInjector::new(FaultConfig::default(), 1);
        assert_eq!(
            calm.plan("GET /v1/fees", "GET /v1/fees?", true, true, false),
            FaultPlan::default()
        );
    }
}
