//! The needs-review CSV: one row per item a person must look at, for a
//! spreadsheet. Every cell that a spreadsheet would read as a formula
//! (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) is
//! neutralised with a leading apostrophe.

use std::borrow::Cow;

use super::view::{all_corrected_rows, review_rows, ReviewRow};
use super::{ReportError, RunReport};

/// The CSV's header row.
pub const REVIEW_CSV_HEADER: [&str; 16] = [
    "Review item",
    "State",
    "Age (days)",
    "At stake",
    "Student ID",
    "Student",
    "School",
    "Fee ID",
    "Fee",
    "Issue",
    "Issue code",
    "Genesis value",
    "Community Pass value",
    "Reason",
    "Suggested action",
    "Community Pass transaction",
];

/// A cell a spreadsheet will show as text, never evaluate.
pub fn neutralise_cell(cell: &str) -> Cow<'_, str> {
    let dangerous = matches!(
        cell.chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
    );
    if dangerous {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The byte order mark that makes Excel read a CSV as UTF-8.
pub const UTF8_BOM: &str = "\u{feff}";

/// The needs-review items as CSV bytes (UTF-8 with a byte order mark, so
/// Excel shows accents right; header first; the dollars at stake and the
/// age as plain numbers), most urgent first.
pub fn review_csv(report: &RunReport) -> Result<Vec<u8>, ReportError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(UTF8_BOM.as_bytes().to_vec());
    let failed = |e: csv::Error| ReportError::Csv(e.to_string());
    writer.write_record(REVIEW_CSV_HEADER).map_err(failed)?;
    for row in review_rows(report) {
        writer.write_record(csv_cells(&row)).map_err(failed)?;
    }
    writer
        .into_inner()
        .map_err(|e| ReportError::Csv(e.error().to_string()))
}

/// The corrections CSV's header row.
pub const CORRECTIONS_CSV_HEADER: [&str; 11] = [
    "At stake",
    "Student ID",
    "Student",
    "Fee ID",
    "Fee",
    "Issue",
    "Issue code",
    "Side changed",
    "Before",
    "After",
    "What cpsync did",
];

/// Every correction made (a dry run: planned) as CSV bytes, with the
/// values before → after; UTF-8 with a byte order mark, amounts as numbers.
pub fn corrections_csv(report: &RunReport) -> Result<Vec<u8>, ReportError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(UTF8_BOM.as_bytes().to_vec());
    let failed = |e: csv::Error| ReportError::Csv(e.to_string());
    writer
        .write_record(CORRECTIONS_CSV_HEADER)
        .map_err(failed)?;
    for row in all_corrected_rows(report) {
        let texts = [
            row.student_id.as_str(),
            &row.student,
            &row.fee_id,
            &row.fee,
            row.kind_label,
            row.kind,
            row.side,
            &row.before,
            &row.after,
            &row.action,
        ];
        let cells: Vec<String> = std::iter::once(row.at_stake_number.clone())
            .chain(texts.iter().map(|cell| neutralise_cell(cell).into_owned()))
            .collect();
        writer.write_record(cells).map_err(failed)?;
    }
    writer
        .into_inner()
        .map_err(|e| ReportError::Csv(e.error().to_string()))
}

fn csv_cells(row: &ReviewRow) -> Vec<String> {
    let age = row.age_days.to_string();
    let numbers = [
        row.item_id.clone(),
        row.state_text.clone(),
        age,
        row.at_stake_number.clone(),
    ];
    let texts = [
        row.student_id.as_str(),
        &row.student,
        &row.school,
        &row.fee_id,
        &row.fee,
        row.kind_label,
        row.kind,
        &row.genesis_value,
        &row.cp_value,
        &row.reason,
        &row.suggested_action,
        &row.vendor_txn_id,
    ];
    // The numbers are never negative, so a spreadsheet reads them as
    // numbers; every text cell is neutralised.
    numbers
        .into_iter()
        .chain(texts.iter().map(|cell| neutralise_cell(cell).into_owned()))
        .collect()
}
