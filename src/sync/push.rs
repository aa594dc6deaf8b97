//! Send Fees: pushes Genesis fees to Community Pass. Used by the outbox
//! drain (`send-fees`, `watch`), by `send-fees --resend`, and by the nightly
//! run's corrections. Only eligible fees are sent; a fee whose amount is
//! locked by a Community Pass payment is never pushed with a new amount.
//!
//! Every push is one *intent*: the link's next sequence number, the digest
//! of the whole body (every field Community Pass shows) and the idempotency
//! key naming both, recorded before the call. A retry of an intent never
//! acknowledged reuses its key (a replay if Community Pass applied it); any
//! other push is a new intent, so returning a fee to an earlier state is
//! applied. A push Community Pass refuses for a reason a retry cannot fix
//! (409, 422, 404) is held with the vendor's reason: it leaves the retry
//! queue and is sent again only when the fee changes or on `--resend`.
//! An unpaid fee deleted in Genesis is voided in Community Pass.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDateTime;
use diesel::Connection;
use rayon::prelude::*;
use serde::Serialize;

use super::{Clock, SyncError};
use crate::db::audit::{self, AuditEntry, AuditSide};
use crate::db::links::{PushIntent, PushState};
use crate::db::{genesis, links, outbox, DbConnection};
use crate::domain::{
    FeeId, FeePush, FeeStatus, GenesisFee, GenesisTxn, GuardianLink, StudentId, VendorFee,
    VendorFeeStatus,
};
use crate::portal::{
    fees_by_ids, intent_key, push_digest, CommunityPass, PortalError, UpsertOutcome,
};
use crate::reconcile::{fee_push, FeeLink};
use crate::setup::SetupState;

/// How many outbox entries one pass of `watch` takes at a time (a stop
/// waits for at most one such batch).
pub const OUTBOX_BATCH_MAX: i64 = 500;
/// How many outbox entries `send-fees` takes at a time: enough for several
/// push windows, so the database work of one overlaps the sending of the
/// next.
pub const SEND_OUTBOX_BATCH_MAX: i64 = 4_000;
/// How many batches one drain may take before returning (the next run goes on).
pub const OUTBOX_BATCHES_MAX: usize = 10_000;

/// Why fees are being pushed, which decides what is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// A change Genesis made (outbox, `watch`): a fee whose whole body was
    /// acknowledged already is unchanged; a refused body stays held.
    Drain,
    /// A nightly correction: Community Pass was seen to differ, so the fee
    /// is pushed even when the link says this body was acknowledged; a
    /// refused body stays held.
    Correct,
    /// `send-fees --resend`: every eligible fee again, held ones included,
    /// each as a new intent.
    Resend,
}

/// What happened to one fee asked to be pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum PushOutcome {
    /// Community Pass created or updated the fee.
    Pushed { created: bool, replayed: bool },
    /// What Community Pass acknowledged last is this very body; nothing sent.
    Unchanged,
    /// Not eligible: before the cutoff, category not selected, school excluded.
    Ineligible(String),
    /// Refused by a handbook rule (e.g. amount edited after a payment); not sent.
    Refused(String),
    /// Community Pass refused this content for a reason a retry cannot fix
    /// (now, or earlier with the same content): held for a person, not retried.
    Rejected(String),
    /// Deleted in Genesis, and not voided in Community Pass (it was paid
    /// there, or Community Pass never had it): the nightly run reports it.
    Deleted,
    /// The call failed; the fee stays pending.
    Failed(String),
}

impl PushOutcome {
    /// Words for a person, for summaries and the nightly's outcomes.
    pub fn describe(&self) -> String {
        match self {
            PushOutcome::Pushed { .. } => "pushed".to_string(),
            PushOutcome::Unchanged => "unchanged".to_string(),
            PushOutcome::Ineligible(why) => format!("not sent: {why}"),
            PushOutcome::Refused(why) => format!("not sent: {why}"),
            PushOutcome::Rejected(why) => format!("held: {why}"),
            PushOutcome::Deleted => "the fee no longer exists in Genesis".to_string(),
            PushOutcome::Failed(why) => why.clone(),
        }
    }
}

/// Counts of a push pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    pub pushed: u64,
    pub created: u64,
    pub replayed: u64,
    /// Unpaid fees deleted in Genesis, voided in Community Pass (among `pushed`).
    pub voided_deleted: u64,
    pub unchanged: u64,
    pub ineligible: u64,
    pub refused: u64,
    /// Held because Community Pass refused them (see `cpsync held-pushes`).
    pub rejected: u64,
    pub deleted: u64,
    pub failed: u64,
    /// Fees refused, held or failed, with why (for the run summary).
    pub problems: BTreeMap<i64, String>,
    /// What Community Pass acknowledged for each fee pushed: the body's
    /// digest and the revision it answered (for the nightly's re-read).
    #[serde(skip)]
    pub acknowledged: BTreeMap<FeeId, Acknowledged>,
}

