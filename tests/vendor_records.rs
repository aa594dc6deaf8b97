//! Nothing from Community Pass touches Genesis unless it belongs there
//! (issue 14, DESIGN.md §6 "hold, never drop; never post what does not
//! belong"), on both backends, through the HTTP client and the simulator's
//! fault injector: conflicting copies of one vendor id are all kept and none
//! posted; a transaction naming another student or a vendor fee id the link
//! does not know, a refund naming no payment, a reversal larger than what
//! was paid, a payment on a void fee and a date in the future are held with
//! a reason (and posted once valid); a cursor Community Pass could not have
//! meant is refused and the stored cursor kept, and `--from-sequence`
//! re-reads; a malformed fee is set aside by id and the nightly goes on,
//! saying it is incomplete, and a malformed patron balance is set aside
//! while the others are stored. Every vendor id ends posted exactly once or
//! held with a reason, never both, never neither.

mod common;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::world::World;
use common::{Backend, BACKENDS};
use cpsync::db::discrepancies::Outcome;
use cpsync::db::{cursors, genesis, links, postings};
use cpsync::domain::{FeeId, StudentId, TxnKind, VendorTxn, VendorTxnId};
use cpsync::money::Money;
use cpsync::reconcile::{DiscrepancyKind, Resolution};
use cpsync::sim::{ActionOutcome, ParentAction};
use cpsync::sync::pull::{self, PullReport, PullScope};
use cpsync::sync::utc_now;

fn each_backend(test: fn(Backend)) {
    for backend in BACKENDS {
        test(backend);
    }
}

/// A record Community Pass should never send, appended to its log.
struct Injected {
    id: Option<String>,
    fee: FeeId,
    vendor_fee_id: Option<String>,
    student: Option<StudentId>,
    kind: TxnKind,
    cents: i64,
    occurred_at: Option<chrono::NaiveDateTime>,
    reverses: Option<VendorTxnId>,
}

impl Injected {
    fn payment(fee: FeeId, cents: i64) -> Injected {
        Injected {
            id: None,
            fee,
            vendor_fee_id: None,
            student: None,
            kind: TxnKind::Payment,
            cents,
            occurred_at: None,
            reverses: None,
        }
    }
}

fn inject(world: &World, record: Injected) -> VendorTxn {
    let outcome = world
        .admin
        .act(vec![ParentAction::InjectTransaction {
            id: record.id.map(VendorTxnId),
            genesis_fee_id: record.fee,
            vendor_fee_id: record.vendor_fee_id,
            student_id: record.student,
            kind: record.kind,
            amount: Money::from_cents(record.cents),
            occurred_at: record.occurred_at,
            reverses: record.reverses,
        }])
        .unwrap()
        .pop();
    match outcome {
        Some(ActionOutcome::Transaction(txn)) => txn,
        other => panic!("expected a transaction, got {other:?}"),
    }
}

fn pull(world: &World, scope: PullScope) -> PullReport {
    pull_from(world, scope, None)
}

fn pull_from(world: &World, scope: PullScope, from: Option<i64>) -> PullReport {
    let mut conn = world.conn();
    let run_id = world.run_id(&mut conn, "get_payments");
    pull::get_payments_from(&mut conn, &world.portal, scope, from, run_id, &utc_now).unwrap()
}

/// Every Genesis posting of a Community Pass id: id → (fee, amount), and
/// how many rows each id has.
fn postings_in_genesis(world: &World) -> BTreeMap<String, Vec<(FeeId, Money)>> {
    let mut conn = world.conn();
    let mut by_id: BTreeMap<String, Vec<(FeeId, Money)>> = BTreeMap::new();
    for txn in genesis::load_txns(&mut conn, None).unwrap().records {
        if let Some(id) = txn.vendor_txn_id {
            by_id
                .entry(id.0)
                .or_default()
                .push((txn.fee_id, txn.amount));
        }
    }
    by_id
}

