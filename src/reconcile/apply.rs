//! A pure model of what the shell does with a plan: post vendor transactions
//! into Genesis, set amount locks, upsert fees into Community Pass (which
//! recomputes the balance by its invariant). Tests use it to check that a
//! plan, once applied, leaves nothing to do.
//!
//! The model uses the student id as patron id; the shell applies the
//! district's patron rule when it builds the `FeePush`. It does not model
//! Community Pass's clock: `updated_at` is left as it was.
//!
//! The model is deliberately not idempotent: posting a transaction twice
//! makes two Genesis rows, so a plan that would double-post shows up.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;

use crate::domain::{
    FeeId, FeePush, FeeStatus, GenesisFee, GenesisTxn, GuardianId, TxnSource, VendorFee,
    VendorFeeStatus, VendorTxn,
};
use crate::money::Money;

use super::case::genesis_credit;
use super::input::{FeeLink, GenesisSnapshot, Policy, Scope, VendorSnapshot};
use super::output::{Action, Totals};
use super::rules::vendor_identity_balance;

/// Both snapshots as they would be after the shell applied `plan` in order.
pub fn apply_plan(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    plan: &[Action],
) -> (GenesisSnapshot, VendorSnapshot) {
    let mut applier = Applier::new(genesis.clone(), vendor.clone());
    for action in plan {
        match action {
            Action::PostVendorTxn { fee_id, txn } => applier.post_vendor_txn(*fee_id, txn),
            Action::LockAmount { fee_id } => applier.link_mut(*fee_id).amount_locked = true,
            Action::PushFee { fee_id } => applier.push_fee(*fee_id),
        }
    }
    (applier.genesis, applier.vendor)
}

/// Each side's totals once `plan` is applied, from the totals `found` over
/// the same snapshots: totals add up fee by fee, so only the fees the plan
/// touches are modelled (their totals before and after replace each other).
/// Equal to the totals of `apply_plan` over the whole snapshots, at the
/// memory of the touched fees rather than a second copy of the district.
pub fn totals_after_plan(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    plan: &[Action],
    policy: &Policy,
    scope: &Scope,
    found: Totals,
) -> Totals {
    if plan.is_empty() {
        return found;
    }
    let touched: HashSet<FeeId> = plan.iter().map(Action::fee_id).collect();
    let (genesis, vendor) = only_fees(genesis, vendor, &touched);
    let before = super::totals_only(&genesis, &vendor, policy, scope);
    let (genesis, vendor) = apply_plan(&genesis, &vendor, plan);
    let after = super::totals_only(&genesis, &vendor, policy, scope);
    found.with_fees_replaced(&before, &after)
}

/// The records of both snapshots that belong to these fees (a transaction
/// naming no Genesis fee belongs to the fee its Community Pass fee id names,
/// as when grouping), and the parties of their students.
fn only_fees(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    fees: &HashSet<FeeId>,
) -> (GenesisSnapshot, VendorSnapshot) {
    let genesis_fees: Vec<GenesisFee> = genesis
        .fees
        .iter()
        .filter(|fee| fees.contains(&fee.id))
        .cloned()
        .collect();
    let vendor_fees: Vec<VendorFee> = vendor
        .fees
        .iter()
        .filter(|fee| fees.contains(&fee.genesis_fee_id))
        .cloned()
        .collect();
    let mut fee_keys = super::case::TxnFeeKeys::new(vendor);
    let vendor_txns = vendor
        .txns
        .iter()
        .filter(|txn| fee_keys.key_of(txn).is_some_and(|fee| fees.contains(&fee)))
        .cloned()
        .collect();
    let students: HashSet<_> = genesis_fees
        .iter()
        .map(|fee| fee.student_id)
        .chain(vendor_fees.iter().map(|fee| fee.student_id))
        .collect();
    let genesis = GenesisSnapshot {
        fees: genesis_fees,
        txns: genesis
            .txns
            .iter()
            .filter(|txn| fees.contains(&txn.fee_id))
            .cloned()
            .collect(),
        links: genesis
            .links
            .iter()
            .filter(|link| fees.contains(&link.fee_id))
            .cloned()
            .collect(),
        parties: genesis
            .parties
            .iter()
            .filter(|party| students.contains(&party.student_id))
            .cloned()
            .collect(),
    };
    let vendor = VendorSnapshot {
        fees: vendor_fees,
        txns: vendor_txns,
    };
    (genesis, vendor)
}

