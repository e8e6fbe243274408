//! smtp-out's configuration file: an outbound worker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use runtime::config::{
    conclude, require_at_least, require_nonzero, AdminConfig, FaultsConfig, LogConfig, Validate,
};
use serde::{Deserialize, Serialize};
use xfs::tls::InternalTls;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmtpOutConfig {
    /// The name this worker gives in EHLO and as the reporting server of status notifications.
    pub hostname: String,
    /// Member index replicas (any order): the stores to lease from, and where local
    /// recipients live.
    pub mserv: Vec<String>,
    /// How often the hosted domains and their DKIM keys are read again from the index. A
    /// recipient in a hosted domain is delivered into its mailbox with the store's idempotent
    /// delivery, no SMTP hop (one the index does not know fails at once); what a user of one
    /// sends is signed with its active key.
    pub domain_refresh_secs: u64,
    /// DNS servers asked for MX and address records (`ip:port`), in order.
    pub resolvers: Vec<SocketAddr>,
    /// How long one DNS question may take, all tries together.
    pub dns_timeout_ms: u64,
    /// The port of the mail exchangers (25; tests use others).
    pub mx_port: u16,
    /// Fixed routes that bypass DNS: a domain → `host:port` list, tried in order (`"*"` for
    /// every domain: a smarthost).
    pub routes: BTreeMap<String, Vec<String>>,
    /// A smarthost that takes every remote message (`[relay]`): the routes and DNS are not
    /// used for remote mail when it is set.
    pub relay: RelayConfig,
    /// How often each store is asked for due entries when the last lease found none.
    pub poll_ms: u64,
    /// Entries one lease takes at most, and how long a lease lasts: longer than the slowest
    /// delivery (connect, TLS and the whole SMTP dialogue), or another worker takes the entry
    /// while this one is still at it.
    pub lease_max: u32,
    pub lease_secs: u64,
    /// Deliveries in progress at once, in total and to one destination domain.
    pub max_concurrent: usize,
    pub max_per_domain: usize,
    /// Transactions to one destination domain per minute, at most (0: no limit), in bursts of
    /// a tenth of that: for receivers that throttle senders who go faster.
    pub max_per_domain_per_minute: u32,
    /// The retry schedule after a temporary failure (RFC 5321 §4.5.4.1, as Postfix does it):
    /// the first retry after `retry-first-secs`, each later wait doubled up to
    /// `retry-max-secs`; given up `lifetime-secs` after submission, and the sender warned once
    /// after `warn-after-secs` (0: never).
    pub retry_first_secs: u64,
    pub retry_max_secs: u64,
    pub lifetime_secs: u64,
    pub warn_after_secs: u64,
    /// Connecting, and each reply of the SMTP dialogue, may take at most this long.
    pub connect_timeout_secs: u64,
    pub command_timeout_secs: u64,
    /// Longest a SIGTERM drain waits for deliveries in progress.
    pub drain_timeout_secs: u64,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to the stores and the index (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

/// A relay host ("smarthost") some operators send everything through. STARTTLS is required
/// of it (a relay that does not offer it gets nothing, and the mail waits); with `user` set,
/// the worker signs in with AUTH over that TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RelayConfig {
    /// `host:port` (587 or 25 usually); empty: no relay.
    pub host: String,
    /// The user name to sign in with; empty: no AUTH.
    pub user: String,
    /// A file holding the password (its first line), read at start; never in the config.
    pub password_file: PathBuf,
    /// PEM certificates the relay's certificate must chain to (its name checked too); empty:
    /// the relay's certificate is not checked (encrypted, not authenticated).
    pub ca_file: PathBuf,
}

impl RelayConfig {
    /// Whether a relay is configured.
    pub fn is_set(&self) -> bool {
        !self.host.is_empty()
    }

    fn check(&self, errs: &mut Vec<String>) {
        if self.is_set() && !is_host_port(&self.host) {
            errs.push(format!("relay.host: `{}` is not host:port", self.host));
        }
        if !self.is_set() && (!self.user.is_empty() || !self.ca_file.as_os_str().is_empty()) {
            errs.push("relay: user and ca-file need a host".into());
        }
        if !self.user.is_empty() && self.password_file.as_os_str().is_empty() {
            errs.push("relay.password-file: needed with a user".into());
        }
    }
}

/// `host:port` with a host and a port number.
fn is_host_port(h: &str) -> bool {
    h.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl Default for SmtpOutConfig {
    fn default() -> Self {
        SmtpOutConfig {
            hostname: "out.megamail.test".into(),
            mserv: vec!["127.0.0.1:7201".into()],
            domain_refresh_secs: 10,
            resolvers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            dns_timeout_ms: 5000,
            mx_port: 25,
            routes: BTreeMap::new(),
            relay: RelayConfig::default(),
            poll_ms: 500,
            lease_max: 100,
            lease_secs: 900,
            max_concurrent: 200,
            max_per_domain: 20,
            max_per_domain_per_minute: 0,
            retry_first_secs: 300,
            retry_max_secs: 4000,
            lifetime_secs: 5 * 86_400,
            warn_after_secs: 4 * 3600,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            drain_timeout_secs: 30,
            log: LogConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 2690)),
                ..AdminConfig::default()
            },
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl Validate for SmtpOutConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        crate::check_hostname(&self.hostname, &mut errs);
        if self.mserv.is_empty() {
            errs.push("mserv: at least one member index replica is needed".into());
        }
        self.relay.check(&mut errs);
        if self.resolvers.is_empty() && !self.routes.contains_key("*") && !self.relay.is_set() {
            errs.push(
                "resolvers: at least one DNS server is needed (or a `*` route to a smarthost)"
                    .into(),
            );
        }
        for (domain, hosts) in &self.routes {
            if hosts.is_empty() {
                errs.push(format!("routes.{domain}: names no host"));
            }
            for h in hosts {
                if !is_host_port(h) {
                    errs.push(format!("routes.{domain}: `{h}` is not host:port"));
                }
            }
        }
        require_at_least(
            &mut errs,
            &[
                ("lease-max", u64::from(self.lease_max), 1),
                ("max-concurrent", self.max_concurrent as u64, 1),
                ("max-per-domain", self.max_per_domain as u64, 1),
                ("mx-port", u64::from(self.mx_port), 1),
            ],
        );
        require_nonzero(
            &mut errs,
            &[
                ("dns-timeout-ms", self.dns_timeout_ms),
                ("domain-refresh-secs", self.domain_refresh_secs),
                ("poll-ms", self.poll_ms),
                ("lease-secs", self.lease_secs),
                ("retry-first-secs", self.retry_first_secs),
                ("retry-max-secs", self.retry_max_secs),
                ("lifetime-secs", self.lifetime_secs),
                ("connect-timeout-secs", self.connect_timeout_secs),
                ("command-timeout-secs", self.command_timeout_secs),
            ],
        );
        if self.lease_secs > 3600 {
            errs.push(format!(
                "lease-secs: {} is over the store's hour",
                self.lease_secs
            ));
        }
        if self.retry_max_secs < self.retry_first_secs {
            errs.push(format!(
                "retry-max-secs: {} is less than retry-first-secs ({})",
                self.retry_max_secs, self.retry_first_secs
            ));
        }
        conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

role_config!(SmtpOutConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../deploy/smtp-out.example.toml");
        let cfg: SmtpOutConfig = runtime::config::parse(text).unwrap();
        assert_eq!(cfg.domain_refresh_secs, 10);
        assert_eq!(cfg.retry_first_secs, 300);
    }

    #[test]
    fn bad_values_are_named() {
        let err = runtime::config::parse::<SmtpOutConfig>(
            "hostname = \"a b\"\nresolvers = []\n\
             retry-first-secs = 600\nretry-max-secs = 60\nlease-secs = 7200\n\
             [routes]\n\"x.test\" = [\"nohost\"]\n",
        )
        .unwrap_err()
        .to_string();
        for name in [
            "hostname",
            "resolvers",
            "retry-max-secs",
            "lease-secs",
            "routes.x.test",
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(runtime::config::parse::<SmtpOutConfig>("relay = true\n").is_err());
        let err = runtime::config::parse::<SmtpOutConfig>(
            "[relay]\nhost = \"smtp.example\"\nuser = \"u\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("relay.host") && err.contains("relay.password-file"),
            "{err}"
        );
        // With a relay, no DNS server is needed.
        let mut cfg: SmtpOutConfig =
            runtime::config::parse(include_str!("../../deploy/smtp-out.example.toml")).unwrap();
        cfg.resolvers.clear();
        assert!(cfg.validate().is_err());
        cfg.relay = RelayConfig {
            host: "smtp.example:587".into(),
            user: "u".into(),
            password_file: "/etc/megamail/relay.pw".into(),
            ca_file: PathBuf::new(),
        };
        cfg.validate().unwrap();
    }
}
