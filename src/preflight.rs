//! The preflight, run before the integration is enabled: which unpaid
//! Community Pass fees the integration did not create (they cannot be
//! synced; the district purges them in Community Pass and recreates them in
//! Genesis), and which fees a parent would likely see twice (same student,
//! amount and description) — an unmanaged fee beside a Genesis fee that
//! would be sent, or two unmanaged fees. Pure: the shell (`cli/preflight.rs`)
//! fetches the fees and writes the files; this module decides and renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::domain::{FeeId, FeeStatus, GenesisFee, StudentId, UnmanagedFee, VendorFeeStatus};
use crate::export::csv_cell::neutralise;
use crate::money::Money;

/// What to do about an unpaid unmanaged fee.
pub const UNMANAGED_ACTION: &str =
    "purge it in Community Pass and recreate it in Genesis (it cannot be synced)";
/// What to do about a likely duplicate.
pub const DUPLICATE_ACTION: &str =
    "keep one: purge the Community Pass copy, or do not send the Genesis fee";

/// Fees that look the same to a parent: one student, one amount, one
/// description (compared without case and extra spaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateGroup {
    pub student_id: StudentId,
    pub amount: Money,
    pub description: String,
    /// Community Pass ids of the unmanaged fees in the group.
    pub unmanaged: Vec<String>,
    /// Genesis fees in the group that would be sent.
    pub genesis: Vec<FeeId>,
}

/// What the preflight found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Unpaid fees in Community Pass that Genesis did not create.
    pub unmanaged_unpaid: Vec<UnmanagedFee>,
    /// Likely duplicates a parent would see twice.
    pub duplicates: Vec<DuplicateGroup>,
}

impl Findings {
    /// The district may enable the integration only when nothing was found.
    pub fn clear_to_enable(&self) -> bool {
        self.unmanaged_unpaid.is_empty() && self.duplicates.is_empty()
    }
}

/// Whether an unmanaged fee still asks the parent for money.
fn is_unpaid(fee: &UnmanagedFee) -> bool {
    fee.status != VendorFeeStatus::Void && fee.balance.is_positive()
}

/// The description as a parent reads it: case and spacing ignored.
fn normalised(description: &str) -> String {
    description
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

type DuplicateKey = (StudentId, Money, String);

/// Decides the findings. `to_send` are the Genesis fees that would be sent
/// under the setup policy (the caller applies it); void ones are ignored.
/// Unmanaged fees without a student cannot be matched to one and are only
/// listed (when unpaid); void unmanaged fees are ignored.
pub fn assess(unmanaged: &[UnmanagedFee], to_send: &[GenesisFee]) -> Findings {
    let mut groups: BTreeMap<DuplicateKey, DuplicateGroup> = BTreeMap::new();
    for fee in unmanaged
        .iter()
        .filter(|f| f.status != VendorFeeStatus::Void)
    {
        if let Some(student) = fee.student_id {
            entry(&mut groups, student, fee.amount, &fee.description)
                .unmanaged
                .push(fee.vendor_fee_id.clone());
        }
    }
    for fee in to_send.iter().filter(|f| f.status != FeeStatus::Void) {
        let key = (fee.student_id, fee.amount, normalised(&fee.description));
        if let Some(group) = groups.get_mut(&key) {
            group.genesis.push(fee.id);
        }
    }
    let duplicates = groups
        .into_values()
        .filter(|g| !g.unmanaged.is_empty() && g.unmanaged.len() + g.genesis.len() >= 2)
        .collect();
    Findings {
        unmanaged_unpaid: unmanaged.iter().filter(|f| is_unpaid(f)).cloned().collect(),
        duplicates,
    }
}

fn entry<'a>(
    groups: &'a mut BTreeMap<DuplicateKey, DuplicateGroup>,
    student: StudentId,
    amount: Money,
    description: &str,
) -> &'a mut DuplicateGroup {
    groups
        .entry((student, amount, normalised(description)))
        .or_insert_with(|| DuplicateGroup {
            student_id: student,
            amount,
            description: description.trim().to_string(),
            unmanaged: Vec::new(),
            genesis: Vec::new(),
        })
}

