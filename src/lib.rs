//! cpsync keeps a school district's student fees in Genesis (the SIS) and in
//! Community Pass (the payment portal) in agreement, and proves it nightly.
//!
//! The crate is a library with one binary. `domain` and `money` are the shared
//! vocabulary; `db` is the only module that knows SQL; see `ARCHITECTURE.md`.

pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod export;
pub mod failpoint;
pub mod files;
pub mod money;
pub mod portal;
pub mod portal_view;
pub mod preflight;
pub mod reconcile;
pub mod report;
pub mod retry;
pub mod review;
pub mod scenario;
pub mod secret;
pub mod seed;
pub mod setup;
pub mod sim;
pub mod sync;
