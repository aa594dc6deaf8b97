//! `cpsync migrate`: create or upgrade the schema, show its status, or take
//! it all the way down (for a clean re-install; asks for `--yes`). Beside a
//! district's real Genesis, `--integration-only` checks the Genesis contract
//! and creates only cpsync's own objects; nothing ever drops what cpsync did
//! not create.

use anyhow::bail;

use super::{exit, Context};
use crate::db::{migrate, DbConnection};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only list the migrations and whether each is applied.
    #[arg(long, conflicts_with_all = ["revert_all", "integration_only"])]
    status: bool,
    /// Install beside an existing Genesis: check that the Genesis tables or
    /// views have every column the contract needs (naming what is missing)
    /// and create only cpsync's own cp_ objects (and its outbox triggers).
    #[arg(long, conflicts_with = "revert_all")]
    integration_only: bool,
    /// Revert every migration: drops cpsync's cp_ tables and triggers, and
    /// the Genesis contract tables only if cpsync created them (never after
    /// --integration-only).
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
        let districts = migrate::genesis_belongs_to_district(&mut conn)?;
        for state in migrate::status(&mut conn)? {
            let mark = if state.applied { "applied" } else { "pending" };
            let note = if districts && migrate::is_genesis_contract(&state.name) {
                "  (the district's own Genesis objects: checked, not created)"
            } else {
                ""
            };
            out!("{mark:8} {}{note}", state.name);
        }
        return Ok(exit::OK);
    }
    if args.revert_all {
        let districts = migrate::genesis_belongs_to_district(&mut conn)?;
        let what = if districts {
            "every cpsync table and trigger (the district's Genesis tables stay)"
        } else {
            "every table in it, the Genesis contract tables included"
        };
        if !args.yes {
            bail!("--revert-all drops {what} from {target}; add --yes to confirm");
        }
        let reverted = migrate::revert_all(&mut conn)?;
        out!(
            "reverted {} migration(s) on {target}: dropped {what}",
            reverted.len()
        );
        return Ok(exit::OK);
    }
    if args.integration_only {
        return integration_only(&mut conn, target);
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

fn integration_only(
    conn: &mut DbConnection,
    target: &impl std::fmt::Display,
) -> anyhow::Result<u8> {
    match migrate::run_integration_only(conn)? {
        Ok(applied) => {
            for name in &applied {
                out!("applied {name}");
            }
            out!(
                "{target}: the Genesis contract is in place; {} cpsync migration(s) applied, \
                 no Genesis object created or changed",
                applied.len()
            );
            Ok(exit::OK)
        }
        Err(problems) => {
            eprintln!(
                "cpsync: the Genesis contract is not met in {target} ({} problem(s)); nothing was created:",
                problems.len()
            );
            for problem in &problems {
                eprintln!("  - {problem}");
            }
            eprintln!(
                "A district whose schema differs maps it onto the contract with SQL views \
                 (see README \"Install at a district\" and migrations/*/2026-11-26-000001_genesis_contract/up.sql)."
            );
            Ok(exit::FAILURE)
        }
    }
}
