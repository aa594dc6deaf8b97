//! Realistic activity for the demo, benchmarks and chaos runs: what parents
//! do in Community Pass (payments, partial and over-payments, refunds,
//! waivers, returned e-checks, fees created there, duplicates) and the drift
//! a district's own staff cause in Genesis (edits after payment, voids,
//! deletions, office payments whose push was lost). Deterministic per seed.

use chrono::{Duration, NaiveDateTime};
use diesel::connection::SimpleConnection;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::db::{DbConnection, DbError};
use crate::domain::{FeeId, StudentId, TxnKind, VendorTxn};
use crate::money::Money;
use crate::sim::model::{ActionOutcome, FeeRef};
use crate::sim::{AdminClient, ParentAction};

/// How many actions go to the simulator in one admin call.
pub const ACTIONS_PER_CALL_MAX: usize = 1_000;

/// One fee Community Pass holds, as the activity generator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentFee {
    pub fee_id: FeeId,
    pub student_id: StudentId,
    pub amount: Money,
}

/// What the parents did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ActivityReport {
    pub payments: u64,
    pub partial_payments: u64,
    pub over_payments: u64,
    pub waivers: u64,
    pub refunds: u64,
    pub reversals: u64,
    pub unmanaged_fees: u64,
    pub duplicates: u64,
    pub collected: Money,
}

/// Rates per thousand fees.
const PAID_IN_FULL_PER_MILLE: u32 = 220;
const PAID_PARTLY_PER_MILLE: u32 = 50;
const OVERPAID_PER_MILLE: u32 = 5;
const WAIVED_PER_MILLE: u32 = 10;
/// Rates per thousand payments.
const REFUNDED_PER_MILLE: u32 = 20;
const REVERSED_PER_MILLE: u32 = 10;

fn payment(fee: &SentFee, amount: Option<Money>, method: &str, at: NaiveDateTime) -> ParentAction {
    ParentAction::Payment {
        fee: FeeRef::Genesis(fee.fee_id),
        amount,
        method: Some(method.to_string()),
        occurred_at: Some(at),
    }
}

/// The first wave: payments of every kind and waivers, on the fees given.
pub fn first_wave(
    fees: &[SentFee],
    rng: &mut ChaCha8Rng,
    start: NaiveDateTime,
) -> Vec<ParentAction> {
    let mut actions = Vec::new();
    for fee in fees {
        let at = start + Duration::minutes(rng.gen_range(0..60 * 24 * 30));
        let method = if rng.gen_bool(0.8) { "card" } else { "echeck" };
        let roll = rng.gen_range(0..1000);
        let full = PAID_IN_FULL_PER_MILLE;
        let partly = full + PAID_PARTLY_PER_MILLE;
        let over = partly + OVERPAID_PER_MILLE;
        let waived = over + WAIVED_PER_MILLE;
        match roll {
            r if r < full => actions.push(payment(fee, None, method, at)),
            r if r < partly && fee.amount.cents() >= 200 => {
                let part = Money::from_cents(fee.amount.cents() * rng.gen_range(20..80) / 100);
                actions.push(payment(fee, Some(part), method, at));
            }
            r if r < over => {
                let extra = Money::from_cents(rng.gen_range(100..2_000));
                actions.push(payment(fee, Some(fee.amount + extra), method, at));
            }
            r if r < waived => actions.push(ParentAction::Waiver {
                fee: FeeRef::Genesis(fee.fee_id),
                amount: None,
                occurred_at: Some(at),
            }),
            _ => {}
        }
    }
    actions
}

/// The second wave: refunds and returned e-checks of some of the payments.
pub fn second_wave(payments: &[VendorTxn], rng: &mut ChaCha8Rng) -> Vec<ParentAction> {
    let mut actions = Vec::new();
    for paid in payments.iter().filter(|t| t.kind == TxnKind::Payment) {
        let roll = rng.gen_range(0..1000);
        if roll < REFUNDED_PER_MILLE {
            actions.push(ParentAction::Refund {
                payment_id: paid.id.clone(),
                amount: None,
                occurred_at: Some(paid.occurred_at + Duration::days(2)),
            });
        } else if roll < REFUNDED_PER_MILLE + REVERSED_PER_MILLE && paid.method == "echeck" {
            actions.push(ParentAction::Reversal {
                payment_id: paid.id.clone(),
                days_later: Some(rng.gen_range(3..9)),
            });
        } else if roll < REFUNDED_PER_MILLE + REVERSED_PER_MILLE {
            actions.push(ParentAction::Reversal {
                payment_id: paid.id.clone(),
                days_later: Some(rng.gen_range(20..45)),
            });
        }
    }
    actions
}

fn act_in_chunks(
    admin: &AdminClient,
    actions: Vec<ParentAction>,
) -> anyhow::Result<Vec<ActionOutcome>> {
    let mut outcomes = Vec::with_capacity(actions.len());
    for chunk in actions.chunks(ACTIONS_PER_CALL_MAX) {
        outcomes.extend(admin.act(chunk.to_vec())?);
    }
    Ok(outcomes)
}

