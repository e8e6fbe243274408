//! One HTTP/1.1 server loop for every web port (front doors, login, the admin port): a bound on
//! connections served at once, a header read timeout, and on shutdown a graceful close of every
//! connection with a bounded drain. [`layers`] is what wraps every request of the web roles, and
//! [`page`] the frame of their HTML pages.
//!
//! A full port makes room for each new connection by closing the one open longest: at once when
//! it has no request in flight (it sends nothing, or is still sending its headers, or idles
//! between requests), after its answer otherwise. Clients that hold connections open without
//! asking anything therefore cannot lock out one that asks: it is served at once, whatever the
//! number of idle connections, while waiting in the listen backlog would have left it behind
//! every one of them until their header timeouts.

pub mod layers;
pub mod page;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::shutdown::Shutdown;

/// The limits of one HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; past it the connection open longest is closed to make room
    /// (at once without a request in flight, after its answer with one).
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_timeout: Duration,
    /// How long open connections get to finish once shutdown is triggered.
    pub drain: Duration,
}

/// How long a full port waits for the connection it asked to close before it asks the next.
const EVICT_WAIT: Duration = Duration::from_millis(50);

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
    // Every connection served, oldest first (those gone are skipped and, now and then, dropped).
    let mut open: VecDeque<Weak<Conn>> = VecDeque::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = shutdown.triggered() => break,
            x = crate::net::accept(&listener) => x,
        };
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match make_room(&limit, &mut open, &shutdown).await {
                Some(p) => p,
                None => break,
            },
        };
        let state = Arc::new(Conn::default());
        if open.len() >= 2 * limits.max_connections {
            open.retain(|c| c.strong_count() > 0);
        }
        open.push_back(Arc::downgrade(&state));
        let service = Tracked {
            inner: service_for(peer),
            conn: Arc::clone(&state),
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
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
                    () = state.evict.cancelled(), if !closing => {
                        if state.in_flight.load(Ordering::SeqCst) == 0 {
                            tracing::debug!(%peer, "port full: closing an idle connection");
                            break;
                        }
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

/// A place for one more connection on a full port: ask the connections open longest to close,
/// one more every [`EVICT_WAIT`] until a place frees; `None` on shutdown.
async fn make_room(
    limit: &Arc<Semaphore>,
    open: &mut VecDeque<Weak<Conn>>,
    shutdown: &Shutdown,
) -> Option<OwnedSemaphorePermit> {
    loop {
        while let Some(oldest) = open.pop_front() {
            if let Some(conn) = oldest.upgrade() {
                conn.evict.cancel();
                break;
            }
        }
        tokio::select! {
            () = shutdown.triggered() => return None,
            p = Arc::clone(limit).acquire_owned() => return p.ok(),
            () = tokio::time::sleep(EVICT_WAIT) => {}
        }
    }
}

/// One connection as the accept loop sees it.
#[derive(Default)]
struct Conn {
    /// Requests being served: from the parsed head to the last byte of the answer's body.
    in_flight: AtomicUsize,
    /// Cancelled when a full port wants this connection's place.
    evict: CancellationToken,
}

/// A request being served; its end (the answer's body dropped) is counted when it drops.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's service, counting its requests in flight.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = Response<Counted<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let request = InFlight::begin(&self.conn);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            Ok(res.map(|body| Counted {
                body: Box::pin(body),
                _request: request,
            }))
        })
    }
}

/// An answer's body, its request in flight until the body is dropped (sent, or cut off).
pub struct Counted<B> {
    body: Pin<Box<B>>,
    _request: InFlight,
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
    use std::convert::Infallible;
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A body sent in two parts a second apart: `first ` now, `last` later.
    struct TwoParts {
        sent: u8,
        pause: Pin<Box<tokio::time::Sleep>>,
    }

