//! Nightly Sync: fetch both sides (the Genesis reads overlap the paged
//! Community Pass reads), reconcile with the pure core, apply the corrections
//! the rules allow (Genesis postings in bounded transactions with audit rows,
//! Community Pass pushes through idempotent calls recorded first), then
//! re-read both sides and prove conservation, and record the discrepancies
//! with their outcomes (and, for a whole-district run, the mark the next
//! incremental run starts from). Safe to re-run at any time: a run killed
//! anywhere is completed by the next with nothing lost or doubled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use diesel::Connection;
use serde::Serialize;

use super::incremental::{self, ChangeCounts, Decision};
use super::push::{push_fees, Acknowledged, PushMode, PushOutcome};
use super::{Clock, SyncError};
use crate::db::audit::{self, AuditEntry, AuditSide};
use crate::db::discrepancies::{self, Outcome};
use crate::db::marks::{self, Coverage, NightlyMark, OutboxPosition};
use crate::db::review_items::{self, ReviewItem};
use crate::db::{genesis, links, postings, DbConnection};
use crate::domain::{FeeId, VendorTxn, VendorTxnId};
use crate::portal::{
    fees_by_ids, fees_where_keeping_rejected, rejected_fee_id, transactions_after, CommunityPass,
    FeeFilter, RetryStats, TxnScope,
};
use crate::reconcile::validate::{self, Verdict};
use crate::reconcile::{
    check_accounting, check_conservation, reconcile, Action, Discrepancy, DiscrepancyKind,
    GenesisSnapshot, Reconciliation, Resolution, Scope, VendorSnapshot,
};
use crate::review::{self, Reach};
use crate::setup::SetupState;

/// How many Genesis postings one database transaction carries.
pub const APPLY_BATCH_MAX: usize = 500;

/// How many pushes one apply step sends (and records) together.
pub const PUSH_BATCH_MAX: usize = 500;

/// Environment variable that makes the process abort after the k-th write
/// of the apply phase (crash-safety tests only).
pub use super::failpoint::CRASH_AFTER_WRITES_ENV;

#[derive(Debug, Clone)]
pub struct NightlyOptions {
    pub dry_run: bool,
    pub scope: Scope,
    /// Examine only what changed since the last completed run (whole
    /// district only; falls back to full when it cannot be incremental).
    pub incremental: bool,
    /// How far before the last run's Community Pass clock an incremental
    /// run reads changed fees again.
    pub vendor_clock_overlap: chrono::Duration,
    /// An incremental run runs in full once the last full run is this old.
    pub full_run_every: chrono::Duration,
    /// A credit on account older than this many days needs review.
    pub credit_review_after_days: i64,
}

impl Default for NightlyOptions {
    fn default() -> NightlyOptions {
        NightlyOptions {
            dry_run: false,
            scope: Scope::everything(),
            incremental: false,
            vendor_clock_overlap: incremental::VENDOR_CLOCK_OVERLAP,
            full_run_every: incremental::FULL_RUN_EVERY_DEFAULT,
            credit_review_after_days: 30,
        }
    }
}

/// How a run covered the district.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RunCoverage {
    /// Every fee in the scope; `instead_of_incremental` says why an
    /// incremental run was asked for but not possible.
    Full {
        instead_of_incremental: Option<String>,
    },
    /// Only the fees changed since run `since_run`.
    Incremental {
        since_run: i64,
        full_run_id: i64,
        fees_examined: usize,
        changes: ChangeCounts,
    },
}

impl RunCoverage {
    /// One sentence for people.
    pub fn describe(&self) -> String {
        match self {
            RunCoverage::Full {
                instead_of_incremental: None,
            } => "Full run: every managed fee was examined.".to_string(),
            RunCoverage::Full {
                instead_of_incremental: Some(why),
            } => format!("Full run (an incremental run was asked for, but {why})."),
            RunCoverage::Incremental {
                since_run,
                full_run_id,
                fees_examined,
                changes,
            } => format!(
                "Incremental run: the {fees_examined} fees changed since run #{since_run} or left open by it were examined (changed in Genesis {}, Community Pass fees changed {} (and {} still as our own push left them, not examined), new Community Pass transactions {}, open items {}, linked by postings {}); the last full run was #{full_run_id}.",
                changes.genesis_changed_fees,
                changes.cp_changed_fees,
                changes.cp_own_pushes_skipped,
                changes.cp_new_transactions,
                changes.open_items_carried,
                changes.fees_linked_by_postings,
            ),
        }
    }
}

/// What became of each discrepancy (same order as `reconciliation.discrepancies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemOutcome {
    pub outcome: &'static str,
    pub error: Option<String>,
}

