//! The preflight finds exactly the unmanaged unpaid fees and the likely
//! duplicates seeded in Community Pass, writes private CSV and HTML files,
//! and says by its exit code whether the district is clear to enable.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::NaiveDate;
use cpsync::domain::{GenesisFee, StudentId, UnmanagedFee};
use cpsync::money::Money;
use cpsync::sim::model::{ActionOutcome, FeeRef};
use cpsync::sim::ParentAction;

use super::common::Backend;
use super::{Env, CUTOFF};

fn add_unmanaged(env: &Env, student: StudentId, description: &str, amount: Money) -> UnmanagedFee {
    let outcome = env
        .admin
        .act(vec![ParentAction::UnmanagedFee {
            patron_id: student.to_string(),
            student_id: Some(student),
            description: description.to_string(),
            amount,
            created_at: None,
        }])
        .unwrap()
        .pop();
    match outcome {
        Some(ActionOutcome::UnmanagedFee(fee)) => fee,
        other => panic!("expected an unmanaged fee, got {other:?}"),
    }
}

fn preflight_json(env: &Env, out: &Path) -> (i32, serde_json::Value) {
    let (code, stdout, stderr) = env.run(&["preflight", "--json", "--out", out.to_str().unwrap()]);
    assert!(code == 0 || code == 3, "preflight failed: {stderr}");
    (code, serde_json::from_str(&stdout).expect("preflight JSON"))
}

fn same_key(a: &GenesisFee, student: StudentId, amount: Money, description: &str) -> bool {
    a.student_id == student
        && a.amount == amount
        && a.description.trim().to_lowercase() == description.trim().to_lowercase()
}

fn finds_what_was_seeded(backend: Backend) {
    let env = Env::new(backend);
    env.seed(30);
    env.set_up();
    env.ok(&["send-fees"]);
    let out = env.dir().join("reports");
    let (code, clean) = preflight_json(&env, &out);
    assert_eq!(code, 0, "nothing unmanaged yet: {clean}");
    assert_eq!(clean["clear_to_enable"], true);

    let cutoff = NaiveDate::parse_from_str(CUTOFF, "%Y-%m-%d").unwrap();
    let fees = env.fees();
    let eligible: Vec<&GenesisFee> = fees.iter().filter(|f| f.fee_date >= cutoff).collect();
    let twin_of = eligible[0];
    // 1. An unmanaged copy of a fee the integration sent.
    let copy = env.admin.duplicate(twin_of.id).unwrap();
    // 2. Two identical unmanaged fees of another student.
    let student = eligible
        .iter()
        .map(|f| f.student_id)
        .find(|s| *s != twin_of.student_id)
        .unwrap();
    let band_a = add_unmanaged(
        &env,
        student,
        "Preflight band trip deposit",
        Money::from_cents(4_000),
    );
    let band_b = add_unmanaged(
        &env,
        student,
        "preflight band  trip DEPOSIT",
        Money::from_cents(4_000),
    );
    // 3. A unique unpaid one, and one paid in full (asks nothing).
    let locker = add_unmanaged(
        &env,
        student,
        "Preflight locker rental",
        Money::from_cents(700),
    );
    let paid = add_unmanaged(
        &env,
        student,
        "Preflight club shirt",
        Money::from_cents(1_500),
    );
    env.admin
        .act(vec![ParentAction::Payment {
            fee: FeeRef::Vendor(paid.vendor_fee_id.clone()),
            amount: None,
            method: None,
            occurred_at: None,
        }])
        .unwrap();
    // 4. A twin of a fee dated before the cutoff: never sent, so no duplicate.
    let early = fees
        .iter()
        .find(|f| {
            f.fee_date < cutoff
                && !eligible
                    .iter()
                    .any(|e| same_key(e, f.student_id, f.amount, &f.description))
        })
        .expect("a fee before the cutoff");
    let early_twin = add_unmanaged(&env, early.student_id, &early.description, early.amount);

    let (code, found) = preflight_json(&env, &out);
    assert_eq!(code, 3, "not clear to enable: {found}");
    assert_eq!(found["clear_to_enable"], false);
    let unpaid: BTreeSet<String> = found["findings"]["unmanaged_unpaid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["vendor_fee_id"].as_str().unwrap().to_string())
        .collect();
    let expected_unpaid: BTreeSet<String> = [&copy, &band_a, &band_b, &locker, &early_twin]
        .iter()
        .map(|f| f.vendor_fee_id.clone())
        .collect();
    assert_eq!(unpaid, expected_unpaid);

    let groups: BTreeSet<(Vec<String>, Vec<i64>)> = found["findings"]["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let unmanaged = g["unmanaged"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let genesis = g["genesis"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            (unmanaged, genesis)
        })
        .collect();
    let copy_genesis: Vec<i64> = eligible
        .iter()
        .filter(|f| same_key(f, twin_of.student_id, twin_of.amount, &twin_of.description))
        .map(|f| f.id.0)
        .collect();
    assert!(copy_genesis.contains(&twin_of.id.0));
    let expected_groups: BTreeSet<(Vec<String>, Vec<i64>)> = [
        (vec![copy.vendor_fee_id.clone()], copy_genesis),
        (
            vec![band_a.vendor_fee_id.clone(), band_b.vendor_fee_id.clone()],
            vec![],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(groups, expected_groups);

    for key in ["csv", "html"] {
        let path = Path::new(found[key].as_str().unwrap());
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is owner-only", path.display());
    }
    let csv = std::fs::read_to_string(found["csv"].as_str().unwrap()).unwrap();
    let duplicate_rows: usize = expected_groups.iter().map(|(u, g)| u.len() + g.len()).sum();
    assert_eq!(
        csv.lines().count(),
        1 + expected_unpaid.len() + duplicate_rows,
        "{csv}"
    );
    let html = std::fs::read_to_string(found["html"].as_str().unwrap()).unwrap();
    assert!(html.contains(&locker.vendor_fee_id) && html.contains("Not clear to enable"));
}

#[test]
fn sqlite_preflight_finds_exactly_the_seeded_unmanaged_fees_and_duplicates() {
    finds_what_was_seeded(Backend::Sqlite);
}

#[test]
fn postgres_preflight_finds_exactly_the_seeded_unmanaged_fees_and_duplicates() {
    finds_what_was_seeded(Backend::Postgres);
}