/// One push Community Pass answered as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub digest: String,
    pub revision: i64,
}

impl PushReport {
    fn count(&mut self, fee_id: FeeId, outcome: &PushOutcome) {
        match outcome {
            PushOutcome::Pushed { created, replayed } => {
                self.pushed += 1;
                self.created += u64::from(*created);
                self.replayed += u64::from(*replayed);
            }
            PushOutcome::Unchanged => self.unchanged += 1,
            PushOutcome::Ineligible(_) => self.ineligible += 1,
            PushOutcome::Refused(why) => {
                self.refused += 1;
                self.problems.insert(fee_id.0, why.clone());
            }
            PushOutcome::Rejected(why) => {
                self.rejected += 1;
                self.problems.insert(fee_id.0, why.clone());
            }
            PushOutcome::Deleted => self.deleted += 1,
            PushOutcome::Failed(why) => {
                self.failed += 1;
                self.problems.insert(fee_id.0, why.clone());
            }
        }
    }

    fn merge(&mut self, other: PushReport) {
        self.pushed += other.pushed;
        self.created += other.created;
        self.replayed += other.replayed;
        self.voided_deleted += other.voided_deleted;
        self.unchanged += other.unchanged;
        self.ineligible += other.ineligible;
        self.refused += other.refused;
        self.rejected += other.rejected;
        self.deleted += other.deleted;
        self.failed += other.failed;
        self.problems.extend(other.problems);
        self.acknowledged.extend(other.acknowledged);
    }
}

/// Everything needed to decide and build the pushes of a set of fees.
struct PushContext {
    fees: HashMap<FeeId, GenesisFee>,
    txns: HashMap<FeeId, Vec<GenesisTxn>>,
    links: HashMap<FeeId, FeeLink>,
    states: HashMap<FeeId, PushState>,
    /// Each student's guardian links (a student with none has no entry).
    guardians: HashMap<StudentId, Vec<GuardianLink>>,
}

fn load_context(conn: &mut DbConnection, fee_ids: &[FeeId]) -> Result<PushContext, SyncError> {
    let fees = genesis::load_fees_by_ids(conn, fee_ids)?;
    let txns = genesis::load_txns_for_fees(conn, fee_ids)?;
    for rejected in fees.rejected.iter().chain(&txns.rejected) {
        tracing::warn!(row = %rejected, "skipping a Genesis row that breaks the contract");
    }
    let mut students: Vec<StudentId> = fees.records.iter().map(|f| f.student_id).collect();
    students.sort();
    students.dedup();
    let mut txns_by_fee: HashMap<FeeId, Vec<GenesisTxn>> = HashMap::new();
    for txn in txns.records {
        txns_by_fee.entry(txn.fee_id).or_default().push(txn);
    }
    let mut guardians: HashMap<StudentId, Vec<GuardianLink>> = HashMap::new();
    for link in genesis::load_guardian_links_for(conn, &students)? {
        guardians.entry(link.student_id).or_default().push(link);
    }
    Ok(PushContext {
        fees: fees.records.into_iter().map(|f| (f.id, f)).collect(),
        txns: txns_by_fee,
        links: links::load_for(conn, fee_ids)?
            .into_iter()
            .map(|l| (l.fee_id, l))
            .collect(),
        states: links::push_states_for(conn, fee_ids)?
            .into_iter()
            .map(|state| (FeeId(state.fee_id), state))
            .collect(),
        guardians,
    })
}

/// Decides whether a fee may be pushed and builds the push: every field
/// Community Pass shows, as Genesis says now (`guardians`: the student's
/// guardian links). Pure.
fn plan_push(
    fee: &GenesisFee,
    txns: &[GenesisTxn],
    link: Option<&FeeLink>,
    guardians: &[GuardianLink],
    setup: &SetupState,
) -> Result<FeePush, PushOutcome> {
    if let Err(why) = setup.policy().eligibility(fee) {
        return Err(PushOutcome::Ineligible(why.describe().to_string()));
    }
    let locked = link.is_some_and(|l| l.amount_locked);
    let pushed_amount = link.and_then(|l| l.pushed_amount);
    if locked && pushed_amount.is_some_and(|amount| amount != fee.amount) {
        return Err(PushOutcome::Refused(format!(
            "amount edited to ${} after a Community Pass payment on ${}; the amount is read-only",
            fee.amount,
            pushed_amount.unwrap_or_default()
        )));
    }
    if locked && fee.status == FeeStatus::Void {
        return Err(PushOutcome::Refused(
            "voided in Genesis after a Community Pass payment; needs a refund decision".into(),
        ));
    }
    let party = setup.patron_id.party_for(fee.student_id, guardians);
    Ok(fee_push(
        fee,
        txns.iter(),
        party.patron_id,
        party.guardian_ids,
    ))
}

