//! A replica's configuration file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use runtime::config::{conclude, AdminConfig, FaultsConfig, LogConfig, Validate};
use serde::{Deserialize, Serialize};
use xfs::tls::InternalTls;

use mserv_client::proto::ReplicaId;

/// One member of the initial membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerConfig {
    pub id: ReplicaId,
    /// Where the replica serves (clients and peers alike).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MservConfig {
    /// This replica's id; it must appear in `peers`.
    pub id: ReplicaId,
    /// Where this replica serves clients and peers.
    pub listen: SocketAddr,
    /// The replica's own directory: RocksDB (log and state machine) and the snapshot file.
    pub data_dir: PathBuf,
    /// The initial membership (3 replicas by default; 1 or 5 work). On first start with empty
    /// storage, the replica with the smallest id initializes the cluster with it; the others wait.
    pub peers: Vec<PeerConfig>,
    /// Whether this replica may initialize a new cluster. Off for a replica joining a running
    /// cluster (added with the add-replica operation), so it can never start a cluster of its own.
    pub bootstrap: bool,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in `[min, max)` starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many applied log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so a replica a little behind catches up from the log.
    pub keep_logs: u64,
    /// Longest a snapshot transfer and install may take.
    pub snapshot_timeout_ms: u64,
    /// Client requests in flight past which new ones are answered `Busy` at once. Raft's own
    /// messages are never shed.
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    /// Longest a SIGTERM drain waits for requests in flight.
    pub drain_timeout_secs: u64,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to and from the other roles (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

impl Default for MservConfig {
    fn default() -> Self {
        MservConfig {
            id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7201)),
            data_dir: PathBuf::from("data/mserv-1"),
            peers: (1..=3)
                .map(|id| PeerConfig {
                    id,
                    addr: format!("127.0.0.1:{}", 7200 + id),
                })
                .collect(),
            bootstrap: true,
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            snapshot_timeout_ms: 30_000,
            max_in_flight: 4096,
            max_connections: 4096,
            max_frame_bytes: xfs::MAX_FRAME_DEFAULT,
            drain_timeout_secs: 10,
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl Validate for MservConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        if self.peers.is_empty() {
            errs.push("peers must list at least this replica".to_string());
        }
        if !self.peers.iter().any(|p| p.id == self.id) {
            errs.push(format!("peers must include this replica's id {}", self.id));
        }
        let (mut ids, mut addrs) = (HashSet::new(), HashSet::new());
        for p in &self.peers {
            if !ids.insert(p.id) {
                errs.push(format!("peer id {} appears twice", p.id));
            }
            if !addrs.insert(p.addr.as_str()) {
                errs.push(format!("peer address {} appears twice", p.addr));
            }
            if p.addr.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "peer {}: `{}` is not an ip:port address",
                    p.id, p.addr
                ));
            }
        }
        if self.heartbeat_ms == 0 {
            errs.push("heartbeat-ms must be at least 1".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_ms {
            errs.push("election-timeout-min-ms must be above heartbeat-ms".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            errs.push("election-timeout-max-ms must be above election-timeout-min-ms".into());
        }
        if self.snapshot_logs == 0 {
            errs.push("snapshot-logs must be at least 1".into());
        }
        if self.snapshot_timeout_ms == 0 {
            errs.push("snapshot-timeout-ms must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            errs.push("max-in-flight must be at least 1".into());
        }
        if self.max_connections == 0 {
            errs.push("max-connections must be at least 1".into());
        }
        if self.max_frame_bytes < 64 * 1024 {
            errs.push("max-frame-bytes must be at least 65536".into());
        }
        conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

role_config!(MservConfig);

impl MservConfig {
    /// The address this replica gives its peers and clients: its own entry in `peers`.
    pub fn advertised_addr(&self) -> String {
        self.peers
            .iter()
            .find(|p| p.id == self.id)
            .map(|p| p.addr.clone())
            .unwrap_or_else(|| self.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        // Nothing but how to reach the others: the rest is the defaults.
        let c: MservConfig = runtime::config::parse(crate::TEST_TLS).unwrap();
        let defaults = MservConfig {
            internal_tls: InternalTls::plaintext("x"),
            ..MservConfig::default()
        };
        assert_eq!(c, defaults);
        // Without it a config does not validate: plaintext must be asked for.
        let err = runtime::config::parse::<MservConfig>("")
            .unwrap_err()
            .to_string();
        assert!(err.contains("internal-tls"), "{err}");
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.advertised_addr(), "127.0.0.1:7201");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../deploy/mserv.example.toml");
        let c: MservConfig = runtime::config::parse(text).unwrap();
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.id, 1);
        assert_eq!(c.heartbeat_ms, 50);
    }

    #[test]
    fn one_and_five_replicas_are_fine() {
        let one =
            "id = 7\nlisten = \"127.0.0.1:7300\"\n[[peers]]\nid = 7\naddr = \"127.0.0.1:7300\"\n";
        let c: MservConfig = runtime::config::parse(&format!("{one}{}", crate::TEST_TLS)).unwrap();
        assert_eq!(c.peers.len(), 1);
        let mut five = String::from("id = 3\n");
        for i in 1..=5 {
            five.push_str(&format!(
                "[[peers]]\nid = {i}\naddr = \"127.0.0.1:{}\"\n",
                7300 + i
            ));
        }
        assert_eq!(
            runtime::config::parse::<MservConfig>(&format!("{five}{}", crate::TEST_TLS))
                .unwrap()
                .peers
                .len(),
            5
        );
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let err = runtime::config::parse::<MservConfig>(
            "id = 9\nelection-timeout-min-ms = 40\nheartbeat-ms = 50\n",
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("id 9") && msg.contains("election-timeout-min-ms"),
            "{msg}"
        );
        let twice = "[[peers]]\nid = 1\naddr = \"127.0.0.1:1\"\n[[peers]]\nid = 1\naddr = \"127.0.0.1:2\"\n";
        let err = runtime::config::parse::<MservConfig>(twice).unwrap_err();
        assert!(format!("{err:#}").contains("appears twice"));
        let bad_addr = "[[peers]]\nid = 1\naddr = \"localhost\"\n";
        assert!(runtime::config::parse::<MservConfig>(bad_addr).is_err());
        assert!(runtime::config::parse::<MservConfig>("no-such-key = 1").is_err());
    }
}
