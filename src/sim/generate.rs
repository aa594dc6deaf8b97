//! Seeded synthetic districts for tests, the demo and benchmarks: fees,
//! then parent-side transactions (payments, partial and over-payments,
//! waivers, refunds, returned e-checks) applied through the same code as the
//! admin actions, so every generated fee keeps the balance identity.

use chrono::{Duration as Days, NaiveDate, NaiveDateTime};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{ActionOutcome, FeeRef, GenerateSpec, ParentAction, GENERATE_MAX};
use super::state::{ApiError, District};
use crate::domain::{FeeId, FeePush, FeeStatus, GuardianId, StudentId, VendorTxnId};
use crate::money::Money;

const CATEGORIES: &[&str] = &["BUS", "LUNCH", "ATHLETICS", "LIBRARY", "TECH", "FIELDTRIP"];
const SCHOOLS: &[&str] = &["HS", "MS", "ES1", "ES2"];
const DESCRIPTIONS: &[&str] = &[
    "Bus pass",
    "Lunch account",
    "Athletic fee",
    "Lost library book",
    "Chromebook repair",
    "Field trip",
];

/// What a generate call made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenerateReport {
    pub fees: u64,
    pub transactions: u64,
    pub unmanaged_fees: u64,
}

fn base_time() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 9, 1)
        .and_then(|d| d.and_hms_opt(8, 0, 0))
        .expect("a valid constant date")
}

fn check(spec: &GenerateSpec) -> Result<(), ApiError> {
    let too_big = [spec.fees, spec.transactions, spec.unmanaged_fees]
        .iter()
        .any(|n| *n > GENERATE_MAX);
    if too_big || spec.students == Some(0) || spec.first_fee_id < 1 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("counts must be at most {GENERATE_MAX}, students at least 1, first_fee_id at least 1"),
        ));
    }
    if spec.fees == 0 && spec.transactions > 0 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "transactions need fees",
        ));
    }
    Ok(())
}

/// Adds a generated scenario to a district.
pub fn generate(
    district: &mut District,
    spec: &GenerateSpec,
    seed: u64,
) -> Result<GenerateReport, ApiError> {
    check(spec)?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.unwrap_or(seed));
    let students = spec.students.unwrap_or((spec.fees / 5).max(1));
    let ids: Vec<FeeId> = (0..i64::from(spec.fees))
        .map(|n| FeeId(spec.first_fee_id + n))
        .collect();
    for id in &ids {
        let push = fee_push(&mut rng, *id, students);
        district.upsert(push, base_time())?;
    }
    let mut payments: Vec<VendorTxnId> = Vec::new();
    for n in 0..spec.transactions {
        let at = base_time() + Days::minutes(i64::from(n) + 1);
        let action = next_action(&mut rng, &ids, &payments, at);
        let outcome = match district.apply(action, at) {
            Ok(outcome) => outcome,
            // The pick was not possible (e.g. nothing left to refund): pay instead.
            Err(_) => district.apply(fallback_payment(&mut rng, &ids, at), at)?,
        };
        if let ActionOutcome::Transaction(txn) = outcome {
            if txn.kind == crate::domain::TxnKind::Payment {
                payments.push(txn.id);
            }
        }
    }
    for _ in 0..spec.unmanaged_fees {
        district.apply(unmanaged(&mut rng, students), base_time())?;
    }
    Ok(GenerateReport {
        fees: u64::from(spec.fees),
        transactions: u64::from(spec.transactions),
        unmanaged_fees: u64::from(spec.unmanaged_fees),
    })
}

fn cents(rng: &mut ChaCha8Rng, low: i64, high: i64) -> Money {
    Money::from_cents(rng.gen_range(low..=high))
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("OTHER")
}

fn fee_push(rng: &mut ChaCha8Rng, id: FeeId, students: u32) -> FeePush {
    let student = i64::from(rng.gen_range(1..=students));
    let guardians = if rng.gen_bool(0.2) {
        vec![GuardianId(student * 10), GuardianId(student * 10 + 1)]
    } else {
        vec![GuardianId(student * 10)]
    };
    FeePush {
        genesis_fee_id: id,
        student_id: StudentId(student),
        patron_id: format!("S{student}"),
        guardian_ids: guardians,
        category: pick(rng, CATEGORIES).to_string(),
        school: pick(rng, SCHOOLS).to_string(),
        description: pick(rng, DESCRIPTIONS).to_string(),
        amount: cents(rng, 500, 25_000),
        genesis_credit: Money::ZERO,
        status: FeeStatus::Open,
        fee_date: base_time().date() - Days::days(rng.gen_range(0..60)),
        due_date: Some(base_time().date() + Days::days(30)),
    }
}

/// Mostly payments (full, partial, over), some waivers, refunds and
/// returned e-checks dated days after their payment.
fn next_action(
    rng: &mut ChaCha8Rng,
    ids: &[FeeId],
    payments: &[VendorTxnId],
    at: NaiveDateTime,
) -> ParentAction {
    let roll = rng.gen_range(0..100);
    let payment = payments.choose(rng).cloned();
    match (roll, payment) {
        (0..=5, Some(payment_id)) => ParentAction::Refund {
            payment_id,
            amount: None,
            occurred_at: Some(at),
        },
        (6..=9, Some(payment_id)) => ParentAction::Reversal {
            payment_id,
            days_later: Some(rng.gen_range(2..=10)),
        },
        (10..=15, _) => ParentAction::Waiver {
            fee: random_fee(rng, ids),
            amount: None,
            occurred_at: Some(at),
        },
        (16..=40, _) => ParentAction::Payment {
            fee: random_fee(rng, ids),
            amount: Some(cents(rng, 100, 5_000)),
            method: Some("echeck".to_string()),
            occurred_at: Some(at),
        },
        _ => ParentAction::Payment {
            fee: random_fee(rng, ids),
            amount: None,
            method: Some("card".to_string()),
            occurred_at: Some(at),
        },
    }
}

fn random_fee(rng: &mut ChaCha8Rng, ids: &[FeeId]) -> FeeRef {
    FeeRef::Genesis(ids[rng.gen_range(0..ids.len())])
}

/// A payment that is always possible: an explicit amount (an over-payment
/// if the fee is already paid).
fn fallback_payment(rng: &mut ChaCha8Rng, ids: &[FeeId], at: NaiveDateTime) -> ParentAction {
    ParentAction::Payment {
        fee: random_fee(rng, ids),
        amount: Some(cents(rng, 100, 2_000)),
        method: Some("card".to_string()),
        occurred_at: Some(at),
    }
}

fn unmanaged(rng: &mut ChaCha8Rng, students: u32) -> ParentAction {
    let student = i64::from(rng.gen_range(1..=students));
    ParentAction::UnmanagedFee {
        patron_id: format!("S{student}"),
        student_id: Some(StudentId(student)),
        description: "Yearbook".to_string(),
        amount: cents(rng, 1_000, 8_000),
        created_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_seeded_and_keeps_the_identity() {
        let spec = GenerateSpec {
            fees: 500,
            transactions: 800,
            unmanaged_fees: 20,
            students: None,
            first_fee_id: 1,
            seed: Some(7),
        };
        let mut a = District::default();
        let mut b = District::default();
        generate(&mut a, &spec, 0).unwrap();
        generate(&mut b, &spec, 0).unwrap();
        let summary = a.summary("d");
        assert_eq!(summary, b.summary("d"));
        assert_eq!(summary.fees, 500);
        assert_eq!(summary.transactions, 800);
        assert_eq!(summary.unmanaged_fees, 20);
        assert_eq!(summary.invariant_violations, 0);
    }
}
