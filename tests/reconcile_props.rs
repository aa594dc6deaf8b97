//! Property tests of the reconciliation core: random consistent histories of
//! both sides, then random drift (at most one kind per fee, with the kind the
//! core must report), then the invariants of DESIGN.md §4: the injected kind
//! is found, untouched fees are quiet, every input is accounted for, applying
//! the plan leaves nothing to do, nothing is posted twice, no payment is
//! lost, both sides agree and conserve money afterwards, and the output does
//! not depend on the thread count or partition size.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, NaiveDateTime};
use proptest::prelude::*;

use cpsync::domain::{
    FeeId, FeeStatus, GenesisFee, GenesisTxn, StudentId, TxnKind, TxnSource, VendorFee,
    VendorFeeStatus, VendorTxn, VendorTxnId,
};
use cpsync::money::Money;
use cpsync::reconcile::{
    apply_plan, check_accounting, check_conservation, genesis_balance, reconcile,
    reconcile_in_partitions, totals_after_plan, vendor_identity_balance, Action, CategorySelection,
    DiscrepancyKind as K, FeeLink, GenesisSnapshot, Policy, Reconciliation, Scope, VendorSnapshot,
};

// ----- generated specification ------------------------------------------------

/// One step of a fee's consistent history; `percent` sizes it.
#[derive(Debug, Clone, Copy)]
enum Event {
    ManualPayment,
    ManualWaiver,
    CpPayment,
    CpRefund,
    CpWaiver,
    CpReversal,
}

/// How a fee's history ends in Genesis.
#[derive(Debug, Clone, Copy)]
enum Closing {
    Open,
    VoidIfUntouched,
    WaiveRemainder,
}

/// One drift from agreement, injected after the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drift {
    None,
    Unsent,
    EditAmount,
    Void,
    ManualPayment,
    ManualWaiver,
    CpPayment,
    CpRefund,
    CpWaiver,
    CpReversal,
    IdenticalRedelivery,
    ConflictingRedelivery,
    GenesisDoublePost,
    GenesisUnknownVendorTxn,
    DeleteGenesisFee,
    DeselectCategory,
    MoveBeforeCutoff,
    CorruptCpBalance,
    PostedAmountChanged,
    PostedToOtherFee,
    LockLost,
    CpLostPaidFee,
    WaiveInGenesis,
    CpOverpayment,
    CpDuplicateFee,
    FeeVanished,
    EditDescription,
    MoveToOtherStudent,
}

const DRIFTS: &[Drift] = &[
    Drift::None,
    Drift::Unsent,
    Drift::EditAmount,
    Drift::Void,
    Drift::ManualPayment,
    Drift::ManualWaiver,
    Drift::CpPayment,
    Drift::CpRefund,
    Drift::CpWaiver,
    Drift::CpReversal,
    Drift::IdenticalRedelivery,
    Drift::ConflictingRedelivery,
    Drift::GenesisDoublePost,
    Drift::GenesisUnknownVendorTxn,
    Drift::DeleteGenesisFee,
    Drift::DeselectCategory,
    Drift::MoveBeforeCutoff,
    Drift::CorruptCpBalance,
    Drift::PostedAmountChanged,
    Drift::PostedToOtherFee,
    Drift::LockLost,
    Drift::CpLostPaidFee,
    Drift::WaiveInGenesis,
    Drift::CpOverpayment,
    Drift::CpDuplicateFee,
    Drift::FeeVanished,
    Drift::EditDescription,
    Drift::MoveToOtherStudent,
];

#[derive(Debug, Clone)]
struct FeeSpec {
    amount_cents: i64,
    student: i64,
    /// `Some(rule)`: an ineligible fee the integration never sent.
    unmanaged: Option<u8>,
    events: Vec<(Event, i64)>,
    closing: Closing,
    drift: Drift,
    drift_cents: i64,
}

#[derive(Debug, Clone)]
struct WorldSpec {
    fees: Vec<FeeSpec>,
    orphan_cp_fee: bool,
    orphan_cp_txn: bool,
    unkeyed_cp_txn: bool,
}

fn event() -> impl Strategy<Value = (Event, i64)> {
    let kind = prop_oneof![
        Just(Event::ManualPayment),
        Just(Event::ManualWaiver),
        Just(Event::CpPayment),
        Just(Event::CpPayment),
        Just(Event::CpRefund),
        Just(Event::CpWaiver),
        Just(Event::CpReversal),
    ];
    (kind, 1i64..=100)
}

fn fee_spec() -> impl Strategy<Value = FeeSpec> {
    let closing = prop_oneof![
        4 => Just(Closing::Open),
        1 => Just(Closing::VoidIfUntouched),
        1 => Just(Closing::WaiveRemainder)
    ];
    let drift = prop_oneof![
        3 => Just(Drift::None),
        4 => proptest::sample::select(DRIFTS)
    ];
    (
        100i64..20_000,
        1i64..4,
        proptest::option::weighted(0.15, 0u8..3),
        proptest::collection::vec(event(), 0..5),
        closing,
        drift,
        1i64..5_000,
    )
        .prop_map(
            |(amount_cents, student, unmanaged, events, closing, drift, drift_cents)| FeeSpec {
                amount_cents,
                student,
                unmanaged,
                events,
                closing,
                drift,
                drift_cents,
            },
        )
}