/// The result of a nightly pass.
#[derive(Debug)]
pub struct NightlyResult {
    pub reconciliation: Reconciliation,
    pub outcomes: Vec<(Outcome, Option<String>)>,
    pub phases: Vec<(String, u64)>,
    pub rejected_rows: Vec<String>,
    pub retries: RetryStats,
    /// Actions a re-read still plans after apply (concurrent activity, or failures).
    pub remaining_after_apply: Option<usize>,
    /// The fees a re-read after apply still finds different, with the
    /// kinds still found (a write that did not take effect, or a change
    /// made on either side while the run was going).
    pub still_different: BTreeMap<FeeId, Vec<&'static str>>,
    /// Pushes Community Pass acknowledged but does not show on re-reading,
    /// with what it shows: their corrections are `NotConverged`.
    pub not_applied: BTreeMap<FeeId, String>,
    pub coverage: RunCoverage,
    /// Each side's totals after the run's own corrections (a dry run: as
    /// they would be); `reconciliation.totals` are as found.
    pub totals_after: crate::reconcile::Totals,
    /// The review queue as this run left it (or, for a scoped or dry run,
    /// as it found it).
    pub queue: QueueView,
    /// What the run could not read, so did not judge (a Community Pass fee
    /// record that breaks the contract, a transaction cursor it could not
    /// have meant): the verdict must say the run is incomplete.
    pub incomplete: Vec<String>,
}

/// The review queue items behind one run's discrepancies.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    /// Stored items by item key (`db::review_items::key_of`); a discrepancy
    /// with no entry has never been stored (new, in a scoped or dry run).
    pub items: BTreeMap<String, ReviewItem>,
    /// Items this run resolved automatically (their cause went away).
    pub resolved_by_run: usize,
    /// Whether this run changed the queue (whole district, not dry).
    pub updated: bool,
}

/// Each side's totals once the run's own corrections are in: the ones
/// applied (a dry run: the ones planned), modelled with the pure
/// `totals_after_plan` over the snapshots the run read (only the touched
/// fees are copied).
fn totals_after(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    reconciliation: &Reconciliation,
    outcomes: &[(Outcome, Option<String>)],
    policy: &crate::reconcile::Policy,
    scope: &Scope,
) -> crate::reconcile::Totals {
    let applied: Vec<Action> = reconciliation
        .discrepancies
        .iter()
        .zip(outcomes)
        .filter(|(_, (o, _))| matches!(o, Outcome::Corrected | Outcome::Planned))
        .filter_map(|(d, _)| match &d.resolution {
            Resolution::Planned(action) => Some(action.clone()),
            Resolution::NeedsReview { .. } => None,
        })
        .collect();
    crate::reconcile::totals_after_plan(
        genesis,
        vendor,
        &applied,
        policy,
        scope,
        reconciliation.totals,
    )
}

impl NightlyResult {
    pub fn corrected(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(o, _)| *o == Outcome::Corrected)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(o, _)| *o == Outcome::Failed)
            .count()
    }

    /// The discrepancies applied but not converged, with why.
    pub fn not_converged(&self) -> Vec<(FeeId, String)> {
        self.reconciliation
            .discrepancies
            .iter()
            .zip(&self.outcomes)
            .filter(|(_, (o, _))| *o == Outcome::NotConverged)
            .filter_map(|(d, (_, why))| d.fee_id.map(|fee| (fee, why.clone().unwrap_or_default())))
            .collect()
    }

    pub fn needs_review(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(o, _)| *o == Outcome::NeedsReview)
            .count()
    }

    /// Credits on account both sides agree on (not discrepancies).
    pub fn credits(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(o, _)| *o == Outcome::CreditOnAccount)
            .count()
    }
}

struct Timer {
    phases: Vec<(String, u64)>,
    started: Instant,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            phases: Vec::new(),
            started: Instant::now(),
        }
    }

    fn lap(&mut self, name: &str) {
        let took = self.started.elapsed();
        super::progress::phase_done("nightly", name, took);
        self.phases
            .push((name.to_string(), took.as_millis() as u64));
        self.started = Instant::now();
    }
}

/// What a run read: both snapshots, the rows set aside, and the
/// transaction log position it reached.
struct Reading {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    rejected: Vec<String>,
    /// Where the outbox stood before Genesis was read (whole district only).
    outbox: Option<OutboxPosition>,
    txn_sequence: i64,
    coverage: RunCoverage,
    /// Fees Community Pass sent unreadable (by id when readable), and other
    /// gaps in what was read, in words.
    unjudged_fees: Vec<FeeId>,
    incomplete: Vec<String>,
}

/// Reads both snapshots of the scope in full, as a full run does (for
/// tools and profiling; the run itself also keeps the read positions).
pub fn read_full(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    scope: &Scope,
) -> Result<(GenesisSnapshot, VendorSnapshot, Vec<String>), SyncError> {
    let coverage = RunCoverage::Full {
        instead_of_incremental: None,
    };
    let reading = fetch_snapshots(conn, portal, scope, coverage)?;
    Ok((reading.genesis, reading.vendor, reading.rejected))
}

/// Reads both sides for the scope; the Community Pass pages are fetched on
/// another thread while the database is read.
fn fetch_snapshots(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    scope: &Scope,
    coverage: RunCoverage,
) -> Result<Reading, SyncError> {
    let student = scope.student;
    let outbox = if *scope == Scope::everything() {
        Some(marks::outbox_position(conn)?)
    } else {
        None
    };
    std::thread::scope(|threads| {
        let vendor_reader = threads.spawn(move || fetch_vendor(portal, student));
        let genesis = fetch_genesis(conn, scope);
        let (vendor, vendor_rejected, txn_sequence, gaps) = vendor_reader
            .join()
            .expect("the Community Pass reader does not panic")?;
        let (genesis, mut rejected) = genesis?;
        rejected.extend(vendor_rejected);
        Ok(Reading {
            genesis,
            vendor,
            rejected,
            outbox,
            txn_sequence,
            coverage,
            unjudged_fees: gaps.fees,
            incomplete: gaps.words,
        })
    })
}

