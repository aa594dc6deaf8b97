//! `cpsync setup`: the integration's setup, stored in the database and taken
//! in the handbook's order: API key → categories → Test Pull and Test Push →
//! cutoff date. A step asked for out of order is refused with the missing
//! step named. Every change is audited. The API key is never shown nor
//! stored: `setup api-key` reads it from its configured file or environment
//! variable, checks it with a read-only call and records its fingerprint.

use anyhow::{anyhow, bail, Context as _};
use chrono::NaiveDate;
use std::collections::BTreeSet;

use super::{exit, task, Context};
use crate::db::{genesis, outbox, settings, tasks, DbConnection};
use crate::portal::CommunityPass;
use crate::setup::{CategorySelection, KeyChange, PatronIdRule, SetupState, SetupStep};
use crate::sync::{push, utc_now};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    step: Step,
}

#[derive(Debug, clap::Subcommand)]
enum Step {
    /// Show every setting (the API key only as a fingerprint, where it is
    /// read from and whether it is the one recorded) and the next step.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Check the Community Pass API key from its configured file or
    /// environment variable (a read-only call) and record its fingerprint
    /// (never the key). Run it first, and again after rotating the key.
    #[command(after_help = API_KEY_HELP)]
    ApiKey,
    /// Choose the fee categories sent (default: all).
    Categories(CategoryArgs),
    /// Exclude whole schools from sending (or include them again).
    Schools(SchoolArgs),
    /// What identifies the patron in Community Pass.
    PatronId {
        #[arg(value_enum)]
        rule: PatronIdRule,
    },
    /// Test Pull: a read-only call to Community Pass.
    TestPull,
    /// Test Push: a harmless write that Community Pass echoes and discards.
    TestPush,
    /// Only fees dated on or after DATE are sent ("import fines created after").
    Cutoff { date: NaiveDate },
    /// Parent portal options.
    Portal(PortalArgs),
    /// Switch a task on or off (send_fees, get_payments, get_balances,
    /// nightly_sync, demographic_export).
    Tasks {
        #[arg(value_parser = ["enable", "disable"])]
        switch: String,
        name: String,
    },
}

const API_KEY_HELP: &str = "\
The key is read from [community_pass] api_key = { file = \"...\" } or { env = \"...\" }
in the config; without one, from the file named by CPSYNC_API_KEY_FILE, else from
CPSYNC_API_KEY. It never goes on a command line or into the database.

Examples:
  install -m 0640 -o root -g cpsync /dev/null /etc/cpsync/community-pass-api-key
  editor /etc/cpsync/community-pass-api-key                 paste the key Community Pass issued
  cpsync --config /etc/cpsync/cpsync.toml setup api-key     check it, record its fingerprint
  cpsync --config /etc/cpsync/cpsync.toml setup show        which source, and does it match

Rotation: put the new key in the same file (or variable), then run `setup api-key`
again. A new key of the same Community Pass district keeps Test Pull and Test Push;
a key of another district needs both again. Until then every command that calls
Community Pass refuses, naming both fingerprints.

Exit codes: 0 recorded, 1 no key, key refused by Community Pass, or no URL.";

