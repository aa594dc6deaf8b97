//! Command-line subcommands, one file each with its `Args` and `run(args)`.

pub mod sim;
