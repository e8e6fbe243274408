//! The plain-text description of a local HCU (`deploy/local.toml`): which processes run, where
//! they listen, and the names shared between them. `mailctl up` turns it into one config file per
//! process, and into `endpoints.json` for every other command.

use std::collections::HashSet;
use std::net::SocketAddr;

use runtime::config::Validate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Listen {
    /// Where the role serves its protocol (XFS, SMTP, HTTP, Raft and clients).
    pub listen: SocketAddr,
    /// Its admin port: /healthz, /metrics, /faults.
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreLayout {
    pub name: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Segments (each its own RocksDB directory): ids 0..segments.
    pub segments: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Supervisor {
    /// The supervisor's own admin port (/healthz, /metrics with restarts counted).
    pub admin: SocketAddr,
    /// A process that dies is started again after a delay with full jitter in
    /// `[0, min(cap, base * 2^n)]`, `n` counting restarts since it last stayed up a minute.
    pub restart_backoff_base_ms: u64,
    pub restart_backoff_cap_ms: u64,
    /// Longest the children get to exit after SIGTERM before they are killed.
    pub stop_timeout_secs: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            admin: SocketAddr::from(([127, 0, 0, 1], 7990)),
            restart_backoff_base_ms: 200,
            restart_backoff_cap_ms: 10_000,
            stop_timeout_secs: 20,
        }
    }
}

/// An outbound worker: it serves nothing but its admin port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerLayout {
    pub admin: SocketAddr,
}

/// One HCU on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Layout {
    /// The cluster name stores and front doors are registered under.
    pub cluster: String,
    /// Mail domains served.
    pub domains: Vec<String>,
    /// The SMTP host name.
    pub hostname: String,
    #[serde(default)]
    pub supervisor: Supervisor,
    pub mserv: Vec<Listen>,
    pub ustore: Vec<StoreLayout>,
    #[serde(default)]
    pub frontdoor: Vec<Listen>,
    pub login: Option<Listen>,
    pub smtp_in: Option<Listen>,
    /// Outbound workers (`smtp-out`), named `out-1`, `out-2`, ...
    #[serde(default)]
    pub smtp_out: Vec<WorkerLayout>,
    /// The DNS servers the outbound workers ask for mail exchangers; none: the machine's own
    /// (`/etc/resolv.conf`).
    #[serde(default)]
    pub resolvers: Vec<SocketAddr>,
    /// Where backups may go besides the data directory (the stores refuse checkpoints,
    /// backups and restores anywhere else).
    #[serde(default)]
    pub backup_roots: Vec<std::path::PathBuf>,
    /// Internal connections without TLS, every caller trusted as what it claims: only to
    /// measure what TLS costs (`bench/tls.sh`).
    #[serde(default)]
    pub internal_plaintext: bool,
}

impl Layout {
    /// Every address the layout names, with what uses it.
    fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v = vec![("supervisor admin".to_string(), self.supervisor.admin)];
        let mut push = |name: String, l: &Listen| {
            v.push((format!("{name} listen"), l.listen));
            v.push((format!("{name} admin"), l.admin));
        };
        for (i, m) in self.mserv.iter().enumerate() {
            push(format!("mserv {}", i + 1), m);
        }
        for (i, f) in self.frontdoor.iter().enumerate() {
            push(format!("frontdoor {}", i + 1), f);
        }
        if let Some(l) = &self.login {
            push("login".into(), l);
        }
        if let Some(s) = &self.smtp_in {
            push("smtp-in".into(), s);
        }
        for (i, w) in self.smtp_out.iter().enumerate() {
            v.push((format!("smtp-out {} admin", i + 1), w.admin));
        }
        for s in &self.ustore {
            v.push((format!("{} listen", s.name), s.listen));
            v.push((format!("{} admin", s.name), s.admin));
        }
        v
    }
}

impl Validate for Layout {
    fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.cluster.trim().is_empty() {
            errs.push("cluster: must not be empty".to_string());
        }
        if self.domains.is_empty() {
            errs.push("domains: at least one is needed".to_string());
        }
        if ![1, 3, 5].contains(&self.mserv.len()) {
            errs.push(format!(
                "mserv: {} replicas listed; 1, 3 or 5 are needed",
                self.mserv.len()
            ));
        }
        if self.ustore.is_empty() {
            errs.push("ustore: at least one store is needed".to_string());
        }
        let mut names = HashSet::new();
        for s in &self.ustore {
            let ok = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                errs.push(format!(
                    "ustore: name `{}`: use letters, digits, '-' and '_'",
                    s.name
                ));
            }
            if !names.insert(&s.name) {
                errs.push(format!("ustore: name `{}` appears twice", s.name));
            }
            if s.segments == 0 || s.segments > 64 {
                errs.push(format!("ustore {}: segments must be 1 to 64", s.name));
            }
        }
        if !self.frontdoor.is_empty() && self.login.is_none() {
            errs.push("login: front doors need a login server".to_string());
        }
        let mut seen: Vec<(String, SocketAddr)> = Vec::new();
        for (what, addr) in self.addresses() {
            if addr.port() == 0 {
                errs.push(format!("{what}: a fixed port is needed"));
            } else if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr) {
                errs.push(format!("{what}: {addr} is already {other}"));
            }
            seen.push((what, addr));
        }
        if self.supervisor.restart_backoff_base_ms == 0
            || self.supervisor.restart_backoff_cap_ms < self.supervisor.restart_backoff_base_ms
        {
            errs.push("supervisor: restart backoff needs 0 < base <= cap".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

/// Read and check a layout file.
pub fn load(path: &std::path::Path) -> anyhow::Result<Layout> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    runtime::config::parse::<Layout>(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_layout_is_valid() {
        let layout: Layout =
            runtime::config::parse(include_str!("../../deploy/local.toml")).unwrap();
        assert_eq!(layout.mserv.len(), 3);
        assert_eq!(layout.ustore.len(), 2);
        assert!(layout.ustore.iter().all(|s| s.segments == 2));
        assert_eq!(layout.frontdoor.len(), 2);
        assert!(layout.login.is_some() && layout.smtp_in.is_some());
    }

    #[test]
    fn clashing_ports_and_bad_counts_are_named() {
        let mut layout: Layout =
            runtime::config::parse(include_str!("../../deploy/local.toml")).unwrap();
        layout.mserv.pop();
        layout.ustore[1].listen = layout.ustore[0].listen;
        let err = layout.validate().unwrap_err();
        assert!(err.contains("mserv: 2 replicas"), "{err}");
        assert!(err.contains("is already store-1 listen"), "{err}");
    }
}
