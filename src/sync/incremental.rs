//! The incremental nightly: finds the fees that changed on either side since
//! the last completed run (its mark) and reads both snapshots for those fees
//! only, so the pure core judges them exactly as a full run would.
//!
//! What counts as changed since the mark:
//! - Genesis: every outbox row written since the mark's outbox position
//!   (fee edits, Genesis-recorded payments and waivers, deletions; the
//!   triggers write them in the same transaction as the change, and the
//!   position's gaps catch transactions that were still open at the mark);
//! - Community Pass: fees whose record changed since the mark's server clock
//!   less `VENDOR_CLOCK_OVERLAP`, and every transaction after the mark's
//!   log position;
//! - the items the marked run left open (needing review, or failed), so the
//!   report keeps listing them until they are resolved;
//! - closure: every fee on which Genesis already posted one of the vendor
//!   transactions read, so "never post twice" is judged on complete facts.
//!
//! A run falls back to full when there is no mark or the sending policy or
//! the API key changed since (`decide`). A change made behind the triggers'
//! back (triggers disabled, rows restored from a backup) is only seen by a
//! full run: schedule one regularly (e.g. weekly).

use std::collections::BTreeSet;

use chrono::{Duration, NaiveDateTime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SyncError;
use crate::db::marks::{self, NightlyMark, OutboxPosition};
use crate::db::{genesis, links, postings, DbConnection};
use crate::domain::{FeeId, VendorTxn, VendorTxnId};
use crate::portal::{
    fees_by_ids, fees_where, transactions_after, transactions_of_fees, CommunityPass, FeeFilter,
    RejectedRecord, TxnScope,
};
use crate::reconcile::{GenesisSnapshot, VendorSnapshot};
use crate::setup::SetupState;

/// How far before the mark's Community Pass clock changed fees are read
/// again: a change the server was committing as the clock was read, with
/// whole-second timestamps.
pub const VENDOR_CLOCK_OVERLAP: Duration = Duration::seconds(5);

/// A digest of what decides the judgement of every fee at once: the sending
/// policy (cutoff, categories, excluded schools), the patron id rule and the
/// Community Pass account (the API key's fingerprint).
pub fn policy_fingerprint(setup: &SetupState) -> String {
    let judged_under = serde_json::json!({
        "policy": setup.policy(),
        "patron_id": setup.patron_id,
        "api_key": setup.api_key_fingerprint,
    });
    let digest = Sha256::digest(judged_under.to_string().as_bytes());
    crate::portal::hex(&digest[..16])
}

/// Whether a run asked to be incremental can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Incremental(NightlyMark),
    /// Runs in full, for this reason.
    Full(String),
}

/// How often a full run comes round when runs ask to be incremental.
pub const FULL_RUN_EVERY_DEFAULT: Duration = Duration::days(7);

/// Incremental from the latest mark, unless there is none, the policy
/// changed since it was taken, or the last full run is older than
/// `full_run_every` at `now`.
pub fn decide(
    conn: &mut DbConnection,
    setup: &SetupState,
    full_run_every: Duration,
    now: NaiveDateTime,
) -> Result<Decision, SyncError> {
    let Some(mark) = marks::latest(conn)? else {
        return Ok(Decision::Full(
            "no earlier completed nightly run to start from".to_string(),
        ));
    };
    if mark.policy_fingerprint != policy_fingerprint(setup) {
        return Ok(Decision::Full(format!(
            "the sending policy, patron id rule or API key changed since run #{}",
            mark.run_id
        )));
    }
    let full_taken_at = marks::taken_at(conn, mark.full_run_id)?;
    if full_taken_at.is_none_or(|at| now - at >= full_run_every) {
        return Ok(Decision::Full(format!(
            "the last full run (#{}) is {} days old or more",
            mark.full_run_id,
            full_run_every.num_days()
        )));
    }
    Ok(Decision::Incremental(mark))
}

/// What brought fees into an incremental run, by source (a fee may be
/// counted under several).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub genesis_changed_fees: usize,
    pub cp_changed_fees: usize,
    pub cp_new_transactions: usize,
    pub open_items_carried: usize,
    pub fees_linked_by_postings: usize,
}

/// The snapshots of the changed fees and where the run leaves the outbox
/// and the log.
#[derive(Debug)]
pub struct ChangedSnapshots {
    pub genesis: GenesisSnapshot,
    pub vendor: VendorSnapshot,
    pub rejected: Vec<String>,
    /// The outbox position to mark.
    pub outbox: OutboxPosition,
    /// The transaction log position to mark.
    pub txn_sequence: i64,
    /// How many fees the run examines.
    pub fees_examined: usize,
    pub changes: ChangeCounts,
}

