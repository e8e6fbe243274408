//! The one pooled, pipelined connection layer, generic over the protocol: the stores' XFS and the
//! member index speak it alike (hello with a version, then requests with ids answered by id).
//!
//! A [`Pool`] keeps a few connections to one address. A lost connection fails the calls whose
//! requests were written (`Lost`: the outcome is unknown); a request still queued when the
//! connection died was never written, and goes out on a fresh connection at once. A connection
//! found dead when a call wants it is replaced at once too: only a failed connect attempt starts
//! the backoff, drawn with full jitter over a window that grows with the outage
//! ([`reconnect_delay`]), so a restarted server is not hit by every caller at the same instant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, FrameError};
use crate::tls::{self, Identity, Role, Transport};

pub use crate::envelope::Protocol;
use crate::envelope::{
    ClientFrame, ClientFrameOf, ClientHello, Request, ServerFrame, ServerFrameOf, SessionToken,
};

/// How connections are made and kept.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Who we are: our role and instance, sent in the hello (over TLS, the ones our
    /// certificate names), and TLS (the server must prove the protocol's role) or plaintext.
    pub identity: Identity,
    /// Connections kept to each address; requests are pipelined on each.
    pub conns: usize,
    pub connect_timeout: Duration,
    /// Reconnect delays: uniform in `[0, min(cap, max(base * 2^failures, time unreachable)))`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_frame: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            identity: Identity::plaintext(Role::Operator, "xfs-client"),
            conns: 2,
            connect_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(5),
            max_frame: frame::MAX_FRAME_DEFAULT,
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// No connection could be had: the request was not sent.
    #[error("{addr}: not sent: {why}")]
    NotSent { addr: String, why: String },
    /// The connection broke after the request was written: the outcome is unknown.
    #[error("{addr}: connection lost with the request in flight")]
    Lost { addr: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: protocol error: {why}")]
    Protocol { addr: String, why: String },
}

/// A delay uniform in `[0, min(cap, base * 2^attempt))`: exponential backoff with full jitter.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..nanos))
}

/// The wait before the next reconnect attempt, after `failures` failed attempts to a server
/// unreachable for `down_for`: full jitter over a window that doubles per failed attempt and is
/// never shorter than the outage so far, capped at `cap`. Attempts are made only when a caller
/// has a request, so a caller that calls rarely fails rarely; without the floor its window would
/// stay small through a long outage and it would come back at the first moment, with everyone
/// else, when the server returns.
pub fn reconnect_delay(
    base: Duration,
    cap: Duration,
    failures: u32,
    down_for: Duration,
) -> Duration {
    let window = base.saturating_mul(1u32 << failures.min(20)).max(down_for);
    full_jitter(window, cap, 0)
}

/// What a waiting caller hears from its connection.
enum Outcome<A> {
    Answer(A),
    /// The connection died with the request still queued: it was never written.
    NotWritten,
}

type Pending<A> = Mutex<HashMap<u64, oneshot::Sender<Outcome<A>>>>;

/// One live, pipelined connection.
struct Conn<A> {
    frames: mpsc::Sender<(u64, Bytes)>,
    pending: Arc<Pending<A>>,
    dead: Arc<AtomicBool>,
}

impl<A> Conn<A> {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    /// When the server was lost (or first failed to answer); `None` while connected.
    down_since: Option<Instant>,
}

struct Slot<A> {
    /// The open connection, read on every call without waiting.
    live: Mutex<Option<Arc<Conn<A>>>>,
    /// Held while connecting, so one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<Backoff>,
}

impl<A> Default for Slot<A> {
    fn default() -> Self {
        Slot {
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Backoff::default()),
        }
    }
}

/// The connections to one address.
pub struct Pool<P: Protocol> {
    addr: String,
    cfg: Arc<PoolConfig>,
    slots: Vec<Slot<P::Answer>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
}

