//! The store's configuration file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use runtime::config::{AdminConfig, FaultsConfig, LogConfig, Validate};
use serde::{Deserialize, Serialize};
use xfs::tls::InternalTls;

use crate::keys::{self, PublicKeyConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SegmentConfig {
    pub id: u32,
    /// The segment's RocksDB directory (in production its own disk).
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct UstoreConfig {
    /// The store's name, as registered in the member index.
    pub name: String,
    /// Where XFS is served.
    pub listen: SocketAddr,
    pub segments: Vec<SegmentConfig>,
    /// Operations in flight past which requests are refused with `Busy` at once.
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    /// How long a delivery id is remembered, so a retried delivery is not stored twice.
    pub dedupe_retention_secs: u64,
    /// The block cache shared by a segment's column families.
    pub block_cache_mb: usize,
    /// Longest a drain on SIGTERM waits for requests in flight.
    pub drain_timeout_secs: u64,
    /// How long a deleted account stays restorable (`mailctl restore --user U`) before the
    /// background sweep purges it, in days (a fraction is allowed).
    pub deleted_retention_days: f64,
    /// How often the sweep of deleted accounts runs (also once at start-up).
    pub deleted_sweep_secs: u64,
    /// The only directories (and what lies under them) where checkpoints, backups and restores
    /// may be written or read; with none, those operations are refused.
    pub backup_roots: Vec<PathBuf>,
    /// The public keys of login's session signing keys (`[[session-keys]]`): a front door's
    /// operation on a mailbox must carry a session of that mailbox's user signed by one of them.
    pub session_keys: Vec<PublicKeyConfig>,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to and from the other roles (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            id: 0,
            path: PathBuf::from("data/ustore/seg-0"),
        }
    }
}

impl Default for UstoreConfig {
    fn default() -> Self {
        UstoreConfig {
            name: "store-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            segments: vec![SegmentConfig::default()],
            max_in_flight: 512,
            max_connections: 4096,
            max_frame_bytes: xfs::MAX_FRAME_DEFAULT,
            dedupe_retention_secs: 7 * 24 * 3600,
            block_cache_mb: 128,
            drain_timeout_secs: 10,
            deleted_retention_days: 30.0,
            deleted_sweep_secs: 3600,
            backup_roots: Vec::new(),
            session_keys: Vec::new(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl UstoreConfig {
    /// The session keys, checked.
    pub fn verifying_keys(&self) -> Result<session::token::VerifyingKeys, String> {
        keys::verifying_keys(&self.session_keys)
    }
}

impl Validate for UstoreConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        if self.name.trim().is_empty() {
            errs.push("name must not be empty".to_string());
        }
        keys::check_public(&self.session_keys, &mut errs);
        if self.segments.is_empty() {
            errs.push("at least one [[segments]] is needed".into());
        }
        let mut ids = HashSet::new();
        let mut paths = HashSet::new();
        for s in &self.segments {
            if !ids.insert(s.id) {
                errs.push(format!("segment id {} appears twice", s.id));
            }
            if !paths.insert(&s.path) {
                errs.push(format!("segment path {} appears twice", s.path.display()));
            }
        }
        if self.max_in_flight == 0 {
            errs.push("max-in-flight must be at least 1".into());
        }
        if self.max_connections == 0 {
            errs.push("max-connections must be at least 1".into());
        }
        if self.max_frame_bytes < 4096 {
            errs.push("max-frame-bytes must be at least 4096".into());
        }
        if !self.deleted_retention_days.is_finite() || self.deleted_retention_days < 0.0 {
            errs.push("deleted-retention-days must be a number of days, 0 or more".into());
        }
        if self.deleted_sweep_secs == 0 {
            errs.push("deleted-sweep-secs must be at least 1".into());
        }
        if self.block_cache_mb == 0 {
            errs.push("block-cache-mb must be at least 1".into());
        }
        runtime::config::conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

role_config!(UstoreConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let key = PublicKeyConfig {
            id: "k1".into(),
            public_key: "ab".repeat(32),
        };
        let text = format!(
            "{}[[session-keys]]\nid = \"k1\"\npublic-key = \"{}\"\n",
            crate::TEST_TLS,
            key.public_key
        );
        let c: UstoreConfig = runtime::config::parse(&text).unwrap();
        let defaults = UstoreConfig {
            internal_tls: InternalTls::plaintext("x"),
            session_keys: vec![key],
            ..UstoreConfig::default()
        };
        assert_eq!(c, defaults);
        assert!(runtime::config::parse::<UstoreConfig>("").is_err());
        let no_keys = runtime::config::parse::<UstoreConfig>(crate::TEST_TLS).unwrap_err();
        assert!(
            format!("{no_keys:#}").contains("session-keys"),
            "{no_keys:#}"
        );
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../deploy/ustore.example.toml");
        let c: UstoreConfig = runtime::config::parse(text).unwrap();
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.name, "store-1");
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let err = runtime::config::parse::<UstoreConfig>("segments = []\nmax-in-flight = 0\n")
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("segments") && msg.contains("max-in-flight"),
            "{msg}"
        );
        let twice = "[[segments]]\nid = 1\npath = \"a\"\n[[segments]]\nid = 1\npath = \"b\"\n";
        let err = runtime::config::parse::<UstoreConfig>(twice).unwrap_err();
        assert!(format!("{err:#}").contains("appears twice"));
        assert!(runtime::config::parse::<UstoreConfig>("no-such-key = 1").is_err());
    }
}
