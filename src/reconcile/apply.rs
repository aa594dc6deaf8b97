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

use chrono::NaiveDateTime;

use crate::domain::{
    FeeId, FeePush, FeeStatus, GenesisFee, GenesisTxn, GuardianId, TxnSource, VendorFee,
    VendorFeeStatus, VendorTxn,
};
use crate::money::Money;

use super::case::genesis_credit;
use super::input::{FeeLink, GenesisSnapshot, VendorSnapshot};
use super::output::Action;
use super::rules::vendor_identity_balance;

/// Both snapshots as they would be after the shell applied `plan` in order.
pub fn apply_plan(
    genesis: &GenesisSnapshot,
    vendor: &VendorSnapshot,
    plan: &[Action],
) -> (GenesisSnapshot, VendorSnapshot) {
    let mut genesis = genesis.clone();
    let mut vendor = vendor.clone();
    for action in plan {
        match action {
            Action::PostVendorTxn { fee_id, txn } => post_vendor_txn(&mut genesis, *fee_id, txn),
            Action::LockAmount { fee_id } => link_mut(&mut genesis, *fee_id).amount_locked = true,
            Action::PushFee { fee_id } => push_fee(&mut genesis, &mut vendor, *fee_id),
        }
    }
    (genesis, vendor)
}

fn post_vendor_txn(genesis: &mut GenesisSnapshot, fee_id: FeeId, txn: &VendorTxn) {
    let next_id = genesis
        .txns
        .iter()
        .map(|posted| posted.id)
        .max()
        .unwrap_or(0)
        + 1;
    genesis.txns.push(GenesisTxn {
        id: next_id,
        fee_id,
        kind: txn.kind,
        amount: txn.amount,
        method: txn.method.clone(),
        source: TxnSource::CommunityPass,
        vendor_txn_id: Some(txn.id.clone()),
        posted_at: txn.occurred_at,
    });
}

fn link_mut(genesis: &mut GenesisSnapshot, fee_id: FeeId) -> &mut FeeLink {
    let position = match genesis.links.iter().position(|link| link.fee_id == fee_id) {
        Some(position) => position,
        None => {
            genesis.links.push(FeeLink::unsent(fee_id));
            genesis.links.len() - 1
        }
    };
    &mut genesis.links[position]
}

fn push_fee(genesis: &mut GenesisSnapshot, vendor: &mut VendorSnapshot, fee_id: FeeId) {
    let fee = genesis
        .fees
        .iter()
        .find(|fee| fee.id == fee_id)
        .expect("the plan pushes only fees that exist in Genesis");
    let txns = genesis.txns.iter().filter(|txn| txn.fee_id == fee_id);
    let push = fee_push(fee, txns, fee.student_id.to_string(), Vec::new());
    let vendor_fee_id = upsert_vendor_fee(vendor, &push).vendor_fee_id.clone();
    let link = link_mut(genesis, fee_id);
    link.vendor_fee_id = Some(vendor_fee_id);
    link.pushed_amount = Some(push.amount);
    link.pushed_status = Some(push.status);
    link.pushed_credit = Some(push.genesis_credit);
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

/// Community Pass's side of a fee upsert keyed by the Genesis fee id.
fn upsert_vendor_fee<'v>(vendor: &'v mut VendorSnapshot, push: &FeePush) -> &'v VendorFee {
    let position = match vendor
        .fees
        .iter()
        .position(|known| known.genesis_fee_id == push.genesis_fee_id)
    {
        Some(position) => position,
        None => {
            vendor.fees.push(new_vendor_fee(push));
            vendor.fees.len() - 1
        }
    };
    let vendor_fee = &mut vendor.fees[position];
    vendor_fee.amount = push.amount;
    vendor_fee.genesis_credit = push.genesis_credit;
    vendor_fee.category = push.category.clone();
    vendor_fee.school = push.school.clone();
    vendor_fee.description = push.description.clone();
    vendor_fee.fee_date = push.fee_date;
    vendor_fee.due_date = push.due_date;
    vendor_fee.balance = vendor_identity_balance(vendor_fee);
    vendor_fee.status = vendor_status(push.status, vendor_fee.balance);
    vendor_fee
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
