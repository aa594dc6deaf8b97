//! Groups both snapshots by Genesis fee id (the partition key) into one
//! `FeeCase` per fee, and builds the few global facts a partition needs about
//! other partitions: where each vendor transaction id occurs on either side.

use rustc_hash::FxHashMap;

use crate::domain::{
    FeeId, GenesisFee, GenesisTxn, StudentId, TxnSource, VendorFee, VendorTxn, VendorTxnId,
};
use crate::money::Money;

use super::input::{FeeLink, GenesisSnapshot, Policy, Scope, StudentParty, VendorSnapshot};

/// One input record, by side and position in its snapshot vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RecordRef {
    GenesisFee(usize),
    GenesisTxn(usize),
    VendorFee(usize),
    VendorTxn(usize),
}

/// Everything both sides hold about one fee id. The key `None` collects
/// Community Pass transactions that name no fee either side knows. Each list
/// is a run of the sorted index (`Index`), in snapshot order.
#[derive(Debug, Default)]
pub(crate) struct FeeCase<'a> {
    pub fee_id: Option<FeeId>,
    pub genesis_fees: &'a [(usize, &'a GenesisFee)],
    pub link: Option<&'a FeeLink>,
    pub genesis_txns: &'a [(usize, &'a GenesisTxn)],
    pub vendor_fees: &'a [(usize, &'a VendorFee)],
    pub vendor_txns: &'a [(usize, &'a VendorTxn)],
}

impl<'a> FeeCase<'a> {
    /// The one Genesis fee, when exactly one exists.
    pub fn genesis_fee(&self) -> Option<&'a GenesisFee> {
        match self.genesis_fees {
            [(_, fee)] => Some(*fee),
            _ => None,
        }
    }

    /// The one Community Pass fee, when exactly one exists.
    pub fn vendor_fee(&self) -> Option<&'a VendorFee> {
        match self.vendor_fees {
            [(_, fee)] => Some(*fee),
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
    pub genesis_postings: FxHashMap<&'a VendorTxnId, GenesisPostings>,
    /// Each vendor id's deliveries in Community Pass.
    pub vendor_deliveries: FxHashMap<&'a VendorTxnId, VendorDeliveries<'a>>,
    /// Each student's patron and guardians as Genesis says now.
    pub parties: FxHashMap<StudentId, &'a StudentParty>,
}

/// The fee ids of the Genesis transactions carrying one vendor id, in
/// snapshot order (almost always one: no allocation for it).
#[derive(Debug)]
pub(crate) struct GenesisPostings {
    first: FeeId,
    more: Vec<FeeId>,
}

impl GenesisPostings {
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }

    pub fn fee_ids(&self) -> impl Iterator<Item = FeeId> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
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
        let mut facts = GlobalFacts {
            genesis_postings: FxHashMap::with_capacity_and_hasher(
                genesis.txns.len(),
                Default::default(),
            ),
            vendor_deliveries: FxHashMap::with_capacity_and_hasher(
                vendor.txns.len(),
                Default::default(),
            ),
            parties: genesis
                .parties
                .iter()
                .map(|party| (party.student_id, party))
                .collect(),
        };
        for txn in &genesis.txns {
            if let Some(vendor_id) = &txn.vendor_txn_id {
                facts
                    .genesis_postings
                    .entry(vendor_id)
                    .and_modify(|postings| postings.more.push(txn.fee_id))
                    .or_insert(GenesisPostings {
                        first: txn.fee_id,
                        more: Vec::new(),
                    });
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
        self.genesis_postings
            .get(vendor_id)
            .map_or(0, GenesisPostings::count)
    }
}

/// Two deliveries of one transaction are the same when everything but their
/// position on the cursor agrees.
pub(crate) fn same_delivery(left: &VendorTxn, right: &VendorTxn) -> bool {
    left.same_record(right)
}

