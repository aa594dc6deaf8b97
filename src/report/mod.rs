//! The nightly report: what one reconciliation run found, fixed and left for a
//! person, rendered for the business administrator (HTML), for email (plain
//! text), for spreadsheets (the needs-review CSV) and for machines (JSON).
//!
//! The shell fills a plain `RunReport` and calls the pure renderers
//! (`render_html`, `render_text`, `review_csv`, `summary_json`); only
//! `write_report_files` and the `email` module touch the outside world.
//! Templates live in the top-level `reports/` folder and are embedded in the
//! binary, so a report renders the same wherever cpsync runs.
//!
//! **Architecture invariant:** the renderers read no database, clock or
//! secret; every value shown comes from the `RunReport`.
//!
//! # Use from the nightly run
//!
//! ```text
//! let (student_ids, fee_ids) = report::named_ids(&reconciliation.discrepancies);
//! // load StudentLabel / FeeLabel::of(&fee) / school names for those ids only
//! let history = db::runs::recent_runs(conn, Some("nightly_sync"), 31)?;
//! let report = RunReport { trend: report::trend_from_runs(&history), verdict:
//!     Verdict::from_reconciliation(&reconciliation, failed.len()), .. };
//! let files = report::write_report_files(&config.reports.dir, &report)?;
//! db::runs::finish_run(.., Some(&report::summary_json(&report).to_string()), ..)?;
//! report::email::deliver_report(conn, &report, &files, config.smtp.as_ref(),
//!     &config.reports, resend, now)?;
//! ```
//!
//! The trend reads `verdict` and `difference` back from `cp_runs.summary_json`,
//! so store `summary_json` there; the renderers add the current run to the
//! trend themselves.

mod csv_export;
pub mod email;
mod files;
mod format;
mod html;
mod labels;
pub mod sample;
mod summary;
mod text;
mod trend;
mod view;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::domain::{FeeId, GenesisFee, StudentId};
use crate::money::Money;
use crate::reconcile::{Discrepancy, Reconciliation, Scope};
pub use crate::review::ItemState as ReviewState;

pub use csv_export::{corrections_csv, neutralise_cell, review_csv};
pub use files::{
    report_file_stem, stored_report, write_private_file, write_report_files, ReportFiles,
};
pub use format::{format_duration_ms, format_money};
pub use html::{render_email_html, render_html};
pub use labels::{action_label, kind_label};
pub use summary::summary_json;
pub use text::render_text;
pub use trend::{trend_from_runs, TREND_RUNS_MAX};

/// Errors of rendering and writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report template {name} failed to render: {reason}")]
    Template { name: &'static str, reason: String },
    #[error("cannot write report file {path}: {reason}")]
    Write {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot write the needs-review CSV: {0}")]
    Csv(String),
}

/// The run's outcome in one word, shown first and in the email subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Both sides agreed; nothing was changed.
    InAgreement,
    /// The differences found were all corrected (or, in a dry run, would be).
    Corrected,
    /// Some items need a person (review items or corrections that failed).
    NeedsReview,
    /// The run did not finish.
    Failed,
    /// Corrections were sent, but a re-read found the sides still differ.
    NotConverged,
}

impl Verdict {
    /// The verdict of a finished run: review items or failed corrections
    /// make it `NeedsReview`, planned corrections `Corrected`.
    pub fn from_reconciliation(
        reconciliation: &Reconciliation,
        failed_corrections: usize,
    ) -> Verdict {
        Verdict::of_run(reconciliation, failed_corrections, 0)
    }

    /// `from_reconciliation`, where `not_converged` corrections (applied,
    /// yet still different on re-reading) make the run `NotConverged`.
    pub fn of_run(
        reconciliation: &Reconciliation,
        failed_corrections: usize,
        not_converged: usize,
    ) -> Verdict {
        let reviews = reconciliation.reviews().count();
        let others = reconciliation.discrepancies.len();
        Verdict::decide(reviews, failed_corrections, not_converged, others)
    }

