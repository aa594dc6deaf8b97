//! What a campaign counts, scenario by scenario, and the table it prints.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cpsync::sim::model::FaultCounts;

/// What one scenario did and found.
#[derive(Debug, Default)]
pub struct ScenarioResult {
    pub backend: &'static str,
    pub faults: FaultCounts,
    pub vendor_requests: u64,
    /// Processes killed while running, by what they were doing.
    pub kills: BTreeMap<&'static str, u64>,
    pub child_runs: u64,
    /// Runs that failed (exit 1) while faults were on: allowed, counted.
    pub failed_under_faults: u64,
    /// Runs refused because another held the district lock (exit 4).
    pub lock_refusals: u64,
    pub violations: Vec<String>,
    pub bad_inputs_tried: u64,
    pub bad_inputs_handled: u64,
    pub secrets_found: Vec<String>,
    pub bytes_scanned: u64,
    pub vendor_txns_checked: u64,
    pub vendor_fees_checked: u64,
    /// Office actions over a fee's life injected (`convergence.rs`).
    pub office_actions: u64,
    /// Fees compared field by field at the finish.
    pub fees_compared: u64,
    /// Fees made in Community Pass only by the office actions.
    pub unmanaged_injected: u64,
    /// Commands run with their standard output closed.
    pub closed_pipe_runs: u64,
    /// Stale lock rows planted (a dead process's, another host's).
    pub stale_locks_tried: u64,
    /// Vendor records that do not belong injected (`vendor_records.rs`).
    pub bad_vendor_records: u64,
    /// Injected records found held with a reason and never posted.
    pub bad_vendor_records_held: u64,
    /// Malformed fees and cursor jumps the engine had to contain.
    pub contained_faults: u64,
    /// Nightly runs started with a crash point (`CPSYNC_CRASH_AFTER_WRITES`).
    pub crash_points_planned: u64,
    /// PostgreSQL restarts under watch run (`pg_restart.rs`).
    pub pg_restarts: u64,
    pub elapsed: Duration,
    /// The scenario's event trace (`trace.rs`), its figures last.
    pub trace: Vec<String>,
}

impl ScenarioResult {
    /// The final figures, for the trace: everything counted except time.
    pub fn figures(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "figures: {} vendor requests, faults {:?}",
                self.vendor_requests, self.faults
            ),
            format!(
                "figures: {} engine runs, kills {:?}, {} crash points planned, {} failed under faults, {} lock refusals",
                self.child_runs,
                self.kills,
                self.crash_points_planned,
                self.failed_under_faults,
                self.lock_refusals
            ),
            format!(
                "figures: {} vendor transactions and {} vendor fees checked, {} fees compared field by field",
                self.vendor_txns_checked, self.vendor_fees_checked, self.fees_compared
            ),
            format!(
                "figures: {} office actions, {} unmanaged fees injected, {} bad vendor records ({} held), {} contained faults",
                self.office_actions,
                self.unmanaged_injected,
                self.bad_vendor_records,
                self.bad_vendor_records_held,
                self.contained_faults
            ),
            format!(
                // Not the bytes scanned: the files hold clock readings.
                "figures: {} of {} bad inputs handled, {} closed-pipe runs, {} stale lock rows, {} PostgreSQL restarts under watch, {} secrets found",
                self.bad_inputs_handled,
                self.bad_inputs_tried,
                self.closed_pipe_runs,
                self.stale_locks_tried,
                self.pg_restarts,
                self.secrets_found.len()
            ),
            format!("figures: {} violations", self.violations.len()),
        ];
        lines.extend(self.violations.iter().map(|v| format!("violation: {v}")));
        lines
    }
}

/// The campaign's running totals.
#[derive(Debug, Default)]
pub struct Tally {
    pub scenarios: u64,
    pub by_backend: BTreeMap<&'static str, u64>,
    pub faults: FaultCounts,
    pub vendor_requests: u64,
    pub kills: BTreeMap<&'static str, u64>,
    pub child_runs: u64,
    pub failed_under_faults: u64,
    pub lock_refusals: u64,
    /// `seed S: what` for every violation.
    pub violations: Vec<String>,
    pub bad_inputs_tried: u64,
    pub bad_inputs_handled: u64,
    pub secrets_found: Vec<String>,
    pub bytes_scanned: u64,
    pub vendor_txns_checked: u64,
    pub vendor_fees_checked: u64,
    pub office_actions: u64,
    pub fees_compared: u64,
    pub closed_pipe_runs: u64,
    pub stale_locks_tried: u64,
    pub bad_vendor_records: u64,
    pub bad_vendor_records_held: u64,
    pub contained_faults: u64,
    pub crash_points_planned: u64,
    pub pg_restarts: u64,
    pub slowest: Duration,
}

