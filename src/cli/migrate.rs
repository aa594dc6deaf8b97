//! `cpsync migrate`: create or upgrade the schema, show its status, or take
//! it all the way down (for a clean re-install; asks for `--yes`).

use anyhow::bail;

use super::{exit, Context};
use crate::db::migrate;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only list the migrations and whether each is applied.
    #[arg(long, conflicts_with = "revert_all")]
    status: bool,
    /// Revert every migration, dropping all cpsync and Genesis-contract tables.
    #[arg(long)]
    revert_all: bool,
    /// Confirms --revert-all.
    #[arg(long)]
    yes: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect_creating()?;
    let target = &context.database_url;
    if args.status {
        for state in migrate::status(&mut conn)? {
            let mark = if state.applied { "applied" } else { "pending" };
            out!("{mark:8} {}", state.name);
        }
        return Ok(exit::OK);
    }
    if args.revert_all {
        if !args.yes {
            bail!("--revert-all drops every table in {target}; add --yes to confirm");
        }
        let reverted = migrate::revert_all(&mut conn)?;
        out!("reverted {} migration(s) on {target}", reverted.len());
        return Ok(exit::OK);
    }
    let applied = migrate::run_pending(&mut conn)?;
    if applied.is_empty() {
        out!("{target}: schema is up to date");
    } else {
        for name in &applied {
            out!("applied {name}");
        }
        out!("{target}: {} migration(s) applied", applied.len());
    }
    Ok(exit::OK)
}