    /// The verdict from the counts: `needs_review` discrepancies (credits
    /// on account not among them), failed and not-converged corrections,
    /// and the `discrepancies` found at all (credits not among them).
    pub fn decide(
        needs_review: usize,
        failed_corrections: usize,
        not_converged: usize,
        discrepancies: usize,
    ) -> Verdict {
        if not_converged > 0 {
            Verdict::NotConverged
        } else if needs_review > 0 || failed_corrections > 0 {
            Verdict::NeedsReview
        } else if discrepancies == 0 {
            Verdict::InAgreement
        } else {
            Verdict::Corrected
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InAgreement => "in_agreement",
            Verdict::Corrected => "corrected",
            Verdict::NeedsReview => "needs_review",
            Verdict::Failed => "failed",
            Verdict::NotConverged => "not_converged",
        }
    }

    /// Parses `as_str` back (for run history).
    pub fn parse(text: &str) -> Option<Verdict> {
        [
            Verdict::InAgreement,
            Verdict::Corrected,
            Verdict::NeedsReview,
            Verdict::Failed,
            Verdict::NotConverged,
        ]
        .into_iter()
        .find(|verdict| verdict.as_str() == text)
    }
}

/// A student as the report names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentLabel {
    /// Display name, e.g. "Rivera, Ana".
    pub name: String,
    /// The student's school code (a key of `RunReport::schools`).
    pub school: String,
}

/// A fee as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeLabel {
    /// The `FEE_CATEGORY` code.
    pub category: String,
    pub description: String,
}

impl FeeLabel {
    /// The label of a Genesis fee.
    pub fn of(fee: &GenesisFee) -> FeeLabel {
        FeeLabel {
            category: fee.category.clone(),
            description: fee.description.clone(),
        }
    }
}

/// The students and fees a run's report names: the shell loads labels
/// (`RunReport::students`, `fees`) for these only, so the report holds no
/// more student data than it needs.
pub fn named_ids(discrepancies: &[Discrepancy]) -> (BTreeSet<StudentId>, BTreeSet<FeeId>) {
    let students = discrepancies.iter().filter_map(|d| d.student_id).collect();
    let fees = discrepancies.iter().filter_map(|d| d.fee_id).collect();
    (students, fees)
}

/// A correction the shell tried and could not make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCorrection {
    pub discrepancy: Discrepancy,
    /// The error, one line, without secrets.
    pub error: String,
}

/// One phase of the run and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub elapsed_ms: u64,
}

/// One earlier run, for the 30-run trend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendPoint {
    pub run_id: i64,
    pub date: NaiveDate,
    pub verdict: Verdict,
    pub needs_review: u64,
    pub corrected: u64,
    /// Net balance due in Genesis minus in Community Pass, as found.
    pub difference: Money,
}

/// Everything one report shows. Plain data: the shell fills it, the
/// renderers only read it. Stored beside the report (`-report.json`), so
/// `cpsync report --run ID` can rebuild and resend it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub district: String,
    pub run_id: i64,
    pub started_at: NaiveDateTime,
    pub finished_at: NaiveDateTime,
    pub dry_run: bool,
    pub verdict: Verdict,
    /// What the run covered, e.g. "whole district, all dates" (`describe_scope`).
    pub scope_text: String,
    /// The run's scope itself (a scoped run says so in the email subject).
    pub scope: Scope,
    /// The core's answer, as found before corrections.
    pub reconciliation: Reconciliation,
    /// Each side's totals after this run's own corrections (a dry run: as
    /// they would be); the headline and the totals table show these.
    pub totals_after: Option<crate::reconcile::Totals>,
    /// The planned discrepancies whose correction was applied.
    pub corrected: Vec<Discrepancy>,
    pub failed_corrections: Vec<FailedCorrection>,
    pub phases: Vec<Phase>,
    /// Earlier runs and this one, oldest first (at most `TREND_RUNS_MAX`).
    pub trend: Vec<TrendPoint>,
    pub students: BTreeMap<StudentId, StudentLabel>,
    /// School code → school name.
    pub schools: BTreeMap<String, String>,
    pub fees: BTreeMap<FeeId, FeeLabel>,
    /// Why the run failed (for `Verdict::Failed`), one line, without secrets.
    pub error: Option<String>,
    /// The review queue behind the items and the credits on account.
    pub queue: QueueReport,
    /// What the run could not read (a malformed Community Pass record, a
    /// listing cut short), in words: what it covers was not judged, so the
    /// run never says "in agreement" about it.
    #[serde(default)]
    pub incomplete: Vec<String>,
}

