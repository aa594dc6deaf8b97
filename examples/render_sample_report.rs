//! Writes the sample nightly report (`cpsync::report::sample`) as HTML to the
//! path given, owner-only. `scripts/test` renders it with headless Chromium
//! to prove the report opens in a real browser.
//!
//! Usage: cargo run --example render_sample_report -- OUT.html [--failed]

use std::path::PathBuf;
use std::process::ExitCode;

use cpsync::report::{self, sample};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: render_sample_report OUT.html [--failed]");
        return ExitCode::from(2);
    };
    let failed = args.next().is_some_and(|flag| flag == "--failed");
    let sample = if failed {
        sample::sample_failed_report()
    } else {
        sample::sample_report()
    };
    let written = report::render_html(&sample)
        .map_err(|e| e.to_string())
        .and_then(|html| {
            report::write_private_file(&out, html.as_bytes()).map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => {
            println!("{}", out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("render_sample_report: {error}");
            ExitCode::FAILURE
        }
    }
}
