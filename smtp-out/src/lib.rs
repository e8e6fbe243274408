//! Outbound delivery: stateless workers that lease due queue entries from the stores and deliver
//! them, to local mailboxes with the store's idempotent delivery and to the rest of the world
//! over SMTP.

pub mod client;
pub mod mx;
pub mod wire;
