//! The web tier in tests: the `login` server as a process, a stand-in front door whose health
//! answer can be switched, accounts with real passwords, and HTTP clients that do not follow
//! redirects (from a chosen loopback address when a test needs several clients).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mserv::Placement;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use xfs::{ops, AccountInfo};

use crate::hcu::LocalHcu;
use crate::support::metrics;
use crate::{free_addr, Proc};

/// The session signing key of every test login server (and of the tests that mint sessions the
/// way login does); every test front door and store holds its public half.
pub const KEY_ID: &str = "test-1";
pub const PRIVATE_KEY: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

/// The one session key of the tests, as login's config names it.
pub fn test_key() -> role_config::KeyConfig {
    role_config::KeyConfig {
        id: KEY_ID.into(),
        private_key: PRIVATE_KEY.into(),
    }
}

/// Its public half, as a front door's or a store's config names it.
pub fn public_keys() -> Vec<role_config::PublicKeyConfig> {
    vec![test_key().public().expect("the test key")]
}

/// The keys a test login server signs with.
pub fn keys() -> session::token::SigningKeys {
    role_config::keys::signing_keys(KEY_ID, &[test_key()]).expect("test key")
}

/// How a test login server is configured.
#[derive(Debug, Clone)]
pub struct LoginOpts {
    pub cookie_secure: bool,
    pub session_ttl_secs: u64,
    pub max_failures_per_user: u32,
    pub max_failures_per_client: u32,
    pub failure_window_secs: u64,
    /// How long login keeps what it learned of front doors.
    pub front_doors: role_config::login::FrontDoorsConfig,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for LoginOpts {
    fn default() -> Self {
        LoginOpts {
            cookie_secure: true,
            session_ttl_secs: 3600,
            max_failures_per_user: 5,
            max_failures_per_client: 20,
            failure_window_secs: 300,
            front_doors: Default::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// A running login server.
pub struct Login {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// `http://addr`, no trailing slash.
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Login {
    /// Start login against the member index at `mserv` and wait until it is healthy.
    pub async fn start(mserv: &[String], opts: LoginOpts) -> anyhow::Result<Login> {
        let addr = free_addr();
        let admin = free_addr();
        let base = format!("http://{addr}");
        let dir = tempfile::tempdir()?;
        let cfg = crate::config_text(&role_config::LoginConfig {
            internal_tls: crate::support::pki::internal_tls(dir.path(), xfs::Role::Login, "login"),
            listen: addr,
            public_url: base.clone(),
            mserv: mserv.to_vec(),
            current_key: KEY_ID.into(),
            keys: vec![test_key()],
            session_ttl_secs: opts.session_ttl_secs,
            cookie_secure: opts.cookie_secure,
            max_failures_per_user: opts.max_failures_per_user,
            max_failures_per_client: opts.max_failures_per_client,
            failure_window_secs: opts.failure_window_secs,
            front_doors: opts.front_doors,
            trusted_proxies: opts.trusted_proxies,
            admin: crate::admin_config(admin),
            ..Default::default()
        });
        let mut proc = Proc::start("login", "login", dir.path(), &cfg, admin)?;
        proc.wait_healthy(Duration::from_secs(60)).await?;
        Ok(Login {
            proc,
            addr,
            base,
            _dir: dir,
        })
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one sample on the admin port's `/metrics`, 0 when absent.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        metrics::metric(self.proc.admin, sample).await
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- login log tail:\n{}", self.proc.log_tail());
        }
    }
}

/// A stand-in front door: answers `GET /healthz` (and anything else) with a settable status,
/// after a settable delay. Stops when dropped.
pub struct StubFrontDoor {
    /// `http://addr`.
    pub base: String,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StubFrontDoor {
    pub async fn start(status: u16) -> anyhow::Result<StubFrontDoor> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let status = Arc::new(AtomicU16::new(status));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (st, dl) = (status.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (st, dl) = (st.clone(), dl.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(dl.load(Ordering::SeqCst))).await;
                    let code = st.load(Ordering::SeqCst);
                    let body = if code == 200 { "ok" } else { "unhealthy" };
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(StubFrontDoor {
            base,
            status,
            delay_ms,
            task,
        })
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for StubFrontDoor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A base URL where nothing listens.
pub fn dead_front_door() -> String {
    format!("http://{}", free_addr())
}

/// Place `user` on `store`/`segment`, create the account, and set its password (which bumps
/// the session generation).
pub async fn add_user_with_password(
    hcu: &LocalHcu,
    user: &str,
    store: &str,
    segment: u32,
    password: &str,
) -> anyhow::Result<Placement> {
    let p = hcu.add_user_on(user, store, segment).await?;
    set_password(hcu, user, password).await?;
    Ok(p)
}

/// Change `user`'s password at their store (argon2id, as login checks it). Bumps the session
/// generation.
pub async fn set_password(hcu: &LocalHcu, user: &str, password: &str) -> anyhow::Result<()> {
    let mailbox = hcu.mailbox(user).await?;
    let hash = session::password::hash(password).map_err(anyhow::Error::msg)?;
    let op = ops::UpdateAccount {
        target: mailbox.target.clone(),
        display_name: None,
        password_hash: Some(hash),
        quota_bytes: None,
    };
    mailbox
        .run(op)
        .await
        .with_context(|| format!("setting the password of {user}"))?;
    Ok(())
}

/// `user`'s account record at their store.
pub async fn account(hcu: &LocalHcu, user: &str) -> anyhow::Result<AccountInfo> {
    let mailbox = hcu.mailbox(user).await?;
    let op = ops::GetAccount {
        target: mailbox.target.clone(),
    };
    Ok(mailbox.run(op).await?)
}

/// An HTTP client that does not follow redirects and opens a fresh connection per request.
pub fn client() -> reqwest::Client {
    unpooled().build().expect("http client")
}

/// An HTTP client that connects from `local` (any 127.x.y.z address works on loopback).
pub fn client_from(local: IpAddr) -> reqwest::Client {
    unpooled()
        .local_address(local)
        .build()
        .expect("http client")
}

/// An HTTP client builder that does not follow redirects, 30 s per request.
pub fn no_redirects() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

fn unpooled() -> reqwest::ClientBuilder {
    no_redirects().pool_max_idle_per_host(0)
}
