//! Unit tests of the reconciliation rules: one small world per discrepancy
//! kind, checked data-driven with `check(world, expected)`. Every check also
//! applies the plan and re-runs, expecting only the same review items.

use std::collections::BTreeSet;

use chrono::NaiveDate;

use super::*;
use crate::domain::{
    FeeId, FeeStatus, GenesisFee, GenesisTxn, StudentId, TxnKind, TxnSource, VendorFeeStatus,
    VendorTxn, VendorTxnId,
};
use crate::money::Money;

use DiscrepancyKind as K;

/// What a discrepancy is expected to resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    Push,
    Post,
    Lock,
    Review,
}

fn expectation(resolution: &Resolution) -> Expect {
    match resolution {
        Resolution::Planned(Action::PushFee { .. }) => Expect::Push,
        Resolution::Planned(Action::PostVendorTxn { .. }) => Expect::Post,
        Resolution::Planned(Action::LockAmount { .. }) => Expect::Lock,
        Resolution::NeedsReview { .. } => Expect::Review,
    }
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

fn cents(value: i64) -> Money {
    Money::from_cents(value)
}

const STUDENT: StudentId = StudentId(7);

/// Both sides, the policy and the scope of one test.
struct World {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    policy: Policy,
    scope: Scope,
}

impl World {
    fn new() -> World {
        World {
            genesis: GenesisSnapshot::default(),
            vendor: VendorSnapshot::default(),
            policy: Policy {
                cutoff: Some(day("2024-09-01")),
                categories: CategorySelection::Only(["ATH".to_string(), "LIB".to_string()].into()),
                excluded_schools: BTreeSet::from(["ES".to_string()]),
            },
            scope: Scope::everything(),
        }
    }

    /// An open, eligible Genesis fee, not yet sent.
    fn fee(&mut self, id: i64, amount_cents: i64) -> &mut World {
        let at = day("2024-10-01").and_hms_opt(8, 0, 0).unwrap();
        self.genesis.fees.push(GenesisFee {
            id: FeeId(id),
            student_id: STUDENT,
            category: "ATH".to_string(),
            school: "HS".to_string(),
            description: format!("fee {id}"),
            amount: cents(amount_cents),
            fee_date: day("2024-10-01"),
            due_date: None,
            status: FeeStatus::Open,
            created_at: at,
            modified_at: at,
        });
        self
    }

    fn genesis_fee(&mut self, id: i64) -> &mut GenesisFee {
        self.genesis
            .fees
            .iter_mut()
            .find(|fee| fee.id == FeeId(id))
            .unwrap()
    }

    fn vendor_fee(&mut self, id: i64) -> &mut crate::domain::VendorFee {
        self.vendor
            .fees
            .iter_mut()
            .find(|fee| fee.genesis_fee_id == FeeId(id))
            .unwrap()
    }

    /// Pushes the fee as it is now, as the engine would have.
    fn synced(&mut self, id: i64) -> &mut World {
        let plan = [Action::PushFee { fee_id: FeeId(id) }];
        let (genesis, vendor) = apply_plan(&self.genesis, &self.vendor, &plan);
        self.genesis = genesis;
        self.vendor = vendor;
        self
    }

    fn manual(&mut self, id: i64, kind: TxnKind, amount_cents: i64) -> &mut World {
        let txn = self.genesis_txn(id, kind, amount_cents, TxnSource::Genesis, None);
        self.genesis.txns.push(txn);
        self
    }

    fn genesis_txn(
        &self,
        id: i64,
        kind: TxnKind,
        amount_cents: i64,
        source: TxnSource,
        vendor_id: Option<&str>,
    ) -> GenesisTxn {
        GenesisTxn {
            id: self.genesis.txns.len() as i64 + 1,
            fee_id: FeeId(id),
            kind,
            amount: cents(amount_cents),
            method: "cash".to_string(),
            source,
            vendor_txn_id: vendor_id.map(|vendor_id| VendorTxnId(vendor_id.to_string())),
            posted_at: day("2024-10-05").and_hms_opt(9, 0, 0).unwrap(),
        }
    }

    fn vendor_txn(&self, id: i64, vendor_id: &str, kind: TxnKind, amount_cents: i64) -> VendorTxn {
        VendorTxn {
            id: VendorTxnId(vendor_id.to_string()),
            sequence: self.vendor.txns.len() as i64 + 1,
            genesis_fee_id: Some(FeeId(id)),
            vendor_fee_id: format!("cp-{id}"),
            student_id: Some(STUDENT),
            kind,
            amount: cents(amount_cents),
            method: "card".to_string(),
            occurred_at: day("2024-10-06").and_hms_opt(10, 0, 0).unwrap(),
            reverses: None,
        }
    }

    /// A transaction made in Community Pass, applied to its fee there only.
    fn cp(&mut self, id: i64, vendor_id: &str, kind: TxnKind, amount_cents: i64) -> &mut World {
        let txn = self.vendor_txn(id, vendor_id, kind, amount_cents);
        self.vendor.txns.push(txn);
        let fee = self.vendor_fee(id);
        match kind {
            TxnKind::Payment => fee.paid += cents(amount_cents),
            TxnKind::Refund => fee.refunded += cents(amount_cents),
            TxnKind::Waiver => fee.waived += cents(amount_cents),
            TxnKind::Reversal => fee.reversed += cents(amount_cents),
        }
        fee.balance = vendor_identity_balance(fee);
        if matches!(fee.status, VendorFeeStatus::Open | VendorFeeStatus::Paid) {
            fee.status = vendor_status(FeeStatus::Open, fee.balance);
        }
        self
    }

    /// A Genesis posting of a Community Pass transaction.
    fn posted(&mut self, id: i64, vendor_id: &str, kind: TxnKind, amount_cents: i64) -> &mut World {
        let txn = self.genesis_txn(
            id,
            kind,
            amount_cents,
            TxnSource::CommunityPass,
            Some(vendor_id),
        );
        self.genesis.txns.push(txn);
        self
    }

    /// A Community Pass transaction already pulled into Genesis (and the
    /// amount locked, for a payment).
    fn settled(
        &mut self,
        id: i64,
        vendor_id: &str,
        kind: TxnKind,
        amount_cents: i64,
    ) -> &mut World {
        self.cp(id, vendor_id, kind, amount_cents)
            .posted(id, vendor_id, kind, amount_cents);
        if kind == TxnKind::Payment {
            self.lock(id);
        }
        self
    }

    fn lock(&mut self, id: i64) -> &mut World {
        let link = self
            .genesis
            .links
            .iter_mut()
            .find(|link| link.fee_id == FeeId(id))
            .unwrap();
        link.amount_locked = true;
        self
    }

    fn run(&self) -> Reconciliation {
        reconcile(&self.genesis, &self.vendor, &self.policy, &self.scope)
    }
}

fn review_keys(
    result: &Reconciliation,
) -> Vec<(Option<FeeId>, DiscrepancyKind, Option<VendorTxnId>)> {
    result
        .reviews()
        .map(|item| (item.fee_id, item.kind, item.vendor_txn_id.clone()))
        .collect()
}

/// Runs the world, compares the kinds found with `expected`, checks the
/// accounting and conservation, then applies the plan and checks that a
/// second run finds only the same review items.
fn check(world: &World, expected: &[(DiscrepancyKind, Expect)]) -> Reconciliation {
    let result = world.run();
    let mut found: Vec<(DiscrepancyKind, Expect)> = result
        .discrepancies
        .iter()
        .map(|item| (item.kind, expectation(&item.resolution)))
        .collect();
    found.sort();
    let mut wanted = expected.to_vec();
    wanted.sort();
    assert_eq!(found, wanted, "discrepancies: {:#?}", result.discrepancies);
    check_accounting(&result.accounting).expect("accounting adds up");

    let (genesis, vendor) = apply_plan(&world.genesis, &world.vendor, &result.plan());
    let again = reconcile(&genesis, &vendor, &world.policy, &world.scope);
    assert!(
        again.plan().is_empty(),
        "second run plans {:#?}",
        again.plan()
    );
    assert_eq!(review_keys(&again), review_keys(&result));
    check_accounting(&again.accounting).expect("accounting adds up after apply");
    result
}

// ----- in agreement ---------------------------------------------------------

#[test]
fn fee_in_agreement_is_matched() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.manual(1, TxnKind::Payment, 1000).synced(1);
    let result = check(&world, &[]);
    let genesis = result.accounting.genesis;
    assert_eq!((genesis.records_in, genesis.matched), (3, 3));
    let vendor = result.accounting.community_pass;
    assert_eq!((vendor.records_in, vendor.matched), (2, 2));
    assert_eq!(result.totals.genesis, result.totals.community_pass);
    assert_eq!(result.totals.genesis.outstanding, cents(2000));
    assert_eq!(result.totals.genesis.genesis_credit, cents(1000));
    check_conservation(&result.totals, &world.vendor).unwrap();
}

