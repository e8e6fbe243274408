//! Choosing a front door: the cluster registry from the member index (cached a few seconds, a
//! stale copy used while the index is unreachable) and a health probe per front door
//! (`GET {base}/healthz` answering 200 within [`PROBE_TIMEOUT`], its verdict cached too); how
//! long each is trusted is [`Lifetimes`], from login's `[front-doors]` config.
//!
//! `https://` front doors are probed with a TCP connect only: TLS ends in front of them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moka::future::Cache;
use rand::seq::IndexedRandom as _;
use tokio::task::JoinSet;

use crate::metrics;

/// Longest a front door may take to answer its health probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long what is known of the front doors is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// The cluster registry, fetched again after this.
    pub registry: Duration,
    /// A probe's verdict, probed again after this.
    pub health: Duration,
}

impl From<&crate::config::FrontDoorsConfig> for Lifetimes {
    fn from(c: &crate::config::FrontDoorsConfig) -> Self {
        Lifetimes {
            registry: Duration::from_millis(c.registry_cache_ms),
            health: Duration::from_millis(c.health_cache_ms),
        }
    }
}
/// Longest the sign-in page waits for a stale cluster registry to be fetched again.
pub const PAGE_REFRESH_WAIT: Duration = Duration::from_millis(300);

/// Why no front door was chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickError {
    #[error("cluster {0} has no registered front doors")]
    NoFrontDoors(String),
    #[error("none of the {0} front doors of cluster {1} is healthy")]
    NoneHealthy(usize, String),
    #[error("the cluster registry is unavailable: {0}")]
    IndexUnavailable(String),
}

struct Clusters {
    by_name: HashMap<String, Vec<String>>,
    fetched: Option<Instant>,
}

/// The front doors of every cluster and their health.
pub struct FrontDoors {
    mserv: Arc<mserv_client::Client>,
    clusters: RwLock<Clusters>,
    refreshing: tokio::sync::Mutex<()>,
    health: Cache<String, bool>,
    registry_ttl: Duration,
}

