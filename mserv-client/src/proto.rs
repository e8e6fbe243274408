//! The mserv wire protocol and the records it carries: placements, stores, clusters, the
//! replicated write commands, replies and the typed errors every caller handles.
//!
//! Framing is XFS's (`u32 length | u32 crc32 | bincode`, see [`xfs::frame`]). A connection starts
//! with a hello carrying [`PROTOCOL_VERSION`]; then requests carry an id and a relative deadline,
//! may be pipelined, and are answered by id in completion order. Clients and peer replicas use
//! the same port: Raft's own messages travel as [`Op::Raft`], their openraft payloads encoded
//! with bincode inside the frame.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::{DkimKey, Domain};

/// Bumped whenever a frame's encoding changes; a replica refuses a hello from another version.
pub const PROTOCOL_VERSION: u32 = 4;

/// A replica's id in the Raft membership.
pub type ReplicaId = u64;

/// Replicas as `(id, address)`, by id.
pub type Members = Vec<(ReplicaId, String)>;

/// Where a user's mailbox lives. `epoch` grows by one at every move: the store fences callers
/// holding an older one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub store: String,
    pub segment: u32,
    pub epoch: u64,
}

/// Whether a store takes new mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum StoreState {
    /// Serves its mailboxes and is a candidate for new ones.
    #[default]
    Active,
    /// Serves its mailboxes, takes no new ones, and is being evacuated.
    Draining,
    /// Out of service: never chosen for a placement.
    Offline,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Active => "active",
            StoreState::Draining => "draining",
            StoreState::Offline => "offline",
        }
    }
}

impl fmt::Display for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StoreState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(StoreState::Active),
            "draining" => Ok(StoreState::Draining),
            "offline" => Ok(StoreState::Offline),
            other => Err(format!(
                "`{other}` is not a store state (active, draining, offline)"
            )),
        }
    }
}

/// A user store as registered in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub name: String,
    /// Where the store serves XFS.
    pub xfs_addr: String,
    /// The cluster (HCU) the store belongs to: its front doors serve the store's users.
    pub cluster: String,
    /// The store's segment ids; a placement names one of them.
    pub segments: Vec<u32>,
    pub state: StoreState,
}

/// A store with the number of users placed on it, in total and per segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLoad {
    pub info: StoreInfo,
    pub users: u64,
    /// `(segment, users)` for every segment of the store, in segment order.
    pub segment_users: Vec<(u32, u64)>,
}

/// A cluster and the base URLs of its front doors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub front_doors: Vec<String>,
}

/// How a new user's store and segment are chosen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Policy {
    /// The active store with the fewest users, then its segment with the fewest users (ties go to
    /// the smaller name, then the smaller segment id).
    #[default]
    LeastLoaded,
    /// This store and segment; the store must be active.
    Explicit { store: String, segment: u32 },
}

/// A replicated write: the payload of a Raft log entry. Applying one is deterministic, so every
/// replica reaches the same state and the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Place a new user. Refused if the user exists or no store qualifies.
    CreateUser {
        user: String,
        policy: Policy,
    },
    /// Place many new users by the least-loaded policy (bulk provisioning). Users that already
    /// exist are skipped and counted, so a retried batch is harmless.
    CreateUsers {
        users: Vec<String>,
    },
    /// Compare-and-set: move `user` to `store`/`segment` if its epoch is still `expected_epoch`;
    /// the epoch then grows by one.
    MoveUser {
        user: String,
        expected_epoch: u64,
        store: String,
        segment: u32,
    },
    DeleteUser {
        user: String,
    },
    /// Add a store or update one (its address, cluster, segments and state). A segment still
    /// holding users cannot be removed.
    RegisterStore {
        info: StoreInfo,
    },
    SetStoreState {
        store: String,
        state: StoreState,
    },
    /// Add a cluster or replace its front doors.
    RegisterCluster {
        cluster: ClusterInfo,
    },
    /// Host a new domain, with its first DKIM key (made active at once: nothing was signed
    /// before it). Refused if the domain is hosted already.
    AddDomain {
        name: String,
        key: Option<DkimKey>,
    },
    /// Stop hosting a domain. Refused while any user's address is in it.
    DeleteDomain {
        name: String,
    },
    /// Add a pending key to a domain (replacing a pending one not yet activated).
    AddDkimKey {
        domain: String,
        key: DkimKey,
    },
    /// Make the pending key `selector` the one that signs: the active key is retired, and a key
    /// retired before is dropped.
    ActivateDkimKey {
        domain: String,
        selector: String,
    },
}

