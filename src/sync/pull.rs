//! Get Payments: pulls Community Pass transactions into Genesis, exactly once
//! each, keyed by the vendor's transaction id. Three triggers: everything
//! after the stored cursor (nightly), one student (their fee page is
//! opened), one guardian (they log in: the students Genesis links to that
//! guardian with portal access, never the vendor's idea of the family).
//! Transactions that cannot be applied are parked with the reason and
//! retried by every later pull; transactions on fees that exist only in
//! Community Pass (no Genesis fee id) are never synced and only counted.

use std::collections::HashSet;

use serde::Serialize;

use super::{Clock, SyncError};
use crate::db::{cursors, genesis, links, postings, DbConnection};
use crate::domain::{FeeId, GuardianId, StudentId, VendorTxn, VendorTxnId};
use crate::portal::{transactions_after, CommunityPass, PortalError, TxnBatch, TxnScope};

/// Whose transactions to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullScope {
    /// Everything after the stored cursor; advances it.
    Cursor,
    /// One student's transactions (from the start; the cursor is not moved).
    Student(StudentId),
    /// The transactions of the students Genesis links to this guardian
    /// with portal access.
    Guardian(GuardianId),
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullReport {
    pub fetched: u64,
    pub duplicates_dropped: u64,
    pub posted: u64,
    pub already_posted: u64,
    pub parked: u64,
    pub resolved_from_parked: u64,
    pub amounts_locked: u64,
    /// Transactions on fees that exist only in Community Pass (no Genesis
    /// fee id): never synced, so neither posted nor parked.
    pub community_pass_only: u64,
    /// Records that broke the contract, parked for the office.
    pub rejected: u64,
    pub cursor_from: Option<i64>,
    pub cursor_to: Option<i64>,
    /// Each record not posted, and why (parked or rejected).
    pub problems: Vec<String>,
}

/// Pulls and applies transactions for `scope`.
pub fn get_payments(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    scope: PullScope,
    run_id: i64,
    clock: Clock,
) -> Result<PullReport, SyncError> {
    let (batch, after) = match scope {
        PullScope::Cursor => {
            let after = cursors::position(conn, cursors::TRANSACTIONS)?;
            (transactions_after(portal, TxnScope::All, after)?, after)
        }
        PullScope::Student(id) => (transactions_after(portal, TxnScope::Student(id), 0)?, 0),
        PullScope::Guardian(id) => {
            let students = genesis::students_of_guardian(conn, id, true)?;
            (transactions_of_students(portal, &students)?, 0)
        }
    };
    let mut report = PullReport {
        fetched: (batch.items.len() + batch.rejected.len()) as u64,
        duplicates_dropped: batch.duplicates_dropped,
        rejected: batch.rejected.len() as u64,
        problems: batch.rejected.iter().map(|r| r.to_string()).collect(),
        ..PullReport::default()
    };
    for record in &batch.rejected {
        tracing::warn!(%record, "Community Pass sent a record that breaks the contract; parked");
    }
    let retried = if scope == PullScope::Cursor {
        postings::parked_txns(conn)?
    } else {
        Vec::new()
    };
    let mut txns: Vec<&VendorTxn> = batch.items.iter().chain(retried.iter()).collect();
    dedupe_by_id(&mut txns);
    crate::db::write_transaction(conn, |conn| {
        postings::park_malformed(conn, &batch.rejected, Some(run_id), clock())?;
        apply(conn, &txns, run_id, clock, &mut report)?;
        if scope == PullScope::Cursor {
            report.cursor_from = Some(after);
            report.cursor_to = Some(batch.next_after.max(after));
            cursors::advance(conn, cursors::TRANSACTIONS, batch.next_after, clock())?;
        }
        Ok::<_, SyncError>(())
    })?;
    Ok(report)
}

