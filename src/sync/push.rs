//! Send Fees: pushes Genesis fees to Community Pass. Used by the outbox
//! drain (`send-fees`, `watch`), by `send-fees --resend`, and by the nightly
//! run's corrections. Only eligible fees are sent; a fee whose amount is
//! locked by a Community Pass payment is never pushed with a new amount.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDateTime;
use diesel::Connection;
use rayon::prelude::*;
use serde::Serialize;

use super::{Clock, SyncError};
use crate::db::audit::{self, AuditEntry, AuditSide};
use crate::db::{genesis, links, outbox, DbConnection};
use crate::domain::{FeeId, FeePush, FeeStatus, GenesisFee, GenesisTxn, GuardianLink, StudentId};
use crate::portal::{idempotency_key, CommunityPass, PortalError, UpsertOutcome};
use crate::reconcile::{fee_push, FeeLink};
use crate::setup::SetupState;

/// How many outbox entries one drain pass takes at a time.
pub const OUTBOX_BATCH_MAX: i64 = 500;
/// How many batches one drain may take before returning (the next run goes on).
pub const OUTBOX_BATCHES_MAX: usize = 10_000;

/// What happened to one fee asked to be pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum PushOutcome {
    /// Community Pass created or updated the fee.
    Pushed { created: bool, replayed: bool },
    /// What Community Pass holds already matches; nothing sent.
    Unchanged,
    /// Not eligible: before the cutoff, category not selected, school excluded.
    Ineligible(String),
    /// Refused by a handbook rule (e.g. amount edited after a payment).
    Refused(String),
    /// The fee no longer exists in Genesis.
    Deleted,
    /// The call failed; the fee stays pending.
    Failed(String),
}

/// Counts of a push pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    pub pushed: u64,
    pub created: u64,
    pub replayed: u64,
    pub unchanged: u64,
    pub ineligible: u64,
    pub refused: u64,
    pub deleted: u64,
    pub failed: u64,
    /// Fees refused or failed, with why (for the run summary).
    pub problems: BTreeMap<i64, String>,
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
        self.unchanged += other.unchanged;
        self.ineligible += other.ineligible;
        self.refused += other.refused;
        self.deleted += other.deleted;
        self.failed += other.failed;
        self.problems.extend(other.problems);
    }
}

/// Everything needed to decide and build the pushes of a set of fees.
struct PushContext {
    fees: HashMap<FeeId, GenesisFee>,
    txns: HashMap<FeeId, Vec<GenesisTxn>>,
    links: HashMap<FeeId, FeeLink>,
    guardians: Vec<GuardianLink>,
}

fn load_context(conn: &mut DbConnection, fee_ids: &[FeeId]) -> Result<PushContext, SyncError> {
    let fees = genesis::load_fees_by_ids(conn, fee_ids)?;
    let txns = genesis::load_txns_for_fees(conn, fee_ids)?;
    for rejected in fees.rejected.iter().chain(&txns.rejected) {
        tracing::warn!(row = %rejected, "skipping a Genesis row that breaks the contract");
    }
    let students: Vec<StudentId> = fees.records.iter().map(|f| f.student_id).collect();
    let mut txns_by_fee: HashMap<FeeId, Vec<GenesisTxn>> = HashMap::new();
    for txn in txns.records {
        txns_by_fee.entry(txn.fee_id).or_default().push(txn);
    }
    Ok(PushContext {
        fees: fees.records.into_iter().map(|f| (f.id, f)).collect(),
        txns: txns_by_fee,
        links: links::load_for(conn, fee_ids)?
            .into_iter()
            .map(|l| (l.fee_id, l))
            .collect(),
        guardians: genesis::load_guardian_links_for(conn, &students)?,
    })
}

/// Decides whether a fee may be pushed and builds the push. Pure.
fn plan_push(
    fee: &GenesisFee,
    txns: &[GenesisTxn],
    link: Option<&FeeLink>,
    guardians: &[GuardianLink],
    setup: &SetupState,
    force: bool,
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
    let guardian_ids = guardians
        .iter()
        .filter(|g| g.student_id == fee.student_id)
        .map(|g| g.guardian_id)
        .collect();
    let patron = setup.patron_id.patron_for(fee.student_id, guardians);
    let push = fee_push(fee, txns.iter(), patron, guardian_ids);
    let same_as_pushed = link.is_some_and(|l| {
        l.was_sent()
            && l.pushed_amount == Some(push.amount)
            && l.pushed_status == Some(push.status)
            && l.pushed_credit == Some(push.genesis_credit)
    });
    if same_as_pushed && !force {
        return Err(PushOutcome::Unchanged);
    }
    Ok(push)
}

