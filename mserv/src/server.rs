//! The replica's TCP server, for clients and peers alike: accepts connections up to a limit,
//! checks the hello, reads pipelined requests and writes each answer as it is ready. Lookups and
//! pings are answered inline, in arrival order; everything else runs as its own task. Client
//! requests pass admission control (`Busy` at once past the limit); Raft's messages never do.
//! A bad frame closes the connection with a logged, counted error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::admission::Admission;
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use xfs::frame::{self, FrameError};

use crate::metrics;
use crate::node::Node;
use crate::proto::{
    ClientFrame, MservError, Op, Reply, Request, Response, ServerFrame, ServerHello,
    PROTOCOL_VERSION,
};

/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The deadline of a request that names none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

pub struct Ctx {
    pub node: Arc<Node>,
    pub admission: Arc<Admission>,
    pub faults: Arc<Faults>,
    pub max_frame: usize,
}

/// Accept connections until `shutdown` triggers. Connections are tracked by `shutdown`, so
/// `shutdown.wait_tasks()` afterwards waits for the requests in flight.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, max_conns: usize, shutdown: Shutdown) {
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
    tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
}

async fn handle_conn(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, shutdown: Shutdown) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
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
    let reply = if client.version == PROTOCOL_VERSION {
        ServerFrame::Hello(ServerHello {
            version: PROTOCOL_VERSION,
            replica: ctx.node.id,
        })
    } else {
        metrics::FRAME_ERRORS.with_label_values(&["version"]).inc();
        tracing::warn!(%peer, version = client.version, "refusing a client of another protocol version");
        ServerFrame::Refused {
            reason: format!(
                "protocol version {} not supported; this replica speaks {PROTOCOL_VERSION}",
                client.version
            ),
        }
    };
    let refused = matches!(reply, ServerFrame::Refused { .. });
    if frame::write_msg(&mut wr, &reply).await.is_err() || wr.flush().await.is_err() || refused {
        return;
    }
    tracing::debug!(%peer, client = %client.client, "connection open");

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
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
                if matches!(req.op, Op::Lookup { .. } | Op::Ping) {
                    // Fast and local: answer in order, without a task.
                    let resp = process(&ctx, req).await;
                    if send(&tx, resp).await.is_err() {
                        break;
                    }
                } else {
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    shutdown.spawn(async move {
                        let resp = process(&ctx, req).await;
                        let _ = send(&tx, resp).await;
                    });
                }
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

async fn send(tx: &mpsc::Sender<Vec<u8>>, resp: Response) -> Result<(), ()> {
    match frame::encode(&ServerFrame::Response(resp)) {
        Ok(buf) => tx.send(buf).await.map_err(|_| ()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response");
            Err(())
        }
    }
}

/// The fault point of an operation (`mserv.op.<op>`).
fn fault_point(op: &Op) -> String {
    format!("mserv.op.{}", op.name())
}

async fn process(ctx: &Ctx, req: Request) -> Response {
    let started = Instant::now();
    let _in_flight = metrics::OPS.begin();
    let op_name = req.op.name();
    let deadline = if req.deadline_ms == 0 {
        DEFAULT_DEADLINE
    } else {
        Duration::from_millis(req.deadline_ms.into())
    };
    let result = run_op(ctx, req.op, deadline).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    let seconds = started.elapsed().as_secs_f64();
    if op_name == "lookup" && outcome == "ok" {
        metrics::LOOKUPS_OK.inc();
        metrics::LOOKUP_LATENCY.observe(seconds);
    } else {
        let outcome = if result.is_ok() {
            Ok("ok")
        } else {
            Err(outcome)
        };
        metrics::OPS.record(op_name, outcome, started.elapsed());
    }
    match &result {
        Err(
            e @ (MservError::Unavailable { .. }
            | MservError::OutcomeUnknown { .. }
            | MservError::Protocol { .. }),
        ) => {
            tracing::warn!(id = req.id, op = op_name, error = %e, "request failed")
        }
        _ => tracing::trace!(id = req.id, op = op_name, outcome, "request"),
    }
    Response { id: req.id, result }
}

async fn run_op(ctx: &Ctx, op: Op, deadline: Duration) -> Result<Reply, MservError> {
    if let Op::Raft(rpc) = op {
        return ctx.node.raft_rpc(rpc).await;
    }
    // Admission control: refuse at once rather than queue without bound.
    let Some(_permit) = ctx.admission.try_acquire() else {
        metrics::OPS.shed.inc();
        return Err(MservError::Busy);
    };
    if let Op::Lookup { user } = &op {
        ctx.faults
            .inject("mserv.op.lookup")
            .await
            .map_err(|e| MservError::Unavailable { why: e.to_string() })?;
        return ctx.node.lookup(user).map(Reply::Placement);
    }
    ctx.faults
        .inject(&fault_point(&op))
        .await
        .map_err(|e| MservError::Unavailable { why: e.to_string() })?;
    match op {
        Op::Write { cmd, forwarded } => ctx
            .node
            .write(cmd, forwarded, deadline)
            .await
            .map(Reply::Applied),
        Op::AddReplica {
            id,
            addr,
            voter,
            forwarded,
        } => {
            ctx.node
                .add_replica(id, addr, voter, forwarded, deadline)
                .await
        }
        Op::RemoveReplica { id, forwarded } => {
            ctx.node.remove_replica(id, forwarded, deadline).await
        }
        read => ctx.node.read(&read),
    }
}