/// The unresolved held records: id → reason.
fn held(world: &World) -> BTreeMap<String, String> {
    let mut conn = world.conn();
    postings::list_unprocessed(&mut conn, false)
        .unwrap()
        .into_iter()
        .map(|item| (item.vendor_txn_id, item.reason))
        .collect()
}

/// Each of these ids is posted exactly once or held with a reason, never
/// both, never neither.
fn posted_once_or_held(world: &World, ids: &[&VendorTxnId], what: &str) {
    let posted = postings_in_genesis(world);
    let held = held(world);
    for id in ids {
        let rows = posted.get(&id.0).map_or(0, Vec::len);
        let is_held = held.get(&id.0).is_some_and(|reason| !reason.is_empty());
        assert!(rows <= 1, "{what}: {id} posted {rows} times");
        assert!(
            rows + usize::from(is_held) == 1,
            "{what}: {id} posted {rows}, held {is_held}"
        );
    }
}

fn reason_of(world: &World, id: &VendorTxnId) -> String {
    held(world)
        .remove(&id.0)
        .unwrap_or_else(|| panic!("{id} is not held: {:?}", held(world)))
}

/// The nightly's outcome and reason (or note) for the discrepancies about
/// this vendor id.
fn nightly_item(
    result: &cpsync::sync::nightly::NightlyResult,
    id: &VendorTxnId,
) -> Vec<(DiscrepancyKind, Outcome, Option<String>)> {
    result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
        .filter(|(d, _)| d.vendor_txn_id.as_ref() == Some(id))
        .map(|(d, (outcome, note))| {
            let reason = match &d.resolution {
                Resolution::NeedsReview { reason, .. } => Some(reason.clone()),
                Resolution::Planned(_) => note.clone(),
            };
            (d.kind, *outcome, reason)
        })
        .collect()
}

// ----- 1. conflicting copies of one vendor id --------------------------------

fn conflicting_copies(backend: Backend) {
    let world = World::new(backend, 40, 51);
    let fees = world.unpaid_fees();
    let first = inject(
        &world,
        Injected {
            id: Some("DUPY".into()),
            ..Injected::payment(fees[0].id, 100)
        },
    );
    let second = inject(
        &world,
        Injected {
            id: Some("DUPY".into()),
            ..Injected::payment(fees[0].id, 325)
        },
    );
    let honest = world.admin.pay(fees[1].id, None).unwrap();
    let report = pull(&world, PullScope::Cursor);
    assert_eq!(report.conflicting_copies, 1, "{backend:?}: {report:?}");
    assert_eq!(report.posted, 1, "{backend:?}: only the honest payment");
    let postings = postings_in_genesis(&world);
    assert!(
        !postings.contains_key("DUPY"),
        "{backend:?}: no copy posted"
    );
    assert!(
        postings.contains_key(&honest.id.0),
        "{backend:?}: the run went on"
    );
    let reason = reason_of(&world, &first.id);
    assert!(
        reason.contains("payment 1.00") && reason.contains("payment 3.25"),
        "{backend:?}: the reason names each copy: {reason}"
    );
    // The copies stay held: not re-delivered, not retried as a posting.
    pull(&world, PullScope::Cursor);
    pull(&world, PullScope::Student(fees[0].student_id));
    assert!(!postings_in_genesis(&world).contains_key("DUPY"));
    assert_eq!(second.id, first.id);

    // A different copy of an id already posted is held too.
    let posted = inject(
        &world,
        Injected {
            id: Some("DUPZ".into()),
            ..Injected::payment(fees[2].id, 200)
        },
    );
    assert_eq!(pull(&world, PullScope::Cursor).posted, 1);
    inject(
        &world,
        Injected {
            id: Some("DUPZ".into()),
            ..Injected::payment(fees[2].id, 500)
        },
    );
    let report = pull(&world, PullScope::Cursor);
    assert_eq!(report.posted, 0, "{backend:?}");
    assert_eq!(
        postings_in_genesis(&world)["DUPZ"],
        vec![(fees[2].id, Money::from_cents(200))],
        "{backend:?}: the first posting stays, nothing added"
    );
    assert!(reason_of(&world, &posted.id).contains("posted in Genesis as payment 2.00"));

    // The nightly's duplicate_txn_cp rule fires; nothing is posted.
    let result = world.nightly(false);
    let items = nightly_item(&result, &first.id);
    assert!(
        items.iter().any(
            |(kind, outcome, _)| *kind == DiscrepancyKind::DuplicateTxnCp
                && *outcome == Outcome::NeedsReview
        ),
        "{backend:?}: {items:?}"
    );
    assert!(!postings_in_genesis(&world).contains_key("DUPY"));
    posted_once_or_held(&world, &[&first.id, &honest.id], "conflicting copies");
}

