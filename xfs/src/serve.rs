//! The server side of the one connection layer: one connection's life for any framed protocol
//! (a store's XFS, the index's): the hello with its version within a time limit, then pipelined
//! requests read while earlier ones run, each answered as it completes, a bound on requests in
//! flight per connection, an idle timeout, and on shutdown a drain of what is in flight.
//!
//! Over TLS the handshake comes first, and the client's certificate decides its role; the hello's
//! claimed role and instance must be the certificate's. Each request is then checked against the
//! protocol's table of what each role may ask ([`Protocol::permitted`]): anything else is
//! answered `Forbidden` here, once for every protocol, and reported to [`Service::forbidden`].
//!
//! A bad frame (checksum, length, undecodable, a request before the hello, a second hello) or
//! a failed handshake closes the connection and is reported to [`Service::frame_error`] for the
//! role's metrics.
//! The accept loop around it (connection limit, per-connection metrics) is `runtime::server`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::envelope::{
    version_refusal, ClientFrame, ClientFrameOf, Protocol, Request, Response, ServerFrame,
    ServerFrameOf,
};
use crate::frame;
use crate::tls::{self, Caller, Transport};

/// A server's side of a protocol and what it does with requests.
pub trait Service: Send + Sync + 'static {
    type Protocol: Protocol;

    /// The answer to a client's hello at the protocol's version: `Ok(hello)` to go on,
    /// `Err(reason)` to refuse it and close. (A client of another version, or whose hello does
    /// not match its certificate, is refused before this is asked.)
    fn hello(&self, caller: &Caller) -> Result<<Self::Protocol as Protocol>::ServerHello, String>;
    /// Whether a request is answered in arrival order without a task of its own (cheap, local
    /// reads such as the index's lookups).
    fn inline(&self, _req: &RequestOf<Self>) -> bool {
        false
    }
    /// Do one request its caller's role may ask for; its answer (sent back with the request's
    /// id).
    fn handle(
        self: Arc<Self>,
        caller: Arc<Caller>,
        req: RequestOf<Self>,
    ) -> impl Future<Output = <Self::Protocol as Protocol>::Answer> + Send;
    /// A frame error closed a connection (`kind`: [`FrameError::kind`], or `no_hello`,
    /// `second_hello`, `version`, `tls`, `identity`).
    fn frame_error(&self, peer: SocketAddr, kind: &'static str, error: &str);
    /// A request was answered `Forbidden`: its caller's role may not ask for `op`.
    fn forbidden(&self, caller: &Caller, op: &'static str);
}

/// A request of a service's protocol.
pub type RequestOf<S> = Request<<<S as Service>::Protocol as Protocol>::Op>;

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
    transport: &Transport,
    limits: &ConnLimits,
    stop: CancellationToken,
) {
    stream.set_nodelay(true).ok();
    // The handshake proves the caller's role (its certificate); the hello names its instance.
    let (rd, wr, proven) = match transport {
        Transport::Tls(tls) => match tls.accept(stream).await {
            Ok((s, role, cert)) => {
                let (r, w) = tls::split_tls(s);
                (r, w, Some((role, cert)))
            }
            Err(e) => return service.frame_error(peer, "tls", &e),
        },
        Transport::Plaintext => {
            let (r, w) = tls::split_tcp(stream);
            (r, w, None)
        }
    };
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut wr = BufWriter::new(wr);
    let first = tokio::time::timeout(
        limits.hello_timeout,
        frame::read_msg::<_, ClientFrameOf<S::Protocol>>(&mut rd, limits.max_frame),
    )
    .await;
    let hello = match first {
        Ok(Ok(Some(ClientFrame::Hello(h)))) => h,
        Ok(Ok(Some(ClientFrame::Request(_)))) => {
            return service.frame_error(peer, "no_hello", "request before hello")
        }
        Ok(Err(e)) => return service.frame_error(peer, e.kind(), &e.to_string()),
        Ok(Ok(None)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no hello in time, closing");
            return;
        }
    };
    let caller = Arc::new(Caller {
        addr: peer,
        role: hello.role,
        name: hello.name,
        proven: proven.is_some(),
    });
    let answer = if hello.version != S::Protocol::VERSION {
        let version = hello.version;
        service.frame_error(peer, "version", &format!("client speaks version {version}"));
        Err(version_refusal::<S::Protocol>(version))
    } else if let Some(why) = proven.and_then(|(role, cert)| mismatch(&caller, role, &cert)) {
        service.frame_error(peer, "identity", &why);
        Err(why)
    } else {
        service.hello(&caller)
    };
    let go_on = answer.is_ok();
    let reply: ServerFrameOf<S::Protocol> = match answer {
        Ok(h) => ServerFrame::Hello(h),
        Err(reason) => ServerFrame::Refused { reason },
    };
    if frame::write_msg(&mut wr, &reply).await.is_err() || wr.flush().await.is_err() || !go_on {
        return;
    }
    tracing::debug!(%peer, role = %caller.role, name = %caller.name, "connection open");

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
        let read = frame::read_msg::<_, ClientFrameOf<S::Protocol>>(&mut rd, limits.max_frame);
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            r = read => r,
            _ = tokio::time::sleep(limits.idle_timeout), if idle => {
                tracing::debug!(%peer, "idle connection closed");
                break;
            }
        };
        let req = match msg {
            Ok(Some(ClientFrame::Request(r))) => r,
            Ok(Some(ClientFrame::Hello(_))) => {
                service.frame_error(peer, "second_hello", "second hello");
                break;
            }
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
        let id = req.id;
        if !S::Protocol::permitted(caller.role, &req.op) {
            service.forbidden(&caller, S::Protocol::op_name(&req.op));
            let result = S::Protocol::forbidden(caller.role, &req.op);
            drop(slot);
            if send::<S::Protocol>(&tx, Response { id, result })
                .await
                .is_err()
            {
                break;
            }
        } else if service.inline(&req) {
            let result = service.clone().handle(caller.clone(), req).await;
            drop(slot);
            if send::<S::Protocol>(&tx, Response { id, result })
                .await
                .is_err()
            {
                break;
            }
        } else {
            let (service, tx, caller) = (service.clone(), tx.clone(), caller.clone());
            tokio::spawn(async move {
                let result = service.handle(caller, req).await;
                let _ = send::<S::Protocol>(&tx, Response { id, result }).await;
                drop(slot);
            });
        }
    }
    // The writer ends once every request in flight has sent its answer.
    drop(tx);
    let _ = writer.await;
}