fn tally(report: &mut ActivityReport, fees: &[SentFee], outcomes: &[ActionOutcome]) {
    for outcome in outcomes {
        match outcome {
            ActionOutcome::Transaction(txn) => count_txn(report, fees, txn),
            ActionOutcome::UnmanagedFee(_) => report.unmanaged_fees += 1,
            ActionOutcome::FaultSet => {}
        }
    }
}

fn count_txn(report: &mut ActivityReport, fees: &[SentFee], txn: &VendorTxn) {
    let amount = txn
        .genesis_fee_id
        .and_then(|id| fees.iter().find(|f| f.fee_id == id))
        .map(|f| f.amount);
    match txn.kind {
        TxnKind::Payment => {
            report.collected += txn.amount;
            match amount {
                Some(a) if txn.amount < a => report.partial_payments += 1,
                Some(a) if txn.amount > a => report.over_payments += 1,
                _ => report.payments += 1,
            }
        }
        TxnKind::Waiver => report.waivers += 1,
        TxnKind::Refund => {
            report.refunds += 1;
            report.collected -= txn.amount;
        }
        TxnKind::Reversal => {
            report.reversals += 1;
            report.collected -= txn.amount;
        }
    }
}

/// Drives both waves, plus one fee created in Community Pass and one
/// duplicate of an integration fee (for the preflight), through the admin API.
pub fn drive_parents(
    admin: &AdminClient,
    fees: &[SentFee],
    seed: u64,
    start: NaiveDateTime,
) -> anyhow::Result<ActivityReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = ActivityReport::default();
    let first = act_in_chunks(admin, first_wave(fees, &mut rng, start))?;
    tally(&mut report, fees, &first);
    let payments: Vec<VendorTxn> = first
        .iter()
        .filter_map(|o| match o {
            ActionOutcome::Transaction(t) => Some(t.clone()),
            ActionOutcome::UnmanagedFee(_) | ActionOutcome::FaultSet => None,
        })
        .collect();
    let second = act_in_chunks(admin, second_wave(&payments, &mut rng))?;
    tally(&mut report, fees, &second);
    if let Some(fee) = fees.first() {
        let extras = vec![
            ParentAction::UnmanagedFee {
                patron_id: fee.student_id.to_string(),
                student_id: Some(fee.student_id),
                description: "Summer camp deposit (entered in Community Pass)".to_string(),
                amount: Money::from_cents(7_500),
                created_at: Some(start),
            },
            ParentAction::DuplicateFee {
                genesis_fee_id: fee.fee_id,
            },
        ];
        let outcomes = act_in_chunks(admin, extras)?;
        tally(&mut report, fees, &outcomes);
        report.unmanaged_fees -= 1;
        report.duplicates += 1;
    }
    Ok(report)
}

/// What the district's staff changed in Genesis behind the integration's back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    pub amounts_edited: u64,
    pub office_payments: u64,
    pub lost_new_fees: u64,
}

/// Edits `count` fees' amounts and records office payments on `count` more,
/// then loses the queued pushes (as if the push had been dropped), and adds
/// `count` new fees whose push is lost too. The nightly run must find them.
pub fn inject_genesis_drift(
    conn: &mut DbConnection,
    fees: &[SentFee],
    count: usize,
    first_new_fee_id: i64,
) -> Result<DriftReport, DbError> {
    let mut report = DriftReport::default();
    let mut statements = String::new();
    for fee in fees.iter().rev().take(count) {
        statements.push_str(&format!(
            "UPDATE student_fees SET amount_cents = amount_cents + 500 WHERE id = {};\n",
            fee.fee_id
        ));
        report.amounts_edited += 1;
    }
    for fee in fees.iter().rev().skip(count).take(count) {
        statements.push_str(&format!(
            "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at, note) \
             VALUES ({}, 'payment', {}, 'cash', 'genesis', '2026-11-20 10:00:00', 'Paid at the school office');\n",
            fee.fee_id,
            (fee.amount.cents() / 2).max(1)
        ));
        report.office_payments += 1;
    }
    for (i, fee) in fees.iter().take(count).enumerate() {
        statements.push_str(&format!(
            "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
             fee_date, due_date, status, created_at, modified_at) \
             SELECT {}, student_id, category_code, school_code, 'Replacement student ID card', 1000, \
             '2026-11-20', '2026-12-20', 'open', '2026-11-20 09:00:00', '2026-11-20 09:00:00' \
             FROM student_fees WHERE id = {};\n",
            first_new_fee_id + i as i64,
            fee.fee_id
        ));
        report.lost_new_fees += 1;
    }
    statements
        .push_str("UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL;\n");
    conn.batch_execute(&statements)?;
    Ok(report)
}
