//! What a parent sees on the Genesis portal's fees page: each of their
//! students' fees and balances, the Community Pass balance (when shown), the
//! messages, the payment link, and whether the portal is locked out and why.
//! Pure: the shell gathers the records, this module applies the rules.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};
use serde::Serialize;

use crate::domain::{FeeId, FeeStatus, GenesisFee, GenesisTxn, GuardianId, Student, StudentId};
use crate::money::Money;
use crate::setup::PortalOptions;

/// A patron's Community Pass balance as last pulled by Get Balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredBalance {
    pub patron_id: String,
    pub balance: Money,
    pub integration_balance: Money,
    pub other_balance: Money,
    pub as_of: NaiveDateTime,
}

/// Everything the view is computed from.
#[derive(Debug, Clone)]
pub struct PortalInputs<'a> {
    pub guardian_id: GuardianId,
    /// The students this guardian has portal access to.
    pub students: &'a [Student],
    pub fees: &'a [GenesisFee],
    pub txns: &'a [GenesisTxn],
    /// Balances of the patrons these students belong to.
    pub balances: &'a [StoredBalance],
    pub options: &'a PortalOptions,
    pub today: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeeLine {
    pub fee_id: FeeId,
    pub description: String,
    pub amount: Money,
    pub balance: Money,
    pub due_date: Option<NaiveDate>,
    pub overdue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StudentView {
    pub student_id: StudentId,
    pub name: String,
    pub fees: Vec<FeeLine>,
    pub balance: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceView {
    pub amount: Money,
    pub message: String,
    pub as_of: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayLink {
    pub url: String,
    pub text: String,
}

/// The parent's page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortalView {
    pub guardian_id: GuardianId,
    pub payment_message: Option<String>,
    pub students: Vec<StudentView>,
    pub genesis_balance: Money,
    pub community_pass_balance: Option<BalanceView>,
    pub pay_link: Option<PayLink>,
    pub locked_out: bool,
    pub lock_reasons: Vec<String>,
}

/// Outstanding balance of one Genesis fee: amount − payments − waivers +
/// refunds + reversals, over every transaction Genesis holds for it; a void
/// or waived fee owes nothing (waived with or without a waiver row).
pub fn fee_balance(fee: &GenesisFee, txns: &[&GenesisTxn]) -> Money {
    if matches!(fee.status, FeeStatus::Void | FeeStatus::Waived) {
        return Money::ZERO;
    }
    fee.amount
        + txns
            .iter()
            .map(|t| t.kind.balance_effect(t.amount))
            .sum::<Money>()
}

fn fee_lines(inputs: &PortalInputs, student: StudentId) -> Vec<FeeLine> {
    let mut by_fee: BTreeMap<FeeId, Vec<&GenesisTxn>> = BTreeMap::new();
    for txn in inputs.txns {
        by_fee.entry(txn.fee_id).or_default().push(txn);
    }
    inputs
        .fees
        .iter()
        .filter(|f| f.student_id == student && f.status == FeeStatus::Open)
        .map(|fee| {
            let txns = by_fee.get(&fee.id).map(Vec::as_slice).unwrap_or(&[]);
            let balance = fee_balance(fee, txns);
            FeeLine {
                fee_id: fee.id,
                description: fee.description.clone(),
                amount: fee.amount,
                balance,
                due_date: fee.due_date,
                overdue: balance.is_positive() && is_past_due(fee.due_date, inputs.today),
            }
        })
        .filter(|line| !line.balance.is_zero())
        .collect()
}

/// Past its due date; a fee with no due date is never overdue (nearly
/// every family has a cafeteria charge without one).
fn is_past_due(due_date: Option<NaiveDate>, today: NaiveDate) -> bool {
    due_date.is_some_and(|due| due < today)
}

/// Applies the portal rules.
pub fn compute(inputs: &PortalInputs) -> PortalView {
    let options = inputs.options;
    let students: Vec<StudentView> = inputs
        .students
        .iter()
        .map(|s| {
            let fees = fee_lines(inputs, s.id);
            StudentView {
                student_id: s.id,
                name: format!("{} {}", s.first_name, s.last_name),
                balance: fees.iter().map(|f| f.balance).sum(),
                fees,
            }
        })
        .collect();
    let genesis_balance = students.iter().map(|s| s.balance).sum();
    let cp_total: Money = inputs.balances.iter().map(|b| b.balance).sum();
    let cp_other: Money = inputs.balances.iter().map(|b| b.other_balance).sum();
    let as_of = inputs.balances.iter().map(|b| b.as_of).min();
    let lock_reasons = lock_reasons(&students, cp_other, options);
    PortalView {
        guardian_id: inputs.guardian_id,
        payment_message: Some(options.payment_message.clone()).filter(|m| !m.is_empty()),
        genesis_balance,
        community_pass_balance: options.show_balance.then(|| BalanceView {
            amount: cp_total,
            message: options.balance_message.clone(),
            as_of,
        }),
        pay_link: options.vendor_url.as_ref().map(|url| PayLink {
            url: url.clone(),
            text: options.link_text.clone(),
        }),
        locked_out: !lock_reasons.is_empty(),
        lock_reasons,
        students,
    }
}

/// Why the portal is locked: an outstanding Genesis fine (past its due date
/// when the grace setting is on), or, when the district chose it, an
/// outstanding Community Pass balance for fees Genesis does not hold (treated
/// as a fine already due: it has no Genesis due date).
fn lock_reasons(students: &[StudentView], cp_other: Money, options: &PortalOptions) -> Vec<String> {
    let mut reasons = Vec::new();
    for student in students {
        for fee in student.fees.iter().filter(|f| f.balance.is_positive()) {
            if !options.grace_until_due || fee.overdue {
                let when = match fee.due_date {
                    Some(due) if options.grace_until_due => format!(", due {due}"),
                    _ => String::new(),
                };
                reasons.push(format!(
                    "Genesis fine: {}: {} has ${} outstanding{when}",
                    student.name, fee.description, fee.balance
                ));
            }
        }
    }
    if options.lock_out_on_balance && cp_other.is_positive() {
        reasons.push(format!(
            "Community Pass balance of ${cp_other} for fees not in Genesis (lock_out_on_balance is on)"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StudentStatus, TxnKind, TxnSource};

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 10, d).unwrap()
    }

    fn student() -> Student {
        Student {
            id: StudentId(100_001),
            first_name: "Ava".into(),
            last_name: "Lee".into(),
            grade: "04".into(),
            school: "ES01".into(),
            status: StudentStatus::Active,
            birth_date: NaiveDate::from_ymd_opt(2016, 5, 1).unwrap(),
            email: None,
        }
    }

    fn fee(id: i64, cents: i64, due: Option<NaiveDate>, status: FeeStatus) -> GenesisFee {
        let at = day(1).and_hms_opt(8, 0, 0).unwrap();
        GenesisFee {
            id: FeeId(id),
            student_id: StudentId(100_001),
            category: "LIBRARY".into(),
            school: "ES01".into(),
            description: format!("Fee {id}"),
            amount: Money::from_cents(cents),
            fee_date: day(1),
            due_date: due,
            status,
            created_at: at,
            modified_at: at,
        }
    }

    fn payment(fee_id: i64, cents: i64) -> GenesisTxn {
        GenesisTxn {
            id: fee_id * 10,
            fee_id: FeeId(fee_id),
            kind: TxnKind::Payment,
            amount: Money::from_cents(cents),
            method: "card".into(),
            source: TxnSource::CommunityPass,
            vendor_txn_id: None,
            posted_at: day(2).and_hms_opt(8, 0, 0).unwrap(),
        }
    }

    fn balance(other_cents: i64) -> StoredBalance {
        StoredBalance {
            patron_id: "100001".into(),
            balance: Money::from_cents(other_cents + 500),
            integration_balance: Money::from_cents(500),
            other_balance: Money::from_cents(other_cents),
            as_of: day(10).and_hms_opt(2, 0, 0).unwrap(),
        }
    }

    struct Case {
        fees: Vec<GenesisFee>,
        txns: Vec<GenesisTxn>,
        other_cents: i64,
        grace: bool,
        lock_on_balance: bool,
        today: NaiveDate,
        locked: bool,
    }

    fn check(case: Case) {
        let options = PortalOptions {
            grace_until_due: case.grace,
            lock_out_on_balance: case.lock_on_balance,
            vendor_url: Some("https://pay.example/district".into()),
            ..PortalOptions::default()
        };
        let students = [student()];
        let balances = [balance(case.other_cents)];
        let view = compute(&PortalInputs {
            guardian_id: GuardianId(5_000_001),
            students: &students,
            fees: &case.fees,
            txns: &case.txns,
            balances: &balances,
            options: &options,
            today: case.today,
        });
        assert_eq!(view.locked_out, case.locked, "{:?}", view.lock_reasons);
        assert_eq!(view.locked_out, !view.lock_reasons.is_empty());
        assert_eq!(view.pay_link.unwrap().url, "https://pay.example/district");
    }

    #[test]
    fn lock_out_follows_the_rules() {
        let open = |due| vec![fee(1, 2_000, due, FeeStatus::Open)];
        let base = || Case {
            fees: Vec::new(),
            txns: Vec::new(),
            other_cents: 0,
            grace: true,
            lock_on_balance: false,
            today: day(15),
            locked: false,
        };
        check(Case { ..base() });
        // Grace: an outstanding fine not yet due leaves the portal open...
        check(Case {
            fees: open(Some(day(20))),
            ..base()
        });
        // ...and locks it once the due date has passed.
        check(Case {
            fees: open(Some(day(14))),
            locked: true,
            ..base()
        });
        // Without grace any outstanding fine locks.
        check(Case {
            fees: open(Some(day(20))),
            grace: false,
            locked: true,
            ..base()
        });
        // No due date: never overdue, so grace keeps the portal open...
        check(Case {
            fees: open(None),
            locked: false,
            ..base()
        });
        // ...and without grace it locks like any outstanding fine.
        check(Case {
            fees: open(None),
            grace: false,
            locked: true,
            ..base()
        });
        // Paid in full, waived or void: nothing outstanding.
        check(Case {
            fees: open(Some(day(1))),
            txns: vec![payment(1, 2_000)],
            ..base()
        });
        check(Case {
            fees: vec![
                fee(1, 2_000, None, FeeStatus::Void),
                fee(2, 3_000, None, FeeStatus::Waived),
            ],
            ..base()
        });
        // A partial payment leaves the rest outstanding.
        check(Case {
            fees: open(Some(day(1))),
            txns: vec![payment(1, 500)],
            locked: true,
            ..base()
        });
        // A Community Pass balance locks only when the district chose it.
        check(Case {
            other_cents: 4_500,
            ..base()
        });
        check(Case {
            other_cents: 4_500,
            lock_on_balance: true,
            locked: true,
            ..base()
        });
        check(Case {
            other_cents: 0,
            lock_on_balance: true,
            ..base()
        });
    }

    #[test]
    fn the_view_shows_balances_messages_and_link() {
        let options = PortalOptions {
            payment_message: "Pay by Friday".into(),
            ..PortalOptions::default()
        };
        let students = [student()];
        let fees = [
            fee(1, 2_000, Some(day(20)), FeeStatus::Open),
            fee(2, 1_000, None, FeeStatus::Open),
        ];
        let txns = [payment(2, 1_000)];
        let balances = [balance(4_500)];
        let view = compute(&PortalInputs {
            guardian_id: GuardianId(5_000_001),
            students: &students,
            fees: &fees,
            txns: &txns,
            balances: &balances,
            options: &options,
            today: day(15),
        });
        assert_eq!(view.genesis_balance, Money::from_cents(2_000));
        assert_eq!(view.students[0].fees.len(), 1, "paid fees are not listed");
        assert_eq!(
            view.community_pass_balance.unwrap().amount,
            Money::from_cents(5_000)
        );
        assert_eq!(view.payment_message.as_deref(), Some("Pay by Friday"));
        assert!(view.pay_link.is_none(), "no vendor URL set");
    }
}