/// How many pushes are in flight at once (HTTP-bound, not CPU-bound).
pub const PUSH_CONCURRENCY: usize = 8;

/// Records the intent (the idempotency key) of every push before any is sent,
/// so a push cut off by a crash is retried with the same key.
fn record_intents(
    conn: &mut DbConnection,
    pushes: &[(FeePush, String)],
    run_id: i64,
) -> Result<(), SyncError> {
    let intents: Vec<(FeeId, &str)> = pushes
        .iter()
        .map(|(push, key)| (push.genesis_fee_id, key.as_str()))
        .collect();
    conn.transaction(|conn| {
        links::record_push_intents(conn, &intents, run_id)?;
        Ok(())
    })
}

/// Sends the pushes, `PUSH_CONCURRENCY` at a time; results in input order.
fn send_all(
    portal: &dyn CommunityPass,
    pushes: &[(FeePush, String)],
) -> Vec<Result<UpsertOutcome, PortalError>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PUSH_CONCURRENCY)
        .build()
        .expect("a thread pool of a fixed size builds");
    pool.install(|| {
        pushes
            .par_iter()
            .map(|(push, key)| portal.upsert_fee(push, key))
            .collect()
    })
}

/// Records what Community Pass acknowledged, with one audit row per push.
/// A fee whose link has a vendor id was acknowledged before; the first
/// acknowledgement of any other is its creation, even when Community Pass
/// answers "updated" (an earlier push created it and was cut off before its
/// answer was recorded).
fn record_outcomes(
    conn: &mut DbConnection,
    sent: &[(FeePush, String)],
    results: &[Result<UpsertOutcome, PortalError>],
    acknowledged: &HashSet<FeeId>,
    run_id: i64,
    now: NaiveDateTime,
) -> Result<Vec<PushOutcome>, SyncError> {
    conn.transaction(|conn| {
        let mut outcomes = Vec::with_capacity(sent.len());
        let mut entries = Vec::new();
        let acknowledgements: Vec<(&FeePush, &UpsertOutcome)> = sent
            .iter()
            .zip(results)
            .filter_map(|((push, _), result)| result.as_ref().ok().map(|outcome| (push, outcome)))
            .collect();
        links::record_push_outcomes(conn, &acknowledgements, run_id, now)?;
        for ((push, _), result) in sent.iter().zip(results) {
            match result {
                Ok(outcome) => {
                    let first = !acknowledged.contains(&push.genesis_fee_id);
                    entries.push(push_audit(push, outcome, first, run_id, now));
                    outcomes.push(PushOutcome::Pushed {
                        created: outcome.created,
                        replayed: outcome.replayed,
                    });
                }
                Err(error) => outcomes.push(PushOutcome::Failed(error.to_string())),
            }
        }
        audit::record(conn, &entries)?;
        Ok(outcomes)
    })
}

fn push_audit(
    push: &FeePush,
    outcome: &UpsertOutcome,
    first_acknowledgement: bool,
    run_id: i64,
    now: NaiveDateTime,
) -> AuditEntry {
    let late = first_acknowledgement && !outcome.created;
    AuditEntry {
        run_id: Some(run_id),
        at: now,
        side: AuditSide::CommunityPass,
        entity: "fee",
        entity_id: push.genesis_fee_id.to_string(),
        action: if outcome.created || late {
            "created"
        } else {
            "updated"
        }
        .to_string(),
        detail: Some(format!(
            "amount ${}, Genesis credit ${}, status {}{}{}",
            push.amount,
            push.genesis_credit,
            push.status,
            if outcome.replayed { " (replayed)" } else { "" },
            if late {
                " (created by an earlier push whose answer was never recorded)"
            } else {
                ""
            }
        )),
    }
}

