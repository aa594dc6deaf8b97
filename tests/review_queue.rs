//! The review queue with memory (issue 16), on both backends, against the
//! simulator: an item keeps its id and first-seen across runs, closes
//! itself when its cause goes away (only in a run that examined it), stays
//! closed after `review resolve`; a credit on account both sides agree on
//! is not a discrepancy until it is older than the configured age; the
//! `review` commands list, show, acknowledge and resolve.

mod common;

use common::world::World;
use common::{cpsync, Backend};
use cpsync::db::discrepancies::Outcome;
use cpsync::db::review_items::{self, ListFilter, ReviewItem};
use cpsync::domain::FeeId;
use cpsync::money::Money;
use cpsync::reconcile::{DiscrepancyKind, Scope};
use cpsync::review::{ItemState, PersonAction};
use cpsync::sync::nightly::{self, NightlyOptions, NightlyResult};
use cpsync::sync::utc_now;

/// A nightly run whose clock reads `days_later` days from now.
fn nightly_at(world: &World, options: &NightlyOptions, days_later: i64) -> NightlyResult {
    let mut conn = world.conn();
    let run_id = world.run_id(&mut conn, "nightly_sync");
    let clock = move || utc_now() + chrono::Duration::days(days_later);
    nightly::run(
        &mut conn,
        &world.portal,
        &world.setup,
        options,
        run_id,
        &clock,
    )
    .unwrap()
}

fn full(dry_run: bool) -> NightlyOptions {
    NightlyOptions {
        dry_run,
        ..NightlyOptions::default()
    }
}

fn all_items(world: &World) -> Vec<ReviewItem> {
    let filter = ListFilter {
        all: true,
        ..ListFilter::default()
    };
    review_items::list(&mut world.conn(), &filter).unwrap()
}

fn item_of(world: &World, fee: FeeId, kind: DiscrepancyKind) -> ReviewItem {
    all_items(world)
        .into_iter()
        .find(|i| i.fee_id == Some(fee.0) && i.kind == kind.as_str())
        .unwrap_or_else(|| panic!("no item for fee {fee} {kind}"))
}

fn outcome_of(result: &NightlyResult, fee: FeeId, kind: DiscrepancyKind) -> Option<Outcome> {
    result
        .reconciliation
        .discrepancies
        .iter()
        .zip(&result.outcomes)
        .find(|(d, _)| d.fee_id == Some(fee) && d.kind == kind)
        .map(|(_, (o, _))| *o)
}

fn queue_keeps_its_memory(backend: Backend) {
    let world = World::new(backend, 60, 16);
    assert!(world.nightly(false).reconciliation.discrepancies.is_empty());
    let fees = world.unpaid_fees();
    assert!(fees.len() > 5);
    let (overpaid, edited, voided) = (&fees[0], &fees[1], &fees[2]);
    world
        .admin
        .pay(overpaid.id, Some(overpaid.amount + Money::from_cents(500)))
        .unwrap();
    world.admin.pay(edited.id, None).unwrap();
    world.admin.pay(voided.id, None).unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 1000 WHERE id = {}",
        edited.id
    ));
    world.sql(&format!(
        "UPDATE student_fees SET status = 'void' WHERE id = {}",
        voided.id
    ));

    // Night 1: two items need review; the credit is a credit, not one of them.
    let first = nightly_at(&world, &full(false), 0);
    use DiscrepancyKind as K;
    assert_eq!(
        outcome_of(&first, overpaid.id, K::OverpaymentCredit),
        Some(Outcome::CreditOnAccount),
        "{backend:?}: both sides agree once the payment is posted"
    );
    assert_eq!(first.needs_review(), 2, "{backend:?}");
    assert_eq!(first.credits(), 1);
    let edited_item = item_of(&world, edited.id, K::AmountEditedAfterPayment);
    let voided_item = item_of(&world, voided.id, K::FeeVoidedAfterPayment);
    let credit_item = item_of(&world, overpaid.id, K::OverpaymentCredit);
    assert_eq!(edited_item.item_state(), ItemState::New);
    assert_eq!(credit_item.at_stake(), Money::from_cents(500));
    assert_eq!(edited_item.at_stake(), Money::from_cents(1000));

    // Night 2: the same items, same ids and first-seen, now "still open".
    let second = nightly_at(&world, &full(false), 1);
    assert_eq!(second.needs_review(), 2);
    let again = item_of(&world, edited.id, K::AmountEditedAfterPayment);
    assert_eq!(again.id, edited_item.id);
    assert_eq!(again.first_seen_run, edited_item.first_seen_run);
    assert_eq!(again.first_seen_at, edited_item.first_seen_at);
    assert_eq!(again.item_state(), ItemState::Open);
    assert_eq!(again.last_seen_run, second_run_id(&world));
    assert_eq!(
        review_items::list(
            &mut world.conn(),
            &ListFilter {
                new_only: true,
                ..ListFilter::default()
            }
        )
        .unwrap()
        .len(),
        0,
        "nothing is new on the second night"
    );

    // A person resolves the voided fee; it stays closed while still found.
    review_items::person_acts(
        &mut world.conn(),
        voided_item.id,
        PersonAction::Resolve,
        "jsmith",
        "refund approved by the principal",
        utc_now(),
    )
    .unwrap();

    // The office restores the edited amount: the cause goes away. Dry and
    // scoped runs do not close it; the next whole-district run does.
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents - 1000 WHERE id = {}",
        edited.id
    ));
    nightly_at(&world, &full(true), 2);
    let other_student = fees
        .iter()
        .find(|f| f.student_id != edited.student_id)
        .unwrap()
        .student_id;
    let scoped = NightlyOptions {
        scope: Scope {
            student: Some(other_student),
            ..Scope::everything()
        },
        ..NightlyOptions::default()
    };
    nightly_at(&world, &scoped, 2);
    assert_eq!(
        item_of(&world, edited.id, K::AmountEditedAfterPayment).item_state(),
        ItemState::Open,
        "{backend:?}: dry and scoped runs leave the queue alone"
    );
    let third = nightly_at(&world, &full(false), 2);
    let closed = item_of(&world, edited.id, K::AmountEditedAfterPayment);
    assert_eq!(closed.item_state(), ItemState::ResolvedAutomatically);
    assert_eq!(closed.resolved_run, Some(second_run_id(&world)));
    assert!(third.queue.resolved_by_run >= 1);
    let resolved = item_of(&world, voided.id, K::FeeVoidedAfterPayment);
    assert_eq!(resolved.item_state(), ItemState::ResolvedByPerson);
    assert_eq!(resolved.resolved_by.as_deref(), Some("jsmith"));
    assert_eq!(resolved.id, voided_item.id);

    // Forty days on, the credit is older than the 30-day default: review.
    let late = nightly_at(&world, &full(false), 40);
    assert_eq!(
        outcome_of(&late, overpaid.id, K::OverpaymentCredit),
        Some(Outcome::NeedsReview),
        "{backend:?}"
    );
    assert_eq!(
        item_of(&world, overpaid.id, K::OverpaymentCredit).id,
        credit_item.id
    );
}

