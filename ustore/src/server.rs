//! The XFS server: the shared accept loop and connection layer (hello, pipelining, idle timeout,
//! drain) around the store's own part: each request under admission control, its fault point and
//! deadline, on a blocking thread.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::admission::Admission;
use runtime::faults::Faults;
use runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use xfs::serve::{self, ConnLimits};
use xfs::{Caller, Reply, Request, ServerHello, XfsError};

use crate::metrics;
use crate::sessions::{self, Sessions};
use crate::store::Store;

/// What a shed caller is told to wait.
const BUSY_RETRY_MS: u32 = 20;

pub struct Ctx {
    pub store: Arc<Store>,
    pub admission: Arc<Admission>,
    pub faults: Arc<Faults>,
    pub max_frame: usize,
    /// Mutual TLS (every caller's role proven) or plaintext.
    pub transport: xfs::Transport,
    /// The only directories checkpoints, backups and restores may use.
    pub backup_roots: Vec<PathBuf>,
    /// The check of the user's session on operations that act for one.
    pub sessions: Sessions,
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
    let transport = ctx.transport.clone();
    runtime::server::serve_framed(listener, ctx, transport, limits, max_conns, conns, shutdown)
        .await
}

impl serve::Service for Ctx {
    type Protocol = xfs::client::Xfs;

    fn hello(&self, _caller: &Caller) -> Result<ServerHello, String> {
        Ok(ServerHello {
            version: xfs::PROTOCOL_VERSION,
            store: self.store.name().to_string(),
            segments: self.store.segment_ids(),
        })
    }

    async fn handle(self: Arc<Self>, caller: Arc<Caller>, req: Request) -> Result<Reply, XfsError> {
        let session = if xfs::access::needs_session(caller.role, &req.op) {
            match self.sessions.check(&req, runtime::time::now_secs()).await {
                Ok(claims) => Some(claims),
                Err(e) => {
                    tracing::warn!(peer = %caller.addr, role = %caller.role, name = %caller.name,
                        op = req.op.name(), trace = %req.trace, error = %e, "session refused");
                    return Err(e);
                }
            }
        } else {
            None
        };
        process(&self, req, session).await
    }

    fn frame_error(&self, peer: SocketAddr, kind: &'static str, error: &str) {
        metrics::FRAME_ERRORS.with_label_values(&[kind]).inc();
        tracing::warn!(%peer, error, "closing XFS connection after a bad frame");
    }

    fn forbidden(&self, caller: &Caller, op: &'static str) {
        metrics::FORBIDDEN
            .with_label_values(&[caller.role.as_str(), op])
            .inc();
        tracing::warn!(peer = %caller.addr, role = %caller.role, name = %caller.name, op,
            "forbidden operation refused");
    }
}

/// The session an operation acts for, checked by [`Sessions::check`]; the store checks the
/// account's generation and sign-outs before the operation runs.
type Acting = Option<Arc<session::token::Claims>>;

async fn process(ctx: &Ctx, req: Request, session: Acting) -> Result<Reply, XfsError> {
    let started = Instant::now();
    let _in_flight = metrics::OPS.begin();
    let op = req.op.name();
    let user = req.op.target().map(|t| t.user.clone()).unwrap_or_default();
    let result = run_op(ctx, req.op, session, started, req.deadline_ms).await;
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
    session: Acting,
    received: Instant,
    deadline_ms: u32,
) -> Result<Reply, XfsError> {
    if let Some(dir) = op_dir(&op) {
        confine(&ctx.backup_roots, dir)?;
    }
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
        // Signing out an ended session again is harmless; everything else needs a live one.
        if let (Some(claims), Some(target)) = (&session, op.target()) {
            if !matches!(op, xfs::Op::EndSession { .. }) {
                let checked = store.check_session(target, claims.gen, &claims.sid);
                sessions::record(&checked);
                checked?;
            }
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

/// The directory on the store's machine an operation reads or writes, if it names one.
fn op_dir(op: &xfs::Op) -> Option<&str> {
    match op {
        xfs::Op::Checkpoint { dir, .. }
        | xfs::Op::BackupAccount { dir, .. }
        | xfs::Op::RestoreMailbox { dir, .. } => Some(dir),
        _ => None,
    }
}

/// `Ok` when `dir` is an absolute path under one of `roots`, with symbolic links resolved
/// through its nearest existing ancestor (so a link or `..` cannot lead out); refused otherwise.
pub fn confine(roots: &[PathBuf], dir: &str) -> Result<(), XfsError> {
    let refuse = |why: &str| XfsError::BadRequest {
        why: format!("directory {dir:?} refused: {why}"),
    };
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err(refuse("not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("contains .."));
    }
    let mut existing = path;
    while !existing.exists() {
        existing = existing
            .parent()
            .ok_or_else(|| refuse("no existing ancestor"))?;
    }
    let real = existing
        .canonicalize()
        .map_err(|e| refuse(&e.to_string()))?
        .join(path.strip_prefix(existing).unwrap_or(Path::new("")));
    let inside = roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| real.starts_with(&root));
    if inside {
        Ok(())
    } else {
        Err(refuse("not under the store's backup-roots"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_under_a_root_are_allowed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_path_buf()];
        let p = |rel: &str| root.path().join(rel).display().to_string();
        assert!(confine(&roots, &p("new/checkpoint")).is_ok());
        std::fs::create_dir(root.path().join("exists")).unwrap();
        assert!(confine(&roots, &p("exists")).is_ok());
        for bad in [
            "relative/dir".to_string(),
            p("../escape"),
            outside.path().display().to_string(),
            "/etc/passwd".into(),
            "/".into(),
        ] {
            assert!(confine(&roots, &bad).is_err(), "{bad}");
        }
        // A symbolic link inside a root that points out of it.
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert!(confine(&roots, &p("link/checkpoint")).is_err());
        // No roots: nothing is allowed.
        assert!(confine(&[], &p("new")).is_err());
    }
}
