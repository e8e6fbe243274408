//! A member index cluster as real `mserv` processes: N replicas on free loopback ports with
//! temporary data directories and a shared peers list; find the leader, kill -9 and restart a
//! replica, add a fresh one through the add-replica operation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use mserv::{Client, ClientConfig, ReplicaId, Stats};

use crate::support::eventually;
use crate::{free_addr, Proc};

/// How a test cluster is configured.
#[derive(Debug, Clone)]
pub struct MservOpts {
    pub replicas: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs: u64,
    pub keep_logs: u64,
    /// Every replica's fault points, set from the start.
    pub faults: runtime::config::FaultsConfig,
}

impl Default for MservOpts {
    /// Raft timing twice as patient as the production defaults: tests share two cores with
    /// builds, and openraft gives an append one heartbeat period to answer.
    fn default() -> Self {
        MservOpts {
            replicas: 3,
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            faults: Default::default(),
        }
    }
}

/// One replica process.
pub struct Replica {
    pub id: ReplicaId,
    pub addr: SocketAddr,
    pub proc: Proc,
    pub data_dir: PathBuf,
}

/// A running cluster. Dropping it kills every replica and removes their directories.
pub struct Mserv {
    pub replicas: BTreeMap<ReplicaId, Replica>,
    pub opts: MservOpts,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// A client for tests: no cache, short timeouts, fast failover.
pub fn test_client(addrs: Vec<String>) -> Client {
    Client::new(
        addrs,
        ClientConfig {
            identity: crate::support::pki::operator(),
            cache_ttl: Duration::ZERO,
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(200),
            ..Default::default()
        },
    )
}

impl Mserv {
    /// Start `opts.replicas` replicas and wait until every one is healthy and a leader is
    /// elected.
    pub async fn start(opts: MservOpts) -> anyhow::Result<Mserv> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let peers: Vec<(ReplicaId, SocketAddr)> =
            (1..=opts.replicas).map(|id| (id, free_addr())).collect();
        let mut replicas = BTreeMap::new();
        for (id, addr) in &peers {
            let r = start_replica(&dir, &opts, *id, *addr, &peers, true)?;
            replicas.insert(*id, r);
        }
        for r in replicas.values_mut() {
            r.proc.wait_healthy(Duration::from_secs(60)).await?;
        }
        let m = Mserv {
            replicas,
            opts,
            dir,
            _tmp: tmp,
        };
        m.wait_leader(Duration::from_secs(30)).await?;
        Ok(m)
    }

