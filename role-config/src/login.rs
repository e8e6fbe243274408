//! login's configuration file.

use std::net::{IpAddr, SocketAddr};

use runtime::config::{conclude, require_nonzero, AdminConfig, FaultsConfig, LogConfig, Validate};
use serde::{Deserialize, Serialize};
use session::token::SigningKeys;
use xfs::tls::InternalTls;

use crate::keys::{self, KeyConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoginConfig {
    /// Where the sign-in pages and the session API are served.
    pub listen: SocketAddr,
    /// How browsers reach this server (scheme, host and port, no path).
    pub public_url: String,
    /// Member index replicas (any order).
    pub mserv: Vec<String>,
    /// The key new sessions are signed with; it must be among `keys`.
    pub current_key: String,
    /// Every key a session may be signed with: the current one and those still honoured.
    pub keys: Vec<KeyConfig>,
    /// How long an issued session lasts.
    pub session_ttl_secs: u64,
    /// Whether the session cookie carries the `Secure` attribute (off only for plain-HTTP
    /// development setups).
    pub cookie_secure: bool,
    /// Failed sign-ins allowed per user id and per client address within `failure-window-secs`;
    /// past them the answer is `429` without checking the password.
    pub max_failures_per_user: u32,
    pub max_failures_per_client: u32,
    pub failure_window_secs: u64,
    /// Proxies in front of this server (addresses or CIDRs, `10.0.0.0/8`, `::1`): only when
    /// the connection comes from one of them is the client address taken from
    /// `X-Forwarded-For` (the right-most address there that is not itself a trusted proxy).
    /// That address is what the per-client throttle counts; from any other peer the header is
    /// ignored.
    pub trusted_proxies: Vec<String>,
    /// How long a cached placement is trusted (a store's `Moved` drops it at once); 0: asked
    /// of the index every time.
    pub route_cache_secs: u64,
    /// How often the store registry is fetched again.
    pub store_refresh_secs: u64,
    /// How long the front doors' registry and health are trusted.
    pub front_doors: FrontDoorsConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to and from the other roles (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".into(),
            mserv: vec!["127.0.0.1:7201".into()],
            current_key: "k1".into(),
            keys: Vec::new(),
            session_ttl_secs: 86_400,
            cookie_secure: true,
            max_failures_per_user: 5,
            max_failures_per_client: 20,
            failure_window_secs: 300,
            trusted_proxies: Vec::new(),
            route_cache_secs: 60,
            store_refresh_secs: 10,
            front_doors: FrontDoorsConfig::default(),
            log: LogConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
                ..AdminConfig::default()
            },
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl LoginConfig {
    /// The signing keys (the config has been validated, so they are well-formed).
    pub fn signing_keys(&self) -> Result<SigningKeys, String> {
        keys::signing_keys(&self.current_key, &self.keys)
    }

    /// `trusted-proxies`, parsed (a validated config parses).
    pub fn trusted_proxies(&self) -> Result<Vec<Cidr>, String> {
        self.trusted_proxies.iter().map(|p| p.parse()).collect()
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7`, `::1`).
/// IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `addr` lies in the block.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let (net, net_len) = bits(self.net);
        let (addr, addr_len) = bits(addr);
        if net_len != addr_len {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == addr & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR"))?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Validate for LoginConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        let url = self.public_url.as_str();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('/') && !host.contains(' ') => {}
            _ => errs.push(format!(
                "public-url: `{url}` must be http:// or https:// followed by a host (and port), \
                 no path"
            )),
        }
        if self.mserv.is_empty() {
            errs.push("mserv: at least one member index replica is needed".into());
        }
        keys::check(&self.current_key, &self.keys, &mut errs);
        for p in &self.trusted_proxies {
            if let Err(e) = p.parse::<Cidr>() {
                errs.push(format!("trusted-proxies: {e}"));
            }
        }
        if self.session_ttl_secs < 60 {
            errs.push(format!(
                "session-ttl-secs: {} is below the least workable 60",
                self.session_ttl_secs
            ));
        }
        require_nonzero(
            &mut errs,
            &[
                ("max-failures-per-user", self.max_failures_per_user.into()),
                (
                    "max-failures-per-client",
                    self.max_failures_per_client.into(),
                ),
                ("failure-window-secs", self.failure_window_secs),
                ("store-refresh-secs", self.store_refresh_secs),
                (
                    "front-doors.registry-cache-ms",
                    self.front_doors.registry_cache_ms,
                ),
                (
                    "front-doors.health-cache-ms",
                    self.front_doors.health_cache_ms,
                ),
            ],
        );
        conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

/// `[front-doors]`: how long what login knows of the front doors is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FrontDoorsConfig {
    /// The cluster registry (which front doors each cluster has), fetched again after this.
    pub registry_cache_ms: u64,
    /// A front door's health probe verdict, probed again after this.
    pub health_cache_ms: u64,
}

impl Default for FrontDoorsConfig {
    fn default() -> Self {
        FrontDoorsConfig {
            registry_cache_ms: 3000,
            health_cache_ms: 2000,
        }
    }
}

role_config!(LoginConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_single_addresses() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(
            c("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "mapped IPv4"
        );
        assert!(c("::1").contains(ip("::1")));
        assert!(!c("::1").contains(ip("0.0.0.1")));
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host.example",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../deploy/login.example.toml");
        let cfg: LoginConfig = runtime::config::parse(text).unwrap();
        assert_eq!(cfg.current_key, "k1");
        assert_eq!(cfg.keys.len(), 1);
        assert_eq!(cfg.max_failures_per_user, 5);
        assert!(cfg.cookie_secure);
        assert!(cfg.signing_keys().is_ok());
        let defaults = LoginConfig::default();
        assert_eq!(cfg.route_cache_secs, defaults.route_cache_secs);
        assert_eq!(cfg.store_refresh_secs, defaults.store_refresh_secs);
        assert_eq!(cfg.front_doors, defaults.front_doors);
    }

    #[test]
    fn cache_lifetimes_are_keys() {
        let cfg: LoginConfig = toml::from_str(
            "route-cache-secs = 0\nstore-refresh-secs = 2\n\
             [front-doors]\nregistry-cache-ms = 150\nhealth-cache-ms = 100\n",
        )
        .unwrap();
        assert_eq!(cfg.route_cache_secs, 0);
        assert_eq!(cfg.store_refresh_secs, 2);
        assert_eq!(cfg.front_doors.registry_cache_ms, 150);
        assert_eq!(cfg.front_doors.health_cache_ms, 100);
        assert!(toml::from_str::<LoginConfig>("[front-doors]\nhealth-ttl = 1\n").is_err());
    }

    #[test]
    fn the_empty_file_is_the_defaults_and_needs_a_key() {
        let empty: LoginConfig = toml::from_str("").unwrap();
        assert_eq!(empty, LoginConfig::default());
        let err = runtime::config::parse::<LoginConfig>("")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = runtime::config::parse::<LoginConfig>(
            "public-url = \"ftp://x\"\ncurrent-key = \"k2\"\nsession-ttl-secs = 5\n\
             max-failures-per-user = 0\nfailure-window-secs = 0\nstore-refresh-secs = 0\n\
             [[keys]]\nid = \"k1\"\nprivate-key = \"abcd\"\n[front-doors]\nhealth-cache-ms = 0\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "public-url",
            "keys",
            "session-ttl-secs",
            "max-failures-per-user",
            "failure-window-secs",
            "store-refresh-secs",
            "front-doors.health-cache-ms",
        ] {
            assert!(err.contains(key), "{key} in {err}");
        }
        assert!(runtime::config::parse::<LoginConfig>("cookie-secur = true\n").is_err());
    }
}