/// Names the intent of a push, or says why it is not sent. Pure.
///
/// - held: Community Pass refused this very body before (not on resend);
/// - unchanged: draining, and this very body was acknowledged with no
///   other intent since;
/// - a retry: an intent of this body was recorded and never acknowledged,
///   so its key is reused (Community Pass replays it if it applied it);
/// - otherwise a new intent, the link's next sequence number.
fn name_intent(
    push: &FeePush,
    state: Option<&PushState>,
    mode: PushMode,
) -> Result<PushIntent, PushOutcome> {
    let digest = push_digest(push);
    let fee_id = push.genesis_fee_id;
    let default = PushState::default();
    let state = state.unwrap_or(&default);
    let same = |recorded: &Option<String>| recorded.as_deref() == Some(digest.as_str());
    if mode != PushMode::Resend && same(&state.refused_digest) {
        let reason = state.refused_reason.clone().unwrap_or_default();
        return Err(PushOutcome::Rejected(format!(
            "Community Pass refused this content before ({reason}); held until the fee changes or is re-sent"
        )));
    }
    if mode == PushMode::Drain && same(&state.pushed_digest) && !state.intent_pending() {
        return Err(PushOutcome::Unchanged);
    }
    // Only a drain retries a pending intent with its key: a correction was
    // asked because Community Pass was seen to differ, and a replay of an
    // old answer would change nothing (a newer push may have overtaken it).
    if mode == PushMode::Drain && state.intent_pending() && same(&state.intent_digest) {
        if let Some(key) = &state.last_idempotency_key {
            return Ok(PushIntent {
                fee_id,
                seq: state.intent_seq,
                digest,
                key: key.clone(),
            });
        }
    }
    let seq = state.intent_seq + 1;
    Ok(PushIntent {
        fee_id,
        seq,
        key: intent_key(fee_id, seq, &digest),
        digest,
    })
}

/// The void of a fee deleted in Genesis: Community Pass's own record of
/// it, status void. `None` when it must not be voided automatically (money
/// moved on it) or is void already.
fn void_of_deleted(vendor: &VendorFee, link: Option<&FeeLink>) -> Result<FeePush, PushOutcome> {
    let money_moved = link.is_some_and(|l| l.amount_locked)
        || vendor.paid.is_positive()
        || vendor.refunded.is_positive()
        || vendor.reversed.is_positive()
        || vendor.waived.is_positive();
    if money_moved {
        return Err(PushOutcome::Deleted);
    }
    if vendor.status == VendorFeeStatus::Void {
        return Err(PushOutcome::Unchanged);
    }
    Ok(as_pushed(vendor, FeeStatus::Void))
}

/// The push that would make Community Pass show `vendor` as it is, with
/// the Genesis status `status`.
fn as_pushed(vendor: &VendorFee, status: FeeStatus) -> FeePush {
    FeePush {
        genesis_fee_id: vendor.genesis_fee_id,
        student_id: vendor.student_id,
        patron_id: vendor.patron_id.clone(),
        guardian_ids: vendor.guardian_ids.clone(),
        category: vendor.category.clone(),
        school: vendor.school.clone(),
        description: vendor.description.clone(),
        amount: vendor.amount,
        genesis_credit: vendor.genesis_credit,
        status,
        fee_date: vendor.fee_date,
        due_date: vendor.due_date,
    }
}

/// Whether Community Pass shows exactly the body whose digest it
/// acknowledged (every pushed field; the Genesis status as Community Pass
/// can show it: void, waived, or open — paid or waived by its own waiver).
/// False means a write it answered as applied did not take effect.
pub fn shows_pushed(vendor: &VendorFee, pushed_digest: &str) -> bool {
    let statuses: &[FeeStatus] = match vendor.status {
        VendorFeeStatus::Void => &[FeeStatus::Void],
        VendorFeeStatus::Waived => &[FeeStatus::Waived, FeeStatus::Open],
        VendorFeeStatus::Open | VendorFeeStatus::Paid => &[FeeStatus::Open],
    };
    let mut guardians_sorted = vendor.clone();
    guardians_sorted.guardian_ids.sort();
    statuses
        .iter()
        .any(|status| push_digest(&as_pushed(&guardians_sorted, *status)) == pushed_digest)
}

/// How many pushes are in flight at once (HTTP-bound, not CPU-bound).
pub const PUSH_CONCURRENCY: usize = 8;

/// Records every intent before any is sent, so a push cut off by a crash
/// is retried with the same key.
fn record_intents(
    conn: &mut DbConnection,
    pushes: &[(FeePush, PushIntent)],
    run_id: i64,
) -> Result<(), SyncError> {
    let intents: Vec<&PushIntent> = pushes.iter().map(|(_, intent)| intent).collect();
    conn.transaction(|conn| {
        links::record_push_intents(conn, &intents, run_id)?;
        Ok::<_, SyncError>(())
    })?;
    super::failpoint::operation("push intents recorded");
    Ok(())
}

