//! The machine summary of a run: verdict, counts, totals and timings as JSON,
//! without student data. It is written beside the report and is what the
//! shell stores in `cp_runs.summary_json` (the trend reads it back).

use serde_json::{json, Map, Value};

use crate::reconcile::{DiscrepancyKind, SideAccounting, SideTotals};

use super::view::run_elapsed_ms;
use super::RunReport;

/// The JSON summary. Amounts are decimal strings (`"1234.50"`), never floats.
pub fn summary_json(report: &RunReport) -> Value {
    let totals = &report.reconciliation.totals;
    let accounting = &report.reconciliation.accounting;
    json!({
        "district": report.district,
        "run_id": report.run_id,
        "started_at": report.started_at.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "finished_at": report.finished_at.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "elapsed_ms": run_elapsed_ms(report),
        "dry_run": report.dry_run,
        "scope": report.scope_text,
        "verdict": report.verdict.as_str(),
        "difference": report.difference().to_string(),
        "difference_before_corrections": report.difference_before().to_string(),
        "counts": report.item_counts(),
        "failed_corrections": report.failed_corrections.len(),
        "incomplete": report.incomplete,
        "by_kind": counts_by_kind(report),
        "totals": {
            "genesis": side_totals(&totals.genesis),
            "community_pass": side_totals(&totals.community_pass),
        },
        "accounting": {
            "genesis": side_accounting(&accounting.genesis),
            "community_pass": side_accounting(&accounting.community_pass),
        },
        "phases": report.phases.iter().map(|phase| json!({
            "name": phase.name,
            "elapsed_ms": phase.elapsed_ms,
        })).collect::<Vec<_>>(),
        "error": report.error,
    })
}

fn counts_by_kind(report: &RunReport) -> Value {
    let mut counts = Map::new();
    for kind in DiscrepancyKind::ALL {
        let of_kind = report
            .reconciliation
            .discrepancies
            .iter()
            .filter(|discrepancy| discrepancy.kind == *kind);
        let (mut planned, mut review) = (0u64, 0u64);
        for discrepancy in of_kind {
            if discrepancy.resolution.is_review() {
                review += 1;
            } else {
                planned += 1;
            }
        }
        if planned + review > 0 {
            counts.insert(
                kind.as_str().to_string(),
                json!({ "planned": planned, "needs_review": review }),
            );
        }
    }
    Value::Object(counts)
}

fn side_totals(side: &SideTotals) -> Value {
    json!({
        "billed": side.billed.to_string(),
        "genesis_credit": side.genesis_credit.to_string(),
        "paid": side.paid.to_string(),
        "refunded": side.refunded.to_string(),
        "waived": side.waived.to_string(),
        "reversed": side.reversed.to_string(),
        "outstanding": side.outstanding.to_string(),
        "credit": side.credit.to_string(),
        "written_off": side.written_off.to_string(),
    })
}

fn side_accounting(side: &SideAccounting) -> Value {
    json!({
        "records_in": side.records_in,
        "matched": side.matched,
        "corrected": side.corrected,
        "needs_review": side.needs_review,
        "adds_up": side.records_in == side.matched + side.corrected + side.needs_review,
    })
}