/// Reads what the run covers: everything in the scope, or (incremental
/// from a mark) the fees changed since.
fn read(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    options: &NightlyOptions,
    clock: Clock,
) -> Result<Reading, SyncError> {
    let full = |instead_of_incremental| RunCoverage::Full {
        instead_of_incremental,
    };
    if !options.incremental || options.scope != Scope::everything() {
        return fetch_snapshots(conn, portal, &options.scope, full(None));
    }
    let mark = match incremental::decide(conn, setup, options.full_run_every, clock())? {
        Decision::Incremental(mark) => mark,
        Decision::Full(why) => {
            return fetch_snapshots(conn, portal, &options.scope, full(Some(why)));
        }
    };
    let changed = incremental::fetch_changed(conn, portal, &mark, options.vendor_clock_overlap)?;
    Ok(Reading {
        genesis: changed.genesis,
        vendor: changed.vendor,
        rejected: changed.rejected,
        outbox: Some(changed.outbox),
        txn_sequence: changed.txn_sequence,
        unjudged_fees: changed.unjudged_fees,
        incomplete: changed.incomplete,
        coverage: RunCoverage::Incremental {
            since_run: mark.run_id,
            full_run_id: mark.full_run_id,
            fees_examined: changed.fees_examined,
            changes: changed.changes,
        },
    })
}

/// What a run could not read from Community Pass.
#[derive(Debug, Default)]
struct Gaps {
    /// Fees whose Community Pass record breaks the contract: not judged.
    fees: Vec<FeeId>,
    /// Every gap, in words, for the verdict.
    words: Vec<String>,
}

/// The vendor's fees and transactions, and the log position reached;
/// transactions that break the contract are left out and named (Get
/// Payments parks them); fee records that break it are left out, named,
/// and their fees not judged.
fn fetch_vendor(
    portal: &dyn CommunityPass,
    student: Option<crate::domain::StudentId>,
) -> Result<(VendorSnapshot, Vec<String>, i64, Gaps), SyncError> {
    let txn_scope = student.map_or(TxnScope::All, TxnScope::Student);
    let filter = student.map_or(FeeFilter::All, FeeFilter::Student);
    // The two listings are independent: read them at the same time.
    let (fees, batch) = std::thread::scope(|threads| {
        let txn_reader = threads.spawn(move || transactions_after(portal, txn_scope, 0));
        let fees = fees_where_keeping_rejected(portal, filter);
        let batch = txn_reader
            .join()
            .expect("the transaction reader does not panic");
        (fees, batch)
    });
    let (fees, batch) = (fees?, batch?);
    let mut rejected: Vec<String> = batch
        .rejected
        .iter()
        .map(|r| format!("Community Pass {r}"))
        .collect();
    let mut gaps = Gaps::default();
    for record in &fees.rejected {
        rejected.push(format!("Community Pass {record}"));
        match rejected_fee_id(record) {
            Some(fee) => {
                gaps.fees.push(fee);
                gaps.words.push(format!(
                    "Community Pass sent fee {fee} unreadable ({}); the fee was not judged",
                    record.reason
                ));
            }
            None => gaps.words.push(format!(
                "Community Pass sent an unreadable fee record without a readable id ({})",
                record.reason
            )),
        }
    }
    if let Some(refused) = &batch.cursor_refused {
        gaps.words.push(format!(
            "the transaction log was read only to {}: {refused}",
            batch.next_after
        ));
    }
    Ok((
        VendorSnapshot {
            fees: fees.items,
            txns: batch.items,
        },
        rejected,
        batch.next_after,
        gaps,
    ))
}

fn fetch_genesis(
    conn: &mut DbConnection,
    scope: &Scope,
) -> Result<(GenesisSnapshot, Vec<String>), SyncError> {
    let fees = genesis::load_fees(conn, scope.student)?;
    let txns = genesis::load_txns(conn, scope.student)?;
    let links = match scope.student {
        None => links::load_all(conn)?,
        Some(_) => {
            let ids: Vec<FeeId> = fees.records.iter().map(|f| f.id).collect();
            links::load_for(conn, &ids)?
        }
    };
    let rejected = fees
        .rejected
        .iter()
        .chain(&txns.rejected)
        .map(|r| r.to_string())
        .collect();
    Ok((
        GenesisSnapshot {
            fees: fees.records,
            txns: txns.records,
            links,
            parties: Vec::new(),
        },
        rejected,
    ))
}

