//! `cpsync export`: the demographic export (task `demographic_export`).
//! Reads the Genesis snapshot, builds and checks the OneRoster files, then
//! writes them to a private folder (`--to DIR`), uploads them (`--sftp`), or
//! only shows what would be sent (`--dry-run`). Every run is recorded in run
//! history with its files, row counts, hashes and destination.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::NaiveDateTime;
use serde::Serialize;

use super::{exit, Context};
use crate::db::genesis;
use crate::db::runs::{self, RunCounts, RunStatus};
use crate::db::{tasks, DbConnection};
use crate::export::sftp::{self, SftpTarget, UploadReport};
use crate::export::{self, check, local, Bundle, FileSummary, Omitted, Snapshot, TASK_NAME};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the files into a new owner-only folder under DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "sftp", required_unless_present_any = ["sftp", "dry_run"])]
    to: Option<PathBuf>,
    /// Upload the files to the [sftp] server of the config file.
    #[arg(long)]
    sftp: bool,
    /// Build and check the files and show what would be sent; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// What started this run, as recorded in run history.
    #[arg(long, default_value = "manual", value_parser = ["manual", "nightly"])]
    trigger: String,
}

/// Where the files go, decided before anything is read.
enum Destination {
    Folder(PathBuf),
    Sftp(Box<SftpTarget>),
    Nowhere,
}

