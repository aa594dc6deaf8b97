//! `cpsync report --run ID [--resend]`: rebuilds a nightly run's report
//! files (HTML, CSVs, summary) from the report the run kept in the
//! database (names filled in again from Genesis), or for older runs from
//! the `-report.json` beside the files, then sends its email if it was
//! never sent (after a mail or folder failure, say), or again with
//! `--resend`. Nothing is reconciled
//! again: the report says what that run found and did.

use super::nightly_report::{self, Prepared};
use super::{exit, Context};
use crate::report::{stored_report, write_report_files};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 rebuilt (and sent, or already sent), 1 the run kept no
report, or it could not be written or sent.")]
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
    let mut conn = context.connect()?;
    // The report kept with the run first (names filled in from Genesis);
    // runs from before it was kept have only the file beside the report.
    let report = match nightly_report::kept_report(&mut conn, args.run)? {
        Some(report) => Some(report),
        None => stored_report(dir, args.run)?,
    };
    let Some(report) = report else {
        eprintln!(
            "cpsync: run {} kept no report (only nightly runs that built one can be rebuilt), and {} (the [reports] folder) has none either",
            args.run,
            dir.display()
        );
        return Ok(exit::FAILURE);
    };
    nightly_report::check_mail_settings(context)?;
    let files = write_report_files(dir, &report)?;
    let prepared = Prepared { report, files };
    let delivery = nightly_report::deliver(context, &mut conn, &prepared, args.resend)?;
    out!("{}", nightly_report::describe(&prepared.files, &delivery));
    Ok(exit::OK)
}
