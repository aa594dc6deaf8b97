//! The Genesis → Community Pass direction converges for the whole life of a
//! fee (DESIGN.md §6), on both backends, through the HTTP client and the
//! simulator: a push means what Genesis says now, returning to an earlier
//! state is applied, office refunds go through, a refused push is held
//! instead of blocking, an unpaid deleted fee is voided, waived fees owe
//! nothing, payments on Community Pass-only fees are not discrepancies,
//! guardian links follow Genesis, frozen fees stay quiet, and a write
//! Community Pass accepted but did not apply makes the nightly say
//! "not converged". Each test reads Community Pass back and compares it
//! field by field with what Genesis says now.

mod common;

use common::world::World;
use common::{Backend, BACKENDS};
use cpsync::db::{genesis, links, settings};
use cpsync::domain::{FeeId, FeeStatus, GenesisFee, GuardianId, VendorFee, VendorFeeStatus};
use cpsync::money::Money;
use cpsync::portal::{all_balances, CommunityPass};
use cpsync::sim::{FaultConfig, ParentAction};
use cpsync::sync::pull::{self, PullScope};
use cpsync::sync::push::{self, PushMode};
use cpsync::sync::utc_now;

fn genesis_fee(world: &World, id: FeeId) -> GenesisFee {
    let mut conn = world.conn();
    genesis::load_fees_by_ids(&mut conn, &[id]).unwrap().records[0].clone()
}

fn cp_fee(world: &World, id: FeeId) -> VendorFee {
    world.portal.fee(id).unwrap()
}

/// Every field Community Pass shows equals what Genesis says now (the
/// student-id patron rule, no office transactions unless `credit`).
fn assert_same_fee(world: &World, id: FeeId, credit: Money, what: &str) {
    let genesis = genesis_fee(world, id);
    let shown = cp_fee(world, id);
    let expected_status = match genesis.status {
        FeeStatus::Void => VendorFeeStatus::Void,
        FeeStatus::Waived => VendorFeeStatus::Waived,
        FeeStatus::Open => shown.status, // open or paid: derived by Community Pass
    };
    assert_eq!(
        (
            shown.student_id,
            shown.patron_id.as_str(),
            shown.amount,
            shown.genesis_credit,
            shown.status,
            shown.description.as_str(),
            shown.category.as_str(),
            shown.school.as_str(),
            shown.fee_date,
            shown.due_date,
        ),
        (
            genesis.student_id,
            genesis.student_id.to_string().as_str(),
            genesis.amount,
            credit,
            expected_status,
            genesis.description.as_str(),
            genesis.category.as_str(),
            genesis.school.as_str(),
            genesis.fee_date,
            genesis.due_date,
        ),
        "{what}"
    );
}

fn send(world: &World) -> push::PushReport {
    world.send_pending()
}

fn pull_all(world: &World) -> pull::PullReport {
    let mut conn = world.conn();
    let run_id = world.run_id(&mut conn, "get_payments");
    pull::get_payments(
        &mut conn,
        &world.portal,
        PullScope::Cursor,
        run_id,
        &utc_now,
    )
    .unwrap()
}

/// A nightly that must converge: nothing failed, nothing still different,
/// and a second nightly plans nothing.
fn nightly_converges(world: &World, what: &str) {
    let first = world.nightly(false);
    assert_eq!(first.failed(), 0, "{what}: {:?}", first.outcomes);
    assert!(
        first.still_different.is_empty(),
        "{what}: still different {:?}",
        first.still_different
    );
    let second = world.nightly(true);
    assert!(
        second.reconciliation.plan().is_empty(),
        "{what}: a second nightly plans {:?}",
        second.reconciliation.plan()
    );
    // Judged apart from cpsync: Community Pass read raw, field by field.
    let compared = common::assert_genesis_fees_reached_community_pass(
        &mut world.conn(),
        &world.sim.base_url(),
        common::world::API_KEY,
        "2026-08-01",
        &|_, _| true,
    );
    assert!(compared > 0, "{what}: fees compared");
}

fn each_backend(test: fn(Backend)) {
    for backend in BACKENDS {
        test(backend);
    }
}

// ----- 1. returning to an earlier state is applied -------------------------

