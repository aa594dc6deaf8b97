//! The three Get Payments triggers — the cursor (nightly), one student
//! (fee page opened) and one guardian (parent logs in) — run at the same
//! time, round after round, over the same payments, refunds and reversals:
//! every Community Pass transaction is posted exactly once, with one audit
//! row each.

use std::collections::BTreeMap;

use cpsync::db::genesis;
use cpsync::db::schema::cp_audit_log;
use cpsync::domain::{GuardianId, StudentId, VendorTxnId};
use cpsync::money::Money;
use cpsync::portal::all_fees;
use diesel::prelude::*;

use super::common::Backend;
use super::Env;
use std::process::Command;

/// Rounds of new payments, each followed by the three pulls at once.
const ROUNDS: usize = 3;

/// The guardian with the most students they can see on the portal.
fn busiest_guardian(env: &Env) -> (GuardianId, Vec<StudentId>) {
    let links = genesis::load_guardian_links(&mut env.conn()).unwrap();
    let mut by_guardian: BTreeMap<GuardianId, Vec<StudentId>> = BTreeMap::new();
    for link in links.iter().filter(|l| l.portal_access) {
        by_guardian
            .entry(link.guardian_id)
            .or_default()
            .push(link.student_id);
    }
    by_guardian
        .into_iter()
        .max_by_key(|(g, students)| (students.len(), std::cmp::Reverse(*g)))
        .expect("a guardian with portal access")
}

/// Pays a dollar on up to two open fees of each student; returns the payments.
fn pay_round(env: &Env, students: &[StudentId]) -> Vec<VendorTxnId> {
    let mut paid = Vec::new();
    for student in students {
        let fees = all_fees(&env.portal, Some(*student)).unwrap();
        for fee in fees
            .iter()
            .filter(|f| f.balance >= Money::from_cents(100))
            .take(2)
        {
            let txn = env
                .admin
                .pay(fee.genesis_fee_id, Some(Money::from_cents(100)))
                .unwrap();
            paid.push(txn.id);
        }
    }
    paid
}

fn three_paths_at_once(env: &Env, student: StudentId, guardian: GuardianId) {
    let student = student.to_string();
    let guardian = guardian.to_string();
    let mut children: Vec<_> = [
        vec!["get-payments"],
        vec!["get-payments", "--student", &student],
        vec!["get-payments", "--guardian", &guardian],
    ]
    .iter()
    .map(|args| env.command(args).output_async())
    .collect();
    for (child, args) in children.drain(..).zip(["cursor", "student", "guardian"]) {
        let output = child.wait_with_output().expect("wait for get-payments");
        assert_eq!(
            output.status.code(),
            Some(0),
            "get-payments ({args}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

trait SpawnPiped {
    fn output_async(self) -> std::process::Child;
}

impl SpawnPiped for std::process::Command {
    fn output_async(mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn get-payments")
    }
}

fn each_payment_posted_once(backend: Backend) {
    let env = Env::new(backend);
    env.seed(30);
    env.set_up();
    env.ok(&["send-fees"]);
    let (guardian, students) = busiest_guardian(&env);
    let others: Vec<StudentId> = genesis::load_students(&mut env.conn())
        .unwrap()
        .records
        .iter()
        .map(|s| s.id)
        .filter(|s| !students.contains(s))
        .take(3)
        .collect();
    let mut payments = Vec::new();
    for round in 0..ROUNDS {
        payments.extend(pay_round(&env, &students));
        payments.extend(pay_round(&env, &others));
        match round {
            1 => {
                env.admin
                    .refund(&payments[0], Some(Money::from_cents(50)))
                    .unwrap();
            }
            2 => {
                env.admin.reverse(&payments[1], 3).unwrap();
            }
            _ => {}
        }
        three_paths_at_once(&env, students[0], guardian);
    }
    env.ok(&["get-payments"]);

    assert!(
        each_vendor_txn_posted_once(&env, &mut env.conn()) >= ROUNDS * 2 + 2,
        "the scenario made payments"
    );
}

/// The vendor's own log, read raw (not through cpsync's client), against
/// what Genesis holds: each transaction once, on its fee, with its kind and
/// amount, none invented, one audit row per posting. Returns how many
/// transactions the vendor holds. `conn` is the Genesis database.
pub fn each_vendor_txn_posted_once(env: &Env, conn: &mut cpsync::db::DbConnection) -> usize {
    let log = super::common::raw_vendor_transactions(&env.sim.base_url(), super::API_KEY);
    let mut expected: Vec<(String, i64, String, i64)> = log
        .iter()
        .map(|t| {
            let fee = t.genesis_fee_id.expect("every payment names its fee");
            (t.id.clone(), fee, t.kind.clone(), t.amount_cents)
        })
        .collect();
    expected.sort();
    let mut posted: Vec<(String, i64, String, i64)> = genesis::load_txns(conn, None)
        .unwrap()
        .records
        .into_iter()
        .filter_map(|t| {
            let id = t.vendor_txn_id?;
            Some((id.0, t.fee_id.0, t.kind.to_string(), t.amount.cents()))
        })
        .collect();
    posted.sort();
    assert_eq!(
        posted, expected,
        "every Community Pass transaction posted once, on its fee, with its kind and amount; none invented"
    );
    let in_cp = log.len();
    let audited: i64 = cp_audit_log::table
        .filter(cp_audit_log::action.like("posted_%"))
        .count()
        .get_result(conn)
        .unwrap();
    assert_eq!(audited as usize, in_cp, "one audit row per posting");
    in_cp
}

#[test]
fn sqlite_three_payment_paths_at_once_post_each_transaction_once() {
    each_payment_posted_once(Backend::Sqlite);
}

#[test]
fn postgres_three_payment_paths_at_once_post_each_transaction_once() {
    each_payment_posted_once(Backend::Postgres);
}

/// A parent's page cannot wait minutes: `get-payments --student` against a
/// Community Pass that accepts connections and never answers gives up
/// within its interactive budget, says so, posts nothing, and exits 1.
#[test]
fn a_parent_pull_has_a_short_budget_against_a_silent_server() {
    let env = Env::new(Backend::Sqlite);
    env.seed(10);
    env.set_up();
    let student = env.fees()[0].student_id;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream); // accept, never answer
        }
    });
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_cpsync"))
        .args(["--database-url", &env.db.url_text, "--cp-url", &silent_url])
        .args(["get-payments", "--student", &student.to_string()])
        .env_remove("DATABASE_URL")
        .env_remove("CPSYNC_CONFIG")
        .env_remove("CPSYNC_CP_URL")
        .env("CPSYNC_API_KEY_FILE", env.key_file())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("waits at most 5 s"), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "took {took:?} for a 5 s budget"
    );
}
