//! A fixed, realistic `RunReport` (a small district with one of most kinds
//! of outcome) for the report's tests, snapshot files, the example that
//! renders a sample, and demos. Deterministic: no clock, no randomness.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};

use crate::domain::{FeeId, StudentId, TxnKind, VendorTxn, VendorTxnId};
use crate::money::Money;
use crate::reconcile::{
    Accounting, Action, Discrepancy, DiscrepancyKind, Reconciliation, Resolution, Scope,
    SideAccounting, SideTotals, Totals,
};

use super::{
    ContactLabel, CreditOnAccount, FailedCorrection, FeeLabel, Phase, QueueEntry, QueueReport,
    ReviewState, RunReport, StudentLabel, TrendPoint, Verdict,
};

fn at(day: u32, hour: u32, minute: u32, second: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, day)
        .and_then(|date| date.and_hms_opt(hour, minute, second))
        .expect("a valid sample date")
}

fn cents(value: i64) -> Money {
    Money::from_cents(value)
}

fn fee_values(amount: i64, status: &str, credit: i64) -> Option<String> {
    Some(format!(
        "amount {}; status {status}; credit {}",
        cents(amount),
        cents(credit)
    ))
}

fn vendor_txn(id: &str, fee: i64, student: i64, kind: TxnKind, amount: i64) -> VendorTxn {
    VendorTxn {
        id: VendorTxnId(id.to_string()),
        sequence: 88_000 + fee,
        genesis_fee_id: Some(FeeId(fee)),
        vendor_fee_id: format!("CPF-{fee}"),
        student_id: Some(StudentId(student)),
        kind,
        amount: cents(amount),
        method: "card".to_string(),
        occurred_at: at(25, 19, 42, 0),
        reverses: None,
    }
}

struct Found {
    kind: DiscrepancyKind,
    fee: Option<i64>,
    student: i64,
    txn: Option<&'static str>,
    values: (Option<String>, Option<String>),
    resolution: Resolution,
}

fn discrepancy(found: Found) -> Discrepancy {
    Discrepancy {
        kind: found.kind,
        fee_id: found.fee.map(FeeId),
        student_id: Some(StudentId(found.student)),
        vendor_txn_id: found.txn.map(|id| VendorTxnId(id.to_string())),
        genesis_value: found.values.0,
        cp_value: found.values.1,
        resolution: found.resolution,
        at_stake: cents(stake_cents(found.fee)),
    }
}

/// The sample's totals after its corrections: everything fixed but the
/// office payment whose push failed ($20.00 still more due in Community
/// Pass).
fn totals_after() -> Totals {
    let before = totals();
    let mut community_pass = before.genesis;
    community_pass.genesis_credit = before.genesis.genesis_credit - cents(2000);
    community_pass.outstanding = before.genesis.outstanding + cents(2000);
    Totals {
        genesis: before.genesis,
        community_pass,
    }
}

/// The sample's dollars at stake per fee.
fn stake_cents(fee: Option<i64>) -> i64 {
    match fee {
        Some(5001) => 4500,
        Some(5002) => 1500,
        Some(5003) => 2500,
        Some(5004) => 3500,
        Some(5005) => 1000,
        Some(5006) => 7500,
        Some(5007) => 3500,
        Some(5009) => 1500,
        _ => 3000,
    }
}