fn returning_to_an_earlier_state(backend: Backend) {
    let world = World::new(backend, 40, 31);
    let fees = world.unpaid_fees();
    let (a, b, c) = (fees[0].id, fees[1].id, fees[2].id);
    let original = fees[0].amount.cents();
    for cents in [original + 500, original] {
        world.sql(&format!(
            "UPDATE student_fees SET amount_cents = {cents} WHERE id = {a}"
        ));
        let report = send(&world);
        assert_eq!(
            report.replayed, 0,
            "{backend:?}: a new intent is never a replay"
        );
    }
    assert_same_fee(&world, a, Money::ZERO, "A -> B -> A");

    for status in ["void", "open"] {
        world.sql(&format!(
            "UPDATE student_fees SET status = '{status}' WHERE id = {b}"
        ));
        send(&world);
    }
    assert_same_fee(&world, b, Money::ZERO, "voided, then reopened");
    assert_eq!(cp_fee(&world, b).status, VendorFeeStatus::Open);

    world.sql(&format!(
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
             VALUES ({c}, 'payment', 500, 'check', 'genesis', '2026-10-01 09:00:00')"
    ));
    send(&world);
    assert_eq!(cp_fee(&world, c).genesis_credit, Money::from_cents(500));
    world.sql(&format!("DELETE FROM fee_transactions WHERE fee_id = {c}"));
    send(&world);
    assert_same_fee(
        &world,
        c,
        Money::ZERO,
        "office check recorded, then returned",
    );
    nightly_converges(&world, "earlier states");
}

#[test]
fn returning_to_an_earlier_state_is_applied() {
    each_backend(returning_to_an_earlier_state);
}

// ----- 2. every field reaches Community Pass --------------------------------

fn every_field_is_pushed(backend: Backend) {
    let world = World::new(backend, 40, 32);
    let fees = world.unpaid_fees();
    let fee = &fees[0];
    let other_student = fees
        .iter()
        .find(|f| f.student_id != fee.student_id)
        .unwrap()
        .student_id;
    world.sql(&format!(
            "UPDATE student_fees SET student_id = {other_student}, description = 'Chemistry lab (corrected)', \
             due_date = '2026-12-15' WHERE id = {}",
            fee.id
        ),
    );
    let report = send(&world);
    assert_eq!(report.pushed, 1, "{backend:?}: {report:?}");
    assert_same_fee(
        &world,
        fee.id,
        Money::ZERO,
        "student, description, due date",
    );
    nightly_converges(&world, "fields");

    // A changed patron id rule: the nightly sends every fee it affects.
    let mut setup = world.setup.clone();
    setup.patron_id = cpsync::setup::PatronIdRule::BillingGuardianId;
    settings::save_setup(&mut world.conn(), &setup, utc_now()).unwrap();
    let world = World { setup, ..world };
    let result = world.nightly(false);
    assert!(
        result.corrected() > 0,
        "{backend:?}: patron changes are corrected"
    );
    assert!(result.still_different.is_empty());
    let mut conn = world.conn();
    let links = genesis::load_guardian_links(&mut conn).unwrap();
    let shown = cp_fee(&world, fees[1].id);
    assert_eq!(
        shown.patron_id,
        world.setup.patron_id.patron_for(fees[1].student_id, &links)
    );
    assert!(world.nightly(true).reconciliation.plan().is_empty());
}

#[test]
fn every_field_community_pass_shows_is_pushed() {
    each_backend(every_field_is_pushed);
}

// ----- 3. an office refund converges ----------------------------------------

fn office_refund(backend: Backend) {
    let world = World::new(backend, 40, 33);
    let fee = world.unpaid_fees()[0].clone();
    world
        .admin
        .pay(fee.id, Some(fee.amount + Money::from_cents(500)))
        .unwrap();
    pull_all(&world);
    world.sql(&format!(
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
             VALUES ({}, 'refund', 500, 'check', 'genesis', '2026-10-02 09:00:00')",
        fee.id
    ));
    let report = send(&world);
    assert_eq!(
        (report.pushed, report.rejected),
        (1, 0),
        "{backend:?}: {report:?}"
    );
    let shown = cp_fee(&world, fee.id);
    assert_eq!(shown.genesis_credit, Money::from_cents(-500));
    assert_eq!(
        shown.balance,
        Money::ZERO,
        "{backend:?}: the credit was refunded"
    );
    nightly_converges(&world, "office refund");
}

