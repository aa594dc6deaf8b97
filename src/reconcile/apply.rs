//! A pure model of what the shell does with a plan: post vendor transactions
//! into Genesis, set amount locks, upsert fees into Community Pass (which
//! recomputes the balance by its invariant). Tests use it to check that a
//! plan, once applied, leaves nothing to do.
//!
//! The model is deliberately not idempotent: posting a transaction twice
//! makes two Genesis rows, so a plan that would double-post shows up.

use crate::domain::{
    FeeId, FeeStatus, GenesisFee, GenesisTxn, TxnSource, VendorFee, VendorFeeStatus, VendorTxn,
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
        .cloned()
        .expect("the plan pushes only fees that exist in Genesis");
    let credit = genesis_credit(genesis.txns.iter().filter(|txn| txn.fee_id == fee_id));
    let vendor_fee = upsert_vendor_fee(vendor, &fee, credit);
    let vendor_fee_id = vendor_fee.vendor_fee_id.clone();
    let link = link_mut(genesis, fee_id);
    link.vendor_fee_id = Some(vendor_fee_id);
    link.pushed_amount = Some(fee.amount);
    link.pushed_status = Some(fee.status);
    link.pushed_credit = Some(credit);
}

/// Community Pass's side of a fee upsert keyed by the Genesis fee id.
fn upsert_vendor_fee<'v>(
    vendor: &'v mut VendorSnapshot,
    fee: &GenesisFee,
    credit: Money,
) -> &'v VendorFee {
    let position = match vendor
        .fees
        .iter()
        .position(|known| known.genesis_fee_id == fee.id)
    {
        Some(position) => position,
        None => {
            vendor.fees.push(new_vendor_fee(fee));
            vendor.fees.len() - 1
        }
    };
    let vendor_fee = &mut vendor.fees[position];
    vendor_fee.amount = fee.amount;
    vendor_fee.genesis_credit = credit;
    vendor_fee.category = fee.category.clone();
    vendor_fee.school = fee.school.clone();
    vendor_fee.description = fee.description.clone();
    vendor_fee.fee_date = fee.fee_date;
    vendor_fee.due_date = fee.due_date;
    vendor_fee.balance = vendor_identity_balance(vendor_fee);
    vendor_fee.status = vendor_status(fee.status, vendor_fee.balance);
    vendor_fee.updated_at = fee.modified_at;
    vendor_fee
}

/// A fee Community Pass has not seen: nothing paid yet. The model uses the
/// student id as patron id; the shell applies the district's patron rule.
fn new_vendor_fee(fee: &GenesisFee) -> VendorFee {
    VendorFee {
        genesis_fee_id: fee.id,
        vendor_fee_id: format!("cp-{}", fee.id),
        student_id: fee.student_id,
        patron_id: fee.student_id.to_string(),
        category: fee.category.clone(),
        school: fee.school.clone(),
        description: fee.description.clone(),
        amount: fee.amount,
        genesis_credit: Money::ZERO,
        paid: Money::ZERO,
        refunded: Money::ZERO,
        waived: Money::ZERO,
        reversed: Money::ZERO,
        balance: fee.amount,
        status: VendorFeeStatus::Open,
        fee_date: fee.fee_date,
        due_date: fee.due_date,
        updated_at: fee.modified_at,
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