/// Every transaction of these students, each once, in sequence order.
fn transactions_of_students(
    portal: &dyn CommunityPass,
    students: &[StudentId],
) -> Result<TxnBatch, PortalError> {
    let mut all = TxnBatch {
        items: Vec::new(),
        next_after: 0,
        duplicates_dropped: 0,
        rejected: Vec::new(),
    };
    let mut seen = HashSet::new();
    for student in students {
        let batch = transactions_after(portal, TxnScope::Student(*student), 0)?;
        for txn in batch.items {
            if seen.insert(txn.id.clone()) {
                all.items.push(txn);
            } else {
                all.duplicates_dropped += 1;
            }
        }
        all.duplicates_dropped += batch.duplicates_dropped;
        all.next_after = all.next_after.max(batch.next_after);
        all.rejected.extend(batch.rejected);
    }
    all.items.sort_by_key(|txn| txn.sequence);
    Ok(all)
}

fn dedupe_by_id(txns: &mut Vec<&VendorTxn>) {
    let mut seen = HashSet::new();
    txns.retain(|t| seen.insert(t.id.clone()));
}

/// Why a transaction cannot be applied in Genesis, if it cannot.
fn unapplicable(fee: FeeId, existing_fees: &HashSet<FeeId>) -> Option<String> {
    (!existing_fees.contains(&fee))
        .then(|| format!("fee {fee} not found in Genesis (deleted, or never created there)"))
}

/// What `post_and_lock` did.
pub struct Applied {
    pub posted: usize,
    pub locked: usize,
    pub resolved: usize,
}

/// Posts vendor transactions to their Genesis fees (each vendor id once),
/// locks the amounts of fees a newly posted payment was applied to, and marks
/// parked copies resolved. Shared by every pull and the nightly apply; runs
/// inside the caller's transaction.
pub fn post_and_lock(
    conn: &mut DbConnection,
    to_post: &[(FeeId, &VendorTxn)],
    run_id: i64,
    now: chrono::NaiveDateTime,
) -> Result<Applied, SyncError> {
    let posted = postings::post(conn, to_post, Some(run_id), now)?;
    let posted_set: HashSet<&VendorTxnId> = posted.iter().collect();
    let locks: Vec<(FeeId, Option<VendorTxnId>)> = to_post
        .iter()
        .filter(|(_, t)| postings::locks_amount(t.kind) && posted_set.contains(&t.id))
        .map(|(f, t)| (*f, Some(t.id.clone())))
        .collect();
    let locked = links::lock_amounts(conn, &locks, Some(run_id), now)?.len();
    let ids: Vec<VendorTxnId> = to_post.iter().map(|(_, t)| t.id.clone()).collect();
    let resolved = postings::resolve(conn, &ids, now)?;
    Ok(Applied {
        posted: posted.len(),
        locked,
        resolved,
    })
}

/// Posts what can be posted, parks the rest, locks paid amounts. Runs inside
/// the caller's transaction.
pub fn apply(
    conn: &mut DbConnection,
    txns: &[&VendorTxn],
    run_id: i64,
    clock: Clock,
    report: &mut PullReport,
) -> Result<(), SyncError> {
    let now = clock();
    let fee_ids: Vec<FeeId> = txns.iter().filter_map(|t| t.genesis_fee_id).collect();
    let existing = postings::existing_fees(conn, &fee_ids)?;
    let mut to_post: Vec<(FeeId, &VendorTxn)> = Vec::new();
    let mut to_park: Vec<(&VendorTxn, String)> = Vec::new();
    let mut community_pass_only: Vec<VendorTxnId> = Vec::new();
    for txn in txns {
        let Some(fee) = txn.genesis_fee_id else {
            community_pass_only.push(txn.id.clone()); // a fee Genesis never created
            continue;
        };
        match unapplicable(fee, &existing) {
            None => to_post.push((fee, txn)),
            Some(reason) => to_park.push((txn, reason)),
        }
    }
    report.community_pass_only += community_pass_only.len() as u64;
    // Parked by an earlier version as "names no Genesis fee": not ours.
    postings::resolve(conn, &community_pass_only, now)?;
    let applied = post_and_lock(conn, &to_post, run_id, now)?;
    report.posted += applied.posted as u64;
    report.already_posted += (to_post.len() - applied.posted) as u64;
    report.amounts_locked += applied.locked as u64;
    report.resolved_from_parked += applied.resolved as u64;
    postings::park(conn, &to_park, Some(run_id), now)?;
    report.parked += to_park.len() as u64;
    report.problems.extend(
        to_park
            .iter()
            .map(|(txn, reason)| format!("transaction {}: {reason}", txn.id)),
    );
    Ok(())
}
