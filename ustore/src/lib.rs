//! ustore: the user data store. A partition server owning whole mailboxes, one RocksDB per
//! segment, serving the XFS protocol. It never calls the member index: it is the authority on
//! which mailboxes it holds, and fences stale callers with `Moved`.

pub use role_config::ustore as config;
pub mod keys;
pub mod metrics;
pub mod segment;
pub mod server;
pub mod sessions;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use runtime::admission::Admission;
use runtime::role::Role;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::UstoreConfig;
pub use segment::{Segment, SegmentOptions};
pub use store::Store;

/// Bind the configured addresses and serve until `shutdown` triggers.
pub async fn run(cfg: UstoreConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let (listener, admin) = runtime::net::bind_pair("XFS", cfg.listen, cfg.admin.listen).await?;
    run_with(cfg, listener, admin, shutdown).await
}

/// Serve on listeners already bound (what tests call).
pub async fn run_with(
    cfg: UstoreConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    metrics::register();
    let role = Role::start("ustore", admin, &cfg.faults, &shutdown)?;
    let faults = role.faults.clone();
    let admission = Admission::new(cfg.max_in_flight);
    role.health.set_admission(admission.clone());
    role.health.set_info("store", cfg.name.clone().into());

    let so = SegmentOptions {
        block_cache_bytes: cfg.block_cache_mb << 20,
        dedupe_retention: Duration::from_secs(cfg.dedupe_retention_secs),
    };
    let segs: Vec<(u32, std::path::PathBuf)> = cfg
        .segments
        .iter()
        .map(|s| (s.id, s.path.clone()))
        .collect();
    let (name, open_adm, open_faults) = (cfg.name.clone(), admission.clone(), faults.clone());
    let store = tokio::task::spawn_blocking(move || {
        let refs: Vec<(u32, &Path)> = segs.iter().map(|(i, p)| (*i, p.as_path())).collect();
        Store::open(&name, &refs, &so, open_adm, open_faults)
    })
    .await
    .context("opening the segments")??;
    let store = Arc::new(store);

    tracing::info!(store = %cfg.name, segments = ?store.segment_ids(), "segments open");
    let transport = cfg
        .internal_tls
        .transport(xfs::Role::Ustore)
        .map_err(|e| anyhow::anyhow!("internal TLS: {e}"))?;
    role.ready(listener.local_addr()?);

    let ctx = Arc::new(server::Ctx {
        store: store.clone(),
        admission,
        faults,
        max_frame: cfg.max_frame_bytes,
        transport,
        backup_roots: cfg.backup_roots.clone(),
        sessions: sessions::Sessions::new(
            cfg.verifying_keys()
                .map_err(|e| anyhow::anyhow!("session-keys: {e}"))?,
        ),
    });
    let sweep = tokio::spawn(sweep_deleted(
        store.clone(),
        cfg.deleted_retention_days,
        Duration::from_secs(cfg.deleted_sweep_secs),
        shutdown.clone(),
    ));
    let watch = tokio::spawn(watch_queue(store.clone(), shutdown.clone()));
    let conns = shutdown.child();
    server::serve(listener, ctx, cfg.max_connections, conns.clone()).await;

    role.drain(&conns, Duration::from_secs(cfg.drain_timeout_secs))
        .await;
    sweep.abort();
    watch.abort();
    let flushing = store.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .ok();
    drop(store);
    role.finish().await
}

/// How often the outbound queue is counted by age.
pub const QUEUE_WATCH: Duration = Duration::from_secs(15);

/// Count the outbound queue by age every [`QUEUE_WATCH`].
async fn watch_queue(store: Arc<Store>, shutdown: Shutdown) {
    loop {
        let s = store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.count_queue()).await {
            tracing::warn!(error = %e, "counting the queue failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(QUEUE_WATCH) => {}
            _ = shutdown.triggered() => return,
        }
    }
}

/// Purge accounts deleted longer than the retention ago: at start-up, then every `every`.
async fn sweep_deleted(
    store: Arc<Store>,
    retention_days: f64,
    every: Duration,
    shutdown: Shutdown,
) {
    let retention_ms = (retention_days * 86_400_000.0) as u64;
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sweep_deleted(retention_ms)).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "deleted accounts past retention purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep of deleted accounts failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.triggered() => return,
        }
    }
}
