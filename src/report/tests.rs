//! Report tests: snapshots of every rendering of the sample report (files in
//! `tests/snapshots/`, rewritten with `CPSYNC_UPDATE_SNAPSHOTS=1`), escaping
//! and formula neutralisation with hostile data, privacy of the email parts,
//! file permissions, verdicts and the trend from run history.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use chrono::NaiveDate;

use super::sample::{sample_failed_report, sample_report};
use super::*;
use crate::db::runs::RunRecord;
use crate::reconcile::Resolution;

/// Whether this run may rewrite snapshots: `CPSYNC_UPDATE_SNAPSHOTS` is
/// exactly `1` and `CI` is not set (asking for it under CI is refused).
fn update_snapshots_asked() -> bool {
    let asked = std::env::var_os("CPSYNC_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    if asked && std::env::var_os("CI").is_some() {
        panic!("CPSYNC_UPDATE_SNAPSHOTS=1 is refused where CI is set: snapshots are updated by a person, never by CI");
    }
    asked
}

/// Compares `actual` with `tests/snapshots/NAME` after replacing each
/// volatile text with its placeholder. A missing or different file fails;
/// `CPSYNC_UPDATE_SNAPSHOTS=1` (exactly `1`) writes the file instead, but
/// never where `CI` is set: a CI job can only compare.
pub(crate) fn assert_snapshot(name: &str, actual: &str, redactions: &[(&str, &str)]) {
    let mut redacted = actual.to_string();
    for (volatile, placeholder) in redactions {
        redacted = redacted.replace(volatile, placeholder);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if update_snapshots_asked() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &redacted).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} missing ({e}); run with CPSYNC_UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    if expected != redacted {
        let line = expected
            .lines()
            .zip(redacted.lines())
            .position(|(left, right)| left != right)
            .map_or_else(
                || "at the end".to_string(),
                |i| format!("at line {}", i + 1),
            );
        panic!(
            "snapshot {} differs {line}; review the change and rerun with CPSYNC_UPDATE_SNAPSHOTS=1\n--- actual ---\n{redacted}",
            path.display()
        );
    }
}

#[test]
fn snapshot_html_report() {
    assert_snapshot("report.html", &render_html(&sample_report()).unwrap(), &[]);
}

#[test]
fn snapshot_failed_html_report() {
    let html = render_html(&sample_failed_report()).unwrap();
    assert_snapshot("report-failed.html", &html, &[]);
}

#[test]
fn snapshot_email_parts() {
    let report = sample_report();
    assert_snapshot("email.txt", &render_text(&report), &[]);
    assert_snapshot("email.html", &render_email_html(&report).unwrap(), &[]);
    let failed = sample_failed_report();
    assert_snapshot("email-failed.txt", &render_text(&failed), &[]);
}

#[test]
fn snapshot_csv_and_json() {
    let report = sample_report();
    let csv = String::from_utf8(review_csv(&report).unwrap()).unwrap();
    assert_snapshot("needs-review.csv", &csv, &[]);
    let json = serde_json::to_string_pretty(&summary_json(&report)).unwrap();
    assert_snapshot("summary.json", &json, &[]);
}

#[test]
fn the_report_shows_the_dollar_totals_and_the_difference() {
    let html = render_html(&sample_report()).unwrap();
    for shown in [
        "$48,215.00",
        "$8,462.50",
        "-$20.00",
        "after this run's corrections",
        "Community Pass shows $20.00 more due than Genesis.",
        "Before this run&#x27;s corrections: +$25.00",
        "Needs review",
        "Online payment not posted in Genesis",
        "Rivera, Ana",
        "Springfield High School",
        "Community Pass answered 503",
        "3,120 records in = 3,109 matched + 5 corrected + 6 in review",
    ] {
        assert!(html.contains(shown), "report lacks {shown:?}");
    }
}

#[test]
fn the_verdict_comes_first() {
    let html = render_html(&sample_report()).unwrap();
    let verdict = html.find("class=\"verdict needs_review\"").unwrap();
    for later in [
        "Totals on each side",
        "Needs review (",
        "Last 30 runs",
        "Run details",
    ] {
        assert!(
            html.find(later).unwrap() > verdict,
            "{later} before the verdict"
        );
    }
}