    impl Body for TwoParts {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let part = match self.sent {
                0 => "first ",
                1 => {
                    std::task::ready!(self.pause.as_mut().poll(cx));
                    "last"
                }
                _ => return Poll::Ready(None),
            };
            self.sent += 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(part.as_bytes())))))
        }
    }

    /// An HTTP port answering `ok`, or `first last` slowly at `/slow`, with `limits`.
    async fn start(limits: Limits) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let service_for = |_peer| {
            hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = if req.uri().path() == "/slow" {
                    let pause = Box::pin(tokio::time::sleep(Duration::from_secs(1)));
                    TwoParts { sent: 0, pause }.boxed()
                } else {
                    Full::new(Bytes::from_static(b"ok")).boxed()
                };
                Ok::<_, Infallible>(Response::new(body))
            })
        };
        let task = tokio::spawn(serve(
            listener,
            limits,
            shutdown.clone(),
            service_for,
            || {},
        ));
        (addr, shutdown, task)
    }

    /// Read until the server closes `s`; how long that took from `since`.
    async fn closed_after(mut s: impl tokio::io::AsyncRead + Unpin, since: Instant) -> Duration {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .ok();
        since.elapsed()
    }

    /// `GET path` on a connection of its own: the whole answer.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    /// Whether the server has closed `s` (or sent something) within 200 ms.
    async fn closed_now(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_full_port_closes_the_idle_connection_open_longest_for_a_new_one() {
        let (addr, shutdown, task) = start(Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(1),
        })
        .await;
        // Four connections that ask nothing fill the port; the oldest is still sending headers.
        let mut trickling = TcpStream::connect(addr).await.unwrap();
        trickling
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;

        // A client that asks is answered at once, not after the others' header timeout ...
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/"))
            .await
            .expect("answered while the port is full of idle connections");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // ... in the place of the connection open longest; the others are left alone.
        assert!(closed_now(&mut trickling).await, "the oldest is closed");
        for s in &mut silent {
            assert!(!closed_now(s).await, "a younger one is closed");
        }
        shutdown.trigger();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_port_lets_the_connection_open_longest_finish_its_answer() {
        let (addr, shutdown, task) = start(Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(1),
        })
        .await;
        // The oldest connection is in the middle of its answer, the other asks nothing.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("first") {
            let mut buf = [0u8; 256];
            let n = busy.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before its answer");
            seen.extend_from_slice(&buf[..n]);
        }
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let t0 = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/"))
            .await
            .expect("answered while the port is full");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert!(closed_now(&mut silent).await, "the idle one made room");
        // The busy one got its whole answer, and then its connection was closed.
        tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut seen))
            .await
            .expect("closed after its answer")
            .unwrap();
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains("first ") && seen.contains("last"), "{seen}");
        shutdown.trigger();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn silent_trickling_and_idle_clients_are_closed_at_the_header_timeout() {
        let header_timeout = Duration::from_millis(500);
        let (addr, shutdown, task) = start(Limits {
            max_connections: 16,
            header_timeout,
            drain: Duration::from_secs(1),
        })
        .await;
        let t0 = Instant::now();
        let silent = TcpStream::connect(addr).await.unwrap();
        // Headers that never end: a line every 50 ms, each well within the timeout.
        let trickling = TcpStream::connect(addr).await.unwrap();
        let (rd, mut wr) = trickling.into_split();
        let trickle = tokio::spawn(async move {
            let mut r = wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            while r.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                r = wr.write_all(b"X-Never-Ending: yes\r\n").await;
            }
        });
        // Idle after one request on a kept-alive connection.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 64];
        let n = idle.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        let answered = Instant::now();

        for (what, took) in [
            ("silent", closed_after(silent, t0).await),
            ("trickling", closed_after(rd, t0).await),
            ("idle", closed_after(idle, answered).await),
        ] {
            assert!(
                took >= header_timeout && took < header_timeout * 6,
                "{what}: closed after {took:?}"
            );
        }
        trickle.abort();
        shutdown.trigger();
        task.await.unwrap();
    }

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
