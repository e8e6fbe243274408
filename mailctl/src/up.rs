//! `mailctl up`: a whole HCU on this machine, supervised. Each role runs as its own process with
//! a config written from the layout; a process that dies is started again after a jittered,
//! growing delay (crash-only: kill -9 is a normal way to stop anything). Ctrl-C or SIGTERM stops
//! every child (SIGTERM, then SIGKILL after the stop timeout); children also die with the
//! supervisor (`PR_SET_PDEATHSIG`), so nothing is left behind even if it is killed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mserv_client::{StoreInfo, StoreState};
use prometheus::IntCounterVec;
use runtime::backoff::Backoff;
use runtime::faults::{Faults, Rules};
use runtime::health::Health;
use runtime::shutdown::Shutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::admin::Hcu;
use crate::layout::Layout;
use crate::plan::{self, ProcSpec};

static RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    runtime::metrics::counter_vec(
        "mailctl_restarts_total",
        "processes started again after they died, by process",
        &["name", "role"],
    )
});

/// A process stays "up" after this long; its restart backoff then starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Longest a group of processes gets to become healthy at start.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What `mailctl up` was asked for.
pub struct UpArgs {
    pub layout: Layout,
    pub data: PathBuf,
    pub demo: bool,
}

/// Where the role binaries are: `MEGAMAIL_BIN_DIR`, or next to this executable.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("MEGAMAIL_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating mailctl's own executable")?;
    Ok(exe
        .parent()
        .context("mailctl has no directory")?
        .to_path_buf())
}

/// The supervisor's view of one child, shown on its /healthz.
#[derive(Debug, Clone, Default)]
struct ChildState {
    pid: Option<u32>,
    restarts: u64,
    last_exit: Option<String>,
}

type States = Arc<Mutex<Vec<(String, ChildState)>>>;

fn publish(health: &Health, states: &States) {
    let s = states.lock().unwrap_or_else(|p| p.into_inner());
    let list: Vec<_> = s
        .iter()
        .map(|(name, st)| {
            json!({"name": name, "pid": st.pid, "restarts": st.restarts, "last_exit": st.last_exit})
        })
        .collect();
    health.set_info("processes", json!(list));
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Its own process group: a terminal's Ctrl-C reaches the supervisor only, which
            // then stops the children in order.
            libc::setpgid(0, 0);
            // Die with the supervisor, even if it is killed with -9.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// Run one child until shutdown, restarting it whenever it dies.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    spec: ProcSpec,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    backoff: Backoff,
    stop_timeout: Duration,
    index: usize,
    states: States,
    health: Arc<Health>,
    shutdown: Shutdown,
) {
    let mut backoff = backoff;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&bin, &config, &log) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(process = %spec.name, error = %format!("{e:#}"), "cannot start");
                tokio::select! {
                    _ = backoff.wait() => continue,
                    _ = shutdown.triggered() => return,
                }
            }
        };
        {
            let mut s = states.lock().unwrap_or_else(|p| p.into_inner());
            s[index].1.pid = child.id();
        }
        publish(&health, &states);
        tracing::info!(process = %spec.name, pid = ?child.id(), "started");
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if started.elapsed() > STABLE_AFTER {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                RESTARTS.with_label_values(&[&spec.name, spec.role]).inc();
                {
                    let mut s = states.lock().unwrap_or_else(|p| p.into_inner());
                    s[index].1.pid = None;
                    s[index].1.restarts += 1;
                    s[index].1.last_exit = Some(status.clone());
                }
                publish(&health, &states);
                tracing::warn!(process = %spec.name, %status, ?delay, "process died; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.triggered() => return,
                }
            }
            _ = shutdown.triggered() => {
                signal(&child, libc::SIGTERM);
                match tokio::time::timeout(stop_timeout, child.wait()).await {
                    Ok(_) => tracing::info!(process = %spec.name, "stopped"),
                    Err(_) => {
                        tracing::warn!(process = %spec.name, "did not stop in time; killing");
                        let _ = child.kill().await;
                    }
                }
                return;
            }
        }
    }
}

async fn healthy(admin: std::net::SocketAddr) -> bool {
    matches!(
        runtime::http_client::get(admin, "/healthz", Duration::from_secs(2)).await,
        Ok(a) if a.status == 200
    )
}

