//! The `cpsync` binary: parses the command line and dispatches to a
//! subcommand in `cpsync::cli`.

use clap::{Parser, Subcommand};

/// Keeps Genesis and Community Pass in agreement.
#[derive(Debug, Parser)]
#[command(name = "cpsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Community Pass simulator on loopback.
    Sim(cpsync::cli::sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Sim(args) => cpsync::cli::sim::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