/// Why a preflight file could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("cannot write the preflight CSV: {0}")]
    Csv(#[from] csv::Error),
}

const CSV_HEADER: [&str; 11] = [
    "finding",
    "group",
    "student_id",
    "patron_id",
    "community_pass_fee_id",
    "genesis_fee_id",
    "description",
    "amount",
    "balance",
    "status",
    "what_to_do",
];

/// One CSV row per fee found (a duplicate group gives one row per member),
/// every cell neutralised against spreadsheet formulas.
pub fn to_csv(findings: &Findings, unmanaged: &[UnmanagedFee]) -> Result<Vec<u8>, PreflightError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for fee in &findings.unmanaged_unpaid {
        write_row(
            &mut writer,
            "unmanaged_unpaid",
            "",
            fee_cells(fee),
            UNMANAGED_ACTION,
        )?;
    }
    let by_id: BTreeMap<&str, &UnmanagedFee> = unmanaged
        .iter()
        .map(|f| (f.vendor_fee_id.as_str(), f))
        .collect();
    for (number, group) in findings.duplicates.iter().enumerate() {
        let label = (number + 1).to_string();
        for id in &group.unmanaged {
            let cells = match by_id.get(id.as_str()) {
                Some(fee) => fee_cells(fee),
                None => group_cells(group, id, ""),
            };
            write_row(&mut writer, "duplicate", &label, cells, DUPLICATE_ACTION)?;
        }
        for id in &group.genesis {
            let cells = group_cells(group, "", &id.to_string());
            write_row(&mut writer, "duplicate", &label, cells, DUPLICATE_ACTION)?;
        }
    }
    writer
        .into_inner()
        .map_err(|e| PreflightError::Csv(csv::Error::from(e.into_error())))
}

/// The cells from student_id to status.
type FeeCells = [String; 8];

fn fee_cells(fee: &UnmanagedFee) -> FeeCells {
    [
        fee.student_id.map(|s| s.to_string()).unwrap_or_default(),
        fee.patron_id.clone(),
        fee.vendor_fee_id.clone(),
        String::new(),
        fee.description.clone(),
        fee.amount.to_string(),
        fee.balance.to_string(),
        fee.status.to_string(),
    ]
}

fn group_cells(group: &DuplicateGroup, vendor_id: &str, genesis_id: &str) -> FeeCells {
    [
        group.student_id.to_string(),
        String::new(),
        vendor_id.to_string(),
        genesis_id.to_string(),
        group.description.clone(),
        group.amount.to_string(),
        String::new(),
        String::new(),
    ]
}

fn write_row(
    writer: &mut csv::Writer<Vec<u8>>,
    finding: &str,
    group: &str,
    cells: FeeCells,
    action: &str,
) -> Result<(), PreflightError> {
    let mut row: Vec<String> = vec![finding.to_string(), group.to_string()];
    row.extend(cells);
    row.push(action.to_string());
    writer.write_record(row.iter().map(|c| neutralise(c).into_owned()))?;
    Ok(())
}