#[test]
fn an_office_refund_converges() {
    each_backend(office_refund);
}

// ----- 4. a refused push is held, not retried for ever ----------------------

fn refused_push(backend: Backend) {
    let world = World::new(backend, 40, 34);
    let fees = world.unpaid_fees();
    let (fee, next) = (&fees[0], &fees[1]);
    // Paid in Community Pass, not pulled yet: the link is not locked, so
    // the amount edit is sent and Community Pass refuses it (409).
    world
        .admin
        .pay(fee.id, Some(Money::from_cents(100)))
        .unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 700 WHERE id = {}",
        fee.id
    ));
    world.sql(&format!(
        "UPDATE student_fees SET description = 'Next in line' WHERE id = {}",
        next.id
    ));
    let report = send(&world);
    assert_eq!(
        (report.rejected, report.failed),
        (1, 0),
        "{backend:?}: {report:?}"
    );
    assert!(
        report.problems[&fee.id.0].contains("amount_locked"),
        "{report:?}"
    );
    assert_same_fee(
        &world,
        next.id,
        Money::ZERO,
        "the push behind it went through",
    );
    let mut conn = world.conn();
    let held = links::refused(&mut conn).unwrap();
    assert_eq!(held.len(), 1);
    assert!(held[0].refused_reason.as_deref().unwrap().contains("409"));
    assert_eq!(
        cpsync::db::outbox::pending_count(&mut conn).unwrap(),
        0,
        "left the queue"
    );
    // Not tried again until the fee changes or is re-sent.
    let requests = world.admin.stats().unwrap().requests;
    let run_id = world.run_id(&mut conn, "send_fees");
    let (again, _) = push::push_fees(
        &mut conn,
        &world.portal,
        &world.setup,
        &[fee.id],
        PushMode::Drain,
        run_id,
        &utc_now,
    )
    .unwrap();
    assert_eq!(again.rejected, 1);
    assert_eq!(
        world.admin.stats().unwrap().requests,
        requests,
        "{backend:?}: nothing sent"
    );
    // Restoring the amount in Genesis makes it sendable again.
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = {} WHERE id = {}",
        fee.amount.cents(),
        fee.id
    ));
    let report = send(&world);
    assert_eq!(
        (report.pushed, report.rejected),
        (1, 0),
        "{backend:?}: {report:?}"
    );
    assert!(links::refused(&mut conn).unwrap().is_empty());
}

#[test]
fn a_refused_push_is_held_and_never_blocks_what_follows() {
    each_backend(refused_push);
}

// ----- 5. an unpaid fee deleted in Genesis is voided ------------------------

fn deleted_unpaid(backend: Backend) {
    let world = World::new(backend, 40, 35);
    let fees = world.unpaid_fees();
    world.sql(&format!(
        "DELETE FROM student_fees WHERE id = {}",
        fees[0].id
    ));
    let report = send(&world);
    assert_eq!(report.voided_deleted, 1, "{backend:?}: {report:?}");
    assert_eq!(cp_fee(&world, fees[0].id).status, VendorFeeStatus::Void);
    // Deleted while the pushes were lost: the nightly voids it.
    world.sql(&format!(
        "DELETE FROM student_fees WHERE id = {}",
        fees[1].id
    ));
    world.sql("UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL");
    let result = world.nightly(false);
    assert_eq!(
        result.needs_review(),
        0,
        "{backend:?}: {:?}",
        result.reconciliation.discrepancies
    );
    assert_eq!(cp_fee(&world, fees[1].id).status, VendorFeeStatus::Void);
    nightly_converges(&world, "deleted unpaid fees");
}

#[test]
fn an_unpaid_fee_deleted_in_genesis_is_voided() {
    each_backend(deleted_unpaid);
}

// ----- 6. a waived fee owes nothing -----------------------------------------

fn waived_without_waiver(backend: Backend) {
    let world = World::new(backend, 40, 36);
    let fee = world.unpaid_fees()[0].clone();
    let patron = fee.student_id.to_string();
    let owed = |world: &World| {
        all_balances(&world.portal)
            .unwrap()
            .into_iter()
            .find(|b| b.patron_id == patron)
            .map_or(Money::ZERO, |b| b.integration_balance)
    };
    let before = owed(&world);
    world.sql(&format!(
        "UPDATE student_fees SET status = 'waived' WHERE id = {}",
        fee.id
    ));
    send(&world);
    assert_eq!(cp_fee(&world, fee.id).status, VendorFeeStatus::Waived);
    assert_eq!(
        owed(&world),
        before - fee.amount,
        "{backend:?}: the family owes nothing for it"
    );
    nightly_converges(&world, "waived without a waiver row");
}