fn world_spec() -> impl Strategy<Value = WorldSpec> {
    (
        proptest::collection::vec(fee_spec(), 1..12),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(fees, orphan_cp_fee, orphan_cp_txn, unkeyed_cp_txn)| WorldSpec {
                fees,
                orphan_cp_fee,
                orphan_cp_txn,
                unkeyed_cp_txn,
            },
        )
}

// ----- building a consistent world --------------------------------------------

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

fn cents(value: i64) -> Money {
    Money::from_cents(value)
}

fn policy() -> Policy {
    Policy {
        cutoff: Some(day("2024-09-01")),
        categories: CategorySelection::Only(["ATH".to_string(), "LIB".to_string()].into()),
        excluded_schools: BTreeSet::from(["ES".to_string()]),
    }
}

/// Both sides plus what the test knows about them.
#[derive(Debug, Clone, Default)]
struct World {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    /// Fee ids the integration does not manage (never sent, ineligible).
    unmanaged: BTreeSet<FeeId>,
    /// The kind each drifted key must report; keys absent here must be quiet.
    expected: BTreeMap<Option<FeeId>, K>,
    clock: i64,
    sequence: i64,
}

impl World {
    fn tick(&mut self) -> NaiveDateTime {
        self.clock += 1;
        day("2024-09-01").and_hms_opt(0, 0, 0).unwrap() + chrono::Duration::minutes(self.clock)
    }

    fn next_sequence(&mut self) -> i64 {
        self.sequence += 1;
        self.sequence
    }

    fn genesis_txn(
        &mut self,
        fee_id: FeeId,
        kind: TxnKind,
        amount: Money,
        vendor_id: Option<VendorTxnId>,
    ) -> GenesisTxn {
        let source = if vendor_id.is_some() {
            TxnSource::CommunityPass
        } else {
            TxnSource::Genesis
        };
        GenesisTxn {
            id: self.genesis.txns.len() as i64 + 1,
            fee_id,
            kind,
            amount,
            method: "cash".to_string(),
            source,
            vendor_txn_id: vendor_id,
            posted_at: self.tick(),
        }
    }

    fn vendor_txn(&mut self, fee_id: FeeId, kind: TxnKind, amount: Money) -> VendorTxn {
        let sequence = self.next_sequence();
        VendorTxn {
            id: VendorTxnId(format!("v{sequence}")),
            sequence,
            genesis_fee_id: Some(fee_id),
            vendor_fee_id: format!("cp-{fee_id}"),
            student_id: None,
            kind,
            amount,
            method: "card".to_string(),
            occurred_at: self.tick(),
            reverses: None,
        }
    }

    fn manual(&mut self, fee_id: FeeId, kind: TxnKind, amount: Money) {
        let txn = self.genesis_txn(fee_id, kind, amount, None);
        self.genesis.txns.push(txn);
    }

    /// A Community Pass transaction, also posted in Genesis when `settled`.
    fn cp(&mut self, fee_id: FeeId, kind: TxnKind, amount: Money, settled: bool) -> VendorTxn {
        let txn = self.vendor_txn(fee_id, kind, amount);
        self.vendor.txns.push(txn.clone());
        if settled {
            let posting = self.genesis_txn(fee_id, kind, amount, Some(txn.id.clone()));
            self.genesis.txns.push(posting);
        }
        txn
    }

    fn genesis_fee(&mut self, fee_id: FeeId) -> Option<&mut GenesisFee> {
        self.genesis.fees.iter_mut().find(|fee| fee.id == fee_id)
    }

    fn vendor_fee(&mut self, fee_id: FeeId) -> Option<&mut VendorFee> {
        self.vendor
            .fees
            .iter_mut()
            .find(|fee| fee.genesis_fee_id == fee_id)
    }

    fn link(&mut self, fee_id: FeeId) -> &mut FeeLink {
        self.genesis
            .links
            .iter_mut()
            .find(|link| link.fee_id == fee_id)
            .unwrap()
    }

    fn txns_of(&self, fee_id: FeeId) -> impl Iterator<Item = &GenesisTxn> {
        self.genesis
            .txns
            .iter()
            .filter(move |txn| txn.fee_id == fee_id)
    }

    fn vendor_txns_of(&self, fee_id: FeeId) -> Vec<VendorTxn> {
        self.vendor
            .txns
            .iter()
            .filter(|txn| txn.genesis_fee_id == Some(fee_id))
            .cloned()
            .collect()
    }

