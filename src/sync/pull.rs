//! Get Payments: pulls Community Pass transactions into Genesis, exactly once
//! each, keyed by the vendor's transaction id. Three triggers: everything
//! after the stored cursor (nightly), one student (their fee page is
//! opened), one guardian (they log in: the students Genesis links to that
//! guardian with portal access, never the vendor's idea of the family).
//! Transactions that cannot be applied are parked with the reason and
//! retried by every later pull; transactions on fees that exist only in
//! Community Pass (no Genesis fee id) are never synced and only counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{Clock, SyncError};
use crate::db::{cursors, genesis, links, postings, DbConnection};
use crate::domain::{FeeId, GuardianId, StudentId, VendorTxn, VendorTxnId};
use crate::portal::{transactions_after, CommunityPass, PortalError, TxnBatch, TxnScope};
use crate::reconcile::validate::{self, FeeFacts, Hold, PostedTxn, Verdict};

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
    /// Copies of a vendor id that differ from another copy (all held).
    pub conflicting_copies: u64,
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
    /// Why reading the cursor stopped early (a cursor Community Pass could
    /// not have meant); the stored cursor stayed where it was read to.
    pub cursor_refused: Option<String>,
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
    get_payments_from(conn, portal, scope, None, run_id, clock)
}

/// `get_payments`; for a cursor pull, `from_sequence` re-reads from that
/// point instead of the stored cursor (safe: posting is idempotent), and the
/// cursor is then stored only as far as actually read.
pub fn get_payments_from(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    scope: PullScope,
    from_sequence: Option<i64>,
    run_id: i64,
    clock: Clock,
) -> Result<PullReport, SyncError> {
    let reading = std::time::Instant::now();
    let (batch, after) = match scope {
        PullScope::Cursor => {
            let after = match from_sequence {
                Some(from) => from.max(0),
                None => cursors::position(conn, cursors::TRANSACTIONS)?,
            };
            (transactions_after(portal, TxnScope::All, after)?, after)
        }
        PullScope::Student(id) => (transactions_after(portal, TxnScope::Student(id), 0)?, 0),
        PullScope::Guardian(id) => {
            let students = genesis::students_of_guardian(conn, id, true)?;
            (transactions_of_students(portal, &students)?, 0)
        }
    };
    super::progress::phase_done(
        "get-payments",
        &format!(
            "read {} transaction(s)",
            batch.items.len() + batch.rejected.len()
        ),
        reading.elapsed(),
    );
    let posting = std::time::Instant::now();
    let mut report = PullReport {
        fetched: (batch.items.len() + batch.rejected.len()) as u64,
        duplicates_dropped: batch.duplicates_dropped,
        conflicting_copies: batch.conflicting_copies,
        rejected: batch.rejected.len() as u64,
        problems: batch.rejected.iter().map(|r| r.to_string()).collect(),
        cursor_refused: batch.cursor_refused.clone(),
        ..PullReport::default()
    };
    if let Some(refused) = &batch.cursor_refused {
        report
            .problems
            .push(format!("transaction cursor: {refused}"));
    }
    for record in &batch.rejected {
        tracing::warn!(%record, "Community Pass sent a record that breaks the contract; parked");
    }
    let retried = if scope == PullScope::Cursor {
        postings::parked_txns(conn)?
    } else {
        Vec::new()
    };
    let txns: Vec<&VendorTxn> = batch.items.iter().chain(retried.iter()).collect();
    crate::db::write_transaction(conn, |conn| {
        postings::park_malformed(conn, &batch.rejected, Some(run_id), clock())?;
        apply(conn, &txns, run_id, clock, &mut report)?;
        if scope == PullScope::Cursor {
            report.cursor_from = Some(after);
            report.cursor_to = Some(batch.next_after.max(after));
            if from_sequence.is_some() {
                // Re-read from a chosen point: the cursor is what was read,
                // even below a stored position Community Pass never meant.
                cursors::set(conn, cursors::TRANSACTIONS, batch.next_after, clock())?;
            } else {
                cursors::advance(conn, cursors::TRANSACTIONS, batch.next_after, clock())?;
            }
        }
        Ok::<_, SyncError>(())
    })?;
    super::progress::phase_done("get-payments", "post", posting.elapsed());
    Ok(report)
}

/// Every transaction of these students, each once, in sequence order.
fn transactions_of_students(
    portal: &dyn CommunityPass,
    students: &[StudentId],
) -> Result<TxnBatch, PortalError> {
    let mut all = TxnBatch::empty(0);
    for student in students {
        all.merge(transactions_after(portal, TxnScope::Student(*student), 0)?);
    }
    all.items.sort_by_key(|txn| txn.sequence);
    Ok(all)
}

/// What `post_and_lock` did.
pub struct Applied {
    pub posted: usize,
    pub locked: usize,
    pub resolved: usize,
    /// Records asked for that Genesis already held.
    pub already_posted: usize,
}