/// Runs the whole pass.
pub fn run(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    options: &NightlyOptions,
    run_id: i64,
    clock: Clock,
) -> Result<NightlyResult, SyncError> {
    let mut timer = Timer::new();
    // Community Pass's clock before anything is read: the next
    // incremental run's starting point on that side.
    let vendor_as_of = if options.scope == Scope::everything() {
        Some(portal.test_pull()?.server_time)
    } else {
        None
    };
    let Reading {
        mut genesis,
        vendor,
        rejected: rejected_rows,
        outbox,
        txn_sequence,
        coverage,
        unjudged_fees,
        incomplete,
    } = read(conn, portal, setup, options, clock)?;
    let mut vendor = vendor;
    leave_out_fees(&mut genesis, &mut vendor, &unjudged_fees);
    super::attach_parties(conn, setup, &mut genesis)?;
    if !options.dry_run {
        adopt_unrecorded_pushes(conn, &mut genesis, &vendor, run_id, clock)?;
    }
    timer.lap("fetch");
    let policy = setup.policy();
    let mut reconciliation = reconcile(&genesis, &vendor, &policy, &options.scope);
    let held_postings = hold_what_does_not_belong(&genesis, &mut reconciliation, clock());
    check_accounting(&reconciliation.accounting)
        .map_err(|e| SyncError::Accounting(e.to_string()))?;
    timer.lap("reconcile");
    let mut acknowledged_pushes = BTreeMap::new();
    let mut outcomes = if options.dry_run {
        planned_outcomes(&reconciliation)
    } else {
        let (results, acknowledged) = apply(
            conn,
            portal,
            setup,
            &held_postings,
            &reconciliation,
            run_id,
            clock,
        )?;
        timer.lap("apply");
        acknowledged_pushes = acknowledged;
        outcomes_from(&reconciliation, &results)
    };
    check_conservation(&reconciliation.totals, &vendor)
        .map_err(|e| SyncError::Conservation(e.to_string()))?;
    let mut remaining_after_apply = None;
    let mut still_different = BTreeMap::new();
    let mut not_applied = BTreeMap::new();
    if !options.dry_run {
        let touched = touched_fees(&reconciliation);
        let verified = verify_touched(conn, portal, &vendor, &touched, setup, &options.scope)?;
        still_different = verified.still_different;
        remaining_after_apply = Some(still_different.values().map(Vec::len).sum());
        not_applied = pushes_not_applied(&acknowledged_pushes, &verified.vendor_fees);
        mark_not_converged(&reconciliation, &mut outcomes, &not_applied);
        if let Some(after) = &verified.after {
            reconciliation.show_review_values_after(after);
        }
        timer.lap("verify");
    }
    classify_credits(&reconciliation, &mut outcomes);
    let totals_after = totals_after(
        &genesis,
        &vendor,
        &reconciliation,
        &outcomes,
        &policy,
        &options.scope,
    );
    let reach = match (
        &coverage,
        options.scope == Scope::everything(),
        options.dry_run,
    ) {
        (_, false, _) | (_, _, true) => None,
        // A run that could not read everything resolves only what it judged.
        (RunCoverage::Full { .. }, true, false) if incomplete.is_empty() => Some(Reach::Everything),
        (RunCoverage::Full { .. }, true, false) => {
            Some(Reach::Fees(examined_fees(&genesis, &vendor)))
        }
        (RunCoverage::Incremental { .. }, true, false) => {
            Some(Reach::Fees(examined_fees(&genesis, &vendor)))
        }
    };
    // An incomplete run marks nothing: the next incremental run starts
    // from the last complete one, so what was not judged is judged then.
    let start = match (
        vendor_as_of,
        outbox,
        options.dry_run || !incomplete.is_empty(),
    ) {
        (Some(vendor_as_of), Some(outbox), false) => Some(Start {
            outbox,
            vendor_as_of,
            txn_sequence,
        }),
        _ => None,
    };
    let queue = conn.transaction(|conn| {
        let queue = update_queue(
            conn,
            &reconciliation,
            &mut outcomes,
            reach.as_ref(),
            options.credit_review_after_days,
            run_id,
            clock(),
        )?;
        let items: Vec<_> = reconciliation
            .discrepancies
            .iter()
            .zip(&outcomes)
            .map(|(d, (outcome, error))| (d, *outcome, error.clone()))
            .collect();
        discrepancies::record(conn, run_id, &items, clock())?;
        if let Some(start) = start {
            record_mark(conn, setup, run_id, start, &coverage, clock)?;
        }
        Ok::<QueueView, SyncError>(queue)
    })?;
    super::failpoint::wrote("nightly discrepancies, queue and mark recorded");
    Ok(NightlyResult {
        reconciliation,
        outcomes,
        phases: timer.phases,
        rejected_rows,
        retries: portal.retry_stats(),
        remaining_after_apply,
        still_different,
        not_applied,
        coverage,
        totals_after,
        queue,
        incomplete,
    })
}

/// An overpayment credit is a credit on account, not a discrepancy, when
/// nothing else about its fee needs a person after this run: both systems
/// agree, and the family simply holds a credit.
fn classify_credits(reconciliation: &Reconciliation, outcomes: &mut [(Outcome, Option<String>)]) {
    let troubled: BTreeSet<FeeId> = reconciliation
        .discrepancies
        .iter()
        .zip(outcomes.iter())
        .filter(|(d, (o, _))| d.kind != DiscrepancyKind::OverpaymentCredit && needs_person(*o))
        .filter_map(|(d, _)| d.fee_id)
        .collect();
    for (discrepancy, outcome) in reconciliation.discrepancies.iter().zip(outcomes) {
        let agreed = discrepancy
            .fee_id
            .is_some_and(|fee| !troubled.contains(&fee));
        if discrepancy.kind == DiscrepancyKind::OverpaymentCredit
            && outcome.0 == Outcome::NeedsReview
            && agreed
        {
            *outcome = (Outcome::CreditOnAccount, None);
        }
    }
}

