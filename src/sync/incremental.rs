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
//!   less `VENDOR_CLOCK_OVERLAP`, except those still at the revision
//!   Community Pass answered to our own last push (nothing changed there
//!   since: the revision counts every change, payments included; what we
//!   pushed is judged through the outbox or the run that pushed it), and
//!   every transaction after the mark's log position;
//! - the items the marked run left open (needing review, or failed), so the
//!   report keeps listing them until they are resolved (an item naming
//!   neither a fee nor a student is listed again by the next full run);
//! - closure: every fee on which Genesis already posted one of the vendor
//!   transactions read, so "never post twice" is judged on complete facts.
//!
//! A run falls back to full when there is no mark, the sending policy or
//! the API key changed since, or the last full run is older than
//! `full_run_every` (`decide`). A change made behind the triggers'
//! back (triggers disabled, rows restored from a backup) is only seen by a
//! full run: schedule one regularly (e.g. weekly).

use std::collections::BTreeSet;

use chrono::{Duration, NaiveDateTime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SyncError;
use crate::db::marks::{self, NightlyMark, OutboxPosition};
use crate::db::{genesis, links, postings, DbConnection};
use crate::domain::{FeeId, StudentId, VendorTxn, VendorTxnId};
use crate::portal::{
    fees_by_ids_keeping_rejected, fees_where_keeping_rejected, rejected_fee_id, transactions_after,
    transactions_of_fees, CommunityPass, FeeFilter, RejectedRecord, TxnBatch, TxnScope,
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
    /// Fees Community Pass listed as changed whose revision is the one it
    /// answered to our last push: not examined for that reason.
    pub cp_own_pushes_skipped: usize,
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
    /// Fees whose Community Pass record could not be read: not judged.
    pub unjudged_fees: Vec<FeeId>,
    /// What could not be read, in words (the run is incomplete).
    pub incomplete: Vec<String>,
}

/// Reads both sides for the fees changed since `mark` (Community Pass fees
/// from `vendor_clock_overlap` before its clock). Each step reads the
/// database while another thread reads Community Pass.
pub fn fetch_changed(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    mark: &NightlyMark,
    vendor_clock_overlap: Duration,
) -> Result<ChangedSnapshots, SyncError> {
    let since = mark.vendor_as_of - vendor_clock_overlap;
    let (vendor_side, genesis_side) = std::thread::scope(|threads| {
        let reader = threads.spawn(move || vendor_changes(portal, mark.txn_sequence, since));
        let genesis = genesis_changes(conn, mark);
        let vendor = reader
            .join()
            .expect("the Community Pass reader does not panic");
        (vendor, genesis)
    });
    let vendor_side = vendor_side?;
    let genesis_side = genesis_side?;
    let listed = vendor_side.changed_fees.len();
    let cp_changed_fees = changed_since_our_push(conn, vendor_side.changed_fees)?;

    let mut changes = ChangeCounts {
        genesis_changed_fees: genesis_side.outbox_fees.len(),
        cp_changed_fees: cp_changed_fees.len(),
        cp_own_pushes_skipped: listed - cp_changed_fees.len(),
        cp_new_transactions: vendor_side.new_txns.items.len(),
        open_items_carried: genesis_side.open_fees.len() + genesis_side.open_students.len(),
        fees_linked_by_postings: 0,
    };
    let mut fee_ids: BTreeSet<FeeId> = BTreeSet::new();
    fee_ids.extend(&genesis_side.outbox_fees);
    fee_ids.extend(&genesis_side.open_fees);
    fee_ids.extend(&cp_changed_fees);
    let new_txns = vendor_side.new_txns;
    let mut unreadable_fees = vendor_side.unreadable_fees;
    let mut incomplete: Vec<String> = new_txns
        .cursor_refused
        .iter()
        .map(|refused| {
            format!(
                "the transaction log was read only to {}: {refused}",
                new_txns.next_after
            )
        })
        .collect();
    fee_ids.extend(new_txns.items.iter().filter_map(|txn| txn.genesis_fee_id));
    let txn_sequence = new_txns.next_after.max(mark.txn_sequence);
    let mut rejected = new_txns.rejected;
    let unkeyed = unkeyed_transactions(
        portal,
        new_txns.items,
        &genesis_side.open_students,
        &mut rejected,
    )?;

    let ids: Vec<FeeId> = fee_ids.iter().copied().collect();
    let mut read = read_fees(conn, portal, &ids)?;
    read.vendor.txns.extend(unkeyed);
    // Closure: the fees where Genesis already posted a vendor id read here.
    let mut checked = 0;
    loop {
        let vendor_ids: Vec<&VendorTxnId> = read.vendor.txns[checked..]
            .iter()
            .map(|txn| &txn.id)
            .collect();
        checked = read.vendor.txns.len();
        let extra: Vec<FeeId> = postings::fees_posting(conn, &vendor_ids)?
            .into_iter()
            .filter(|fee| fee_ids.insert(*fee))
            .collect();
        if extra.is_empty() {
            break;
        }
        changes.fees_linked_by_postings += extra.len();
        read.append(read_fees(conn, portal, &extra)?);
    }
    read.vendor
        .txns
        .sort_by(|a, b| (a.sequence, &a.id).cmp(&(b.sequence, &b.id)));
    rejected.extend(read.vendor_rejected);
    unreadable_fees.extend(read.unreadable_fees);
    let mut unjudged_fees = Vec::new();
    for record in &unreadable_fees {
        rejected.push(record.clone());
        match rejected_fee_id(record) {
            Some(fee) => {
                unjudged_fees.push(fee);
                incomplete.push(format!(
                    "Community Pass sent fee {fee} unreadable ({}); the fee was not judged",
                    record.reason
                ));
            }
            None => incomplete.push(format!(
                "Community Pass sent an unreadable fee record without a readable id ({})",
                record.reason
            )),
        }
    }
    let rejected = read
        .genesis_rejected
        .into_iter()
        .chain(rejected.iter().map(|r| format!("Community Pass {r}")))
        .collect();
    Ok(ChangedSnapshots {
        genesis: read.genesis,
        vendor: read.vendor,
        rejected,
        outbox: genesis_side.outbox,
        txn_sequence,
        fees_examined: fee_ids.len(),
        changes,
        unjudged_fees,
        incomplete,
    })
}

/// The fees Community Pass changed after our last acknowledged push of
/// them: those whose revision is not the one it answered to that push.
fn changed_since_our_push(
    conn: &mut DbConnection,
    listed: Vec<(FeeId, i64)>,
) -> Result<Vec<FeeId>, SyncError> {
    let ids: Vec<FeeId> = listed.iter().map(|(fee, _)| *fee).collect();
    let pushed = links::pushed_revisions(conn, &ids)?;
    Ok(listed
        .into_iter()
        .filter(|(fee, revision)| pushed.get(fee) != Some(revision))
        .map(|(fee, _)| fee)
        .collect())
}

/// What changed in Community Pass since the mark.
struct VendorChanges {
    /// Each fee listed as changed, with its revision.
    changed_fees: Vec<(FeeId, i64)>,
    /// Changed fee records that break the contract.
    unreadable_fees: Vec<RejectedRecord>,
    new_txns: TxnBatch,
}

fn vendor_changes(
    portal: &dyn CommunityPass,
    after_sequence: i64,
    since: NaiveDateTime,
) -> Result<VendorChanges, SyncError> {
    let changed = fees_where_keeping_rejected(portal, FeeFilter::UpdatedSince(since))?;
    Ok(VendorChanges {
        changed_fees: changed
            .items
            .iter()
            .map(|fee| (fee.genesis_fee_id, fee.revision))
            .collect(),
        unreadable_fees: changed.rejected,
        new_txns: transactions_after(portal, TxnScope::All, after_sequence)?,
    })
}

/// What changed in Genesis since the mark, and what the marked run left open.
struct GenesisChanges {
    outbox_fees: Vec<FeeId>,
    outbox: OutboxPosition,
    open_fees: Vec<FeeId>,
    open_students: Vec<StudentId>,
}

fn genesis_changes(
    conn: &mut DbConnection,
    mark: &NightlyMark,
) -> Result<GenesisChanges, SyncError> {
    let (outbox_fees, outbox) = marks::outbox_changes_since(conn, &mark.outbox)?;
    let (open_fees, open_students) = marks::open_items(conn, mark.run_id)?;
    Ok(GenesisChanges {
        outbox_fees,
        outbox,
        open_fees,
        open_students,
    })
}

/// Transactions naming no Genesis fee: the new ones, and those of the
/// students whose such items the marked run left open.
fn unkeyed_transactions(
    portal: &dyn CommunityPass,
    new_txns: Vec<VendorTxn>,
    open_students: &[StudentId],
    rejected: &mut Vec<RejectedRecord>,
) -> Result<Vec<VendorTxn>, SyncError> {
    let mut unkeyed: Vec<VendorTxn> = new_txns
        .into_iter()
        .filter(|txn| txn.genesis_fee_id.is_none())
        .collect();
    for student in open_students {
        let batch = transactions_after(portal, TxnScope::Student(*student), 0)?;
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
    Ok(unkeyed)
}

/// Both sides of some fees.
struct FeesRead {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    genesis_rejected: Vec<String>,
    vendor_rejected: Vec<RejectedRecord>,
    unreadable_fees: Vec<RejectedRecord>,
}

impl FeesRead {
    fn append(&mut self, more: FeesRead) {
        self.genesis.fees.extend(more.genesis.fees);
        self.genesis.txns.extend(more.genesis.txns);
        self.genesis.links.extend(more.genesis.links);
        self.vendor.fees.extend(more.vendor.fees);
        self.vendor.txns.extend(more.vendor.txns);
        self.genesis_rejected.extend(more.genesis_rejected);
        self.vendor_rejected.extend(more.vendor_rejected);
        self.unreadable_fees.extend(more.unreadable_fees);
    }
}

/// Everything both sides hold about these fees; Community Pass is read on
/// another thread while the database is read.
fn read_fees(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    ids: &[FeeId],
) -> Result<FeesRead, SyncError> {
    let (vendor, genesis) = std::thread::scope(|threads| {
        let reader = threads.spawn(move || -> Result<_, SyncError> {
            Ok((
                fees_by_ids_keeping_rejected(portal, ids)?,
                transactions_of_fees(portal, ids)?,
            ))
        });
        let genesis = read_genesis_fees(conn, ids);
        let vendor = reader
            .join()
            .expect("the Community Pass reader does not panic");
        (vendor, genesis)
    });
    let (vendor_fees, vendor_txns) = vendor?;
    let (genesis, genesis_rejected) = genesis?;
    Ok(FeesRead {
        genesis,
        vendor: VendorSnapshot {
            fees: vendor_fees.items,
            txns: vendor_txns.items,
        },
        genesis_rejected,
        vendor_rejected: vendor_txns.rejected,
        unreadable_fees: vendor_fees.rejected,
    })
}

fn read_genesis_fees(
    conn: &mut DbConnection,
    ids: &[FeeId],
) -> Result<(GenesisSnapshot, Vec<String>), SyncError> {
    let fees = genesis::load_fees_by_ids(conn, ids)?;
    let txns = genesis::load_txns_for_fees(conn, ids)?;
    let rejected = fees
        .rejected
        .iter()
        .chain(&txns.rejected)
        .map(|row| row.to_string())
        .collect();
    let snapshot = GenesisSnapshot {
        links: links::load_for(conn, ids)?,
        fees: fees.records,
        txns: txns.records,
        parties: Vec::new(),
    };
    Ok((snapshot, rejected))
}
