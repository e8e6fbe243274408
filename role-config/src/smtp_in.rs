//! smtp-in's configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;

use runtime::config::{
    conclude, require_at_least, require_nonzero, AdminConfig, FaultsConfig, LogConfig, Validate,
};
use serde::{Deserialize, Serialize};
use xfs::tls::InternalTls;

/// A certificate and its key, both PEM; with them STARTTLS is offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmtpInConfig {
    /// The name this server gives in its greeting, its EHLO reply and its `Received:` lines.
    pub hostname: String,
    /// Where SMTP is served.
    pub listen: SocketAddr,
    /// Member index replicas (any order).
    pub mserv: Vec<String>,
    /// Largest message accepted (advertised with SIZE).
    pub max_message_bytes: usize,
    /// Recipients one message may have; the ones past it get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command or text line, CRLF included.
    pub max_line_bytes: usize,
    /// How long the server waits for a command.
    pub command_timeout_secs: u64,
    /// How long the server waits for the next piece of a message's data.
    pub data_timeout_secs: u64,
    /// Sessions open at once, in total and from one client address; past them `421`.
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// Longest the copies of one message may take to become durable (retries of a busy, frozen
    /// or restarting store included) before the sender is told `451` to retry later.
    pub deliver_timeout_secs: u64,
    /// How long a cached placement is trusted (a store's `Moved` drops it at once).
    pub route_cache_secs: u64,
    /// How often the store registry and the hosted domains (the only domains mail is accepted
    /// for: never a relay) are fetched again.
    pub store_refresh_secs: u64,
    /// Message data (DATA and BDAT bytes) all sessions together may hold in memory. A message
    /// whose declared SIZE does not fit is told `452 4.3.1`; a session whose data would pass it
    /// is told `421 4.3.2` and closed.
    pub max_data_in_flight_bytes: usize,
    /// The pause before answering a RCPT for a user that does not exist, times the unknown
    /// recipients the session has named so far (a guesser slows down), and its cap. Each such
    /// RCPT also counts as an error toward the session's error limit.
    pub unknown_rcpt_delay_ms: u64,
    pub unknown_rcpt_delay_max_ms: u64,
    /// Longest a SIGTERM drain waits for sessions to finish their current message.
    pub drain_timeout_secs: u64,
    /// STARTTLS is offered only with a certificate.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
    /// Mutual TLS to and from the other roles (`[internal-tls]`).
    pub internal_tls: InternalTls,
}

impl Default for SmtpInConfig {
    fn default() -> Self {
        SmtpInConfig {
            hostname: "mx.megamail.test".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            mserv: vec!["127.0.0.1:7201".into()],
            max_message_bytes: 25 << 20,
            max_recipients: 100,
            max_line_bytes: 4096,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            max_sessions: 2000,
            max_sessions_per_client: 50,
            deliver_timeout_secs: 30,
            route_cache_secs: 60,
            store_refresh_secs: 10,
            drain_timeout_secs: 30,
            max_data_in_flight_bytes: 512 << 20,
            unknown_rcpt_delay_ms: 500,
            unknown_rcpt_delay_max_ms: 5000,
            tls: None,
            log: LogConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 2590)),
                ..AdminConfig::default()
            },
            faults: FaultsConfig::default(),
            internal_tls: InternalTls::default(),
        }
    }
}

impl Validate for SmtpInConfig {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.internal_tls.validate() {
            errs.push(e);
        }
        crate::check_hostname(&self.hostname, &mut errs);
        if self.mserv.is_empty() {
            errs.push("mserv: at least one member index replica is needed".into());
        }
        require_at_least(
            &mut errs,
            &[
                ("max-message-bytes", self.max_message_bytes as u64, 1024),
                ("max-recipients", self.max_recipients as u64, 1),
                ("max-line-bytes", self.max_line_bytes as u64, 512),
                ("max-sessions", self.max_sessions as u64, 1),
                (
                    "max-sessions-per-client",
                    self.max_sessions_per_client as u64,
                    1,
                ),
            ],
        );
        if self.max_data_in_flight_bytes < self.max_message_bytes {
            errs.push(format!(
                "max-data-in-flight-bytes: {} is less than max-message-bytes ({}): a message of \
                 the largest size could never be taken",
                self.max_data_in_flight_bytes, self.max_message_bytes
            ));
        }
        if self.unknown_rcpt_delay_max_ms < self.unknown_rcpt_delay_ms {
            errs.push(format!(
                "unknown-rcpt-delay-max-ms: {} is less than unknown-rcpt-delay-ms ({})",
                self.unknown_rcpt_delay_max_ms, self.unknown_rcpt_delay_ms
            ));
        }
        if self.unknown_rcpt_delay_max_ms > 60_000 {
            errs.push(format!(
                "unknown-rcpt-delay-max-ms: {} is over a minute; a client would time out first",
                self.unknown_rcpt_delay_max_ms
            ));
        }
        require_nonzero(
            &mut errs,
            &[
                ("command-timeout-secs", self.command_timeout_secs),
                ("data-timeout-secs", self.data_timeout_secs),
                ("deliver-timeout-secs", self.deliver_timeout_secs),
                ("store-refresh-secs", self.store_refresh_secs),
            ],
        );
        if let Some(tls) = &self.tls {
            for (name, p) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !p.is_file() {
                    errs.push(format!("{name}: no file at {}", p.display()));
                }
            }
        }
        conclude(errs, &self.log, &self.admin, &self.faults)
    }
}

role_config!(SmtpInConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../deploy/smtp-in.example.toml");
        let cfg: SmtpInConfig = runtime::config::parse(text).unwrap();
        assert_eq!(cfg.hostname, "mx.megamail.test");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            runtime::config::parse::<SmtpInConfig>("hostname = \"a b\"\nmax-line-bytes = 10\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("hostname"), "{err}");
        assert!(err.contains("max-line-bytes"), "{err}");
        assert!(runtime::config::parse::<SmtpInConfig>("relay = true\n").is_err());
        // Hosted domains live in the member index now.
        assert!(runtime::config::parse::<SmtpInConfig>("domains = [\"x.test\"]\n").is_err());
    }

    #[test]
    fn the_data_budget_and_the_rcpt_delay_are_checked() {
        let cfg: SmtpInConfig = runtime::config::parse(
            "max-data-in-flight-bytes = 1048576\nmax-message-bytes = 1048576\n\
             unknown-rcpt-delay-ms = 0\nunknown-rcpt-delay-max-ms = 0\n\
             [internal-tls]\nname = \"x\"\nplaintext = true\n",
        )
        .unwrap();
        assert_eq!(cfg.max_data_in_flight_bytes, 1 << 20);
        let err = runtime::config::parse::<SmtpInConfig>(
            "max-data-in-flight-bytes = 2048\nmax-message-bytes = 4096\n\
             unknown-rcpt-delay-ms = 900\nunknown-rcpt-delay-max-ms = 100\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max-data-in-flight-bytes"), "{err}");
        assert!(err.contains("unknown-rcpt-delay-max-ms"), "{err}");
        let d = SmtpInConfig::default();
        assert_eq!(d.max_data_in_flight_bytes, 512 << 20);
        assert!(d.max_data_in_flight_bytes >= d.max_message_bytes);
    }
}
