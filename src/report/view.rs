//! The report as the templates see it: every value already in words, dollars
//! and chart coordinates (integers), so the templates only lay it out and
//! tera escapes every string. The plain-text and CSV renderers share the
//! row builders.

use serde::Serialize;

use crate::domain::{FeeId, StudentId};
use crate::money::Money;
use crate::reconcile::{Discrepancy, DiscrepancyKind, Resolution, SideAccounting, SideTotals};

use super::format::{format_count, format_duration_ms, format_money, format_signed_money, plural};
use super::labels::{action_label, kind_label};
use super::trend::{trend_chart, TrendChart};
use super::{RunReport, Verdict};

/// At most this many needs-review rows in the HTML report; the CSV has all.
pub const REVIEW_ROWS_HTML_MAX: usize = 500;
/// At most this many rows of one kind in the HTML report; the CSV has all.
pub const REVIEW_ROWS_PER_KIND_HTML: usize = 10;
/// At most this many corrected rows in the HTML report.
pub const CORRECTED_ROWS_HTML_MAX: usize = 200;

/// What a cell shows when a side has no value.
pub const NO_VALUE: &str = "—";

#[derive(Debug, Serialize)]
pub struct ReportView {
    pub district: String,
    pub run_id: i64,
    pub date_long: String,
    pub date: String,
    pub started: String,
    pub finished: String,
    pub duration: String,
    pub dry_run: bool,
    pub scope: String,
    /// Whether the reconciliation ran (a failed run may stop before it):
    /// without results the report shows no totals, which would read as zero.
    pub has_results: bool,
    pub verdict: VerdictView,
    pub difference: String,
    pub difference_sentence: String,
    /// Whether the totals are after the run's corrections (else as found).
    pub totals_after: bool,
    pub difference_before: String,
    /// The difference as found, and what the run's corrections made of it.
    pub difference_before_sentence: String,
    pub totals: Vec<TotalsRow>,
    pub kinds: Vec<KindRow>,
    pub discrepancy_count: String,
    pub corrected: Vec<CorrectedRow>,
    pub corrected_more: usize,
    pub corrected_count: String,
    pub corrected_heading: String,
    pub failed: Vec<FailedRow>,
    /// The listed review rows (acknowledged ones only counted), by kind.
    pub review_groups: Vec<ReviewGroup>,
    pub reviews_more: usize,
    pub review_count: usize,
    /// Corrections held for a person (listed with the review items).
    pub held_count: usize,
    /// Acknowledged items: counted, not listed in the HTML (the CSV has them).
    pub acknowledged_count: usize,
    pub new_count: usize,
    pub review_at_stake: String,
    pub credits: Vec<CreditRow>,
    pub credit_total: String,
    pub credit_review_after_days: u32,
    pub resolved_by_run: usize,
    pub trend: TrendChart,
    pub phases: Vec<PhaseRow>,
    pub accounting: Vec<AccountingRow>,
    pub accounting_holds: bool,
    pub error: Option<String>,
    /// What the run could not read, in words (the report lists each).
    pub incomplete: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct VerdictView {
    /// CSS class and machine name: `in_agreement`, `corrected`, ...
    pub key: &'static str,
    pub label: String,
    pub sentence: String,
    /// Ink and background colours, for the email's inline styles.
    pub color: &'static str,
    pub background: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TotalsRow {
    pub label: &'static str,
    pub hint: &'static str,
    pub genesis: String,
    pub community_pass: String,
    pub difference: String,
    pub differs: bool,
}

#[derive(Debug, Serialize)]
pub struct KindRow {
    pub code: &'static str,
    pub label: &'static str,
    pub count: usize,
    pub corrected: usize,
    pub review: usize,
    /// Dollars at stake over the kind's discrepancies.
    pub at_stake: String,
    /// Bar segment lengths in percent of the largest kind's count.
    pub corrected_pct: u64,
    pub review_pct: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReviewRow {
    pub student_id: String,
    pub student: String,
    pub school: String,
    pub fee_id: String,
    pub fee: String,
    pub kind: &'static str,
    pub kind_label: &'static str,
    pub genesis_value: String,
    pub cp_value: String,
    pub reason: String,
    pub suggested_action: String,
    pub vendor_txn_id: String,
    /// The review queue item's id (empty when never stored: a scoped or
    /// dry run's new item).
    pub item_id: String,
    /// `new`, `open`, `acknowledged` or `failed` (a correction that failed).
    pub state: &'static str,
    /// "new tonight", "open 12 days", "acknowledged", "correction failed".
    pub state_text: String,
    pub age_days: i64,
    /// Dollars at stake, e.g. `$35.00`.
    pub at_stake: String,
    /// The same as a plain number for spreadsheets, e.g. `35.00`.
    pub at_stake_number: String,
    #[serde(skip)]
    at_stake_cents: i64,
}

/// The needs-review rows of one kind: a heading with the count and the
/// dollars at stake, the first rows, and how many more are in the CSV.
#[derive(Debug, Serialize)]
pub struct ReviewGroup {
    pub kind: &'static str,
    pub kind_label: &'static str,
    pub count: usize,
    pub at_stake: String,
    pub rows: Vec<ReviewRow>,
    pub more: usize,
}

/// The listed rows grouped by kind: the kinds with the most urgent item
/// first (failed or held, new, open), then the most dollars at stake; the
/// rows inside in the order `review_rows` gives them.
fn review_groups(rows: Vec<ReviewRow>) -> Vec<ReviewGroup> {
    let mut by_kind: Vec<(&'static str, Vec<ReviewRow>)> = Vec::new();
    for row in rows {
        match by_kind.iter_mut().find(|(kind, _)| *kind == row.kind) {
            Some((_, group)) => group.push(row),
            None => by_kind.push((row.kind, vec![row])),
        }
    }
    // `review_rows` sorted by urgency, so each group's first row is its most
    // urgent and the groups arrive in urgency order; dollars break ties.
    let urgency = |group: &[ReviewRow]| state_rank(group[0].state);
    let cents = |group: &[ReviewRow]| group.iter().map(|r| r.at_stake_cents).sum::<i64>();
    by_kind.sort_by_key(|(_, group)| (urgency(group), -cents(group)));
    by_kind
        .into_iter()
        .map(|(kind, mut rows)| {
            let count = rows.len();
            let at_stake = format_money(Money::from_cents(cents(&rows)));
            let kind_label = rows[0].kind_label;
            rows.truncate(REVIEW_ROWS_PER_KIND_HTML);
            ReviewGroup {
                kind,
                kind_label,
                count,
                at_stake,
                more: count - rows.len(),
                rows,
            }
        })
        .collect()
}

fn state_rank(state: &str) -> u8 {
    match state {
        "failed" | "held" => 0,
        "new" => 1,
        "open" => 2,
        _ => 3,
    }
}

/// A family's credit on account, as the report shows it.
#[derive(Debug, Serialize)]
pub struct CreditRow {
    pub item_id: String,
    pub student: String,
    pub student_id: String,
    pub school: String,
    pub fee: String,
    pub fee_id: String,
    pub guardian: String,
    pub contact: String,
    pub amount: String,
    pub age_days: i64,
}

#[derive(Debug, Serialize)]
pub struct CorrectedRow {
    pub student: String,
    pub student_id: String,
    pub fee: String,
    pub fee_id: String,
    pub kind: &'static str,
    pub kind_label: &'static str,
    pub action: String,
    /// Which side the correction changed.
    pub side: &'static str,
    pub before: String,
    pub after: String,
    pub at_stake: String,
    pub at_stake_number: String,
}

#[derive(Debug, Serialize)]
pub struct FailedRow {
    pub student: String,
    pub fee: String,
    pub kind_label: &'static str,
    pub action: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct PhaseRow {
    pub name: String,
    pub duration: String,
    pub bar_pct: u64,
}

#[derive(Debug, Serialize)]
pub struct AccountingRow {
    pub side: &'static str,
    pub records_in: String,
    pub matched: String,
    pub corrected: String,
    pub needs_review: String,
    pub holds: bool,
}

/// Builds the whole view of a report.
pub fn report_view(report: &RunReport) -> ReportView {
    let reviews = review_rows(report);
    let counts = report.item_counts();
    let review_count = counts.needs_review;
    let held_count = counts.held;
    let acknowledged_count = reviews.iter().filter(|r| r.state == "acknowledged").count();
    let new_count = reviews.iter().filter(|r| r.state == "new").count();
    let review_at_stake = format_money(Money::from_cents(
        reviews.iter().map(|r| r.at_stake_cents).sum(),
    ));
    let listed: Vec<ReviewRow> = reviews
        .into_iter()
        .filter(|r| r.state != "acknowledged")
        .collect();
    let listed_count = listed.len();
    let failed = failed_rows(report);
    let (corrected, corrected_more) = corrected_rows(report);
    ReportView {
        district: report.district.clone(),
        run_id: report.run_id,
        date_long: report.started_at.format("%A, %-d %B %Y").to_string(),
        date: report.date().to_string(),
        started: report.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        finished: report.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        duration: format_duration_ms(run_elapsed_ms(report)),
        dry_run: report.dry_run,
        scope: report.scope_text.clone(),
        has_results: has_results(report),
        verdict: verdict_view(report),
        difference: format_money(report.difference().abs()),
        difference_sentence: difference_sentence(report.difference()),
        totals_after: report.totals_after.is_some(),
        difference_before: format_signed_money(report.difference_before()),
        difference_before_sentence: difference_before_sentence(report),
        totals: totals_rows(report),
        kinds: kind_rows(report),
        discrepancy_count: format_count(
            report
                .reconciliation
                .discrepancies
                .iter()
                .filter(|d| !report.is_credit(d))
                .count() as u64,
        ),
        corrected,
        corrected_more,
        corrected_count: format_count(corrected_count(report) as u64),
        corrected_heading: corrected_heading(report),
        failed,
        reviews_more: listed_count.saturating_sub(REVIEW_ROWS_HTML_MAX),
        review_groups: review_groups(listed.into_iter().take(REVIEW_ROWS_HTML_MAX).collect()),
        review_count,
        held_count,
        acknowledged_count,
        new_count,
        review_at_stake,
        credits: credit_rows(report),
        credit_total: format_money(report.credit_total()),
        credit_review_after_days: report.queue.credit_review_after_days,
        resolved_by_run: report.queue.resolved_by_run,
        trend: trend_chart(report),
        phases: phase_rows(report),
        accounting: accounting_rows(report),
        accounting_holds: accounting_rows(report).iter().all(|row| row.holds),
        error: report.error.clone(),
        incomplete: report.incomplete.clone(),
    }
}

/// Whether the report has reconciliation results to show: every finished
/// run has; a failed run only if it got as far as reading both sides.
pub fn has_results(report: &RunReport) -> bool {
    let accounting = &report.reconciliation.accounting;
    report.verdict != Verdict::Failed
        || accounting.genesis.records_in + accounting.community_pass.records_in > 0
}

/// Milliseconds between the run's start and finish (0 if the clock went back).
pub fn run_elapsed_ms(report: &RunReport) -> u64 {
    let elapsed = report.finished_at - report.started_at;
    u64::try_from(elapsed.num_milliseconds()).unwrap_or(0)
}

/// The verdict's label as the administrator reads it.
pub fn verdict_label(verdict: Verdict, dry_run: bool) -> &'static str {
    match (verdict, dry_run) {
        (Verdict::InAgreement, _) => "In agreement",
        (Verdict::Corrected, false) => "Corrected",
        (Verdict::Corrected, true) => "Corrections planned (dry run)",
        (Verdict::NeedsReview, _) => "Needs review",
        (Verdict::Failed, _) => "Failed",
        (Verdict::NotConverged, _) => "Not converged",
    }
}

fn verdict_view(report: &RunReport) -> VerdictView {
    VerdictView {
        key: report.verdict.as_str(),
        label: verdict_label(report.verdict, report.dry_run).to_string(),
        sentence: verdict_sentence(report),
        color: verdict_colors(report.verdict).0,
        background: verdict_colors(report.verdict).1,
    }
}

/// (ink, background) of a verdict; the same as the report's CSS.
fn verdict_colors(verdict: Verdict) -> (&'static str, &'static str) {
    match verdict {
        Verdict::InAgreement => ("#1b7a3a", "#e7f4eb"),
        Verdict::Corrected => ("#1d5fa8", "#e8f0fa"),
        Verdict::NeedsReview => ("#945400", "#fff3dd"),
        Verdict::Failed | Verdict::NotConverged => ("#b3261e", "#fdeceb"),
    }
}

/// The sentence under the verdict, and what could not be read, if anything.
pub fn verdict_sentence(report: &RunReport) -> String {
    let sentence = verdict_only_sentence(report);
    if report.incomplete.is_empty() || report.verdict == Verdict::Failed {
        return sentence;
    }
    let gaps = format!(
        "Not everything could be read tonight, so not everything was checked: {} listed below.",
        plural(report.incomplete.len() as u64, "gap is", "gaps are")
    );
    if sentence.is_empty() {
        gaps
    } else {
        format!("{sentence} {gaps}")
    }
}

/// The one sentence under the verdict, from the counts alone.
fn verdict_only_sentence(report: &RunReport) -> String {
    let accounting = &report.reconciliation.accounting;
    let checked = accounting.genesis.records_in + accounting.community_pass.records_in;
    let reviews = report.review_items().count() as u64;
    let failed = report.failed_corrections.len() as u64;
    let corrected = report.corrected.len() as u64;
    let planned = report.planned_count() as u64;
    match report.verdict {
        Verdict::InAgreement => format!(
            "Genesis and Community Pass agree: {} checked, nothing needed fixing.",
            plural(checked, "record", "records")
        ),
        Verdict::Corrected if report.dry_run => format!(
            "Dry run: {} would be made; nothing was changed and nothing needs you.",
            plural(planned, "correction", "corrections")
        ),
        Verdict::Corrected => format!(
            "The books agree after {} tonight; nothing needs you.",
            plural(corrected, "automatic correction", "automatic corrections")
        ),
        Verdict::NeedsReview if reviews + failed == 0 && !report.incomplete.is_empty() => {
            String::new()
        }
        Verdict::NeedsReview => needs_review_sentence(reviews, failed, corrected, report.dry_run),
        Verdict::Failed => {
            "The run did not finish, so the books were not fully checked tonight.".to_string()
        }
        Verdict::NotConverged => format!(
            "The books do NOT agree: {} sent tonight did not take effect in Community Pass (a re-read still shows the difference); each is listed below.",
            plural(failed, "correction", "corrections")
        ),
    }
}

fn needs_review_sentence(reviews: u64, failed: u64, corrected: u64, dry_run: bool) -> String {
    let mut sentence = format!(
        "{} {} your review.",
        plural(reviews + failed, "item", "items"),
        if reviews + failed == 1 {
            "needs"
        } else {
            "need"
        }
    );
    if failed > 0 {
        sentence.push_str(&format!(
            " {} could not be made and will be tried again next run.",
            plural(failed, "correction", "corrections")
        ));
    }
    if dry_run {
        sentence.push_str(" Dry run: nothing was changed.");
    } else if corrected > 0 {
        sentence.push_str(&format!(
            " {} fixed automatically.",
            plural(corrected, "other difference was", "other differences were")
        ));
    }
    sentence
}

/// How the net balance difference reads.
/// The secondary line: the difference as found, before corrections.
pub fn difference_before_sentence(report: &RunReport) -> String {
    if report.totals_after.is_none() {
        return String::new();
    }
    let before = report.difference_before();
    let after = report.difference();
    if before == after {
        return "Before corrections the difference was the same.".to_string();
    }
    format!(
        "Before {} corrections: {} (Genesis − Community Pass); the corrections moved it by {}.",
        if report.dry_run {
            "the planned"
        } else {
            "this run's"
        },
        format_signed_money(before),
        format_signed_money(after - before)
    )
}

pub fn difference_sentence(difference: Money) -> String {
    if difference.is_zero() {
        "The balances due agree to the cent.".to_string()
    } else if difference.is_positive() {
        format!(
            "Genesis shows {} more due than Community Pass.",
            format_money(difference)
        )
    } else {
        format!(
            "Community Pass shows {} more due than Genesis.",
            format_money(difference.abs())
        )
    }
}

fn totals_rows(report: &RunReport) -> Vec<TotalsRow> {
    let genesis = &report.totals_shown().genesis;
    let cp = &report.totals_shown().community_pass;
    type Pick = fn(&SideTotals) -> Money;
    let rows: [(&str, &str, Pick); 9] = [
        ("Billed", "fee amounts", |s| s.billed),
        (
            "Paid at the office",
            "payments and waivers recorded in Genesis, net of refunds",
            |s| s.genesis_credit,
        ),
        ("Paid online", "Community Pass payments", |s| s.paid),
        ("Refunded", "Community Pass refunds", |s| s.refunded),
        ("Waived", "Community Pass waivers", |s| s.waived),
        ("Reversed", "returned checks and chargebacks", |s| {
            s.reversed
        }),
        ("Outstanding", "still due from families", |s| s.outstanding),
        ("Credit", "overpaid, owed back to families", |s| s.credit),
        (
            "Void or waived",
            "shown on void or waived fees; nobody owes it",
            |s| s.written_off,
        ),
    ];
    rows.iter()
        .map(|(label, hint, pick)| {
            let difference = pick(genesis) - pick(cp);
            TotalsRow {
                label,
                hint,
                genesis: format_money(pick(genesis)),
                community_pass: format_money(pick(cp)),
                difference: format_signed_money(difference),
                differs: !difference.is_zero(),
            }
        })
        .collect()
}

/// Discrepancies by kind (credits on account are not discrepancies).
fn kind_rows(report: &RunReport) -> Vec<KindRow> {
    let discrepancies: Vec<Discrepancy> = report
        .reconciliation
        .discrepancies
        .iter()
        .filter(|d| !report.is_credit(d))
        .cloned()
        .collect();
    let discrepancies = discrepancies.as_slice();
    let mut rows: Vec<KindRow> = DiscrepancyKind::ALL
        .iter()
        .map(|kind| kind_row(*kind, discrepancies))
        .filter(|row| row.count > 0)
        .collect();
    let largest = rows.iter().map(|row| row.count).max().unwrap_or(1).max(1);
    for row in &mut rows {
        row.corrected_pct = bar_pct(row.corrected as u64, largest as u64);
        row.review_pct = bar_pct(row.review as u64, largest as u64);
    }
    rows.sort_by_key(|row| std::cmp::Reverse(row.count));
    rows
}

fn kind_row(kind: DiscrepancyKind, discrepancies: &[Discrepancy]) -> KindRow {
    let of_kind = || discrepancies.iter().filter(move |d| d.kind == kind);
    let review = of_kind().filter(|d| d.resolution.is_review()).count();
    let count = of_kind().count();
    let at_stake: Money = of_kind().map(|d| d.at_stake).sum();
    KindRow {
        at_stake: format_money(at_stake),
        code: kind.as_str(),
        label: kind_label(kind),
        count,
        corrected: count - review,
        review,
        corrected_pct: 0,
        review_pct: 0,
    }
}

/// A bar's length in percent of the largest, at least 1 when non-zero.
pub fn bar_pct(value: u64, largest: u64) -> u64 {
    if value == 0 || largest == 0 {
        return 0;
    }
    (value.saturating_mul(100) / largest).clamp(1, 100)
}

/// "Rivera, Ana (#1042)" or "#1042" when the student is not labelled.
pub fn student_text(report: &RunReport, student: Option<StudentId>) -> String {
    match student {
        Some(id) => match report.students.get(&id) {
            Some(label) => format!("{} (#{id})", label.name),
            None => format!("#{id}"),
        },
        None => NO_VALUE.to_string(),
    }
}

/// The school's name (or code) of the student.
pub fn school_text(report: &RunReport, student: Option<StudentId>) -> String {
    let code = student.and_then(|id| report.students.get(&id).map(|label| &label.school));
    match code {
        Some(code) => report.schools.get(code).unwrap_or(code).clone(),
        None => NO_VALUE.to_string(),
    }
}

/// "#5012 Band trip (ACTIVITY)" or "#5012".
pub fn fee_text(report: &RunReport, fee: Option<FeeId>) -> String {
    match fee {
        Some(id) => match report.fees.get(&id) {
            Some(label) => format!("#{id} {} ({})", label.description, label.category),
            None => format!("#{id}"),
        },
        None => NO_VALUE.to_string(),
    }
}

fn text_or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| NO_VALUE.to_string())
}

/// Every needs-review row, most urgent first: failed corrections, items
/// new tonight, then open items oldest first, then acknowledged ones; the
/// larger sum at stake first within each.
pub fn review_rows(report: &RunReport) -> Vec<ReviewRow> {
    let reviews = report.review_items().map(|d| review_row(report, d, None));
    let failed = report
        .failed_corrections
        .iter()
        .map(|f| review_row(report, &f.discrepancy, Some(&f.error)));
    let held = report.queue.held.iter().map(|h| {
        let mut row = review_row(report, &h.discrepancy, None);
        row.state = "held";
        row.state_text = "held".to_string();
        row.reason = format!("Held: {}", h.error);
        row
    });
    let mut rows: Vec<ReviewRow> = reviews.chain(failed).chain(held).collect();
    rows.sort_by_key(|row| (state_rank(row.state), -row.age_days, -row.at_stake_cents));
    rows
}

/// The credits on account, oldest first.
pub fn credit_rows(report: &RunReport) -> Vec<CreditRow> {
    let mut credits: Vec<&super::CreditOnAccount> = report.queue.credits.iter().collect();
    credits.sort_by_key(|c| (-c.age_days, -c.discrepancy.at_stake.cents()));
    credits
        .into_iter()
        .map(|credit| {
            let d = &credit.discrepancy;
            let (guardian, contact) = match &credit.guardian {
                Some(g) => {
                    let ways: Vec<&str> = [g.email.as_deref(), g.phone.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect();
                    (g.name.clone(), ways.join(" · "))
                }
                None => (NO_VALUE.to_string(), String::new()),
            };
            CreditRow {
                item_id: credit.item_id.map(|id| id.to_string()).unwrap_or_default(),
                student: student_name(report, d.student_id),
                student_id: d.student_id.map(|s| s.to_string()).unwrap_or_default(),
                school: school_text(report, d.student_id),
                fee: fee_description(report, d.fee_id),
                fee_id: d.fee_id.map(|f| f.to_string()).unwrap_or_default(),
                guardian,
                contact,
                amount: format_money(d.at_stake),
                age_days: credit.age_days,
            }
        })
        .collect()
}

fn review_row(report: &RunReport, discrepancy: &Discrepancy, error: Option<&str>) -> ReviewRow {
    let (reason, suggested_action) = match (&discrepancy.resolution, error) {
        (_, Some(error)) => (
            format!("The correction failed: {error}"),
            "It is tried again next run; call support if this repeats.".to_string(),
        ),
        (
            Resolution::NeedsReview {
                reason,
                suggested_action,
            },
            None,
        ) => (reason.clone(), suggested_action.clone()),
        (Resolution::Planned(action), None) => (String::new(), action_label(action)),
    };
    let entry = report.queue_entry(discrepancy);
    let (state, state_text, age_days) = match (error, entry) {
        (Some(_), _) => ("failed", "correction failed".to_string(), 0),
        (None, None) => ("new", "new tonight".to_string(), 0),
        (None, Some(entry)) => match entry.state {
            super::ReviewState::New => ("new", "new tonight".to_string(), entry.age_days),
            super::ReviewState::Acknowledged => (
                "acknowledged",
                format!(
                    "acknowledged, {}",
                    plural(entry.age_days as u64, "day", "days")
                ),
                entry.age_days,
            ),
            _ => (
                "open",
                format!("open {}", plural(entry.age_days as u64, "day", "days")),
                entry.age_days,
            ),
        },
    };
    ReviewRow {
        item_id: entry.map(|e| e.id.to_string()).unwrap_or_default(),
        state,
        state_text,
        age_days,
        at_stake: format_money(discrepancy.at_stake),
        at_stake_number: discrepancy.at_stake.to_string(),
        at_stake_cents: discrepancy.at_stake.cents(),
        student_id: discrepancy
            .student_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        student: student_name(report, discrepancy.student_id),
        school: school_text(report, discrepancy.student_id),
        fee_id: discrepancy
            .fee_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        fee: fee_description(report, discrepancy.fee_id),
        kind: discrepancy.kind.as_str(),
        kind_label: kind_label(discrepancy.kind),
        genesis_value: text_or_dash(&discrepancy.genesis_value),
        cp_value: text_or_dash(&discrepancy.cp_value),
        reason,
        suggested_action,
        vendor_txn_id: discrepancy
            .vendor_txn_id
            .as_ref()
            .map(|id| id.0.clone())
            .unwrap_or_default(),
    }
}

fn student_name(report: &RunReport, student: Option<StudentId>) -> String {
    student
        .and_then(|id| report.students.get(&id))
        .map(|label| label.name.clone())
        .unwrap_or_else(|| NO_VALUE.to_string())
}

fn fee_description(report: &RunReport, fee: Option<FeeId>) -> String {
    fee.and_then(|id| report.fees.get(&id))
        .map(|label| format!("{} ({})", label.description, label.category))
        .unwrap_or_else(|| NO_VALUE.to_string())
}

fn corrected_rows(report: &RunReport) -> (Vec<CorrectedRow>, usize) {
    let mut rows = all_corrected_rows(report);
    let more = rows.len().saturating_sub(CORRECTED_ROWS_HTML_MAX);
    rows.truncate(CORRECTED_ROWS_HTML_MAX);
    (rows, more)
}

/// Every correction made (a dry run: planned), with the side it changed
/// and the values before → after; the corrections CSV has them all.
pub fn all_corrected_rows(report: &RunReport) -> Vec<CorrectedRow> {
    let source: Vec<&Discrepancy> = if report.dry_run {
        report
            .reconciliation
            .discrepancies
            .iter()
            .filter(|d| !d.resolution.is_review())
            .collect()
    } else {
        report.corrected.iter().collect()
    };
    source
        .into_iter()
        .map(|d| {
            let (side, before, after) = correction_change(d);
            CorrectedRow {
                student: student_text(report, d.student_id),
                student_id: d.student_id.map(|s| s.to_string()).unwrap_or_default(),
                fee: fee_text(report, d.fee_id),
                fee_id: d.fee_id.map(|f| f.to_string()).unwrap_or_default(),
                kind: d.kind.as_str(),
                kind_label: kind_label(d.kind),
                action: resolution_text(&d.resolution),
                side,
                before,
                after,
                at_stake: format_money(d.at_stake),
                at_stake_number: d.at_stake.to_string(),
            }
        })
        .collect()
}

/// The side a correction changes and its values before → after: a push
/// makes Community Pass show what Genesis holds, a posting puts Community
/// Pass's transaction into Genesis, a lock makes the amount read-only.
fn correction_change(d: &Discrepancy) -> (&'static str, String, String) {
    let value = |v: &Option<String>| v.clone().unwrap_or_else(|| NO_VALUE.to_string());
    match &d.resolution {
        Resolution::Planned(crate::reconcile::Action::PushFee { .. }) => (
            "Community Pass",
            value(&d.cp_value),
            value(&d.genesis_value),
        ),
        Resolution::Planned(crate::reconcile::Action::PostVendorTxn { .. }) => {
            ("Genesis", value(&d.genesis_value), value(&d.cp_value))
        }
        Resolution::Planned(crate::reconcile::Action::LockAmount { .. }) => (
            "Genesis",
            "amount editable".to_string(),
            "amount locked".to_string(),
        ),
        Resolution::NeedsReview { .. } => ("", value(&d.genesis_value), value(&d.cp_value)),
    }
}

/// Corrections made (or, in a dry run, planned).
pub fn corrected_count(report: &RunReport) -> usize {
    if report.dry_run {
        report.planned_count()
    } else {
        report.corrected.len()
    }
}

fn corrected_heading(report: &RunReport) -> String {
    if report.dry_run {
        "Would be corrected (dry run: nothing was changed)".to_string()
    } else {
        "Corrected automatically".to_string()
    }
}

fn resolution_text(resolution: &Resolution) -> String {
    match resolution {
        Resolution::Planned(action) => action_label(action),
        Resolution::NeedsReview {
            suggested_action, ..
        } => suggested_action.clone(),
    }
}

fn failed_rows(report: &RunReport) -> Vec<FailedRow> {
    report
        .failed_corrections
        .iter()
        .map(|f| FailedRow {
            student: student_text(report, f.discrepancy.student_id),
            fee: fee_text(report, f.discrepancy.fee_id),
            kind_label: kind_label(f.discrepancy.kind),
            action: resolution_text(&f.discrepancy.resolution),
            error: f.error.clone(),
        })
        .collect()
}

fn phase_rows(report: &RunReport) -> Vec<PhaseRow> {
    let longest = report
        .phases
        .iter()
        .map(|phase| phase.elapsed_ms)
        .max()
        .unwrap_or(0);
    report
        .phases
        .iter()
        .map(|phase| PhaseRow {
            name: phase.name.clone(),
            duration: format_duration_ms(phase.elapsed_ms),
            bar_pct: bar_pct(phase.elapsed_ms, longest).max(1),
        })
        .collect()
}

fn accounting_rows(report: &RunReport) -> Vec<AccountingRow> {
    let accounting = &report.reconciliation.accounting;
    vec![
        accounting_row("Genesis", &accounting.genesis),
        accounting_row("Community Pass", &accounting.community_pass),
    ]
}

fn accounting_row(side: &'static str, counts: &SideAccounting) -> AccountingRow {
    AccountingRow {
        side,
        records_in: format_count(counts.records_in),
        matched: format_count(counts.matched),
        corrected: format_count(counts.corrected),
        needs_review: format_count(counts.needs_review),
        holds: counts.records_in == counts.matched + counts.corrected + counts.needs_review,
    }
}
