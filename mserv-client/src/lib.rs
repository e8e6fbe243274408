//! The member index's contract with every other role: its protocol types ([`proto`]), the
//! caching, failing-over [`Client`], and the [`Router`] that turns a user into a store address.
//! No openraft and no RocksDB here: callers of the index link only this crate; the replicas
//! themselves are the `mserv` crate.

pub mod access;
pub mod client;
pub mod conn;
pub mod domain;
pub mod metrics;
pub mod proto;
pub mod route;

pub use client::{Client, ClientConfig, Membership};
pub use domain::{normalize_domain, DkimAlgorithm, DkimKey, Domain, HostedDomains, KeyState};
pub use proto::{
    normalize_user, ClusterInfo, MservError, Placement, Policy, RaftStatus, ReplicaId, Stats,
    StoreInfo, StoreLoad, StoreState, UserPage,
};
pub use route::{Route, RouteError, Router};