    fn balance_of(&self, fee_id: FeeId) -> Money {
        let fee = self
            .genesis
            .fees
            .iter()
            .find(|fee| fee.id == fee_id)
            .unwrap();
        genesis_balance(fee.amount, self.txns_of(fee_id))
    }

    fn payment_applied(&self, fee_id: FeeId) -> bool {
        self.vendor_txns_of(fee_id)
            .iter()
            .any(|txn| txn.kind == TxnKind::Payment)
    }
}

fn percent_of(amount: Money, percent: i64) -> Money {
    cents((amount.cents() * percent / 100).max(1))
}

fn add_genesis_fee(world: &mut World, fee_id: FeeId, spec: &FeeSpec) {
    let (category, school, fee_date) = match spec.unmanaged {
        None => (
            "ATH",
            "HS",
            day("2024-09-01") + chrono::Duration::days(fee_id.0 % 60),
        ),
        Some(0) => ("BUS", "HS", day("2024-10-01")),
        Some(1) => ("LIB", "ES", day("2024-10-01")),
        Some(_) => ("LIB", "MS", day("2024-08-01")),
    };
    let at = world.tick();
    world.genesis.fees.push(GenesisFee {
        id: fee_id,
        student_id: StudentId(spec.student),
        category: category.to_string(),
        school: school.to_string(),
        description: format!("fee {fee_id}"),
        amount: cents(spec.amount_cents),
        fee_date,
        due_date: None,
        status: FeeStatus::Open,
        created_at: at,
        modified_at: at,
    });
}

/// Plays one history step on both sides, keeping them in agreement.
fn play(world: &mut World, fee_id: FeeId, event: Event, percent: i64) {
    let balance = world.balance_of(fee_id);
    let refundable = refundable_payment(world, fee_id);
    match event {
        Event::ManualPayment if balance.is_positive() => {
            world.manual(fee_id, TxnKind::Payment, percent_of(balance, percent))
        }
        Event::ManualWaiver if balance.is_positive() => {
            world.manual(fee_id, TxnKind::Waiver, percent_of(balance, percent))
        }
        Event::CpPayment if balance.is_positive() => {
            world.cp(fee_id, TxnKind::Payment, percent_of(balance, percent), true);
        }
        Event::CpWaiver if balance.is_positive() => {
            world.cp(fee_id, TxnKind::Waiver, percent_of(balance, percent), true);
        }
        Event::CpRefund => {
            if let Some((_, amount)) = refundable {
                world.cp(
                    fee_id,
                    TxnKind::Refund,
                    percent_of(amount, percent).min(amount),
                    true,
                );
            }
        }
        Event::CpReversal => {
            if let Some((payment_id, amount)) = refundable {
                let mut txn = world.cp(fee_id, TxnKind::Reversal, amount, true);
                txn.reverses = Some(payment_id);
                *world.vendor.txns.last_mut().unwrap() = txn;
            }
        }
        _ => {}
    }
}

/// A Community Pass payment of the fee and how much of the fee's paid money
/// is not yet refunded or reversed (bounded by that payment's amount).
fn refundable_payment(world: &World, fee_id: FeeId) -> Option<(VendorTxnId, Money)> {
    let txns = world.vendor_txns_of(fee_id);
    let net: Money = txns
        .iter()
        .map(|txn| match txn.kind {
            TxnKind::Payment => txn.amount,
            TxnKind::Refund | TxnKind::Reversal => -txn.amount,
            TxnKind::Waiver => Money::ZERO,
        })
        .sum();
    let payment = txns.iter().rev().find(|txn| txn.kind == TxnKind::Payment)?;
    let amount = net.min(payment.amount);
    amount.is_positive().then(|| (payment.id.clone(), amount))
}

fn close(world: &mut World, fee_id: FeeId, closing: Closing) {
    let untouched = world.txns_of(fee_id).next().is_none();
    match closing {
        Closing::Open => {}
        Closing::VoidIfUntouched if untouched => {
            world.genesis_fee(fee_id).unwrap().status = FeeStatus::Void
        }
        Closing::VoidIfUntouched => {}
        Closing::WaiveRemainder => {
            let balance = world.balance_of(fee_id);
            if balance.is_positive() {
                world.manual(fee_id, TxnKind::Waiver, balance);
            }
            world.genesis_fee(fee_id).unwrap().status = FeeStatus::Waived;
        }
    }
}

/// The status Community Pass shows, written independently of the crate.
fn shown_status(status: FeeStatus, balance: Money) -> VendorFeeStatus {
    match status {
        FeeStatus::Void => VendorFeeStatus::Void,
        FeeStatus::Waived => VendorFeeStatus::Waived,
        FeeStatus::Open if balance.is_positive() => VendorFeeStatus::Open,
        FeeStatus::Open => VendorFeeStatus::Paid,
    }
}

