//! Groups both snapshots by Genesis fee id (the partition key) into one
//! `FeeCase` per fee, and builds the few global facts a partition needs about
//! other partitions: where each vendor transaction id occurs on either side.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{
    FeeId, GenesisFee, GenesisTxn, StudentId, TxnSource, VendorFee, VendorTxn, VendorTxnId,
};
use crate::money::Money;

use super::input::{FeeLink, GenesisSnapshot, Policy, Scope, VendorSnapshot};

/// One input record, by side and position in its snapshot vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RecordRef {
    GenesisFee(usize),
    GenesisTxn(usize),
    VendorFee(usize),
    VendorTxn(usize),
}

impl RecordRef {
    pub(crate) fn is_genesis(self) -> bool {
        matches!(self, RecordRef::GenesisFee(_) | RecordRef::GenesisTxn(_))
    }
}

/// Everything both sides hold about one fee id. The key `None` collects
/// Community Pass transactions that name no fee either side knows.
#[derive(Debug, Default)]
pub(crate) struct FeeCase<'a> {
    pub fee_id: Option<FeeId>,
    pub genesis_fees: Vec<(usize, &'a GenesisFee)>,
    pub link: Option<&'a FeeLink>,
    pub genesis_txns: Vec<(usize, &'a GenesisTxn)>,
    pub vendor_fees: Vec<(usize, &'a VendorFee)>,
    pub vendor_txns: Vec<(usize, &'a VendorTxn)>,
}

impl<'a> FeeCase<'a> {
    /// The one Genesis fee, when exactly one exists.
    pub fn genesis_fee(&self) -> Option<&'a GenesisFee> {
        match self.genesis_fees.as_slice() {
            [(_, fee)] => Some(fee),
            _ => None,
        }
    }

    /// The one Community Pass fee, when exactly one exists.
    pub fn vendor_fee(&self) -> Option<&'a VendorFee> {
        match self.vendor_fees.as_slice() {
            [(_, fee)] => Some(fee),
            _ => None,
        }
    }

    pub fn student_id(&self) -> Option<StudentId> {
        let from_genesis = self.genesis_fees.first().map(|(_, fee)| fee.student_id);
        let from_vendor = || self.vendor_fees.first().map(|(_, fee)| fee.student_id);
        let from_txn = || self.vendor_txns.iter().find_map(|(_, txn)| txn.student_id);
        from_genesis.or_else(from_vendor).or_else(from_txn)
    }

    /// Genesis transactions recorded in Genesis itself (no vendor id).
    pub fn manual_txns(&self) -> impl Iterator<Item = &(usize, &'a GenesisTxn)> {
        self.genesis_txns.iter().filter(|(_, txn)| is_manual(txn))
    }

    /// Net of the manual Genesis payments and waivers: what Community Pass
    /// must show as `genesis_credit`.
    pub fn genesis_credit(&self) -> Money {
        genesis_credit(self.genesis_txns.iter().map(|(_, txn)| *txn))
    }

    /// Every record of this case, for the accounting.
    pub fn records(&self) -> impl Iterator<Item = RecordRef> + '_ {
        let fees = self
            .genesis_fees
            .iter()
            .map(|(i, _)| RecordRef::GenesisFee(*i));
        let txns = self
            .genesis_txns
            .iter()
            .map(|(i, _)| RecordRef::GenesisTxn(*i));
        let vendor_fees = self
            .vendor_fees
            .iter()
            .map(|(i, _)| RecordRef::VendorFee(*i));
        let vendor_txns = self
            .vendor_txns
            .iter()
            .map(|(i, _)| RecordRef::VendorTxn(*i));
        fees.chain(txns).chain(vendor_fees).chain(vendor_txns)
    }

    /// Managed: created through the integration (a link or a Community Pass
    /// record exists) or eligible for sending.
    fn is_managed(&self, policy: &Policy) -> bool {
        let eligible = self
            .genesis_fees
            .iter()
            .any(|(_, fee)| policy.eligibility(fee).is_ok());
        self.fee_id.is_none()
            || self.link.is_some()
            || !self.vendor_fees.is_empty()
            || !self.vendor_txns.is_empty()
            || eligible
    }

    fn is_in_scope(&self, scope: &Scope) -> bool {
        if self.fee_id.is_none() {
            return true; // filtered per transaction while grouping
        }
        if let Some((_, fee)) = self.genesis_fees.first() {
            return scope.includes(Some(fee.fee_date), Some(fee.student_id));
        }
        if let Some((_, fee)) = self.vendor_fees.first() {
            return scope.includes(Some(fee.fee_date), Some(fee.student_id));
        }
        scope.includes(None, None)
    }
}

/// A Genesis transaction recorded in Genesis itself rather than posted from
/// Community Pass.
pub(crate) fn is_manual(txn: &GenesisTxn) -> bool {
    txn.vendor_txn_id.is_none() && txn.source == TxnSource::Genesis
}

