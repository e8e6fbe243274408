//! The XFS server: accepts connections, checks the hello, reads pipelined requests, runs each one
//! under admission control on a blocking thread, and writes responses as they complete.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::admission::Admission;
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use xfs::frame::{self, FrameError};
use xfs::{ClientFrame, Reply, Request, Response, ServerFrame, ServerHello, XfsError};

use crate::metrics;
use crate::store::Store;

/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// What a shed caller is told to wait.
const BUSY_RETRY_MS: u32 = 20;
/// Requests one connection may have in flight; past it the server stops reading that connection
/// until replies drain (a client that never reads its replies cannot grow the server's memory).
const MAX_PIPELINE: usize = 1024;

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

/// Accept connections until `shutdown` triggers. Connections are tracked by `shutdown`, so
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
    let slots = Arc::new(Semaphore::new(max_conns));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.triggered() => break,
            x = runtime::net::accept(&listener) => x,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::CONNECTIONS.with_label_values(&["refused"]).inc();
            tracing::warn!(%peer, "connection limit reached, closing new connection");
            continue;
        };
        metrics::CONNECTIONS.with_label_values(&["accepted"]).inc();
        let ctx = ctx.clone();
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            let _permit = permit;
            handle_conn(stream, peer, ctx, sd).await;
        });
    }
}

fn frame_error(peer: SocketAddr, e: &FrameError) {
    metrics::FRAME_ERRORS.with_label_values(&[e.kind()]).inc();
    tracing::warn!(%peer, error = %e, "closing XFS connection after a bad frame");
}

async fn handle_conn(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, shutdown: Shutdown) {
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::new(wr);
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read_msg::<_, ClientFrame>(&mut rd, ctx.max_frame),
    )
    .await;
    let client = match hello {
        Ok(Ok(Some(ClientFrame::Hello(h)))) => h,
        Ok(Err(e)) => return frame_error(peer, &e),
        Ok(Ok(Some(ClientFrame::Request(_)))) => {
            metrics::FRAME_ERRORS.with_label_values(&["no_hello"]).inc();
            tracing::warn!(%peer, "request before hello, closing");
            return;
        }
        Ok(Ok(None)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no hello in time, closing");
            return;
        }
    };
    let reply = if client.version == xfs::PROTOCOL_VERSION {
        ServerFrame::Hello(ServerHello {
            version: xfs::PROTOCOL_VERSION,
            store: ctx.store.name().to_string(),
            segments: ctx.store.segment_ids(),
        })
    } else {
        ServerFrame::Refused {
            reason: format!(
                "protocol version {} not supported; this store speaks {}",
                client.version,
                xfs::PROTOCOL_VERSION
            ),
        }
    };
    let refused = matches!(reply, ServerFrame::Refused { .. });
    if frame::write_msg(&mut wr, &reply).await.is_err() || wr.flush().await.is_err() || refused {
        return;
    }
    tracing::debug!(%peer, client = %client.client, "XFS connection open");

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_PIPELINE);
    let pipeline = Arc::new(Semaphore::new(MAX_PIPELINE));
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if wr.write_all(&more).await.is_err() {
                    return;
                }
            }
            if wr.flush().await.is_err() {
                return;
            }
        }
    });
    loop {
        let msg = tokio::select! {
            _ = shutdown.triggered() => break,
            r = frame::read_msg::<_, ClientFrame>(&mut rd, ctx.max_frame) => r,
        };
        match msg {
            Ok(Some(ClientFrame::Request(req))) => {
                let slot = tokio::select! {
                    _ = shutdown.triggered() => break,
                    p = pipeline.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let ctx = ctx.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let resp = process(&ctx, req).await;
                    match frame::encode(&ServerFrame::Response(resp)) {
                        Ok(buf) => {
                            let _ = tx.send(buf).await;
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode a response"),
                    }
                });
            }
            Ok(Some(ClientFrame::Hello(_))) => {
                metrics::FRAME_ERRORS
                    .with_label_values(&["second_hello"])
                    .inc();
                tracing::warn!(%peer, "second hello, closing");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                frame_error(peer, &e);
                break;
            }
        }
    }
    // The writer ends once every request in flight has sent its response.
    drop(tx);
    let _ = writer.await;
}

async fn process(ctx: &Ctx, req: Request) -> Response {
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
    Response { id: req.id, result }
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
