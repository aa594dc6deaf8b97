//! `cpsync report --run ID [--resend]`: rebuilds a nightly run's report
//! files (HTML, CSVs, summary) from the report the run stored beside them
//! (`-report.json`), then sends its email if it was never sent (after a
//! mail failure, say), or again with `--resend`. Nothing is reconciled
//! again: the report says what that run found and did.

use super::nightly_report::{self, Prepared};
use super::{exit, Context};
use crate::report::{stored_report, write_report_files};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 rebuilt (and sent, or already sent), 1 the run has no stored
report in the [reports] folder, or it could not be written or sent.")]
pub struct Args {
    /// The nightly run whose report to rebuild (see `cpsync runs`).
    #[arg(long, value_name = "ID")]
    run: i64,
    /// Email it again even if it was already sent.
    #[arg(long)]
    resend: bool,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let dir = &context.config.reports.dir;
    let Some(report) = stored_report(dir, args.run)? else {
        eprintln!(
            "cpsync: run {} has no stored report in {} (the [reports] folder); only nightly runs that wrote their report there can be rebuilt",
            args.run,
            dir.display()
        );
        return Ok(exit::FAILURE);
    };
    nightly_report::check_mail_settings(context)?;
    let mut conn = context.connect()?;
    let files = write_report_files(dir, &report)?;
    let prepared = Prepared { report, files };
    let delivery = nightly_report::deliver(context, &mut conn, &prepared, args.resend)?;
    out!("{}", nightly_report::describe(&prepared.files, &delivery));
    Ok(exit::OK)
}
