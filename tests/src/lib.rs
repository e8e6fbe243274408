//! The end-to-end test harness: builds the role binaries, starts them as real processes on free
//! loopback ports with temporary data directories, waits for their health checks, and stops them
//! (gracefully, or with kill -9, and restarts them on the same ports and data).
//!
//! Every process started here is killed when its handle drops, so a failing test leaves nothing
//! running.

pub mod hcu;
pub mod mserv;
pub mod support;

use runtime::config::{AdminConfig, FaultsConfig};

/// A role's config as the harness writes it: the role's typed struct, serialized, so a test
/// cannot name a key the role does not have.
pub fn config_text<T: serde::Serialize>(cfg: &T) -> String {
    role_config::to_toml(cfg, "written by the test harness")
}

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding the binaries of the profile this test was built with.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Build every role binary once per test process (a no-op when they are fresh). It builds all
/// targets, as the test command does, so the binaries share the test build's feature resolution
/// instead of being rebuilt without dev-dependency features.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = bin_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--workspace",
            "--all-targets",
            "--quiet",
        ]);
        if release {
            cmd.arg("--release");
        }
        // What cargo set for this test binary (its package's name and directory) is not the
        // environment of a build: build scripts that watch those variables (ring's does) would
        // run again, and everything above them would be rebuilt, at every test binary.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let per_crate = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p));
            if per_crate || key == "CARGO_PRIMARY_PACKAGE" || key == "OUT_DIR" {
                cmd.env_remove(key.as_ref());
            }
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the role binaries failed");
    });
}

/// The path of a role binary, built if needed.
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let p = bin_dir().join(name);
    assert!(p.exists(), "no binary at {}", p.display());
    p
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768-60999), so no outgoing
/// connection and no `bind(0)` can take one between the probe and the server's own bind.
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port free at the time of the call, never the same one twice in a test process.
/// Each test process starts at its own place in [`PORTS`], so a server of the previous test binary
/// still shutting down does not meet the next one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + (offset + i) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {PORTS:?}")
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// One GET over plain HTTP/1.1; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path).await
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let a = runtime::http_client::request(addr, method, path, &[], b"", Duration::from_secs(30))
        .await?;
    Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
}

/// The operator's secret of every process the harness starts: their admin ports take changes
/// only with it, as the ports `mailctl up` starts take theirs.
pub const OPERATOR_SECRET: &str = "operator-secret-of-the-test-harness";

/// The `[admin]` section of a process whose admin port is `listen`, its changes needing
/// [`OPERATOR_SECRET`] (from a file next to the binaries, written once, mode 0600).
pub fn admin_config(listen: SocketAddr) -> AdminConfig {
    static FILE: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        let path = bin_dir().join("test-operator.secret");
        xfs::tls::issue::write_private(&path, OPERATOR_SECRET)
            .expect("writing the operator secret");
        path
    });
    AdminConfig::with_token(listen, FILE.clone())
}

/// A change on an admin port, made as the operator (with [`OPERATOR_SECRET`]).
pub async fn admin_post(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let auth = format!("Bearer {OPERATOR_SECRET}");
    let headers = [("authorization", auth.as_str())];
    let a =
        runtime::http_client::request(addr, "POST", path, &headers, b"", Duration::from_secs(30))
            .await?;
    Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
}

/// A role process: its binary, its config file, its admin address and its log.
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    config: PathBuf,
    pub admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Write `config` into `dir/<name>.toml` and start `role` with it.
    pub fn start(
        role: &str,
        name: &str,
        dir: &Path,
        config: &str,
        admin: SocketAddr,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let mut p = Proc {
            name: name.to_string(),
            bin: bin(role),
            config: config_path,
            admin,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or("info".into()),
            )
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Wait until `/healthz` answers 200, or fail with the log's tail.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        /// Why it is not healthy yet.
        enum Not {
            Yet,
            Running,
        }
        let admin = self.admin;
        let healthy = support::retry_while(
            timeout,
            Duration::from_millis(25),
            || {
                let running = self.is_running();
                async move {
                    match http_get(admin, "/healthz").await {
                        Ok((200, _)) => Ok(()),
                        _ if running => Err(Not::Yet),
                        _ => Err(Not::Running),
                    }
                }
            },
            |why| matches!(why, Not::Yet),
        )
        .await;
        match healthy {
            Ok(()) => Ok(()),
            Err(Not::Running) => {
                bail!("{} exited while starting:\n{}", self.name, self.log_tail())
            }
            Err(Not::Yet) => bail!(
                "{} not healthy after {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (kill -9 after that).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().context("not running")?;
        match support::poll::wait_exit(&mut child, timeout)? {
            Some(st) => Ok(st),
            None => bail!("{} did not exit within {timeout:?} of SIGTERM", self.name),
        }
    }

    /// Start again with the same config (same ports, same data).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(60)).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options for a test store.
#[derive(Debug, Clone)]
pub struct UstoreOpts {
    pub name: String,
    pub segments: u32,
    pub max_in_flight: usize,
    /// Fault points set from the start ([`support::faults`]).
    pub faults: FaultsConfig,
}

impl Default for UstoreOpts {
    fn default() -> Self {
        UstoreOpts {
            name: "store-1".into(),
            segments: 2,
            max_in_flight: 512,
            faults: FaultsConfig::new(),
        }
    }
}

/// A running ustore process on a temporary directory.
pub struct Ustore {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Ustore {
    /// Start a store on a fresh temporary directory and wait until it is healthy.
    pub async fn start(opts: UstoreOpts) -> anyhow::Result<Ustore> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut s = Ustore::start_in(&dir, opts).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Start a store whose data lives under `dir` (kept after the store stops).
    pub async fn start_in(dir: &Path, opts: UstoreOpts) -> anyhow::Result<Ustore> {
        let addr = free_addr();
        let admin = free_addr();
        let cfg = role_config::UstoreConfig {
            internal_tls: support::pki::internal_tls(dir, xfs::Role::Ustore, &opts.name),
            name: opts.name.clone(),
            listen: addr,
            max_in_flight: opts.max_in_flight,
            segments: (0..opts.segments)
                .map(|id| role_config::SegmentConfig {
                    id,
                    path: Ustore::segment_dir_of(dir, id),
                })
                .collect(),
            admin: admin_config(admin),
            faults: opts.faults,
            backup_roots: vec![dir.to_path_buf()],
            session_keys: web::public_keys(),
            ..Default::default()
        };
        let mut proc = Proc::start("ustore", &opts.name, dir, &config_text(&cfg), admin)?;
        proc.wait_healthy(Duration::from_secs(60)).await?;
        Ok(Ustore {
            proc,
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
        })
    }

    fn segment_dir_of(dir: &Path, id: u32) -> PathBuf {
        dir.join(format!("seg-{id}"))
    }

    pub fn segment_dir(&self, id: u32) -> PathBuf {
        Ustore::segment_dir_of(&self.dir, id)
    }

    /// A fresh client pool for this store.
    pub fn pool(&self) -> xfs::StorePool {
        xfs::StorePool::new(
            self.addr.to_string(),
            std::sync::Arc::new(xfs::ClientConfig {
                identity: support::pki::operator(),
                backoff_base: Duration::from_millis(20),
                backoff_cap: Duration::from_millis(500),
                ..Default::default()
            }),
        )
    }
}
pub mod frontdoor;
pub mod up;
pub mod web;