#[test]
fn conflicting_copies_are_kept_and_none_is_posted() {
    each_backend(conflicting_copies);
}

// ----- 2. another student, an unknown vendor fee id --------------------------

fn wrong_owner(backend: Backend) {
    let world = World::new(backend, 40, 52);
    let fees = world.unpaid_fees();
    let other = fees
        .iter()
        .find(|f| !fees[..3].iter().any(|g| g.student_id == f.student_id))
        .unwrap()
        .student_id;
    let other_student = inject(
        &world,
        Injected {
            student: Some(other),
            ..Injected::payment(fees[0].id, 1_000)
        },
    );
    let unknown_vendor_fee = inject(
        &world,
        Injected {
            vendor_fee_id: Some("CPF-NOT-LINKED".to_string()),
            ..Injected::payment(fees[1].id, 1_000)
        },
    );
    let honest = world.admin.pay(fees[2].id, None).unwrap();
    // The other student's fee page is opened: the record names them.
    let report = pull(&world, PullScope::Student(other));
    assert_eq!(report.posted, 0, "{backend:?}: {report:?}");
    assert!(reason_of(&world, &other_student.id).contains(&format!("names student {other}")));
    let report = pull(&world, PullScope::Cursor);
    assert_eq!(report.posted, 1, "{backend:?}: {report:?}");
    assert!(reason_of(&world, &unknown_vendor_fee.id).contains("CPF-NOT-LINKED"));
    let mut conn = world.conn();
    let link = links::load_for(&mut conn, &[fees[0].id]).unwrap();
    assert!(
        !link[0].amount_locked,
        "{backend:?}: a held payment locks nothing"
    );
    drop(conn);

    let result = world.nightly(false);
    for id in [&other_student.id, &unknown_vendor_fee.id] {
        let items = nightly_item(&result, id);
        assert!(
            items
                .iter()
                .any(|(_, outcome, note)| *outcome == Outcome::NeedsReview
                    && note.as_deref().is_some_and(|n| n.contains("held"))),
            "{backend:?}: {id}: {items:?}"
        );
    }
    let ids = [&other_student.id, &unknown_vendor_fee.id, &honest.id];
    posted_once_or_held(&world, &ids, "wrong owner");
    assert!(!postings_in_genesis(&world).contains_key(&other_student.id.0));
}

#[test]
fn a_transaction_naming_another_student_or_vendor_fee_is_held() {
    each_backend(wrong_owner);
}

// ----- 3. implausible records -------------------------------------------------