/// Reads both sides for the fees changed since `mark` (Community Pass fees
/// from `vendor_clock_overlap` before its clock).
pub fn fetch_changed(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    mark: &NightlyMark,
    vendor_clock_overlap: Duration,
) -> Result<ChangedSnapshots, SyncError> {
    let mut changes = ChangeCounts::default();
    let mut fee_ids: BTreeSet<FeeId> = BTreeSet::new();

    let (genesis_changed, outbox) = marks::outbox_changes_since(conn, &mark.outbox)?;
    changes.genesis_changed_fees = genesis_changed.len();
    fee_ids.extend(genesis_changed);

    let (open_fees, open_students) = marks::open_items(conn, mark.run_id)?;
    changes.open_items_carried = open_fees.len() + open_students.len();
    fee_ids.extend(open_fees);

    let since = mark.vendor_as_of - vendor_clock_overlap;
    let vendor_changed = fees_where(portal, FeeFilter::UpdatedSince(since))?;
    changes.cp_changed_fees = vendor_changed.len();
    fee_ids.extend(vendor_changed.iter().map(|fee| fee.genesis_fee_id));

    let new_txns = transactions_after(portal, TxnScope::All, mark.txn_sequence)?;
    changes.cp_new_transactions = new_txns.items.len();
    let txn_sequence = new_txns.next_after.max(mark.txn_sequence);
    fee_ids.extend(new_txns.items.iter().filter_map(|txn| txn.genesis_fee_id));
    let mut rejected = new_txns.rejected;

    // Transactions naming no Genesis fee: the new ones, and those of the
    // students whose such items were left open.
    let mut unkeyed: Vec<VendorTxn> = new_txns
        .items
        .into_iter()
        .filter(|txn| txn.genesis_fee_id.is_none())
        .collect();
    for student in open_students {
        let batch = transactions_after(portal, TxnScope::Student(student), 0)?;
        unkeyed.extend(
            batch
                .items
                .into_iter()
                .filter(|txn| txn.genesis_fee_id.is_none()),
        );
        rejected.extend(batch.rejected);
    }
    unkeyed.sort_by(|a, b| (a.sequence, &a.id).cmp(&(b.sequence, &b.id)));
    unkeyed.dedup_by(|a, b| a.sequence == b.sequence && a.id == b.id);

    let (vendor_txns, linked) =
        transactions_closed_over_postings(conn, portal, &mut fee_ids, unkeyed, &mut rejected)?;
    changes.fees_linked_by_postings = linked;

    let ids: Vec<FeeId> = fee_ids.into_iter().collect();
    let fees = genesis::load_fees_by_ids(conn, &ids)?;
    let txns = genesis::load_txns_for_fees(conn, &ids)?;
    let genesis = GenesisSnapshot {
        links: links::load_for(conn, &ids)?,
        fees: fees.records,
        txns: txns.records,
    };
    let vendor = VendorSnapshot {
        fees: fees_by_ids(portal, &ids)?,
        txns: vendor_txns,
    };
    let rejected = fees
        .rejected
        .iter()
        .chain(&txns.rejected)
        .map(|row| row.to_string())
        .chain(rejected.iter().map(|r| format!("Community Pass {r}")))
        .collect();
    Ok(ChangedSnapshots {
        genesis,
        vendor,
        rejected,
        outbox,
        txn_sequence,
        fees_examined: ids.len(),
        changes,
    })
}

/// The Community Pass transactions of `fee_ids` (plus `unkeyed`), after
/// adding to `fee_ids` every fee on which Genesis already posted one of
/// them, until no new fee appears. Returns the transactions in log order
/// and how many fees the closure added.
fn transactions_closed_over_postings(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    fee_ids: &mut BTreeSet<FeeId>,
    unkeyed: Vec<VendorTxn>,
    rejected: &mut Vec<RejectedRecord>,
) -> Result<(Vec<VendorTxn>, usize), SyncError> {
    let mut txns = unkeyed;
    let mut linked = 0;
    let mut pending: Vec<FeeId> = fee_ids.iter().copied().collect();
    let mut read_from = 0;
    loop {
        let batch = transactions_of_fees(portal, &pending)?;
        rejected.extend(batch.rejected);
        txns.extend(batch.items);
        let vendor_ids: Vec<&VendorTxnId> = txns[read_from..].iter().map(|txn| &txn.id).collect();
        read_from = txns.len();
        pending = postings::fees_posting(conn, &vendor_ids)?
            .into_iter()
            .filter(|fee| fee_ids.insert(*fee))
            .collect();
        linked += pending.len();
        if pending.is_empty() {
            break;
        }
    }
    txns.sort_by(|a, b| (a.sequence, &a.id).cmp(&(b.sequence, &b.id)));
    Ok((txns, linked))
}