/// Creates the Community Pass fee and the link exactly as a past push and
/// the pulled transactions left them.
fn publish(world: &mut World, fee_id: FeeId) {
    let fee = world
        .genesis
        .fees
        .iter()
        .find(|fee| fee.id == fee_id)
        .unwrap()
        .clone();
    let credit: Money = world
        .txns_of(fee_id)
        .filter(|txn| txn.vendor_txn_id.is_none())
        .map(|txn| -txn.kind.balance_effect(txn.amount))
        .sum();
    let mut sums = BTreeMap::new();
    for txn in world.vendor_txns_of(fee_id) {
        *sums.entry(txn.kind).or_insert(Money::ZERO) += txn.amount;
    }
    let sum = |kind| sums.get(&kind).copied().unwrap_or(Money::ZERO);
    let (paid, refunded, waived, reversed) = (
        sum(TxnKind::Payment),
        sum(TxnKind::Refund),
        sum(TxnKind::Waiver),
        sum(TxnKind::Reversal),
    );
    let balance = fee.amount - credit - paid - waived + refunded + reversed;
    world.vendor.fees.push(VendorFee {
        genesis_fee_id: fee_id,
        vendor_fee_id: format!("cp-{fee_id}"),
        student_id: fee.student_id,
        patron_id: fee.student_id.to_string(),
        category: fee.category.clone(),
        school: fee.school.clone(),
        description: fee.description.clone(),
        amount: fee.amount,
        genesis_credit: credit,
        paid,
        refunded,
        waived,
        reversed,
        balance,
        status: shown_status(fee.status, balance),
        fee_date: fee.fee_date,
        due_date: fee.due_date,
        updated_at: fee.modified_at,
        guardian_ids: Vec::new(),
        revision: 1,
    });
    let locked = world.payment_applied(fee_id);
    world.genesis.links.push(FeeLink {
        fee_id,
        vendor_fee_id: Some(format!("cp-{fee_id}")),
        pushed_amount: Some(fee.amount),
        pushed_status: Some(fee.status),
        pushed_credit: Some(credit),
        amount_locked: locked,
    });
}

fn build(spec: &WorldSpec) -> World {
    let mut world = World::default();
    for (position, fee_spec) in spec.fees.iter().enumerate() {
        let fee_id = FeeId(position as i64 + 1);
        add_genesis_fee(&mut world, fee_id, fee_spec);
        if fee_spec.unmanaged.is_some() {
            world.unmanaged.insert(fee_id);
            continue;
        }
        for (event, percent) in &fee_spec.events {
            play(&mut world, fee_id, *event, *percent);
        }
        close(&mut world, fee_id, fee_spec.closing);
        publish(&mut world, fee_id);
    }
    for (position, fee_spec) in spec.fees.iter().enumerate() {
        let fee_id = FeeId(position as i64 + 1);
        if fee_spec.unmanaged.is_none() {
            if let Some(kind) = drift(
                &mut world,
                fee_id,
                fee_spec.drift,
                cents(fee_spec.drift_cents),
            ) {
                world.expected.insert(Some(fee_id), kind);
            }
        }
    }
    add_orphans(&mut world, spec);
    world
}

// ----- drift ------------------------------------------------------------------------