/// Net of the manual payments and waivers among `txns` (refunds subtract).
pub fn genesis_credit<'t>(txns: impl Iterator<Item = &'t GenesisTxn>) -> Money {
    txns.filter(|txn| is_manual(txn))
        .map(|txn| -txn.kind.balance_effect(txn.amount))
        .sum()
}

/// Where each vendor transaction id occurs, across all partitions.
#[derive(Debug, Default)]
pub(crate) struct GlobalFacts<'a> {
    /// Fee ids of the Genesis transactions carrying each vendor id.
    pub genesis_postings: HashMap<&'a VendorTxnId, Vec<FeeId>>,
    /// Each vendor id's deliveries in Community Pass.
    pub vendor_deliveries: HashMap<&'a VendorTxnId, VendorDeliveries<'a>>,
}

/// The deliveries of one vendor transaction id.
#[derive(Debug)]
pub(crate) struct VendorDeliveries<'a> {
    pub first: &'a VendorTxn,
    /// Two deliveries differ in more than their cursor position.
    pub conflicting: bool,
}

impl<'a> GlobalFacts<'a> {
    fn build(genesis: &'a GenesisSnapshot, vendor: &'a VendorSnapshot) -> GlobalFacts<'a> {
        let mut facts = GlobalFacts::default();
        for txn in &genesis.txns {
            if let Some(vendor_id) = &txn.vendor_txn_id {
                facts
                    .genesis_postings
                    .entry(vendor_id)
                    .or_default()
                    .push(txn.fee_id);
            }
        }
        for txn in &vendor.txns {
            facts
                .vendor_deliveries
                .entry(&txn.id)
                .and_modify(|seen| seen.conflicting |= !same_delivery(seen.first, txn))
                .or_insert(VendorDeliveries {
                    first: txn,
                    conflicting: false,
                });
        }
        facts
    }

    pub fn genesis_posting_count(&self, vendor_id: &VendorTxnId) -> usize {
        self.genesis_postings.get(vendor_id).map_or(0, Vec::len)
    }
}

/// Two deliveries of one transaction are the same when everything but their
/// position on the cursor agrees.
pub(crate) fn same_delivery(left: &VendorTxn, right: &VendorTxn) -> bool {
    left.id == right.id
        && left.genesis_fee_id == right.genesis_fee_id
        && left.vendor_fee_id == right.vendor_fee_id
        && left.student_id == right.student_id
        && left.kind == right.kind
        && left.amount == right.amount
        && left.method == right.method
        && left.occurred_at == right.occurred_at
        && left.reverses == right.reverses
}

/// The grouped input of one run: the managed, in-scope cases in key order.
pub(crate) struct Grouped<'a> {
    pub cases: Vec<FeeCase<'a>>,
    pub facts: GlobalFacts<'a>,
}

fn case_of<'m, 'a>(
    cases: &'m mut BTreeMap<Option<FeeId>, FeeCase<'a>>,
    key: Option<FeeId>,
) -> &'m mut FeeCase<'a> {
    cases.entry(key).or_insert_with(|| FeeCase {
        fee_id: key,
        ..FeeCase::default()
    })
}

/// Groups both snapshots by fee id and keeps the managed, in-scope cases.
pub(crate) fn group<'a>(
    genesis: &'a GenesisSnapshot,
    vendor: &'a VendorSnapshot,
    policy: &Policy,
    scope: &Scope,
) -> Grouped<'a> {
    let mut cases: BTreeMap<Option<FeeId>, FeeCase<'a>> = BTreeMap::new();
    for (index, fee) in genesis.fees.iter().enumerate() {
        case_of(&mut cases, Some(fee.id))
            .genesis_fees
            .push((index, fee));
    }
    for link in &genesis.links {
        let case = case_of(&mut cases, Some(link.fee_id));
        case.link = case.link.or(Some(link));
    }
    for (index, txn) in genesis.txns.iter().enumerate() {
        case_of(&mut cases, Some(txn.fee_id))
            .genesis_txns
            .push((index, txn));
    }
    for (index, fee) in vendor.fees.iter().enumerate() {
        case_of(&mut cases, Some(fee.genesis_fee_id))
            .vendor_fees
            .push((index, fee));
    }
    let fee_by_vendor_id: HashMap<&str, FeeId> = vendor
        .fees
        .iter()
        .map(|fee| (fee.vendor_fee_id.as_str(), fee.genesis_fee_id))
        .collect();
    for (index, txn) in vendor.txns.iter().enumerate() {
        let key = txn
            .genesis_fee_id
            .or_else(|| fee_by_vendor_id.get(txn.vendor_fee_id.as_str()).copied());
        if key.is_none() && !scope.includes(None, txn.student_id) {
            continue;
        }
        case_of(&mut cases, key).vendor_txns.push((index, txn));
    }
    let cases = cases
        .into_values()
        .filter(|case| case.is_managed(policy) && case.is_in_scope(scope))
        .collect();
    Grouped {
        cases,
        facts: GlobalFacts::build(genesis, vendor),
    }
}
