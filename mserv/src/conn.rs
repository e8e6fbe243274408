//! A few pipelined connections to one replica, shared by the client, by followers forwarding
//! writes and by Raft's messages to peers. A lost connection fails its calls in flight; the
//! next call reconnects after a delay drawn with full jitter over a window that grows with the
//! outage (`xfs::client::reconnect_delay`), so a restarted replica is not hit by every caller at
//! once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use xfs::client::reconnect_delay;
use xfs::frame::{self, FrameError};

use crate::proto::{
    ClientFrame, ClientHello, MservError, Op, Reply, Request, ServerFrame, PROTOCOL_VERSION,
};

/// How connections to a replica are made and kept.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Who we are, sent in the hello.
    pub name: String,
    /// Connections kept to the replica; requests are pipelined on each.
    pub conns: usize,
    pub connect_timeout: Duration,
    /// Reconnect delays: uniform in `[0, min(cap, max(base * 2^failures, time unreachable)))`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_frame: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            name: "mserv-client".into(),
            conns: 2,
            connect_timeout: Duration::from_secs(1),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_secs(1),
            max_frame: xfs::MAX_FRAME_DEFAULT,
        }
    }
}

/// Why a call got no answer from the replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// No connection could be had: the request was not sent.
    #[error("{addr}: not sent: {why}")]
    NotSent { addr: String, why: String },
    /// The connection broke with the request in flight: the outcome is unknown.
    #[error("{addr}: connection lost with the request in flight")]
    Lost { addr: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: protocol error: {why}")]
    Protocol { addr: String, why: String },
}