/// Injects one drift into a fee in agreement; returns the kind the core must
/// report for the fee, or `None` when the fee must stay quiet.
fn drift(world: &mut World, fee_id: FeeId, drift: Drift, size: Money) -> Option<K> {
    let locked = world.payment_applied(fee_id);
    let status = world.genesis_fee(fee_id).unwrap().status;
    let first_vendor_txn = world.vendor_txns_of(fee_id).into_iter().next();
    let first_posting = world
        .txns_of(fee_id)
        .position(|txn| txn.vendor_txn_id.is_some());
    let fee_amount = world.genesis_fee(fee_id).unwrap().amount;
    match drift {
        Drift::None => None,
        Drift::Unsent if first_vendor_txn.is_none() && status == FeeStatus::Open => {
            world.vendor.fees.retain(|fee| fee.genesis_fee_id != fee_id);
            *world.link(fee_id) = FeeLink::unsent(fee_id);
            Some(K::FeeMissingInCp)
        }
        Drift::EditAmount => {
            world.genesis_fee(fee_id).unwrap().amount += size;
            Some(if locked {
                K::AmountEditedAfterPayment
            } else {
                K::FeeOutOfDate
            })
        }
        Drift::Void if status != FeeStatus::Void => {
            world.genesis_fee(fee_id).unwrap().status = FeeStatus::Void;
            Some(if locked {
                K::FeeVoidedAfterPayment
            } else {
                K::FeeVoidedInGenesis
            })
        }
        Drift::ManualPayment => {
            world.manual(fee_id, TxnKind::Payment, size);
            Some(K::GenesisCreditNotReflected)
        }
        Drift::ManualWaiver => {
            world.manual(fee_id, TxnKind::Waiver, size);
            Some(K::GenesisWaiverNotReflected)
        }
        Drift::CpPayment => {
            let txn = unpulled(world, fee_id, TxnKind::Payment, size);
            if size.cents() % 2 == 1 {
                world.vendor.txns.push(txn); // delivered twice, identically
            }
            Some(if size < fee_amount {
                K::CpPartialPaymentMissingInGenesis
            } else {
                K::CpPaymentMissingInGenesis
            })
        }
        Drift::CpRefund | Drift::CpReversal => {
            let (_, refundable) = refundable_payment(world, fee_id)?;
            let (kind, expected) = if drift == Drift::CpRefund {
                (TxnKind::Refund, K::CpRefundMissingInGenesis)
            } else {
                (TxnKind::Reversal, K::CpReversalMissingInGenesis)
            };
            unpulled(world, fee_id, kind, size.min(refundable));
            Some(expected)
        }
        Drift::CpWaiver => {
            unpulled(world, fee_id, TxnKind::Waiver, size);
            Some(K::CpWaiverMissingInGenesis)
        }
        Drift::IdenticalRedelivery => {
            let mut again = first_vendor_txn?;
            again.sequence = world.next_sequence();
            world.vendor.txns.push(again);
            None
        }
        Drift::ConflictingRedelivery => {
            let mut conflicting = first_vendor_txn?;
            conflicting.amount += cents(1);
            world.vendor.txns.push(conflicting);
            Some(K::DuplicateTxnCp)
        }
        Drift::GenesisDoublePost => {
            let original = world.txns_of(fee_id).nth(first_posting?).unwrap().clone();
            let copy = world.genesis_txn(
                fee_id,
                original.kind,
                original.amount,
                original.vendor_txn_id,
            );
            world.genesis.txns.push(copy);
            Some(K::DuplicateTxnGenesis)
        }
        Drift::GenesisUnknownVendorTxn => {
            let ghost = Some(VendorTxnId(format!("ghost-{fee_id}")));
            let txn = world.genesis_txn(fee_id, TxnKind::Payment, size, ghost);
            world.genesis.txns.push(txn);
            Some(K::GenesisTxnUnknownToCp)
        }
        Drift::DeleteGenesisFee => {
            let vendor = world.vendor_fee(fee_id).unwrap().clone();
            let money_moved = first_vendor_txn.is_some()
                || vendor.waived.is_positive()
                || vendor.refunded.is_positive()
                || vendor.reversed.is_positive();
            world.genesis.fees.retain(|fee| fee.id != fee_id);
            world.genesis.txns.retain(|txn| txn.fee_id != fee_id);
            if locked {
                Some(K::FeeDeletedAfterPayment)
            } else if money_moved {
                Some(K::CpFeeWithoutGenesisFee)
            } else if vendor.status == VendorFeeStatus::Void {
                None // deleted here, void there: nothing for a parent to see
            } else {
                Some(K::FeeDeletedInGenesis) // voided in Community Pass
            }
        }
        Drift::EditDescription => {
            world.genesis_fee(fee_id).unwrap().description = "Renamed in Genesis".to_string();
            Some(K::FeeDetailsOutOfDate)
        }
        Drift::MoveToOtherStudent if status == FeeStatus::Open => {
            world.genesis_fee(fee_id).unwrap().student_id = StudentId(99);
            Some(if locked {
                K::PaidFeeMovedToAnotherStudent
            } else {
                K::FeeDetailsOutOfDate
            })
        }
        Drift::DeselectCategory => {
            world.genesis_fee(fee_id).unwrap().category = "BUS".to_string();
            Some(K::SentButIneligible)
        }
        Drift::MoveBeforeCutoff => {
            world.genesis_fee(fee_id).unwrap().fee_date = day("2024-08-20");
            Some(K::SentButIneligible)
        }
        Drift::CorruptCpBalance => {
            world.vendor_fee(fee_id).unwrap().balance += cents(1);
            world.manual(fee_id, TxnKind::Payment, size); // a push must still wait
            Some(K::ConservationViolation)
        }
        Drift::PostedAmountChanged => {
            let index = world
                .genesis
                .txns
                .iter()
                .position(|txn| txn.fee_id == fee_id && txn.vendor_txn_id.is_some())?;
            world.genesis.txns[index].amount += size;
            Some(K::TxnAmountMismatch)
        }
        Drift::PostedToOtherFee => {
            let index = world
                .genesis
                .txns
                .iter()
                .position(|txn| txn.fee_id == fee_id && txn.vendor_txn_id.is_some())?;
            let elsewhere = FeeId(800 + fee_id.0);
            world.genesis.txns[index].fee_id = elsewhere;
            world.unmanaged.insert(elsewhere);
            Some(K::TxnFeeMismatch)
        }
        Drift::LockLost if locked => {
            world.link(fee_id).amount_locked = false;
            Some(K::AmountNotLocked)
        }
        Drift::CpLostPaidFee if locked => {
            world.vendor.fees.retain(|fee| fee.genesis_fee_id != fee_id);
            Some(K::PaidFeeMissingInCp)
        }
        Drift::WaiveInGenesis if status == FeeStatus::Open => {
            let balance = world.balance_of(fee_id);
            if balance.is_positive() {
                world.manual(fee_id, TxnKind::Waiver, balance);
            }
            world.genesis_fee(fee_id).unwrap().status = FeeStatus::Waived;
            Some(K::FeeWaivedInGenesis)
        }
        Drift::CpOverpayment => {
            let balance = world.balance_of(fee_id).max(Money::ZERO);
            unpulled(world, fee_id, TxnKind::Payment, balance + size);
            Some(K::OverpaymentCredit)
        }
        Drift::CpDuplicateFee => {
            let copy = world.vendor_fee(fee_id).unwrap().clone();
            world.vendor.fees.push(copy);
            Some(K::DuplicateFee)
        }
        Drift::FeeVanished => {
            world.genesis.fees.retain(|fee| fee.id != fee_id);
            world.vendor.fees.retain(|fee| fee.genesis_fee_id != fee_id);
            world
                .vendor
                .txns
                .retain(|txn| txn.genesis_fee_id != Some(fee_id));
            world
                .genesis
                .txns
                .retain(|txn| txn.fee_id != fee_id || txn.vendor_txn_id.is_none());
            world.txns_of(fee_id).next()?;
            Some(K::GenesisTxnWithoutFee)
        }
        Drift::Unsent
        | Drift::Void
        | Drift::LockLost
        | Drift::CpLostPaidFee
        | Drift::WaiveInGenesis
        | Drift::MoveToOtherStudent => None,
    }
}