#[test]
fn a_waived_fee_owes_nothing() {
    each_backend(waived_without_waiver);
}

// ----- 7. payments on Community Pass-only fees ------------------------------

fn community_pass_only(backend: Backend) {
    let world = World::new(backend, 40, 37);
    let fee = world.unpaid_fees()[0].clone();
    let unmanaged = world.admin.duplicate(fee.id).unwrap();
    world
        .admin
        .act(vec![ParentAction::Payment {
            fee: cpsync::sim::model::FeeRef::Vendor(unmanaged.vendor_fee_id.clone()),
            amount: None,
            method: None,
            occurred_at: None,
        }])
        .unwrap();
    let report = pull_all(&world);
    assert_eq!(
        (report.community_pass_only, report.parked),
        (1, 0),
        "{backend:?}: {report:?}"
    );
    let mut conn = world.conn();
    let waiting = cpsync::db::postings::list_unprocessed(&mut conn, false).unwrap();
    assert!(waiting.is_empty(), "{backend:?}: {waiting:?}");
    let result = world.nightly(false);
    assert_eq!(
        result.needs_review(),
        0,
        "{backend:?}: {:?}",
        result.reconciliation.discrepancies
    );
}

#[test]
fn payments_on_community_pass_only_fees_are_not_discrepancies() {
    each_backend(community_pass_only);
}

// ----- 8. guardian links follow Genesis -------------------------------------

fn guardian_links(backend: Backend) {
    let world = World::new(backend, 40, 38);
    let fee = world.unpaid_fees()[0].clone();
    let mut conn = world.conn();
    let links = genesis::load_guardian_links(&mut conn).unwrap();
    let newcomer = genesis::load_guardians(&mut conn)
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .find(|g| {
            !links
                .iter()
                .any(|l| l.guardian_id == *g && l.student_id == fee.student_id)
        })
        .unwrap();
    world
        .admin
        .pay(fee.id, Some(Money::from_cents(300)))
        .unwrap();
    world.sql(&format!(
            "INSERT INTO student_guardians (student_id, guardian_id, relationship, household, portal_access, billing_contact) \
             VALUES ({}, {newcomer}, 'Aunt', 2, TRUE, FALSE)",
            fee.student_id
        ),
    );
    send(&world);
    assert!(
        cp_fee(&world, fee.id).guardian_ids.contains(&newcomer),
        "{backend:?}"
    );
    let pulled = |guardian: GuardianId| {
        let mut conn = world.conn();
        let run_id = world.run_id(&mut conn, "get_payments");
        pull::get_payments(
            &mut conn,
            &world.portal,
            PullScope::Guardian(guardian),
            run_id,
            &utc_now,
        )
        .unwrap()
        .fetched
    };
    assert!(
        pulled(newcomer) > 0,
        "{backend:?}: the new guardian's login pulls the payment"
    );
    world.sql(&format!(
        "DELETE FROM student_guardians WHERE student_id = {} AND guardian_id = {newcomer}",
        fee.student_id
    ));
    send(&world);
    assert!(!cp_fee(&world, fee.id).guardian_ids.contains(&newcomer));
    let others = genesis::students_of_guardian(&mut conn, newcomer, true).unwrap();
    if others.is_empty() {
        assert_eq!(pulled(newcomer), 0, "{backend:?}: unlinked, nothing pulled");
    }
    nightly_converges(&world, "guardian links");
}

#[test]
fn guardian_links_follow_genesis() {
    each_backend(guardian_links);
}

// ----- 9. fees frozen by a later cutoff stay quiet --------------------------

