//! frontdoor's configuration file.

use std::net::SocketAddr;

use runtime::config::{conclude, require_nonzero, AdminConfig, FaultsConfig, LogConfig, Validate};
use serde::{Deserialize, Serialize};
use xfs::tls::InternalTls;

use crate::is_http_url;
use crate::keys::{self, PublicKeyConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FrontdoorConfig {
    /// Where webmail and the JSON API are served.
    pub listen: SocketAddr,
    /// The base URL browsers reach this front door at.
    pub public_url: String,
    /// The sign-in page: where a request without a session is sent, and where sign-out lands.
    pub login_url: String,
    /// Member index replicas (any order).
    pub mserv: Vec<String>,
    /// The public keys of login's session signing keys (`[[session-keys]]`): the current one
    /// and older ones whose sessions are still honoured. A front door checks sessions; only
    /// login can make one.
    pub session_keys: Vec<PublicKeyConfig>,
    /// Mark the session cookie `Secure` (off only for plain-HTTP development).
    pub cookie_secure: bool,
    /// Messages per folder page.
    pub page_size: u32,
    /// Longest one store call may take.
    pub store_timeout_ms: u64,
    /// How long a session's check against the store is trusted.
    pub session_check_secs: u64,
    /// While the store cannot be asked, a session confirmed within this time is still served
    /// (its pages then say the mailbox is unavailable); one never confirmed, or confirmed longer
    /// ago, is answered `503`.
    pub session_grace_secs: u64,
    /// How long a cached placement is trusted (a store's `Moved` drops it at once).
    pub route_cache_secs: u64,
    /// How often the store registry is fetched again.
    pub store_refresh_secs: u64,
    /// Largest request body (a compose form with its attachments).
    pub max_upload_bytes: usize,
    /// Connections served at once; the next one waits in the listen backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_timeout_secs: u64,
    /// Longest a SIGTERM drain waits for requests in flight.
    pub drain_timeout_secs: u64,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to and from the other roles (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

impl Default for FrontdoorConfig {
    fn default() -> Self {
        FrontdoorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: "http://127.0.0.1:8081".into(),
            login_url: "http://127.0.0.1:8080".into(),
            mserv: vec!["127.0.0.1:7201".into()],
            session_keys: Vec::new(),
            cookie_secure: true,
            page_size: 50,
            store_timeout_ms: 5000,
            session_check_secs: 5,
            session_grace_secs: 300,
            route_cache_secs: 60,
            store_refresh_secs: 10,
            max_upload_bytes: 25 << 20,
            max_connections: 4096,
            header_timeout_secs: 10,
            drain_timeout_secs: 10,
            log: LogConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
                ..AdminConfig::default()
            },
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl FrontdoorConfig {
    /// The session keys, checked.
    pub fn verifying_keys(&self) -> Result<session::token::VerifyingKeys, String> {
        keys::verifying_keys(&self.session_keys)
    }
}

impl Validate for FrontdoorConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        for (name, v) in [
            ("public-url", &self.public_url),
            ("login-url", &self.login_url),
        ] {
            if !is_http_url(v) {
                errs.push(format!("{name}: `{v}` is not an http(s) URL"));
            }
        }
        if self.mserv.is_empty() {
            errs.push("mserv: at least one member index replica is needed".into());
        }
        keys::check_public(&self.session_keys, &mut errs);
        require_nonzero(
            &mut errs,
            &[
                ("page-size", u64::from(self.page_size)),
                ("store-timeout-ms", self.store_timeout_ms),
                ("store-refresh-secs", self.store_refresh_secs),
                ("max-connections", self.max_connections as u64),
                ("header-timeout-secs", self.header_timeout_secs),
            ],
        );
        if self.page_size > 500 {
            errs.push(format!("page-size: {} is above 500", self.page_size));
        }
        if self.max_upload_bytes < 64 * 1024 {
            errs.push(format!(
                "max-upload-bytes: {} is below the least workable 65536",
                self.max_upload_bytes
            ));
        }
        conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

role_config!(FrontdoorConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../deploy/frontdoor.example.toml");
        let cfg: FrontdoorConfig = runtime::config::parse(text).unwrap();
        assert_eq!(cfg.session_keys[0].id, "k1");
        assert!(cfg.verifying_keys().is_ok());
        assert!(cfg.cookie_secure);
    }

    #[test]
    fn the_empty_file_is_the_defaults_and_needs_keys() {
        let empty: FrontdoorConfig = toml::from_str("").unwrap();
        assert_eq!(empty, FrontdoorConfig::default());
        let err = empty.validate().unwrap_err();
        assert!(err.contains("keys"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let text = format!(
            "public-url = \"ftp://x\"\npage-size = 0\n\
             [[session-keys]]\nid = \"k1\"\npublic-key = \"{}\"\n",
            "ab".repeat(31)
        );
        let err = runtime::config::parse::<FrontdoorConfig>(&text)
            .unwrap_err()
            .to_string();
        for name in ["public-url", "page-size", "session-keys"] {
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(runtime::config::parse::<FrontdoorConfig>("open-relay = true\n").is_err());
    }
}
