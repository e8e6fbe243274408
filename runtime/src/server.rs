//! The accept loop every TCP role runs (stores, index replicas, SMTP): a bound on connections
//! served at once (past it a new connection is closed at once and counted `refused`), each
//! connection a task tracked by the role's [`Shutdown`] so the drain waits for it, and the
//! per-connection counts in the role's `<role>_connections_total{outcome}`.
//!
//! What happens on a connection is the role's: `xfs::serve::connection` for framed protocols
//! (hello and version, pipelining, idle timeout; [`serve_framed`]), the SMTP session for smtp-in.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::shutdown::Shutdown;

/// What the loop decides about a connection before it is served.
pub enum Admit<P> {
    /// Serve it, holding `P` for as long as it lives.
    Serve(P),
    /// Close it, counted under `outcome`, after writing `farewell` (if any: a protocol's "try
    /// again later" line) within two seconds.
    Refuse {
        outcome: &'static str,
        farewell: Option<Vec<u8>>,
    },
}

/// Accept until `shutdown` triggers, serving at most `max_conns` connections at once with
/// `handle`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    max_conns: usize,
    conns: IntCounterVec,
    shutdown: Shutdown,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_admitting(
        listener,
        max_conns,
        conns,
        shutdown,
        |_| Admit::Serve(()),
        move |s, p, ()| handle(s, p),
    )
    .await
}

/// [`serve`] for a framed protocol (`xfs::serve`: a store's XFS, the index's): each connection
/// served by `service` over `transport` (mutual TLS proves each caller's role) within `limits`,
/// and stopped by `shutdown` (so `shutdown.wait_tasks()` afterwards waits for the requests in
/// flight).
pub async fn serve_framed<S: xfs::serve::Service>(
    listener: TcpListener,
    service: Arc<S>,
    transport: xfs::Transport,
    limits: xfs::serve::ConnLimits,
    max_conns: usize,
    conns: IntCounterVec,
    shutdown: Shutdown,
) {
    let handle = xfs::serve::handler(service, transport, limits, shutdown.token());
    serve(listener, max_conns, conns, shutdown, handle).await
}

/// [`serve`] with a role's own admission step (say, a limit per client address) after the
/// global bound.
pub async fn serve_admitting<A, P, F, Fut>(
    listener: TcpListener,
    max_conns: usize,
    conns: IntCounterVec,
    shutdown: Shutdown,
    admit: A,
    handle: F,
) where
    A: Fn(SocketAddr) -> Admit<P>,
    P: Send + 'static,
    F: Fn(TcpStream, SocketAddr, P) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_conns));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.triggered() => break,
            x = crate::net::accept(&listener) => x,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conns.with_label_values(&["refused"]).inc();
            tracing::warn!(%peer, "connection limit reached, closing new connection");
            continue;
        };
        let held = match admit(peer) {
            Admit::Serve(held) => held,
            Admit::Refuse { outcome, farewell } => {
                conns.with_label_values(&[outcome]).inc();
                if let Some(bytes) = farewell {
                    tokio::spawn(say_farewell(stream, bytes));
                }
                continue;
            }
        };
        conns.with_label_values(&["accepted"]).inc();
        let conn = handle(stream, peer, held);
        shutdown.spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}

/// Tell a refused client why, and close.
async fn say_farewell(mut stream: TcpStream, bytes: Vec<u8>) {
    use tokio::io::AsyncWriteExt as _;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn past_the_limit_connections_are_refused_and_counted() {
        let conns = IntCounterVec::new(
            prometheus::Opts::new("test_connections_total", "t"),
            &["outcome"],
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(serve(
            listener,
            1,
            conns.clone(),
            shutdown.clone(),
            |mut s, _| async move {
                // Hold the connection until the client closes it.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf).await;
            },
        ));
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(b"").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        // The second is closed at once: end of stream.
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(conns.with_label_values(&["accepted"]).get(), 1);
        assert_eq!(conns.with_label_values(&["refused"]).get(), 1);
        drop(first);
        shutdown.trigger();
        task.await.unwrap();
        shutdown.wait_tasks().await;
    }
}
