//! XFS: the atomic, checksummed storage protocol that every role speaks to a user store.
//!
//! A leaf crate: message types ([`proto`]), framing ([`frame`]) and the async client ([`client`]).
//! It depends on no role crate; only this crate derives the wire's `Serialize`/`Deserialize`.

pub mod client;
pub mod frame;
pub mod proto;

pub use client::{CallError, Client, ClientConfig, StorePool};
pub use frame::{FrameError, MAX_FRAME_DEFAULT};
pub use proto::*;