fn hostile_report() -> RunReport {
    let mut report = sample_report();
    let student = report.students.values_mut().next().unwrap();
    student.name = "<script>alert(1)</script>".to_string();
    let fee = report.fees.values_mut().next().unwrap();
    fee.description = "=HYPERLINK(\"x\")".to_string();
    report.district = "Springfield <b>SD</b> & \"Co\"".to_string();
    report.schools.insert(
        "HS".to_string(),
        "@SUM(A1) High\" onmouseover=\"alert(2)".to_string(),
    );
    for discrepancy in &mut report.reconciliation.discrepancies {
        if let Resolution::NeedsReview { reason, .. } = &mut discrepancy.resolution {
            *reason = "-2+3 <img src=x onerror=alert(3)>".to_string();
        }
        discrepancy.cp_value = Some("+1 '\t\r".to_string());
    }
    report
}

#[test]
fn hostile_names_are_escaped_in_every_html() {
    let report = hostile_report();
    for html in [
        render_html(&report).unwrap(),
        render_email_html(&report).unwrap(),
    ] {
        assert!(!html.contains("<script"), "a script tag got through");
        assert!(!html.contains("<img"), "an img tag got through");
        assert!(
            !html.contains("<b>SD"),
            "markup in the district got through"
        );
        assert!(!html.contains("\" onmouseover"), "an attribute got through");
        assert!(html.contains("Springfield &lt;b&gt;SD&lt;&#x2F;b&gt; &amp; &quot;Co&quot;"));
    }
    let html = render_html(&report).unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"));
    assert!(html.contains("=HYPERLINK(&quot;x&quot;)"));
}

#[test]
fn the_report_is_self_contained() {
    let html = render_html(&sample_report()).unwrap();
    for external in [
        "<script", "<link", "src=", "href=", "@import", "url(", "http://", "https://",
    ] {
        assert!(
            !html.contains(external),
            "report refers outside itself: {external}"
        );
    }
    assert!(html.contains("<svg class=\"trend\""));
    assert!(html.contains("@media print"));
    assert!(html.contains("@media (max-width: 640px)"));
}

#[test]
fn csv_cells_that_look_like_formulas_are_neutralised() {
    let csv = review_csv(&hostile_report()).unwrap();
    let mut reader = ::csv::Reader::from_reader(csv.as_slice());
    let rows: Vec<::csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(
        rows.len(),
        5,
        "four reviews and one failed correction; the credit on account is listed apart"
    );
    let cells: Vec<&str> = rows.iter().flat_map(|row| row.iter()).collect();
    for cell in &cells {
        let first = cell.chars().next();
        assert!(
            !matches!(first, Some('=' | '+' | '-' | '@' | '\t' | '\r')),
            "cell {cell:?} would be evaluated"
        );
    }
    assert!(cells.contains(&"'-2+3 <img src=x onerror=alert(3)>"));
    assert!(cells.contains(&"'+1 '\t\r"));
    assert!(cells.contains(&"'@SUM(A1) High\" onmouseover=\"alert(2)"));
    let fee_cell = rows
        .iter()
        .find(|row| &row[3] == "5001")
        .map(|row| row[4].to_string());
    assert_eq!(fee_cell, None, "fee 5001 was corrected, not in review");
    assert_eq!(neutralise_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
    assert_eq!(neutralise_cell("Band trip"), "Band trip");
}

#[test]
fn csv_lists_the_hostile_fee_description_neutralised() {
    let mut report = sample_report();
    report
        .fees
        .get_mut(&crate::domain::FeeId(5005))
        .unwrap()
        .description = "=HYPERLINK(\"x\")".to_string();
    let csv = String::from_utf8(review_csv(&report).unwrap()).unwrap();
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"x\"\") (YEARBOOK)\""),
        "{csv}"
    );
}

#[test]
fn email_parts_and_summary_name_no_student() {
    let report = sample_report();
    let summary = summary_json(&report).to_string();
    let parts = [
        render_text(&report),
        render_email_html(&report).unwrap(),
        summary,
    ];
    for label in report.students.values() {
        for part in &parts {
            assert!(!part.contains(&label.name), "{} leaked", label.name);
        }
    }
}

