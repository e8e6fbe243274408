//! One replica: the openraft node over the RocksDB storage, the operations clients ask for, and
//! the routing of writes. Reads are answered from this replica's own state machine; writes and
//! membership changes run on the leader, and a follower passes them on to it once (a write
//! already passed on is never passed on again: a second hop answers `NoLeader`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use runtime::faults::Faults;
use runtime::health::Health;
use runtime::shutdown::Shutdown;
use serde_json::json;

use crate::config::MservConfig;
use crate::conn::{into_mserv, Endpoints};
use crate::metrics;
use crate::network::{self, Network};
use crate::proto::{
    normalize_user, Applied, Command, MservError, Op, Placement, RaftRpc, RaftStatus, ReplicaId,
    Reply, Stats,
};
use crate::storage::{self, LogStore, Shared, StateMachineStore};
use crate::TypeConfig;
use mserv_client::Domain;
use xfs::conn::PoolConfig;

/// A running replica.
pub struct Node {
    pub id: ReplicaId,
    pub raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    peers: Arc<Endpoints>,
}

fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// Start the Raft node on opened storage.
    pub async fn start(
        cfg: &MservConfig,
        identity: xfs::Identity,
        log: LogStore,
        sm: StateMachineStore,
        faults: Arc<Faults>,
    ) -> anyhow::Result<Node> {
        let raft_cfg = openraft::Config {
            cluster_name: "mserv".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            install_snapshot_timeout: cfg.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            // openraft gives an append one heartbeat period to answer: keep each one small.
            max_payload_entries: 128,
            ..Default::default()
        }
        .validate()
        .context("Raft settings")?;
        let peers = Arc::new(Endpoints::new(PoolConfig {
            identity,
            conns: 2,
            connect_timeout: Duration::from_millis(cfg.election_timeout_min_ms.max(100)),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(cfg.heartbeat_ms.max(50) * 4),
            max_frame: cfg.max_frame_bytes,
        }));
        let shared = sm.shared();
        let net = Network {
            endpoints: peers.clone(),
            faults,
        };
        let raft = Raft::new(cfg.id, Arc::new(raft_cfg), net, log, sm)
            .await
            .context("starting Raft")?;
        Ok(Node {
            id: cfg.id,
            raft,
            shared,
            peers,
        })
    }

    /// On first start with empty storage, the replica with the smallest id in `peers`
    /// initializes the cluster with all of them; every other replica waits to be contacted.
    pub async fn bootstrap(&self, cfg: &MservConfig) -> anyhow::Result<()> {
        let smallest = cfg.peers.iter().map(|p| p.id).min();
        if !cfg.bootstrap || smallest != Some(cfg.id) {
            return Ok(());
        }
        if self
            .raft
            .is_initialized()
            .await
            .context("reading Raft state")?
        {
            return Ok(());
        }
        let members: BTreeMap<ReplicaId, BasicNode> = cfg
            .peers
            .iter()
            .map(|p| (p.id, BasicNode::new(&p.addr)))
            .collect();
        tracing::info!(?members, "initializing a new cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(reason = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("initializing the cluster: {e}")),
        }
    }

    /// Follow Raft's metrics into the gauges and `/healthz` (`raft_role`, `raft_leader`,
    /// `raft_term`) until `shutdown`.
    pub fn watch(&self, health: Arc<Health>, shutdown: &Shutdown) {
        let mut rx = self.raft.metrics();
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            let mut last = None;
            loop {
                let (state, leader, term) = {
                    let m = rx.borrow_and_update();
                    (m.state, m.current_leader, m.current_term)
                };
                metrics::TERM.set(term as i64);
                metrics::LEADER.set(leader.map_or(-1, |l| l as i64));
                metrics::IS_LEADER.set(i64::from(state == ServerState::Leader));
                if last != Some((state, leader, term)) {
                    last = Some((state, leader, term));
                    health.set_info("raft_role", json!(role_name(state)));
                    health.set_info("raft_leader", json!(leader));
                    health.set_info("raft_term", json!(term));
                    tracing::info!(role = role_name(state), ?leader, term, "raft state");
                }
                tokio::select! {
                    _ = sd.triggered() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
            }
        });
    }

    pub fn lookup(&self, user: &str) -> Result<Placement, MservError> {
        let user = normalize_user(user)?;
        self.shared
            .read()
            .lookup(&user)
            .cloned()
            .ok_or(MservError::NoSuchUser)
    }

    /// Serve a read from this replica's state.
    pub fn read(&self, op: &Op) -> Result<Reply, MservError> {
        match op {
            Op::Ping => Ok(Reply::Pong),
            Op::Lookup { user } => self.lookup(user).map(Reply::Placement),
            Op::ListStores => Ok(Reply::Stores(self.shared.read().stores())),
            Op::ListClusters => Ok(Reply::Clusters(self.shared.read().clusters())),
            Op::ListDomains => Ok(Reply::Domains(
                self.shared.read().domains().map(Domain::public).collect(),
            )),
            Op::DomainKeys => Ok(Reply::Domains(
                self.shared.read().domains().cloned().collect(),
            )),
            Op::ListStoreUsers {
                store,
                after,
                limit,
            } => self
                .shared
                .read()
                .store_users(store, after.as_deref(), *limit)
                .map(Reply::Users),
            Op::Stats => Ok(Reply::Stats(Box::new(self.stats()))),
            other => Err(MservError::BadRequest {
                why: format!("{} is not a read", other.name()),
            }),
        }
    }

    pub fn stats(&self) -> Stats {
        let m: RaftMetrics<ReplicaId, BasicNode> = self.raft.metrics().borrow().clone();
        let (voters, learners) = storage::members(m.membership_config.membership());
        let (users, stores) = {
            let s = self.shared.read();
            (s.user_count(), s.store_counts())
        };
        Stats {
            users,
            stores,
            raft: RaftStatus {
                id: self.id,
                role: role_name(m.state).into(),
                leader: m.current_leader,
                term: m.current_term,
                last_log_index: m.last_log_index,
                last_applied: m.last_applied.map(|l| l.index),
                snapshot_index: m.snapshot.map(|l| l.index),
                purged_index: m.purged.map(|l| l.index),
                voters,
                learners,
                snapshots_built: self.shared.snapshots_built.load(Ordering::Relaxed),
                snapshots_installed: self.shared.snapshots_installed.load(Ordering::Relaxed),
            },
        }
    }

    /// Apply a write through the leader: here if this replica leads, else passed on once.
    pub async fn write(
        &self,
        cmd: Command,
        forwarded: bool,
        timeout: Duration,
    ) -> Result<Applied, MservError> {
        let started = Instant::now();
        let attempt = tokio::time::timeout(timeout, self.raft.client_write(cmd.clone())).await;
        let err = match attempt {
            Err(_) => {
                return Err(MservError::OutcomeUnknown {
                    why: format!("not applied within {timeout:?}"),
                })
            }
            Ok(Ok(resp)) => return resp.data,
            Ok(Err(e)) => e,
        };
        let addr = self.leader_addr(err, forwarded)?;
        let op = Op::Write {
            cmd,
            forwarded: true,
        };
        match self
            .forward(&addr, op, timeout.saturating_sub(started.elapsed()))
            .await?
        {
            Reply::Applied(a) => Ok(a),
            other => Err(MservError::Protocol {
                why: format!("leader answered a write with {other:?}"),
            }),
        }
    }

    /// Where a write refused with `err` should go instead (only a `ForwardToLeader` moves it,
    /// and only once); the refusal, for everything else.
    fn leader_addr(
        &self,
        err: RaftError<ReplicaId, ClientWriteError<ReplicaId, BasicNode>>,
        forwarded: bool,
    ) -> Result<String, MservError> {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                if forwarded {
                    return Err(MservError::NoLeader {
                        why: "leadership moved while the write was passed on".into(),
                    });
                }
                match f.leader_node {
                    Some(node) => Ok(node.addr),
                    None => Err(MservError::NoLeader {
                        why: "no leader elected".into(),
                    }),
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Err(MservError::BadRequest { why: e.to_string() })
            }
            RaftError::Fatal(e) => Err(MservError::Unavailable {
                why: format!("replica {} stopped: {e}", self.id),
            }),
        }
    }

    async fn forward(&self, addr: &str, op: Op, timeout: Duration) -> Result<Reply, MservError> {
        let result = self.peers.get(addr).call(op, "", None, timeout).await;
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => e.kind(),
            Err(_) => "failed",
        };
        metrics::FORWARDED.with_label_values(&[outcome]).inc();
        result.map_err(into_mserv)?
    }

    /// Add a replica as a learner, wait until it has caught up (from a snapshot if the log it
    /// needs is purged), then make it a voter if asked.
    pub async fn add_replica(
        &self,
        id: ReplicaId,
        addr: String,
        voter: bool,
        forwarded: bool,
        timeout: Duration,
    ) -> Result<Reply, MservError> {
        let started = Instant::now();
        let node = BasicNode::new(&addr);
        let added = tokio::time::timeout(timeout, self.raft.add_learner(id, node, true)).await;
        match added {
            Err(_) => {
                return Err(MservError::OutcomeUnknown {
                    why: format!("replica {id} did not catch up within {timeout:?}"),
                })
            }
            Ok(Err(e)) => {
                let leader = self.leader_addr(e, forwarded)?;
                let op = Op::AddReplica {
                    id,
                    addr,
                    voter,
                    forwarded: true,
                };
                return self
                    .forward(&leader, op, timeout.saturating_sub(started.elapsed()))
                    .await;
            }
            Ok(Ok(_)) => tracing::info!(id, %addr, "replica added as a learner"),
        }
        if voter {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            self.change_membership(change, timeout.saturating_sub(started.elapsed()))
                .await?;
            tracing::info!(id, "replica is a voter");
        }
        Ok(self.membership_reply())
    }

    /// Remove a replica (voter or learner) from the membership.
    pub async fn remove_replica(
        &self,
        id: ReplicaId,
        forwarded: bool,
        timeout: Duration,
    ) -> Result<Reply, MservError> {
        let started = Instant::now();
        let (voters, learners) = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            storage::members(m.membership())
        };
        let change = if voters.iter().any(|(v, _)| *v == id) {
            if voters.len() == 1 {
                return Err(MservError::BadRequest {
                    why: "cannot remove the last voter".into(),
                });
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if learners.iter().any(|(l, _)| *l == id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(MservError::BadRequest {
                why: format!("replica {id} is not a member"),
            });
        };
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Err(_) => Err(MservError::OutcomeUnknown {
                why: format!("membership change not committed within {timeout:?}"),
            }),
            Ok(Ok(_)) => {
                tracing::info!(id, "replica removed");
                Ok(self.membership_reply())
            }
            Ok(Err(e)) => {
                let leader = self.leader_addr(e, forwarded)?;
                let op = Op::RemoveReplica {
                    id,
                    forwarded: true,
                };
                self.forward(&leader, op, timeout.saturating_sub(started.elapsed()))
                    .await
            }
        }
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<ReplicaId, BasicNode>,
        timeout: Duration,
    ) -> Result<(), MservError> {
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Err(_) => Err(MservError::OutcomeUnknown {
                why: format!("membership change not committed within {timeout:?}"),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match self.leader_addr(e, true) {
                Err(e) => e,
                Ok(_) => MservError::NoLeader {
                    why: "leadership moved during a membership change".into(),
                },
            }),
        }
    }

    fn membership_reply(&self) -> Reply {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let (voters, learners) = storage::members(m.membership());
        Reply::Membership { voters, learners }
    }

    /// Hand a peer's Raft message to openraft and encode its answer.
    pub async fn raft_rpc(&self, rpc: RaftRpc) -> Result<Reply, MservError> {
        let bad = |e: String| MservError::Protocol {
            why: format!("undecodable Raft message: {e}"),
        };
        let encoded = match rpc {
            RaftRpc::AppendEntries(b) => {
                let req: AppendEntriesRequest<TypeConfig> = network::decode(&b).map_err(bad)?;
                network::encode(&self.raft.append_entries(req).await)
            }
            RaftRpc::Vote(b) => {
                let req: VoteRequest<ReplicaId> = network::decode(&b).map_err(bad)?;
                network::encode(&self.raft.vote(req).await)
            }
            RaftRpc::InstallSnapshot(b) => {
                let req: InstallSnapshotRequest<TypeConfig> = network::decode(&b).map_err(bad)?;
                network::encode(&self.raft.install_snapshot(req).await)
            }
        };
        encoded
            .map(Reply::Raft)
            .map_err(|why| MservError::Protocol { why })
    }

    /// Stop Raft (the storage closes once the node is dropped).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
    }
}