fn implausible(backend: Backend) {
    let world = World::new(backend, 40, 53);
    let fees = world.unpaid_fees();
    let bogus_refund = inject(
        &world,
        Injected {
            kind: TxnKind::Refund,
            reverses: Some(VendorTxnId("NO-SUCH-PAYMENT".into())),
            ..Injected::payment(fees[0].id, 100)
        },
    );
    let payment = world.admin.pay(fees[1].id, None).unwrap();
    let huge_reversal = inject(
        &world,
        Injected {
            kind: TxnKind::Reversal,
            reverses: Some(payment.id.clone()),
            ..Injected::payment(fees[1].id, 500_000)
        },
    );
    // Voided in Genesis and sent: Community Pass itself refuses a payment
    // there, so only the fault injector can deliver one.
    world.sql(&format!(
        "UPDATE student_fees SET status = 'void' WHERE id = {}",
        fees[2].id
    ));
    world.send_pending();
    assert!(world
        .admin
        .pay(fees[2].id, Some(Money::from_cents(100)))
        .is_err());
    let on_void = inject(&world, Injected::payment(fees[2].id, 100));
    let future = inject(
        &world,
        Injected {
            occurred_at: NaiveDate::from_ymd_opt(2099, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0),
            ..Injected::payment(fees[3].id, 100)
        },
    );
    let report = pull(&world, PullScope::Cursor);
    assert_eq!(report.posted, 1, "{backend:?}: {report:?}");
    assert_eq!(report.parked, 4, "{backend:?}: {report:?}");
    assert!(reason_of(&world, &bogus_refund.id).contains("NO-SUCH-PAYMENT"));
    assert!(reason_of(&world, &huge_reversal.id).contains("5000.00"));
    assert!(reason_of(&world, &on_void.id).contains("void"));
    assert!(reason_of(&world, &future.id).contains("2099"));
    let ids = [
        &bogus_refund.id,
        &payment.id,
        &huge_reversal.id,
        &on_void.id,
        &future.id,
    ];
    posted_once_or_held(&world, &ids, "after the pull");

    // The nightly holds them too, with the same reasons.
    let result = world.nightly(false);
    let items = nightly_item(&result, &future.id);
    assert!(
        items
            .iter()
            .any(|(_, outcome, note)| *outcome == Outcome::NeedsReview
                && note.as_deref().is_some_and(|n| n.contains("2099"))),
        "{backend:?}: {items:?}"
    );
    posted_once_or_held(&world, &ids, "after the nightly");

    // The fee's own change makes the held payment valid: the next pull posts it.
    world.sql(&format!(
        "UPDATE student_fees SET status = 'open' WHERE id = {}",
        fees[2].id
    ));
    world.send_pending();
    let report = pull(&world, PullScope::Cursor);
    assert_eq!(report.posted, 1, "{backend:?}: {report:?}");
    assert!(report.resolved_from_parked >= 1);
    assert!(postings_in_genesis(&world).contains_key(&on_void.id.0));
    posted_once_or_held(&world, &ids, "after the fee reopened");
}

#[test]
fn implausible_records_are_held_and_posted_once_valid() {
    each_backend(implausible);
}

// ----- 4. the cursor ------------------------------------------------------------

fn cursor_jump(backend: Backend) {
    let world = World::new(backend, 40, 54);
    let fees = world.unpaid_fees();
    world.admin.pay(fees[0].id, None).unwrap();
    pull(&world, PullScope::Cursor);
    let position = || cursors::position(&mut world.conn(), cursors::TRANSACTIONS).unwrap();
    let before = position();
    assert!(before > 0);
    let jump = |next_after| {
        world
            .admin
            .act(vec![ParentAction::CursorJump { next_after }])
            .unwrap();
    };
    jump(Some(i64::MAX));
    let late = world.admin.pay(fees[1].id, None).unwrap();
    for _ in 0..2 {
        let report = pull(&world, PullScope::Cursor);
        let refused = report.cursor_refused.clone().expect("the jump is refused");
        assert!(refused.contains("9223372036854775807"), "{refused}");
        assert_eq!(position(), before, "{backend:?}: the cursor is kept");
    }
    jump(None);
    // A cursor stored by an older version past anything the server has.
    world.sql("UPDATE cp_cursors SET position = 9223372036854775807 WHERE name = 'transactions'");
    let report = pull_from(&world, PullScope::Cursor, Some(0));
    assert!(report.cursor_refused.is_none(), "{report:?}");
    assert_eq!(report.posted, 1, "{backend:?}: the late payment");
    assert!(
        report.already_posted >= 1,
        "{backend:?}: re-read, not re-posted"
    );
    assert_eq!(
        position(),
        late.sequence,
        "{backend:?}: stored as far as read"
    );
    assert_eq!(postings_in_genesis(&world)[&late.id.0].len(), 1);
    assert_eq!(pull(&world, PullScope::Cursor).posted, 0);
}

