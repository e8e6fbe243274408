//! Driving a running HCU from outside, as an operator does: where its processes are
//! ([`endpoints`]), user and store administration through the index and the stores ([`admin`]),
//! and every process's health ([`status`]). Shared by mailctl and loadgen, so neither depends on
//! the other.

pub mod admin;
pub mod endpoints;
pub mod status;

pub use admin::Hcu;
pub use endpoints::Endpoints;
