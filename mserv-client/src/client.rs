//! The member index client every other role uses: talks to any replica, fails over to the next
//! one on error, and caches lookups in `moka` with a TTL.
//!
//! - A request that certainly was not applied (no connection, `NoLeader`, `Busy`,
//!   `Unavailable`) is retried on the next replica, with a jittered pause after each full round,
//!   until the request timeout. Reads are also retried after a lost connection or a timeout.
//! - A write whose answer was lost is not retried: it fails with `OutcomeUnknown`, because it may
//!   have been applied (a blind retry of a create could answer `AlreadyExists`, of a move
//!   `StaleEpoch`). Batch creates skip existing users, so they can be retried freely.
//! - The cache holds placements only (never "no such user"). A caller drops an entry with
//!   [`Client::invalidate`] as soon as a store answers `Moved`; a successful move or delete
//!   through this client updates its own cache.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use xfs::conn::full_jitter;

use xfs::conn::{ConnError, PoolConfig};

use crate::conn::{into_mserv, Endpoint};
use crate::domain::{DkimKey, Domain};
use crate::metrics;
use crate::proto::{
    normalize_user, Applied, ClusterInfo, Command, MservError, Op, Placement, Policy, ReplicaId,
    Reply, Stats, StoreInfo, StoreLoad, StoreState, UserPage,
};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who we are (role, instance, TLS).
    pub identity: xfs::Identity,
    /// Longest a call takes, failovers included.
    pub request_timeout: Duration,
    /// Longest adding or removing a replica takes (adding waits for it to catch up).
    pub membership_timeout: Duration,
    pub connect_timeout: Duration,
    /// Connections kept to each replica; requests are pipelined on each.
    pub conns_per_replica: usize,
    /// How long a cached placement is used; 0 disables the cache.
    pub cache_ttl: Duration,
    /// Most placements cached.
    pub cache_capacity: u64,
    /// Pauses between rounds over all replicas, and reconnect delays: full jitter.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_frame: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            identity: xfs::Identity::plaintext(xfs::Role::Operator, "mserv-client"),
            request_timeout: Duration::from_secs(5),
            membership_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_millis(500),
            conns_per_replica: 2,
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 1_000_000,
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(500),
            max_frame: xfs::MAX_FRAME_DEFAULT,
        }
    }
}

impl ClientConfig {
    /// The index client of a serving role (front door, login, smtp-in): someone is waiting on
    /// each lookup, so a request gives up after 3 s; routes are cached for `cache_ttl`.
    pub fn for_role(identity: xfs::Identity, cache_ttl: Duration) -> Self {
        ClientConfig {
            identity,
            cache_ttl,
            request_timeout: Duration::from_secs(3),
            ..Default::default()
        }
    }
}

/// A client of the member index. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Client {
    replicas: Vec<Arc<Endpoint>>,
    /// The replica tried first: the last one that answered.
    current: AtomicUsize,
    cache: Option<Cache<String, Placement>>,
    cfg: ClientConfig,
}

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: any failure to get an answer.
    Read,
    /// Writes: only when the request certainly was not applied.
    Write,
}

impl Client {
    /// A client of the replicas at `addrs` (any order; one is enough, all is better). Nothing
    /// connects until the first call.
    pub fn new(addrs: Vec<String>, cfg: ClientConfig) -> Client {
        let conn = Arc::new(PoolConfig {
            identity: cfg.identity.clone(),
            conns: cfg.conns_per_replica.max(1),
            connect_timeout: cfg.connect_timeout,
            backoff_base: cfg.backoff_base,
            backoff_cap: cfg.backoff_cap,
            max_frame: cfg.max_frame,
        });
        let cache = (!cfg.cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .time_to_live(cfg.cache_ttl)
                .build()
        });
        Client {
            replicas: addrs
                .into_iter()
                .map(|a| Arc::new(Endpoint::new(a, conn.clone())))
                .collect(),
            current: AtomicUsize::new(0),
            cache,
            cfg,
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The replica addresses, in the order given.
    pub fn replicas(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr().to_string()).collect()
    }

    /// Send `op` to a replica, failing over as [`Retry`] allows, within `timeout`.
    async fn call(&self, op: Op, retry: Retry, timeout: Duration) -> Result<Reply, MservError> {
        if self.replicas.is_empty() {
            return Err(MservError::Unavailable {
                why: "no replica addresses configured".into(),
            });
        }
        let started = Instant::now();
        let n = self.replicas.len();
        let mut tried = 0u32;
        let mut last: MservError;
        loop {
            let at = self.current.load(Ordering::Relaxed) % n;
            let left = timeout.saturating_sub(started.elapsed());
            let result = self.replicas[at].call(op.clone(), "", None, left).await;
            let (err, give_up) = match result {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) if e.is_retryable() => (e, false),
                Ok(Err(e)) => return Err(e),
                Err(e @ ConnError::NotSent { .. }) => (into_mserv(e), false),
                // The request may have been applied: only reads go again.
                Err(e @ (ConnError::Lost { .. } | ConnError::Timeout { .. })) => {
                    (into_mserv(e), retry == Retry::Write)
                }
                Err(e @ ConnError::Protocol { .. }) => (into_mserv(e), true),
            };
            // Move on from this replica (unless another caller already has).
            if self
                .current
                .compare_exchange(at, (at + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                metrics::CLIENT_FAILOVERS.inc();
            }
            if give_up {
                return Err(err);
            }
            last = err;
            tried += 1;
            if tried.is_multiple_of(n as u32) {
                let pause = full_jitter(
                    self.cfg.backoff_base,
                    self.cfg.backoff_cap,
                    tried / n as u32,
                );
                let left = timeout.saturating_sub(started.elapsed());
                tokio::time::sleep(pause.min(left)).await;
            }
            if started.elapsed() >= timeout {
                return Err(match last {
                    e @ MservError::OutcomeUnknown { .. } => e,
                    e => MservError::Unavailable {
                        why: format!("no replica answered within {timeout:?}; last error: {e}"),
                    },
                });
            }
        }
    }