#[test]
fn a_cursor_jump_is_refused_and_from_sequence_rereads() {
    each_backend(cursor_jump);
}

// ----- 5. a malformed Community Pass fee ---------------------------------------

fn malformed_fee(backend: Backend) {
    let world = World::new(backend, 40, 55);
    let fees = world.unpaid_fees();
    let corrupt = |raw: Option<&str>| {
        world
            .admin
            .act(vec![ParentAction::CorruptFee {
                genesis_fee_id: fees[0].id,
                field: "amount".to_string(),
                raw: raw.map(str::to_string),
            }])
            .unwrap();
    };
    corrupt(Some("1e3"));
    let honest = world.admin.pay(fees[1].id, None).unwrap();
    let listing =
        cpsync::portal::fees_where_keeping_rejected(&world.portal, cpsync::portal::FeeFilter::All)
            .unwrap();
    assert_eq!(listing.rejected.len(), 1, "{backend:?}");
    assert_eq!(
        cpsync::portal::rejected_fee_id(&listing.rejected[0]),
        Some(fees[0].id)
    );
    assert!(listing.items.iter().all(|f| f.genesis_fee_id != fees[0].id));

    let result = world.nightly(false);
    assert!(
        result
            .incomplete
            .iter()
            .any(|gap| gap.contains(&format!("fee {}", fees[0].id)) && gap.contains("not judged")),
        "{backend:?}: {:?}",
        result.incomplete
    );
    assert!(
        result
            .reconciliation
            .discrepancies
            .iter()
            .all(|d| d.fee_id != Some(fees[0].id)),
        "{backend:?}: the unreadable fee's case is not judged"
    );
    assert!(
        postings_in_genesis(&world).contains_key(&honest.id.0),
        "{backend:?}: the run went on"
    );
    assert_eq!(result.failed(), 0);

    corrupt(None);
    let again = world.nightly(false);
    assert!(again.incomplete.is_empty(), "{:?}", again.incomplete);

    // An incremental run reading the fee (a new payment on it) sets it aside
    // too, and marks nothing, so the next run judges it. (The payment falls
    // in a later second of the simulator's whole-second clock than the mark.)
    world.admin.advance_clock(1).unwrap();
    corrupt(Some("1e3"));
    world.admin.pay(fees[0].id, None).unwrap();
    let incremental = world.incremental_nightly(false);
    assert!(
        matches!(
            incremental.coverage,
            cpsync::sync::nightly::RunCoverage::Incremental { .. }
        ),
        "{backend:?}: {:?}",
        incremental.coverage
    );
    assert!(
        incremental
            .incomplete
            .iter()
            .any(|gap| gap.contains(&format!("fee {}", fees[0].id))),
        "{backend:?}: {:?}",
        incremental.incomplete
    );
    corrupt(None);
    let next = world.incremental_nightly(false);
    assert!(next.incomplete.is_empty(), "{:?}", next.incomplete);
    assert!(
        next.reconciliation
            .discrepancies
            .iter()
            .any(|d| d.fee_id == Some(fees[0].id)),
        "{backend:?}: the fee is judged once readable"
    );
}

#[test]
fn a_malformed_fee_is_set_aside_and_the_nightly_goes_on() {
    each_backend(malformed_fee);
}

