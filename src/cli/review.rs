//! `cpsync review`: the review queue with memory (`cp_review_items`, rules
//! in `review`). `list` shows the items still waiting for a person, oldest
//! first, with their age and dollars at stake; `show` one item's whole
//! record; `ack` and `resolve` record what a person saw or decided (who,
//! when, a note). A resolved item stays resolved; one whose cause goes away
//! is resolved by the next whole-district nightly run on its own.

use chrono::NaiveDateTime;
use serde_json::json;

use super::{exit, Context};
use crate::db::review_items::{self, ActError, ListFilter, ReviewItem};
use crate::reconcile::DiscrepancyKind;
use crate::report::format_money;
use crate::review::{self, PersonAction};
use crate::sync::utc_now;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cpsync review list --new                 first seen by the latest nightly run
  cpsync review list --kind overpayment_credit --json
  cpsync review show 17
  cpsync review ack 17 --note \"calling the family\"
  cpsync review resolve 17 --note \"refunded by cheque 2231\" --by jsmith

Exit codes: 0 done, 1 the item does not exist or the action is refused
(already resolved, already acknowledged, empty note), 2 usage error.")]
pub struct Args {
    #[command(subcommand)]
    command: ReviewCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReviewCommand {
    /// Items waiting for a person (new, still open, acknowledged), oldest first.
    List(ListArgs),
    /// One item's whole record.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Record that a person has seen the item; it stays in the queue.
    Ack(ActArgs),
    /// Close the item: a person decided; it stays closed.
    Resolve(ActArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only items first seen by the latest run that updated the queue.
    #[arg(long)]
    new: bool,
    /// Only items of this kind (e.g. overpayment_credit).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Resolved items too.
    #[arg(long, conflicts_with = "new")]
    all: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ActArgs {
    id: i64,
    /// What was seen, done or decided (required).
    #[arg(long)]
    note: String,
    /// Who acts (default: the login name).
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let now = utc_now();
    match args.command {
        ReviewCommand::List(list) => {
            if let Some(kind) = &list.kind {
                if !DiscrepancyKind::ALL.iter().any(|k| k.as_str() == kind) {
                    eprintln!("cpsync: unknown kind {kind:?}; kinds are:");
                    for k in DiscrepancyKind::ALL {
                        eprintln!("  {}", k.as_str());
                    }
                    return Ok(exit::USAGE);
                }
            }
            let filter = ListFilter {
                new_only: list.new,
                kind: list.kind,
                all: list.all,
            };
            let items = review_items::list(&mut conn, &filter)?;
            if list.json {
                let rows: Vec<_> = items.iter().map(|i| item_json(i, now)).collect();
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_list(&items, now);
            }
            Ok(exit::OK)
        }
        ReviewCommand::Show { id, json } => match review_items::get(&mut conn, id)? {
            None => {
                eprintln!("cpsync: there is no review item {id}");
                Ok(exit::FAILURE)
            }
            Some(item) if json => {
                out!("{}", serde_json::to_string_pretty(&item_json(&item, now))?);
                Ok(exit::OK)
            }
            Some(item) => {
                print_item(&item, now);
                Ok(exit::OK)
            }
        },
        ReviewCommand::Ack(act) => person_acts(&mut conn, act, PersonAction::Acknowledge, now),
        ReviewCommand::Resolve(act) => person_acts(&mut conn, act, PersonAction::Resolve, now),
    }
}

fn person_acts(
    conn: &mut crate::db::DbConnection,
    act: ActArgs,
    action: PersonAction,
    now: NaiveDateTime,
) -> anyhow::Result<u8> {
    let by = match act.by.or_else(login_name) {
        Some(by) => by,
        None => {
            eprintln!("cpsync: cannot tell the login name; say who acts with --by NAME");
            return Ok(exit::USAGE);
        }
    };
    match review_items::person_acts(conn, act.id, action, &by, &act.note, now) {
        Ok(item) => {
            out!(
                "review item {} is now {} (by {by})",
                item.id,
                item.item_state().label()
            );
            Ok(exit::OK)
        }
        Err(ActError::Db(error)) => Err(error.into()),
        Err(refused) => {
            eprintln!("cpsync: {refused}; nothing was changed");
            Ok(exit::FAILURE)
        }
    }
}

/// The login name from the environment (`USER`, then `LOGNAME`).
fn login_name() -> Option<String> {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
}

fn item_json(item: &ReviewItem, now: NaiveDateTime) -> serde_json::Value {
    let mut value = serde_json::to_value(item).expect("review items serialise");
    value["age_days"] = json!(review::age_days(item.first_seen_at, now));
    value["at_stake"] = json!(item.at_stake().to_string());
    value
}

fn print_list(items: &[ReviewItem], now: NaiveDateTime) {
    if items.is_empty() {
        out!("no review items waiting");
        return;
    }
    out!(
        "{:>6}  {:<22} {:>5}  {:>10}  {:>9}  {:>9}  {:<34} reason",
        "id",
        "state",
        "age",
        "at stake",
        "fee",
        "student",
        "kind"
    );
    for item in items {
        out!(
            "{:>6}  {:<22} {:>4}d  {:>10}  {:>9}  {:>9}  {:<34} {}",
            item.id,
            item.item_state().label(),
            review::age_days(item.first_seen_at, now),
            format_money(item.at_stake()),
            item.fee_id.map(|f| f.to_string()).unwrap_or_default(),
            item.student_id.map(|s| s.to_string()).unwrap_or_default(),
            item.kind,
            item.reason.as_deref().unwrap_or("")
        );
    }
    let total: crate::money::Money = items.iter().map(ReviewItem::at_stake).sum();
    out!("{} item(s), {} at stake", items.len(), format_money(total));
}

fn print_item(item: &ReviewItem, now: NaiveDateTime) {
    out!("review item {}: {}", item.id, item.kind);
    out!("  state          {}", item.item_state().label());
    let optional = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "—".into());
    out!("  fee            {}", optional(item.fee_id));
    out!("  student        {}", optional(item.student_id));
    if let Some(txn) = &item.vendor_txn_id {
        out!("  transaction    {txn}");
    }
    out!("  at stake       {}", format_money(item.at_stake()));
    out!(
        "  Genesis        {}",
        item.genesis_value.as_deref().unwrap_or("—")
    );
    out!(
        "  Community Pass {}",
        item.cp_value.as_deref().unwrap_or("—")
    );
    if let Some(reason) = &item.reason {
        out!("  reason         {reason}");
    }
    out!(
        "  first seen     run #{} at {} UTC ({} days ago)",
        item.first_seen_run,
        item.first_seen_at.format("%Y-%m-%d %H:%M"),
        review::age_days(item.first_seen_at, now)
    );
    out!(
        "  last seen      run #{} at {} UTC",
        item.last_seen_run,
        item.last_seen_at.format("%Y-%m-%d %H:%M")
    );
    if let (Some(by), Some(at)) = (&item.acknowledged_by, item.acknowledged_at) {
        out!(
            "  acknowledged   by {by} at {} UTC: {}",
            at.format("%Y-%m-%d %H:%M"),
            item.acknowledged_note.as_deref().unwrap_or("")
        );
    }
    if let Some(at) = item.resolved_at {
        match (&item.resolved_by, item.resolved_run) {
            (Some(by), _) => out!(
                "  resolved       by {by} at {} UTC: {}",
                at.format("%Y-%m-%d %H:%M"),
                item.resolved_note.as_deref().unwrap_or("")
            ),
            (None, Some(run)) => out!(
                "  resolved       automatically by run #{run} at {} UTC (its cause went away)",
                at.format("%Y-%m-%d %H:%M")
            ),
            (None, None) => {}
        }
    }
}