/// The sample's review queue: the overpayment is a credit on account seen
/// for twelve nights; the voided fee is new tonight, the edited amount
/// acknowledged.
fn queue(discrepancies: &[Discrepancy]) -> QueueReport {
    let mut entries = BTreeMap::new();
    let mut credits = Vec::new();
    for (n, d) in discrepancies.iter().enumerate() {
        if !d.resolution.is_review() {
            continue;
        }
        let key = crate::review::item_key(d.fee_id, d.kind.as_str(), d.vendor_txn_id.as_ref());
        let (state, age_days) = match d.fee_id {
            Some(FeeId(5006)) => (ReviewState::New, 0),
            Some(FeeId(5005)) => (ReviewState::Acknowledged, 9),
            _ => (ReviewState::Open, 3 + n as i64),
        };
        let entry = QueueEntry {
            id: 300 + n as i64,
            state,
            first_seen_run: 42 - age_days,
            age_days,
        };
        if d.kind == DiscrepancyKind::OverpaymentCredit {
            credits.push(CreditOnAccount {
                discrepancy: d.clone(),
                item_id: Some(entry.id),
                age_days: 12,
                guardian: Some(ContactLabel {
                    name: "María García".to_string(),
                    email: Some("maria.garcia@example.org".to_string()),
                    phone: Some("555-0107".to_string()),
                }),
            });
        }
        entries.insert(key, entry);
    }
    QueueReport {
        credits,
        credit_review_after_days: 30,
        entries,
        resolved_by_run: 2,
        held: Vec::new(),
    }
}

fn planned() -> Vec<Discrepancy> {
    use DiscrepancyKind as K;
    let payment = vendor_txn("CP-TX-881203", 5003, 1003, TxnKind::Payment, 2500);
    let reversal = vendor_txn("CP-TX-881377", 5004, 1004, TxnKind::Reversal, 3500);
    vec![
        discrepancy(Found {
            kind: K::FeeMissingInCp,
            fee: Some(5001),
            student: 1001,
            txn: None,
            values: (fee_values(4500, "open", 0), None),
            resolution: Resolution::Planned(Action::PushFee {
                fee_id: FeeId(5001),
            }),
        }),
        discrepancy(Found {
            kind: K::GenesisCreditNotReflected,
            fee: Some(5002),
            student: 1002,
            txn: None,
            values: (
                fee_values(12000, "open", 2000),
                fee_values(12000, "open", 0),
            ),
            resolution: Resolution::Planned(Action::PushFee {
                fee_id: FeeId(5002),
            }),
        }),
        discrepancy(Found {
            kind: K::CpPaymentMissingInGenesis,
            fee: Some(5003),
            student: 1003,
            txn: Some("CP-TX-881203"),
            values: (None, Some("payment 25.00".to_string())),
            resolution: Resolution::Planned(Action::PostVendorTxn {
                fee_id: FeeId(5003),
                txn: payment,
            }),
        }),
        discrepancy(Found {
            kind: K::AmountNotLocked,
            fee: Some(5003),
            student: 1003,
            txn: None,
            values: (
                Some("amount editable".to_string()),
                Some("payment applied".to_string()),
            ),
            resolution: Resolution::Planned(Action::LockAmount {
                fee_id: FeeId(5003),
            }),
        }),
        discrepancy(Found {
            kind: K::CpReversalMissingInGenesis,
            fee: Some(5004),
            student: 1004,
            txn: Some("CP-TX-881377"),
            values: (None, Some("reversal 35.00".to_string())),
            resolution: Resolution::Planned(Action::PostVendorTxn {
                fee_id: FeeId(5004),
                txn: reversal,
            }),
        }),
    ]
}