#[test]
fn void_fee_never_sent_needs_nothing() {
    let mut world = World::new();
    world.fee(1, 5000).genesis_fee(1).status = FeeStatus::Void;
    let result = check(&world, &[]);
    assert_eq!(result.accounting.genesis.matched, 1);
}

// ----- pushes -----------------------------------------------------------------

#[test]
fn fee_missing_in_cp_is_pushed() {
    let mut world = World::new();
    world.fee(1, 5000);
    let result = check(&world, &[(K::FeeMissingInCp, Expect::Push)]);
    assert_eq!(result.plan(), vec![Action::PushFee { fee_id: FeeId(1) }]);
    assert_eq!(result.accounting.genesis.corrected, 1);
}

#[test]
fn paid_fee_missing_in_cp_needs_review() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).lock(1);
    world.vendor.fees.clear();
    check(&world, &[(K::PaidFeeMissingInCp, Expect::Review)]);
}

#[test]
fn amount_change_before_payment_is_pushed() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).genesis_fee(1).amount = cents(4500);
    let result = check(&world, &[(K::FeeOutOfDate, Expect::Push)]);
    let item = &result.discrepancies[0];
    assert_eq!(
        item.genesis_value.as_deref(),
        Some("amount 45.00; status open; credit 0.00")
    );
    assert_eq!(
        item.cp_value.as_deref(),
        Some("amount 50.00; status open; credit 0.00")
    );
}