/// What run history records about one export.
#[derive(Debug, Serialize)]
struct Summary {
    dry_run: bool,
    students_read: usize,
    guardians_read: usize,
    rejected_rows: Vec<String>,
    omitted: Omitted,
    files: Vec<FileSummary>,
    destination: DestinationSummary,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum DestinationSummary {
    Folder { path: String },
    Sftp(UploadReport),
    DryRun { would_send_to: String },
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    if !tasks::is_enabled(&mut conn, TASK_NAME)? {
        out!("the {TASK_NAME} task is switched off (cp_tasks); nothing was exported");
        return Ok(exit::OK);
    }
    let destination = destination(context, &args)?;
    context.district()?;
    let started = chrono::Utc::now().naive_utc();
    let run_id = runs::start_run(&mut conn, TASK_NAME, &args.trigger, args.dry_run, started)?;
    let ended = export(&mut conn, context, &args, &destination, run_id, started);
    let result = match ended {
        Ok(summary) => finish(&mut conn, run_id, &summary),
        Err(error) => {
            let message = format!("{error:#}");
            let now = chrono::Utc::now().naive_utc();
            let recorded = runs::finish_run(
                &mut conn,
                run_id,
                RunStatus::Failed,
                &RunCounts::default(),
                None,
                Some(&message),
                now,
            );
            if let Err(db_error) = recorded {
                tracing::error!(%db_error, "could not record the failed export");
            }
            Err(error.context(format!("export run {run_id} failed")))
        }
    };
    super::task::write_metrics(&mut conn);
    result
}

fn destination(context: &Context, args: &Args) -> anyhow::Result<Destination> {
    if let Some(dir) = &args.to {
        return Ok(Destination::Folder(dir.clone()));
    }
    if !args.sftp {
        return Ok(Destination::Nowhere);
    }
    let config = context
        .config
        .sftp
        .as_ref()
        .context("--sftp needs an [sftp] section in the config file (--config PATH)")?;
    Ok(Destination::Sftp(Box::new(SftpTarget::from_config(
        config,
    )?)))
}

fn export(
    conn: &mut DbConnection,
    context: &Context,
    args: &Args,
    destination: &Destination,
    run_id: i64,
    started: NaiveDateTime,
) -> anyhow::Result<Summary> {
    let (snapshot, rejected_rows) = read_snapshot(conn, context.district()?)?;
    let bundle = export::build(&snapshot)?;
    check::check(&bundle)?;
    let destination = if args.dry_run {
        DestinationSummary::DryRun {
            would_send_to: describe(destination),
        }
    } else {
        deliver(destination, &bundle, run_id, started)?
    };
    Ok(Summary {
        dry_run: args.dry_run,
        students_read: snapshot.students.len(),
        guardians_read: snapshot.guardians.len(),
        rejected_rows,
        omitted: bundle.omitted.clone(),
        files: bundle.summaries(),
        destination,
    })
}

/// The Genesis side as the export needs it, and the rows that were rejected.
fn read_snapshot(
    conn: &mut DbConnection,
    district_name: &str,
) -> anyhow::Result<(Snapshot, Vec<String>)> {
    let schools = genesis::load_schools(conn)?;
    let students = genesis::load_students(conn)?;
    let guardians = genesis::load_guardians(conn)?;
    let links = genesis::load_guardian_links(conn)?;
    let rejected = students.rejected.iter().map(ToString::to_string).collect();
    let snapshot = Snapshot {
        district_name: district_name.to_string(),
        schools,
        students: students.records,
        guardians,
        links,
    };
    Ok((snapshot, rejected))
}

fn describe(destination: &Destination) -> String {
    match destination {
        Destination::Folder(dir) => format!("a new folder under {}", dir.display()),
        Destination::Sftp(target) => format!(
            "sftp://{}@{}/{}",
            target.username,
            target.label(),
            sftp::dated_dir(&target.remote_dir, run_date())
        ),
        Destination::Nowhere => "nowhere (no --to or --sftp given)".to_string(),
    }
}

/// The run date that names the remote folder: the district's local date.
fn run_date() -> chrono::NaiveDate {
    chrono::Local::now().date_naive()
}

fn deliver(
    destination: &Destination,
    bundle: &Bundle,
    run_id: i64,
    started: NaiveDateTime,
) -> anyhow::Result<DestinationSummary> {
    match destination {
        Destination::Folder(parent) => {
            let folder = local::folder_name(started, run_id);
            let path = local::write_bundle(parent, &folder, bundle)?;
            Ok(DestinationSummary::Folder {
                path: path.display().to_string(),
            })
        }
        Destination::Sftp(target) => {
            let report = sftp::upload(
                target,
                run_date(),
                &bundle.files,
                &sftp::retry_policy_default(),
            )?;
            Ok(DestinationSummary::Sftp(report))
        }
        Destination::Nowhere => anyhow::bail!("nowhere to send the files: give --to DIR or --sftp"),
    }
}

fn finish(conn: &mut DbConnection, run_id: i64, summary: &Summary) -> anyhow::Result<u8> {
    let needs_review = summary.rejected_rows.len() + summary.omitted.unresolved_links;
    let counts = RunCounts {
        records_in: (summary.students_read + summary.guardians_read) as i64,
        matched: 0,
        corrected: 0,
        needs_review: needs_review as i64,
    };
    let status = if needs_review > 0 {
        RunStatus::NeedsReview
    } else {
        RunStatus::Succeeded
    };
    let json = serde_json::to_string(summary)?;
    let now = chrono::Utc::now().naive_utc();
    runs::finish_run(conn, run_id, status, &counts, Some(&json), None, now)?;
    print_summary(run_id, summary);
    Ok(if needs_review > 0 {
        exit::NEEDS_REVIEW
    } else {
        exit::OK
    })
}

fn print_summary(run_id: i64, summary: &Summary) {
    out!("export run {run_id}: OneRoster 1.1 CSV, bulk");
    for file in &summary.files {
        out!(
            "  {:<17} {:>9} rows {:>12} bytes  sha256 {}",
            file.name,
            file.rows,
            file.bytes,
            file.sha256
        );
    }
    match &summary.destination {
        DestinationSummary::Folder { path } => out!("written to {path}"),
        DestinationSummary::Sftp(report) => out!(
            "uploaded to {}:{}:{} ({} attempt{}), sizes and SHA-256 verified on the server",
            report.host,
            report.port,
            report.remote_dir,
            report.attempts,
            if report.attempts == 1 { "" } else { "s" }
        ),
        DestinationSummary::DryRun { would_send_to } => {
            out!("dry run: files built and checked; nothing written; would send to {would_send_to}")
        }
    }
    if summary.omitted.guardians_without_students > 0 {
        out!(
            "  {} guardian(s) linked to no student were left out",
            summary.omitted.guardians_without_students
        );
    }
    if summary.omitted.unresolved_links > 0 {
        out!(
            "  needs review: {} link(s) name a missing student or guardian",
            summary.omitted.unresolved_links
        );
    }
    for rejected in &summary.rejected_rows {
        out!("  needs review: rejected {rejected}");
    }
}
