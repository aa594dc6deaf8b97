//! Writing a run's report files: the HTML report, the needs-review CSV and
//! the JSON summary, named by date and run id, owner-only (files 0600, a
//! folder we create 0700), each written to a temporary name and renamed so a
//! reader never sees half a file.

use std::path::{Path, PathBuf};

use super::{corrections_csv, render_html, review_csv, summary_json, ReportError, RunReport};

/// Where one run's files were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub html: PathBuf,
    pub csv: PathBuf,
    pub json: PathBuf,
    /// Every correction, values before → after.
    pub corrections_csv: PathBuf,
    /// The `RunReport` itself, for `cpsync report --run ID`.
    pub report_json: PathBuf,
}

impl ReportFiles {
    /// Where the run's `.eml` goes when there is no SMTP server.
    pub fn eml(&self) -> PathBuf {
        self.html.with_extension("eml")
    }
}

/// `cpsync-2026-11-26-run-42`: the common start of a run's file names.
pub fn report_file_stem(report: &RunReport) -> String {
    format!("cpsync-{}-run-{}", report.date(), report.run_id)
}

/// Renders the report, CSV and summary and writes them into `dir`.
pub fn write_report_files(dir: &Path, report: &RunReport) -> Result<ReportFiles, ReportError> {
    ensure_private_dir(dir)?;
    let stem = report_file_stem(report);
    let files = ReportFiles {
        html: dir.join(format!("{stem}.html")),
        csv: dir.join(format!("{stem}-needs-review.csv")),
        json: dir.join(format!("{stem}-summary.json")),
        corrections_csv: dir.join(format!("{stem}-corrections.csv")),
        report_json: dir.join(format!("{stem}-report.json")),
    };
    write_private_file(&files.html, render_html(report)?.as_bytes())?;
    write_private_file(&files.csv, &review_csv(report)?)?;
    write_private_file(&files.corrections_csv, &corrections_csv(report)?)?;
    let summary = serde_json::to_vec_pretty(&summary_json(report))
        .map_err(|e| write_error(&files.json, &e))?;
    write_private_file(&files.json, &summary)?;
    let stored = serde_json::to_vec(report).map_err(|e| write_error(&files.report_json, &e))?;
    write_private_file(&files.report_json, &stored)?;
    Ok(files)
}

/// The `RunReport` a run stored beside its report in `dir`
/// (`cpsync-DATE-run-ID-report.json`), if any.
pub fn stored_report(dir: &Path, run_id: i64) -> Result<Option<RunReport>, ReportError> {
    let suffix = format!("-run-{run_id}-report.json");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let found = entries
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(&suffix));
    let Some(path) = found else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|e| write_error(&path, &e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| write_error(&path, &e))
}

/// Creates `dir` (and parents) owner-only if missing. An existing folder is
/// left as it is: the files in it are owner-only anyway.
fn ensure_private_dir(dir: &Path) -> Result<(), ReportError> {
    if dir.is_dir() {
        let mode = crate::files::mode_of(dir).unwrap_or(0);
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), "report folder is readable by others; report files are still owner-only");
        }
        return Ok(());
    }
    crate::files::create_private_dir_all(dir).map_err(|e| write_error(dir, &e))
}

/// Writes `bytes` to `path` owner-only (0600), atomically
/// (`files::write_private`).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::files::write_private(path, bytes).map_err(|error| write_error(path, &error))
}

fn write_error(path: &Path, error: &dyn std::fmt::Display) -> ReportError {
    ReportError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}