/// A Community Pass transaction applied in Community Pass, not yet pulled.
fn unpulled(world: &mut World, fee_id: FeeId, kind: TxnKind, amount: Money) -> VendorTxn {
    let txn = world.cp(fee_id, kind, amount, false);
    let fee = world.vendor_fee(fee_id).unwrap();
    match kind {
        TxnKind::Payment => fee.paid += amount,
        TxnKind::Refund => fee.refunded += amount,
        TxnKind::Waiver => fee.waived += amount,
        TxnKind::Reversal => fee.reversed += amount,
    }
    fee.balance =
        fee.amount - fee.genesis_credit - fee.paid - fee.waived + fee.refunded + fee.reversed;
    if matches!(fee.status, VendorFeeStatus::Open | VendorFeeStatus::Paid) {
        fee.status = shown_status(FeeStatus::Open, fee.balance);
    }
    txn
}

fn add_orphans(world: &mut World, spec: &WorldSpec) {
    if spec.orphan_cp_fee {
        let template = orphan_fee(FeeId(900));
        world.vendor.fees.push(template);
        world
            .expected
            .insert(Some(FeeId(900)), K::CpFeeWithoutGenesisFee);
    }
    if spec.orphan_cp_txn {
        let txn = world.vendor_txn(FeeId(950), TxnKind::Payment, cents(700));
        world.vendor.txns.push(txn);
        world
            .expected
            .insert(Some(FeeId(950)), K::UnprocessedVendorTxn);
    }
    if spec.unkeyed_cp_txn {
        let mut txn = world.vendor_txn(FeeId(0), TxnKind::Payment, cents(300));
        txn.genesis_fee_id = None;
        txn.vendor_fee_id = "cp-unknown".to_string();
        // A payment on a fee that exists only in Community Pass: never
        // synced, so it is not a Genesis discrepancy (nothing expected).
        world.vendor.txns.push(txn);
    }
}

fn orphan_fee(fee_id: FeeId) -> VendorFee {
    VendorFee {
        genesis_fee_id: fee_id,
        vendor_fee_id: format!("cp-{fee_id}"),
        student_id: StudentId(1),
        patron_id: "1".to_string(),
        category: "ATH".to_string(),
        school: "HS".to_string(),
        description: "orphan".to_string(),
        amount: cents(1000),
        genesis_credit: Money::ZERO,
        paid: Money::ZERO,
        refunded: Money::ZERO,
        waived: Money::ZERO,
        reversed: Money::ZERO,
        balance: cents(1000),
        status: VendorFeeStatus::Open,
        fee_date: day("2024-10-01"),
        due_date: None,
        updated_at: day("2024-10-01").and_hms_opt(0, 0, 0).unwrap(),
        guardian_ids: Vec::new(),
        revision: 1,
    }
}

// ----- the properties ----------------------------------------------------------------

fn run(world: &World) -> Reconciliation {
    reconcile(
        &world.genesis,
        &world.vendor,
        &policy(),
        &Scope::everything(),
    )
}

fn kinds_by_key(result: &Reconciliation) -> BTreeMap<Option<FeeId>, BTreeSet<K>> {
    let mut kinds: BTreeMap<Option<FeeId>, BTreeSet<K>> = BTreeMap::new();
    for item in &result.discrepancies {
        kinds.entry(item.fee_id).or_default().insert(item.kind);
    }
    kinds
}

type ReviewKey = (Option<FeeId>, K, Option<VendorTxnId>);