/// How many times a request that was never written is sent on a fresh connection.
const NOT_WRITTEN_RETRIES: usize = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or option update: consistent even after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: Protocol> Pool<P> {
    pub fn new(addr: impl Into<String>, cfg: Arc<PoolConfig>) -> Self {
        let n = cfg.conns.max(1);
        Pool {
            addr: addr.into(),
            slots: (0..n).map(|_| Slot::default()).collect(),
            cfg,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Send `op` (carrying `trace` for the server's logs, and the session of the user the call
    /// acts for, if any) and wait at most `timeout` for the answer.
    pub async fn call(
        &self,
        op: P::Op,
        trace: &str,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<P::Answer, ConnError> {
        let started = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Encoded once; the deadline is re-stamped only if it must go out again.
        let mut op = Some(op);
        let mut buf = None;
        for attempt in 0..=NOT_WRITTEN_RETRIES {
            let conn =
                match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), self.conn())
                    .await
                {
                    Ok(c) => c?,
                    Err(_) => {
                        return Err(ConnError::NotSent {
                            addr: self.addr.clone(),
                            why: "no connection within the deadline".into(),
                        })
                    }
                };
            let left = timeout.saturating_sub(started.elapsed());
            if buf.is_none() {
                let deadline_ms = left.as_millis().min(u32::MAX as u128) as u32;
                let frame: ClientFrameOf<P> = ClientFrame::Request(Request {
                    id,
                    deadline_ms,
                    trace: trace.to_string(),
                    session: session.map(|s| SessionToken(s.to_string())),
                    op: op.take().expect("op encoded once"),
                });
                buf = Some(Bytes::from(
                    frame::encode(&frame).map_err(|e| self.protocol(e))?,
                ));
            }
            let (tx, rx) = oneshot::channel();
            lock(&conn.pending).insert(id, tx);
            let bytes = buf.clone().unwrap_or_default();
            if conn.frames.send((id, bytes)).await.is_err() {
                // Closed before it took our frame: never written. Try a fresh connection.
                lock(&conn.pending).remove(&id);
                continue;
            }
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(Outcome::Answer(a))) => return Ok(a),
                Ok(Ok(Outcome::NotWritten)) if attempt < NOT_WRITTEN_RETRIES => continue,
                Ok(Ok(Outcome::NotWritten)) => {
                    return Err(ConnError::NotSent {
                        addr: self.addr.clone(),
                        why: "connection closed before the request was written".into(),
                    })
                }
                Ok(Err(_)) => {
                    return Err(ConnError::Lost {
                        addr: self.addr.clone(),
                    })
                }
                Err(_) => {
                    lock(&conn.pending).remove(&id);
                    return Err(ConnError::Timeout {
                        addr: self.addr.clone(),
                        timeout,
                    });
                }
            }
        }
        Err(ConnError::NotSent {
            addr: self.addr.clone(),
            why: "connection closed before the request was written".into(),
        })
    }

    fn protocol(&self, e: impl std::fmt::Display) -> ConnError {
        ConnError::Protocol {
            addr: self.addr.clone(),
            why: e.to_string(),
        }
    }

    /// A live connection from the next slot: its open one, a new one at once if that one was
    /// found dead, or a new one once a failed attempt's backoff has run out.
    async fn conn(&self) -> Result<Arc<Conn<P::Answer>>, ConnError> {
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut last_err = String::new();
        for i in 0..n {
            let slot = &self.slots[(start + i) % n];
            if let Some(c) = lock(&slot.live).as_ref() {
                if !c.is_dead() {
                    return Ok(c.clone());
                }
            }
            let mut backoff = slot.connecting.lock().await;
            // Someone else may have connected while we waited.
            {
                let mut live = lock(&slot.live);
                match live.as_ref() {
                    Some(c) if !c.is_dead() => return Ok(c.clone()),
                    Some(_) => {
                        // Found dead (the server restarted, or the link broke while idle):
                        // nothing failed yet, so one attempt goes out now.
                        *live = None;
                        backoff.down_since = Some(Instant::now());
                        backoff.retry_at = None;
                    }
                    None => {}
                }
            }
            if let Some(at) = backoff.retry_at {
                let now = Instant::now();
                if now < at {
                    last_err = format!("reconnecting in {:?}", at - now);
                    continue;
                }
            }
            match tokio::time::timeout(self.cfg.connect_timeout, self.connect()).await {
                Ok(Ok(c)) => {
                    *backoff = Backoff::default();
                    *lock(&slot.live) = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(why)) => last_err = why,
                Err(_) => last_err = "connect timed out".into(),
            }
            backoff.down_since.get_or_insert_with(Instant::now);
            backoff.retry_at = Some(Instant::now() + self.delay(&backoff));
            backoff.failures += 1;
        }
        Err(ConnError::NotSent {
            addr: self.addr.clone(),
            why: last_err,
        })
    }

    fn delay(&self, backoff: &Backoff) -> Duration {
        let down_for = backoff.down_since.map(|t| t.elapsed()).unwrap_or_default();
        reconnect_delay(
            self.cfg.backoff_base,
            self.cfg.backoff_cap,
            backoff.failures,
            down_for,
        )
    }

    async fn connect(&self) -> Result<Arc<Conn<P::Answer>>, String> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let (mut rd, wr) = match &self.cfg.identity.transport {
            Transport::Tls(t) => tls::split_tls(t.connect(stream, P::SERVER_ROLE).await?),
            Transport::Plaintext => tls::split_tcp(stream),
        };
        let mut wr = BufWriter::new(wr);
        let hello: ClientFrameOf<P> = ClientFrame::Hello(ClientHello {
            version: P::VERSION,
            role: self.cfg.identity.role,
            name: self.cfg.identity.name.clone(),
        });
        frame::write_msg(&mut wr, &hello)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        wr.flush().await.map_err(|e| format!("hello: {e}"))?;
        match frame::read_msg::<_, ServerFrameOf<P>>(&mut rd, self.cfg.max_frame).await {
            Ok(Some(first)) => crate::envelope::accept_hello::<P>(first)?,
            Ok(None) => return Err("closed during hello".into()),
            Err(e) => return Err(format!("hello: {e}")),
        }
        let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(1024);
        let conn = Arc::new(Conn {
            frames: tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            dead: Arc::new(AtomicBool::new(false)),
        });
        let (pending, dead) = (conn.pending.clone(), conn.dead.clone());
        let (addr, max) = (self.addr.clone(), self.cfg.max_frame);
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = write_loop(wr, &mut rx) => r,
                r = read_loop::<P>(&mut rd, max, &pending) => r,
            };
            if let Err(e) = outcome {
                tracing::debug!(peer = P::PEER, addr = %addr, error = %e, "connection closed");
            }
            dead.store(true, Ordering::SeqCst);
            // No frame gets in after this; the ones still queued were never written.
            rx.close();
            while let Ok((id, _)) = rx.try_recv() {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(Outcome::NotWritten);
                }
            }
            // Dropping the rest tells their callers the outcome is unknown.
            lock(&pending).clear();
        });
        Ok(conn)
    }
}