/// Outcomes a person has to see: everything but a correction made or planned.
fn needs_person(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Corrected | Outcome::Planned)
}

/// The fees an incremental run examined (either side, or named by a
/// transaction), so it resolves no queue item it did not look at.
fn examined_fees(genesis: &GenesisSnapshot, vendor: &VendorSnapshot) -> BTreeSet<FeeId> {
    let genesis_fees = genesis.fees.iter().map(|f| f.id);
    let genesis_txns = genesis.txns.iter().map(|t| t.fee_id);
    let vendor_fees = vendor.fees.iter().map(|f| f.genesis_fee_id);
    let vendor_txns = vendor.txns.iter().filter_map(|t| t.genesis_fee_id);
    genesis_fees
        .chain(genesis_txns)
        .chain(vendor_fees)
        .chain(vendor_txns)
        .collect()
}

/// Brings the review queue up to date (when the run has a `reach`), reads
/// the stored items behind this run's discrepancies, and turns a credit on
/// account older than `credit_review_after_days` into an item needing
/// review.
fn update_queue(
    conn: &mut DbConnection,
    reconciliation: &Reconciliation,
    outcomes: &mut [(Outcome, Option<String>)],
    reach: Option<&Reach>,
    credit_review_after_days: i64,
    run_id: i64,
    now: chrono::NaiveDateTime,
) -> Result<QueueView, SyncError> {
    let sighted: Vec<&Discrepancy> = reconciliation
        .discrepancies
        .iter()
        .zip(outcomes.iter())
        .filter(|(_, (o, _))| needs_person(*o))
        .map(|(d, _)| d)
        .collect();
    let resolved_by_run = match reach {
        Some(reach) => review_items::apply_run(conn, run_id, &sighted, reach, now)?,
        None => 0,
    };
    let keys: Vec<String> = sighted.iter().map(|d| review_items::key_of(d)).collect();
    let items: BTreeMap<String, ReviewItem> = review_items::by_keys(conn, &keys)?
        .into_iter()
        .map(|item| (item.item_key.clone(), item))
        .collect();
    for (discrepancy, outcome) in reconciliation.discrepancies.iter().zip(outcomes) {
        if outcome.0 != Outcome::CreditOnAccount {
            continue;
        }
        let first_seen = items
            .get(&review_items::key_of(discrepancy))
            .map_or(now, |item| item.first_seen_at);
        let age = review::age_days(first_seen, now);
        if age > credit_review_after_days {
            *outcome = (
                Outcome::NeedsReview,
                Some(format!(
                    "a credit on account for {age} days, longer than {credit_review_after_days}"
                )),
            );
        }
    }
    Ok(QueueView {
        items,
        resolved_by_run,
        updated: reach.is_some(),
    })
}

/// Leaves these fees out of both snapshots (their Community Pass record
/// could not be read): their cases are not judged, so nothing is planned on
/// what could not be seen.
fn leave_out_fees(genesis: &mut GenesisSnapshot, vendor: &mut VendorSnapshot, fees: &[FeeId]) {
    if fees.is_empty() {
        return;
    }
    let out: std::collections::HashSet<FeeId> = fees.iter().copied().collect();
    genesis.fees.retain(|fee| !out.contains(&fee.id));
    genesis.txns.retain(|txn| !out.contains(&txn.fee_id));
    genesis.links.retain(|link| !out.contains(&link.fee_id));
    vendor.fees.retain(|fee| !out.contains(&fee.genesis_fee_id));
    vendor
        .txns
        .retain(|txn| txn.genesis_fee_id.is_none_or(|fee| !out.contains(&fee)));
}

/// The pushes Community Pass answered as applied whose fee, re-read, does
/// not show the body acknowledged (every pushed field), with what it shows.
/// A fee whose revision moved past the one the push answered was changed
/// by someone else since (another run's push): not a lost write.
fn pushes_not_applied(
    acknowledged: &BTreeMap<FeeId, Acknowledged>,
    vendor_after: &[crate::domain::VendorFee],
) -> BTreeMap<FeeId, String> {
    let shown: HashMap<FeeId, &crate::domain::VendorFee> = vendor_after
        .iter()
        .map(|fee| (fee.genesis_fee_id, fee))
        .collect();
    let mut not_applied = BTreeMap::new();
    for (fee_id, ack) in acknowledged {
        let why = match shown.get(fee_id) {
            None => "Community Pass answered the push as applied but does not list the fee"
                .to_string(),
            Some(fee) if fee.revision > ack.revision => continue,
            Some(fee) if !super::push::shows_pushed(fee, &ack.digest) => format!(
                "Community Pass answered the push as applied (revision {}) but still shows amount {}, status {}, credit {}, student {}, description {:?} (revision {})",
                ack.revision, fee.amount, fee.status, fee.genesis_credit, fee.student_id, fee.description, fee.revision
            ),
            Some(_) => continue,
        };
        not_applied.insert(*fee_id, why);
    }
    not_applied
}