/// `post_and_lock` in a savepoint; when Genesis refuses a row (a
/// constraint, a trigger), the records are posted one by one instead and
/// each refused one is held in `to_park` with the reason, so one record
/// never blocks the others (it is retried by every pull).
fn post_refused_apart<'t>(
    conn: &mut DbConnection,
    to_post: &[(FeeId, &'t VendorTxn)],
    run_id: i64,
    now: chrono::NaiveDateTime,
    to_park: &mut Vec<(&'t VendorTxn, String)>,
) -> Result<Applied, SyncError> {
    use diesel::Connection as _;
    let all = conn.transaction(|conn| post_and_lock(conn, to_post, run_id, now));
    match all {
        Ok(applied) => {
            super::failpoint::operation("payments posted");
            return Ok(applied);
        }
        Err(error) if super::refused_by_genesis(&error) => {}
        Err(error) => return Err(error),
    }
    let mut total = Applied {
        posted: 0,
        locked: 0,
        resolved: 0,
        already_posted: 0,
    };
    for one in to_post {
        match conn.transaction(|conn| post_and_lock(conn, std::slice::from_ref(one), run_id, now)) {
            Ok(applied) => {
                super::failpoint::operation("one payment posted");
                total.posted += applied.posted;
                total.locked += applied.locked;
                total.resolved += applied.resolved;
                total.already_posted += applied.already_posted;
            }
            Err(error) if super::refused_by_genesis(&error) => {
                to_park.push((one.1, format!("Genesis refused the posting: {error}")));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(total)
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
        already_posted: to_post.len() - posted.len(),
    })
}

/// What Genesis knows of the fees these transactions name (and of the fees
/// their ids are already posted on), for `validate::judge`.
pub fn validation_facts(
    conn: &mut DbConnection,
    txns: &[&VendorTxn],
) -> Result<(HashMap<FeeId, FeeFacts>, Vec<PostedTxn>), SyncError> {
    let ids: Vec<&VendorTxnId> = txns.iter().map(|t| &t.id).collect();
    let mut fee_ids: Vec<FeeId> = txns.iter().filter_map(|t| t.genesis_fee_id).collect();
    fee_ids.extend(postings::fees_posting(conn, &ids)?);
    fee_ids.sort();
    fee_ids.dedup();
    let fees = genesis::load_fees_by_ids(conn, &fee_ids)?.records;
    let links = links::load_for(conn, &fee_ids)?;
    let posted = genesis::load_txns_for_fees(conn, &fee_ids)?.records;
    Ok(validate::facts_of(&fees, &links, &posted))
}

/// Judges what can be posted (`validate::judge`), posts it, holds the rest
/// with the reason (conflicting copies of one id as one row naming each),
/// locks paid amounts. Runs inside the caller's transaction.
pub fn apply(
    conn: &mut DbConnection,
    txns: &[&VendorTxn],
    run_id: i64,
    clock: Clock,
    report: &mut PullReport,
) -> Result<(), SyncError> {
    let now = clock();
    // Copies of these ids already held as conflicting are evidence too.
    let ids: Vec<&VendorTxnId> = txns.iter().map(|t| &t.id).collect();
    let kept = postings::conflicting_copies(conn, &ids)?;
    let all: Vec<&VendorTxn> = txns.iter().copied().chain(kept.iter()).collect();
    let (fees, posted) = validation_facts(conn, &all)?;
    let verdicts = validate::judge(
        &all,
        validate::Known {
            fees: &fees,
            posted: &posted,
        },
        now,
    );
    let mut to_post: Vec<(FeeId, &VendorTxn)> = Vec::new();
    let mut to_park: Vec<(&VendorTxn, String)> = Vec::new();
    let mut conflicting: BTreeMap<&VendorTxnId, (Vec<&VendorTxn>, String)> = BTreeMap::new();
    let mut community_pass_only: Vec<VendorTxnId> = Vec::new();
    for (txn, verdict) in all.iter().zip(verdicts) {
        match verdict {
            Verdict::Post(fee) | Verdict::AlreadyPosted(fee) => to_post.push((fee, txn)),
            Verdict::Duplicate => {}
            Verdict::CommunityPassOnly => community_pass_only.push(txn.id.clone()),
            Verdict::Hold(hold @ Hold::ConflictingCopies(_)) => {
                let entry = conflicting
                    .entry(&txn.id)
                    .or_insert_with(|| (Vec::new(), hold.describe()));
                entry.0.push(txn);
            }
            Verdict::Hold(hold) => to_park.push((txn, hold.describe())),
        }
    }
    report.community_pass_only += community_pass_only.len() as u64;
    // Parked by an earlier version as "names no Genesis fee": not ours.
    postings::resolve(conn, &community_pass_only, now)?;
    let applied = post_refused_apart(conn, &to_post, run_id, now, &mut to_park)?;
    report.posted += applied.posted as u64;
    report.already_posted += applied.already_posted as u64;
    report.amounts_locked += applied.locked as u64;
    report.resolved_from_parked += applied.resolved as u64;
    postings::park(conn, &to_park, Some(run_id), now)?;
    report.parked += to_park.len() as u64;
    report.problems.extend(
        to_park
            .iter()
            .map(|(txn, reason)| format!("transaction {}: {reason}", txn.id)),
    );
    for (id, (copies, reason)) in &conflicting {
        postings::park_conflicting(conn, copies, reason, Some(run_id), now)?;
        report.parked += 1;
        report.problems.push(format!("transaction {id}: {reason}"));
    }
    Ok(())
}