/// Text made safe for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const HTML_STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 8px;text-align:left}\
th{background:#eee}.ok{color:#060}.stop{color:#a00}td.num{text-align:right}";

/// A self-contained page (no external assets), every value escaped.
pub fn to_html(findings: &Findings, generated_at: NaiveDateTime, district: &str) -> String {
    let mut page = String::new();
    let e = escape_html;
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>cpsync preflight</title><style>{HTML_STYLE}</style></head><body>\
         <h1>Community Pass preflight: {}</h1><p>Generated {} UTC.</p>",
        e(district),
        generated_at.format("%Y-%m-%d %H:%M:%S")
    );
    if findings.clear_to_enable() {
        page.push_str("<p class=\"ok\"><strong>Clear to enable:</strong> no unmanaged unpaid fees and no likely duplicates.</p>");
    } else {
        let _ = write!(
            page,
            "<p class=\"stop\"><strong>Not clear to enable:</strong> {} unmanaged unpaid fee(s), {} likely duplicate group(s).</p>",
            findings.unmanaged_unpaid.len(),
            findings.duplicates.len()
        );
    }
    unmanaged_table(&mut page, &findings.unmanaged_unpaid);
    duplicates_table(&mut page, &findings.duplicates);
    page.push_str("</body></html>\n");
    page
}

fn unmanaged_table(page: &mut String, fees: &[UnmanagedFee]) {
    let e = escape_html;
    let _ = write!(
        page,
        "<h2>Unpaid fees Genesis did not create ({})</h2><p>{}.</p>",
        fees.len(),
        e(UNMANAGED_ACTION)
    );
    if fees.is_empty() {
        return;
    }
    page.push_str("<table><tr><th>Community Pass fee</th><th>patron</th><th>student</th><th>description</th><th>amount</th><th>balance</th><th>created</th></tr>");
    for fee in fees {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">${}</td><td class=\"num\">${}</td><td>{}</td></tr>",
            e(&fee.vendor_fee_id),
            e(&fee.patron_id),
            fee.student_id.map(|s| s.to_string()).unwrap_or_default(),
            e(&fee.description),
            fee.amount,
            fee.balance,
            fee.created_at.format("%Y-%m-%d")
        );
    }
    page.push_str("</table>");
}

