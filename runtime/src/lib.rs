//! What every megamail service process shares: config, logging, metrics, health, the admin port,
//! shutdown, fault injection, backoff with jitter and admission control.
//!
//! A role binary is a thin `main.rs` that calls [`cli::main`] with the role's `run(config, shutdown)`;
//! the role's start and stop around its own work are [`role::Role`]'s.
//! This crate depends on no role crate.

pub mod admin;
pub mod admission;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod faults;
pub mod health;
pub mod http;
pub mod http_client;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod role;
pub mod server;
pub mod shutdown;
pub mod time;

/// The version every process reports in its logs and in `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