#[derive(Debug, clap::Args)]
struct CategoryArgs {
    /// List the FEE_CATEGORY codes and whether each is selected.
    #[arg(long)]
    list: bool,
    /// Send every category (the default).
    #[arg(long, conflicts_with_all = ["only", "include", "exclude"])]
    all: bool,
    /// Send only these codes (comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Add these codes to the selection.
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
    /// Remove these codes from the selection.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SchoolArgs {
    /// Exclude these school codes (comma separated).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Include these school codes again.
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct PortalArgs {
    #[arg(long)]
    vendor_url: Option<String>,
    #[arg(long)]
    link_text: Option<String>,
    #[arg(long)]
    show_balance: Option<bool>,
    #[arg(long)]
    lock_out_on_balance: Option<bool>,
    #[arg(long)]
    balance_message: Option<String>,
    #[arg(long)]
    payment_message: Option<String>,
    /// Keep the portal open while the fines' due dates have not passed.
    #[arg(long)]
    grace_until_due: Option<bool>,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let state = settings::load_setup(&mut conn)?;
    match args.step {
        Step::Show { json } => show(context, &mut conn, &state, json),
        Step::ApiKey => api_key(context, &mut conn),
        Step::Categories(c) => categories(&mut conn, state, c),
        Step::Schools(s) => schools(&mut conn, state, s),
        Step::PatronId { rule } => patron_id(&mut conn, state, rule),
        Step::TestPull => connection_test(context, &mut conn, state, SetupStep::TestPull),
        Step::TestPush => connection_test(context, &mut conn, state, SetupStep::TestPush),
        Step::Cutoff { date } => cutoff(&mut conn, state, date),
        Step::Portal(p) => portal(&mut conn, state, p),
        Step::Tasks { switch, name } => switch_task(&mut conn, &switch, &name),
    }
}

/// A new patron id rule changes who is billed for fees already sent: every
/// sent fee is queued, and Send Fees pushes those whose patron changed.
fn patron_id(
    conn: &mut DbConnection,
    state: SetupState,
    rule: crate::setup::PatronIdRule,
) -> anyhow::Result<u8> {
    let changed = rule != state.patron_id;
    let code = save(
        conn,
        SetupState {
            patron_id: rule,
            ..state
        },
        "patron id",
    )?;
    if changed {
        let sent = push::sent_fee_ids(conn)?;
        let queued = outbox::enqueue(conn, &sent, "patron_rule", utc_now())?;
        out!(
            "{queued} sent fee(s) queued: the next send-fees (or watch) pushes those whose patron changed"
        );
    }
    Ok(code)
}

/// Saves a change of the sending policy and says what it does to fees
/// already sent: how many it freezes, and the frozen ones it sends again.
fn save_policy(
    conn: &mut DbConnection,
    old: &SetupState,
    state: SetupState,
    what: &str,
) -> anyhow::Result<u8> {
    let change = push::policy_change(conn, old, &state)?;
    let code = save(conn, state, what)?;
    if change.frozen > 0 {
        out!(
            "{} sent fee(s) are now frozen: never pushed again, their Community Pass payments still posted; the nightly lists one only if it changes or the two sides disagree",
            change.frozen
        );
    }
    if !change.thawed.is_empty() {
        let queued = outbox::enqueue(conn, &change.thawed, "policy_change", utc_now())?;
        out!("{queued} frozen fee(s) are sent again and were queued for Send Fees");
    }
    Ok(code)
}

fn save(conn: &mut DbConnection, state: SetupState, what: &str) -> anyhow::Result<u8> {
    let changed = settings::save_setup(conn, &state, utc_now())?;
    out!("{what}: saved ({changed} setting(s) changed)");
    print_next(&state);
    Ok(exit::OK)
}

fn print_next(state: &SetupState) {
    match state.next_step() {
        Some(step) => out!("next setup step: {step}"),
        None => out!(
            "setup is complete: fees are sent from {}",
            state.cutoff.map(|d| d.to_string()).unwrap_or_default()
        ),
    }
}

/// Where the API key is read, its fingerprint there, and whether it is the
/// one recorded: what `setup show` says about the key.
#[derive(serde::Serialize)]
struct KeyInUse {
    source: String,
    /// The fingerprint of the key the source holds now; none if unreadable.
    fingerprint: Option<String>,
    /// Why the source could not be read.
    error: Option<String>,
    /// The key in the source is the one setup recorded.
    matches_recorded: bool,
}

fn key_in_use(context: &Context, state: &SetupState) -> KeyInUse {
    let source = context.api_key_source();
    let (fingerprint, error) = match source.load() {
        Ok(key) => (Some(settings::fingerprint(&key)), None),
        Err(error) => (None, Some(error.to_string())),
    };
    KeyInUse {
        source: source.to_string(),
        matches_recorded: fingerprint.is_some() && fingerprint == state.api_key_fingerprint,
        fingerprint,
        error,
    }
}

fn describe_key(state: &SetupState, in_use: &KeyInUse) -> String {
    let recorded = match (&state.api_key_fingerprint, &state.api_key_set_at) {
        (Some(f), Some(at)) => format!("recorded {f} ({at} UTC)"),
        (Some(f), None) => format!("recorded {f}"),
        (None, _) => "none recorded".to_string(),
    };
    let now = match (&in_use.fingerprint, &in_use.error) {
        (Some(f), _) if in_use.matches_recorded => format!("{f}, matches"),
        (Some(f), _) if state.api_key_fingerprint.is_some() => {
            format!("{f}, DOES NOT MATCH: run `cpsync setup api-key` after a rotation")
        }
        (Some(f), _) => format!("{f}, not recorded yet: run `cpsync setup api-key`"),
        (None, Some(error)) => format!("unreadable: {error}"),
        (None, None) => "unreadable".to_string(),
    };
    format!("{recorded}; read from the {}: {now}", in_use.source)
}

fn show(
    context: &Context,
    conn: &mut DbConnection,
    state: &SetupState,
    json: bool,
) -> anyhow::Result<u8> {
    let in_use = key_in_use(context, state);
    let task_states: Vec<(String, bool)> = [
        "send_fees",
        "get_payments",
        "get_balances",
        "nightly_sync",
        "demographic_export",
    ]
    .iter()
    .map(|t| Ok((t.to_string(), tasks::is_enabled(conn, t)?)))
    .collect::<anyhow::Result<_>>()?;
    if json {
        let value = serde_json::json!({ "setup": state, "api_key_in_use": in_use, "tasks": task_states, "next_step": state.next_step() });
        out!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(exit::OK);
    }
    let when = |t: &Option<chrono::NaiveDateTime>| {
        t.map(|t| format!("succeeded {t} UTC"))
            .unwrap_or_else(|| "not yet".into())
    };
    out!("API key:          {}", describe_key(state, &in_use));
    out!(
        "categories:       {} {}",
        describe_categories(&state.categories),
        if state.categories_confirmed_at.is_some() {
            ""
        } else {
            "(not confirmed)"
        }
    );
    out!(
        "excluded schools: {}",
        if state.excluded_schools.is_empty() {
            "none".to_string()
        } else {
            state
                .excluded_schools
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    out!("patron id:        {}", state.patron_id.as_str());
    out!("Test Pull:        {}", when(&state.test_pull_at));
    out!("Test Push:        {}", when(&state.test_push_at));
    out!(
        "cutoff date:      {}",
        state
            .cutoff
            .map(|d| d.to_string())
            .unwrap_or_else(|| "not set".into())
    );
    out!(
        "portal:           {}",
        serde_json::to_string(&state.portal)?
    );
    for (name, enabled) in task_states {
        out!(
            "task {name:<19} {}",
            if enabled { "enabled" } else { "disabled" }
        );
    }
    print_next(state);
    Ok(exit::OK)
}

fn describe_categories(selection: &CategorySelection) -> String {
    match selection {
        CategorySelection::All => "all".to_string(),
        CategorySelection::Only(codes) => codes.iter().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// Reads the key from its source, checks it with a Test Pull (read-only)
/// and records its fingerprint, never the key.
fn api_key(context: &Context, conn: &mut DbConnection) -> anyhow::Result<u8> {
    let source = context.api_key_source();
    let key = task::load_api_key(&source)?;
    let portal =
        crate::portal::http::HttpPortal::new(task::portal_config_with_key(context, key.clone())?)
            .context("building the Community Pass client")?;
    let check = portal.test_pull().map_err(|e| {
        anyhow!(
            "the API key in the {source} (fingerprint {}) was not accepted: {e}; nothing was recorded",
            settings::fingerprint(&key)
        )
    })?;
    let (state, change) = settings::record_api_key(conn, &key, &check.district, utc_now())?;
    let fingerprint = settings::fingerprint(&key);
    let what = match change {
        KeyChange::First => "recorded",
        KeyChange::Same => "unchanged",
        KeyChange::Rotated => "rotated",
        KeyChange::OtherDistrict => "replaced",
    };
    out!(
        "API key {what}: the {source} holds fingerprint {fingerprint}, checked with Community Pass district {:?}; the key itself is not stored",
        check.district
    );
    match change {
        KeyChange::Rotated => out!(
            "same district as before: Test Pull and Test Push still stand; the next incremental nightly runs in full"
        ),
        KeyChange::OtherDistrict => out!(
            "a key of another (or unrecorded) district: run Test Pull and Test Push again"
        ),
        KeyChange::First | KeyChange::Same => {}
    }
    print_next(&state);
    Ok(exit::OK)
}

fn categories(
    conn: &mut DbConnection,
    mut state: SetupState,
    args: CategoryArgs,
) -> anyhow::Result<u8> {
    let old = state.clone();
    let known: BTreeSet<String> = genesis::load_category_codes(conn)?.into_iter().collect();
    if args.list {
        for code in &known {
            out!(
                "{} {code}",
                if state.categories.includes(code) {
                    "[x]"
                } else {
                    "[ ]"
                }
            );
        }
        return Ok(exit::OK);
    }
    state.allow(SetupStep::Categories)?;
    let unknown: Vec<&String> = args
        .only
        .iter()
        .chain(&args.include)
        .chain(&args.exclude)
        .filter(|c| !known.contains(*c))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown fee category code(s): {}",
            unknown
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut selected: BTreeSet<String> = match (&state.categories, args.all, args.only.is_empty()) {
        (_, true, _) => known.clone(),
        (_, false, false) => args.only.iter().cloned().collect(),
        (CategorySelection::All, _, _) => known.clone(),
        (CategorySelection::Only(codes), _, _) => codes.clone(),
    };
    selected.extend(args.include.iter().cloned());
    for code in &args.exclude {
        selected.remove(code);
    }
    state.categories = if args.all
        || (selected == known
            && matches!(state.categories, CategorySelection::All)
            && args.exclude.is_empty())
    {
        CategorySelection::All
    } else {
        CategorySelection::Only(selected)
    };
    state.categories_confirmed_at = Some(utc_now());
    out!("categories: {}", describe_categories(&state.categories));
    save_policy(conn, &old, state, "categories")
}

fn schools(conn: &mut DbConnection, mut state: SetupState, args: SchoolArgs) -> anyhow::Result<u8> {
    let old = state.clone();
    let known: BTreeSet<String> = genesis::load_schools(conn)?
        .into_iter()
        .map(|s| s.code)
        .collect();
    if let Some(unknown) = args
        .exclude
        .iter()
        .chain(&args.include)
        .find(|c| !known.contains(*c))
    {
        bail!("unknown school code {unknown}");
    }
    state.excluded_schools.extend(args.exclude.iter().cloned());
    for code in &args.include {
        state.excluded_schools.remove(code);
    }
    save_policy(conn, &old, state, "excluded schools")
}

fn connection_test(
    context: &Context,
    conn: &mut DbConnection,
    mut state: SetupState,
    step: SetupStep,
) -> anyhow::Result<u8> {
    state.allow(step)?;
    let portal = task::portal(context, conn)?;
    let check = match step {
        SetupStep::TestPull => portal.test_pull(),
        _ => portal.test_push(),
    }
    .map_err(|e| {
        anyhow!(
            "{} failed: {e}",
            if step == SetupStep::TestPull {
                "Test Pull"
            } else {
                "Test Push"
            }
        )
    })?;
    let now = utc_now();
    if step == SetupStep::TestPull {
        state.test_pull_at = Some(now);
    } else {
        state.test_push_at = Some(now);
    }
    out!(
        "{step:?} succeeded: Community Pass district {:?}, server time {}",
        check.district,
        check.server_time
    );
    save(conn, state, "connection test")
}

fn cutoff(conn: &mut DbConnection, mut state: SetupState, date: NaiveDate) -> anyhow::Result<u8> {
    state.allow(SetupStep::Cutoff)?;
    let old = state.clone();
    state.cutoff = Some(date);
    let change = push::policy_change(conn, &old, &state)?;
    settings::save_setup(conn, &state, utc_now())?;
    let eligible = push::eligible_fee_ids(conn, &state, None)?;
    let queued = outbox::enqueue(conn, &eligible, "cutoff_set", utc_now())?;
    out!("cutoff date {date} saved; {queued} existing fee(s) dated on or after it are queued for Send Fees");
    if change.frozen > 0 {
        out!(
            "{} sent fee(s) dated before it are now frozen: never pushed again, their Community Pass payments still posted; the nightly lists one only if it changes or the two sides disagree",
            change.frozen
        );
    }
    print_next(&state);
    Ok(exit::OK)
}

fn portal(conn: &mut DbConnection, mut state: SetupState, args: PortalArgs) -> anyhow::Result<u8> {
    let options = &mut state.portal;
    if let Some(url) = args.vendor_url {
        if !url.starts_with("https://") {
            bail!("the vendor payment URL must start with https://");
        }
        options.vendor_url = Some(url);
    }
    if let Some(v) = args.link_text {
        options.link_text = v;
    }
    if let Some(v) = args.show_balance {
        options.show_balance = v;
    }
    if let Some(v) = args.lock_out_on_balance {
        options.lock_out_on_balance = v;
    }
    if let Some(v) = args.balance_message {
        options.balance_message = v;
    }
    if let Some(v) = args.payment_message {
        options.payment_message = v;
    }
    if let Some(v) = args.grace_until_due {
        options.grace_until_due = v;
    }
    save(conn, state, "portal options")
}

fn switch_task(conn: &mut DbConnection, switch: &str, name: &str) -> anyhow::Result<u8> {
    const TASKS: [&str; 5] = [
        "send_fees",
        "get_payments",
        "get_balances",
        "nightly_sync",
        "demographic_export",
    ];
    if !TASKS.contains(&name) {
        bail!("unknown task {name:?}; tasks are {}", TASKS.join(", "));
    }
    let enabled = switch == "enable";
    tasks::set_enabled(conn, name, enabled, utc_now())?;
    out!(
        "task {name} {}",
        if enabled { "enabled" } else { "disabled" }
    );
    Ok(exit::OK)
}
