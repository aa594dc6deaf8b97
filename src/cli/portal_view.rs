//! `cpsync portal-view --guardian ID`: what that parent sees on the Genesis
//! portal's fees page. Gathers the guardian's students with portal access,
//! their fees and transactions, the stored Community Pass balances of their
//! patrons (patron ids by the setup's patron-id rule) and the portal
//! options, and prints `portal_view::compute`'s answer as text or JSON.

use std::collections::BTreeSet;

use chrono::NaiveDate;

use super::{exit, Context};
use crate::db::{balances, genesis, settings, DbConnection};
use crate::domain::{GenesisFee, GenesisTxn, GuardianId, Student, StudentId};
use crate::portal_view::{self, PortalInputs, PortalView, StoredBalance};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The guardian (parent) whose page to show.
    #[arg(long)]
    guardian: GuardianId,
    /// Print the view as JSON.
    #[arg(long)]
    json: bool,
    /// Decide due dates as of this day (default: today, local time).
    #[arg(long, value_name = "DATE")]
    today: Option<NaiveDate>,
}

/// The records the view is computed from.
struct Gathered {
    students: Vec<Student>,
    fees: Vec<GenesisFee>,
    txns: Vec<GenesisTxn>,
    balances: Vec<StoredBalance>,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    if !genesis::guardian_exists(&mut conn, args.guardian)? {
        eprintln!(
            "cpsync: guardian {} is not in Genesis; nothing to show",
            args.guardian
        );
        return Ok(super::exit::FAILURE);
    }
    let setup = settings::load_setup(&mut conn)?;
    let gathered = gather(&mut conn, args.guardian, &setup.patron_id)?;
    if gathered.students.is_empty() {
        eprintln!(
            "cpsync: guardian {} has no students with portal access",
            args.guardian
        );
    }
    let today = args
        .today
        .unwrap_or_else(|| chrono::Local::now().date_naive());
    let view = portal_view::compute(&PortalInputs {
        guardian_id: args.guardian,
        students: &gathered.students,
        fees: &gathered.fees,
        txns: &gathered.txns,
        balances: &gathered.balances,
        options: &setup.portal,
        today,
    });
    if args.json {
        out!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_view(&view, today);
    }
    Ok(exit::OK)
}

fn gather(
    conn: &mut DbConnection,
    guardian: GuardianId,
    patron_rule: &crate::setup::PatronIdRule,
) -> anyhow::Result<Gathered> {
    let ids: Vec<StudentId> = genesis::students_of_guardian(conn, guardian, true)?;
    let students = genesis::load_students_by_ids(conn, &ids)?;
    let mut fees = Vec::new();
    let mut txns = Vec::new();
    let mut rejected = students.rejected;
    for student in &ids {
        let student_fees = genesis::load_fees(conn, Some(*student))?;
        let student_txns = genesis::load_txns(conn, Some(*student))?;
        fees.extend(student_fees.records);
        txns.extend(student_txns.records);
        rejected.extend(student_fees.rejected);
        rejected.extend(student_txns.rejected);
    }
    for row in &rejected {
        eprintln!("cpsync: warning: a Genesis row breaks the contract and is not shown: {row}");
    }
    let links = genesis::load_guardian_links_for(conn, &ids)?;
    let patrons: BTreeSet<String> = ids
        .iter()
        .map(|s| patron_rule.patron_for(*s, &links))
        .collect();
    let patrons: Vec<String> = patrons.into_iter().collect();
    Ok(Gathered {
        students: students.records,
        fees,
        txns,
        balances: balances::for_patrons(conn, &patrons)?,
    })
}

fn print_view(view: &PortalView, today: NaiveDate) {
    out!(
        "Parent portal of guardian {} as of {today}",
        view.guardian_id
    );
    if let Some(message) = &view.payment_message {
        out!("{message}");
    }
    for student in &view.students {
        out!(
            "\n{} ({}): ${} owing",
            student.name,
            student.student_id,
            student.balance
        );
        for fee in &student.fees {
            let due = fee
                .due_date
                .map(|d| format!(", due {d}"))
                .unwrap_or_default();
            out!(
                "  fee {:<8} {:<32} ${} of ${}{due}{}",
                fee.fee_id,
                fee.description,
                fee.balance,
                fee.amount,
                if fee.overdue { " (overdue)" } else { "" }
            );
        }
    }
    out!("\nGenesis balance: ${}", view.genesis_balance);
    if let Some(balance) = &view.community_pass_balance {
        let as_of = balance
            .as_of
            .map(|t| format!(" (as of {t} UTC)"))
            .unwrap_or_else(|| " (not pulled yet)".into());
        out!("{}: ${}{as_of}", balance.message, balance.amount);
    }
    if let Some(link) = &view.pay_link {
        out!("{}: {}", link.text, link.url);
    }
    if view.locked_out {
        out!("\nportal LOCKED OUT:");
        for reason in &view.lock_reasons {
            out!("  - {reason}");
        }
    } else {
        out!("\nportal open");
    }
}