/// Sends the pushes in batches of what the client carries in one call
/// (one fee where it has no batch write), `PUSH_CONCURRENCY` calls at a
/// time; results in input order.
fn send_all(
    portal: &dyn CommunityPass,
    pushes: &[(FeePush, PushIntent)],
) -> Vec<Result<UpsertOutcome, PortalError>> {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(PUSH_CONCURRENCY)
            .thread_name(|i| format!("cpsync-push-{i}"))
            .build()
            .expect("a thread pool of a fixed size builds")
    });
    let batch_max = portal.upsert_batch_max().max(1);
    let batches: Vec<Vec<Result<UpsertOutcome, PortalError>>> = pool.install(|| {
        pushes
            .par_chunks(batch_max)
            .map(|batch| {
                let items: Vec<(&FeePush, &str)> = batch
                    .iter()
                    .map(|(push, intent)| (push, intent.key.as_str()))
                    .collect();
                portal.upsert_fees(&items)
            })
            .collect()
    });
    batches.into_iter().flatten().collect()
}

/// What Community Pass answered to each push, in order.
type Answers = Vec<Result<UpsertOutcome, PortalError>>;

/// How many pushes one window carries: its intents are recorded before it
/// is sent, its outcomes after, while the next window is on the wire.
pub const PUSH_WINDOW_MAX: usize = 2_000;

/// The pushes, window after window, each window's intents recorded before
/// it is sent and its outcomes once answered; the database work of one
/// window (the next one's intents, the last one's outcomes) is done while
/// another window is on the wire. Results and outcomes in input order.
fn send_in_windows(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    to_send: &[(FeePush, PushIntent)],
    acknowledged: &HashSet<FeeId>,
    run_id: i64,
    clock: Clock,
) -> Result<(Answers, Vec<PushOutcome>), SyncError> {
    let windows: Vec<&[(FeePush, PushIntent)]> = to_send.chunks(PUSH_WINDOW_MAX).collect();
    let mut results = Vec::with_capacity(to_send.len());
    let mut outcomes = Vec::with_capacity(to_send.len());
    let Some(first) = windows.first() else {
        return Ok((results, outcomes));
    };
    record_intents(conn, first, run_id)?;
    std::thread::scope(|threads| {
        let mut on_the_wire = Some(threads.spawn(move || send_all(portal, first)));
        for (index, window) in windows.iter().enumerate() {
            let next = windows.get(index + 1);
            if let Some(next) = next {
                record_intents(conn, next, run_id)?;
            }
            let answered = on_the_wire
                .take()
                .expect("each window is sent before it is recorded")
                .join()
                .expect("sending pushes does not panic");
            if let Some(next) = next.copied() {
                on_the_wire = Some(threads.spawn(move || send_all(portal, next)));
            }
            // Community Pass has the writes, the links do not know yet: a
            // crash here is finished by the next run (the intents are
            // recorded).
            super::failpoint::wrote("fee pushes sent, not yet recorded");
            outcomes.extend(record_outcomes(
                conn,
                window,
                &answered,
                acknowledged,
                run_id,
                clock(),
            )?);
            results.extend(answered);
        }
        Ok::<_, SyncError>(())
    })?;
    Ok((results, outcomes))
}

/// Whether Community Pass refused a push for a reason that sending the
/// same content again cannot fix (a conflict, a validation error, an
/// unknown student or fee) — as opposed to being unreachable or busy.
fn is_refusal(error: &PortalError) -> bool {
    match error {
        PortalError::Conflict { code, .. } => code != "idempotency_conflict",
        PortalError::Validation { .. } | PortalError::NotFound { .. } => true,
        _ => false,
    }
}

