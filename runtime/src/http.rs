//! One HTTP/1.1 server loop for every web port (front doors, login, the admin port): a bound on
//! connections served at once, a header read timeout, and on shutdown a graceful close of every
//! connection with a bounded drain. [`layers`] is what wraps every request of the web roles, and
//! [`page`] the frame of their HTML pages.

pub mod layers;
pub mod page;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// The limits of one HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; the next one waits in the listen backlog.
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_timeout: Duration,
    /// How long open connections get to finish once shutdown is triggered.
    pub drain: Duration,
}

/// Serve HTTP on `listener` until `shutdown`, each connection with the service `service_for`
/// makes from the client's address. On shutdown: stop accepting, call `on_drain`, ask every open
/// connection to close after its request in flight, and wait for them at most `limits.drain`
/// before cutting them off.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    shutdown: Shutdown,
    service_for: F,
    on_drain: impl FnOnce(),
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = shutdown.triggered() => break,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.triggered() => break,
            x = crate::net::accept(&listener) => x,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service_for(peer));
        let token = shutdown.token();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = token.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    on_drain();
    drop(listener);
    tracing::info!(open = connections.len(), "draining HTTP connections");
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

/// A request's id, carried from the web tiers into the store's logs (an extension of the
/// request, put there by the role's middleware).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The id of a request whose client sent `sent` in `X-Request-Id`: that value if it is sane (1
/// to 64 characters of letters, digits, `-`, `_`, `.` and `:`), else a fresh random one.
pub fn request_id(sent: Option<&str>) -> String {
    match sent.filter(|v| is_sane_request_id(v)) {
        Some(v) => v.to_owned(),
        None => {
            let bytes: [u8; 8] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

fn is_sane_request_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(Some("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [None, Some(""), Some("a b"), Some("a\u{0}"), Some("é")] {
            let id = request_id(bad);
            assert_eq!(id.len(), 16, "{bad:?} → {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let long = "x".repeat(65);
        assert_ne!(request_id(Some(&long)), long);
    }
}