/// Pushes these fees (each decided on its own); `force` re-sends unchanged
/// ones. Returns one outcome per fee id, in the order given.
pub fn push_fees(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    fee_ids: &[FeeId],
    force: bool,
    run_id: i64,
    clock: Clock,
) -> Result<(PushReport, Vec<(FeeId, PushOutcome)>), SyncError> {
    let context = load_context(conn, fee_ids)?;
    let mut decided: Vec<(FeeId, Option<PushOutcome>)> = Vec::with_capacity(fee_ids.len());
    let mut to_send: Vec<(FeePush, String)> = Vec::new();
    for fee_id in fee_ids {
        let decision = match context.fees.get(fee_id) {
            None => Err(PushOutcome::Deleted),
            Some(fee) => {
                let txns = context.txns.get(fee_id).map(Vec::as_slice).unwrap_or(&[]);
                let link = context.links.get(fee_id);
                plan_push(fee, txns, link, &context.guardians, setup, force)
            }
        };
        match decision {
            Ok(push) => {
                let key = idempotency_key(&push);
                to_send.push((push, key));
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
    record_intents(conn, &to_send, run_id)?;
    let results = send_all(portal, &to_send);
    let mut sent_outcomes =
        record_outcomes(conn, &to_send, &results, &acknowledged, run_id, clock())?.into_iter();
    let mut report = PushReport::default();
    let mut outcomes = Vec::with_capacity(decided.len());
    for (fee_id, outcome) in decided {
        let outcome = outcome.unwrap_or_else(|| {
            sent_outcomes
                .next()
                .expect("one sent outcome per push planned")
        });
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
    drain_outbox_until(conn, portal, setup, run_id, clock, &|| false)
}

/// `drain_outbox` that also stops between batches once `stop()` says so
/// (for `watch`'s graceful shutdown): the batch in hand is always finished
/// and completed, the rest stays pending for the next run.
pub fn drain_outbox_until(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    setup: &SetupState,
    run_id: i64,
    clock: Clock,
    stop: &dyn Fn() -> bool,
) -> Result<PushReport, SyncError> {
    setup.ready_to_send()?;
    let mut report = PushReport::default();
    for batch in 0..OUTBOX_BATCHES_MAX {
        if batch > 0 && stop() {
            break;
        }
        let entries = outbox::pending(conn, OUTBOX_BATCH_MAX)?;
        if entries.is_empty() {
            break;
        }
        let mut fee_ids: Vec<FeeId> = entries.iter().map(|e| FeeId(e.fee_id)).collect();
        fee_ids.sort();
        fee_ids.dedup();
        let (batch_report, outcomes) =
            push_fees(conn, portal, setup, &fee_ids, false, run_id, clock)?;
        complete_entries(conn, &entries, &outcomes, run_id, clock())?;
        let all_failed = batch_report.failed as usize == fee_ids.len();
        report.merge(batch_report);
        if all_failed {
            // Community Pass is not answering: stop, the entries stay pending.
            break;
        }
    }
    Ok(report)
}

fn complete_entries(
    conn: &mut DbConnection,
    entries: &[outbox::OutboxEntry],
    outcomes: &[(FeeId, PushOutcome)],
    run_id: i64,
    now: NaiveDateTime,
) -> Result<(), SyncError> {
    let by_fee: HashMap<FeeId, &PushOutcome> = outcomes.iter().map(|(f, o)| (*f, o)).collect();
    for entry in entries {
        let outcome = by_fee.get(&FeeId(entry.fee_id)).copied();
        match outcome {
            Some(PushOutcome::Failed(why)) => {
                outbox::record_failure(conn, &[entry.id], why, run_id)?
            }
            Some(other) => {
                let note = match other {
                    PushOutcome::Ineligible(why) => Some(format!("not sent: {why}")),
                    PushOutcome::Refused(why) => Some(format!("refused: {why}")),
                    PushOutcome::Deleted => {
                        Some("fee deleted in Genesis; the nightly run reports it".to_string())
                    }
                    _ => None,
                };
                outbox::complete(conn, &[entry.id], note.as_deref(), run_id, now)?;
            }
            None => outbox::complete(conn, &[entry.id], None, run_id, now)?,
        }
    }
    Ok(())
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
            false,
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
            false,
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
            false,
        )
        .unwrap();
        assert_eq!(push.genesis_credit, Money::from_cents(500));
    }

    #[test]
    fn unchanged_and_ineligible_fees_are_not_sent() {
        let same = plan_push(
            &fee(3_500, FeeStatus::Open),
            &[],
            Some(&link(3_500, false)),
            &[],
            &setup(),
            false,
        );
        assert_eq!(same.unwrap_err(), PushOutcome::Unchanged);
        let forced = plan_push(
            &fee(3_500, FeeStatus::Open),
            &[],
            Some(&link(3_500, false)),
            &[],
            &setup(),
            true,
        );
        assert!(forced.is_ok());
        let late_setup = SetupState {
            cutoff: NaiveDate::from_ymd_opt(2026, 10, 1),
            ..setup()
        };
        let early = plan_push(
            &fee(3_500, FeeStatus::Open),
            &[],
            None,
            &[],
            &late_setup,
            true,
        );
        assert!(matches!(early, Err(PushOutcome::Ineligible(_))));
    }
}