/// The id of the latest nightly run.
fn second_run_id(world: &World) -> i64 {
    cpsync::db::runs::recent_runs(&mut world.conn(), Some("nightly_sync"), 1).unwrap()[0].id
}

#[test]
fn sqlite_review_queue_keeps_its_memory() {
    queue_keeps_its_memory(Backend::Sqlite);
}

#[test]
fn postgres_review_queue_keeps_its_memory() {
    queue_keeps_its_memory(Backend::Postgres);
}

fn review_commands(backend: Backend) {
    let world = World::new(backend, 40, 17);
    let fees = world.unpaid_fees();
    world.admin.pay(fees[0].id, None).unwrap();
    world.sql(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + 700 WHERE id = {}",
        fees[0].id
    ));
    world.nightly(false);
    let url = world.db.url_text.as_str();
    let (code, out, err) = cpsync(&["--database-url", url, "review", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let items: serde_json::Value = serde_json::from_str(&out).unwrap();
    let item = &items.as_array().unwrap()[0];
    assert_eq!(item["state"], "new");
    assert_eq!(item["at_stake"], "7.00");
    let id = item["id"].as_i64().unwrap().to_string();

    let (code, out, _) = cpsync(&["--database-url", url, "review", "list", "--new"]);
    assert_eq!(code, 0);
    assert!(out.contains("amount_edited_after_payment"), "{out}");
    let (code, _, err) = cpsync(&["--database-url", url, "review", "list", "--kind", "nope"]);
    assert_eq!(code, 2, "{err}");

    let (code, _, err) = cpsync(&[
        "--database-url",
        url,
        "review",
        "ack",
        &id,
        "--note",
        "calling the family",
        "--by",
        "ana",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cpsync(&[
        "--database-url",
        url,
        "review",
        "ack",
        &id,
        "--note",
        "again",
        "--by",
        "ana",
    ]);
    assert_eq!(code, 1, "acknowledging twice is refused: {err}");
    let (code, out, err) = cpsync(&[
        "--database-url",
        url,
        "review",
        "resolve",
        &id,
        "--note",
        "bill the $7 as a new fee",
        "--by",
        "bo",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resolved by a person"), "{out}");
    let (code, out, _) = cpsync(&["--database-url", url, "review", "show", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("acknowledged   by ana"), "{out}");
    assert!(out.contains("resolved       by bo"), "{out}");
    let (code, _, _) = cpsync(&["--database-url", url, "review", "show", "999999"]);
    assert_eq!(code, 1);
    let (code, out, _) = cpsync(&["--database-url", url, "review", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("no review items waiting"), "{out}");
}

#[test]
fn sqlite_review_commands() {
    review_commands(Backend::Sqlite);
}

#[test]
fn postgres_review_commands() {
    review_commands(Backend::Postgres);
}