/// A malformed patron balance is set aside by patron with its reason; the
/// others are stored, and the patron keeps the balance last read well.
fn malformed_balance(backend: Backend) {
    let world = World::new(backend, 30, 56);
    let mut conn = world.conn();
    let first_run = world.run_id(&mut conn, "get_balances");
    let first = cpsync::sync::balances::get_balances(&mut conn, &world.portal, first_run).unwrap();
    assert!(first.rejected.is_empty(), "{backend:?}: {first:?}");
    assert!(first.patrons >= 2, "{backend:?}: {first:?}");
    let stored = |conn: &mut cpsync::db::DbConnection| {
        use cpsync::db::schema::cp_balances::dsl::*;
        use diesel::prelude::*;
        cp_balances
            .order(patron_id)
            .select((patron_id, balance_cents, as_of, run_id))
            .load::<(String, i64, chrono::NaiveDateTime, Option<i64>)>(conn)
            .unwrap()
    };
    let before = stored(&mut conn);
    assert_eq!(before.len() as u64, first.patrons);
    let victim = before[0].0.clone();
    world
        .admin
        .act(vec![ParentAction::CorruptBalance {
            patron_id: victim.clone(),
            field: "balance".to_string(),
            raw: Some("12.345".to_string()),
        }])
        .unwrap();
    let run = world.run_id(&mut conn, "get_balances");
    let report = cpsync::sync::balances::get_balances(&mut conn, &world.portal, run).unwrap();
    assert_eq!(report.rejected.len(), 1, "{backend:?}: {report:?}");
    assert!(
        report.rejected[0].contains(&victim) && report.rejected[0].contains("12.345"),
        "{backend:?}: the record is named with its reason: {:?}",
        report.rejected
    );
    assert_eq!(
        report.patrons,
        first.patrons - 1,
        "{backend:?}: the others are stored"
    );
    let after = stored(&mut conn);
    assert_eq!(after.len(), before.len(), "{backend:?}");
    assert_eq!(
        after[0], before[0],
        "{backend:?}: the last good balance stays"
    );
    assert!(
        after[1..].iter().all(|row| row.3 == Some(run)),
        "{backend:?}: the others were stored by this run"
    );

    world
        .admin
        .act(vec![ParentAction::CorruptBalance {
            patron_id: victim.clone(),
            field: "balance".to_string(),
            raw: None,
        }])
        .unwrap();
    let run = world.run_id(&mut conn, "get_balances");
    let healed = cpsync::sync::balances::get_balances(&mut conn, &world.portal, run).unwrap();
    assert!(healed.rejected.is_empty(), "{backend:?}: {healed:?}");
    assert_eq!(healed.patrons, first.patrons);
}

#[test]
fn a_malformed_balance_is_set_aside_and_the_others_are_stored() {
    each_backend(malformed_balance);
}

// ----- 6. any interleaving, through the shell ------------------------------------

