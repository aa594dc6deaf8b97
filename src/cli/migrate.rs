//! `cpsync migrate`: create or upgrade the schema, show its status, or take
//! it all the way down (for a clean re-install; asks for `--yes`). Beside a
//! district's real Genesis, `--integration-only` checks the Genesis contract
//! and creates only cpsync's own objects; nothing ever drops what cpsync did
//! not create.

use anyhow::{bail, Context as _};

use super::{exit, Context};
use crate::db::{migrate, settings, DbConnection};

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
    /// Upgrading an install whose API key is stored in the database (older
    /// cpsync): write that key to this new owner-only file first (never
    /// replacing a file), then point the config's api_key at it.
    #[arg(long, value_name = "FILE")]
    move_api_key_to: Option<std::path::PathBuf>,
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
    keep_stored_api_key(context, &mut conn, args.move_api_key_to.as_deref())?;
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
                 no Genesis object created or changed apart from cpsync's outbox triggers \
                 on student_fees, fee_transactions and student_guardians",
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

/// The migration that removes a plain API key an older cpsync stored.
const KEY_REMOVING_MIGRATION: &str = "2026-11-29-000018_api_key_not_stored";

/// Before the migration that removes a plain API key stored by an older
/// cpsync: the key must also be where cpsync now reads it, or it would be
/// lost. Passes when the configured source holds the same key; with
/// `--move-api-key-to FILE` writes it there (a new 0600 file); otherwise
/// refuses, naming what to do, and nothing is migrated.
fn keep_stored_api_key(
    context: &Context,
    conn: &mut crate::db::DbConnection,
    move_to: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let states = migrate::status(conn)?;
    let removing_pending = states
        .iter()
        .any(|m| !m.applied && m.name == KEY_REMOVING_MIGRATION);
    let settings_exist = !states
        .iter()
        .any(|m| !m.applied && m.name.ends_with("_integration"));
    if !removing_pending || !settings_exist {
        return Ok(());
    }
    let Some(stored) = settings::legacy_plain_api_key(conn)? else {
        return Ok(());
    };
    let stored_fingerprint = settings::fingerprint(&stored);
    if let Some(path) = move_to {
        crate::files::write_new_private(path, format!("{}\n", stored.expose()).as_bytes())
            .with_context(|| format!("writing the stored API key to {}", path.display()))?;
        out!(
            "the API key stored in the database (fingerprint {stored_fingerprint}) was written to {} (mode 0600); point [community_pass] api_key = {{ file = \"{}\" }} at it",
            path.display(),
            path.display()
        );
        return Ok(());
    }
    let source = context.api_key_source();
    match source.load() {
        Ok(key) if key == stored => {
            out!(
                "the API key stored in the database (fingerprint {stored_fingerprint}) is also in the {source}: removing it from the database"
            );
            Ok(())
        }
        Ok(key) => bail!(
            "the database holds a Community Pass API key (fingerprint {stored_fingerprint}) that this \
             version no longer stores, and the {source} holds a different one (fingerprint {}); \
             nothing was migrated. Keep the stored key with `cpsync migrate --move-api-key-to FILE` \
             (a new owner-only file) and decide which key to configure, then run migrate again",
            settings::fingerprint(&key)
        ),
        Err(error) => bail!(
            "the database holds the Community Pass API key (fingerprint {stored_fingerprint}) and \
             this version reads it only from the {source}, which has none ({error}); nothing was \
             migrated. Put the key there first, or let cpsync write it: `cpsync migrate \
             --move-api-key-to /etc/cpsync/api-key` (a new owner-only file), then set \
             [community_pass] api_key = {{ file = \"/etc/cpsync/api-key\" }}"
        ),
    }
}
