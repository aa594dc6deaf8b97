//! Vendor records that do not belong (issue 14), drawn from the scenario's
//! seed and injected through the simulator's fault injector: a transaction
//! naming another student, one naming a vendor fee id the link does not
//! know, a refund naming no payment, a reversal larger than anything paid,
//! a payment on a void fee, a payment dated in the future, two conflicting
//! copies of one id, and (honest) an identical redelivery. Each record
//! that does not belong is written down here with why, and the checks
//! require it held with a reason and never posted. Before the finish, a
//! malformed fee and a cursor jump must each be contained: the nightly goes
//! on and says it is incomplete (the report too), get-payments refuses the
//! cursor and keeps the stored one, and `--from-sequence 0` re-reads
//! without posting anything twice.

use chrono::NaiveDate;
use diesel::connection::SimpleConnection;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use cpsync::db::cursors;
use cpsync::domain::{FeeId, StudentId, TxnKind, VendorTxnId};
use cpsync::money::Money;
use cpsync::scenario::SentFee;
use cpsync::sim::model::{ActionOutcome, ParentAction};

use crate::engine::tail;
use crate::tally::ScenarioResult;
use crate::world::World;

/// The most records that do not belong injected in one scenario.
const BAD_RECORDS_MAX: usize = 4;

/// One kind of record Community Pass should never send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadRecord {
    AnotherStudent,
    UnknownVendorFee,
    RefundOfNoPayment,
    ReversalBeyondPaid,
    PaymentOnVoidFee,
    FromTheFuture,
    ConflictingCopies,
}

const BAD_RECORDS: [BadRecord; 7] = [
    BadRecord::AnotherStudent,
    BadRecord::UnknownVendorFee,
    BadRecord::RefundOfNoPayment,
    BadRecord::ReversalBeyondPaid,
    BadRecord::PaymentOnVoidFee,
    BadRecord::FromTheFuture,
    BadRecord::ConflictingCopies,
];

/// What the checks expect of the injected records.
#[derive(Debug, Default)]
pub struct Expected {
    /// Vendor ids that must end held with a reason and never posted, each
    /// with what was wrong with it.
    pub held: Vec<(VendorTxnId, &'static str)>,
}

/// How many of the scenario's sent fees the injection uses (from the end
/// of the slice it is given, so other drift keeps the rest).
pub fn fees_wanted(available: usize) -> usize {
    if available < 4 {
        0
    } else {
        (available / 3).min(BAD_RECORDS_MAX)
    }
}

fn injected(outcomes: Vec<ActionOutcome>) -> anyhow::Result<Vec<VendorTxnId>> {
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            ActionOutcome::Transaction(txn) => Ok(txn.id),
            other => anyhow::bail!("the simulator answered an injection with {other:?}"),
        })
        .collect()
}

fn record(fee: FeeId, kind: TxnKind, amount: Money) -> ParentAction {
    ParentAction::InjectTransaction {
        id: None,
        genesis_fee_id: fee,
        vendor_fee_id: None,
        student_id: None,
        kind,
        amount,
        occurred_at: None,
        reverses: None,
    }
}