fn duplicates_table(page: &mut String, groups: &[DuplicateGroup]) {
    let e = escape_html;
    let _ = write!(
        page,
        "<h2>Likely duplicates a parent would see twice ({})</h2><p>{}.</p>",
        groups.len(),
        e(DUPLICATE_ACTION)
    );
    if groups.is_empty() {
        return;
    }
    page.push_str("<table><tr><th>student</th><th>description</th><th>amount</th><th>unmanaged in Community Pass</th><th>Genesis fees to send</th></tr>");
    for group in groups {
        let genesis: Vec<String> = group.genesis.iter().map(|f| f.to_string()).collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">${}</td><td>{}</td><td>{}</td></tr>",
            group.student_id,
            e(&group.description),
            group.amount,
            e(&group.unmanaged.join(", ")),
            genesis.join(", ")
        );
    }
    page.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 9, 1)
            .unwrap()
            .and_hms_opt(8, 0, 0)
            .unwrap()
    }

    fn unmanaged(
        id: &str,
        student: Option<i64>,
        desc: &str,
        cents: i64,
        balance: i64,
    ) -> UnmanagedFee {
        UnmanagedFee {
            vendor_fee_id: id.into(),
            patron_id: student
                .map(|s| s.to_string())
                .unwrap_or_else(|| "P9".into()),
            student_id: student.map(StudentId),
            description: desc.into(),
            amount: Money::from_cents(cents),
            balance: Money::from_cents(balance),
            status: if balance == 0 {
                VendorFeeStatus::Paid
            } else {
                VendorFeeStatus::Open
            },
            created_at: at(),
        }
    }

    fn genesis(id: i64, student: i64, desc: &str, cents: i64) -> GenesisFee {
        GenesisFee {
            id: FeeId(id),
            student_id: StudentId(student),
            category: "LAB".into(),
            school: "HS01".into(),
            description: desc.into(),
            amount: Money::from_cents(cents),
            fee_date: at().date(),
            due_date: None,
            status: FeeStatus::Open,
            created_at: at(),
            modified_at: at(),
        }
    }

    #[test]
    fn nothing_found_is_clear_to_enable() {
        let findings = assess(&[], &[genesis(1, 7, "Lab fee", 2_500)]);
        assert!(findings.clear_to_enable());
        let paid = [unmanaged("CPU1", Some(8), "Yearbook", 4_000, 0)];
        assert!(
            assess(&paid, &[]).clear_to_enable(),
            "a paid fee asks nothing"
        );
    }

    #[test]
    fn unpaid_unmanaged_fees_are_listed() {
        let fees = [
            unmanaged("CPU1", Some(7), "Yearbook", 4_000, 4_000),
            unmanaged("CPU2", Some(7), "Club", 3_000, 1_000),
            unmanaged("CPU3", Some(7), "Trip", 3_000, 0),
            unmanaged("CPU4", None, "Donation", 500, 500),
        ];
        let findings = assess(&fees, &[]);
        let ids: Vec<&str> = findings
            .unmanaged_unpaid
            .iter()
            .map(|f| f.vendor_fee_id.as_str())
            .collect();
        assert_eq!(ids, ["CPU1", "CPU2", "CPU4"]);
        assert!(findings.duplicates.is_empty());
        assert!(!findings.clear_to_enable());
    }

    #[test]
    fn duplicates_need_the_same_student_amount_and_description() {
        let fees = [
            unmanaged("CPU1", Some(7), "  Lab   FEE ", 2_500, 0),
            unmanaged("CPU2", Some(7), "Yearbook", 4_000, 4_000),
            unmanaged("CPU3", Some(7), "yearbook", 4_000, 4_000),
            unmanaged("CPU4", Some(8), "Lab fee", 2_500, 2_500),
            unmanaged("CPU5", Some(7), "Lab fee", 2_501, 2_501),
            unmanaged("CPU6", None, "Lab fee", 2_500, 2_500),
        ];
        let to_send = [
            genesis(1, 7, "Lab fee", 2_500),
            genesis(2, 9, "Lab fee", 2_500),
            genesis(3, 9, "Lab fee", 2_500),
        ];
        let findings = assess(&fees, &to_send);
        let groups: Vec<(Vec<&str>, Vec<FeeId>)> = findings
            .duplicates
            .iter()
            .map(|g| {
                (
                    g.unmanaged.iter().map(String::as_str).collect(),
                    g.genesis.clone(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                (vec!["CPU1"], vec![FeeId(1)]),
                (vec!["CPU2", "CPU3"], vec![]),
            ],
            "Genesis-only twins (fees 2 and 3) are not the preflight's business"
        );
    }

    #[test]
    fn void_fees_are_never_duplicates() {
        let mut fee = unmanaged("CPU1", Some(7), "Lab fee", 2_500, 2_500);
        fee.status = VendorFeeStatus::Void;
        let mut void_genesis = genesis(1, 7, "Lab fee", 2_500);
        void_genesis.status = FeeStatus::Void;
        let findings = assess(
            &[fee, unmanaged("CPU2", Some(7), "Lab fee", 2_500, 2_500)],
            &[void_genesis],
        );
        assert!(findings.duplicates.is_empty(), "{findings:?}");
    }

    #[test]
    fn files_are_escaped_and_neutralised() {
        let fees = [
            unmanaged("CPU1", Some(7), "=HYPERLINK(\"x\")", 2_500, 2_500),
            unmanaged("CPU2", Some(7), "<script>alert(1)</script>", 100, 100),
        ];
        let findings = assess(&fees, &[genesis(1, 7, "=HYPERLINK(\"x\")", 2_500)]);
        let csv = String::from_utf8(to_csv(&findings, &fees).unwrap()).unwrap();
        assert!(csv.contains("'=HYPERLINK"), "{csv}");
        assert!(!csv.contains(",=HYPERLINK"), "{csv}");
        assert_eq!(csv.lines().count(), 1 + 2 + 2, "{csv}");
        let html = to_html(&findings, at(), "<Springfield>");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;") && html.contains("&lt;Springfield&gt;"));
        assert!(!html.contains("http"), "no external assets");
    }
}
