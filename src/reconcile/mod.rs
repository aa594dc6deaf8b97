//! The pure reconciliation core (DESIGN.md §4): a Genesis snapshot and a
//! Community Pass snapshot in, discrepancies with planned actions or review
//! reasons out, plus the per-record accounting and each side's totals.
//!
//! **Architecture invariant:** no IO, no clock, no database or HTTP types;
//! the same input gives the same output whatever the thread count.
//!
//! The key space is the Genesis fee id. Both snapshots are grouped into one
//! case per fee (plus one case for Community Pass transactions naming no
//! known fee), cases are judged in parallel partitions (rayon), and the
//! results merged and sorted by (fee, kind, vendor transaction id).
//!
//! Only managed fees are examined: a link exists, Community Pass holds a
//! record of the fee, or the Genesis fee is eligible (dated on or after the
//! cutoff, selected category, school not excluded). Fees outside the run's
//! `Scope` are neither examined nor counted.
//!
//! # Rules: kind → outcome
//!
//! | kind | when | outcome |
//! |---|---|---|
//! | `fee_missing_in_cp` | eligible, not in CP, no CP payment ever (void/waived fees never sent are left alone) | push fee |
//! | `paid_fee_missing_in_cp` | not in CP although CP applied a payment | review |
//! | `fee_out_of_date` | amount differs (no payment applied) or status reopened | push fee |
//! | `fee_details_out_of_date` | student (no payment applied), patron, guardians, category, school, description, fee or due date differ | push fee |
//! | `fee_deleted_in_genesis` | gone from Genesis, created by the integration, no money moved in CP | push fee (status void, from CP's own record) |
//! | `paid_fee_moved_to_another_student` | student changed in Genesis after a CP payment | review (the money sits on the first family), not pushed |
//! | `fee_voided_in_genesis` | voided in Genesis, no payment applied | push fee (status void) |
//! | `fee_waived_in_genesis` | waived in Genesis, CP not waived (a waived fee owes nothing, with or without a waiver row) | push fee (status waived) |
//! | `genesis_credit_not_reflected` | Genesis manual payments/refunds differ from CP's `genesis_credit` | push fee |
//! | `genesis_waiver_not_reflected` | as above, and the latest Genesis-recorded transaction is a waiver | push fee |
//! | `cp_payment_missing_in_genesis` | CP payment ≥ fee amount not posted in Genesis | post txn |
//! | `cp_partial_payment_missing_in_genesis` | CP payment < fee amount not posted | post txn |
//! | `cp_refund_missing_in_genesis` / `cp_waiver_…` / `cp_reversal_…` | CP refund, waiver, reversal not posted | post txn |
//! | `amount_not_locked` | CP applied a payment, link not locked | lock amount |
//! | `genesis_txn_unknown_to_cp` | Genesis txn with a vendor id CP does not know, or a `community_pass` txn without one | review |
//! | `genesis_txn_without_fee` | Genesis txns of a managed fee id Genesis no longer has, CP has no fee | review |
//! | `txn_amount_mismatch` | same vendor id, different amount or kind | review |
//! | `txn_fee_mismatch` | same vendor id, posted in Genesis to another fee | review |
//! | `amount_edited_after_payment` | Genesis amount ≠ CP amount after a CP payment | review, never pushed |
//! | `fee_voided_after_payment` | voided in Genesis after a CP payment | review (refund decision), not pushed |
//! | `fee_deleted_after_payment` | gone from Genesis after a CP payment | review (refund decision) |
//! | `cp_fee_without_genesis_fee` | CP fee whose Genesis fee does not exist, not created by the integration or with money moved but no payment | review |
//! | `overpayment_credit` | balance once both sides agree is negative | review; the credit stays on both sides |
//! | `duplicate_txn_genesis` | one vendor id posted more than once in Genesis | review |
//! | `duplicate_txn_cp` | one vendor id delivered with different contents | review, nothing posted |
//! | (none) | identical redelivery of a CP txn | deduplicated, counted matched |
//! | `duplicate_fee` | one Genesis fee id twice on a side | review |
//! | `sent_but_ineligible` | sent, now before cutoff / deselected category / excluded school (frozen), and the sides disagree (what changed, what was paid) or CP lost it | review, never pushed again; CP txns still posted |
//! | (none) | frozen fee both sides agree on | matched |
//! | `unprocessed_vendor_txn` | CP txn naming a Genesis fee id Genesis does not have: reason "fee not found in Genesis" | review |
//! | (none) | CP txn naming no Genesis fee (a fee that exists only in CP: never synced) | matched, not posted |
//! | `conservation_violation` | CP fee's balance ≠ its identity, or its totals ≠ its transactions | review; fee not pushed |
//!
//! # Holds: what is never posted (`validate`)
//!
//! Between the portal and posting (Get Payments, and the nightly's
//! `PostVendorTxn` actions), `validate::judge` holds a record instead of
//! posting it; a held record is parked in `cp_unprocessed` with the reason
//! in words, listed by `cpsync unprocessed`, counted as needing review, and
//! retried by every later pull (posted once valid). In the nightly the
//! planned posting becomes a review item with the same reason.
//!
//! | hold | when |
//! |---|---|
//! | `fee_not_in_genesis` | the transaction's Genesis fee does not exist |
//! | `txn_student_mismatch` | its `student_id` is not the Genesis fee's student |
//! | `txn_vendor_fee_id_mismatch` | its `vendor_fee_id` is not the one the link recorded |
//! | `txn_amount_not_positive` | amount zero or negative |
//! | `txn_in_the_future` | `occurred_at` more than `CLOCK_SKEW_MAX_MINUTES` (10) after now |
//! | `txn_on_void_fee` | a payment or waiver on a fee void in Genesis whose void Community Pass acknowledged (voided only after a payment: posted, and `fee_voided_after_payment` reviews the fee) |
//! | `waiver_larger_than_fee` | a waiver above the fee's amount |
//! | `reverses_unknown_payment` | a refund/reversal naming a payment neither posted nor in the batch |
//! | `reverses_payment_of_another_fee` | … naming a payment on another fee |
//! | `undoes_more_than_the_payment` | … for more than the payment it names |
//! | `undoes_more_than_paid` | … for more than is still paid through Community Pass on the fee |
//! | `conflicting_copies` | copies of one vendor id differ (or differ from Genesis's posting): all kept, none posted; the nightly's `duplicate_txn_cp` |
//!
//! Community Pass payments, refunds, waivers and reversals are posted to
//! Genesis even while the fee itself is under review: money received is
//! never dropped. Each Community Pass transaction is matched to at most one
//! Genesis record, and nothing is posted whose vendor id Genesis already has
//! anywhere.