/// The review queue as the report shows it (DESIGN.md §6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Credits on account (overpayments both systems agree on), not
    /// discrepancies unless older than `credit_review_after_days`.
    pub credits: Vec<CreditOnAccount>,
    pub credit_review_after_days: u32,
    /// The queue item behind each discrepancy needing a person, by item key
    /// (`review::item_key`); none for an item never stored.
    pub entries: BTreeMap<String, QueueEntry>,
    /// Items this run resolved automatically (their cause went away).
    pub resolved_by_run: usize,
    /// Corrections held for a person: refused for a reason a retry cannot
    /// fix (a handbook rule, or Community Pass said no), with why.
    pub held: Vec<FailedCorrection>,
}

/// The counts people see, in items (discrepancies), under one name each
/// everywhere (CLI, JSON, report, CSV, email, run history): corrected
/// (in a dry run: would be), needing review (review items and failed or
/// unconverged corrections), held; credits on account apart. Records
/// appear only in the accounting identity, labelled as records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    /// Every discrepancy found, credits on account not among them.
    pub discrepancies: usize,
    pub corrected: usize,
    pub needs_review: usize,
    pub held: usize,
    pub credits_on_account: usize,
}

/// One stored review item as a row shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: i64,
    pub state: ReviewState,
    pub first_seen_run: i64,
    pub age_days: i64,
}

/// A family's credit on account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditOnAccount {
    pub discrepancy: Discrepancy,
    /// The review item's id, when stored.
    pub item_id: Option<i64>,
    pub age_days: i64,
    /// The guardian to contact (billing contact first), when Genesis has one.
    pub guardian: Option<ContactLabel>,
}

