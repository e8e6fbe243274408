//! XFS: the atomic, checksummed storage protocol that every role speaks to a user store.
//!
//! A leaf crate: message types ([`proto`], with one typed struct per operation in [`ops`]), the
//! one bincode codec with its decode limits ([`codec`]), framing ([`frame`]), the one pooled,
//! pipelined connection layer generic over the protocol ([`conn`], used for the stores and for
//! the member index; the frames they share are [`envelope`]), its server side ([`serve`]) and the
//! store client ([`client`]), and who is on the other end of a connection: mutual TLS and the
//! roles it proves ([`tls`]). It depends
//! on no other workspace crate; only this crate derives the wire's `Serialize`/`Deserialize`.

pub mod access;
pub mod client;
pub mod codec;
pub mod conn;
pub mod envelope;
pub mod frame;
pub mod proto;
pub mod serve;
pub mod tls;

pub use client::{CallError, Client, ClientConfig, StorePool};
pub use codec::CodecError;
pub use frame::{FrameError, MAX_FRAME_DEFAULT};
pub use proto::*;
pub use tls::{Caller, Identity, Role, Transport};
