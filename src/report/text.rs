//! The plain-text rendering: the email's text part, readable in any mail
//! client and in a terminal. Like the email's HTML part it names no student;
//! the attached CSV does.

use std::fmt::Write;

use super::view::{report_view, ReportView};
use super::{RunReport, Verdict};

/// The plain-text summary of a run.
pub fn render_text(report: &RunReport) -> String {
    let view = report_view(report);
    let mut text = String::new();
    header(&mut text, &view);
    if report.verdict == Verdict::Failed {
        failure_body(&mut text, &view);
    } else {
        gaps(&mut text, &view);
        totals(&mut text, &view);
        kinds(&mut text, &view);
        closing(&mut text, &view);
    }
    text
}

fn header(text: &mut String, view: &ReportView) {
    let dry_run = if view.dry_run { " (DRY RUN)" } else { "" };
    let _ = writeln!(
        text,
        "{} — nightly fee reconciliation{dry_run}",
        view.district
    );
    let _ = writeln!(text, "{} · run #{}", view.date_long, view.run_id);
    let _ = writeln!(text);
    let _ = writeln!(text, "{}", view.verdict.label.to_uppercase());
    let _ = writeln!(text, "{}", view.verdict.sentence);
    let _ = writeln!(text);
}

/// What the run could not read, one line each.
fn gaps(text: &mut String, view: &ReportView) {
    if view.incomplete.is_empty() {
        return;
    }
    let _ = writeln!(text, "NOT EVERYTHING COULD BE READ (not checked tonight):");
    for gap in &view.incomplete {
        let _ = writeln!(text, "  - {gap}");
    }
    let _ = writeln!(text);
}

fn failure_body(text: &mut String, view: &ReportView) {
    let _ = writeln!(
        text,
        "Error: {}",
        view.error.as_deref().unwrap_or("(none recorded)")
    );
    let _ = writeln!(text, "Started {}, stopped {}.", view.started, view.finished);
    let _ = writeln!(
        text,
        "Corrections made before the failure are in the audit trail under run #{}.",
        view.run_id
    );
    let _ = writeln!(
        text,
        "The next nightly run checks everything again; it is safe to re-run now."
    );
}

fn totals(text: &mut String, view: &ReportView) {
    let _ = writeln!(
        text,
        "Need review: {}   Held: {}   {}: {}   Difference in balances due: {}",
        view.review_count,
        view.held_count,
        if view.dry_run {
            "Would be corrected"
        } else {
            "Corrected"
        },
        view.corrected_count,
        view.difference
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "Totals ({}; {})",
        if view.totals_after {
            "after this run's corrections"
        } else {
            "as found, before corrections"
        },
        view.scope
    );
    let _ = writeln!(
        text,
        "  {:<20} {:>16} {:>16} {:>14}",
        "", "Genesis", "Community Pass", "Difference"
    );
    for row in &view.totals {
        let _ = writeln!(
            text,
            "  {:<20} {:>16} {:>16} {:>14}",
            row.label, row.genesis, row.community_pass, row.difference
        );
    }
    let _ = writeln!(text, "  {}", view.difference_sentence);
    if !view.difference_before_sentence.is_empty() {
        let _ = writeln!(text, "  {}", view.difference_before_sentence);
    }
    let _ = writeln!(text);
}

fn kinds(text: &mut String, view: &ReportView) {
    if view.kinds.is_empty() {
        let _ = writeln!(text, "No differences found.");
        let _ = writeln!(text);
        return;
    }
    let _ = writeln!(text, "Differences found ({})", view.discrepancy_count);
    for kind in &view.kinds {
        let _ = writeln!(
            text,
            "  {:<52} {:>5} corrected {:>5} review",
            kind.label, kind.corrected, kind.review
        );
    }
    let _ = writeln!(text);
}

fn closing(text: &mut String, view: &ReportView) {
    if view.review_count > 0 {
        let _ = writeln!(
            text,
            "The {} item(s) to review ({} new tonight, {} acknowledged; {} at stake) are in the attached CSV.",
            view.review_count, view.new_count, view.acknowledged_count, view.review_at_stake
        );
    }
    if !view.credits.is_empty() {
        let _ = writeln!(
            text,
            "{} {} a credit on account ({} in all); both systems agree, so credits are listed in the report, not counted as discrepancies.",
            view.credits.len(),
            if view.credits.len() == 1 { "family holds" } else { "families hold" },
            view.credit_total
        );
    }
    for row in &view.accounting {
        let mark = if row.holds {
            "adds up"
        } else {
            "DOES NOT ADD UP"
        };
        let _ = writeln!(
            text,
            "{}: {} records in = {} matched + {} corrected + {} in review ({mark})",
            row.side, row.records_in, row.matched, row.corrected, row.needs_review
        );
    }
    let _ = writeln!(text, "Run time {}.", view.duration);
}