/// A guardian as the credits section names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactLabel {
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl RunReport {
    /// This report without the names Genesis holds (students, fee labels,
    /// guardians' contacts): what is kept with the run in the database,
    /// where student data is not copied; `cpsync report --run` fills them
    /// again from Genesis when it rebuilds the report.
    pub fn without_names(&self) -> RunReport {
        let mut kept = self.clone();
        kept.students.clear();
        kept.fees.clear();
        for credit in &mut kept.queue.credits {
            credit.guardian = None;
        }
        kept
    }

    /// The net balance due (outstanding − credit) in Genesis minus the same
    /// in Community Pass, after this run's corrections (as found when the
    /// run has no totals after).
    pub fn difference(&self) -> Money {
        net_difference(
            self.totals_after
                .as_ref()
                .unwrap_or(&self.reconciliation.totals),
        )
    }

    /// The same difference as found, before corrections.
    pub fn difference_before(&self) -> Money {
        net_difference(&self.reconciliation.totals)
    }

    /// The totals the headline and the totals table show: after corrections.
    pub fn totals_shown(&self) -> &crate::reconcile::Totals {
        self.totals_after
            .as_ref()
            .unwrap_or(&self.reconciliation.totals)
    }

    /// The items a person has to look at: review discrepancies, except
    /// the credits on account.
    pub fn review_items(&self) -> impl Iterator<Item = &Discrepancy> {
        self.reconciliation
            .reviews()
            .filter(move |d| !self.is_credit(d))
    }

    /// Whether a discrepancy is one of the credits on account.
    pub fn is_credit(&self, discrepancy: &Discrepancy) -> bool {
        self.queue
            .credits
            .iter()
            .any(|credit| credit.discrepancy.sort_key() == discrepancy.sort_key())
    }

    /// The queue entry behind a discrepancy, if stored.
    pub fn queue_entry(&self, discrepancy: &Discrepancy) -> Option<&QueueEntry> {
        let key = crate::review::item_key(
            discrepancy.fee_id,
            discrepancy.kind.as_str(),
            discrepancy.vendor_txn_id.as_ref(),
        );
        self.queue.entries.get(&key)
    }

    /// The run's counts in items (`ItemCounts`).
    pub fn item_counts(&self) -> ItemCounts {
        let credits = self.queue.credits.len();
        ItemCounts {
            discrepancies: self
                .reconciliation
                .discrepancies
                .len()
                .saturating_sub(credits),
            corrected: view::corrected_count(self),
            needs_review: self.review_items().count() + self.failed_corrections.len(),
            held: self.queue.held.len(),
            credits_on_account: credits,
        }
    }

    /// The total of the credits on account.
    pub fn credit_total(&self) -> Money {
        self.queue
            .credits
            .iter()
            .map(|c| c.discrepancy.at_stake)
            .sum()
    }

    /// How many discrepancies had a planned correction.
    pub fn planned_count(&self) -> usize {
        self.reconciliation
            .discrepancies
            .iter()
            .filter(|discrepancy| !discrepancy.resolution.is_review())
            .count()
    }

    /// The date the report is filed under (the run's start).
    pub fn date(&self) -> NaiveDate {
        self.started_at.date()
    }

    /// The trend point this run adds to the history.
    pub fn trend_point(&self) -> TrendPoint {
        TrendPoint {
            run_id: self.run_id,
            date: self.date(),
            verdict: self.verdict,
            needs_review: {
                let counts = self.item_counts();
                (counts.needs_review + counts.held) as u64
            },
            corrected: self.corrected.len() as u64,
            difference: self.difference(),
        }
    }
}

/// What the email subject adds for a run that is not the whole-district
/// nightly: "dry run", "INCOMPLETE" (not everything could be read),
/// "student 100052", "2026-09-01 to 2026-09-30".
pub fn run_marks(dry_run: bool, incomplete: bool, scope: &Scope) -> Vec<String> {
    let mut marks = Vec::new();
    if dry_run {
        marks.push("dry run".to_string());
    }
    if incomplete {
        marks.push("INCOMPLETE".to_string());
    }
    if let Some(student) = scope.student {
        marks.push(format!("student {student}"));
    }
    match (scope.from, scope.to) {
        (None, None) => {}
        (Some(from), Some(to)) => marks.push(format!("{from} to {to}")),
        (Some(from), None) => marks.push(format!("from {from}")),
        (None, Some(to)) => marks.push(format!("up to {to}")),
    }
    marks
}

fn net_difference(totals: &crate::reconcile::Totals) -> Money {
    let net = |side: &crate::reconcile::SideTotals| side.outstanding - side.credit;
    net(&totals.genesis) - net(&totals.community_pass)
}

/// A one-line description of a run's scope for `RunReport::scope_text`.
pub fn describe_scope(scope: &Scope) -> String {
    let who = match scope.student {
        Some(student) => format!("student #{student}"),
        None => "whole district".to_string(),
    };
    let when = match (scope.from, scope.to) {
        (None, None) => "all fee dates".to_string(),
        (Some(from), None) => format!("fees dated from {from}"),
        (None, Some(to)) => format!("fees dated up to {to}"),
        (Some(from), Some(to)) => format!("fees dated {from} to {to}"),
    };
    format!("{who}, {when}")
}

#[cfg(test)]
mod tests;
