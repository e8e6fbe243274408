//! The server side of the one connection layer: one connection's life for any framed protocol
//! (a store's XFS, the index's): the hello with its version within a time limit, then pipelined
//! requests read while earlier ones run, each answered as it completes, a bound on requests in
//! flight per connection, an idle timeout, and on shutdown a drain of what is in flight.
//!
//! A bad frame (checksum, length, undecodable, a request before the hello, a second hello)
//! closes the connection and is reported to [`Service::frame_error`] for the role's metrics.
//! The accept loop around it (connection limit, per-connection metrics) is `runtime::server`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::frame;

/// What the client's frames are, as a server reads them.
pub enum Incoming<R> {
    Hello { version: u32, client: String },
    Request(R),
}

/// A store's client frames, as a server reads them.
impl From<crate::proto::ClientFrame> for Incoming<crate::proto::Request> {
    fn from(frame: crate::proto::ClientFrame) -> Self {
        match frame {
            crate::proto::ClientFrame::Hello(h) => Incoming::Hello {
                version: h.version.into(),
                client: h.client,
            },
            crate::proto::ClientFrame::Request(r) => Incoming::Request(r),
        }
    }
}

/// A server's side of a protocol and what it does with requests.
pub trait Service: Send + Sync + 'static {
    /// What a client sends; the protocol says what each frame is (a hello or a request).
    type ClientFrame: DeserializeOwned + Send + Into<Incoming<Self::Request>>;
    type ServerFrame: Serialize + Send + Sync;
    type Request: Send + 'static;
    /// The answer to a hello: `Ok(hello)` to go on, `Err(refusal)` to send it and close.
    fn hello(&self, version: u32, client: &str) -> Result<Self::ServerFrame, Self::ServerFrame>;
    /// Whether a request is answered in arrival order without a task of its own (cheap, local
    /// reads such as the index's lookups).
    fn inline(&self, _req: &Self::Request) -> bool {
        false
    }
    /// Do one request; the frame to send back.
    fn handle(
        self: Arc<Self>,
        req: Self::Request,
    ) -> impl Future<Output = Self::ServerFrame> + Send;
    /// A frame error closed a connection (`kind`: [`FrameError::kind`], or `no_hello`,
    /// `second_hello`, `version`).
    fn frame_error(&self, peer: SocketAddr, kind: &'static str, error: &str);
}

/// The limits of one connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_frame: usize,
    /// A new connection must send its hello within this time.
    pub hello_timeout: Duration,
    /// A connection with nothing in flight that sends nothing for this long is closed (its
    /// client reconnects at once on its next call).
    pub idle_timeout: Duration,
    /// Requests one connection may have in flight; past it the server stops reading that
    /// connection until answers drain (a client that never reads cannot grow our memory).
    pub max_pipeline: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_frame: frame::MAX_FRAME_DEFAULT,
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_pipeline: 1024,
        }
    }
}

/// Serve one connection until the client closes it, a frame is bad, it idles out, or `stop` is
/// cancelled; then wait for the answers in flight to be written.
pub async fn connection<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<S>,
    limits: &ConnLimits,
    stop: CancellationToken,
) {
    // Owned halves: reads and writes proceed without a lock between them.
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut wr = BufWriter::new(wr);
    let first = tokio::time::timeout(
        limits.hello_timeout,
        frame::read_msg::<_, S::ClientFrame>(&mut rd, limits.max_frame),
    )
    .await;
    let (version, client) = match first {
        Ok(Ok(Some(f))) => match Into::<Incoming<S::Request>>::into(f) {
            Incoming::Hello { version, client } => (version, client),
            Incoming::Request(_) => {
                return service.frame_error(peer, "no_hello", "request before hello")
            }
        },
        Ok(Err(e)) => return service.frame_error(peer, e.kind(), &e.to_string()),
        Ok(Ok(None)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no hello in time, closing");
            return;
        }
    };
    let (reply, go_on) = match service.hello(version, &client) {
        Ok(hello) => (hello, true),
        Err(refusal) => {
            service.frame_error(peer, "version", &format!("client speaks version {version}"));
            (refusal, false)
        }
    };
    if frame::write_msg(&mut wr, &reply).await.is_err() || wr.flush().await.is_err() || !go_on {
        return;
    }
    tracing::debug!(%peer, %client, "connection open");

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.max_pipeline);
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            // Pipelining: write what is ready, flush once.
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
    let pipeline = Arc::new(Semaphore::new(limits.max_pipeline));
    loop {
        let idle = pipeline.available_permits() == limits.max_pipeline;
        let read = frame::read_msg::<_, S::ClientFrame>(&mut rd, limits.max_frame);
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            r = read => r,
            _ = tokio::time::sleep(limits.idle_timeout), if idle => {
                tracing::debug!(%peer, "idle connection closed");
                break;
            }
        };
        let req = match msg {
            Ok(Some(f)) => match Into::<Incoming<S::Request>>::into(f) {
                Incoming::Request(r) => r,
                Incoming::Hello { .. } => {
                    service.frame_error(peer, "second_hello", "second hello");
                    break;
                }
            },
            Ok(None) => break,
            Err(e) => {
                service.frame_error(peer, e.kind(), &e.to_string());
                break;
            }
        };
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            p = pipeline.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        if service.inline(&req) {
            let answer = service.clone().handle(req).await;
            drop(slot);
            if send(&tx, answer).await.is_err() {
                break;
            }
        } else {
            let (service, tx) = (service.clone(), tx.clone());
            tokio::spawn(async move {
                let answer = service.handle(req).await;
                let _ = send(&tx, answer).await;
                drop(slot);
            });
        }
    }
    // The writer ends once every request in flight has sent its answer.
    drop(tx);
    let _ = writer.await;
}

/// What an accept loop (`runtime::server::serve`) calls per connection: [`connection`] with
/// this service, these limits and this stop signal.
pub fn handler<S: Service>(
    service: Arc<S>,
    limits: ConnLimits,
    stop: CancellationToken,
) -> impl Fn(TcpStream, SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |stream, peer| {
        let (service, limits, stop) = (service.clone(), limits.clone(), stop.clone());
        Box::pin(async move { connection(stream, peer, service, &limits, stop).await })
    }
}

async fn send<F: Serialize>(tx: &mpsc::Sender<Vec<u8>>, answer: F) -> Result<(), ()> {
    match frame::encode(&answer) {
        Ok(buf) => tx.send(buf).await.map_err(|_| ()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an answer");
            Err(())
        }
    }
}