#[test]
fn failed_runs_say_why_and_claim_nothing() {
    let report = sample_failed_report();
    let text = render_text(&report);
    assert!(text.starts_with("Springfield Public Schools — nightly fee reconciliation\n"));
    assert!(text.contains("FAILED"));
    assert!(text.contains("server error 502"));
    assert!(!text.contains("Totals"));
    let html = render_html(&report).unwrap();
    assert!(html.contains("class=\"verdict failed\""));
    assert!(html.contains("Why the run failed"));
    assert!(html.contains("The run stopped before both sides were read"));
    for claim in [
        "agree to the cent",
        "Totals on each side",
        "No differences",
        "adds up",
    ] {
        assert!(!html.contains(claim), "a failed run claims {claim:?}");
    }
    let mut late_failure = sample_report();
    late_failure.verdict = Verdict::Failed;
    late_failure.error = Some("applying corrections: database is locked".to_string());
    let html = render_html(&late_failure).unwrap();
    assert!(html.contains("(the run failed after reading them)"));
    assert!(html.contains("$48,215.00"));
}

#[test]
fn files_are_private_and_named_by_date_and_run() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("reports/nested");
    let files = write_report_files(&dir, &sample_report()).unwrap();
    let mode = |path: &std::path::Path| path.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for path in [
        &files.html,
        &files.csv,
        &files.json,
        &files.corrections_csv,
        &files.report_json,
    ] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            name.contains("2026-11-26") && name.contains("run-42"),
            "{name}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(json["verdict"], "needs_review");
    assert_eq!(json["difference"], "-20.00", "after corrections");
    assert_eq!(json["difference_before_corrections"], "25.00");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        5,
        "no temporary files left"
    );
    let corrections = std::fs::read_to_string(&files.corrections_csv).unwrap();
    assert!(corrections.starts_with('\u{feff}'));
    assert!(
        corrections.contains("Community Pass,—,amount 45.00") || corrections.contains("Genesis,"),
        "{corrections}"
    );
    assert_eq!(
        stored_report(&dir, 42).unwrap(),
        Some(sample_report()),
        "the stored report reads back whole"
    );
    assert_eq!(stored_report(&dir, 43).unwrap(), None);
    write_report_files(&dir, &sample_report()).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        5,
        "a rerun replaces"
    );
}

#[test]
fn verdicts_follow_the_reconciliation() {
    let report = sample_report();
    let mut reconciliation = report.reconciliation.clone();
    assert_eq!(
        Verdict::from_reconciliation(&reconciliation, 0),
        Verdict::NeedsReview
    );
    reconciliation
        .discrepancies
        .retain(|d| !d.resolution.is_review());
    assert_eq!(
        Verdict::from_reconciliation(&reconciliation, 0),
        Verdict::Corrected
    );
    assert_eq!(
        Verdict::from_reconciliation(&reconciliation, 1),
        Verdict::NeedsReview
    );
    reconciliation.discrepancies.clear();
    assert_eq!(
        Verdict::from_reconciliation(&reconciliation, 0),
        Verdict::InAgreement
    );
    for verdict in [
        Verdict::InAgreement,
        Verdict::Corrected,
        Verdict::NeedsReview,
        Verdict::Failed,
    ] {
        assert_eq!(Verdict::parse(verdict.as_str()), Some(verdict));
    }
}

fn run_record(id: i64, status: &str, summary: Option<&str>) -> RunRecord {
    let started_at = NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(2, 0, 0)
        .unwrap()
        + chrono::Days::new(id as u64);
    RunRecord {
        id,
        task: "nightly_sync".to_string(),
        trigger: "schedule".to_string(),
        started_at,
        finished_at: Some(started_at),
        status: status.to_string(),
        dry_run: false,
        records_in: 10,
        matched: 8,
        corrected: 1,
        needs_review: 1,
        summary_json: summary.map(str::to_string),
        error: None,
        pid: None,
        host: None,
    }
}

#[test]
fn the_trend_comes_from_run_history_newest_thirty() {
    let summary = summary_json(&sample_report()).to_string();
    let mut runs: Vec<RunRecord> = (1..=40)
        .rev()
        .map(|id| run_record(id, "succeeded", None))
        .collect();
    runs.push(run_record(41, "running", None));
    runs[0] = run_record(40, "needs_review", Some(&summary));
    let trend = trend_from_runs(&runs);
    assert_eq!(trend.len(), TREND_RUNS_MAX);
    assert_eq!(trend.first().unwrap().run_id, 11);
    let newest = trend.last().unwrap();
    assert_eq!((newest.run_id, newest.verdict), (40, Verdict::NeedsReview));
    assert_eq!(
        newest.difference,
        crate::money::Money::from_cents(-2000),
        "the difference after the run's corrections"
    );
    assert_eq!(trend[0].verdict, Verdict::Corrected);
}