/// Records what Community Pass answered, with one audit row per push:
/// acknowledgements on the links, refusals held with the vendor's reason.
/// A fee whose link has a vendor id was acknowledged before; the first
/// acknowledgement of any other is its creation, even when Community Pass
/// answers "updated" (an earlier push created it and was cut off before its
/// answer was recorded).
fn record_outcomes(
    conn: &mut DbConnection,
    sent: &[(FeePush, PushIntent)],
    results: &[Result<UpsertOutcome, PortalError>],
    acknowledged: &HashSet<FeeId>,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<Vec<PushOutcome>, SyncError> {
    let outcomes = conn.transaction(|conn| {
        let mut outcomes = Vec::with_capacity(sent.len());
        let mut entries = Vec::new();
        let acknowledgements: Vec<(&FeePush, &str, &UpsertOutcome)> = sent
            .iter()
            .zip(results)
            .filter_map(|((push, intent), result)| {
                result
                    .as_ref()
                    .ok()
                    .map(|outcome| (push, intent.digest.as_str(), outcome))
            })
            .collect();
        links::record_push_outcomes(conn, &acknowledgements, run_id, now)?;
        for ((push, intent), result) in sent.iter().zip(results) {
            let fee_id = push.genesis_fee_id;
            match result {
                Ok(outcome) => {
                    let first = !acknowledged.contains(&fee_id);
                    entries.push(push_audit(push, intent, outcome, first, run_id, now));
                    outcomes.push(PushOutcome::Pushed {
                        created: outcome.created,
                        replayed: outcome.replayed,
                    });
                }
                Err(error) if is_refusal(error) => {
                    let reason = error.to_string();
                    links::record_refusal(conn, fee_id, &intent.digest, &reason, run_id, now)?;
                    entries.push(refusal_audit(push, &reason, run_id, now));
                    outcomes.push(PushOutcome::Rejected(reason));
                }
                Err(error) => {
                    if matches!(error, PortalError::Conflict { .. }) {
                        // The key met another body (a restored database):
                        // the next push of this fee is a new intent.
                        links::forget_intent(conn, fee_id)?;
                    }
                    outcomes.push(PushOutcome::Failed(error.to_string()));
                }
            }
        }
        audit::record(conn, &entries)?;
        Ok::<_, SyncError>(outcomes)
    })?;
    super::failpoint::operation("push outcomes recorded");
    Ok(outcomes)
}

fn push_audit(
    push: &FeePush,
    intent: &PushIntent,
    outcome: &UpsertOutcome,
    first_acknowledgement: bool,
    run_id: i64,
    now: NaiveDateTime,
) -> AuditEntry {
    let late = first_acknowledgement && !outcome.created;
    let action = if outcome.created || late {
        "created"
    } else if push.status == FeeStatus::Void {
        "voided"
    } else {
        "updated"
    };
    AuditEntry {
        run_id: Some(run_id),
        at: now,
        side: AuditSide::CommunityPass,
        entity: "fee",
        entity_id: push.genesis_fee_id.to_string(),
        action: action.to_string(),
        detail: Some(format!(
            "amount ${}, Genesis credit ${}, status {}, student {}, patron {}; intent {}, revision {}{}{}",
            push.amount,
            push.genesis_credit,
            push.status,
            push.student_id,
            push.patron_id,
            intent.seq,
            outcome.revision,
            if outcome.replayed { " (replayed)" } else { "" },
            if late {
                " (created by an earlier push whose answer was never recorded)"
            } else {
                ""
            }
        )),
    }
}

fn refusal_audit(push: &FeePush, reason: &str, run_id: i64, now: NaiveDateTime) -> AuditEntry {
    AuditEntry {
        run_id: Some(run_id),
        at: now,
        side: AuditSide::CommunityPass,
        entity: "fee",
        entity_id: push.genesis_fee_id.to_string(),
        action: "refused".to_string(),
        detail: Some(format!(
            "{reason}; held until the fee changes or `send-fees --resend --fee {}`",
            push.genesis_fee_id
        )),
    }
}

/// Pushes these fees, each decided on its own under `mode`. Returns one
/// outcome per fee id, in the order given.
pub fn push_fees(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    fee_ids: &[FeeId],
    mode: PushMode,
    run_id: i64,
    clock: Clock,
) -> Result<(PushReport, Vec<(FeeId, PushOutcome)>), SyncError> {
    let context = load_context(conn, fee_ids)?;
    let deleted_ids: Vec<FeeId> = fee_ids
        .iter()
        .filter(|id| !context.fees.contains_key(id))
        .filter(|id| context.links.get(id).is_some_and(FeeLink::was_sent))
        .copied()
        .collect();
    let deleted_in_cp: HashMap<FeeId, VendorFee> = if deleted_ids.is_empty() {
        HashMap::new()
    } else {
        fees_by_ids(portal, &deleted_ids)
            .map_err(SyncError::Portal)?
            .into_iter()
            .map(|fee| (fee.genesis_fee_id, fee))
            .collect()
    };
    let mut decided: Vec<(FeeId, Option<PushOutcome>)> = Vec::with_capacity(fee_ids.len());
    let mut to_send: Vec<(FeePush, PushIntent)> = Vec::new();
    for fee_id in fee_ids {
        let link = context.links.get(fee_id);
        let planned = match context.fees.get(fee_id) {
            None => match deleted_in_cp.get(fee_id) {
                Some(vendor) => void_of_deleted(vendor, link),
                None => Err(PushOutcome::Deleted),
            },
            Some(fee) => {
                let txns = context.txns.get(fee_id).map(Vec::as_slice).unwrap_or(&[]);
                let guardians = context
                    .guardians
                    .get(&fee.student_id)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                plan_push(fee, txns, link, guardians, setup)
            }
        };
        let decision = planned.and_then(|push| {
            name_intent(&push, context.states.get(fee_id), mode).map(|intent| (push, intent))
        });
        match decision {
            Ok((push, intent)) => {
                to_send.push((push, intent));
                decided.push((*fee_id, None));
            }
            Err(outcome) => decided.push((*fee_id, Some(outcome))),
        }
    }
    let acknowledged: HashSet<FeeId> = context
        .links
        .values()
        .filter(|link| link.was_sent())
        .map(|link| link.fee_id)
        .collect();
    let (results, sent_outcomes) =
        send_in_windows(conn, portal, &to_send, &acknowledged, run_id, clock)?;
    let mut sent_outcomes = sent_outcomes.into_iter();
    let mut report = PushReport::default();
    for ((push, intent), result) in to_send.iter().zip(&results) {
        if let Ok(outcome) = result {
            report.acknowledged.insert(
                push.genesis_fee_id,
                Acknowledged {
                    digest: intent.digest.clone(),
                    revision: outcome.revision,
                },
            );
        }
    }
    let mut outcomes = Vec::with_capacity(decided.len());
    for (fee_id, outcome) in decided {
        let outcome = outcome.unwrap_or_else(|| {
            sent_outcomes
                .next()
                .expect("one sent outcome per push planned")
        });
        if !context.fees.contains_key(&fee_id) && matches!(outcome, PushOutcome::Pushed { .. }) {
            report.voided_deleted += 1;
        }
        report.count(fee_id, &outcome);
        outcomes.push((fee_id, outcome));
    }
    Ok((report, outcomes))
}

/// Drains the outbox: every pending change is pushed (or skipped with the
/// reason) and completed; failures stay pending for the next run.
pub fn drain_outbox(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    run_id: i64,
    clock: Clock,
) -> Result<PushReport, SyncError> {
    drain_outbox_until(
        conn,
        portal,
        setup,
        run_id,
        clock,
        SEND_OUTBOX_BATCH_MAX,
        &|| false,
    )
}

/// `drain_outbox`, `batch_max` entries at a time, that also stops between
/// batches once `stop()` says so
/// (for `watch`'s graceful shutdown): the batch in hand is always finished
/// and completed, the rest stays pending for the next run.
pub fn drain_outbox_until(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    run_id: i64,
    clock: Clock,
    batch_max: i64,
    stop: &dyn Fn() -> bool,
) -> Result<PushReport, SyncError> {
    setup.ready_to_send()?;
    let mut report = PushReport::default();
    let waiting = outbox::pending_count(conn)?;
    let mut progress =
        super::progress::Progress::new("outbox entries handled", Some(waiting as u64));
    // Each entry is taken once per drain: one that fails stays pending for
    // the next run instead of coming round again in this one.
    let mut after_id = 0;
    for batch in 0..OUTBOX_BATCHES_MAX {
        if batch > 0 && stop() {
            break;
        }
        let entries = outbox::pending_after(conn, after_id, batch_max)?;
        let Some(last) = entries.last() else {
            break;
        };
        after_id = last.id;
        let mut fee_ids: Vec<FeeId> = entries.iter().map(|e| FeeId(e.fee_id)).collect();
        fee_ids.sort();
        fee_ids.dedup();
        let (batch_report, outcomes) = push_fees(
            conn,
            portal,
            setup,
            &fee_ids,
            PushMode::Drain,
            run_id,
            clock,
        )?;
        complete_entries(conn, &entries, &outcomes, run_id, clock())?;
        progress.advance(entries.len() as u64);
        let all_failed = batch_report.failed as usize == fee_ids.len();
        report.merge(batch_report);
        if all_failed {
            // Community Pass is not answering: stop, the entries stay pending.
            break;
        }
    }
    progress.finish();
    Ok(report)
}

/// Completes a drained batch's outbox entries (or records their failed
/// attempt) in one transaction: one statement per distinct note, not one
/// per entry.
fn complete_entries(
    conn: &mut DbConnection,
    entries: &[outbox::OutboxEntry],
    outcomes: &[(FeeId, PushOutcome)],
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), SyncError> {
    let by_fee: HashMap<FeeId, &PushOutcome> = outcomes.iter().map(|(f, o)| (*f, o)).collect();
    let mut failed: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut completed: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for entry in entries {
        let outcome = by_fee.get(&FeeId(entry.fee_id)).copied();
        match outcome {
            Some(PushOutcome::Failed(why)) => failed.entry(why).or_default().push(entry.id),
            Some(other) => {
                let note = match other {
                    PushOutcome::Ineligible(why) => Some(format!("not sent: {why}")),
                    PushOutcome::Refused(why) => Some(format!("refused: {why}")),
                    PushOutcome::Rejected(why) => Some(format!("held: {why}")),
                    PushOutcome::Deleted => Some(
                        "fee deleted in Genesis after money moved on it; the nightly run reports it"
                            .to_string(),
                    ),
                    _ => None,
                };
                completed.entry(note).or_default().push(entry.id);
            }
            None => completed.entry(None).or_default().push(entry.id),
        }
    }
    conn.transaction(|conn| {
        for (why, ids) in &failed {
            outbox::record_failure(conn, ids, why, run_id)?;
        }
        for (note, ids) in &completed {
            outbox::complete(conn, ids, note.as_deref(), run_id, now)?;
        }
        Ok::<_, SyncError>(())
    })?;
    super::failpoint::operation("outbox entries completed");
    Ok(())
}

/// What a change of the sending policy does to fees already sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyChange {
    /// Sent fees the new policy no longer sends: frozen (never pushed
    /// again; their payments still posted; a review item only when they
    /// change or the sides disagree).
    pub frozen: u64,
    /// Sent fees frozen before that the new policy sends again (queued).
    pub thawed: Vec<FeeId>,
}

