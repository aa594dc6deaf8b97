//! The nightly reconciliation end to end, on both backends, against the
//! simulator: a seeded district with known injected drift, where the run must
//! find exactly the injected discrepancies, fix the fixable, leave the rest
//! for review, and a second run must find nothing more to do.

mod common;

use std::collections::BTreeMap;

use common::world::World;
use common::Backend;
use cpsync::db::genesis;
use cpsync::domain::FeeId;
use cpsync::money::Money;
use cpsync::portal::CommunityPass;
use cpsync::reconcile::Action;
use cpsync::sync::nightly::{counts_by_kind, NightlyResult, RunCoverage};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

/// Marks every queued change handled, as if the push had been lost.
fn lose_pending_pushes(world: &World) {
    world.sql("UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL");
}

/// Genesis holds every vendor transaction whose fee it has, exactly as the
/// vendor's own log (read raw, not through cpsync's client) holds it: same
/// fee, kind and amount, once; and nothing the vendor does not have.
/// Returns the differences in words.
fn postings_differ_from_the_vendor_log(world: &World) -> Vec<String> {
    use cpsync::db::schema::fee_transactions::dsl::*;
    let mut conn = world.conn();
    let log = common::raw_vendor_transactions(&world.sim.base_url(), common::world::API_KEY);
    let fees: std::collections::BTreeSet<i64> = genesis::load_fees(&mut conn, None)
        .unwrap()
        .records
        .iter()
        .map(|f| f.id.0)
        .collect();
    let posted: Vec<(i64, String, String, i64)> = fee_transactions
        .filter(source.eq("community_pass"))
        .select((fee_id, vendor_txn_id.assume_not_null(), kind, amount_cents))
        .load(&mut conn)
        .unwrap();
    let mut expected: Vec<(i64, String, String, i64)> = log
        .iter()
        .filter_map(|t| {
            let fee = t.genesis_fee_id.filter(|f| fees.contains(f))?;
            Some((fee, t.id.clone(), t.kind.clone(), t.amount_cents))
        })
        .collect();
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    let mut actual = posted;
    actual.sort_by(|a, b| a.1.cmp(&b.1));
    if expected == actual {
        return Vec::new();
    }
    let missing = expected.iter().filter(|e| !actual.contains(e));
    let extra = actual.iter().filter(|a| !expected.contains(a));
    missing
        .map(|m| format!("vendor {m:?} not posted as such"))
        .chain(extra.map(|e| format!("Genesis posting {e:?} not in the vendor log")))
        .collect()
}

