//! The report over a real reconciliation: a small district with injected
//! drift goes through the pure core, and the rendered report, CSV and JSON
//! show those discrepancies with the right dollar totals; after the plan is
//! applied the next run's report shows only what still needs a person.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};
use cpsync::domain::{FeeId, FeeStatus, GenesisFee, StudentId, TxnKind, VendorTxn, VendorTxnId};
use cpsync::money::Money;
use cpsync::reconcile::{
    apply_plan, reconcile, vendor_identity_balance, vendor_status, Action, CategorySelection,
    DiscrepancyKind, GenesisSnapshot, Policy, Reconciliation, Scope, VendorSnapshot,
};
use cpsync::report::{
    describe_scope, render_html, review_csv, summary_json, FeeLabel, RunReport, StudentLabel,
    Verdict,
};

const STUDENT: StudentId = StudentId(7);

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

fn at(text: &str) -> NaiveDateTime {
    day(text).and_hms_opt(2, 0, 0).unwrap()
}

fn cents(value: i64) -> Money {
    Money::from_cents(value)
}

struct District {
    genesis: GenesisSnapshot,
    vendor: VendorSnapshot,
    policy: Policy,
}

impl District {
    fn new() -> District {
        District {
            genesis: GenesisSnapshot::default(),
            vendor: VendorSnapshot::default(),
            policy: Policy {
                cutoff: Some(day("2026-09-01")),
                categories: CategorySelection::All,
                excluded_schools: Default::default(),
            },
        }
    }

    fn fee(&mut self, id: i64, amount_cents: i64) -> &mut District {
        self.genesis.fees.push(GenesisFee {
            id: FeeId(id),
            student_id: STUDENT,
            category: "ACTIVITY".to_string(),
            school: "HS".to_string(),
            description: format!("Activity fee {id}"),
            amount: cents(amount_cents),
            fee_date: day("2026-10-01"),
            due_date: None,
            status: FeeStatus::Open,
            created_at: at("2026-10-01"),
            modified_at: at("2026-10-01"),
        });
        self
    }

    fn apply(&mut self, plan: &[Action]) {
        let (genesis, vendor) = apply_plan(&self.genesis, &self.vendor, plan);
        self.genesis = genesis;
        self.vendor = vendor;
    }

    fn synced(&mut self, id: i64) -> &mut District {
        self.apply(&[Action::PushFee { fee_id: FeeId(id) }]);
        self
    }

    /// A Community Pass payment, applied there only.
    fn paid_online(&mut self, id: i64, vendor_id: &str, amount_cents: i64) -> &mut District {
        self.vendor.txns.push(VendorTxn {
            id: VendorTxnId(vendor_id.to_string()),
            sequence: self.vendor.txns.len() as i64 + 1,
            genesis_fee_id: Some(FeeId(id)),
            vendor_fee_id: format!("cp-{id}"),
            student_id: Some(STUDENT),
            kind: TxnKind::Payment,
            amount: cents(amount_cents),
            method: "card".to_string(),
            occurred_at: at("2026-10-06"),
            reverses: None,
        });
        let fee = self
            .vendor
            .fees
            .iter_mut()
            .find(|fee| fee.genesis_fee_id == FeeId(id))
            .unwrap();
        fee.paid += cents(amount_cents);
        fee.balance = vendor_identity_balance(fee);
        fee.status = vendor_status(FeeStatus::Open, fee.balance);
        self
    }

    fn run(&self) -> Reconciliation {
        reconcile(
            &self.genesis,
            &self.vendor,
            &self.policy,
            &Scope::everything(),
        )
    }
}

/// Fee 1 agrees; fee 2 never reached Community Pass; fee 3 was paid online
/// and not posted; fee 4 was partly paid online (posted), then its amount
/// was edited in Genesis.
fn drifted_district() -> District {
    let mut district = District::new();
    district.fee(1, 4000).synced(1);
    district.fee(4, 5000).synced(4).paid_online(4, "v-4", 2000);
    let settle = district.run().plan();
    district.apply(&settle);
    let fee = district
        .genesis
        .fees
        .iter_mut()
        .find(|fee| fee.id == FeeId(4))
        .unwrap();
    fee.amount = cents(5500);
    district.fee(2, 2500);
    district.fee(3, 6000).synced(3).paid_online(3, "v-3", 6000);
    district
}

