//! The nightly reconciliation end to end, on both backends, against the
//! simulator: a seeded district with known injected drift, where the run must
//! find exactly the injected discrepancies, fix the fixable, leave the rest
//! for review, and a second run must find nothing more to do.

mod common;

use std::collections::BTreeMap;

use common::world::World;
use common::Backend;
use cpsync::db::genesis;
use cpsync::domain::{FeeStatus, GenesisFee};
use cpsync::money::Money;
use cpsync::sync::nightly::counts_by_kind;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

/// Open, eligible fees of at least $10 with nothing paid yet, in id order.
fn candidate_fees(world: &World) -> Vec<GenesisFee> {
    let mut conn = world.conn();
    let fees = genesis::load_fees(&mut conn, None).unwrap().records;
    let txns = genesis::load_txns(&mut conn, None).unwrap().records;
    let policy = world.setup.policy();
    fees.into_iter()
        .filter(|f| policy.eligibility(f).is_ok())
        .filter(|f| f.status == FeeStatus::Open && f.amount >= Money::from_cents(1_000))
        .filter(|f| !txns.iter().any(|t| t.fee_id == f.id))
        .collect()
}

fn sql(world: &World, statement: &str) {
    world.conn().batch_execute(statement).unwrap();
}

/// Marks every queued change handled, as if the push had been lost.
fn lose_pending_pushes(world: &World) {
    sql(
        world,
        "UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL",
    );
}

fn vendor_ids_posted_twice(world: &World) -> i64 {
    use cpsync::db::schema::fee_transactions::dsl::*;
    let mut conn = world.conn();
    let ids: Vec<Option<String>> = fee_transactions
        .filter(vendor_txn_id.is_not_null())
        .select(vendor_txn_id)
        .load(&mut conn)
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .flatten()
        .filter(|vendor_id| !seen.insert(vendor_id.clone()))
        .count() as i64
}

fn inject_drift(world: &World) -> BTreeMap<&'static str, u64> {
    let fees = candidate_fees(world);
    assert!(fees.len() > 20, "the scenario needs fees to work with");
    let id = |i: usize| fees[i].id;
    let admin = &world.admin;
    // Community Pass side: parents pay, partially pay, get refunds, waivers, reversals.
    for i in 0..3 {
        admin.pay(id(i), None).unwrap();
    }
    for i in 3..5 {
        admin.pay(id(i), Some(Money::from_cents(100))).unwrap();
    }
    let refunded = admin.pay(id(5), None).unwrap();
    admin.refund(&refunded.id, None).unwrap();
    admin.waive(id(6), None).unwrap();
    let returned = admin.pay(id(7), None).unwrap();
    admin.reverse(&returned.id, 5).unwrap();
    // Genesis side: edits whose pushes were lost.
    sql(
        world,
        &format!(
            "UPDATE student_fees SET amount_cents = amount_cents + 500 WHERE id IN ({}, {})",
            id(8),
            id(9)
        ),
    );
    sql(
        world,
        &format!(
            "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
         VALUES ({}, 'payment', 300, 'cash', 'genesis', '2026-11-02 10:00:00')",
            id(10)
        ),
    );
    // Paid in Community Pass, then edited, voided or deleted in Genesis.
    admin.pay(id(11), None).unwrap();
    sql(
        world,
        &format!(
            "UPDATE student_fees SET amount_cents = amount_cents + 1000 WHERE id = {}",
            id(11)
        ),
    );
    admin.pay(id(12), None).unwrap();
    sql(
        world,
        &format!(
            "UPDATE student_fees SET status = 'void' WHERE id = {}",
            id(12)
        ),
    );
    admin.pay(id(13), None).unwrap();
    sql(
        world,
        &format!("DELETE FROM student_fees WHERE id = {}", id(13)),
    );
    // A new fee whose push was lost.
    sql(world, &format!(
        "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
         fee_date, due_date, status, created_at, modified_at) \
         SELECT 990001, student_id, category_code, school_code, 'Replacement ID card', 1500, \
         '2026-11-20', NULL, 'open', '2026-11-20 09:00:00', '2026-11-20 09:00:00' FROM student_fees WHERE id = {}",
        id(14)
    ));
    lose_pending_pushes(world);
    BTreeMap::from([
        // Paid in full: 3, the refunded one, the reversed one, the voided one.
        ("cp_payment_missing_in_genesis", 3 + 1 + 1 + 1),
        // $1.00 twice, and the one whose Genesis amount was raised after it was paid.
        ("cp_partial_payment_missing_in_genesis", 2 + 1),
        ("cp_refund_missing_in_genesis", 1),
        ("cp_waiver_missing_in_genesis", 1),
        ("cp_reversal_missing_in_genesis", 1),
        ("amount_not_locked", 3 + 2 + 1 + 1 + 2),
        ("fee_out_of_date", 2),
        ("genesis_credit_not_reflected", 1),
        ("amount_edited_after_payment", 1),
        ("fee_voided_after_payment", 1),
        ("fee_deleted_after_payment", 1),
        // The deleted fee's payment cannot be posted: parked, never dropped.
        ("unprocessed_vendor_txn", 1),
        ("fee_missing_in_cp", 1),
    ])
}

fn finds_exactly_the_injected_drift(backend: Backend) {
    let world = World::new(backend, 150, 21);
    let clean = world.nightly(false);
    assert!(
        clean.reconciliation.discrepancies.is_empty(),
        "{:?}",
        counts_by_kind(&clean.reconciliation)
    );

    let expected = inject_drift(&world);
    let dry = world.nightly(true);
    assert_eq!(
        counts_by_kind(&dry.reconciliation),
        expected,
        "{backend:?} dry run"
    );
    let applied = world.nightly(false);
    assert_eq!(
        counts_by_kind(&applied.reconciliation),
        expected,
        "{backend:?}"
    );
    assert_eq!(applied.failed(), 0);
    assert_eq!(applied.remaining_after_apply, Some(0), "one run converges");
    let reviews_first: Vec<_> = applied
        .reconciliation
        .reviews()
        .map(|d| (d.kind, d.fee_id))
        .collect();

    let second = world.nightly(false);
    assert!(
        second.reconciliation.plan().is_empty(),
        "a second run has nothing to do"
    );
    let reviews_second: Vec<_> = second
        .reconciliation
        .reviews()
        .map(|d| (d.kind, d.fee_id))
        .collect();
    assert_eq!(
        reviews_second, reviews_first,
        "only the review items remain"
    );
    assert_eq!(vendor_ids_posted_twice(&world), 0);
}

#[test]
fn sqlite_nightly_finds_exactly_the_injected_drift() {
    finds_exactly_the_injected_drift(Backend::Sqlite);
}

#[test]
fn postgres_nightly_finds_exactly_the_injected_drift() {
    finds_exactly_the_injected_drift(Backend::Postgres);
}