fn inject_drift(world: &World) -> BTreeMap<&'static str, u64> {
    let fees = world.unpaid_fees();
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
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 500 WHERE id IN ({}, {})",
        id(8),
        id(9)
    ));
    world.sql(&format!(
        "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at) \
         VALUES ({}, 'payment', 300, 'cash', 'genesis', '2026-11-02 10:00:00')",
        id(10)
    ));
    // Paid in Community Pass, then edited, voided or deleted in Genesis.
    admin.pay(id(11), None).unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 1000 WHERE id = {}",
        id(11)
    ));
    admin.pay(id(12), None).unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET status = 'void' WHERE id = {}",
        id(12)
    ));
    admin.pay(id(13), None).unwrap();
    world.sql(&format!("DELETE FROM student_fees WHERE id = {}", id(13)));
    // A new fee whose push was lost.
    world.sql(&format!(
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
    let reviews_first = reviews(&applied);

    let second = world.nightly(false);
    assert!(
        second.reconciliation.plan().is_empty(),
        "a second run has nothing to do"
    );
    assert_eq!(
        reviews(&second),
        reviews_first,
        "only the review items remain"
    );
    assert_eq!(
        postings_differ_from_the_vendor_log(&world),
        Vec::<String>::new()
    );
}

#[test]
fn sqlite_nightly_finds_exactly_the_injected_drift() {
    finds_exactly_the_injected_drift(Backend::Sqlite);
}

#[test]
fn postgres_nightly_finds_exactly_the_injected_drift() {
    finds_exactly_the_injected_drift(Backend::Postgres);
}

fn reviews(result: &NightlyResult) -> Vec<(cpsync::reconcile::DiscrepancyKind, Option<FeeId>)> {
    result
        .reconciliation
        .reviews()
        .map(|d| (d.kind, d.fee_id))
        .collect()
}

/// The fee of each discrepancy found, in order.
fn fees_judged(result: &NightlyResult) -> Vec<Option<FeeId>> {
    result
        .reconciliation
        .discrepancies
        .iter()
        .map(|d| d.fee_id)
        .collect()
}

fn fees_examined(result: &NightlyResult) -> usize {
    match &result.coverage {
        RunCoverage::Incremental { fees_examined, .. } => *fees_examined,
        other => panic!("expected an incremental run, got {other:?}"),
    }
}

/// An incremental run after drift judges the changed fees exactly as a full
/// run does, reads far fewer fees, converges, and keeps listing what needs
/// review on later incremental runs.
fn incremental_judges_like_a_full_run(backend: Backend) {
    let world = World::new(backend, 150, 21);
    // The setup pushes' timestamps fall in an earlier second than the mark
    // (the simulator's clock is whole seconds: move it on, no sleeping).
    world.admin.advance_clock(1).unwrap();
    let first = world.incremental_nightly(false);
    match &first.coverage {
        RunCoverage::Full {
            instead_of_incremental: Some(why),
        } => assert!(why.contains("no earlier completed nightly run"), "{why}"),
        other => panic!("the first run must be full, was {other:?}"),
    }
    assert!(first.reconciliation.discrepancies.is_empty());
    let managed = first.reconciliation.accounting.genesis.records_in;

    let expected = inject_drift(&world);
    let full_dry = world.nightly(true);
    let incremental_dry = world.incremental_nightly(true);
    assert_eq!(
        incremental_dry.reconciliation.discrepancies, full_dry.reconciliation.discrepancies,
        "{backend:?}: the incremental run judges exactly like a full run"
    );
    let examined = fees_examined(&incremental_dry);
    assert!(
        examined >= 15 && (examined as u64) * 5 < managed,
        "{backend:?}: {examined} fees examined of {managed} Genesis records"
    );

    let applied = world.incremental_nightly(false);
    assert_eq!(
        counts_by_kind(&applied.reconciliation),
        expected,
        "{backend:?}"
    );
    assert_eq!(applied.failed(), 0);
    assert_eq!(applied.remaining_after_apply, Some(0), "one run converges");
    let open = reviews(&applied);

    let next = world.incremental_nightly(false);
    assert!(next.reconciliation.plan().is_empty(), "nothing left to do");
    assert_eq!(reviews(&next), open, "open items are carried forward");
    assert!(
        fees_examined(&next) < examined,
        "only what changed or stays open"
    );
    match &next.coverage {
        RunCoverage::Incremental { changes, .. } => assert!(
            changes.cp_own_pushes_skipped > 0,
            "{backend:?}: the fees the last run pushed, unchanged since, are not examined again: {changes:?}"
        ),
        other => panic!("expected an incremental run, got {other:?}"),
    }

    // A posted Community Pass payment deleted in Genesis by hand: the
    // trigger records it, and the next incremental run posts it again.
    world.sql(
        "DELETE FROM fee_transactions WHERE id = (SELECT MIN(id) FROM fee_transactions \
         WHERE source = 'community_pass' AND kind = 'payment')",
    );
    lose_pending_pushes(&world);
    let reposted = world.incremental_nightly(false);
    let plan = reposted.reconciliation.plan();
    assert!(
        matches!(plan.as_slice(), [Action::PostVendorTxn { .. }]),
        "{backend:?}: {plan:?}"
    );
    assert_eq!(reposted.failed(), 0);
    assert_eq!(reviews(&reposted), open);

    let full = world.nightly(false);
    assert!(full.reconciliation.plan().is_empty(), "a full run agrees");
    assert_eq!(reviews(&full), open);
    assert_eq!(
        postings_differ_from_the_vendor_log(&world),
        Vec::<String>::new()
    );
}

#[test]
fn sqlite_incremental_judges_like_a_full_run() {
    incremental_judges_like_a_full_run(Backend::Sqlite);
}

#[test]
fn postgres_incremental_judges_like_a_full_run() {
    incremental_judges_like_a_full_run(Backend::Postgres);
}

#[test]
fn incremental_runs_in_full_after_the_policy_changed() {
    let world = World::new(Backend::Sqlite, 40, 5);
    world.nightly(false);
    let mut setup = world.setup.clone();
    setup.excluded_schools.insert("NO-SUCH-SCHOOL".to_string());
    let mut conn = world.conn();
    let run_id = world.run_id(&mut conn, "nightly_sync");
    let options = cpsync::sync::nightly::NightlyOptions {
        incremental: true,
        dry_run: true,
        ..Default::default()
    };
    let result = cpsync::sync::nightly::run(
        &mut conn,
        &world.portal,
        &setup,
        &options,
        run_id,
        &cpsync::sync::utc_now,
    )
    .unwrap();
    match result.coverage {
        RunCoverage::Full {
            instead_of_incremental: Some(why),
        } => assert!(why.contains("sending policy"), "{why}"),
        other => panic!("expected a full run, got {other:?}"),
    }
    // Dry runs leave no mark: each incremental run starts from the full one.
    let dry = world.incremental_nightly(true);
    let after_dry = world.incremental_nightly(true);
    assert_eq!(fees_examined(&dry), fees_examined(&after_dry));

    // A full run comes round once the last one is old enough.
    let weekly = cpsync::sync::nightly::NightlyOptions {
        incremental: true,
        full_run_every: chrono::Duration::zero(),
        vendor_clock_overlap: chrono::Duration::zero(),
        ..Default::default()
    };
    match world.nightly_with(&weekly).coverage {
        RunCoverage::Full {
            instead_of_incremental: Some(why),
        } => assert!(why.contains("last full run"), "{why}"),
        other => panic!("expected a full run, got {other:?}"),
    }
}

/// PostgreSQL: a Genesis transaction that took an outbox id before the mark
/// and committed after it is still read by the next incremental run.
#[test]
fn postgres_incremental_reads_a_change_committed_after_the_mark() {
    let world = World::new(Backend::Postgres, 40, 9);
    // The setup pushes' timestamps fall in an earlier second than the mark
    // (the simulator's clock is whole seconds: move it on, no sleeping).
    world.admin.advance_clock(1).unwrap();
    world.nightly(false);
    let fees = world.unpaid_fees();
    let (slow, quick) = (fees[0].id, fees[1].id);
    let mut open_transaction = world.conn();
    open_transaction
        .batch_execute(&format!(
            "BEGIN; UPDATE student_fees SET amount_cents = amount_cents + 700 WHERE id = {slow}"
        ))
        .unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 300 WHERE id = {quick}"
    ));
    lose_pending_pushes(&world);
    let before_commit = world.incremental_nightly(false);
    assert_eq!(
        fees_judged(&before_commit),
        vec![Some(quick)],
        "only the committed change is seen"
    );
    open_transaction.batch_execute("COMMIT").unwrap();
    lose_pending_pushes(&world);
    let after_commit = world.incremental_nightly(false);
    assert_eq!(
        fees_judged(&after_commit),
        vec![Some(slow)],
        "the late commit is read from the gap"
    );
    assert_eq!(after_commit.failed(), 0);
}

