//! Cell hygiene for CSV. Every cell loses the control characters that
//! break readers (NUL, ESC, BEL, DEL, C1; tab and line breaks stay, RFC
//! 4180 quoting carries them). Files that people open in spreadsheets (the
//! office's: preflight, the report's CSVs) also get `neutralise`: a cell
//! that starts with `=`, `+`, `-`, `@`, a tab or a carriage return would be
//! read as a formula (CSV injection), so it is prefixed with `'`. A machine
//! feed (the OneRoster export, `CsvFile`) keeps data as it is: a phone
//! `+1 555 0100` or a name `-Ann` arrives unchanged. Quoting itself is left
//! to the `csv` crate.

use std::borrow::Cow;

use super::ExportError;

/// The first characters a spreadsheet treats as the start of a formula.
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Control characters a cell may keep: tab and line breaks (RFC 4180
/// quoting carries them). Every other one (NUL, ESC, BEL, DEL, C1) is
/// dropped: they truncate fields in some readers and drive terminals.
fn kept_control(c: char) -> bool {
    matches!(c, '\t' | '\r' | '\n')
}

/// The cell for a machine feed: control characters other than tab and
/// line breaks dropped, nothing else changed.
pub fn machine_cell(cell: &str) -> Cow<'_, str> {
    if cell.chars().any(|c| c.is_control() && !kept_control(c)) {
        Cow::Owned(
            cell.chars()
                .filter(|c| !c.is_control() || kept_control(*c))
                .collect(),
        )
    } else {
        Cow::Borrowed(cell)
    }
}

/// The cell for a spreadsheet: `machine_cell`, then prefixed with `'` if
/// it could be taken for a formula.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    let cell = machine_cell(cell);
    if cell.starts_with(FORMULA_TRIGGERS) {
        Cow::Owned(format!("'{cell}"))
    } else {
        cell
    }
}

/// A CSV writer into memory for a machine feed: RFC 4180 quoting, CRLF
/// line ends, every cell a `machine_cell` (data as it is), each row checked
/// to have the header's width.
pub struct CsvFile {
    name: &'static str,
    width: usize,
    rows: usize,
    writer: csv::Writer<Vec<u8>>,
}

impl CsvFile {
    pub fn new(name: &'static str, header: &[&str]) -> Result<CsvFile, ExportError> {
        let writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(Vec::new());
        let mut file = CsvFile {
            name,
            width: header.len(),
            rows: 0,
            writer,
        };
        file.write(header)?;
        Ok(file)
    }

    /// Appends one data row of exactly the header's width.
    pub fn row(&mut self, cells: &[&str]) -> Result<(), ExportError> {
        self.write(cells)?;
        self.rows += 1;
        Ok(())
    }

    fn write(&mut self, cells: &[&str]) -> Result<(), ExportError> {
        assert_eq!(cells.len(), self.width, "{}: row width", self.name);
        self.writer
            .write_record(cells.iter().map(|c| machine_cell(c).into_owned()))
            .map_err(|e| self.error(e))
    }

    /// The finished bytes and the number of data rows.
    pub fn finish(self) -> Result<(Vec<u8>, usize), ExportError> {
        let name = self.name;
        let rows = self.rows;
        let bytes = self.writer.into_inner().map_err(|e| ExportError::Csv {
            file: name,
            reason: e.error().to_string(),
        })?;
        Ok((bytes, rows))
    }

    fn error(&self, error: csv::Error) -> ExportError {
        ExportError::Csv {
            file: self.name,
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_starts_are_neutralised() {
        for cell in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(cell), format!("'{cell}"));
        }
        for cell in ["", "Ann", "555-0100", "a=b", "O'Brien"] {
            assert_eq!(neutralise(cell), cell);
        }
    }

    #[test]
    fn control_characters_are_dropped_before_the_formula_check() {
        assert_eq!(neutralise("Ann\u{0}x"), "Annx");
        assert_eq!(neutralise("Lee\u{1b}[31m\u{7}"), "Lee[31m");
        assert_eq!(neutralise("\u{1b}=cmd"), "'=cmd");
        assert_eq!(neutralise("two\nlines\tand tab"), "two\nlines\tand tab");
    }

    #[test]
    fn rows_are_quoted_per_rfc_4180_with_crlf() {
        let mut file = CsvFile::new("t.csv", &["a", "b"]).unwrap();
        file.row(&["x,y", "say \"hi\""]).unwrap();
        file.row(&["line\nbreak", "=cmd"]).unwrap();
        let (bytes, rows) = file.finish().unwrap();
        assert_eq!(rows, 2);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n\"line\nbreak\",=cmd\r\n"
        );
    }
}