fn review_keys(result: &Reconciliation) -> Vec<ReviewKey> {
    result
        .reviews()
        .map(|item| (item.fee_id, item.kind, item.vendor_txn_id.clone()))
        .collect()
}

/// The injected kind is found on its key, and every other key is quiet.
fn finds_exactly_the_drift(world: &World, result: &Reconciliation) -> Result<(), TestCaseError> {
    let found = kinds_by_key(result);
    for (key, kind) in &world.expected {
        let on_key = found.get(key).cloned().unwrap_or_default();
        prop_assert!(
            on_key.contains(kind),
            "key {:?}: expected {:?}, found {:?}",
            key,
            kind,
            on_key
        );
    }
    for (key, kinds) in &found {
        prop_assert!(
            world.expected.contains_key(key),
            "quiet key {:?} reported {:?}",
            key,
            kinds
        );
    }
    Ok(())
}

/// Records in, counted independently from the world.
fn expected_records_in(world: &World) -> (u64, u64) {
    let managed = |fee_id: FeeId| !world.unmanaged.contains(&fee_id);
    let genesis_fees = world
        .genesis
        .fees
        .iter()
        .filter(|fee| managed(fee.id))
        .count();
    let genesis_txns = world
        .genesis
        .txns
        .iter()
        .filter(|txn| managed(txn.fee_id))
        .count();
    let vendor = world.vendor.fees.len() + world.vendor.txns.len();
    ((genesis_fees + genesis_txns) as u64, vendor as u64)
}

fn accounts_for_every_record(world: &World, result: &Reconciliation) -> Result<(), TestCaseError> {
    check_accounting(&result.accounting).map_err(|error| TestCaseError::fail(error.to_string()))?;
    let (genesis_in, vendor_in) = expected_records_in(world);
    prop_assert_eq!(result.accounting.genesis.records_in, genesis_in);
    prop_assert_eq!(result.accounting.community_pass.records_in, vendor_in);
    Ok(())
}