mod accounting;
mod apply;
mod case;
mod input;
mod output;
mod rules;
mod totals;
pub mod validate;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use accounting::{check_accounting, AccountingError};
pub use apply::{apply_plan, fee_push, totals_after_plan, vendor_status};
pub use case::genesis_credit;
pub use input::{
    CategorySelection, FeeLink, GenesisSnapshot, Ineligibility, Policy, Scope, StudentParty,
    VendorSnapshot,
};
pub use output::{
    Accounting, Action, Discrepancy, DiscrepancyKind, Reconciliation, Resolution, SideAccounting,
    SideTotals, Totals,
};
pub use rules::vendor_identity_balance;
pub use totals::{check_conservation, genesis_balance, ConservationError};

use case::RecordRef;
use rules::{CaseReport, Outcome};

/// How many fee cases one parallel partition judges.
pub const PARTITION_CASES_MAX: usize = 256;

/// Reconciles both snapshots under the policy, within the scope. Runs on the
/// current rayon pool; the output does not depend on its size.
pub fn reconcile(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    policy: &Policy,
    scope: &Scope,
) -> Reconciliation {
    reconcile_in_partitions(genesis, vendor, policy, scope, PARTITION_CASES_MAX)
}

/// `reconcile` with a chosen partition size (at least one case); the output
/// does not depend on it either. Tests use small partitions.
pub fn reconcile_in_partitions(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    policy: &Policy,
    scope: &Scope,
    partition_cases: usize,
) -> Reconciliation {
    let index = case::index(genesis, vendor, scope);
    let grouped = case::group(&index, genesis, vendor, policy, scope);
    let facts = &grouped.facts;
    let reports: Vec<CaseReport> = grouped
        .cases
        .par_chunks(partition_cases.max(1))
        .map(|partition| judge_partition(partition, facts, policy))
        .collect();
    let (mut discrepancies, outcomes) = merge(reports);
    discrepancies.sort_by(|left, right| left.sort_key().cmp(&right.sort_key()));
    Reconciliation {
        discrepancies,
        accounting: accounting::account(&grouped.cases, &outcomes),
        totals: totals::totals_of(&grouped.cases),
    }
}

/// Each side's totals over the managed, in-scope fees, without judging them.
fn totals_only(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    policy: &Policy,
    scope: &Scope,
) -> Totals {
    let index = case::index(genesis, vendor, scope);
    let grouped = case::group(&index, genesis, vendor, policy, scope);
    totals::totals_of(&grouped.cases)
}

fn judge_partition(
    partition: &[case::FeeCase<'_>],
    facts: &case::GlobalFacts<'_>,
    policy: &Policy,
) -> CaseReport {
    let mut merged = CaseReport::default();
    for fee_case in partition {
        let report = rules::judge(fee_case, facts, policy);
        merged.discrepancies.extend(report.discrepancies);
        merged.outcomes.extend(report.outcomes);
    }
    merged
}

fn merge(reports: Vec<CaseReport>) -> (Vec<Discrepancy>, Vec<(RecordRef, Outcome)>) {
    let mut discrepancies = Vec::new();
    let mut outcomes = Vec::new();
    for report in reports {
        discrepancies.extend(report.discrepancies);
        outcomes.extend(report.outcomes);
    }
    (discrepancies, outcomes)
}
