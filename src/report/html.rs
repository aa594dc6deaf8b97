//! The HTML renderings: the full report and the email's HTML part, from the
//! tera templates in `reports/`, embedded in the binary. Template names end
//! in `.html` and autoescaping is switched on for them explicitly, so every
//! value from the data is escaped.

use std::sync::OnceLock;

use tera::{Context, Tera};

use super::view::report_view;
use super::{ReportError, RunReport};

/// The full report: self-contained (inline CSS and SVG, no scripts).
pub const REPORT_TEMPLATE: &str = "report.html";
/// The nightly email's HTML part: the verdict, totals and counts.
pub const EMAIL_TEMPLATE: &str = "email.html";

const TEMPLATES: [(&str, &str); 2] = [
    (REPORT_TEMPLATE, include_str!("../../reports/report.html")),
    (EMAIL_TEMPLATE, include_str!("../../reports/email.html")),
];

fn templates() -> &'static Result<Tera, String> {
    static TERA: OnceLock<Result<Tera, String>> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![".html"]);
        tera.add_raw_templates(TEMPLATES.to_vec())
            .map_err(|e| error_chain(&e))?;
        Ok(tera)
    })
}

/// Renders one embedded template with the report's view.
pub(super) fn render_template(
    name: &'static str,
    report: &RunReport,
) -> Result<String, ReportError> {
    let failed = |reason: String| ReportError::Template { name, reason };
    let tera = templates().as_ref().map_err(|e| failed(e.clone()))?;
    let context =
        Context::from_serialize(report_view(report)).map_err(|e| failed(error_chain(&e)))?;
    tera.render(name, &context)
        .map_err(|e| failed(error_chain(&e)))
}

/// The full HTML report.
pub fn render_html(report: &RunReport) -> Result<String, ReportError> {
    render_template(REPORT_TEMPLATE, report)
}

/// The HTML part of the nightly email.
pub fn render_email_html(report: &RunReport) -> Result<String, ReportError> {
    render_template(EMAIL_TEMPLATE, report)
}

/// tera puts the useful part of a message in the error's sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