/// Corrections on a fee whose push did not take effect are `NotConverged`,
/// never `Corrected`. (A fee that differs again only because someone
/// changed it while the run was going keeps its applied corrections; it is
/// listed in `still_different` and the next run takes it up.)
fn mark_not_converged(
    reconciliation: &Reconciliation,
    outcomes: &mut [(Outcome, Option<String>)],
    not_applied: &BTreeMap<FeeId, String>,
) {
    for (discrepancy, outcome) in reconciliation.discrepancies.iter().zip(outcomes) {
        let Some(why) = discrepancy.fee_id.and_then(|fee| not_applied.get(&fee)) else {
            continue;
        };
        if outcome.0 == Outcome::Corrected {
            *outcome = (Outcome::NotConverged, Some(why.clone()));
        }
    }
}

/// Where a whole-district run started reading each side.
struct Start {
    outbox: OutboxPosition,
    vendor_as_of: chrono::NaiveDateTime,
    txn_sequence: i64,
}

/// Marks a completed whole-district run as the next incremental run's
/// starting point (with its discrepancies, which the next run carries).
fn record_mark(
    conn: &mut DbConnection,
    setup: &SetupState,
    run_id: i64,
    start: Start,
    coverage: &RunCoverage,
    clock: Clock,
) -> Result<(), SyncError> {
    let (kind, full_run_id) = match coverage {
        RunCoverage::Full { .. } => (Coverage::Full, run_id),
        RunCoverage::Incremental { full_run_id, .. } => (Coverage::Incremental, *full_run_id),
    };
    marks::record(
        conn,
        &NightlyMark {
            run_id,
            coverage: kind,
            outbox: start.outbox,
            vendor_as_of: start.vendor_as_of,
            txn_sequence: start.txn_sequence,
            policy_fingerprint: incremental::policy_fingerprint(setup),
            full_run_id,
            created_at: clock(),
        },
    )?;
    Ok(())
}

/// Completes the links of fees Community Pass holds from a push whose
/// answer was never recorded (the run was killed between sending and
/// recording): the vendor id is stored and the creation audited, so the
/// audit trail names every fee the integration created.
fn adopt_unrecorded_pushes(
    conn: &mut DbConnection,
    genesis: &mut GenesisSnapshot,
    vendor: &VendorSnapshot,
    run_id: i64,
    clock: Clock,
) -> Result<(), SyncError> {
    let vendor_ids: HashMap<FeeId, &str> = vendor
        .fees
        .iter()
        .map(|f| (f.genesis_fee_id, f.vendor_fee_id.as_str()))
        .collect();
    let unrecorded: Vec<(usize, &str)> = genesis
        .links
        .iter()
        .enumerate()
        .filter(|(_, link)| link.vendor_fee_id.is_none())
        .filter_map(|(i, link)| vendor_ids.get(&link.fee_id).map(|id| (i, *id)))
        .collect();
    if unrecorded.is_empty() {
        return Ok(());
    }
    conn.transaction(|conn| {
        let now = clock();
        let mut entries = Vec::new();
        for (index, vendor_fee_id) in &unrecorded {
            let link = &mut genesis.links[*index];
            if links::adopt_vendor_id(conn, link.fee_id, vendor_fee_id, run_id, now)? {
                link.vendor_fee_id = Some(vendor_fee_id.to_string());
                entries.push(AuditEntry {
                    run_id: Some(run_id),
                    at: now,
                    side: AuditSide::CommunityPass,
                    entity: "fee",
                    entity_id: link.fee_id.to_string(),
                    action: "created".to_string(),
                    detail: Some(format!(
                        "Community Pass holds it as {vendor_fee_id}: created by an earlier push whose answer was never recorded (that run was interrupted)"
                    )),
                });
            }
        }
        audit::record(conn, &entries)?;
        Ok::<_, SyncError>(())
    })?;
    super::failpoint::operation("vendor ids adopted");
    Ok(())
}

/// Identifies a planned action for bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ActionKey {
    Post(FeeId, VendorTxnId),
    Lock(FeeId),
    Push(FeeId),
}

impl ActionKey {
    fn of(action: &Action) -> ActionKey {
        match action {
            Action::PostVendorTxn { fee_id, txn } => ActionKey::Post(*fee_id, txn.id.clone()),
            Action::LockAmount { fee_id } => ActionKey::Lock(*fee_id),
            Action::PushFee { fee_id } => ActionKey::Push(*fee_id),
        }
    }
}

/// The fees the plan wrote to, on either side.
fn touched_fees(reconciliation: &Reconciliation) -> Vec<FeeId> {
    let mut fees: Vec<FeeId> = reconciliation.plan().iter().map(Action::fee_id).collect();
    fees.sort();
    fees.dedup();
    fees
}