/// A review row on a fee the same run corrected shows the values found on
/// re-reading it afterwards (issue 16): an overpaid fee whose office
/// payment's push was lost reads, after the run pushed it, the credit
/// Community Pass now holds, not the one it held before.
fn review_rows_show_values_after_corrections(backend: Backend) {
    let world = World::new(backend, 30, 77);
    let fee = world.unpaid_fees().remove(0);
    world.send_pending();
    let over = fee.amount + Money::from_cents(500);
    world.admin.pay(fee.id, Some(over)).unwrap();
    world.nightly(false);
    world.sql(&format!(
            "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at, note) \
             VALUES ({}, 'payment', 300, 'cash', 'genesis', '2026-11-20 10:00:00', 'Paid at the office')",
            fee.id
        ),
    );
    lose_pending_pushes(&world);
    let result = world.nightly(false);
    let credit_row = result
        .reconciliation
        .discrepancies
        .iter()
        .find(|d| {
            d.fee_id == Some(fee.id)
                && d.kind == cpsync::reconcile::DiscrepancyKind::OverpaymentCredit
        })
        .unwrap_or_else(|| {
            panic!(
                "{backend:?}: no overpayment row: {:?}",
                result.reconciliation.discrepancies
            )
        });
    let pushed = result
        .reconciliation
        .plan()
        .iter()
        .any(|a| matches!(a, Action::PushFee { fee_id } if *fee_id == fee.id));
    assert!(
        pushed,
        "{backend:?}: the office payment is pushed by the run"
    );
    let shown = world.portal.fee(fee.id).unwrap();
    assert_eq!(shown.balance, -Money::from_cents(800), "{backend:?}");
    assert_eq!(
        credit_row.cp_value.as_deref(),
        Some("balance -8.00"),
        "{backend:?}: the row shows Community Pass after the run's push"
    );
    assert_eq!(credit_row.genesis_value.as_deref(), Some("credit 8.00"));
    assert_eq!(credit_row.at_stake, Money::from_cents(800));
}