/// One seeded scenario: honest payments and refunds, identical
/// redeliveries and reordered pages (the simulator's faults), conflicting
/// copies and implausible records, interleaved with cursor and student
/// pulls and nightly runs. At the end every vendor id in Community Pass's
/// log is posted exactly once (to the fee it names) or held with a reason;
/// both only when a differing copy arrived after the first was posted (the
/// posting stays, the copy is held as evidence).
fn interleaving(backend: Backend, seed: u64) {
    use rand::{Rng, SeedableRng};
    let world = World::new(backend, 40, 60 + seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let fees = world.unpaid_fees();
    world
        .admin
        .set_faults(&cpsync::sim::FaultConfig {
            duplicate_rate: 0.5,
            reorder_rate: 0.5,
            ..cpsync::sim::FaultConfig::default()
        })
        .unwrap();
    let mut payments: Vec<VendorTxn> = Vec::new();
    let mut ids: Vec<VendorTxnId> = Vec::new();
    for step in 0..30 {
        let fee = &fees[rng.gen_range(0..fees.len().min(12))];
        match rng.gen_range(0..10) {
            0..=2 => {
                if let Ok(txn) = world
                    .admin
                    .pay(fee.id, Some(Money::from_cents(rng.gen_range(100..900))))
                {
                    ids.push(txn.id.clone());
                    payments.push(txn);
                }
            }
            3 if !payments.is_empty() => {
                let paid = &payments[rng.gen_range(0..payments.len())];
                if let Ok(txn) = world.admin.refund(&paid.id, Some(Money::from_cents(50))) {
                    ids.push(txn.id);
                }
            }
            4 if !ids.is_empty() => {
                // A conflicting copy of an id already in the log.
                let target = ids[rng.gen_range(0..ids.len())].clone();
                inject(
                    &world,
                    Injected {
                        id: Some(target.0),
                        ..Injected::payment(fee.id, 99_900)
                    },
                );
            }
            5 | 6 => {
                let mut record = Injected::payment(fee.id, rng.gen_range(100..900));
                match rng.gen_range(0..5) {
                    0 => record.student = Some(StudentId(999_999)),
                    1 => record.vendor_fee_id = Some("CPF-NOT-LINKED".into()),
                    2 => {
                        record.occurred_at = NaiveDate::from_ymd_opt(2099, 1, 1)
                            .unwrap()
                            .and_hms_opt(0, 0, 0)
                    }
                    3 => {
                        record.kind = TxnKind::Refund;
                        record.reverses = Some(VendorTxnId("NO-SUCH-PAYMENT".into()));
                    }
                    _ => {
                        record.kind = TxnKind::Reversal;
                        record.cents = 500_000;
                        record.reverses = payments.first().map(|p| p.id.clone());
                    }
                }
                ids.push(inject(&world, record).id);
            }
            7 | 8 => {
                pull(&world, PullScope::Cursor);
            }
            _ if step % 3 == 0 => {
                world.nightly(false);
            }
            _ => {
                pull(&world, PullScope::Student(fee.student_id));
            }
        }
    }
    world
        .admin
        .set_faults(&cpsync::sim::FaultConfig::default())
        .unwrap();
    pull(&world, PullScope::Cursor);
    let result = world.nightly(false);
    assert_eq!(result.failed(), 0, "{backend:?} seed {seed}");

    let log = cpsync::portal::transactions_after(&world.portal, cpsync::portal::TxnScope::All, 0)
        .unwrap()
        .items;
    let posted = postings_in_genesis(&world);
    let held = held(&world);
    assert!(
        !posted.is_empty() && !held.is_empty(),
        "{backend:?} seed {seed}: the scenario posts and holds"
    );
    let mut copies: BTreeMap<&VendorTxnId, Vec<&VendorTxn>> = BTreeMap::new();
    for txn in &log {
        copies.entry(&txn.id).or_default().push(txn);
    }
    for (id, seen) in copies {
        let rows = posted.get(&id.0).map(Vec::as_slice).unwrap_or(&[]);
        let reason = held.get(&id.0);
        let what = format!("{backend:?} seed {seed}: {id} posted {rows:?}, held {reason:?}");
        assert!(rows.len() <= 1, "{what}");
        assert!(
            !rows.is_empty() || reason.is_some(),
            "never neither: {what}"
        );
        if let (Some(reason), [_]) = (reason, rows) {
            assert!(
                reason.contains("posted in Genesis as"),
                "never both: {what}"
            );
        }
        if let [(fee, amount)] = rows {
            assert!(
                seen.iter()
                    .any(|t| t.genesis_fee_id == Some(*fee) && t.amount == *amount),
                "posted as delivered: {what}"
            );
            let copy = seen
                .iter()
                .find(|t| t.genesis_fee_id == Some(*fee))
                .unwrap();
            let genesis_fee = fees.iter().find(|f| f.id == *fee);
            if let (Some(genesis_fee), Some(student)) = (genesis_fee, copy.student_id) {
                assert_eq!(student, genesis_fee.student_id, "the right student: {what}");
            }
        }
    }
}

#[test]
fn any_interleaving_ends_posted_once_or_held() {
    for backend in BACKENDS {
        for seed in 1..=3 {
            interleaving(backend, seed);
        }
    }
}