impl Command {
    /// A short name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateUser { .. } => "create_user",
            Command::CreateUsers { .. } => "create_users",
            Command::MoveUser { .. } => "move_user",
            Command::DeleteUser { .. } => "delete_user",
            Command::RegisterStore { .. } => "register_store",
            Command::SetStoreState { .. } => "set_store_state",
            Command::RegisterCluster { .. } => "register_cluster",
            Command::AddDomain { .. } => "add_domain",
            Command::DeleteDomain { .. } => "delete_domain",
            Command::AddDkimKey { .. } => "add_dkim_key",
            Command::ActivateDkimKey { .. } => "activate_dkim_key",
        }
    }
}

/// What applying a command produced (the Raft response type): the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Placement(Placement),
    Batch { created: u64, existed: u64 },
    Done,
}

/// One page of a store's users, in user order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserPage {
    pub users: Vec<(String, Placement)>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// This replica's view of Raft.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RaftStatus {
    pub id: ReplicaId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// The last log index covered by this replica's current snapshot.
    pub snapshot_index: Option<u64>,
    /// The last log index deleted from this replica's log.
    pub purged_index: Option<u64>,
    /// Replica id → address, of the voters and of the learners.
    pub voters: Vec<(ReplicaId, String)>,
    pub learners: Vec<(ReplicaId, String)>,
    /// Snapshots this process built, and installed from a leader, since it started.
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
}

/// Counts and Raft status, as one replica sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub users: u64,
    /// `(store, users)` for every registered store.
    pub stores: Vec<(String, u64)>,
    pub raft: RaftStatus,
}

/// The errors callers act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MservError {
    #[error("no such user")]
    NoSuchUser,
    #[error("no hosted domain {domain}")]
    NoSuchDomain { domain: String },
    #[error("domain {domain} is hosted already")]
    DomainExists { domain: String },
    #[error("user already exists on {} segment {} (epoch {})", placement.store, placement.segment, placement.epoch)]
    AlreadyExists { placement: Placement },
    /// A compare-and-set named an epoch that is no longer the user's.
    #[error("stale epoch: the placement is at epoch {current}")]
    StaleEpoch { current: u64 },
    #[error("no active store to place a user on")]
    NoActiveStore,
    #[error("no store named {store}")]
    NoSuchStore { store: String },
    #[error("store {store} has no segment {segment}")]
    NoSuchSegment { store: String, segment: u32 },
    #[error("store {store} is {state}, not active")]
    StoreNotActive { store: String, state: StoreState },
    #[error("bad request: {why}")]
    BadRequest { why: String },
    /// The write was not applied: there is no leader right now (an election is running).
    #[error("no leader: {why}")]
    NoLeader { why: String },
    /// Admission control shed the request; it was not run.
    #[error("replica busy")]
    Busy,
    /// No replica could take the request; it was not applied.
    #[error("unavailable: {why}")]
    Unavailable { why: String },
    /// A write whose answer was lost: it may or may not have been applied.
    #[error("outcome unknown: {why}")]
    OutcomeUnknown { why: String },
    #[error("protocol error: {why}")]
    Protocol { why: String },
    /// The caller's role may not ask for this operation.
    #[error("forbidden: a {role} may not {op}")]
    Forbidden { op: String, role: String },
}

impl MservError {
    /// A short name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MservError::NoSuchUser => "no_such_user",
            MservError::NoSuchDomain { .. } => "no_such_domain",
            MservError::DomainExists { .. } => "domain_exists",
            MservError::AlreadyExists { .. } => "already_exists",
            MservError::StaleEpoch { .. } => "stale_epoch",
            MservError::NoActiveStore => "no_active_store",
            MservError::NoSuchStore { .. } => "no_such_store",
            MservError::NoSuchSegment { .. } => "no_such_segment",
            MservError::StoreNotActive { .. } => "store_not_active",
            MservError::BadRequest { .. } => "bad_request",
            MservError::NoLeader { .. } => "no_leader",
            MservError::Busy => "busy",
            MservError::Unavailable { .. } => "unavailable",
            MservError::OutcomeUnknown { .. } => "outcome_unknown",
            MservError::Protocol { .. } => "protocol",
            MservError::Forbidden { .. } => "forbidden",
        }
    }

    /// Whether the request certainly was not applied and may be sent again (to any replica).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MservError::NoLeader { .. } | MservError::Busy | MservError::Unavailable { .. }
        )
    }
}

/// Lowercase and check a user id (a full mail address): one `@` with something on both sides,
/// no whitespace or control characters, at most 320 bytes.
pub fn normalize_user(user: &str) -> Result<String, MservError> {
    let u = user.trim().to_lowercase();
    let bad = |why: &str| MservError::BadRequest {
        why: format!("user `{user}`: {why}"),
    };
    if u.len() > 320 {
        return Err(bad("longer than 320 bytes"));
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or control characters"));
    }
    match u.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(u)
        }
        _ => Err(bad("not a full address (local@domain)")),
    }
}

/// A Raft message between replicas; the bytes are the bincode of openraft's request type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(Vec<u8>),
    Vote(Vec<u8>),
    InstallSnapshot(Vec<u8>),
}