#[test]
fn review_rows_show_the_values_after_the_runs_own_corrections() {
    for backend in common::BACKENDS {
        review_rows_show_values_after_corrections(backend);
    }
}

/// A correction that fails (Genesis refuses the posting) is counted as
/// failed with its error, never as corrected, and the run fails (exit 1 at
/// the command line); the next night, with Genesis writable again, posts it
/// once and says corrected.
fn failed_correction_is_retried(backend: Backend) {
    let world = World::new(backend, 30, 91);
    let fee = world.unpaid_fees().remove(0);
    world.send_pending();
    let payment = world.admin.pay(fee.id, None).unwrap();
    let (refuse, allow) = match backend {
        Backend::Sqlite => (
            "CREATE TRIGGER refuse_postings BEFORE INSERT ON fee_transactions \
             WHEN NEW.source = 'community_pass' \
             BEGIN SELECT RAISE(ABORT, 'postings refused by the test'); END;",
            "DROP TRIGGER refuse_postings;",
        ),
        Backend::Postgres => (
            "CREATE FUNCTION refuse_postings() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'postings refused by the test'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_postings BEFORE INSERT ON fee_transactions FOR EACH ROW \
             WHEN (NEW.source = 'community_pass') EXECUTE FUNCTION refuse_postings();",
            "DROP TRIGGER refuse_postings ON fee_transactions; DROP FUNCTION refuse_postings();",
        ),
    };
    world.sql(refuse);
    let first = world.nightly(false);
    let failed: Vec<_> = first
        .reconciliation
        .discrepancies
        .iter()
        .zip(&first.outcomes)
        .filter(|(_, (outcome, _))| *outcome == cpsync::db::discrepancies::Outcome::Failed)
        .collect();
    assert!(
        failed.iter().any(|(d, (_, error))| d.fee_id == Some(fee.id)
            && error
                .as_deref()
                .unwrap_or("")
                .contains("postings refused by the test")),
        "{backend:?}: the posting failed with its reason: {:?}",
        first.outcomes
    );
    assert!(first.failed() >= 1, "{backend:?}");
    assert!(
        postings_in_genesis_of(&world, &payment.id.0) == 0,
        "{backend:?}: nothing was posted"
    );
    // A pull while Genesis refuses: the record is held with the reason,
    // and the pull goes on (it never wedges get-payments).
    let mut conn = world.conn();
    let run = world.run_id(&mut conn, "get_payments");
    let pulled = cpsync::sync::pull::get_payments(
        &mut conn,
        &world.portal,
        cpsync::sync::pull::PullScope::Cursor,
        run,
        &cpsync::sync::utc_now,
    )
    .unwrap_or_else(|e| panic!("{backend:?}: the pull goes on: {e}"));
    assert!(
        pulled
            .problems
            .iter()
            .any(|p| p.contains(&payment.id.0) && p.contains("Genesis refused the posting")),
        "{backend:?}: {pulled:?}"
    );
    assert_eq!(postings_in_genesis_of(&world, &payment.id.0), 0);
    world.sql(allow);
    let second = world.nightly(false);
    assert_eq!(second.failed(), 0, "{backend:?}: {:?}", second.outcomes);
    assert_eq!(
        postings_in_genesis_of(&world, &payment.id.0),
        1,
        "{backend:?}"
    );
    assert!(
        second.corrected() >= 1,
        "{backend:?}: the retry is a correction"
    );
    let third = world.nightly(false);
    assert_eq!(
        third.corrected() + third.failed(),
        0,
        "{backend:?}: nothing left"
    );
}

fn postings_in_genesis_of(world: &World, vendor_id: &str) -> i64 {
    use cpsync::db::schema::fee_transactions::dsl::*;
    fee_transactions
        .filter(vendor_txn_id.eq(Some(vendor_id.to_string())))
        .count()
        .get_result(&mut world.conn())
        .unwrap()
}

#[test]
fn a_failed_correction_fails_the_run_and_is_retried_next_night() {
    for backend in common::BACKENDS {
        failed_correction_is_retried(backend);
    }
}
