//! `cpsync unprocessed`: Community Pass transactions that Get Payments
//! pulled but did not post in Genesis (the fee is gone, the record names
//! another student or a vendor fee id the link does not know, a refund
//! naming no payment we hold, a date in the future, conflicting copies of
//! one id: see the holds table in `reconcile`), each with the reason. They
//! are retried by every cursor pull and marked resolved once posted
//! (conflicting copies wait for a person); nothing is dropped.

use super::{exit, Context};
use crate::db::postings::{self, Unprocessed};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit code 0 when nothing waits, 3 when some transactions still wait for a
person (fix the cause in Genesis; the next get-payments run posts them).")]
pub struct Args {
    /// Also list the ones resolved since (posted by a later pull).
    #[arg(long)]
    all: bool,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let items = postings::list_unprocessed(&mut conn, args.all)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print_table(&items, args.all);
    }
    let waiting = items.iter().filter(|i| i.resolved_at.is_none()).count();
    Ok(if waiting == 0 {
        exit::OK
    } else {
        exit::NEEDS_REVIEW
    })
}

fn print_table(items: &[Unprocessed], all: bool) {
    if items.is_empty() {
        out!(
            "no {}pulled transactions waiting: every Community Pass transaction was applied",
            if all { "" } else { "unresolved " }
        );
        return;
    }
    out!(
        "{:<18} {:<9} {:>10} {:>9} {:>9} {:<19} {:<19} reason",
        "transaction",
        "kind",
        "amount",
        "fee",
        "student",
        "occurred (UTC)",
        "state"
    );
    for item in items {
        let state = match item.resolved_at {
            Some(at) => format!("resolved {}", at.format("%Y-%m-%d %H:%M")),
            None => format!("waiting since {}", item.first_seen_at.format("%Y-%m-%d")),
        };
        out!(
            "{:<18} {:<9} {:>10} {:>9} {:>9} {:<19} {:<19} {}",
            item.vendor_txn_id,
            item.kind,
            format!("${}", item.amount),
            optional(item.fee_id),
            optional(item.student_id),
            item.occurred_at.format("%Y-%m-%d %H:%M:%S"),
            state,
            item.reason
        );
    }
    let waiting = items.iter().filter(|i| i.resolved_at.is_none()).count();
    out!("{} listed, {waiting} waiting", items.len());
}

fn optional(id: Option<i64>) -> String {
    id.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
}
