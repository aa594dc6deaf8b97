//! What each reconciliation run found (`cp_discrepancies`) and what became of
//! each item: corrected, needs review, planned (dry run) or failed.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_discrepancies;
use super::{DbConnection, DbError};
use crate::reconcile::{Discrepancy, Resolution};

/// What became of one discrepancy in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Corrected,
    NeedsReview,
    Planned,
    Failed,
    /// Applied as far as the engine could tell, but a re-read shows the
    /// sides still differ: never reported as corrected.
    NotConverged,
    /// An overpayment both systems agree on: a credit the family holds,
    /// listed for the business office, not a discrepancy (until it is
    /// older than `[reports] credit_review_after_days`).
    CreditOnAccount,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Corrected => "corrected",
            Outcome::NeedsReview => "needs_review",
            Outcome::Planned => "planned",
            Outcome::Failed => "failed",
            Outcome::NotConverged => "not_converged",
            Outcome::CreditOnAccount => "credit_on_account",
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = cp_discrepancies)]
struct DiscrepancyRow {
    run_id: i64,
    kind: String,
    fee_id: Option<i64>,
    student_id: Option<i64>,
    vendor_txn_id: Option<String>,
    genesis_value: Option<String>,
    cp_value: Option<String>,
    resolution: String,
    action: Option<String>,
    reason: Option<String>,
    created_at: NaiveDateTime,
}

/// Stores the run's discrepancies with their outcomes.
pub fn record(
    conn: &mut DbConnection,
    run_id: i64,
    items: &[(&Discrepancy, Outcome, Option<String>)],
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    let rows: Vec<DiscrepancyRow> = items
        .iter()
        .map(|(d, outcome, error)| {
            let (action, reason) = match &d.resolution {
                Resolution::Planned(action) => (
                    Some(serde_json::to_string(action).expect("actions serialise")),
                    error.clone(),
                ),
                Resolution::NeedsReview {
                    reason,
                    suggested_action,
                } => (Some(suggested_action.clone()), Some(reason.clone())),
            };
            DiscrepancyRow {
                run_id,
                kind: d.kind.as_str().to_string(),
                fee_id: d.fee_id.map(|f| f.0),
                student_id: d.student_id.map(|s| s.0),
                vendor_txn_id: d.vendor_txn_id.as_ref().map(|v| v.0.clone()),
                genesis_value: d.genesis_value.clone(),
                cp_value: d.cp_value.clone(),
                resolution: outcome.as_str().to_string(),
                action,
                reason,
                created_at: now,
            }
        })
        .collect();
    insert_batched!(conn, cp_discrepancies::table, rows)
}

/// One stored discrepancy, for a fee's history.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = cp_discrepancies)]
pub struct StoredDiscrepancy {
    pub run_id: i64,
    pub kind: String,
    pub genesis_value: Option<String>,
    pub cp_value: Option<String>,
    pub resolution: String,
    pub reason: Option<String>,
    pub created_at: NaiveDateTime,
}

/// Every stored discrepancy about one fee, oldest first.
pub fn for_fee(conn: &mut DbConnection, fee_id: i64) -> Result<Vec<StoredDiscrepancy>, DbError> {
    Ok(cp_discrepancies::table
        .filter(cp_discrepancies::fee_id.eq(fee_id))
        .order(cp_discrepancies::id)
        .select(StoredDiscrepancy::as_select())
        .load(conn)?)
}