#[test]
fn fee_voided_without_payment_is_pushed() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).genesis_fee(1).status = FeeStatus::Void;
    let result = check(&world, &[(K::FeeVoidedInGenesis, Expect::Push)]);
    // The status disagreement shows in dollars: nothing is due in Genesis.
    let totals = result.totals;
    assert_eq!(totals.genesis.outstanding, Money::ZERO);
    assert_eq!(totals.genesis.written_off, cents(5000));
    assert_eq!(totals.community_pass.outstanding, cents(5000));
    check_conservation(&totals, &world.vendor).expect("the identity holds");
}

#[test]
fn fee_waived_in_genesis_is_pushed() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .manual(1, TxnKind::Waiver, 5000);
    world.genesis_fee(1).status = FeeStatus::Waived;
    check(&world, &[(K::FeeWaivedInGenesis, Expect::Push)]);
}

#[test]
fn genesis_manual_payment_lowers_cp_amount_due() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .manual(1, TxnKind::Payment, 1500);
    let result = check(&world, &[(K::GenesisCreditNotReflected, Expect::Push)]);
    let (_, vendor) = apply_plan(&world.genesis, &world.vendor, &result.plan());
    assert_eq!(vendor.fees[0].balance, cents(3500));
    assert_eq!(vendor.fees[0].genesis_credit, cents(1500));
}

#[test]
fn genesis_waiver_is_reflected() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .manual(1, TxnKind::Payment, 1000)
        .synced(1);
    world.manual(1, TxnKind::Waiver, 500);
    check(&world, &[(K::GenesisWaiverNotReflected, Expect::Push)]);
}

#[test]
fn reopened_fee_is_pushed() {
    let mut world = World::new();
    world.fee(1, 5000).genesis_fee(1).status = FeeStatus::Void;
    world.synced(1).genesis_fee(1).status = FeeStatus::Open;
    check(&world, &[(K::FeeOutOfDate, Expect::Push)]);
}

// ----- vendor transactions into Genesis --------------------------------------

