//! The XFS server: the shared accept loop and connection layer (hello, pipelining, idle timeout,
//! drain) around the store's own part: each request under admission control, its fault point and
//! deadline, on a blocking thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::admission::Admission;
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use xfs::serve::{self, ConnLimits};
use xfs::{Reply, Request, ServerHello, XfsError};

use crate::metrics;
use crate::store::Store;

/// What a shed caller is told to wait.
const BUSY_RETRY_MS: u32 = 20;

pub struct Ctx {
    pub store: Arc<Store>,
    pub admission: Arc<Admission>,
    pub faults: Arc<Faults>,
    pub max_frame: usize,
}

/// Close the connections the kernel queued on `listener` before the store could serve (the port
/// is bound before the segments open, which can take seconds after a restart). Served together
/// they would be a reconnect storm; closed, their clients come back through their jittered
/// backoff, as if the port had not been open yet. Returns how many were closed.
fn close_queued(listener: &TcpListener) -> u64 {
    use std::os::fd::AsFd;
    // A second descriptor for the same socket, to accept without waiting (the socket is
    // non-blocking: an empty queue answers `WouldBlock`).
    let Ok(fd) = listener.as_fd().try_clone_to_owned() else {
        return 0;
    };
    let queue = std::net::TcpListener::from(fd);
    if queue.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut closed = 0;
    while let Ok((stream, _)) = queue.accept() {
        drop(stream);
        closed += 1;
    }
    closed
}

/// Accept connections until `shutdown` triggers (the shared accept loop and connection layer:
/// `runtime::server`, `xfs::serve`). Connections are tracked by `shutdown`, so
/// `shutdown.wait_tasks()` afterwards waits for the requests in flight.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, max_conns: usize, shutdown: Shutdown) {
    let queued = close_queued(&listener);
    if queued > 0 {
        metrics::CONNECTIONS
            .with_label_values(&["closed_at_start"])
            .inc_by(queued);
        tracing::info!(
            closed = queued,
            "closed connections that queued while the store was opening"
        );
    }
    let limits = ConnLimits {
        max_frame: ctx.max_frame,
        ..Default::default()
    };
    let conns = metrics::CONNECTIONS.clone();
    runtime::server::serve_framed(listener, ctx, limits, max_conns, conns, shutdown).await
}

impl serve::Service for Ctx {
    type Protocol = xfs::client::Xfs;

    fn hello(&self, _client: &str) -> Result<ServerHello, String> {
        Ok(ServerHello {
            version: xfs::PROTOCOL_VERSION,
            store: self.store.name().to_string(),
            segments: self.store.segment_ids(),
        })
    }

    async fn handle(self: Arc<Self>, req: Request) -> Result<Reply, XfsError> {
        process(&self, req).await
    }

    fn frame_error(&self, peer: SocketAddr, kind: &'static str, error: &str) {
        metrics::FRAME_ERRORS.with_label_values(&[kind]).inc();
        tracing::warn!(%peer, error, "closing XFS connection after a bad frame");
    }
}

async fn process(ctx: &Ctx, req: Request) -> Result<Reply, XfsError> {
    let started = Instant::now();
    let _in_flight = metrics::OPS.begin();
    let op = req.op.name();
    let user = req.op.target().map(|t| t.user.clone()).unwrap_or_default();
    let result = run_op(ctx, req.op, started, req.deadline_ms).await;
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(_) => Ok("ok"),
        Err(e) => Err(e.kind()),
    };
    metrics::OPS.record(op, outcome, elapsed);
    let ms = elapsed.as_secs_f64() * 1000.0;
    // Every request is logged with its trace (the caller's request id) at debug, under the
    // target `ustore::request`: `RUST_LOG=info,ustore::request=debug` follows requests here.
    match &result {
        Err(e @ (XfsError::Corrupt { .. } | XfsError::Unavailable { .. })) => {
            tracing::warn!(target: "ustore::request", trace = %req.trace, op, %user, ms, error = %e,
                "request failed")
        }
        _ => {
            let outcome = outcome.unwrap_or_else(|kind| kind);
            tracing::debug!(target: "ustore::request", trace = %req.trace, op, %user, ms, outcome,
                "request")
        }
    }
    result
}

async fn run_op(
    ctx: &Ctx,
    op: xfs::Op,
    received: Instant,
    deadline_ms: u32,
) -> Result<Reply, XfsError> {
    // Admission control: refuse at once rather than queue without bound.
    let Some(permit) = ctx.admission.try_acquire() else {
        metrics::OPS.shed.inc();
        return Err(XfsError::Busy {
            retry_after_ms: BUSY_RETRY_MS,
        });
    };
    ctx.faults
        .inject(&format!("ustore.op.{}", op.name()))
        .await
        .map_err(|e| XfsError::Unavailable { why: e.to_string() })?;
    // 0 means the caller set no deadline.
    let deadline = (deadline_ms > 0).then(|| received + Duration::from_millis(deadline_ms.into()));
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(XfsError::DeadlineExceeded);
        }
        store.execute(op)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "operation panicked");
        Err(XfsError::Unavailable {
            why: "the operation failed inside the store".into(),
        })
    })
}