fn reviews() -> Vec<Discrepancy> {
    use DiscrepancyKind as K;
    vec![
        discrepancy(Found {
            kind: K::AmountEditedAfterPayment,
            fee: Some(5005),
            student: 1005,
            txn: None,
            values: (fee_values(6000, "open", 0), fee_values(5000, "paid", 0)),
            resolution: Resolution::review(
                "the amount was changed in Genesis after Community Pass took a payment",
                "restore the amount to 50.00 in Genesis, or bill the difference as a new fee",
            ),
        }),
        discrepancy(Found {
            kind: K::FeeVoidedAfterPayment,
            fee: Some(5006),
            student: 1006,
            txn: None,
            values: (fee_values(7500, "void", 0), fee_values(7500, "paid", 0)),
            resolution: Resolution::review(
                "the fee was voided in Genesis after the family paid 75.00 online",
                "refund the family in Community Pass, or reopen the fee in Genesis",
            ),
        }),
        discrepancy(Found {
            kind: K::OverpaymentCredit,
            fee: Some(5007),
            student: 1007,
            txn: None,
            values: (
                Some("balance -35.00".to_string()),
                Some("balance -35.00".to_string()),
            ),
            resolution: Resolution::review(
                "the family paid 35.00 more than the fee",
                "refund the credit or apply it to another fee",
            ),
        }),
        discrepancy(Found {
            kind: K::DuplicateTxnGenesis,
            fee: Some(5009),
            student: 1008,
            txn: Some("CP-TX-879950"),
            values: (
                Some("payment 15.00, payment 15.00".to_string()),
                Some("payment 15.00".to_string()),
            ),
            resolution: Resolution::review(
                "one Community Pass payment is posted twice in Genesis",
                "delete the second posting in Genesis",
            ),
        }),
        discrepancy(Found {
            kind: K::UnprocessedVendorTxn,
            fee: None,
            student: 1008,
            txn: Some("CP-TX-881412"),
            values: (None, Some("payment 30.00".to_string())),
            resolution: Resolution::review(
                "fee not found in Genesis",
                "find the fee the family meant to pay and post the payment by hand",
            ),
        }),
    ]
}

fn totals() -> Totals {
    Totals {
        genesis: SideTotals {
            billed: cents(4_821_500),
            genesis_credit: cents(987_000),
            paid: cents(3_011_250),
            refunded: cents(24_000),
            waived: cents(15_000),
            reversed: cents(8_500),
            outstanding: cents(844_250),
            credit: cents(3_500),
            written_off: cents(0),
        },
        community_pass: SideTotals {
            billed: cents(4_816_000),
            genesis_credit: cents(985_000),
            paid: cents(3_013_750),
            refunded: cents(24_000),
            waived: cents(15_000),
            reversed: cents(12_000),
            outstanding: cents(841_750),
            credit: cents(3_500),
            written_off: cents(0),
        },
    }
}

fn accounting() -> Accounting {
    Accounting {
        genesis: SideAccounting {
            records_in: 3_120,
            matched: 3_109,
            corrected: 5,
            needs_review: 6,
        },
        community_pass: SideAccounting {
            records_in: 3_205,
            matched: 3_194,
            corrected: 5,
            needs_review: 6,
        },
    }
}

fn students() -> BTreeMap<StudentId, StudentLabel> {
    let names = [
        (1001, "Rivera, Ana", "HS"),
        (1002, "Okafor, Chidi", "HS"),
        (1003, "Nguyen, Bao", "MS"),
        (1004, "Kowalski, Marta", "MS"),
        (1005, "Haddad, Omar", "HS"),
        (1006, "Johnson, Leah", "ES"),
        (1007, "García, Sofía", "ES"),
        (1008, "Smith, Tyler", "MS"),
    ];
    names
        .iter()
        .map(|(id, name, school)| {
            let label = StudentLabel {
                name: name.to_string(),
                school: school.to_string(),
            };
            (StudentId(*id), label)
        })
        .collect()
}

fn schools() -> BTreeMap<String, String> {
    [
        ("HS", "Springfield High School"),
        ("MS", "Lincoln Middle School"),
        ("ES", "Oak Street Elementary"),
    ]
    .iter()
    .map(|(code, name)| (code.to_string(), name.to_string()))
    .collect()
}

fn fees() -> BTreeMap<FeeId, FeeLabel> {
    let fees = [
        (5001, "TECH", "Chromebook screen repair"),
        (5002, "ACTIVITY", "Band trip deposit"),
        (5003, "EXAM", "AP Biology exam"),
        (5004, "FIELDTRIP", "Science Center field trip"),
        (5005, "YEARBOOK", "Yearbook 2026-27"),
        (5006, "ATHLETIC", "Soccer participation fee"),
        (5007, "LIBRARY", "Lost library book"),
        (5009, "CAFETERIA", "Lunch balance"),
    ];
    fees.iter()
        .map(|(id, category, description)| {
            let label = FeeLabel {
                category: category.to_string(),
                description: description.to_string(),
            };
            (FeeId(*id), label)
        })
        .collect()
}