#[test]
fn cp_full_payment_is_posted_and_locks_the_amount() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 5000);
    let result = check(
        &world,
        &[
            (K::CpPaymentMissingInGenesis, Expect::Post),
            (K::AmountNotLocked, Expect::Lock),
        ],
    );
    let (genesis, _) = apply_plan(&world.genesis, &world.vendor, &result.plan());
    assert!(genesis.links[0].amount_locked);
    let posted = &genesis.txns[0];
    assert_eq!(
        (posted.source, posted.amount),
        (TxnSource::CommunityPass, cents(5000))
    );
    assert_eq!(posted.vendor_txn_id, Some(VendorTxnId("v1".to_string())));
}

#[test]
fn cp_partial_payment_is_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 2000);
    check(
        &world,
        &[
            (K::CpPartialPaymentMissingInGenesis, Expect::Post),
            (K::AmountNotLocked, Expect::Lock),
        ],
    );
}

#[test]
fn cp_refund_is_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 5000);
    world.cp(1, "v2", TxnKind::Refund, 1000);
    check(&world, &[(K::CpRefundMissingInGenesis, Expect::Post)]);
}

#[test]
fn cp_waiver_is_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Waiver, 5000);
    check(&world, &[(K::CpWaiverMissingInGenesis, Expect::Post)]);
}

#[test]
fn cp_reversal_is_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 5000);
    world.cp(1, "v2", TxnKind::Reversal, 5000);
    world.vendor.txns[1].reverses = Some(VendorTxnId("v1".to_string()));
    check(&world, &[(K::CpReversalMissingInGenesis, Expect::Post)]);
}

#[test]
fn payment_posted_without_lock_is_locked() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 5000);
    world.posted(1, "v1", TxnKind::Payment, 5000);
    check(&world, &[(K::AmountNotLocked, Expect::Lock)]);
}

#[test]
fn identical_redelivery_is_deduplicated_and_matched() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    let mut again = world.vendor.txns[0].clone();
    again.sequence = 99;
    world.vendor.txns.push(again);
    let result = check(&world, &[]);
    assert_eq!(result.accounting.community_pass.matched, 3);
}

#[test]
fn identical_redelivery_not_yet_posted_is_posted_once() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 2000);
    let copy = world.vendor.txns[0].clone();
    world.vendor.txns.push(copy);
    let result = check(
        &world,
        &[
            (K::CpPartialPaymentMissingInGenesis, Expect::Post),
            (K::AmountNotLocked, Expect::Lock),
        ],
    );
    let posts = result
        .plan()
        .iter()
        .filter(|action| matches!(action, Action::PostVendorTxn { .. }))
        .count();
    assert_eq!(posts, 1);
}

// ----- reviews ------------------------------------------------------------------

#[test]
fn genesis_txn_unknown_to_cp_needs_review() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .posted(1, "ghost", TxnKind::Payment, 1000);
    check(&world, &[(K::GenesisTxnUnknownToCp, Expect::Review)]);
}

#[test]
fn community_pass_posting_without_vendor_id_needs_review() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1);
    let txn = world.genesis_txn(1, TxnKind::Payment, 1000, TxnSource::CommunityPass, None);
    world.genesis.txns.push(txn);
    check(&world, &[(K::GenesisTxnUnknownToCp, Expect::Review)]);
}

#[test]
fn genesis_txns_of_a_vanished_fee_need_review() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .manual(1, TxnKind::Payment, 100);
    world.genesis.fees.clear();
    world.vendor.fees.clear();
    check(&world, &[(K::GenesisTxnWithoutFee, Expect::Review)]);
}

#[test]
fn txn_amount_mismatch_needs_review() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.genesis.txns[0].amount = cents(200);
    let result = check(&world, &[(K::TxnAmountMismatch, Expect::Review)]);
    assert_eq!(result.accounting.genesis.needs_review, 1);
    assert_eq!(result.accounting.community_pass.needs_review, 1);
}

#[test]
fn txn_posted_to_another_fee_needs_review_and_is_not_posted_again() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).fee(2, 3000).synced(2);
    world
        .cp(1, "v1", TxnKind::Payment, 1000)
        .lock(1)
        .posted(2, "v1", TxnKind::Payment, 1000);
    check(
        &world,
        &[
            (K::TxnFeeMismatch, Expect::Review),
            (K::TxnFeeMismatch, Expect::Review),
        ],
    );
}

#[test]
fn amount_edited_after_payment_is_never_pushed() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 1000);
    world.genesis_fee(1).amount = cents(8000);
    world.manual(1, TxnKind::Payment, 500);
    let result = check(&world, &[(K::AmountEditedAfterPayment, Expect::Review)]);
    assert!(result.plan().is_empty());
}

