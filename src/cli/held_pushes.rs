//! `cpsync held-pushes`: fee pushes Community Pass refused for a reason a
//! retry cannot fix (a 409 amount lock, a 422, an unknown student), each
//! with the vendor's reason in words. They left the retry queue so nothing
//! behind them waits; each is sent again when the fee changes in Genesis,
//! or with `send-fees --resend --fee ID`.

use super::{exit, Context};
use crate::db::links::{self, RefusedPush};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cpsync held-pushes
  cpsync held-pushes --json

Exit code 0 when nothing is held, 3 when some pushes wait for a person (fix
the fee in Genesis, or ask Community Pass; then `send-fees --resend --fee ID`).")]
pub struct Args {
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let items = links::refused(&mut conn)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print_table(&items);
    }
    Ok(if items.is_empty() {
        exit::OK
    } else {
        exit::NEEDS_REVIEW
    })
}

fn print_table(items: &[RefusedPush]) {
    if items.is_empty() {
        out!("no held pushes: Community Pass accepted every fee it was sent");
        return;
    }
    out!("{:>10} {:<17} {:>6} reason", "fee", "refused (UTC)", "run");
    for item in items {
        out!(
            "{:>10} {:<17} {:>6} {}",
            item.fee_id,
            item.refused_at
                .map(|at| at.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into()),
            item.last_run_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into()),
            item.refused_reason.as_deref().unwrap_or("")
        );
    }
    out!(
        "{} held; each is sent again when the fee changes, or with `cpsync send-fees --resend --fee ID`",
        items.len()
    );
}