/// Both snapshots being changed, with the positions of what a plan touches
/// so that applying a large plan stays linear.
struct Applier {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    next_txn_id: i64,
    link_position: HashMap<FeeId, usize>,
    vendor_fee_position: HashMap<FeeId, usize>,
    genesis_fee_position: HashMap<FeeId, usize>,
    txn_positions: HashMap<FeeId, Vec<usize>>,
}

impl Applier {
    fn new(genesis: GenesisSnapshot, vendor: VendorSnapshot) -> Applier {
        let next_txn_id = genesis.txns.iter().map(|txn| txn.id).max().unwrap_or(0) + 1;
        let link_position = first_positions(genesis.links.iter().map(|link| link.fee_id));
        let vendor_fee_position = first_positions(vendor.fees.iter().map(|fee| fee.genesis_fee_id));
        let genesis_fee_position = first_positions(genesis.fees.iter().map(|fee| fee.id));
        let mut txn_positions: HashMap<FeeId, Vec<usize>> = HashMap::new();
        for (position, txn) in genesis.txns.iter().enumerate() {
            txn_positions.entry(txn.fee_id).or_default().push(position);
        }
        Applier {
            genesis,
            vendor,
            next_txn_id,
            link_position,
            vendor_fee_position,
            genesis_fee_position,
            txn_positions,
        }
    }

    fn post_vendor_txn(&mut self, fee_id: FeeId, txn: &VendorTxn) {
        self.txn_positions
            .entry(fee_id)
            .or_default()
            .push(self.genesis.txns.len());
        self.genesis.txns.push(GenesisTxn {
            id: self.next_txn_id,
            fee_id,
            kind: txn.kind,
            amount: txn.amount,
            method: txn.method.clone(),
            source: TxnSource::CommunityPass,
            vendor_txn_id: Some(txn.id.clone()),
            posted_at: txn.occurred_at,
        });
        self.next_txn_id += 1;
    }

    fn link_mut(&mut self, fee_id: FeeId) -> &mut FeeLink {
        let links = &mut self.genesis.links;
        let position = *self.link_position.entry(fee_id).or_insert_with(|| {
            links.push(FeeLink::unsent(fee_id));
            links.len() - 1
        });
        &mut self.genesis.links[position]
    }

    fn push_fee(&mut self, fee_id: FeeId) {
        let Some(position) = self.genesis_fee_position.get(&fee_id).copied() else {
            // Deleted in Genesis, unpaid: the shell voids Community Pass's record.
            let position = self.vendor_fee_position[&fee_id];
            self.vendor.fees[position].status = VendorFeeStatus::Void;
            return;
        };
        let fee = &self.genesis.fees[position];
        let positions = self
            .txn_positions
            .get(&fee_id)
            .map_or(&[][..], Vec::as_slice);
        let txns = positions
            .iter()
            .map(|position| &self.genesis.txns[*position]);
        let party = self
            .genesis
            .parties
            .iter()
            .find(|party| party.student_id == fee.student_id);
        let (patron, guardians) = party.map_or_else(
            || (fee.student_id.to_string(), Vec::new()),
            |party| (party.patron_id.clone(), party.guardian_ids.clone()),
        );
        let push = fee_push(fee, txns, patron, guardians);
        let vendor_fee_id = self.upsert_vendor_fee(&push);
        let link = self.link_mut(fee_id);
        link.vendor_fee_id = Some(vendor_fee_id);
        link.pushed_amount = Some(push.amount);
        link.pushed_status = Some(push.status);
        link.pushed_credit = Some(push.genesis_credit);
    }