fn report_of(reconciliation: Reconciliation, run_id: i64) -> RunReport {
    let corrected = reconciliation
        .discrepancies
        .iter()
        .filter(|d| !d.resolution.is_review())
        .cloned()
        .collect();
    RunReport {
        district: "Core SD".to_string(),
        run_id,
        started_at: at("2026-11-26"),
        finished_at: at("2026-11-26"),
        dry_run: false,
        verdict: Verdict::from_reconciliation(&reconciliation, 0),
        scope_text: describe_scope(&Scope::everything()),
        scope: Scope::everything(),
        totals_after: None,
        reconciliation,
        corrected,
        failed_corrections: Vec::new(),
        phases: Vec::new(),
        trend: Vec::new(),
        students: BTreeMap::from([(
            STUDENT,
            StudentLabel {
                name: "Doe, Jane".to_string(),
                school: "HS".to_string(),
            },
        )]),
        schools: BTreeMap::from([("HS".to_string(), "High School".to_string())]),
        fees: (1..=4)
            .map(|id| {
                let label = FeeLabel {
                    category: "ACTIVITY".to_string(),
                    description: format!("Activity fee {id}"),
                };
                (FeeId(id), label)
            })
            .collect(),
        error: None,
        queue: Default::default(),
        incomplete: Vec::new(),
    }
}

#[test]
fn the_report_shows_the_injected_drift_in_dollars() {
    let district = drifted_district();
    let reconciliation = district.run();
    let kinds: Vec<DiscrepancyKind> = reconciliation
        .discrepancies
        .iter()
        .map(|d| d.kind)
        .collect();
    assert!(
        kinds.contains(&DiscrepancyKind::FeeMissingInCp),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&DiscrepancyKind::CpPaymentMissingInGenesis),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&DiscrepancyKind::AmountEditedAfterPayment),
        "{kinds:?}"
    );
    let report = report_of(reconciliation, 1);
    assert_eq!(report.verdict, Verdict::NeedsReview);
    // Billed: Genesis 40 + 25 + 60 + 55, Community Pass 40 + 60 + 50.
    // Paid online: Genesis holds only fee 4's 20.00; Community Pass 80.00.
    // Due: Genesis 40 + 25 + 60 + 35 = 160, Community Pass 40 + 0 + 30 = 70.
    let html = render_html(&report).unwrap();
    for shown in [
        "$180.00",
        "$150.00",
        "+$30.00",
        "$20.00",
        "$80.00",
        "-$60.00",
        "$160.00",
        "$70.00",
        "Genesis shows $90.00 more due than Community Pass.",
        "Fee not yet in Community Pass",
        "Online payment not posted in Genesis",
        "Amount edited after a payment",
    ] {
        assert!(html.contains(shown), "report lacks {shown:?}");
    }
    let summary = summary_json(&report);
    assert_eq!(summary["difference"], "90.00");
    assert_eq!(summary["totals"]["genesis"]["billed"], "180.00");
    assert_eq!(summary["accounting"]["genesis"]["adds_up"], true);
    assert_eq!(summary["accounting"]["community_pass"]["adds_up"], true);
    let csv = String::from_utf8(review_csv(&report).unwrap()).unwrap();
    assert_eq!(csv.lines().count(), 2, "one review item: {csv}");
    assert!(csv.contains("amount_edited_after_payment") && csv.contains("\"Doe, Jane\""));
}

#[test]
fn after_the_plan_only_the_review_item_is_left() {
    let mut district = drifted_district();
    let plan = district.run().plan();
    district.apply(&plan);
    let again = district.run();
    assert!(again.discrepancies.iter().all(|d| d.resolution.is_review()));
    let report = report_of(again, 2);
    assert_eq!(report.verdict, Verdict::NeedsReview);
    let html = render_html(&report).unwrap();
    assert!(html.contains("Needs review (1)"), "one item left");
    assert!(html.contains("Corrected automatically (0)"));
}

#[test]
fn a_district_in_agreement_says_so() {
    let mut district = District::new();
    district.fee(1, 4000).synced(1);
    let report = report_of(district.run(), 3);
    assert_eq!(report.verdict, Verdict::InAgreement);
    let html = render_html(&report).unwrap();
    assert!(html.contains("class=\"verdict in_agreement\""));
    assert!(html.contains("The balances due agree to the cent."));
}
