//! Servers the integration tests run in process.

pub mod dns;