    /// Community Pass's side of a fee upsert keyed by the Genesis fee id;
    /// returns Community Pass's id of the fee.
    fn upsert_vendor_fee(&mut self, push: &FeePush) -> String {
        let fees = &mut self.vendor.fees;
        let position = *self
            .vendor_fee_position
            .entry(push.genesis_fee_id)
            .or_insert_with(|| {
                fees.push(new_vendor_fee(push));
                fees.len() - 1
            });
        let vendor_fee = &mut self.vendor.fees[position];
        vendor_fee.student_id = push.student_id;
        vendor_fee.patron_id = push.patron_id.clone();
        vendor_fee.guardian_ids = push.guardian_ids.clone();
        vendor_fee.amount = push.amount;
        vendor_fee.genesis_credit = push.genesis_credit;
        vendor_fee.category = push.category.clone();
        vendor_fee.school = push.school.clone();
        vendor_fee.description = push.description.clone();
        vendor_fee.fee_date = push.fee_date;
        vendor_fee.due_date = push.due_date;
        vendor_fee.balance = vendor_identity_balance(vendor_fee);
        vendor_fee.status = vendor_status(push.status, vendor_fee.balance);
        vendor_fee.vendor_fee_id.clone()
    }
}

/// The position of the first occurrence of each key.
fn first_positions(keys: impl Iterator<Item = FeeId>) -> HashMap<FeeId, usize> {
    let mut positions = HashMap::new();
    for (position, key) in keys.enumerate() {
        positions.entry(key).or_insert(position);
    }
    positions
}

/// The body of the fee upsert for a planned `PushFee`: the fee as Genesis
/// holds it, with the credit of its Genesis-recorded transactions. The
/// patron and guardians come from the shell's patron rule.
pub fn fee_push<'t>(
    fee: &GenesisFee,
    txns_of_fee: impl Iterator<Item = &'t GenesisTxn>,
    patron_id: String,
    guardian_ids: Vec<GuardianId>,
) -> FeePush {
    FeePush {
        genesis_fee_id: fee.id,
        student_id: fee.student_id,
        patron_id,
        guardian_ids,
        category: fee.category.clone(),
        school: fee.school.clone(),
        description: fee.description.clone(),
        amount: fee.amount,
        genesis_credit: genesis_credit(txns_of_fee.filter(|txn| txn.fee_id == fee.id)),
        status: fee.status,
        fee_date: fee.fee_date,
        due_date: fee.due_date,
    }
}

/// A fee Community Pass has not seen: nothing paid yet.
fn new_vendor_fee(push: &FeePush) -> VendorFee {
    VendorFee {
        genesis_fee_id: push.genesis_fee_id,
        vendor_fee_id: format!("cp-{}", push.genesis_fee_id),
        student_id: push.student_id,
        patron_id: push.patron_id.clone(),
        category: push.category.clone(),
        school: push.school.clone(),
        description: push.description.clone(),
        amount: push.amount,
        genesis_credit: Money::ZERO,
        paid: Money::ZERO,
        refunded: Money::ZERO,
        waived: Money::ZERO,
        reversed: Money::ZERO,
        balance: push.amount,
        status: VendorFeeStatus::Open,
        fee_date: push.fee_date,
        due_date: push.due_date,
        updated_at: NaiveDateTime::default(),
        guardian_ids: push.guardian_ids.clone(),
        revision: 1,
    }
}

/// The status Community Pass shows for a pushed Genesis status.
pub fn vendor_status(status: FeeStatus, balance: Money) -> VendorFeeStatus {
    match status {
        FeeStatus::Void => VendorFeeStatus::Void,
        FeeStatus::Waived => VendorFeeStatus::Waived,
        FeeStatus::Open if balance.is_positive() => VendorFeeStatus::Open,
        FeeStatus::Open => VendorFeeStatus::Paid,
    }
}