fn phases() -> Vec<Phase> {
    [
        ("Lock and settings", 14),
        ("Send pending fees (outbox)", 820),
        ("Read Genesis", 1_840),
        ("Read Community Pass", 6_210),
        ("Reconcile", 95),
        ("Apply corrections", 2_380),
    ]
    .iter()
    .map(|(name, elapsed_ms)| Phase {
        name: name.to_string(),
        elapsed_ms: *elapsed_ms,
    })
    .collect()
}

/// 29 earlier nightly runs, oldest first: mostly quiet, some corrections,
/// a few reviews, one failure.
fn trend() -> Vec<TrendPoint> {
    let first = NaiveDate::from_ymd_opt(2026, 10, 28).expect("a valid sample date");
    (0..29u64)
        .map(|index| {
            let (verdict, corrected, needs_review) = match index % 7 {
                0 | 4 => (Verdict::InAgreement, 0, 0),
                1 | 5 => (Verdict::Corrected, 2 + index % 5, 0),
                2 => (Verdict::NeedsReview, 3 + index % 4, 1 + index % 3),
                3 => (Verdict::Corrected, 6 + index % 3, 0),
                _ => (Verdict::NeedsReview, 1, 2),
            };
            let failed = index == 17;
            TrendPoint {
                run_id: 13 + index as i64,
                date: first + chrono::Days::new(index),
                verdict: if failed { Verdict::Failed } else { verdict },
                needs_review: if failed { 0 } else { needs_review },
                corrected: if failed { 0 } else { corrected },
                difference: cents(if needs_review > 0 {
                    1_500 * needs_review as i64
                } else {
                    0
                }),
            }
        })
        .collect()
}

/// The sample report: run 42 of "Springfield Public Schools" on 2026-11-26,
/// four corrections made, one that failed, five items for review.
pub fn sample_report() -> RunReport {
    let planned = planned();
    let mut discrepancies: Vec<Discrepancy> = planned.iter().cloned().chain(reviews()).collect();
    discrepancies.sort_by(|left, right| left.sort_key().cmp(&right.sort_key()));
    let failed = FailedCorrection {
        discrepancy: planned[1].clone(),
        error: "Community Pass answered 503 Service Unavailable 3 times".to_string(),
    };
    let corrected = planned
        .iter()
        .filter(|d| d.fee_id != Some(FeeId(5002)))
        .cloned()
        .collect();
    let queue = queue(&discrepancies);
    RunReport {
        district: "Springfield Public Schools".to_string(),
        run_id: 42,
        started_at: at(26, 2, 0, 3),
        finished_at: at(26, 2, 0, 14),
        dry_run: false,
        verdict: Verdict::NeedsReview,
        scope_text: "whole district, all fee dates".to_string(),
        scope: Scope::everything(),
        reconciliation: Reconciliation {
            discrepancies,
            accounting: accounting(),
            totals: totals(),
        },
        totals_after: Some(totals_after()),
        corrected,
        failed_corrections: vec![failed],
        phases: phases(),
        trend: trend(),
        students: students(),
        schools: schools(),
        fees: fees(),
        queue,
        error: None,
        incomplete: Vec::new(),
    }
}

/// The sample as a failed run: the error, no reconciliation results.
pub fn sample_failed_report() -> RunReport {
    RunReport {
        verdict: Verdict::Failed,
        reconciliation: Reconciliation {
            discrepancies: Vec::new(),
            accounting: Accounting::default(),
            totals: Totals::default(),
        },
        corrected: Vec::new(),
        failed_corrections: Vec::new(),
        phases: phases().into_iter().take(3).collect(),
        error: Some(
            "reading Community Pass: page 14 of integration fees: server error 502".to_string(),
        ),
        finished_at: at(26, 2, 0, 9),
        queue: QueueReport::default(),
        incomplete: Vec::new(),
        totals_after: None,
        ..sample_report()
    }
}
