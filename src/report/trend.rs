//! The last runs at a glance: `TrendPoint`s from run history, and the
//! geometry of the trend chart (integer SVG coordinates, newest on the right).

use serde::Serialize;

use crate::db::runs::RunRecord;
use crate::money::Money;

use super::format::{format_money, format_signed_money};
use super::view::verdict_label;
use super::{RunReport, TrendPoint, Verdict};

/// How many runs the trend shows.
pub const TREND_RUNS_MAX: usize = 30;

const CHART_WIDTH: u64 = 600;
const PLOT_TOP: u64 = 16;
const PLOT_HEIGHT: u64 = 120;
const SLOT_WIDTH: u64 = CHART_WIDTH / TREND_RUNS_MAX as u64;
const BAR_WIDTH: u64 = SLOT_WIDTH - 6;
/// A run with nothing to show still gets a visible stub.
const STUB_HEIGHT: u64 = 4;
/// A failed run is a red bar of this height, whatever the scale.
const FAILED_HEIGHT: u64 = PLOT_HEIGHT / 4;

/// Trend points from run history (`db::runs::recent_runs`, any order),
/// oldest first, newest `TREND_RUNS_MAX` kept. Runs still running are left
/// out. The verdict and difference come from the run's stored
/// `summary_json` (see `summary_json`) when it has them, else from its status.
pub fn trend_from_runs(runs: &[RunRecord]) -> Vec<TrendPoint> {
    let mut points: Vec<TrendPoint> = runs
        .iter()
        .filter(|run| counts_in_trend(run))
        .filter_map(trend_point_of)
        .collect();
    points.sort_by_key(|point| point.run_id);
    let skip = points.len().saturating_sub(TREND_RUNS_MAX);
    points.split_off(skip)
}

/// The trend shows the whole-district runs that changed something or could
/// have: not dry runs, not scoped runs (they stay in `cpsync runs`).
fn counts_in_trend(run: &RunRecord) -> bool {
    !run.dry_run && run.trigger != "scoped"
}

fn trend_point_of(run: &RunRecord) -> Option<TrendPoint> {
    let summary: Option<serde_json::Value> = run
        .summary_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    let stored_verdict = summary
        .as_ref()
        .and_then(|s| s.get("verdict")?.as_str().and_then(Verdict::parse));
    let verdict = stored_verdict.or_else(|| verdict_of_status(&run.status, run.corrected))?;
    let difference = summary
        .as_ref()
        .and_then(|s| Money::parse(s.get("difference")?.as_str()?).ok())
        .unwrap_or(Money::ZERO);
    Some(TrendPoint {
        run_id: run.id,
        date: run.started_at.date(),
        verdict,
        needs_review: u64::try_from(run.needs_review).unwrap_or(0),
        corrected: u64::try_from(run.corrected).unwrap_or(0),
        difference,
    })
}

fn verdict_of_status(status: &str, corrected: i64) -> Option<Verdict> {
    match status {
        "succeeded" if corrected > 0 => Some(Verdict::Corrected),
        "succeeded" => Some(Verdict::InAgreement),
        "needs_review" => Some(Verdict::NeedsReview),
        "failed" | "interrupted" => Some(Verdict::Failed),
        "not_converged" => Some(Verdict::NotConverged),
        _ => None,
    }
}

/// The report's trend with this run as the newest point.
pub fn trend_series(report: &RunReport) -> Vec<TrendPoint> {
    let mut points: Vec<TrendPoint> = report
        .trend
        .iter()
        .filter(|point| point.run_id != report.run_id)
        .cloned()
        .collect();
    points.sort_by_key(|point| point.run_id);
    if !report.dry_run && report.scope == crate::reconcile::Scope::everything() {
        points.push(report.trend_point());
    }
    let skip = points.len().saturating_sub(TREND_RUNS_MAX);
    points.split_off(skip)
}