fn posting_counts(genesis: &GenesisSnapshot) -> BTreeMap<VendorTxnId, usize> {
    let mut counts = BTreeMap::new();
    for id in genesis
        .txns
        .iter()
        .filter_map(|txn| txn.vendor_txn_id.clone())
    {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Nothing already in Genesis is posted again, nothing new is posted twice,
/// and every Community Pass transaction not under review is in Genesis once.
fn posts_each_vendor_txn_once(
    before: &World,
    after: &GenesisSnapshot,
    result: &Reconciliation,
) -> Result<(), TestCaseError> {
    let counts_before = posting_counts(&before.genesis);
    let counts_after = posting_counts(after);
    for (id, count) in &counts_after {
        let earlier = counts_before.get(id).copied().unwrap_or(0);
        prop_assert!(
            *count == earlier || (earlier == 0 && *count == 1),
            "{} posted {} times",
            id,
            count
        );
    }
    let under_review: BTreeSet<&VendorTxnId> = result
        .reviews()
        .filter_map(|item| item.vendor_txn_id.as_ref())
        .collect();
    let community_pass_only = |txn: &VendorTxn| {
        txn.genesis_fee_id.is_none()
            && !before
                .vendor
                .fees
                .iter()
                .any(|fee| fee.vendor_fee_id == txn.vendor_fee_id)
    };
    for txn in &before.vendor.txns {
        if community_pass_only(txn) {
            // On a fee that exists only in Community Pass: never synced.
            prop_assert_eq!(counts_after.get(&txn.id), None, "{} posted", &txn.id);
        } else if !under_review.contains(&txn.id) {
            prop_assert_eq!(
                counts_after.get(&txn.id).copied(),
                Some(1),
                "payment {} lost",
                &txn.id
            );
        }
    }
    Ok(())
}

/// Per fee and in total, conservation holds after apply (except where the
/// drift broke Community Pass's own figures), and every fee left without a
/// review item shows the same amount, credit and balance on both sides.
fn both_sides_agree(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    again: &Reconciliation,
) -> Result<(), TestCaseError> {
    let reviewed: BTreeSet<Option<FeeId>> = again.reviews().map(|item| item.fee_id).collect();
    let broken: BTreeSet<Option<FeeId>> = again
        .reviews()
        .filter(|item| item.kind == K::ConservationViolation)
        .map(|item| item.fee_id)
        .collect();
    if broken.is_empty() {
        check_conservation(&again.totals, vendor)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
    }
    for fee in &vendor.fees {
        if !broken.contains(&Some(fee.genesis_fee_id)) {
            prop_assert_eq!(fee.balance, vendor_identity_balance(fee));
        }
    }
    for fee in &genesis.fees {
        if reviewed.contains(&Some(fee.id)) {
            continue;
        }
        let Some(shown) = vendor
            .fees
            .iter()
            .find(|shown| shown.genesis_fee_id == fee.id)
        else {
            continue; // never sent: unmanaged, or void/waived before sending
        };
        let txns = genesis.txns.iter().filter(|txn| txn.fee_id == fee.id);
        prop_assert_eq!(fee.amount, shown.amount);
        prop_assert_eq!(
            genesis_balance(fee.amount, txns),
            shown.balance,
            "fee {}",
            fee.id
        );
    }
    Ok(())
}

/// DESIGN.md §3 on the plan itself: only eligible fees are pushed, never a
/// fee dated before the cutoff, and never a changed amount once Community
/// Pass applied a payment.
fn plan_respects_the_rules(world: &World, result: &Reconciliation) -> Result<(), TestCaseError> {
    let policy = policy();
    for action in result.plan() {
        let Action::PushFee { fee_id } = action else {
            continue;
        };
        let fee = world.genesis.fees.iter().find(|fee| fee.id == fee_id);
        // The one push of a fee Genesis no longer has: the void of an
        // unpaid fee deleted in Genesis (DESIGN.md §6).
        let void_of_deleted = fee.is_none()
            && !world.payment_applied(fee_id)
            && world
                .vendor
                .fees
                .iter()
                .any(|fee| fee.genesis_fee_id == fee_id);
        prop_assert!(
            void_of_deleted || fee.is_some_and(|fee| policy.eligibility(fee).is_ok()),
            "pushes ineligible fee {}",
            fee_id
        );
        let shown = world
            .vendor
            .fees
            .iter()
            .find(|shown| shown.genesis_fee_id == fee_id);
        if let (Some(fee), Some(shown)) = (fee, shown) {
            let paid = world.payment_applied(fee_id) || shown.paid.is_positive();
            prop_assert!(
                !paid || fee.amount == shown.amount,
                "pushes an edited paid amount for fee {}",
                fee_id
            );
        }
    }
    Ok(())
}

fn same_output_with_any_threads(
    world: &World,
    result: &Reconciliation,
) -> Result<(), TestCaseError> {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let policy = policy();
    let scope = Scope::everything();
    let single = pool(1)
        .install(|| reconcile_in_partitions(&world.genesis, &world.vendor, &policy, &scope, 1000));
    let many = pool(4)
        .install(|| reconcile_in_partitions(&world.genesis, &world.vendor, &policy, &scope, 1));
    prop_assert_eq!(&single, result);
    prop_assert_eq!(&many, result);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reconciliation_properties(spec in world_spec()) {
        let world = build(&spec);
        let result = run(&world);
        finds_exactly_the_drift(&world, &result)?;
        accounts_for_every_record(&world, &result)?;
        same_output_with_any_threads(&world, &result)?;
        plan_respects_the_rules(&world, &result)?;

        let (genesis, vendor) = apply_plan(&world.genesis, &world.vendor, &result.plan());
        let again = reconcile(&genesis, &vendor, &policy(), &Scope::everything());
        prop_assert!(again.plan().is_empty(), "second run plans {:?}", again.plan());
        let modelled = totals_after_plan(&world.genesis, &world.vendor, &result.plan(), &policy(), &Scope::everything(), result.totals);
        prop_assert_eq!(modelled, again.totals, "the totals modelled from the touched fees alone");
        prop_assert_eq!(review_keys(&again), review_keys(&result));
        check_accounting(&again.accounting).map_err(|error| TestCaseError::fail(error.to_string()))?;
        posts_each_vendor_txn_once(&world, &genesis, &result)?;
        both_sides_agree(&genesis, &vendor, &again)?;
    }

    #[test]
    fn a_world_in_agreement_is_all_matched(spec in world_spec()) {
        let mut spec = spec;
        for fee in &mut spec.fees {
            fee.drift = Drift::None;
        }
        spec.orphan_cp_fee = false;
        spec.orphan_cp_txn = false;
        spec.unkeyed_cp_txn = false;
        let world = build(&spec);
        let result = run(&world);
        prop_assert!(result.discrepancies.is_empty(), "{:?}", result.discrepancies);
        let accounting = result.accounting;
        prop_assert_eq!(accounting.genesis.matched, accounting.genesis.records_in);
        prop_assert_eq!(accounting.community_pass.matched, accounting.community_pass.records_in);
        prop_assert_eq!(result.totals.genesis, result.totals.community_pass);
        check_conservation(&result.totals, &world.vendor).map_err(|error| TestCaseError::fail(error.to_string()))?;
    }
}

/// The generator injects every kind the drift table names, so no property
/// above holds merely because a kind never occurs.
#[test]
fn drift_generator_covers_every_injected_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut injected = BTreeSet::new();
    for _ in 0..400 {
        let spec = world_spec().new_tree(&mut runner).unwrap().current();
        injected.extend(build(&spec).expected.into_values());
    }
    let all: BTreeSet<K> = cpsync::reconcile::DiscrepancyKind::ALL
        .iter()
        .copied()
        .collect();
    let never: Vec<&K> = all.difference(&injected).collect();
    assert!(never.is_empty(), "never injected: {never:?}");
}
