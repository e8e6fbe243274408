//! Outbound delivery: stateless workers that lease due queue entries from the stores and deliver
//! them, to local mailboxes with the store's idempotent delivery and to the rest of the world
//! over SMTP (`client`, `mx`, `wire`, `remote`), signed for the sender's domain (`dkim`),
//! reporting each outcome to the store (`worker`).

pub use role_config::smtp_out as config;
pub mod client;
pub mod dkim;
pub mod metrics;
pub mod mx;
pub mod rate;
pub mod remote;
pub mod wire;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use runtime::role::Role;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::SmtpOutConfig;

/// Bind the admin port and work until `shutdown` triggers.
pub async fn run(cfg: SmtpOutConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin port {}: {e}", cfg.admin.listen))?;
    run_with(cfg, admin, shutdown).await
}

/// Work with the admin port already bound.
pub async fn run_with(
    cfg: SmtpOutConfig,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    metrics::register();
    runtime::net::raise_fd_limit();
    let role = Role::start("smtp-out", admin, &cfg.faults, &shutdown)?;
    let identity = cfg
        .internal_tls
        .identity(xfs::Role::SmtpOut)
        .map_err(|e| anyhow::anyhow!("internal TLS: {e}"))?;
    let name = identity.name.clone();
    let mserv = mserv_client::Client::new(
        cfg.mserv.clone(),
        mserv_client::ClientConfig::for_role(identity.clone(), Duration::from_secs(60)),
    );
    let mserv = Arc::new(mserv);
    let domains = mserv_client::HostedDomains::with_keys(
        mserv.clone(),
        Duration::from_secs(cfg.domain_refresh_secs),
    );
    let router = mserv_client::Router::new(mserv, Duration::from_secs(10));
    let xfs = xfs::Client::new(xfs::ClientConfig::for_role(
        identity,
        4,
        role.faults.call_faults(),
    ));
    let mut overrides = std::collections::HashMap::new();
    let routes = if cfg.relay.is_set() {
        // Everything remote goes to the relay.
        std::collections::BTreeMap::from([("*".to_string(), vec![cfg.relay.host.clone()])])
    } else {
        cfg.routes.clone()
    };
    for (domain, hosts) in &routes {
        let targets = hosts
            .iter()
            .map(|h| h.parse::<mx::Target>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("routes.{domain}: {e}"))?;
        overrides.insert(domain.to_lowercase(), targets);
    }
    let resolver = mx::Resolver::new(&mx::MxConfig {
        name_servers: cfg.resolvers.clone(),
        timeout: Duration::from_millis(cfg.dns_timeout_ms),
        port: cfg.mx_port,
        overrides,
        ..mx::MxConfig::default()
    });
    let command = Duration::from_secs(cfg.command_timeout_secs);
    let timeouts = client::Timeouts {
        greeting: command,
        command,
        tls_handshake: command.min(Duration::from_secs(120)),
        mail: command,
        rcpt: command,
        data: command.min(Duration::from_secs(120)),
        data_block: command.min(Duration::from_secs(180)),
        data_end: command.max(Duration::from_secs(600)).min(command * 2),
    };
    let relay = if cfg.relay.is_set() {
        Some(remote::Relay::from_config(&cfg.relay)?)
    } else {
        None
    };
    let remote = remote::Remote::new(
        resolver,
        cfg.hostname.clone(),
        timeouts,
        Duration::from_secs(cfg.connect_timeout_secs),
        relay,
    )?;
    let drain = Duration::from_secs(cfg.drain_timeout_secs);
    role.health
        .set_info("hostname", cfg.hostname.clone().into());
    let worker = Arc::new(worker::Worker::new(
        cfg,
        name,
        router,
        domains,
        xfs,
        remote,
        role.faults.clone(),
    ));
    role.ready(role.admin_addr());
    let tasks = shutdown.child();
    worker.run(tasks.clone()).await;
    role.drain(&tasks, drain).await;
    role.finish().await
}