    /// Every replica's address, by id.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas.values().map(|r| r.addr.to_string()).collect()
    }

    pub fn addr(&self, id: ReplicaId) -> String {
        self.replicas[&id].addr.to_string()
    }

    /// A client of every replica (no cache).
    pub fn client(&self) -> Client {
        test_client(self.addrs())
    }

    /// A client of replica `id` only (no cache, no failover).
    pub fn client_of(&self, id: ReplicaId) -> Client {
        test_client(vec![self.addr(id)])
    }

    /// Replica `id`'s own stats.
    pub async fn stats(&self, id: ReplicaId) -> anyhow::Result<Stats> {
        let c = Client::new(
            vec![self.addr(id)],
            ClientConfig {
                identity: crate::support::pki::operator(),
                cache_ttl: Duration::ZERO,
                request_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        c.stats()
            .await
            .with_context(|| format!("stats of replica {id}"))
    }

    /// The ids of the replicas whose process is running.
    pub fn running(&mut self) -> Vec<ReplicaId> {
        self.replicas
            .iter_mut()
            .filter_map(|(id, r)| r.proc.is_running().then_some(*id))
            .collect()
    }

    /// Wait until a majority of the running replicas name the same leader, and that leader
    /// says it leads. Returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<ReplicaId> {
        eventually(timeout, Duration::from_millis(50), || async {
            let mut votes: BTreeMap<ReplicaId, usize> = BTreeMap::new();
            let mut leading = Vec::new();
            for id in self.replicas.keys() {
                if let Ok(s) = self.stats(*id).await {
                    if let Some(l) = s.raft.leader {
                        *votes.entry(l).or_default() += 1;
                    }
                    if s.raft.role == "leader" {
                        leading.push(*id);
                    }
                }
            }
            let quorum = self.replicas.len() / 2 + 1;
            match votes
                .iter()
                .find(|(l, n)| **n >= quorum && leading.contains(l))
            {
                Some((l, _)) => Ok(*l),
                None => Err(anyhow!(
                    "no leader after {timeout:?} (votes {votes:?}, leading {leading:?})"
                )),
            }
        })
        .await
    }

    /// Wait until replica `id` has applied the log up to `index`.
    pub async fn wait_applied(
        &self,
        id: ReplicaId,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<Stats> {
        let applied = eventually(timeout, Duration::from_millis(50), || async {
            match self.stats(id).await {
                Ok(s) if s.raft.last_applied.is_some_and(|a| a >= index) => Ok(s),
                Ok(s) => Err(Some(s.raft.last_applied)),
                Err(_) => Err(None),
            }
        })
        .await;
        applied.map_err(|seen| match seen {
            Some(applied) => anyhow!(
                "replica {id} applied {applied:?}, not {index}, after {timeout:?}:\n{}",
                self.replicas[&id].proc.log_tail()
            ),
            None => anyhow!("replica {id} unreachable for {timeout:?}"),
        })
    }

    /// Wait until every running replica has applied as far as the leader had when called.
    pub async fn wait_converged(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let leader = self.wait_leader(timeout).await?;
        let index = self
            .stats(leader)
            .await?
            .raft
            .last_applied
            .context("the leader has applied nothing")?;
        for id in self.running() {
            self.wait_applied(id, index, timeout).await?;
        }
        Ok(index)
    }

    pub fn kill9(&mut self, id: ReplicaId) {
        if let Some(r) = self.replicas.get_mut(&id) {
            r.proc.kill9();
        }
    }

    /// Start replica `id` again on its ports and data.
    pub async fn restart(&mut self, id: ReplicaId) -> anyhow::Result<()> {
        let r = self.replicas.get_mut(&id).context("no such replica")?;
        r.proc.restart().await
    }

    /// Start a fresh replica (next id, empty data, `bootstrap = false`) and add it to the
    /// membership through the add-replica operation, as a voter; returns once it has caught up.
    pub async fn add_replica(&mut self) -> anyhow::Result<ReplicaId> {
        let id = self.replicas.keys().max().copied().unwrap_or(0) + 1;
        let addr = free_addr();
        let mut r = start_replica(&self.dir, &self.opts, id, addr, &[(id, addr)], false)?;
        r.proc.wait_healthy(Duration::from_secs(60)).await?;
        self.replicas.insert(id, r);
        let c = Client::new(
            self.addrs(),
            ClientConfig {
                identity: crate::support::pki::operator(),
                cache_ttl: Duration::ZERO,
                ..Default::default()
            },
        );
        c.add_replica(id, &addr.to_string(), true)
            .await
            .with_context(|| format!("adding replica {id}"))?;
        Ok(id)
    }
}

fn start_replica(
    dir: &Path,
    opts: &MservOpts,
    id: ReplicaId,
    addr: SocketAddr,
    peers: &[(ReplicaId, SocketAddr)],
    bootstrap: bool,
) -> anyhow::Result<Replica> {
    let admin = free_addr();
    let data_dir = dir.join(format!("mserv-{id}"));
    let cfg = role_config::MservConfig {
        internal_tls: crate::support::pki::internal_tls(
            &data_dir,
            xfs::Role::Mserv,
            &format!("mserv-{id}"),
        ),
        id,
        listen: addr,
        data_dir: data_dir.clone(),
        bootstrap,
        heartbeat_ms: opts.heartbeat_ms,
        election_timeout_min_ms: opts.election_timeout_min_ms,
        election_timeout_max_ms: opts.election_timeout_max_ms,
        snapshot_logs: opts.snapshot_logs,
        keep_logs: opts.keep_logs,
        peers: peers
            .iter()
            .map(|(id, addr)| role_config::PeerConfig {
                id: *id,
                addr: addr.to_string(),
            })
            .collect(),
        admin: crate::admin_config(admin),
        faults: opts.faults.clone(),
        ..Default::default()
    };
    let cfg = crate::config_text(&cfg);
    let proc = Proc::start("mserv", &format!("mserv-{id}"), dir, &cfg, admin)?;
    Ok(Replica {
        id,
        addr,
        proc,
        data_dir,
    })
}

impl Drop for Mserv {
    /// A failing test shows the end of every replica's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in self.replicas.values() {
                eprintln!(
                    "--- replica {} ({}) log tail:\n{}",
                    r.id,
                    r.addr,
                    r.proc.log_tail()
                );
            }
        }
    }
}
