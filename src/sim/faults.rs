//! Fault injection for the vendor API: a seeded generator decides, request by
//! request, on latency spikes, 5xx answers, 429 bursts, dropped connections,
//! and duplicated or reordered transaction pages, and counts what it did.
//! Given the same seed and the same sequence of requests, the same faults.

use std::time::Duration;

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
}

/// The seeded fault generator and the statistics of what was served.
#[derive(Debug)]
pub struct FaultInjector {
    config: FaultConfig,
    rng: ChaCha8Rng,
    burst_left: u32,
    pub stats: SimStats,
}

impl FaultInjector {
    pub fn new(config: FaultConfig, seed: u64) -> FaultInjector {
        FaultInjector {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            burst_left: 0,
            stats: SimStats::default(),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: FaultConfig) {
        self.config = config;
        self.burst_left = 0;
    }

    fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.gen_bool(rate.min(1.0))
    }

    /// Decides the faults of one vendor API request and counts it.
    pub fn plan(&mut self, route: &str, transaction_page: bool, fee_write: bool) -> FaultPlan {
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
        plan.refusal = self.refusal();
        if plan.refusal.is_none() {
            plan.drop_answer = self.chance(self.config.drop_rate);
            if plan.drop_answer {
                self.stats.faults.dropped += 1;
            }
        }
        if fee_write && plan.refusal.is_none() {
            plan.lose_write = self.chance(self.config.lost_write_rate);
            if plan.lose_write {
                self.stats.faults.lost_writes += 1;
            }
        }
        if transaction_page && plan.refusal.is_none() {
            plan.duplicate = self.chance(self.config.duplicate_rate);
            plan.reorder = self.chance(self.config.reorder_rate);
        }
        plan
    }

    fn refusal(&mut self) -> Option<Refusal> {
        if self.burst_left == 0
            && self.config.rate_limit_burst_len > 0
            && self.chance(self.config.rate_limit_burst_rate)
        {
            self.burst_left = self.config.rate_limit_burst_len;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
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

    /// Shuffles a page in place (a reordered delivery).
    pub fn reorder<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.rng);
        self.stats.faults.reordered_pages += 1;
    }

    /// Picks up to `DUPLICATES_PER_PAGE_MAX` indexes in `0..len` to deliver twice.
    pub fn duplicates(&mut self, len: usize) -> Vec<usize> {
        if len == 0 {
            return Vec::new();
        }
        self.stats.faults.duplicated_pages += 1;
        let count = self.rng.gen_range(1..=DUPLICATES_PER_PAGE_MAX.min(len));
        (0..count).map(|_| self.rng.gen_range(0..len)).collect()
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
                .map(|_| injector.plan("GET /v1/fees", true, false))
                .collect::<Vec<_>>()
        };
        assert_eq!(plans(42), plans(42));
        assert_ne!(plans(42), plans(43));
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
            let plan = injector.plan("GET /v1/fees", false, false);
            assert_eq!(
                plan.refusal,
                Some(Refusal::RateLimited {
                    retry_after_secs: 2
                })
            );
        }
        assert_eq!(injector.stats.faults.rate_limited, 6);
        let mut calm = FaultInjector::new(FaultConfig::default(), 1);
        assert_eq!(calm.plan("GET /v1/fees", true, true), FaultPlan::default());
    }
}
