//! `cpsync seed`: fill an empty database with a reproducible sample district.

use std::time::Instant;

use anyhow::bail;

use super::{exit, Context};
use crate::db::{genesis, runs};
use crate::seed::{self, SeedOptions, STUDENTS_MAX};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many students to enrol.
    #[arg(long, default_value_t = 2_000)]
    students: usize,
    /// The random seed: the same seed always gives the same district.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    if args.students == 0 || args.students > STUDENTS_MAX {
        bail!("--students must be between 1 and {STUDENTS_MAX}");
    }
    let mut conn = context.connect()?;
    let existing = genesis::counts(&mut conn)?;
    if existing.students > 0 || existing.fees > 0 {
        bail!(
            "{} already holds {} students and {} fees; seed only fills an empty database",
            context.database_url,
            existing.students,
            existing.fees
        );
    }
    let started = Instant::now();
    let now = chrono::Utc::now().naive_utc();
    let run_id = runs::start_run(&mut conn, "seed", "manual", false, now)?;
    let district = seed::generate(SeedOptions {
        students: args.students,
        seed: args.seed,
    });
    let generated_ms = started.elapsed().as_millis();
    let counts = seed::store(&mut conn, &district)?;
    let summary = serde_json::to_string(&counts)?;
    let records = counts.students + counts.guardians + counts.fees + counts.transactions;
    let run_counts = runs::RunCounts {
        records_in: records,
        ..runs::RunCounts::default()
    };
    let finished = chrono::Utc::now().naive_utc();
    runs::finish_run(
        &mut conn,
        run_id,
        runs::RunStatus::Succeeded,
        &run_counts,
        Some(&summary),
        None,
        finished,
    )?;
    out!(
        "seeded {}: {} schools, {} students, {} guardians, {} links, {} fees, {} transactions \
         (seed {}, generated in {} ms, total {:.1} s)",
        context.database_url,
        counts.schools,
        counts.students,
        counts.guardians,
        counts.guardian_links,
        counts.fees,
        counts.transactions,
        args.seed,
        generated_ms,
        started.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}