#[derive(Debug, Serialize)]
pub struct TrendChart {
    pub width: u64,
    pub height: u64,
    pub plot_top: u64,
    pub baseline_y: u64,
    pub scale_max: u64,
    pub first_date: String,
    pub last_date: String,
    pub bars: Vec<TrendBar>,
    pub rows: Vec<TrendRow>,
}

/// One run's bar: a corrected segment at the bottom, a review segment on top.
#[derive(Debug, Serialize)]
pub struct TrendBar {
    pub x: u64,
    pub width: u64,
    pub verdict: &'static str,
    pub corrected_y: u64,
    pub corrected_height: u64,
    pub review_y: u64,
    pub review_height: u64,
    pub stub: bool,
    pub current: bool,
    pub title: String,
}

/// The same runs as a table (for screen readers, print and exact numbers).
#[derive(Debug, Serialize)]
pub struct TrendRow {
    pub run_id: i64,
    pub date: String,
    pub verdict: &'static str,
    pub verdict_label: &'static str,
    pub corrected: u64,
    pub needs_review: u64,
    pub difference: String,
}

/// Lays out the chart for the report's trend (this run included).
pub fn trend_chart(report: &RunReport) -> TrendChart {
    let points = trend_series(report);
    let scale_max = points
        .iter()
        .map(|point| point.corrected + point.needs_review)
        .max()
        .unwrap_or(0)
        .max(1);
    let first_slot = TREND_RUNS_MAX - points.len();
    let bars = points
        .iter()
        .enumerate()
        .map(|(index, point)| trend_bar(point, first_slot + index, scale_max, report.run_id))
        .collect();
    TrendChart {
        width: CHART_WIDTH,
        height: PLOT_TOP + PLOT_HEIGHT + 22,
        plot_top: PLOT_TOP,
        baseline_y: PLOT_TOP + PLOT_HEIGHT,
        scale_max,
        first_date: points
            .first()
            .map(|p| p.date.to_string())
            .unwrap_or_default(),
        last_date: points
            .last()
            .map(|p| p.date.to_string())
            .unwrap_or_default(),
        bars,
        rows: points.iter().rev().map(trend_row).collect(),
    }
}

fn trend_bar(point: &TrendPoint, slot: usize, scale_max: u64, current_run: i64) -> TrendBar {
    let baseline = PLOT_TOP + PLOT_HEIGHT;
    let corrected_height = point.corrected * PLOT_HEIGHT / scale_max;
    let review_height = point.needs_review * PLOT_HEIGHT / scale_max;
    let failed = point.verdict == Verdict::Failed;
    let stub = !failed && corrected_height + review_height == 0;
    let corrected_height = match (failed, stub) {
        (true, _) => FAILED_HEIGHT,
        (false, true) => STUB_HEIGHT,
        (false, false) => corrected_height,
    };
    let review_height = if failed { 0 } else { review_height };
    TrendBar {
        x: slot as u64 * SLOT_WIDTH + (SLOT_WIDTH - BAR_WIDTH) / 2,
        width: BAR_WIDTH,
        verdict: point.verdict.as_str(),
        corrected_y: baseline - corrected_height,
        corrected_height,
        review_y: baseline - corrected_height - review_height,
        review_height,
        stub,
        current: point.run_id == current_run,
        title: trend_title(point),
    }
}

fn trend_title(point: &TrendPoint) -> String {
    format!(
        "{} · run #{} · {}: {} corrected, {} to review, difference {}",
        point.date,
        point.run_id,
        verdict_label(point.verdict, false),
        point.corrected,
        point.needs_review,
        format_money(point.difference.abs())
    )
}

fn trend_row(point: &TrendPoint) -> TrendRow {
    TrendRow {
        run_id: point.run_id,
        date: point.date.to_string(),
        verdict: point.verdict.as_str(),
        verdict_label: verdict_label(point.verdict, false),
        corrected: point.corrected,
        needs_review: point.needs_review,
        difference: format_signed_money(point.difference),
    }
}
