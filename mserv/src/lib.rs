//! mserv: the member index. Where each user's mailbox lives (user → store, segment, epoch), the
//! registry of stores and of clusters with their front doors, replicated over 3 (or 1, or 5)
//! replicas with openraft, log and state machine in RocksDB; and [`Client`], the caching client
//! every other role uses.
//!
//! Only mserv decides placement, and only through a compare-and-set on the placement epoch. It
//! never calls a store: a caller holding a stale placement is fenced by the store (`Moved`),
//! drops its cached entry and looks the user up again.

pub use role_config::mserv as config;
pub mod metrics;
pub mod network;
pub mod node;
pub mod server;
pub mod state;
pub mod storage;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use runtime::admission::Admission;
use runtime::role::Role;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::{MservConfig, PeerConfig};
// The protocol and the client are the index's contract with other roles and live in their own
// crate; the replica uses them as any caller does.
pub use mserv_client::{client, conn, proto, route};
pub use mserv_client::{
    normalize_user, Client, ClientConfig, ClusterInfo, Membership, MservError, Placement, Policy,
    RaftStatus, ReplicaId, Stats, StoreInfo, StoreLoad, StoreState, UserPage,
};

openraft::declare_raft_types!(
    /// The Raft types of the member index: commands in, their outcomes out.
    pub TypeConfig:
        D = proto::Command,
        R = Result<proto::Applied, proto::MservError>,
        NodeId = proto::ReplicaId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Bind the configured addresses and serve until `shutdown` triggers.
pub async fn run(cfg: MservConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let (listener, admin) =
        runtime::net::bind_pair("the member index", cfg.listen, cfg.admin.listen).await?;
    run_with(cfg, listener, admin, shutdown).await
}

/// Serve on listeners already bound (what tests call).
pub async fn run_with(
    cfg: MservConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let role = Role::start("mserv", admin, &cfg.faults, &shutdown)?;
    let faults = role.faults.clone();
    let admission = Admission::new(cfg.max_in_flight);
    role.health.set_admission(admission.clone());
    role.health.set_info("replica", cfg.id.into());

    let dir = cfg.data_dir.clone();
    let (log, sm) = tokio::task::spawn_blocking(move || storage::open(&dir))
        .await
        .context("opening storage")??;
    let identity = cfg
        .internal_tls
        .identity(xfs::Role::Mserv)
        .map_err(|e| anyhow::anyhow!("internal TLS: {e}"))?;
    let node = Arc::new(node::Node::start(&cfg, identity.clone(), log, sm, faults.clone()).await?);
    node.watch(role.health.clone(), &shutdown);
    node.bootstrap(&cfg).await?;

    tracing::info!(id = cfg.id, data = %cfg.data_dir.display(), "replica open");
    role.ready(listener.local_addr()?);

    let ctx = Arc::new(server::Ctx {
        node: node.clone(),
        admission,
        faults,
        max_frame: cfg.max_frame_bytes,
        transport: identity.transport.clone(),
    });
    let conns = shutdown.child();
    server::serve(listener, ctx, cfg.max_connections, conns.clone()).await;

    role.drain(&conns, Duration::from_secs(cfg.drain_timeout_secs))
        .await;
    node.shutdown().await;
    role.finish().await
}