/// Re-reads what the plan touched, from both sides, and proves it: the
/// Genesis rows from the database, each fee from Community Pass (its
/// transactions are Community Pass's own and the plan never writes them);
/// conservation must hold, and the fees on which actions are still planned
/// are returned with their kinds (none unless a write failed, Community
/// Pass did not apply it, or someone changed the fee meanwhile).
fn verify_touched(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    vendor_before: &VendorSnapshot,
    touched: &[FeeId],
    setup: &SetupState,
    scope: &Scope,
) -> Result<Verified, SyncError> {
    if touched.is_empty() {
        return Ok(Verified::default());
    }
    let fees = genesis::load_fees_by_ids(conn, touched)?.records;
    let txns = genesis::load_txns_for_fees(conn, touched)?.records;
    let links = links::load_for(conn, touched)?;
    let touched_set: std::collections::HashSet<FeeId> = touched.iter().copied().collect();
    let vendor = VendorSnapshot {
        fees: fees_by_ids(portal, touched)?,
        txns: vendor_before
            .txns
            .iter()
            .filter(|t| t.genesis_fee_id.is_some_and(|f| touched_set.contains(&f)))
            .cloned()
            .collect(),
    };
    let mut genesis = GenesisSnapshot {
        fees,
        txns,
        links,
        parties: Vec::new(),
    };
    super::attach_parties(conn, setup, &mut genesis)?;
    let after = reconcile(&genesis, &vendor, &setup.policy(), scope);
    check_conservation(&after.totals, &vendor)
        .map_err(|e| SyncError::Conservation(e.to_string()))?;
    let mut still: BTreeMap<FeeId, Vec<&'static str>> = BTreeMap::new();
    for discrepancy in &after.discrepancies {
        if let (Resolution::Planned(action), Some(_)) =
            (&discrepancy.resolution, discrepancy.fee_id)
        {
            still
                .entry(action.fee_id())
                .or_default()
                .push(discrepancy.kind.as_str());
        }
    }
    Ok(Verified {
        still_different: still,
        vendor_fees: vendor.fees,
        after: Some(after),
    })
}

/// What re-reading the touched fees found.
#[derive(Debug, Default)]
struct Verified {
    /// Fees on which the core still plans something, with the kinds.
    still_different: BTreeMap<FeeId, Vec<&'static str>>,
    /// Community Pass's fees as re-read.
    vendor_fees: Vec<crate::domain::VendorFee>,
    /// The reconciliation of the re-read fees (none when nothing was touched).
    after: Option<Reconciliation>,
}

fn planned_outcomes(reconciliation: &Reconciliation) -> Vec<(Outcome, Option<String>)> {
    reconciliation
        .discrepancies
        .iter()
        .map(|d| match d.resolution {
            Resolution::Planned(_) => (Outcome::Planned, None),
            Resolution::NeedsReview { .. } => (Outcome::NeedsReview, None),
        })
        .collect()
}

/// How one planned action went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ActionResult {
    Done,
    /// Refused for a reason a retry cannot fix (a handbook rule, or
    /// Community Pass said no): held for a person, in words.
    Held(String),
    Failed(String),
}

fn outcomes_from(
    reconciliation: &Reconciliation,
    results: &HashMap<ActionKey, ActionResult>,
) -> Vec<(Outcome, Option<String>)> {
    reconciliation
        .discrepancies
        .iter()
        .map(|d| match &d.resolution {
            Resolution::NeedsReview { .. } => (Outcome::NeedsReview, None),
            Resolution::Planned(action) => match results.get(&ActionKey::of(action)) {
                Some(ActionResult::Done) => (Outcome::Corrected, None),
                Some(ActionResult::Held(why)) => (Outcome::NeedsReview, Some(why.clone())),
                Some(ActionResult::Failed(error)) => (Outcome::Failed, Some(error.clone())),
                None => (Outcome::Failed, Some("not applied".to_string())),
            },
        })
        .collect()
}

/// How each planned action went, and what Community Pass acknowledged.
type Applied = (
    HashMap<ActionKey, ActionResult>,
    BTreeMap<FeeId, Acknowledged>,
);