/// Injects one record that does not belong on each of `fees`, and one
/// honest payment delivered twice; returns what the checks must find.
pub fn inject(
    world: &World,
    rng: &mut ChaCha8Rng,
    fees: &[SentFee],
    students: &[StudentId],
    result: &mut ScenarioResult,
) -> anyhow::Result<Expected> {
    let mut expected = Expected::default();
    for (index, fee) in fees.iter().enumerate() {
        let kind = *BAD_RECORDS.choose(rng).expect("kinds are listed");
        let serial = world.seed * 100 + index as u64;
        let dollar = Money::from_cents(100);
        let action = match kind {
            BadRecord::AnotherStudent => {
                let Some(other) = students.iter().find(|s| **s != fee.student_id) else {
                    continue;
                };
                vec![ParentAction::InjectTransaction {
                    id: None,
                    genesis_fee_id: fee.fee_id,
                    vendor_fee_id: None,
                    student_id: Some(*other),
                    kind: TxnKind::Payment,
                    amount: dollar,
                    occurred_at: None,
                    reverses: None,
                }]
            }
            BadRecord::UnknownVendorFee => vec![ParentAction::InjectTransaction {
                id: None,
                genesis_fee_id: fee.fee_id,
                vendor_fee_id: Some(format!("CPF-NOT-LINKED-{serial}")),
                student_id: None,
                kind: TxnKind::Payment,
                amount: dollar,
                occurred_at: None,
                reverses: None,
            }],
            BadRecord::RefundOfNoPayment => vec![ParentAction::InjectTransaction {
                id: None,
                genesis_fee_id: fee.fee_id,
                vendor_fee_id: None,
                student_id: None,
                kind: TxnKind::Refund,
                amount: dollar,
                occurred_at: None,
                reverses: Some(VendorTxnId(format!("TXN-NEVER-{serial}"))),
            }],
            BadRecord::ReversalBeyondPaid => vec![record(
                fee.fee_id,
                TxnKind::Reversal,
                fee.amount + Money::from_cents(500_000),
            )],
            BadRecord::PaymentOnVoidFee => {
                // The office voids the fee and the void reaches Community
                // Pass; then a payment arrives on it.
                world.connect()?.batch_execute(&format!(
                    "UPDATE student_fees SET status = 'void' WHERE id = {}",
                    fee.fee_id.0
                ))?;
                let id = fee.fee_id.0.to_string();
                let sent = world.engine.run(&["send-fees", "--resend", "--fee", &id])?;
                if !sent.succeeded() {
                    result.violations.push(format!(
                        "send-fees of a voided fee exited {:?}: {}",
                        sent.code,
                        tail(&sent.stderr)
                    ));
                }
                vec![record(fee.fee_id, TxnKind::Payment, dollar)]
            }
            BadRecord::FromTheFuture => vec![ParentAction::InjectTransaction {
                id: None,
                genesis_fee_id: fee.fee_id,
                vendor_fee_id: None,
                student_id: None,
                kind: TxnKind::Payment,
                amount: dollar,
                occurred_at: NaiveDate::from_ymd_opt(2099, 1, 1)
                    .and_then(|d| d.and_hms_opt(8, 0, 0)),
                reverses: None,
            }],
            BadRecord::ConflictingCopies => {
                let id = VendorTxnId(format!("TXN-COPY-{serial}"));
                let copy = |cents: i64| ParentAction::InjectTransaction {
                    id: Some(id.clone()),
                    genesis_fee_id: fee.fee_id,
                    vendor_fee_id: None,
                    student_id: None,
                    kind: TxnKind::Payment,
                    amount: Money::from_cents(cents),
                    occurred_at: None,
                    reverses: None,
                };
                vec![copy(100), copy(325)]
            }
        };
        let ids = injected(world.admin.act(action)?)?;
        let why = describe(kind);
        if let Some(id) = ids.into_iter().next() {
            expected.held.push((id, why));
        }
        result.bad_vendor_records += 1;
    }
    // An honest payment delivered twice, identically: posted once, silently.
    if let Some(fee) = fees.first() {
        let id = VendorTxnId(format!("TXN-TWICE-{}", world.seed));
        let honest = ParentAction::InjectTransaction {
            id: Some(id),
            genesis_fee_id: fee.fee_id,
            vendor_fee_id: None,
            student_id: None,
            kind: TxnKind::Payment,
            amount: Money::from_cents(rng.gen_range(100..=300)),
            occurred_at: None,
            reverses: None,
        };
        injected(world.admin.act(vec![honest.clone(), honest])?)?;
    }
    Ok(expected)
}

