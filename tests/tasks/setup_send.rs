//! Setup is taken in the handbook's order only, the cutoff last; fees dated
//! before the cutoff, in a deselected category or an excluded school never
//! reach Community Pass, whether they existed at setup or came later by SQL.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use cpsync::domain::FeeId;
use cpsync::portal::all_fees;

use super::common::Backend;
use super::{insert_fee_sql, Env, CUTOFF};

fn setup_order_and_eligibility(backend: Backend) {
    let env = Env::new(backend);
    env.seed(40);
    env.refused(&["setup", "cutoff", CUTOFF], "cpsync setup api-key");
    env.refused(&["setup", "test-pull"], "cpsync setup api-key");
    env.refused(&["setup", "categories", "--all"], "cpsync setup api-key");
    env.refused(&["send-fees"], "cpsync setup api-key");
    env.store_key();
    env.refused(&["setup", "test-push"], "cpsync setup categories");
    env.refused(&["setup", "cutoff", CUTOFF], "cpsync setup categories");

    let fees = env.fees();
    let cutoff = NaiveDate::parse_from_str(CUTOFF, "%Y-%m-%d").unwrap();
    let excluded_category = fees[0].category.clone();
    let excluded_school = fees
        .iter()
        .map(|f| f.school.clone())
        .find(|s| *s != fees[0].school)
        .expect("the sample district has several schools");
    env.ok(&["setup", "categories", "--exclude", &excluded_category]);
    env.refused(&["setup", "cutoff", CUTOFF], "cpsync setup test-pull");
    env.ok(&["setup", "test-pull"]);
    env.refused(&["setup", "cutoff", CUTOFF], "cpsync setup test-push");
    env.ok(&["setup", "test-push"]);
    env.ok(&["setup", "schools", "--exclude", &excluded_school]);
    env.ok(&["setup", "cutoff", CUTOFF]);
    env.ok(&["setup", "tasks", "enable", "send_fees"]);
    env.ok(&["send-fees"]);

    // Later fees by plain SQL: one eligible, one of each ineligible kind.
    let eligible = fees
        .iter()
        .find(|f| f.category != excluded_category && f.school != excluded_school)
        .expect("an eligible template");
    let (cat, school) = (&eligible.category, &eligible.school);
    insert_fee_sql(&env, 990_001, eligible, "2026-10-01", cat, school);
    insert_fee_sql(&env, 990_002, eligible, "2026-07-31", cat, school);
    insert_fee_sql(
        &env,
        990_003,
        eligible,
        "2026-10-01",
        &excluded_category,
        school,
    );
    insert_fee_sql(&env, 990_004, eligible, "2026-10-01", cat, &excluded_school);
    env.ok(&["send-fees"]);

    let all = env.fees();
    assert!(all.iter().any(|f| f.fee_date < cutoff && f.id.0 < 990_000));
    assert!(all
        .iter()
        .any(|f| f.category == excluded_category && f.id.0 < 990_000));
    assert!(all
        .iter()
        .any(|f| f.school == excluded_school && f.id.0 < 990_000));
    let expected: BTreeSet<FeeId> = all
        .iter()
        .filter(|f| {
            f.fee_date >= cutoff && f.category != excluded_category && f.school != excluded_school
        })
        .map(|f| f.id)
        .collect();
    let in_cp = all_fees(&env.portal, None).expect("listing");
    let sent: BTreeSet<FeeId> = in_cp.iter().map(|f| f.genesis_fee_id).collect();
    assert_eq!(
        sent, expected,
        "exactly the eligible fees are in Community Pass"
    );
    assert!(sent.contains(&FeeId(990_001)));
    for never in [990_002, 990_003, 990_004] {
        assert!(
            !sent.contains(&FeeId(never)),
            "fee {never} must never be sent"
        );
    }
    for fee in &in_cp {
        assert!(fee.fee_date >= cutoff, "{fee:?}");
        assert_ne!(fee.category, excluded_category);
        assert_ne!(fee.school, excluded_school);
    }
    assert_eq!(env.admin.summary().unwrap().fees as usize, expected.len());
    // Judged apart from cpsync: Community Pass read raw, field by field.
    let compared = super::common::assert_genesis_fees_reached_community_pass(
        &mut env.conn(),
        &env.sim.base_url(),
        super::API_KEY,
        CUTOFF,
        &|category, school| category != excluded_category && school != excluded_school,
    );
    assert_eq!(compared, expected.len());
}

#[test]
fn sqlite_setup_order_and_only_eligible_fees_sent() {
    setup_order_and_eligibility(Backend::Sqlite);
}

#[test]
fn postgres_setup_order_and_only_eligible_fees_sent() {
    setup_order_and_eligibility(Backend::Postgres);
}