/// Carries out the plan: postings and locks into Genesis first (money
/// received is never held back by a push), then pushes to Community Pass.
fn apply(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    held_postings: &[(VendorTxn, String)],
    reconciliation: &Reconciliation,
    run_id: i64,
    clock: Clock,
) -> Result<Applied, SyncError> {
    let plan = reconciliation.plan();
    let mut results = HashMap::new();
    let postings: Vec<(FeeId, &VendorTxn)> = plan
        .iter()
        .filter_map(|a| match a {
            Action::PostVendorTxn { fee_id, txn } => Some((*fee_id, txn)),
            _ => None,
        })
        .collect();
    if !held_postings.is_empty() {
        // Held, never dropped: listed by `cpsync unprocessed`, retried by
        // every pull, posted once they belong.
        let parked: Vec<(&VendorTxn, String)> = held_postings
            .iter()
            .map(|(txn, reason)| (txn, reason.clone()))
            .collect();
        conn.transaction(|conn| postings::park(conn, &parked, Some(run_id), clock()))?;
        super::failpoint::wrote("nightly apply");
    }
    for batch in postings.chunks(APPLY_BATCH_MAX) {
        match post_batch(conn, batch, run_id, clock) {
            Ok(()) => {
                for (fee_id, txn) in batch {
                    results.insert(ActionKey::Post(*fee_id, txn.id.clone()), ActionResult::Done);
                }
            }
            // One row Genesis refuses must not block the others: the batch
            // is posted again one by one, and only the refused ones fail
            // (retried next run).
            Err(error) if super::refused_by_genesis(&error) => {
                for one in batch {
                    let result = match post_batch(conn, std::slice::from_ref(one), run_id, clock) {
                        Ok(()) => ActionResult::Done,
                        Err(error) if super::refused_by_genesis(&error) => {
                            ActionResult::Failed(format!("Genesis refused the posting: {error}"))
                        }
                        Err(error) => return Err(error),
                    };
                    results.insert(ActionKey::Post(one.0, one.1.id.clone()), result);
                }
            }
            Err(error) => return Err(error),
        }
        super::failpoint::wrote("nightly apply");
    }
    let locks: Vec<(FeeId, Option<VendorTxnId>)> = plan
        .iter()
        .filter_map(|a| match a {
            Action::LockAmount { fee_id } => Some((*fee_id, None)),
            _ => None,
        })
        .collect();
    if !locks.is_empty() {
        links::lock_amounts(conn, &locks, Some(run_id), clock())?;
        super::failpoint::wrote("nightly apply");
        for (fee_id, _) in &locks {
            results.insert(ActionKey::Lock(*fee_id), ActionResult::Done);
        }
    }
    let pushes: Vec<FeeId> = plan
        .iter()
        .filter_map(|a| match a {
            Action::PushFee { fee_id } => Some(*fee_id),
            _ => None,
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for batch in pushes.chunks(PUSH_BATCH_MAX) {
        let (report, outcomes) =
            push_fees(conn, portal, setup, batch, PushMode::Correct, run_id, clock)?;
        acknowledged.extend(report.acknowledged);
        super::failpoint::wrote("nightly apply");
        for (fee_id, outcome) in outcomes {
            let result = match &outcome {
                PushOutcome::Pushed { .. } | PushOutcome::Unchanged => ActionResult::Done,
                PushOutcome::Refused(_) | PushOutcome::Rejected(_) => {
                    ActionResult::Held(outcome.describe())
                }
                other => ActionResult::Failed(other.describe()),
            };
            results.insert(ActionKey::Push(fee_id), result);
        }
    }
    Ok((results, acknowledged))
}

/// Turns each planned posting that does not belong in Genesis
/// (`validate::judge`, with the facts of the snapshot the plan came from)
/// into a review item with the reason, in place, and moves its record from
/// corrected to needs review in the accounting: the run, its report and its
/// verdict then say what a person must look at. Returns the held records
/// with their reasons, to park.
fn hold_what_does_not_belong(
    genesis: &GenesisSnapshot,
    reconciliation: &mut Reconciliation,
    now: chrono::NaiveDateTime,
) -> Vec<(VendorTxn, String)> {
    let planned: Vec<(usize, &VendorTxn)> = reconciliation
        .discrepancies
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match &d.resolution {
            Resolution::Planned(Action::PostVendorTxn { txn, .. }) => Some((i, txn)),
            _ => None,
        })
        .collect();
    if planned.is_empty() {
        return Vec::new();
    }
    let txns: Vec<&VendorTxn> = planned.iter().map(|(_, t)| *t).collect();
    let (fees, posted) = validate::facts_for(&txns, &genesis.fees, &genesis.links, &genesis.txns);
    let known = validate::Known {
        fees: &fees,
        posted: &posted,
    };
    // One verdict per vendor id (a repeated identical action is judged once).
    let mut holds: HashMap<VendorTxnId, String> = HashMap::new();
    for (txn, verdict) in txns.iter().zip(validate::judge(&txns, known, now)) {
        if let Verdict::Hold(hold) = verdict {
            holds.insert(txn.id.clone(), hold.describe());
        }
    }
    let held: Vec<(usize, VendorTxn, String)> = planned
        .iter()
        .filter_map(|(i, txn)| holds.get(&txn.id).map(|r| (*i, (*txn).clone(), r.clone())))
        .collect();
    let mut parked = Vec::new();
    for (index, txn, reason) in held {
        tracing::warn!(vendor_txn_id = %txn.id, %reason, "a planned posting is held, not posted");
        reconciliation.discrepancies[index].resolution = Resolution::review(
            format!("held, not posted: {reason}"),
            "confirm the record with Community Pass; the next pull posts it once it belongs, or post it by hand",
        );
        let side = &mut reconciliation.accounting.community_pass;
        side.corrected = side.corrected.saturating_sub(1);
        side.needs_review += 1;
        if !parked
            .iter()
            .any(|(t, _): &(VendorTxn, String)| t.id == txn.id)
        {
            parked.push((txn, reason));
        }
    }
    parked
}

/// One bounded database transaction of postings, their audit rows and the
/// amount locks of the payments among them.
fn post_batch(
    conn: &mut DbConnection,
    batch: &[(FeeId, &VendorTxn)],
    run_id: i64,
    clock: Clock,
) -> Result<(), SyncError> {
    conn.transaction(|conn| {
        super::pull::post_and_lock(conn, batch, run_id, clock())?;
        Ok(())
    })
}

/// Discrepancy counts by kind (snake_case names), for the summary.
pub fn counts_by_kind(reconciliation: &Reconciliation) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for d in &reconciliation.discrepancies {
        *counts.entry(d.kind.as_str()).or_insert(0) += 1;
    }
    counts
}
