//! `cpsync lock status` and `cpsync lock release --force`: who holds the
//! district lock and what that process is now; removing a row its holder
//! left behind, never one whose holder is demonstrably alive on this host.

use serde_json::json;

use super::{exit, Context};
use crate::db::lock::{self, Holder, LockStatus, Release, DISTRICT_LOCK};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Who holds the district lock, since when, and whether that process
    /// still runs.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the lock row a dead, replaced or remote process left behind.
    /// Refused while the holder is demonstrably alive on this host.
    Release {
        /// Required: says you checked that no cpsync run is active (on any
        /// host sharing this database).
        #[arg(long, required = true)]
        force: bool,
    },
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    match args.action {
        Action::Status { json } => {
            let found = lock::status(&context.database_url, DISTRICT_LOCK)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&status_json(&found))?);
            } else {
                out!("{}", status_text(&found));
            }
            Ok(exit::OK)
        }
        Action::Release { force } => {
            debug_assert!(force, "clap requires --force");
            release(context)
        }
    }
}

fn release(context: &Context) -> anyhow::Result<u8> {
    match lock::release_forced(&context.database_url, DISTRICT_LOCK)? {
        Release::NotHeld => {
            out!("the district lock is free; nothing to release");
            Ok(exit::OK)
        }
        Release::Released(holder) => {
            out!("released the district lock held by {}", holder.describe());
            Ok(exit::OK)
        }
        Release::Refused { holder, reason } => {
            let who = holder
                .map(|h| h.describe())
                .unwrap_or_else(|| "a live session".to_string());
            eprintln!("cpsync: refusing to release the district lock held by {who}: {reason}");
            Ok(exit::LOCKED)
        }
    }
}

fn holder_json(holder: &Holder) -> serde_json::Value {
    json!({
        "holder": holder.holder,
        "host": holder.host(),
        "pid": holder.pid,
        "run_id": holder.run_id,
        "acquired_at": holder.acquired_at,
        "found": holder.found.as_str(),
        "detail": holder.found.describe(holder.pid),
        "releasable": holder.releasable(),
    })
}

fn status_json(status: &LockStatus) -> serde_json::Value {
    json!({
        "name": status.name,
        "held": status.held(),
        "postgresql_session_holds": status.session_holds,
        "row": status.holder.as_ref().map(holder_json),
    })
}

fn status_text(status: &LockStatus) -> String {
    let mut text = match (&status.holder, status.held()) {
        (None, false) => format!("the {} lock is free", status.name),
        (None, true) => format!(
            "the {} lock is held by a live PostgreSQL session (no row recorded)",
            status.name
        ),
        (Some(holder), held) => {
            let state = if held { "held" } else { "free (stale row)" };
            let mut line = format!("the {} lock is {state}: {}", status.name, holder.describe());
            if holder.releasable() {
                line.push_str(
                    "\nif no cpsync run is active, clear it with `cpsync lock release --force`",
                );
            }
            line
        }
    };
    if status.session_holds == Some(false) && status.holder.is_some() {
        text.push_str("\n(no PostgreSQL session holds the lock: the next run takes it over)");
    }
    text
}
