//! `cpsync portal-view` locks a parent out exactly when the rules say so:
//! an outstanding fine past its due date (or any, without the grace
//! setting), never a sibling's fine the parent has no portal access to,
//! never a fine paid in full, and a Community Pass balance for fees Genesis
//! does not hold only when the district chose to lock on it.

use chrono::NaiveDate;
use cpsync::db::genesis;
use cpsync::domain::{
    FeeId, FeeStatus, GenesisFee, Guardian, GuardianId, GuardianLink, NewGenesisTxn, Student,
    StudentId, StudentStatus, TxnKind, TxnSource,
};
use cpsync::money::Money;
use cpsync::sim::ParentAction;

use super::common::Backend;
use super::Env;

const PARENT: GuardianId = GuardianId(9_000_001);
const CHILD: StudentId = StudentId(900_001);
/// A sibling the parent has no portal access to.
const SIBLING: StudentId = StudentId(900_002);

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, d).unwrap()
}

fn student(id: StudentId, school: &str) -> Student {
    Student {
        id,
        first_name: "Robin".into(),
        last_name: format!("Family{}", id.0),
        grade: "05".into(),
        school: school.into(),
        status: StudentStatus::Active,
        birth_date: NaiveDate::from_ymd_opt(2015, 3, 1).unwrap(),
        email: None,
    }
}

fn fee(id: i64, student: StudentId, template: &GenesisFee, due: NaiveDate) -> GenesisFee {
    GenesisFee {
        id: FeeId(id),
        student_id: student,
        description: format!("Portal fee {id}"),
        amount: Money::from_cents(2_000),
        fee_date: day(1),
        due_date: Some(due),
        status: FeeStatus::Open,
        created_at: day(1).and_hms_opt(8, 0, 0).unwrap(),
        modified_at: day(1).and_hms_opt(8, 0, 0).unwrap(),
        ..template.clone()
    }
}

fn add_family(env: &Env) -> GenesisFee {
    let template = env.fees().remove(0);
    let mut conn = env.conn();
    genesis::insert_students(
        &mut conn,
        &[
            student(CHILD, &template.school),
            student(SIBLING, &template.school),
        ],
    )
    .unwrap();
    genesis::insert_guardians(
        &mut conn,
        &[Guardian {
            id: PARENT,
            first_name: "Sam".into(),
            last_name: "Family".into(),
            email: None,
            phone: None,
            portal_username: Some("sam.family.portal".into()),
        }],
    )
    .unwrap();
    let link = |student, portal_access| GuardianLink {
        student_id: student,
        guardian_id: PARENT,
        relationship: "parent".into(),
        household: 1,
        portal_access,
        billing_contact: true,
    };
    genesis::insert_guardian_links(&mut conn, &[link(CHILD, true), link(SIBLING, false)]).unwrap();
    template
}

/// (locked out, reasons, Community Pass balance shown) as of `today`.
fn view(env: &Env, today: NaiveDate) -> (bool, Vec<String>, Option<String>) {
    let out = env.ok(&[
        "portal-view",
        "--guardian",
        &PARENT.to_string(),
        "--json",
        "--today",
        &today.to_string(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("portal-view JSON");
    let students: Vec<i64> = json["students"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["student_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        students,
        [CHILD.0],
        "only students with portal access are shown"
    );
    let reasons = json["lock_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let cp = json["community_pass_balance"]["amount"]
        .as_str()
        .map(String::from);
    (json["locked_out"].as_bool().unwrap(), reasons, cp)
}

fn assert_open(env: &Env, today: NaiveDate, why: &str) {
    let (locked, reasons, _) = view(env, today);
    assert!(!locked, "{why}: must stay open, locked for {reasons:?}");
}

fn assert_locked(env: &Env, today: NaiveDate, why: &str, reason_has: &str) {
    let (locked, reasons, _) = view(env, today);
    assert!(locked, "{why}: must lock");
    assert!(
        reasons.iter().any(|r| r.contains(reason_has)),
        "{why}: reasons {reasons:?} must mention {reason_has:?}"
    );
}

fn locks_out_by_the_rules(backend: Backend) {
    let env = Env::new(backend);
    env.seed(10);
    env.set_up();
    let template = add_family(&env);
    assert_open(&env, day(15), "no fees");

    let mut conn = env.conn();
    genesis::insert_fees(&mut conn, &[fee(980_001, CHILD, &template, day(20))]).unwrap();
    assert_open(&env, day(15), "grace: the fine is not due yet");
    assert_locked(&env, day(21), "past its due date", "Portal fee 980001");
    env.ok(&["setup", "portal", "--grace-until-due", "false"]);
    assert_locked(
        &env,
        day(15),
        "without grace any outstanding fine",
        "Portal fee 980001",
    );
    env.ok(&["setup", "portal", "--grace-until-due", "true"]);

    genesis::insert_fees(&mut conn, &[fee(980_002, SIBLING, &template, day(2))]).unwrap();
    assert_open(&env, day(15), "a sibling's fine the parent cannot see");

    genesis::insert_txns(
        &mut conn,
        &[NewGenesisTxn {
            fee_id: FeeId(980_001),
            kind: TxnKind::Payment,
            amount: Money::from_cents(1_500),
            method: "cash".into(),
            source: TxnSource::Genesis,
            vendor_txn_id: None,
            posted_at: day(16).and_hms_opt(9, 0, 0).unwrap(),
            note: None,
        }],
    )
    .unwrap();
    assert_locked(
        &env,
        day(21),
        "a partial payment leaves $5.00 owing",
        "$5.00",
    );
    genesis::insert_txns(
        &mut conn,
        &[NewGenesisTxn {
            fee_id: FeeId(980_001),
            kind: TxnKind::Payment,
            amount: Money::from_cents(500),
            method: "cash".into(),
            source: TxnSource::Genesis,
            vendor_txn_id: None,
            posted_at: day(17).and_hms_opt(9, 0, 0).unwrap(),
            note: None,
        }],
    )
    .unwrap();
    assert_open(&env, day(21), "paid in full");

    // A Community Pass fee Genesis never created, on the child's account.
    env.admin
        .act(vec![ParentAction::UnmanagedFee {
            patron_id: CHILD.to_string(),
            student_id: Some(CHILD),
            description: "Summer camp".into(),
            amount: Money::from_cents(4_500),
            created_at: None,
        }])
        .unwrap();
    env.ok(&["get-balances"]);
    let (locked, _, shown) = view(&env, day(21));
    assert!(
        !locked,
        "the district did not choose to lock on the balance"
    );
    assert_eq!(shown.as_deref(), Some("45.00"), "the balance is shown");
    env.ok(&["setup", "portal", "--lock-out-on-balance", "true"]);
    assert_locked(
        &env,
        day(21),
        "lock on the Community Pass balance",
        "Community Pass balance of $45.00",
    );
    env.ok(&["setup", "portal", "--show-balance", "false"]);
    let (_, _, shown) = view(&env, day(21));
    assert_eq!(
        shown, None,
        "the balance is hidden when the district says so"
    );
}

#[test]
fn sqlite_portal_view_locks_out_exactly_by_the_rules() {
    locks_out_by_the_rules(Backend::Sqlite);
}

#[test]
fn postgres_portal_view_locks_out_exactly_by_the_rules() {
    locks_out_by_the_rules(Backend::Postgres);
}
