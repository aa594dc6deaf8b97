//! `cpsync migrate`: create or upgrade the schema, show its status, or take
//! it all the way down (for a clean re-install; asks for `--yes`).

use anyhow::{bail, Context as _};

use super::{exit, Context};
use crate::db::{migrate, settings};

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
    keep_stored_api_key(context, &mut conn, args.move_api_key_to.as_deref())?;
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
