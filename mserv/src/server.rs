//! The replica's TCP server, for clients and peers alike, on the shared accept loop and
//! connection layer (`runtime::server`, `xfs::serve`: connection limit, hello, pipelining, idle
//! timeout, drain). Lookups and pings are answered inline, in arrival order; everything else runs
//! as its own task. Client
//! requests pass admission control (`Busy` at once past the limit); Raft's messages never do.
//! A bad frame closes the connection with a logged, counted error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::admission::Admission;
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use xfs::serve::{self, ConnLimits};
use xfs::Caller;

use crate::metrics;
use crate::node::Node;
use crate::proto::{MservError, Op, Reply, Request, ServerHello, PROTOCOL_VERSION};

/// The deadline of a request that names none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

pub struct Ctx {
    pub node: Arc<Node>,
    pub admission: Arc<Admission>,
    pub faults: Arc<Faults>,
    pub max_frame: usize,
    /// Mutual TLS (every caller's role proven) or plaintext.
    pub transport: xfs::Transport,
}

/// Accept connections until `shutdown` triggers (the shared accept loop and connection layer:
/// `runtime::server`, `xfs::serve`). Connections are tracked by `shutdown`, so
/// `shutdown.wait_tasks()` afterwards waits for the requests in flight.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, max_conns: usize, shutdown: Shutdown) {
    let limits = ConnLimits {
        max_frame: ctx.max_frame,
        // Peers and clients keep their connections for good; Raft heartbeats keep them busy.
        max_pipeline: 4096,
        ..Default::default()
    };
    let conns = metrics::CONNECTIONS.clone();
    let transport = ctx.transport.clone();
    runtime::server::serve_framed(listener, ctx, transport, limits, max_conns, conns, shutdown)
        .await
}

impl serve::Service for Ctx {
    type Protocol = mserv_client::conn::Index;

    fn hello(&self, _caller: &Caller) -> Result<ServerHello, String> {
        Ok(ServerHello {
            version: PROTOCOL_VERSION,
            replica: self.node.id,
        })
    }

    fn inline(&self, req: &Request) -> bool {
        // Fast and local: answered in order, without a task.
        matches!(req.op, Op::Lookup { .. } | Op::Ping)
    }

    async fn handle(
        self: Arc<Self>,
        _caller: Arc<Caller>,
        req: Request,
    ) -> Result<Reply, MservError> {
        process(&self, req).await
    }

    fn frame_error(&self, peer: SocketAddr, kind: &'static str, error: &str) {
        metrics::FRAME_ERRORS.with_label_values(&[kind]).inc();
        tracing::warn!(%peer, error, "closing connection after a bad frame");
    }

    fn forbidden(&self, caller: &Caller, op: &'static str) {
        metrics::FORBIDDEN
            .with_label_values(&[caller.role.as_str(), op])
            .inc();
        tracing::warn!(peer = %caller.addr, role = %caller.role, name = %caller.name, op,
            "forbidden operation refused");
    }
}

/// The fault point of an operation (`mserv.op.<op>`).
fn fault_point(op: &Op) -> String {
    format!("mserv.op.{}", op.name())
}

async fn process(ctx: &Ctx, req: Request) -> Result<Reply, MservError> {
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
    result
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