    async fn write(&self, cmd: Command) -> Result<Applied, MservError> {
        let op = Op::Write {
            cmd,
            forwarded: false,
        };
        match self
            .call(op, Retry::Write, self.cfg.request_timeout)
            .await?
        {
            Reply::Applied(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    async fn write_placement(&self, cmd: Command) -> Result<Placement, MservError> {
        match self.write(cmd).await? {
            Applied::Placement(p) => Ok(p),
            other => Err(unexpected(Reply::Applied(other))),
        }
    }

    /// Where `user` lives, from the cache when it holds the user.
    pub async fn lookup(&self, user: &str) -> Result<Placement, MservError> {
        let user = normalize_user(user)?;
        let Some(cache) = &self.cache else {
            return self.fetch(&user).await;
        };
        if let Some(p) = cache.get(&user).await {
            metrics::CLIENT_CACHE_HIT.inc();
            return Ok(p);
        }
        metrics::CLIENT_CACHE_MISS.inc();
        let p = self.fetch(&user).await?;
        cache.insert(user, p.clone()).await;
        Ok(p)
    }

    /// Where `user` lives, asking a replica (the cache is neither read nor filled).
    pub async fn lookup_uncached(&self, user: &str) -> Result<Placement, MservError> {
        self.fetch(&normalize_user(user)?).await
    }

    async fn fetch(&self, user: &str) -> Result<Placement, MservError> {
        let op = Op::Lookup {
            user: user.to_string(),
        };
        match self.call(op, Retry::Read, self.cfg.request_timeout).await? {
            Reply::Placement(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Forget the cached placement of `user` (a store answered `Moved`).
    pub async fn invalidate(&self, user: &str) {
        if let (Some(cache), Ok(user)) = (&self.cache, normalize_user(user)) {
            cache.invalidate(&user).await;
        }
    }

    /// The number of placements cached (approximate: moka counts lazily).
    pub fn cached_entries(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.entry_count())
    }

    /// Place a new user.
    pub async fn create_user(&self, user: &str, policy: Policy) -> Result<Placement, MservError> {
        let user = normalize_user(user)?;
        let p = self
            .write_placement(Command::CreateUser {
                user: user.clone(),
                policy,
            })
            .await?;
        if let Some(cache) = &self.cache {
            cache.insert(user, p.clone()).await;
        }
        Ok(p)
    }

    /// Place many new users by the least-loaded policy in one replicated write; users that
    /// already exist are skipped. Returns `(created, existed)`.
    pub async fn create_users(&self, users: Vec<String>) -> Result<(u64, u64), MservError> {
        let users = users
            .iter()
            .map(|u| normalize_user(u))
            .collect::<Result<Vec<_>, _>>()?;
        let op = Op::Write {
            cmd: Command::CreateUsers { users },
            forwarded: false,
        };
        // Skipping existing users makes a batch safe to send again whatever happened to it.
        let mut attempt = 0;
        loop {
            match self
                .call(op.clone(), Retry::Read, self.cfg.request_timeout)
                .await
            {
                Ok(Reply::Applied(Applied::Batch { created, existed })) => {
                    return Ok((created, existed))
                }
                Ok(other) => return Err(unexpected(other)),
                Err(MservError::OutcomeUnknown { .. }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Move `user` to `store`/`segment` if its epoch is still `expected_epoch`; the new placement
    /// carries the next epoch. `StaleEpoch { current }` if someone moved it first.
    pub async fn move_user(
        &self,
        user: &str,
        expected_epoch: u64,
        store: &str,
        segment: u32,
    ) -> Result<Placement, MservError> {
        let user = normalize_user(user)?;
        let r = self
            .write_placement(Command::MoveUser {
                user: user.clone(),
                expected_epoch,
                store: store.to_string(),
                segment,
            })
            .await;
        if let Some(cache) = &self.cache {
            match &r {
                Ok(p) => cache.insert(user, p.clone()).await,
                Err(_) => cache.invalidate(&user).await,
            }
        }
        r
    }

    pub async fn delete_user(&self, user: &str) -> Result<(), MservError> {
        let user = normalize_user(user)?;
        let r = self.write(Command::DeleteUser { user: user.clone() }).await;
        if let Some(cache) = &self.cache {
            cache.invalidate(&user).await;
        }
        r.map(|_| ())
    }

    /// Add a store or update its address, cluster, segments and state.
    pub async fn register_store(&self, info: StoreInfo) -> Result<(), MservError> {
        self.write(Command::RegisterStore { info })
            .await
            .map(|_| ())
    }

    pub async fn set_store_state(&self, store: &str, state: StoreState) -> Result<(), MservError> {
        self.write(Command::SetStoreState {
            store: store.to_string(),
            state,
        })
        .await
        .map(|_| ())
    }

    /// Add a cluster or replace its front doors.
    pub async fn register_cluster(
        &self,
        name: &str,
        front_doors: Vec<String>,
    ) -> Result<(), MservError> {
        self.write(Command::RegisterCluster {
            cluster: ClusterInfo {
                name: name.to_string(),
                front_doors,
            },
        })
        .await
        .map(|_| ())
    }

    /// Host a new domain, with its first DKIM key (active at once).
    pub async fn add_domain(&self, name: &str, key: Option<DkimKey>) -> Result<(), MservError> {
        self.write(Command::AddDomain {
            name: name.to_string(),
            key,
        })
        .await
        .map(|_| ())
    }

    /// Stop hosting a domain (refused while users have addresses in it).
    pub async fn delete_domain(&self, name: &str) -> Result<(), MservError> {
        self.write(Command::DeleteDomain {
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Add a pending DKIM key to a domain.
    pub async fn add_dkim_key(&self, domain: &str, key: DkimKey) -> Result<(), MservError> {
        self.write(Command::AddDkimKey {
            domain: domain.to_string(),
            key,
        })
        .await
        .map(|_| ())
    }

    /// Make a domain's pending key `selector` the one that signs.
    pub async fn activate_dkim_key(&self, domain: &str, selector: &str) -> Result<(), MservError> {
        self.write(Command::ActivateDkimKey {
            domain: domain.to_string(),
            selector: selector.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// The hosted domains, without private keys.
    pub async fn list_domains(&self) -> Result<Vec<Domain>, MservError> {
        self.domains(Op::ListDomains).await
    }

    /// The hosted domains with their private keys (smtp-out and operators only).
    pub async fn domain_keys(&self) -> Result<Vec<Domain>, MservError> {
        self.domains(Op::DomainKeys).await
    }

    async fn domains(&self, op: Op) -> Result<Vec<Domain>, MservError> {
        match self.call(op, Retry::Read, self.cfg.request_timeout).await? {
            Reply::Domains(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_stores(&self) -> Result<Vec<StoreLoad>, MservError> {
        match self
            .call(Op::ListStores, Retry::Read, self.cfg.request_timeout)
            .await?
        {
            Reply::Stores(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, MservError> {
        match self
            .call(Op::ListClusters, Retry::Read, self.cfg.request_timeout)
            .await?
        {
            Reply::Clusters(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// One page of the users placed on `store` (for evacuating it): up to `limit` users after
    /// the cursor `after`, in order, and the cursor of the next page.
    pub async fn list_store_users(
        &self,
        store: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<UserPage, MservError> {
        let op = Op::ListStoreUsers {
            store: store.to_string(),
            after: after.map(str::to_string),
            limit,
        };
        match self.call(op, Retry::Read, self.cfg.request_timeout).await? {
            Reply::Users(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Counts and Raft status of the replica that answers.
    pub async fn stats(&self) -> Result<Stats, MservError> {
        match self
            .call(Op::Stats, Retry::Read, self.cfg.request_timeout)
            .await?
        {
            Reply::Stats(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ping(&self) -> Result<(), MservError> {
        self.call(Op::Ping, Retry::Read, self.cfg.request_timeout)
            .await
            .map(|_| ())
    }

    /// Add the replica `id` serving at `addr`: as a learner first, returning once it has caught
    /// up, then as a voter if `voter`. Returns the voters and learners afterwards.
    pub async fn add_replica(
        &self,
        id: ReplicaId,
        addr: &str,
        voter: bool,
    ) -> Result<Membership, MservError> {
        let op = Op::AddReplica {
            id,
            addr: addr.to_string(),
            voter,
            forwarded: false,
        };
        membership(
            self.call(op, Retry::Write, self.cfg.membership_timeout)
                .await?,
        )
    }

    /// Remove the replica `id` from the membership.
    pub async fn remove_replica(&self, id: ReplicaId) -> Result<Membership, MservError> {
        let op = Op::RemoveReplica {
            id,
            forwarded: false,
        };
        membership(
            self.call(op, Retry::Write, self.cfg.membership_timeout)
                .await?,
        )
    }
}

/// Voters and learners, each `(id, address)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<(ReplicaId, String)>,
    pub learners: Vec<(ReplicaId, String)>,
}

fn membership(r: Reply) -> Result<Membership, MservError> {
    match r {
        Reply::Membership { voters, learners } => Ok(Membership { voters, learners }),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: Reply) -> MservError {
    MservError::Protocol {
        why: format!("unexpected reply {r:?}"),
    }
}