#[test]
fn fee_voided_after_payment_needs_a_refund_decision() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 5000);
    world.genesis_fee(1).status = FeeStatus::Void;
    check(&world, &[(K::FeeVoidedAfterPayment, Expect::Review)]);
}

#[test]
fn fee_deleted_after_payment_needs_a_refund_decision() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 5000);
    world.genesis.fees.clear();
    let result = check(
        &world,
        &[
            (K::FeeDeletedAfterPayment, Expect::Review),
            (K::UnprocessedVendorTxn, Expect::Review),
        ],
    );
    let unprocessed = result
        .discrepancies
        .iter()
        .find(|item| item.kind == K::UnprocessedVendorTxn)
        .unwrap();
    assert!(
        matches!(&unprocessed.resolution, Resolution::NeedsReview { reason, .. } if reason == "fee not found in Genesis")
    );
}

#[test]
fn cp_fee_without_genesis_fee_needs_review() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1);
    world.genesis.fees.clear();
    world.genesis.links.clear();
    check(&world, &[(K::CpFeeWithoutGenesisFee, Expect::Review)]);
}

#[test]
fn overpayment_is_a_credit_for_review() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 6000);
    let result = check(
        &world,
        &[
            (K::CpPaymentMissingInGenesis, Expect::Post),
            (K::AmountNotLocked, Expect::Lock),
            (K::OverpaymentCredit, Expect::Review),
        ],
    );
    assert_eq!(result.totals.community_pass.credit, cents(1000));
    let (genesis, vendor) = apply_plan(&world.genesis, &world.vendor, &result.plan());
    let after = reconcile(&genesis, &vendor, &world.policy, &world.scope);
    assert_eq!(after.totals.genesis.credit, cents(1000));
    assert_eq!(after.totals.community_pass.credit, cents(1000));
}

#[test]
fn duplicate_genesis_posting_needs_review() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.posted(1, "v1", TxnKind::Payment, 2000);
    let result = check(&world, &[(K::DuplicateTxnGenesis, Expect::Review)]);
    assert_eq!(result.accounting.genesis.needs_review, 2);
}

#[test]
fn conflicting_cp_duplicate_needs_review_and_nothing_is_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 2000);
    let mut conflicting = world.vendor.txns[0].clone();
    conflicting.amount = cents(2500);
    world.vendor.txns.push(conflicting);
    world.lock(1);
    let result = check(&world, &[(K::DuplicateTxnCp, Expect::Review)]);
    assert!(result.plan().is_empty());
    assert_eq!(result.accounting.community_pass.needs_review, 2);
}

#[test]
fn duplicate_fee_needs_review() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1);
    let copy = world.vendor.fees[0].clone();
    world.vendor.fees.push(copy);
    check(&world, &[(K::DuplicateFee, Expect::Review)]);
}

#[test]
fn fee_sent_before_cutoff_needs_review_and_is_not_pushed() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).genesis_fee(1).amount = cents(10);
    world.policy.cutoff = Some(day("2024-11-01"));
    let result = check(&world, &[(K::SentButIneligible, Expect::Review)]);
    let reason = match &result.discrepancies[0].resolution {
        Resolution::NeedsReview { reason, .. } => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("before the cutoff"), "{reason}");
}

#[test]
fn deselected_category_still_gets_its_payments_posted() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .cp(1, "v1", TxnKind::Payment, 1000)
        .lock(1);
    world.genesis_fee(1).category = "BUS".to_string();
    check(
        &world,
        &[
            (K::SentButIneligible, Expect::Review),
            (K::CpPartialPaymentMissingInGenesis, Expect::Post),
        ],
    );
}

#[test]
fn excluded_school_is_not_pushed_further() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1).genesis_fee(1).school = "ES".to_string();
    world.genesis_fee(1).status = FeeStatus::Void;
    check(&world, &[(K::SentButIneligible, Expect::Review)]);
}

#[test]
fn ineligible_fee_never_sent_is_not_examined() {
    let mut world = World::new();
    world.fee(1, 5000).genesis_fee(1).category = "BUS".to_string();
    world.fee(2, 5000).genesis_fee(2).fee_date = day("2024-08-01");
    let result = check(&world, &[]);
    assert_eq!(result.accounting.genesis.records_in, 0);
    assert_eq!(result.totals.genesis.billed, Money::ZERO);
}

