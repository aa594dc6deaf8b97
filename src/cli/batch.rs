//! `cpsync batch`: the nightly batch as one command for every scheduler
//! (systemd, cron, a Kubernetes CronJob): send-fees, get-payments,
//! get-balances, nightly (its report and email) and the demographic export
//! over SFTP, in that order, in this process. A step that fails never stops
//! the ones after it — a failed send-fees must not cost the office its
//! morning report — and the batch exits with the worst step's code, so the
//! scheduler still sees the failure.

use clap::Parser;

use super::{dispatch, exit, Cli, Context};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cpsync batch                    every step, the export over SFTP ([sftp] in the config)
  cpsync batch --no-export        the reconciliation steps only

Exit codes: the worst step's: 1 a step failed (the others still ran),
5 the nightly did not converge, 4 a step found the district lock held,
3 items need review, 0 everything done and nothing needs a person.")]
pub struct Args {
    /// Leave out the demographic export (also left out, with a line
    /// saying so, when the config has no [sftp] section).
    #[arg(long)]
    no_export: bool,
}

/// How bad a step's exit code is: the batch exits with the worst.
fn severity(code: u8) -> u8 {
    match code {
        exit::OK => 0,
        exit::NEEDS_REVIEW => 1,
        exit::LOCKED => 2,
        exit::NOT_CONVERGED => 3,
        _ => 4, // a failure (1) or anything unexpected
    }
}

/// The steps, as the words a person would type after `cpsync`.
fn steps(context: &Context, args: &Args) -> Vec<&'static [&'static str]> {
    let mut steps: Vec<&'static [&'static str]> = vec![
        &["send-fees"],
        &["get-payments"],
        &["get-balances"],
        &["nightly"],
    ];
    if !args.no_export && context.config.sftp.is_some() {
        steps.push(&["export", "--sftp"]);
    }
    steps
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    if !args.no_export && context.config.sftp.is_none() {
        out!("cpsync batch: no [sftp] section in the config, so the export step is left out");
    }
    let steps = steps(context, &args);
    let mut worst = exit::OK;
    let mut ended = Vec::with_capacity(steps.len());
    for (number, words) in steps.iter().enumerate() {
        let name = words.join(" ");
        out!(
            "cpsync batch: step {}/{}: cpsync {name}",
            number + 1,
            steps.len()
        );
        let code = match run_step(context, words) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("cpsync: {name}: error: {}", super::one_line_chain(&error));
                exit::FAILURE
            }
        };
        if severity(code) > severity(worst) {
            worst = code;
        }
        ended.push(format!("{name} {code}"));
    }
    out!("cpsync batch: done, exit codes: {}", ended.join(", "));
    Ok(worst)
}

/// One step, parsed as the command line would be and run with the same
/// context (config, database, Community Pass).
fn run_step(context: &Context, words: &[&str]) -> anyhow::Result<u8> {
    let cli = Cli::try_parse_from(std::iter::once("cpsync").chain(words.iter().copied()))?;
    dispatch(context, cli.command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_step_decides_the_exit_code() {
        let worst = |codes: &[u8]| {
            codes.iter().copied().fold(
                exit::OK,
                |w, c| if severity(c) > severity(w) { c } else { w },
            )
        };
        assert_eq!(worst(&[0, 0, 0, 0, 0]), exit::OK);
        assert_eq!(worst(&[0, 3, 0, 3, 0]), exit::NEEDS_REVIEW);
        assert_eq!(worst(&[4, 3, 0, 0, 0]), exit::LOCKED);
        assert_eq!(worst(&[0, 0, 0, 5, 3]), exit::NOT_CONVERGED);
        assert_eq!(worst(&[1, 3, 0, 5, 0]), exit::FAILURE);
        assert_eq!(
            worst(&[0, 0, 0, 3, 2]),
            2,
            "an unexpected code counts as a failure"
        );
    }
}