impl FrontDoors {
    pub fn new(mserv: Arc<mserv_client::Client>, lifetimes: Lifetimes) -> FrontDoors {
        FrontDoors {
            mserv,
            registry_ttl: lifetimes.registry,
            clusters: RwLock::new(Clusters {
                by_name: HashMap::new(),
                fetched: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            health: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(lifetimes.health)
                .build(),
        }
    }

    /// A healthy front door of `cluster`, chosen at random among the healthy ones.
    pub async fn pick(&self, cluster: &str) -> Result<String, PickError> {
        let doors = self.doors(cluster).await?;
        if doors.is_empty() {
            return Err(PickError::NoFrontDoors(cluster.to_string()));
        }
        let mut probes = JoinSet::new();
        for base in doors.iter().cloned() {
            let health = self.health.clone();
            probes.spawn(async move {
                let healthy = health
                    .get_with_by_ref(&base, async { probe(&base).await })
                    .await;
                (base, healthy)
            });
        }
        let mut healthy = Vec::new();
        while let Some(r) = probes.join_next().await {
            if let Ok((base, true)) = r {
                healthy.push(base);
            }
        }
        healthy
            .choose(&mut rand::rng())
            .cloned()
            .ok_or_else(|| PickError::NoneHealthy(doors.len(), cluster.to_string()))
    }

    /// Every known front door base URL (for the sign-in page's `form-action`), fetched again
    /// when stale but waiting at most [`PAGE_REFRESH_WAIT`] for it: the page must not hang on
    /// an unreachable index.
    pub async fn all(&self) -> Vec<String> {
        if !self.fresh() {
            let _ = tokio::time::timeout(PAGE_REFRESH_WAIT, self.refresh()).await;
        }
        let c = self.clusters.read().unwrap();
        let mut v: Vec<String> = c.by_name.values().flatten().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the cluster registry was fetched within its lifetime.
    fn fresh(&self) -> bool {
        self.clusters
            .read()
            .unwrap()
            .fetched
            .is_some_and(|t| t.elapsed() < self.registry_ttl)
    }

    async fn doors(&self, cluster: &str) -> Result<Vec<String>, PickError> {
        if !self.fresh() {
            if let Err(e) = self.refresh().await {
                // A stale registry still names the front doors; the probes say which are up.
                if self.clusters.read().unwrap().fetched.is_none() {
                    return Err(PickError::IndexUnavailable(e.to_string()));
                }
                tracing::warn!(error = %e, "using a stale cluster registry");
            }
        }
        let c = self.clusters.read().unwrap();
        Ok(c.by_name.get(cluster).cloned().unwrap_or_default())
    }

    async fn refresh(&self) -> Result<(), mserv_client::MservError> {
        let started = Instant::now();
        let _g = self.refreshing.lock().await;
        if self
            .clusters
            .read()
            .unwrap()
            .fetched
            .is_some_and(|t| t >= started)
        {
            return Ok(());
        }
        let list = self.mserv.list_clusters().await?;
        let mut c = self.clusters.write().unwrap();
        c.by_name = list
            .into_iter()
            .map(|ci| (ci.name, ci.front_doors))
            .collect();
        c.fetched = Some(Instant::now());
        Ok(())
    }
}

/// A base URL taken apart: whether TLS is used, `host:port`, and the path prefix (no trailing
/// slash).
#[derive(Debug, PartialEq, Eq)]
pub struct Base {
    pub tls: bool,
    pub authority: String,
    pub connect: String,
    pub prefix: String,
}

/// Parse `http://host[:port][/prefix]` or `https://...`.
pub fn parse_base(base: &str) -> Option<Base> {
    let (tls, rest) = if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '@';
    if authority.is_empty() || authority.chars().any(bad) || path.chars().any(bad) {
        return None;
    }
    // A port is present when the text after the last ':' is all digits and not inside an IPv6
    // literal's brackets.
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && !h.is_empty()
            && (!h.starts_with('[') || h.ends_with(']'))
    });
    let connect = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Some(Base {
        tls,
        authority: authority.to_string(),
        connect,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// Whether the front door at `base` is healthy now.
pub async fn probe(base: &str) -> bool {
    let healthy = match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(base)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(base, error = %e, "front door probe failed");
            false
        }
        Err(_) => {
            tracing::debug!(base, "front door probe timed out");
            false
        }
    };
    let label = if healthy { "healthy" } else { "unhealthy" };
    metrics::FRONT_DOOR_PROBES.with_label_values(&[label]).inc();
    if !healthy {
        tracing::info!(base, "front door unhealthy");
    }
    healthy
}

async fn probe_inner(base: &str) -> anyhow::Result<bool> {
    let Some(b) = parse_base(base) else {
        tracing::warn!(base, "a front door base URL that cannot be probed");
        return Ok(false);
    };
    if b.tls {
        // Reachable is all we can tell without a TLS client here.
        tokio::net::TcpStream::connect(&b.connect).await?;
        return Ok(true);
    }
    let path = format!("{}/healthz", b.prefix);
    let answer = runtime::http_client::request_to(
        &b.connect,
        &b.authority,
        "GET",
        &path,
        &[("User-Agent", "megamail-login")],
        b"",
        PROBE_TIMEOUT,
    )
    .await?;
    Ok(answer.status == 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_parse() {
        let b = parse_base("http://127.0.0.1:8081").unwrap();
        assert_eq!(
            b,
            Base {
                tls: false,
                authority: "127.0.0.1:8081".into(),
                connect: "127.0.0.1:8081".into(),
                prefix: String::new(),
            }
        );
        let b = parse_base("https://mail.example.test/web/").unwrap();
        assert!(b.tls);
        assert_eq!(b.connect, "mail.example.test:443");
        assert_eq!(b.prefix, "/web");
        assert_eq!(parse_base("http://[::1]:81").unwrap().connect, "[::1]:81");
        assert_eq!(parse_base("http://[::1]").unwrap().connect, "[::1]:80");
        for bad in ["", "ftp://x", "http://", "http://a b", "http://u@h"] {
            assert!(parse_base(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_probe_needs_a_200_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;
        async fn serve(reply: &'static str, delay: Duration) -> String {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        tokio::time::sleep(delay).await;
                        let _ = s.write_all(reply.as_bytes()).await;
                    });
                }
            });
            format!("http://{addr}")
        }
        let ok = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Duration::ZERO,
        )
        .await;
        let down = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n", Duration::ZERO).await;
        let slow = serve("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(2)).await;
        assert!(probe(&ok).await);
        assert!(!probe(&down).await);
        assert!(!probe(&slow).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        assert!(!probe(&closed).await);
    }
}