fn describe(kind: BadRecord) -> &'static str {
    match kind {
        BadRecord::AnotherStudent => "names another student than its fee's",
        BadRecord::UnknownVendorFee => "names a vendor fee id the link does not know",
        BadRecord::RefundOfNoPayment => "is a refund naming a payment that does not exist",
        BadRecord::ReversalBeyondPaid => "is a reversal larger than anything paid",
        BadRecord::PaymentOnVoidFee => "is a payment on a void fee",
        BadRecord::FromTheFuture => "is dated in 2099",
        BadRecord::ConflictingCopies => "has a conflicting copy under its id",
    }
}

/// With the faults off: a malformed fee leaves the nightly incomplete (run
/// goes on, exit 3, the gap named in its JSON and its HTML report), and a
/// cursor jump is refused with the stored cursor kept, after which
/// `get-payments --from-sequence 0` re-reads. The checks that follow the
/// finish then show nothing was posted twice.
pub fn contained(world: &World, fee: FeeId, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let corrupt = |raw: Option<&str>| {
        world.admin.act(vec![ParentAction::CorruptFee {
            genesis_fee_id: fee,
            field: "amount".to_string(),
            raw: raw.map(str::to_string),
        }])
    };
    corrupt(Some("1e3"))?;
    let nightly = world.engine.run(&["nightly", "--json"])?;
    corrupt(None)?;
    let summary: serde_json::Value = serde_json::from_str(&nightly.stdout).unwrap_or_default();
    let named = summary["incomplete"].as_array().is_some_and(|gaps| {
        gaps.iter().any(|g| {
            g.as_str()
                .is_some_and(|g| g.contains(&format!("fee {fee}")))
        })
    });
    if nightly.code != Some(3) || !named {
        result.violations.push(format!(
            "a nightly reading a malformed fee {fee} exited {:?} (want 3) with incomplete {} : {}",
            nightly.code,
            summary["incomplete"],
            tail(&nightly.stderr)
        ));
    } else if !report_says_incomplete(world, summary["run_id"].as_i64())? {
        result.violations.push(format!(
            "the HTML report of nightly run {} does not say it could not read everything",
            summary["run_id"]
        ));
    }

    let mut conn = world.connect()?;
    let before = cursors::position(&mut conn, cursors::TRANSACTIONS)?;
    world.admin.act(vec![ParentAction::CursorJump {
        next_after: Some(i64::MAX),
    }])?;
    let jumped = world.engine.run(&["get-payments", "--json"])?;
    world
        .admin
        .act(vec![ParentAction::CursorJump { next_after: None }])?;
    let after = cursors::position(&mut conn, cursors::TRANSACTIONS)?;
    let refused: serde_json::Value = serde_json::from_str(&jumped.stdout).unwrap_or_default();
    if jumped.code != Some(3)
        || refused["cursor_refused"].is_null()
        || after < before
        || after == i64::MAX
    {
        result.violations.push(format!(
            "a cursor jump: get-payments exited {:?} (want 3, the jump refused), cursor {before} → {after}: {}",
            jumped.code,
            tail(&jumped.stderr)
        ));
    }
    let reread = world
        .engine
        .run(&["get-payments", "--from-sequence", "0", "--json"])?;
    if !reread.succeeded() {
        result.violations.push(format!(
            "get-payments --from-sequence 0 exited {:?}: {}",
            reread.code,
            tail(&reread.stderr)
        ));
    }
    result.contained_faults += 2;
    Ok(())
}

/// Whether run `run_id`'s HTML report lists what could not be read.
fn report_says_incomplete(world: &World, run_id: Option<i64>) -> anyhow::Result<bool> {
    let Some(run_id) = run_id else {
        return Ok(false);
    };
    let suffix = format!("-run-{run_id}.html");
    for entry in std::fs::read_dir(world.dir.join("reports"))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(&suffix) {
            return Ok(std::fs::read_to_string(&path)?.contains("Not everything could be read"));
        }
    }
    Ok(false)
}
