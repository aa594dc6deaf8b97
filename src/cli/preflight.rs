//! `cpsync preflight`: run before enabling the integration. Reads every
//! unmanaged fee from Community Pass and the Genesis fees that would be sent
//! under the setup policy, lets `preflight::assess` decide, and writes the
//! findings as CSV and as a self-contained HTML page (owner-only files) into
//! `--out` (default: the config's reports folder). Exit code 0 when clear to
//! enable, 3 when something needs a person first.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::NaiveDate;
use serde::Serialize;

use super::{exit, task, Context};
use crate::db::{genesis, settings};
use crate::domain::GenesisFee;
use crate::portal::all_unmanaged_fees;
use crate::preflight::{self, Findings};
use crate::setup::SetupState;
use crate::sync::utc_now;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit code 0: clear to enable. 3: unmanaged unpaid fees or likely duplicates
were found; purge them in Community Pass (and recreate the fees in Genesis)
before sending fees. Before the cutoff is set every fee date counts, unless
--cutoff previews one.")]
pub struct Args {
    /// Folder for the CSV and HTML files (default: [reports] dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Preview with this cutoff date instead of the stored one.
    #[arg(long, value_name = "DATE")]
    cutoff: Option<NaiveDate>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    clear_to_enable: bool,
    findings: &'a Findings,
    csv: &'a Path,
    html: &'a Path,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let setup = settings::load_setup(&mut conn)?;
    let portal = task::portal(context, &mut conn)?;
    let unmanaged =
        all_unmanaged_fees(&portal).context("reading unmanaged fees from Community Pass")?;
    let fees = genesis::load_fees(&mut conn, None)?;
    for rejected in &fees.rejected {
        eprintln!(
            "cpsync: warning: a Genesis fee row breaks the contract and is not checked: {rejected}"
        );
    }
    let to_send = would_be_sent(&setup, args.cutoff, &fees.records);
    let findings = preflight::assess(&unmanaged, &to_send);
    let now = utc_now();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| context.config.reports.dir.clone());
    let stem = format!("preflight-{}", now.format("%Y%m%dT%H%M%S"));
    let district = context.config.district.as_deref().unwrap_or("district");
    let csv_path = out.join(format!("{stem}.csv"));
    let html_path = out.join(format!("{stem}.html"));
    create_private_dir(&out)?;
    write_private(&csv_path, &preflight::to_csv(&findings, &unmanaged)?)?;
    write_private(
        &html_path,
        preflight::to_html(&findings, now, district).as_bytes(),
    )?;
    if args.json {
        let output = JsonOutput {
            clear_to_enable: findings.clear_to_enable(),
            findings: &findings,
            csv: &csv_path,
            html: &html_path,
        };
        out!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print_summary(&findings, &csv_path, &html_path, to_send.len());
    }
    Ok(if findings.clear_to_enable() {
        exit::OK
    } else {
        exit::NEEDS_REVIEW
    })
}

/// The Genesis fees the setup policy would send; without a cutoff (or a
/// `--cutoff` preview) every date counts, so nothing is missed.
fn would_be_sent(
    setup: &SetupState,
    cutoff: Option<NaiveDate>,
    fees: &[GenesisFee],
) -> Vec<GenesisFee> {
    let mut policy = setup.policy();
    policy.cutoff = cutoff.or(policy.cutoff).or(Some(NaiveDate::MIN));
    fees.iter()
        .filter(|f| policy.eligibility(f).is_ok())
        .cloned()
        .collect()
}

fn print_summary(findings: &Findings, csv: &Path, html: &Path, checked: usize) {
    out!(
        "preflight: {} unmanaged unpaid fee(s) in Community Pass, {} likely duplicate group(s) (checked against {checked} Genesis fee(s) that would be sent)",
        findings.unmanaged_unpaid.len(),
        findings.duplicates.len()
    );
    for fee in &findings.unmanaged_unpaid {
        out!(
            "  unmanaged {} patron {} {:?} ${} (${} owing)",
            fee.vendor_fee_id,
            fee.patron_id,
            fee.description,
            fee.amount,
            fee.balance
        );
    }
    for group in &findings.duplicates {
        let genesis: Vec<String> = group.genesis.iter().map(|f| f.to_string()).collect();
        out!(
            "  duplicate student {} {:?} ${}: Community Pass {} / Genesis {}",
            group.student_id,
            group.description,
            group.amount,
            group.unmanaged.join(", "),
            if genesis.is_empty() {
                "-".to_string()
            } else {
                genesis.join(", ")
            }
        );
    }
    out!("written: {} and {}", csv.display(), html.display());
    if findings.clear_to_enable() {
        out!("clear to enable");
    } else {
        out!("not clear to enable: resolve these in Community Pass first");
    }
}

/// Creates the output folder (and parents) 0700 when missing.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    crate::files::create_private_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes one file owner-only and atomically (`files::write_private`): it
/// holds student data.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::files::write_private(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