/// Wait until every process in `group` answers its health check.
async fn wait_group(specs: &[ProcSpec], group: u8, shutdown: &Shutdown) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    for p in specs.iter().filter(|p| p.group == group) {
        loop {
            if healthy(p.admin).await {
                break;
            }
            if shutdown.is_triggered() {
                bail!("stopped while starting");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not healthy after {START_TIMEOUT:?} (see its log)",
                    p.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Register the stores not yet known (an operator's later changes, such as a drain, are kept)
/// and the cluster's front doors.
async fn register(hcu: &Hcu, layout: &Layout) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let known = loop {
        match hcu.mserv.list_stores().await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "member index not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("the member index never became ready"),
        }
    };
    for s in &layout.ustore {
        if known.iter().any(|k| k.info.name == s.name) {
            continue;
        }
        hcu.mserv
            .register_store(StoreInfo {
                name: s.name.clone(),
                xfs_addr: s.listen.to_string(),
                cluster: layout.cluster.clone(),
                segments: (0..s.segments).collect(),
                state: StoreState::Active,
            })
            .await
            .with_context(|| format!("registering {}", s.name))?;
    }
    let doors: Vec<String> = layout
        .frontdoor
        .iter()
        .map(|f| format!("http://{}", f.listen))
        .collect();
    hcu.mserv
        .register_cluster(&layout.cluster, doors)
        .await
        .context("registering the cluster's front doors")?;
    // The layout's domains, each with a DKIM key, the first time; `mailctl domain` and `mailctl
    // dkim` change them later, and a restart keeps what they did.
    let hosted = hcu.mserv.list_domains().await?;
    for d in &layout.domains {
        if hosted.iter().any(|h| &h.name == d) {
            continue;
        }
        let key = smtp_out::dkim::generate(
            mserv_client::DkimAlgorithm::Rsa2048,
            &smtp_out::dkim::selector_for_now(),
        )
        .map_err(|e| anyhow::anyhow!("making a DKIM key for {d}: {e}"))?;
        match hcu.mserv.add_domain(d, Some(key)).await {
            Ok(()) | Err(mserv_client::MservError::DomainExists { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("hosting {d}")),
        }
    }
    Ok(())
}

/// Run the HCU until `shutdown`.
pub async fn up(args: UpArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let UpArgs { layout, data, demo } = args;
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let data = data.canonicalize()?;
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs)?;
    let keys = plan::session_keys(&data)?;
    let mut pki = plan::Pki::open(&data)?;
    pki.plaintext = layout.internal_plaintext;
    let operator_secret = plan::operator_secret(&data)?;
    let specs = plan::processes(&layout, &data, &keys, &pki, &operator_secret)?;
    let bins = bin_dir()?;
    for p in &specs {
        let bin = bins.join(p.role);
        if !bin.is_file() {
            bail!(
                "no `{}` binary in {} (build the workspace first, or set MEGAMAIL_BIN_DIR)",
                p.role,
                bins.display()
            );
        }
    }
    let operator = pki.identity(xfs::Role::Operator, plan::OPERATOR)?;
    let endpoints = plan::endpoints(&layout, &data, &specs, operator);
    plan::write_endpoints(&data, &endpoints)?;

    LazyLock::force(&RESTARTS);
    let health = Health::new("mailctl");
    let admin = TcpListener::bind(layout.supervisor.admin)
        .await
        .with_context(|| {
            format!(
                "binding the supervisor's admin port {}",
                layout.supervisor.admin
            )
        })?;
    // The supervisor has no fault points; its admin port takes the same secret as the rest.
    let settings = runtime::admin::Settings::load(&runtime::config::AdminConfig::with_token(
        layout.supervisor.admin,
        operator_secret,
    ))?;
    let admin_task = tokio::spawn(runtime::admin::serve(
        admin,
        health.clone(),
        Arc::new(Faults::with_rules(Rules::for_role("mailctl", 0))),
        Arc::new(settings),
        shutdown.clone(),
    ));

    let states: States = Arc::new(Mutex::new(
        specs
            .iter()
            .map(|p| (p.name.clone(), ChildState::default()))
            .collect(),
    ));
    let children = shutdown.child();
    let sv = &layout.supervisor;
    let backoff = Backoff::new(
        Duration::from_millis(sv.restart_backoff_base_ms),
        Duration::from_millis(sv.restart_backoff_cap_ms),
    );
    let hcu = Hcu::new(endpoints.clone())?;
    let started = Instant::now();
    let mut result = Ok(());
    for group in 0..=2u8 {
        for (i, p) in specs.iter().enumerate().filter(|(_, p)| p.group == group) {
            let config = plan::write_config(&data, p)?;
            children.spawn(supervise(
                p.clone(),
                bins.join(p.role),
                config,
                logs.join(format!("{}.log", p.name)),
                backoff.clone(),
                Duration::from_secs(sv.stop_timeout_secs),
                i,
                states.clone(),
                health.clone(),
                children.clone(),
            ));
        }
        result = wait_group(&specs, group, &shutdown).await;
        if result.is_ok() && group == 0 {
            result = register(&hcu, &layout).await;
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        health.set_ready();
        println!(
            "megamail HCU `{}` is up in {:.1} s (data in {})",
            layout.cluster,
            started.elapsed().as_secs_f64(),
            data.display()
        );
        print_urls(&endpoints);
        if demo {
            match crate::demo::ensure(&hcu).await {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("mailctl: the demo account could not be set up: {e:#}"),
            }
        }
        println!("Ctrl-C stops everything.");
        shutdown.triggered().await;
    }
    shutdown.trigger();
    health.set_draining();
    children.wait_tasks().await;
    admin_task.await.ok();
    result
}

fn print_urls(e: &plan::Endpoints) {
    if let Some(u) = &e.login_url {
        println!("  sign in:     {u}/");
    }
    for (i, u) in e.frontdoor_urls.iter().enumerate() {
        println!("  front door {}: {u}/", i + 1);
    }
    if let Some(s) = e.smtp {
        println!("  SMTP:        {s}");
    }
    let mserv: Vec<String> = e.mserv.iter().map(|a| a.to_string()).collect();
    println!("  mserv:       {}", mserv.join(", "));
    for s in &e.ustore {
        println!("  {}:     {} (XFS)", s.name, s.xfs);
    }
    println!(
        "  endpoints:   {}",
        e.data_dir.join("endpoints.json").display()
    );
}