/// Compares the old and new sending policy over the fees already sent.
pub fn policy_change(
    conn: &mut DbConnection,
    old: &SetupState,
    new: &SetupState,
) -> Result<PolicyChange, SyncError> {
    let sent: HashSet<FeeId> = links::load_all(conn)?
        .into_iter()
        .filter(FeeLink::was_sent)
        .map(|link| link.fee_id)
        .collect();
    let (old_policy, new_policy) = (old.policy(), new.policy());
    let mut change = PolicyChange::default();
    for fee in genesis::load_fees(conn, None)?.records {
        if !sent.contains(&fee.id) {
            continue;
        }
        match (
            old_policy.eligibility(&fee).is_ok(),
            new_policy.eligibility(&fee).is_ok(),
        ) {
            (true, false) => change.frozen += 1,
            (false, true) => change.thawed.push(fee.id),
            _ => {}
        }
    }
    Ok(change)
}

/// Every fee already sent (to re-push those a patron id rule change
/// affects: the drain skips the ones whose body did not change).
pub fn sent_fee_ids(conn: &mut DbConnection) -> Result<Vec<FeeId>, SyncError> {
    Ok(links::load_all(conn)?
        .into_iter()
        .filter(FeeLink::was_sent)
        .map(|link| link.fee_id)
        .collect())
}