impl ConnError {
    /// The caller-facing error: whether the request may have been applied decides between
    /// `Unavailable` (it was not) and `OutcomeUnknown`.
    pub fn into_mserv(self) -> MservError {
        match self {
            ConnError::NotSent { .. } => MservError::Unavailable {
                why: self.to_string(),
            },
            ConnError::Lost { .. } | ConnError::Timeout { .. } => MservError::OutcomeUnknown {
                why: self.to_string(),
            },
            ConnError::Protocol { .. } => MservError::Protocol {
                why: self.to_string(),
            },
        }
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Reply, MservError>>>>;

struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Arc<Pending>,
    dead: Arc<AtomicBool>,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    /// When the replica was lost (or first failed to answer); `None` while connected.
    down_since: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    /// The open connection, read on every call without waiting.
    live: Mutex<Option<Arc<Conn>>>,
    /// Held while connecting, so one caller connects and the others wait for it.
    connecting: tokio::sync::Mutex<Backoff>,
}

/// The connections to one replica.
pub struct Endpoint {
    addr: String,
    cfg: Arc<ConnConfig>,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or option update: consistent even after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Endpoint {
    pub fn new(addr: impl Into<String>, cfg: Arc<ConnConfig>) -> Endpoint {
        let n = cfg.conns.max(1);
        Endpoint {
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

    /// Send `op` and wait at most `timeout` for the replica's answer.
    pub async fn call(
        &self,
        op: Op,
        timeout: Duration,
    ) -> Result<Result<Reply, MservError>, ConnError> {
        let started = Instant::now();
        let conn = match tokio::time::timeout(timeout, self.conn()).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(ConnError::NotSent {
                    addr: self.addr.clone(),
                    why: "no connection within the deadline".into(),
                })
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = ClientFrame::Request(Request {
            id,
            deadline_ms: left.as_millis().min(u32::MAX as u128) as u32,
            op,
        });
        let buf = frame::encode(&req).map_err(|e| ConnError::Protocol {
            addr: self.addr.clone(),
            why: e.to_string(),
        })?;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        // The connection task marks itself dead before draining `pending`: checking after the
        // insert means we are either drained or see the mark.
        if conn.is_dead() || conn.frames.send(buf).await.is_err() {
            lock(&conn.pending).remove(&id);
            return Err(ConnError::NotSent {
                addr: self.addr.clone(),
                why: "connection closed".into(),
            });
        }
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(ConnError::Lost {
                addr: self.addr.clone(),
            }),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(ConnError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    /// A live connection from the next slot: its open one, or a new one once its backoff allows.
    async fn conn(&self) -> Result<Arc<Conn>, ConnError> {
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
                        // Lost: wait a jittered while before coming back, like everyone else.
                        *live = None;
                        backoff.down_since = Some(Instant::now());
                        backoff.retry_at = Some(Instant::now() + self.delay(&backoff));
                        backoff.failures += 1;
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
                    backoff.failures = 0;
                    backoff.retry_at = None;
                    backoff.down_since = None;
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

    /// Full jitter over a window that doubles per failure and is at least as long as the replica
    /// has been unreachable (`xfs::client::reconnect_delay`), so callers that call rarely spread
    /// out after a restart as widely as busy ones.
    fn delay(&self, backoff: &Backoff) -> Duration {
        let down_for = backoff.down_since.map(|t| t.elapsed()).unwrap_or_default();
        reconnect_delay(
            self.cfg.backoff_base,
            self.cfg.backoff_cap,
            backoff.failures,
            down_for,
        )
    }

    async fn connect(&self) -> Result<Arc<Conn>, String> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        let (mut rd, wr) = stream.into_split();
        let mut wr = BufWriter::new(wr);
        let hello = ClientFrame::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            client: self.cfg.name.clone(),
        });
        frame::write_msg(&mut wr, &hello)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        wr.flush().await.map_err(|e| format!("hello: {e}"))?;
        match frame::read_msg::<_, ServerFrame>(&mut rd, self.cfg.max_frame).await {
            Ok(Some(ServerFrame::Hello(h))) if h.version == PROTOCOL_VERSION => {}
            Ok(Some(ServerFrame::Hello(h))) => {
                return Err(format!("replica speaks protocol version {}", h.version))
            }
            Ok(Some(ServerFrame::Refused { reason })) => return Err(format!("refused: {reason}")),
            Ok(Some(ServerFrame::Response(_))) => return Err("response before hello".into()),
            Ok(None) => return Err("closed during hello".into()),
            Err(e) => return Err(format!("hello: {e}")),
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let conn = Arc::new(Conn {
            frames: tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            dead: Arc::new(AtomicBool::new(false)),
        });
        let (pending, dead) = (conn.pending.clone(), conn.dead.clone());
        let (addr, max) = (self.addr.clone(), self.cfg.max_frame);
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = write_loop(wr, rx) => r,
                r = read_loop(&mut rd, max, &pending) => r,
            };
            if let Err(e) = outcome {
                tracing::debug!(replica = %addr, error = %e, "mserv connection closed");
            }
            dead.store(true, Ordering::SeqCst);
            // Dropping the senders tells every waiting caller the connection is gone.
            lock(&pending).clear();
        });
        Ok(conn)
    }
}

async fn write_loop(
    mut wr: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Result<(), FrameError> {
    while let Some(buf) = rx.recv().await {
        wr.write_all(&buf).await?;
        // Pipelining: write what is queued, flush once.
        while let Ok(more) = rx.try_recv() {
            wr.write_all(&more).await?;
        }
        wr.flush().await?;
    }
    Ok(())
}

async fn read_loop(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    max: usize,
    pending: &Pending,
) -> Result<(), FrameError> {
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    loop {
        match frame::read_msg::<_, ServerFrame>(&mut rd, max).await? {
            None => return Ok(()),
            Some(ServerFrame::Response(resp)) => {
                if let Some(tx) = lock(pending).remove(&resp.id) {
                    let _ = tx.send(resp.result);
                }
            }
            Some(other) => {
                return Err(FrameError::Decode(format!(
                    "unexpected frame after hello: {other:?}"
                )))
            }
        }
    }
}

/// Endpoints by address, made on first use and shared.
#[derive(Default)]
pub struct Endpoints {
    cfg: Arc<ConnConfig>,
    map: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl Endpoints {
    pub fn new(cfg: ConnConfig) -> Endpoints {
        Endpoints {
            cfg: Arc::new(cfg),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, addr: &str) -> Arc<Endpoint> {
        lock(&self.map)
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Endpoint::new(addr, self.cfg.clone())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_replica_is_not_sent_to_then_backs_off() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let cfg = ConnConfig {
            conns: 1,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            ..Default::default()
        };
        let ep = Endpoint::new(addr, Arc::new(cfg));
        let first = ep.call(Op::Ping, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(first, ConnError::NotSent { .. }), "{first}");
        let second = ep.call(Op::Ping, Duration::from_secs(2)).await.unwrap_err();
        match second {
            ConnError::NotSent { why, .. } => assert!(
                why.starts_with("reconnecting in") || why.contains("connect"),
                "{why}"
            ),
            other => panic!("{other}"),
        }
        assert!(matches!(first.into_mserv(), MservError::Unavailable { .. }));
    }
}