fn frozen_fees(backend: Backend) {
    let world = World::new(backend, 40, 39);
    let mut setup = world.setup.clone();
    setup.cutoff = Some(chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
    settings::save_setup(&mut world.conn(), &setup, utc_now()).unwrap();
    let world = World { setup, ..world };
    for night in 0..2 {
        let result = world.nightly(false);
        assert_eq!(
            result.needs_review(),
            0,
            "{backend:?} night {night}: {:?}",
            result.reconciliation.discrepancies
        );
    }
}

#[test]
fn fees_frozen_by_a_later_cutoff_stay_quiet_while_both_sides_agree() {
    each_backend(frozen_fees);
}

// ----- the verdict: a write accepted but not applied ------------------------

fn lost_write(backend: Backend) {
    let world = World::new(backend, 40, 40);
    let fee = world.unpaid_fees()[0].clone();
    world.sql(&format!(
        "UPDATE student_fees SET description = 'Edited' WHERE id = {}",
        fee.id
    ));
    world.sql("UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL");
    world
        .admin
        .set_faults(&FaultConfig {
            lost_write_rate: 1.0,
            ..FaultConfig::default()
        })
        .unwrap();
    let result = world.nightly(false);
    assert_eq!(
        result.corrected(),
        0,
        "{backend:?}: nothing is called corrected"
    );
    assert_eq!(
        result
            .not_converged()
            .iter()
            .map(|(fee, _)| *fee)
            .collect::<Vec<_>>(),
        vec![fee.id],
        "{backend:?}"
    );
    world.admin.set_faults(&FaultConfig::default()).unwrap();
    nightly_converges(&world, "after the vendor applies writes again");
    assert_same_fee(&world, fee.id, Money::ZERO, "converged");
}

#[test]
fn a_write_not_applied_makes_the_nightly_not_converged() {
    each_backend(lost_write);
}

/// `send-fees --resend` after a vendor-side incident, through the real
/// binary: `--fee` re-sends that fee only, `--student` that student's fees
/// only, plain `--resend` every fee; a lost change is applied, nothing is
/// created twice, and an unknown fee is refused (exit 1) without sending.
fn resend(backend: Backend) {
    let world = World::new(backend, 40, 61);
    let fees = world.unpaid_fees();
    let first = fees[0].clone();
    let other = fees
        .iter()
        .find(|f| f.student_id != first.student_id)
        .expect("a fee of another student")
        .clone();
    for fee in [&first, &other] {
        world.sql(&format!(
            "UPDATE student_fees SET description = 'Restored: ' || description WHERE id = {}",
            fee.id
        ));
    }
    // The vendor lost these changes (as after restoring a backup).
    world.sql("UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL");
    let vendor_fees_before = cpsync::portal::all_fees(&world.portal, None).unwrap().len();
    let base = [
        "--database-url",
        world.db.url_text.as_str(),
        "--cp-url",
        &world.sim.base_url(),
    ];
    let run = |args: &[&str]| {
        let all: Vec<&str> = base.iter().copied().chain(args.iter().copied()).collect();
        common::cpsync(&all)
    };
    let id = first.id.to_string();
    let (code, out, err) = run(&["send-fees", "--resend", "--fee", &id]);
    assert_eq!(code, 0, "{backend:?}: {out}{err}");
    assert!(
        cp_fee(&world, first.id)
            .description
            .starts_with("Restored: "),
        "{backend:?}"
    );
    assert!(
        !cp_fee(&world, other.id)
            .description
            .starts_with("Restored: "),
        "{backend:?}: --fee sends that fee only"
    );
    let student = other.student_id.to_string();
    let (code, out, err) = run(&["send-fees", "--resend", "--student", &student]);
    assert_eq!(code, 0, "{backend:?}: {out}{err}");
    assert!(
        cp_fee(&world, other.id)
            .description
            .starts_with("Restored: "),
        "{backend:?}"
    );
    let (code, out, err) = run(&["send-fees", "--resend"]);
    assert_eq!(code, 0, "{backend:?}: {out}{err}");
    assert_eq!(
        cpsync::portal::all_fees(&world.portal, None).unwrap().len(),
        vendor_fees_before,
        "{backend:?}: a resend of everything creates nothing twice"
    );
    let (code, out, err) = run(&["send-fees", "--resend", "--fee", "999999999"]);
    assert_eq!(
        code, 1,
        "{backend:?}: an unknown fee is refused: {out}{err}"
    );
    assert!(err.contains("is not in Genesis"), "{backend:?}: {err}");
    nightly_converges(&world, "after the resends");
}

#[test]
fn send_fees_resend_by_fee_student_and_all() {
    each_backend(resend);
}