#[test]
fn the_trend_leaves_out_dry_and_scoped_runs() {
    let mut runs: Vec<RunRecord> = (1..=6)
        .map(|id| run_record(id, "succeeded", None))
        .collect();
    runs[1].dry_run = true;
    runs[3].trigger = "scoped".to_string();
    let shown: Vec<i64> = trend_from_runs(&runs).iter().map(|p| p.run_id).collect();
    assert_eq!(shown, vec![1, 3, 5, 6]);
}

#[test]
fn describe_scope_reads_naturally() {
    let mut scope = crate::reconcile::Scope::everything();
    assert_eq!(describe_scope(&scope), "whole district, all fee dates");
    scope.student = Some(crate::domain::StudentId(7));
    scope.from = NaiveDate::from_ymd_opt(2026, 9, 1);
    assert_eq!(
        describe_scope(&scope),
        "student #7, fees dated from 2026-09-01"
    );
}

#[test]
fn a_run_that_could_not_read_everything_says_so_everywhere() {
    let mut report = sample_report();
    report.corrected.clear();
    report.failed_corrections.clear();
    report
        .reconciliation
        .discrepancies
        .retain(|d| !d.resolution.is_review());
    report.reconciliation.discrepancies.clear();
    report.queue = QueueReport::default();
    let gap = "Community Pass sent fee 20 unreadable (amount: \"1e3\" is not a decimal); the fee was not judged";
    report.incomplete = vec![gap.to_string()];
    // What cpsync/nightly_report decides for such a run: never in agreement.
    report.verdict = Verdict::decide(report.incomplete.len(), 0, 0, 0);
    assert_eq!(report.verdict, Verdict::NeedsReview);
    let html = render_html(&report).unwrap();
    assert!(html.contains("Not everything could be read"), "{html}");
    assert!(html.contains("the fee was not judged"));
    assert!(html.contains("Not everything could be read tonight, so not everything was checked: 1 gap is listed below."));
    assert!(!html.contains("0 items need"));
    let email_html = render_email_html(&report).unwrap();
    assert!(email_html.contains("Not everything could be read"));
    let text = render_text(&report);
    assert!(text.contains("NOT EVERYTHING COULD BE READ"));
    assert!(text.contains("  - Community Pass sent fee 20 unreadable"));
    assert_eq!(
        email::subject(&report),
        "[cpsync] Springfield Public Schools — 2026-11-26 — INCOMPLETE — Needs review"
    );
    assert_eq!(summary_json(&report)["incomplete"][0], gap);
}

#[test]
fn a_dry_run_says_what_would_be_corrected_and_changed_nothing() {
    let mut report = sample_report();
    report.dry_run = true;
    report.corrected.clear();
    report.failed_corrections.clear();
    report
        .reconciliation
        .discrepancies
        .retain(|d| !d.resolution.is_review());
    report.verdict = Verdict::from_reconciliation(&report.reconciliation, 0);
    assert_eq!(report.verdict, Verdict::Corrected);
    let html = render_html(&report).unwrap();
    assert!(html.contains("Corrections planned (dry run)"));
    assert!(html.contains("Dry run: 5 corrections would be made; nothing was changed"));
    assert!(html.contains("Would be corrected (dry run: nothing was changed) (5)"));
    assert!(html.contains("DRY RUN — nothing was changed"));
    assert_eq!(
        email::subject(&report),
        "[cpsync] Springfield Public Schools — 2026-11-26 — Corrections planned (dry run)"
    );
    assert_eq!(summary_json(&report)["counts"]["corrected"], 5);
}

#[test]
fn only_the_students_and_fees_named_need_labels() {
    let report = sample_report();
    let (students, fees) = named_ids(&report.reconciliation.discrepancies);
    assert_eq!(students.len(), 8);
    assert!(fees.contains(&crate::domain::FeeId(5009)));
    assert!(!fees.contains(&crate::domain::FeeId(5008)));
}