fn add_faults(total: &mut FaultCounts, more: &FaultCounts) {
    total.latency_spikes += more.latency_spikes;
    total.errors_5xx += more.errors_5xx;
    total.rate_limited += more.rate_limited;
    total.dropped += more.dropped;
    total.duplicated_pages += more.duplicated_pages;
    total.reordered_pages += more.reordered_pages;
}

impl Tally {
    /// Adds one scenario's result.
    pub fn absorb(&mut self, seed: u64, result: ScenarioResult) {
        self.scenarios += 1;
        *self.by_backend.entry(result.backend).or_default() += 1;
        add_faults(&mut self.faults, &result.faults);
        self.vendor_requests += result.vendor_requests;
        for (what, count) in &result.kills {
            *self.kills.entry(what).or_default() += count;
        }
        self.child_runs += result.child_runs;
        self.failed_under_faults += result.failed_under_faults;
        self.lock_refusals += result.lock_refusals;
        for violation in &result.violations {
            let line = format!(
                "seed {seed} ({}): {violation}  [replay: scripts/chaos --scenarios 1 --seed {seed}]",
                result.backend
            );
            eprintln!("chaos: VIOLATION {line}");
            self.violations.push(line);
        }
        for found in &result.secrets_found {
            let line = format!("seed {seed}: {found}");
            eprintln!("chaos: SECRET {line}");
            self.secrets_found.push(line);
        }
        self.bad_inputs_tried += result.bad_inputs_tried;
        self.bad_inputs_handled += result.bad_inputs_handled;
        self.bytes_scanned += result.bytes_scanned;
        self.vendor_txns_checked += result.vendor_txns_checked;
        self.vendor_fees_checked += result.vendor_fees_checked;
        self.office_actions += result.office_actions;
        self.fees_compared += result.fees_compared;
        self.closed_pipe_runs += result.closed_pipe_runs;
        self.stale_locks_tried += result.stale_locks_tried;
        self.bad_vendor_records += result.bad_vendor_records;
        self.bad_vendor_records_held += result.bad_vendor_records_held;
        self.contained_faults += result.contained_faults;
        self.crash_points_planned += result.crash_points_planned;
        self.pg_restarts += result.pg_restarts;
        self.slowest = self.slowest.max(result.elapsed);
    }

    /// Records a violation found outside any scenario (campaign probes).
    pub fn violation(&mut self, what: String) {
        eprintln!("chaos: VIOLATION (campaign probe): {what}");
        self.violations.push(format!("campaign probe: {what}"));
    }

    pub fn progress(&self, total: u64) {
        if self.scenarios % 10 == 0 || self.scenarios == total {
            eprintln!(
                "chaos: {}/{} scenarios, {} violation(s)",
                self.scenarios,
                total,
                self.violations.len()
            );
        }
    }

