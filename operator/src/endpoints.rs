//! `endpoints.json`: where a running HCU's processes can be reached. `mailctl up` writes it;
//! every tool that drives the HCU from outside (mailctl's other commands, loadgen, the
//! benchmarks) reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where a running HCU can be reached; written by `mailctl up`, read by every other command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub cluster: String,
    pub domains: Vec<String>,
    pub data_dir: PathBuf,
    pub supervisor_admin: SocketAddr,
    pub smtp: Option<SocketAddr>,
    pub login_url: Option<String>,
    pub frontdoor_urls: Vec<String>,
    pub mserv: Vec<SocketAddr>,
    pub ustore: Vec<StoreEndpoint>,
    pub processes: Vec<ProcessEndpoint>,
    /// The operator's certificate (mailctl and every tool that drives the HCU from outside).
    #[serde(default)]
    pub operator_tls: xfs::tls::InternalTls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreEndpoint {
    pub name: String,
    pub xfs: SocketAddr,
    pub segments: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessEndpoint {
    pub name: String,
    pub role: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Endpoints {
    pub fn load(path: &Path) -> anyhow::Result<Endpoints> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (is `mailctl up` running with this --data directory?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn mserv_addrs(&self) -> Vec<String> {
        self.mserv.iter().map(|a| a.to_string()).collect()
    }

    pub fn store(&self, name: &str) -> Option<&StoreEndpoint> {
        self.ustore.iter().find(|s| s.name == name)
    }
}
