//! Raft's messages between replicas: openraft's requests and responses, bincode-encoded, carried
//! as [`RaftRpc`] over the mserv protocol on the same port clients use.
//!
//! A peer that cannot be reached is `Unreachable` (openraft waits before trying it again); a
//! connection lost with a message in flight is a `NetworkError`; the peer's own Raft error comes
//! back as a `RemoteError`. The fault point `mserv.raft.send` fails or delays outgoing messages.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use runtime::faults::Faults;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conn::{Endpoint, Endpoints};
use crate::proto::{Op, RaftRpc, ReplicaId, Reply};
use crate::TypeConfig;
use xfs::conn::ConnError;

/// How long openraft waits before messaging an unreachable peer again.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Encode an openraft message for [`RaftRpc`].
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    xfs::codec::encode(v).map_err(|e| e.to_string())
}

/// Decode an openraft message carried in [`RaftRpc`] or [`Reply::Raft`] (lengths inside are
/// never trusted beyond the message's size).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    xfs::codec::decode(bytes).map_err(|e| e.to_string())
}

/// Makes a [`PeerClient`] per replication stream; connections are shared per address.
pub struct Network {
    pub endpoints: Arc<Endpoints>,
    pub faults: Arc<Faults>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            endpoint: self.endpoints.get(&node.addr),
            faults: self.faults.clone(),
        }
    }
}

/// Sends Raft messages to one peer.
pub struct PeerClient {
    target: ReplicaId,
    endpoint: Arc<Endpoint>,
    faults: Arc<Faults>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        wrap: fn(Vec<u8>) -> RaftRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let network = |why: String| RPCError::Network(NetworkError::new(&Failure(why)));
        if let Err(e) = self.faults.inject("mserv.raft.send").await {
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let bytes = encode(req).map_err(network)?;
        let reply = match self
            .endpoint
            .call(Op::Raft(wrap(bytes)), "", None, option.hard_ttl())
            .await
        {
            Ok(r) => r,
            Err(e @ ConnError::NotSent { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(network(e.to_string())),
        };
        match reply {
            Ok(Reply::Raft(bytes)) => {
                let result: Result<Resp, RaftError<ReplicaId, E>> =
                    decode(&bytes).map_err(|e| network(format!("undecodable Raft reply: {e}")))?;
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(network(format!(
                "unexpected reply to a Raft message: {other:?}"
            ))),
            Err(e) => Err(network(format!("peer refused a Raft message: {e}"))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<ReplicaId>,
        RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>,
    > {
        self.send(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ReplicaId>,
        RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, InstallSnapshotError>>,
    > {
        self.send(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>> {
        self.send(RaftRpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