/// The ids of every fee eligible to be sent now (for the initial load when
/// the cutoff is set, and for `--resend`), optionally of one student.
pub fn eligible_fee_ids(
    conn: &mut DbConnection,
    setup: &SetupState,
    student: Option<StudentId>,
) -> Result<Vec<FeeId>, SyncError> {
    let policy = setup.policy();
    let fees = genesis::load_fees(conn, student)?;
    Ok(fees
        .records
        .iter()
        .filter(|f| policy.eligibility(f).is_ok())
        .map(|f| f.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StudentId, TxnKind, TxnSource};
    use crate::money::Money;
    use chrono::NaiveDate;

    fn setup() -> SetupState {
        SetupState {
            cutoff: NaiveDate::from_ymd_opt(2026, 8, 1),
            ..SetupState::default()
        }
    }

    fn fee(cents: i64, status: FeeStatus) -> GenesisFee {
        let at = NaiveDate::from_ymd_opt(2026, 9, 1)
            .unwrap()
            .and_hms_opt(8, 0, 0)
            .unwrap();
        GenesisFee {
            id: FeeId(7),
            student_id: StudentId(100_001),
            category: "LAB".into(),
            school: "HS01".into(),
            description: "Lab fee".into(),
            amount: Money::from_cents(cents),
            fee_date: at.date(),
            due_date: None,
            status,
            created_at: at,
            modified_at: at,
        }
    }

    fn link(cents: i64, locked: bool) -> FeeLink {
        FeeLink {
            fee_id: FeeId(7),
            vendor_fee_id: Some("cp-fee-7".into()),
            pushed_amount: Some(Money::from_cents(cents)),
            pushed_status: Some(FeeStatus::Open),
            pushed_credit: Some(Money::ZERO),
            amount_locked: locked,
        }
    }

    #[test]
    fn a_locked_amount_is_never_pushed_changed() {
        let outcome = plan_push(
            &fee(4_000, FeeStatus::Open),
            &[],
            Some(&link(3_500, true)),
            &[],
            &setup(),
        );
        assert!(
            matches!(outcome, Err(PushOutcome::Refused(_))),
            "{outcome:?}"
        );
        let unlocked = plan_push(
            &fee(4_000, FeeStatus::Open),
            &[],
            Some(&link(3_500, false)),
            &[],
            &setup(),
        );
        assert_eq!(unlocked.unwrap().amount, Money::from_cents(4_000));
    }

    #[test]
    fn a_locked_fee_still_carries_a_new_office_payment() {
        let office = GenesisTxn {
            id: 1,
            fee_id: FeeId(7),
            kind: TxnKind::Payment,
            amount: Money::from_cents(500),
            method: "cash".into(),
            source: TxnSource::Genesis,
            vendor_txn_id: None,
            posted_at: NaiveDate::from_ymd_opt(2026, 9, 2)
                .unwrap()
                .and_hms_opt(8, 0, 0)
                .unwrap(),
        };
        let push = plan_push(
            &fee(3_500, FeeStatus::Open),
            &[office],
            Some(&link(3_500, true)),
            &[],
            &setup(),
        )
        .unwrap();
        assert_eq!(push.genesis_credit, Money::from_cents(500));
    }

    #[test]
    fn ineligible_fees_are_not_sent() {
        let late_setup = SetupState {
            cutoff: NaiveDate::from_ymd_opt(2026, 10, 1),
            ..setup()
        };
        let early = plan_push(&fee(3_500, FeeStatus::Open), &[], None, &[], &late_setup);
        assert!(matches!(early, Err(PushOutcome::Ineligible(_))));
    }

    fn acknowledged(push: &FeePush, seq: i64) -> PushState {
        let digest = push_digest(push);
        PushState {
            fee_id: push.genesis_fee_id.0,
            intent_seq: seq,
            intent_digest: Some(digest.clone()),
            last_idempotency_key: Some(intent_key(push.genesis_fee_id, seq, &digest)),
            pushed_digest: Some(digest),
            refused_digest: None,
            refused_reason: None,
        }
    }

    fn push_of(cents: i64, description: &str) -> FeePush {
        let mut fee = fee(cents, FeeStatus::Open);
        fee.description = description.into();
        plan_push(&fee, &[], None, &[], &setup()).unwrap()
    }

    #[test]
    fn unchanged_means_the_whole_body_was_acknowledged() {
        let a = push_of(3_500, "Lab fee");
        let state = acknowledged(&a, 1);
        assert_eq!(
            name_intent(&a, Some(&state), PushMode::Drain).unwrap_err(),
            PushOutcome::Unchanged
        );
        let renamed = push_of(3_500, "Lab fee (chemistry)");
        let intent = name_intent(&renamed, Some(&state), PushMode::Drain).unwrap();
        assert_eq!(intent.seq, 2, "a description change is a new intent");
        let corrected = name_intent(&a, Some(&state), PushMode::Correct).unwrap();
        assert_eq!(
            corrected.seq, 2,
            "a correction is sent although acknowledged"
        );
    }

    #[test]
    fn returning_to_an_earlier_body_is_a_new_intent() {
        let a = push_of(3_500, "Lab fee");
        let b = push_of(4_000, "Lab fee");
        let first = name_intent(&a, None, PushMode::Drain).unwrap();
        let mut state = acknowledged(&a, first.seq);
        let second = name_intent(&b, Some(&state), PushMode::Drain).unwrap();
        state = acknowledged(&b, second.seq);
        let third = name_intent(&a, Some(&state), PushMode::Drain).unwrap();
        assert_eq!((first.seq, second.seq, third.seq), (1, 2, 3));
        assert_ne!(
            first.key, third.key,
            "A -> B -> A must not replay A's answer"
        );
    }

    #[test]
    fn a_lost_answer_is_retried_with_its_key_and_a_refusal_is_held() {
        let a = push_of(3_500, "Lab fee");
        let b = push_of(4_000, "Lab fee");
        let mut state = acknowledged(&a, 1);
        let pending = name_intent(&b, Some(&state), PushMode::Drain).unwrap();
        state.intent_seq = pending.seq;
        state.intent_digest = Some(pending.digest.clone());
        state.last_idempotency_key = Some(pending.key.clone());
        let retry = name_intent(&b, Some(&state), PushMode::Drain).unwrap();
        assert_eq!(retry, pending, "same intent, same key");
        let resent = name_intent(&b, Some(&state), PushMode::Resend).unwrap();
        assert_eq!(
            resent.seq,
            pending.seq + 1,
            "a resend is always a new intent"
        );
        let corrected = name_intent(&b, Some(&state), PushMode::Correct).unwrap();
        assert_eq!(
            corrected.seq,
            pending.seq + 1,
            "a correction is never a replay"
        );

        state.refused_digest = Some(pending.digest.clone());
        state.refused_reason = Some("409 amount_locked".into());
        let held = name_intent(&b, Some(&state), PushMode::Drain).unwrap_err();
        assert!(matches!(held, PushOutcome::Rejected(ref why) if why.contains("amount_locked")));
        assert!(name_intent(&b, Some(&state), PushMode::Correct).is_err());
        assert!(name_intent(&b, Some(&state), PushMode::Resend).is_ok());
        let changed = push_of(4_000, "Lab fee, second term");
        assert!(name_intent(&changed, Some(&state), PushMode::Drain).is_ok());
    }
}
