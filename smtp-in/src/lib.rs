//! smtp-in: the SMTP ingress. Accepts mail from remote servers for the configured domains only,
//! looks each recipient up in the member index, and writes every copy straight into the
//! recipient's store, answering `250` only once all copies are durable. It keeps no state: kill
//! it at any moment and nothing acknowledged is lost (a message not yet answered is retried by
//! its sender, and delivery ids make the retry store nothing twice).

pub use role_config::smtp_in as config;
pub mod budget;
pub mod deliver;
pub mod io;
pub mod mailboxes;
pub mod message;
pub mod metrics;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::role::Role;
use runtime::server::Admit;
use runtime::shutdown::Shutdown;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use config::SmtpInConfig;

/// What every session shares: the configuration, the TLS acceptor (STARTTLS is offered only
/// with one), the mailboxes mail goes into and the budget for message data in memory.
pub struct Ctx<M> {
    pub cfg: SmtpInConfig,
    pub tls: Option<TlsAcceptor>,
    pub mailboxes: M,
    pub budget: Arc<budget::Budget>,
}

impl<M> Ctx<M> {
    /// The context for `cfg`, its data budget empty.
    pub fn new(cfg: SmtpInConfig, tls: Option<TlsAcceptor>, mailboxes: M) -> Ctx<M> {
        Ctx {
            budget: budget::Budget::new(cfg.max_data_in_flight_bytes),
            cfg,
            tls,
            mailboxes,
        }
    }
}

/// Sessions open, in total and per client address.
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    max_total: usize,
    max_per_client: usize,
}

/// A session's place; given back on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

enum Refused {
    Total,
    Client,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max_total {
            return Err(Refused::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Refused::Client);
        }
        *n += 1;
        open.0 += 1;
        metrics::SESSIONS_OPEN.set(open.0 as i64);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        metrics::SESSIONS_OPEN.set(open.0 as i64);
    }
}

/// Bind the configured addresses and serve until `shutdown` triggers.
pub async fn run(cfg: SmtpInConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let (listener, admin) = runtime::net::bind_pair("SMTP", cfg.listen, cfg.admin.listen).await?;
    run_with(cfg, listener, admin, shutdown).await
}

/// Serve on listeners already bound.
pub async fn run_with(
    cfg: SmtpInConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    metrics::register();
    runtime::net::raise_fd_limit();
    let role = Role::start("smtp-in", admin, &cfg.faults, &shutdown)?;
    let tls = match &cfg.tls {
        Some(t) => Some(tls::acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let slots = Arc::new(Slots {
        open: Mutex::new((0, HashMap::new())),
        max_total: cfg.max_sessions,
        max_per_client: cfg.max_sessions_per_client,
    });
    let drain = Duration::from_secs(cfg.drain_timeout_secs);
    let identity = cfg
        .internal_tls
        .identity(xfs::Role::SmtpIn)
        .map_err(|e| anyhow::anyhow!("internal TLS: {e}"))?;
    let mailboxes = deliver::Stores::new(&cfg, identity, role.faults.clone());
    let ctx = Arc::new(Ctx::new(cfg, tls, mailboxes));

    role.health
        .set_info("hostname", ctx.cfg.hostname.clone().into());
    tracing::info!(tls = ctx.tls.is_some(), "accepting mail");
    role.ready(listener.local_addr()?);

    let sessions = shutdown.child();
    accept_loop(listener, ctx.clone(), slots, sessions.clone()).await;

    role.drain(&sessions, drain).await;
    role.finish().await
}

/// The shared accept loop (`runtime::server`) with smtp-in's own admission: sessions in total
/// and per client address, a refused client told `421 4.7.0` why.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx<deliver::Stores>>,
    slots: Arc<Slots>,
    shutdown: Shutdown,
) {
    let hostname = ctx.cfg.hostname.clone();
    let admit = move |peer: std::net::SocketAddr| match slots.take(peer.ip()) {
        Ok(slot) => Admit::Serve(slot),
        Err(why) => {
            let (outcome, text) = match why {
                Refused::Total => ("refused_total", "too many connections"),
                Refused::Client => ("refused_client", "too many connections from your address"),
            };
            metrics::OPS.shed.inc();
            let line = format!("421 4.7.0 {hostname} Error: {text}, try again later\r\n");
            Admit::Refuse {
                outcome,
                farewell: Some(line.into_bytes()),
            }
        }
    };
    let sd = shutdown.clone();
    runtime::server::serve_admitting(
        listener,
        // The session limits above are the bound.
        tokio::sync::Semaphore::MAX_PERMITS,
        metrics::SESSIONS.clone(),
        shutdown,
        admit,
        move |stream, peer, slot| {
            let (ctx, sd) = (ctx.clone(), sd.clone());
            async move {
                let _slot = slot;
                session::serve(ctx, stream, peer, sd).await;
            }
        },
    )
    .await
}