/// Why a TLS caller's hello does not match its certificate, if it does not.
fn mismatch(
    caller: &Caller,
    role: crate::tls::Role,
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Option<String> {
    if caller.role != role {
        return Some(format!(
            "the hello claims the role {}, the certificate is a {role}'s",
            caller.role
        ));
    }
    (!tls::names_instance(cert, role, &caller.name)).then(|| {
        format!(
            "the certificate does not name the instance {:?} of {role}",
            caller.name
        )
    })
}

/// What an accept loop (`runtime::server::serve`) calls per connection: [`connection`] with
/// this service, transport, these limits and this stop signal.
pub fn handler<S: Service>(
    service: Arc<S>,
    transport: Transport,
    limits: ConnLimits,
    stop: CancellationToken,
) -> impl Fn(TcpStream, SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |stream, peer| {
        let (service, limits, stop) = (service.clone(), limits.clone(), stop.clone());
        let transport = transport.clone();
        Box::pin(async move { connection(stream, peer, service, &transport, &limits, stop).await })
    }
}

async fn send<P: Protocol>(
    tx: &mpsc::Sender<Vec<u8>>,
    response: Response<P::Answer>,
) -> Result<(), ()> {
    let answer: ServerFrameOf<P> = ServerFrame::Response(response);
    match frame::encode(&answer) {
        Ok(buf) => tx.send(buf).await.map_err(|_| ()),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an answer");
            Err(())
        }
    }
}