#[test]
fn no_cutoff_means_nothing_is_pushed() {
    let mut world = World::new();
    world.fee(1, 5000).policy.cutoff = None;
    check(&world, &[]);
}

#[test]
fn vendor_txn_for_unknown_fee_is_unprocessed() {
    let mut world = World::new();
    let mut orphan = world.vendor_txn(999, "v9", TxnKind::Payment, 1000);
    orphan.vendor_fee_id = "cp-unknown".to_string();
    world.vendor.txns.push(orphan.clone());
    orphan.id = VendorTxnId("v10".to_string());
    orphan.genesis_fee_id = None;
    world.vendor.txns.push(orphan.clone());
    orphan.id = VendorTxnId("v11".to_string());
    orphan.student_id = Some(StudentId(8));
    world.vendor.txns.push(orphan);
    // v9 names a Genesis fee id Genesis does not have: unprocessed. v10 and
    // v11 name no Genesis fee at all: payments on fees that exist only in
    // Community Pass, never synced, so not a Genesis discrepancy.
    let result = check(&world, &[(K::UnprocessedVendorTxn, Expect::Review)]);
    assert_eq!(result.discrepancies[0].fee_id, Some(FeeId(999)));
    assert_eq!(result.accounting.community_pass.needs_review, 1);
    assert_eq!(result.accounting.community_pass.matched, 2);
}

#[test]
fn a_frozen_fee_both_sides_agree_on_is_not_a_review_item() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.fee(2, 3000).synced(2);
    world.genesis_fee(2).status = FeeStatus::Void;
    world.synced(2);
    world.policy.cutoff = Some(day("2024-11-01"));
    let result = check(&world, &[]);
    assert_eq!(result.accounting.genesis.needs_review, 0);
    world.policy.cutoff = Some(day("2024-09-01"));
    world.policy.categories = CategorySelection::Only(["LIB".to_string()].into());
    check(&world, &[]);
}

#[test]
fn a_frozen_fee_changed_afterwards_says_what_changed_and_what_was_paid() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.policy.cutoff = Some(day("2024-11-01"));
    world.genesis_fee(1).description = "Field trip".to_string();
    let result = check(&world, &[(K::SentButIneligible, Expect::Review)]);
    let Resolution::NeedsReview { reason, .. } = &result.discrepancies[0].resolution else {
        panic!("a review item");
    };
    assert!(
        reason.contains("description Field trip in Genesis, fee 1 in Community Pass"),
        "{reason}"
    );
    assert!(reason.contains("20.00 paid"), "{reason}");
}

#[test]
fn every_field_community_pass_shows_is_compared_and_pushed() {
    type Edit = fn(&mut GenesisFee);
    let edits: [(&str, Edit); 6] = [
        ("description", |fee| fee.description = "Renamed".to_string()),
        ("due date", |fee| fee.due_date = Some(day("2024-12-01"))),
        ("fee date", |fee| fee.fee_date = day("2024-10-02")),
        ("school", |fee| fee.school = "MS".to_string()),
        ("category", |fee| fee.category = "LIB".to_string()),
        ("student", |fee| fee.student_id = StudentId(8)),
    ];
    for (field, edit) in edits {
        let mut world = World::new();
        world.fee(1, 5000).synced(1);
        edit(world.genesis_fee(1));
        let result = check(&world, &[(K::FeeDetailsOutOfDate, Expect::Push)]);
        let shown = result.discrepancies[0].genesis_value.clone().unwrap();
        assert!(shown.contains(field), "{field}: {shown}");
    }
}

#[test]
fn patron_and_guardians_follow_genesis() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1);
    world.genesis.parties.push(StudentParty {
        student_id: STUDENT,
        patron_id: "G70".to_string(),
        guardian_ids: vec![crate::domain::GuardianId(70)],
    });
    let result = check(&world, &[(K::FeeDetailsOutOfDate, Expect::Push)]);
    let shown = result.discrepancies[0].cp_value.clone().unwrap();
    assert!(
        shown.contains("patron 7") && shown.contains("guardians none"),
        "{shown}"
    );
}