    /// No invariant broken, no secret found, and every stage it claims
    /// ran: every bad input handled, transactions and fees actually checked.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
            && self.secrets_found.is_empty()
            && self.hollow_stages().is_empty()
    }

    /// Stages that ran without checking anything (a campaign that proves
    /// nothing must not pass).
    pub fn hollow_stages(&self) -> Vec<String> {
        let mut hollow = Vec::new();
        if self.bad_inputs_handled < self.bad_inputs_tried {
            hollow.push(format!(
                "only {} of {} bad inputs were handled",
                self.bad_inputs_handled, self.bad_inputs_tried
            ));
        }
        if self.scenarios > 0 && self.vendor_txns_checked == 0 {
            hollow.push("no vendor transaction was checked".to_string());
        }
        if self.scenarios > 0 && self.fees_compared == 0 {
            hollow.push("no fee was compared field by field".to_string());
        }
        if self.scenarios > 0 && self.bad_vendor_records == 0 {
            hollow.push("no vendor record that does not belong was injected".to_string());
        }
        if self.bad_vendor_records_held < self.bad_vendor_records {
            hollow.push(format!(
                "only {} of {} injected vendor records were checked held",
                self.bad_vendor_records_held, self.bad_vendor_records
            ));
        }
        let aborted = self
            .kills
            .get("nightly (crash after write k)")
            .copied()
            .unwrap_or(0);
        if self.crash_points_planned >= 5 && aborted == 0 {
            hollow.push(format!(
                "{} nightly runs were given a crash point and none aborted: is cpsync built with crash points (--features failpoints)?",
                self.crash_points_planned
            ));
        }
        let on_postgres = self.by_backend.get("PostgreSQL").copied().unwrap_or(0);
        if self.pg_restarts < on_postgres {
            hollow.push(format!(
                "the PostgreSQL restart under watch ran in {} of {on_postgres} PostgreSQL scenarios",
                self.pg_restarts
            ));
        }
        if self.scenarios > 0 && self.contained_faults == 0 {
            hollow.push("no malformed fee or cursor jump was contained".to_string());
        }
        hollow
    }

    /// Prints the campaign table.
    pub fn print(&self, wall: Duration, work: &Path) {
        let row = |name: &str, value: String| println!("  {name:<44} {value:>12}");
        println!("\ncpsync chaos campaign");
        row("scenarios run", self.scenarios.to_string());
        for (backend, count) in &self.by_backend {
            row(&format!("  on {backend}"), count.to_string());
        }
        row(
            "vendor API requests served",
            self.vendor_requests.to_string(),
        );
        println!("  faults injected by kind");
        let f = &self.faults;
        row("  5xx answers", f.errors_5xx.to_string());
        row("  429 answers (in bursts)", f.rate_limited.to_string());
        row(
            "  latency spikes (client timeouts)",
            f.latency_spikes.to_string(),
        );
        row("  dropped connections (answer lost)", f.dropped.to_string());
        row(
            "  duplicated transaction pages",
            f.duplicated_pages.to_string(),
        );
        row(
            "  out-of-order transaction pages",
            f.reordered_pages.to_string(),
        );
        row("engine processes run", self.child_runs.to_string());
        let kills: u64 = self.kills.values().sum();
        row("engine processes killed mid-run", kills.to_string());
        for (what, count) in &self.kills {
            row(&format!("  {what}"), count.to_string());
        }
        row(
            "runs failed under faults (allowed)",
            self.failed_under_faults.to_string(),
        );
        row(
            "runs refused by the district lock (exit 4)",
            self.lock_refusals.to_string(),
        );
        row(
            "vendor transactions checked",
            self.vendor_txns_checked.to_string(),
        );
        row("vendor fees checked", self.vendor_fees_checked.to_string());
        row(
            "office actions over a fee's life",
            self.office_actions.to_string(),
        );
        row(
            "fees compared field by field",
            self.fees_compared.to_string(),
        );
        row(
            "commands run with stdout closed",
            self.closed_pipe_runs.to_string(),
        );
        row(
            "stale lock rows planted",
            self.stale_locks_tried.to_string(),
        );
        row(
            "vendor records not belonging injected / held",
            format!(
                "{} / {}",
                self.bad_vendor_records, self.bad_vendor_records_held
            ),
        );
        row(
            "malformed fees and cursor jumps contained",
            self.contained_faults.to_string(),
        );
        row(
            "bad inputs tried / handled",
            format!("{} / {}", self.bad_inputs_tried, self.bad_inputs_handled),
        );
        row(
            "PostgreSQL restarts under watch",
            self.pg_restarts.to_string(),
        );
        row("bytes scanned for secrets", self.bytes_scanned.to_string());
        row(
            "secrets found (must be 0)",
            self.secrets_found.len().to_string(),
        );
        row(
            "invariant violations (must be 0)",
            self.violations.len().to_string(),
        );
        row(
            "slowest scenario",
            format!("{:.1} s", self.slowest.as_secs_f64()),
        );
        row("wall time", format!("{:.1} s", wall.as_secs_f64()));
        for hollow in self.hollow_stages() {
            eprintln!("  FAILED: {hollow}");
        }
        for line in self.violations.iter().chain(&self.secrets_found) {
            println!("  FAILED {line}");
        }
        if !self.clean() {
            println!("  scenario folders kept under {}", work.display());
        }
    }
}