impl RaftRpc {
    pub fn name(&self) -> &'static str {
        match self {
            RaftRpc::AppendEntries(_) => "raft_append",
            RaftRpc::Vote(_) => "raft_vote",
            RaftRpc::InstallSnapshot(_) => "raft_snapshot",
        }
    }
}

/// An operation. Reads are answered by the replica asked, from its own state; writes and
/// membership changes go to the leader (a follower forwards them once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Ping,
    Lookup {
        user: String,
    },
    /// `forwarded` is set by a follower passing the write on, so it is not passed on again.
    Write {
        cmd: Command,
        forwarded: bool,
    },
    ListStores,
    ListClusters,
    /// The hosted domains, by name, without private keys.
    ListDomains,
    /// The hosted domains with their private keys (smtp-out signs with them).
    DomainKeys,
    ListStoreUsers {
        store: String,
        after: Option<String>,
        limit: u32,
    },
    Stats,
    /// Add a replica as a learner, wait until it has caught up, then (if `voter`) make it a voter.
    AddReplica {
        id: ReplicaId,
        addr: String,
        voter: bool,
        forwarded: bool,
    },
    /// Remove a replica from the membership.
    RemoveReplica {
        id: ReplicaId,
        forwarded: bool,
    },
    Raft(RaftRpc),
}

impl Op {
    /// A short name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Lookup { .. } => "lookup",
            Op::Write { cmd, .. } => cmd.name(),
            Op::ListStores => "list_stores",
            Op::ListClusters => "list_clusters",
            Op::ListDomains => "list_domains",
            Op::DomainKeys => "domain_keys",
            Op::ListStoreUsers { .. } => "list_store_users",
            Op::Stats => "stats",
            Op::AddReplica { .. } => "add_replica",
            Op::RemoveReplica { .. } => "remove_replica",
            Op::Raft(rpc) => rpc.name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong,
    Placement(Placement),
    Applied(Applied),
    Stores(Vec<StoreLoad>),
    Clusters(Vec<ClusterInfo>),
    Domains(Vec<Domain>),
    Users(UserPage),
    Stats(Box<Stats>),
    /// The membership after a change: voters and learners with their addresses.
    Membership {
        voters: Vec<(ReplicaId, String)>,
        learners: Vec<(ReplicaId, String)>,
    },
    /// The bincode of openraft's `Result<response, RaftError>`.
    Raft(Vec<u8>),
}

/// What a replica says of itself when it accepts a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub version: u32,
    pub replica: ReplicaId,
}

/// The frames, as every framed protocol here has them (`xfs::envelope`).
pub type ClientFrame = xfs::envelope::ClientFrame<Op>;
pub type ServerFrame = xfs::envelope::ServerFrame<ServerHello, Result<Reply, MservError>>;
pub type Request = xfs::envelope::Request<Op>;
pub type Response = xfs::envelope::Response<Result<Reply, MservError>>;
pub use xfs::envelope::ClientHello;

#[cfg(test)]
mod tests {
    use super::*;
    use xfs::frame;

    #[test]
    fn users_are_lowercased_full_addresses() {
        assert_eq!(
            normalize_user(" Alice@Example.TEST ").unwrap(),
            "alice@example.test"
        );
        for bad in [
            "alice",
            "@example.test",
            "alice@",
            "a b@x.test",
            "a@b@c",
            "",
        ] {
            assert!(
                matches!(normalize_user(bad), Err(MservError::BadRequest { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(normalize_user(&format!("{}@x.test", "a".repeat(320))).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let req = ClientFrame::Request(Request {
            id: 9,
            deadline_ms: 500,
            trace: String::new(),
            session: None,
            op: Op::Write {
                cmd: Command::MoveUser {
                    user: "alice@example.test".into(),
                    expected_epoch: 3,
                    store: "store-2".into(),
                    segment: 1,
                },
                forwarded: false,
            },
        });
        let buf = frame::encode(&req).unwrap();
        let back: ClientFrame = frame::decode(&buf[frame::HEADER_LEN..]).unwrap();
        assert_eq!(back, req);

        let resp = ServerFrame::Response(Response {
            id: 9,
            result: Err(MservError::StaleEpoch { current: 4 }),
        });
        let buf = frame::encode(&resp).unwrap();
        let back: ServerFrame = frame::decode(&buf[frame::HEADER_LEN..]).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn retryable_errors_are_the_ones_never_applied() {
        assert!(MservError::NoLeader { why: "x".into() }.is_retryable());
        assert!(MservError::Busy.is_retryable());
        assert!(!MservError::OutcomeUnknown { why: "x".into() }.is_retryable());
        assert!(!MservError::StaleEpoch { current: 1 }.is_retryable());
        assert_eq!("Draining".parse::<StoreState>(), Ok(StoreState::Draining));
        assert!("gone".parse::<StoreState>().is_err());
    }
}