#[test]
fn a_paid_fee_moved_to_another_student_is_not_pushed() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 2000);
    world.genesis_fee(1).student_id = StudentId(8);
    check(&world, &[(K::PaidFeeMovedToAnotherStudent, Expect::Review)]);
}

#[test]
fn an_unpaid_fee_deleted_in_genesis_is_voided_in_community_pass() {
    let mut world = World::new();
    world.fee(1, 5000).synced(1);
    world.genesis.fees.clear();
    let result = check(&world, &[(K::FeeDeletedInGenesis, Expect::Push)]);
    let (_, vendor) = apply_plan(&world.genesis, &world.vendor, &result.plan());
    assert_eq!(vendor.fees[0].status, VendorFeeStatus::Void);
}

#[test]
fn broken_cp_balance_is_a_conservation_violation() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .manual(1, TxnKind::Payment, 100);
    world.vendor_fee(1).balance = cents(4000);
    check(&world, &[(K::ConservationViolation, Expect::Review)]);
    let totals = world.run().totals;
    assert!(matches!(
        check_conservation(&totals, &world.vendor),
        Err(ConservationError::Totals {
            side: "community_pass",
            ..
        })
    ));
}

#[test]
fn cp_totals_disagreeing_with_its_transactions_is_a_conservation_violation() {
    let mut world = World::new();
    world
        .fee(1, 5000)
        .synced(1)
        .settled(1, "v1", TxnKind::Payment, 1000);
    world.vendor.txns.clear();
    let result = check(
        &world,
        &[
            (K::ConservationViolation, Expect::Review),
            (K::GenesisTxnUnknownToCp, Expect::Review),
        ],
    );
    let violation = result
        .discrepancies
        .iter()
        .find(|item| item.kind == K::ConservationViolation)
        .unwrap();
    let cp_value = violation.cp_value.clone().unwrap();
    assert!(
        cp_value.contains("paid 10.00 but its transactions sum to 0.00"),
        "{cp_value}"
    );
}

// ----- scope, accounting, order ----------------------------------------------

#[test]
fn records_out_of_scope_are_neither_examined_nor_counted() {
    let mut world = World::new();
    world.fee(1, 5000).fee(2, 5000).genesis_fee(2).student_id = StudentId(8);
    world.fee(3, 5000).genesis_fee(3).fee_date = day("2025-01-10");
    world.scope = Scope {
        from: Some(day("2024-09-01")),
        to: Some(day("2024-12-31")),
        student: Some(STUDENT),
    };
    let result = check(&world, &[(K::FeeMissingInCp, Expect::Push)]);
    assert_eq!(result.discrepancies[0].fee_id, Some(FeeId(1)));
    assert_eq!(result.accounting.genesis.records_in, 1);
}

#[test]
fn discrepancies_are_sorted_by_fee_then_kind() {
    let mut world = World::new();
    world
        .fee(3, 100)
        .fee(1, 100)
        .fee(2, 100)
        .synced(2)
        .cp(2, "v1", TxnKind::Payment, 100);
    let result = world.run();
    let keys: Vec<_> = result
        .discrepancies
        .iter()
        .map(|item| (item.fee_id, item.kind))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 4);
}

#[test]
fn check_accounting_fails_loudly_when_a_record_is_unaccounted() {
    let accounting = Accounting {
        genesis: SideAccounting::default(),
        community_pass: SideAccounting {
            records_in: 3,
            matched: 1,
            corrected: 1,
            needs_review: 0,
        },
    };
    let error = check_accounting(&accounting).unwrap_err();
    assert_eq!(error.side, "community_pass");
    assert!(error.to_string().contains("3 records in"));
}

#[test]
fn kind_names_are_snake_case_on_the_wire() {
    for kind in DiscrepancyKind::ALL {
        let json = serde_json::to_string(kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
    }
    assert_eq!(DiscrepancyKind::ALL.len(), 31);
}

#[test]
fn every_kind_has_a_unit_test_above() {
    let source = include_str!("tests.rs");
    for kind in DiscrepancyKind::ALL {
        let variant = format!("{kind:?}");
        let used = source.matches(&format!("K::{variant},")).count()
            + source.matches(&format!("K::{variant})")).count();
        assert!(used > 0, "no test expects {variant}");
    }
}