/// Every record of both snapshots (in scope), sorted by fee id and, within
/// one fee id, in snapshot order: the storage the cases are runs of.
pub(crate) struct Index<'a> {
    genesis_fees: Vec<(usize, &'a GenesisFee)>,
    links: Vec<&'a FeeLink>,
    genesis_txns: Vec<(usize, &'a GenesisTxn)>,
    vendor_fees: Vec<(usize, &'a VendorFee)>,
    /// The case key of each entry of `vendor_txns`.
    vendor_txn_keys: Vec<Option<FeeId>>,
    vendor_txns: Vec<(usize, &'a VendorTxn)>,
}

/// Sorts by key, keeping snapshot order within a key (a stable sort; the
/// snapshots usually come sorted already, which it detects).
fn sorted_by<T: Copy>(mut items: Vec<T>, key: impl Fn(&T) -> FeeId) -> Vec<T> {
    items.sort_by_key(key);
    items
}

/// Sorts both snapshots by fee id. A Community Pass transaction is keyed by
/// its Genesis fee id, else by the fee its vendor fee id names, else `None`
/// (kept only when the scope includes its student).
/// The Genesis fee each Community Pass transaction belongs to: the one it
/// names, else the one whose Community Pass fee id it carries (those ids
/// are gathered only once a transaction names no Genesis fee).
pub(crate) struct TxnFeeKeys<'a> {
    vendor: &'a VendorSnapshot,
    by_vendor_fee_id: Option<FxHashMap<&'a str, FeeId>>,
}

impl<'a> TxnFeeKeys<'a> {
    pub(crate) fn new(vendor: &'a VendorSnapshot) -> TxnFeeKeys<'a> {
        TxnFeeKeys {
            vendor,
            by_vendor_fee_id: None,
        }
    }

    pub(crate) fn key_of(&mut self, txn: &VendorTxn) -> Option<FeeId> {
        let vendor = self.vendor;
        txn.genesis_fee_id.or_else(|| {
            self.by_vendor_fee_id
                .get_or_insert_with(|| {
                    vendor
                        .fees
                        .iter()
                        .map(|fee| (fee.vendor_fee_id.as_str(), fee.genesis_fee_id))
                        .collect()
                })
                .get(txn.vendor_fee_id.as_str())
                .copied()
        })
    }
}

pub(crate) fn index<'a>(
    genesis: &'a GenesisSnapshot,
    vendor: &'a VendorSnapshot,
    scope: &Scope,
) -> Index<'a> {
    let genesis_fees = sorted_by(genesis.fees.iter().enumerate().collect(), |(_, fee)| fee.id);
    let links = sorted_by(genesis.links.iter().collect(), |link| link.fee_id);
    let genesis_txns = sorted_by(genesis.txns.iter().enumerate().collect(), |(_, txn)| {
        txn.fee_id
    });
    let vendor_fees = sorted_by(vendor.fees.iter().enumerate().collect(), |(_, fee)| {
        fee.genesis_fee_id
    });
    let mut fee_keys = TxnFeeKeys::new(vendor);
    let mut keyed: Vec<(Option<FeeId>, usize, &'a VendorTxn)> =
        Vec::with_capacity(vendor.txns.len());
    for (index, txn) in vendor.txns.iter().enumerate() {
        let key = fee_keys.key_of(txn);
        if key.is_none() && !scope.includes(None, txn.student_id) {
            continue;
        }
        keyed.push((key, index, txn));
    }
    keyed.sort_by_key(|(key, _, _)| *key);
    Index {
        genesis_fees,
        links,
        genesis_txns,
        vendor_fees,
        vendor_txn_keys: keyed.iter().map(|(key, _, _)| *key).collect(),
        vendor_txns: keyed.into_iter().map(|(_, i, txn)| (i, txn)).collect(),
    }
}

/// A position in one sorted list of the index.
struct Runs<'i, T, K> {
    items: &'i [T],
    key: K,
    at: usize,
}

impl<'i, T, K: Fn(usize) -> Option<FeeId>> Runs<'i, T, K> {
    fn new(items: &'i [T], key: K) -> Runs<'i, T, K> {
        Runs { items, key, at: 0 }
    }

    fn peek(&self) -> Option<Option<FeeId>> {
        (self.at < self.items.len()).then(|| (self.key)(self.at))
    }

    /// The entries keyed `key` at the current position (maybe none).
    fn take(&mut self, key: Option<FeeId>) -> &'i [T] {
        let start = self.at;
        while self.at < self.items.len() && (self.key)(self.at) == key {
            self.at += 1;
        }
        &self.items[start..self.at]
    }
}

/// The grouped input of one run: the managed, in-scope cases in key order.
pub(crate) struct Grouped<'a> {
    pub cases: Vec<FeeCase<'a>>,
    pub facts: GlobalFacts<'a>,
}

/// Groups both snapshots by fee id (runs of the index, merged in key order,
/// `None` first) and keeps the managed, in-scope cases.
pub(crate) fn group<'a>(
    index: &'a Index<'a>,
    genesis: &'a GenesisSnapshot,
    vendor: &'a VendorSnapshot,
    policy: &Policy,
    scope: &Scope,
) -> Grouped<'a> {
    let mut genesis_fees = Runs::new(&index.genesis_fees, |i| Some(index.genesis_fees[i].1.id));
    let mut links = Runs::new(&index.links, |i| Some(index.links[i].fee_id));
    let mut genesis_txns = Runs::new(&index.genesis_txns, |i| {
        Some(index.genesis_txns[i].1.fee_id)
    });
    let mut vendor_fees = Runs::new(&index.vendor_fees, |i| {
        Some(index.vendor_fees[i].1.genesis_fee_id)
    });
    let mut vendor_txns = Runs::new(&index.vendor_txns, |i| index.vendor_txn_keys[i]);
    let mut cases = Vec::with_capacity(index.genesis_fees.len().max(index.vendor_fees.len()));
    loop {
        let next = [
            genesis_fees.peek(),
            links.peek(),
            genesis_txns.peek(),
            vendor_fees.peek(),
            vendor_txns.peek(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(key) = next else {
            break;
        };
        let case = FeeCase {
            fee_id: key,
            genesis_fees: genesis_fees.take(key),
            link: links.take(key).first().copied(),
            genesis_txns: genesis_txns.take(key),
            vendor_fees: vendor_fees.take(key),
            vendor_txns: vendor_txns.take(key),
        };
        if case.is_managed(policy) && case.is_in_scope(scope) {
            cases.push(case);
        }
    }
    Grouped {
        cases,
        facts: GlobalFacts::build(genesis, vendor),
    }
}