async fn write_loop(
    mut wr: BufWriter<tls::Writer>,
    rx: &mut mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), FrameError> {
    while let Some((_, buf)) = rx.recv().await {
        wr.write_all(&buf).await?;
        // Pipelining: write what is queued, flush once.
        while let Ok((_, more)) = rx.try_recv() {
            wr.write_all(&more).await?;
        }
        wr.flush().await?;
    }
    Ok(())
}

async fn read_loop<P: Protocol>(
    rd: &mut tls::Reader,
    max: usize,
    pending: &Pending<P::Answer>,
) -> Result<(), FrameError> {
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    loop {
        let Some(frame) = frame::read_msg::<_, ServerFrameOf<P>>(&mut rd, max).await? else {
            return Ok(());
        };
        match frame {
            ServerFrame::Response(r) => {
                if let Some(tx) = lock(pending).remove(&r.id) {
                    let _ = tx.send(Outcome::Answer(r.result));
                }
            }
            other => {
                return Err(FrameError::Decode(format!(
                    "unexpected frame after hello: {other:?}"
                )))
            }
        }
    }
}

/// Pools by address, made on first use and shared.
pub struct Pools<P: Protocol> {
    cfg: Arc<PoolConfig>,
    map: Mutex<HashMap<String, Arc<Pool<P>>>>,
}

impl<P: Protocol> Pools<P> {
    pub fn new(cfg: PoolConfig) -> Self {
        Pools {
            cfg: Arc::new(cfg),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn get(&self, addr: &str) -> Arc<Pool<P>> {
        lock(&self.map)
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Pool::new(addr, self.cfg.clone())))
            .clone()
    }
}

impl<P: Protocol> Default for Pools<P> {
    fn default() -> Self {
        Pools::new(PoolConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_ceiling() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(300);
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(cap);
            for _ in 0..50 {
                assert!(full_jitter(base, cap, attempt) < ceiling.max(Duration::from_nanos(1)));
            }
        }
    }

    #[test]
    fn jitter_spreads() {
        let d: Vec<_> = (0..100)
            .map(|_| full_jitter(Duration::from_secs(1), Duration::from_secs(1), 0))
            .collect();
        let low = d
            .iter()
            .filter(|x| **x < Duration::from_millis(500))
            .count();
        assert!(low > 10 && low < 90, "{low} of 100 below the middle");
    }

    #[test]
    fn reconnect_window_is_at_least_the_outage() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(5);
        let down = Duration::from_secs(2);
        let d: Vec<_> = (0..200)
            .map(|_| reconnect_delay(base, cap, 1, down))
            .collect();
        assert!(d.iter().all(|x| *x < down));
        // Spread over the whole outage, not bunched under base * 2.
        let late = d.iter().filter(|x| **x > Duration::from_secs(1)).count();
        assert!(late > 50 && late < 150, "{late} of 200 in the second half");
        // The cap still holds, and a short outage keeps the exponential window.
        assert!((0..50).all(|_| reconnect_delay(base, cap, 0, Duration::from_secs(60)) < cap));
        assert!((0..50).all(|_| reconnect_delay(base, cap, 2, Duration::ZERO) < base * 4));
    }
}
