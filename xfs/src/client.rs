//! The async XFS client: a small pool of pipelined connections per store, request timeouts, and
//! reconnects spread by exponential backoff with full jitter (so a restarted store is not hit by
//! every client at the same instant).
//!
//! Fault points (see [`CallFaults`]): `xfs.call` / `xfs.call.<op>` fail a call before it is sent,
//! as if the store could not be reached (`CallError::Unavailable`); `xfs.reply` / `xfs.reply.<op>`
//! drop the store's reply, as if the connection broke after the store did the work
//! (`CallError::ConnectionLost`). Either may also delay the call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, FrameError};
use crate::proto::*;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who we are, sent in the hello.
    pub name: String,
    /// Connections kept to each store; requests are pipelined on each.
    pub conns_per_store: usize,
    pub connect_timeout: Duration,
    /// Default time a call waits for its reply; also sent to the store as the deadline.
    pub request_timeout: Duration,
    /// Reconnect delays: uniform in `[0, min(cap, max(base * 2^failures, time unreachable)))`
    /// (see [`reconnect_delay`]).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_frame: usize,
    /// The process's fault points, consulted on every call; `None`: no faults.
    pub faults: Option<CallFaults>,
}

/// Decides the fault of a named point: `None` when the point is not set, else a delay and whether
/// this call fails. Processes build it from their fault injection (`runtime::faults::Faults::decide`);
/// this crate stays a leaf.
#[derive(Clone)]
pub struct CallFaults(Arc<Decide>);

/// A point's name → `None` (not set) or its delay and whether this call fails.
type Decide = dyn Fn(&str) -> Option<(Duration, bool)> + Send + Sync;

impl CallFaults {
    pub fn new(decide: impl Fn(&str) -> Option<(Duration, bool)> + Send + Sync + 'static) -> Self {
        CallFaults(Arc::new(decide))
    }

    /// Apply `stage` (`xfs.call` or `xfs.reply`) and `stage.<op>`: sleep their delays, and say
    /// which of them failed, if any.
    async fn apply(&self, stage: &str, op: &str) -> Option<String> {
        let mut failed = None;
        for point in [stage.to_string(), format!("{stage}.{op}")] {
            if let Some((delay, fail)) = (self.0)(&point) {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if fail && failed.is_none() {
                    failed = Some(point);
                }
            }
        }
        failed
    }
}

impl std::fmt::Debug for CallFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallFaults")
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: "xfs-client".into(),
            conns_per_store: 2,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(5),
            max_frame: frame::MAX_FRAME_DEFAULT,
            faults: None,
        }
    }
}

/// Why a call did not produce a store's answer, or the store's error answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be had (refused, hello failed, or waiting out a reconnect backoff).
    #[error("store {addr} unavailable: {why}")]
    Unavailable { addr: String, why: String },
    /// The connection broke after the request was sent: the outcome is unknown.
    #[error("connection to {addr} lost with the request in flight")]
    ConnectionLost { addr: String },
    #[error("no reply from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("protocol error talking to {addr}: {why}")]
    Protocol { addr: String, why: String },
    /// The store answered with an error.
    #[error(transparent)]
    Remote(#[from] XfsError),
}

impl CallError {
    /// The store's own error, if it answered.
    pub fn remote(&self) -> Option<&XfsError> {
        match self {
            CallError::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed (always true for idempotent deliveries
    /// whose outcome is unknown).
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Remote(e) => e.is_transient(),
            CallError::Protocol { .. } => false,
            _ => true,
        }
    }
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

/// The wait before the next reconnect attempt, after `failures` failed attempts to a store
/// unreachable for `down_for`: full jitter over a window that doubles per failed attempt and is
/// never shorter than the outage so far, capped at `cap`. Attempts are made only when a caller
/// has a request, so a caller that calls rarely fails rarely; without the floor its window would
/// stay small through a long outage and it would come back at the first moment, with everyone
/// else, when the store returns.
pub fn reconnect_delay(
    base: Duration,
    cap: Duration,
    failures: u32,
    down_for: Duration,
) -> Duration {
    let window = base.saturating_mul(1u32 << failures.min(20)).max(down_for);
    full_jitter(window, cap, 0)
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Reply, XfsError>>>>;

/// One live, pipelined connection.
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
struct SlotState {
    conn: Option<Arc<Conn>>,
    failures: u32,
    retry_at: Option<Instant>,
    /// When the connection was lost (or the first attempt failed); `None` while connected.
    down_since: Option<Instant>,
}

/// The connections to one store.
pub struct StorePool {
    addr: String,
    cfg: Arc<ClientConfig>,
    slots: Vec<tokio::sync::Mutex<SlotState>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
}

impl StorePool {
    pub fn new(addr: impl Into<String>, cfg: Arc<ClientConfig>) -> Self {
        let n = cfg.conns_per_store.max(1);
        StorePool {
            addr: addr.into(),
            slots: (0..n).map(|_| Default::default()).collect(),
            cfg,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Call with the default timeout and no trace id.
    pub async fn call(&self, op: Op) -> Result<Reply, CallError> {
        self.call_with(op, "", self.cfg.request_timeout).await
    }

    /// Call, carrying `trace` into the store's logs and waiting at most `timeout`.
    pub async fn call_with(
        &self,
        op: Op,
        trace: &str,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let started = Instant::now();
        let op_name = op.name();
        if let Some(faults) = &self.cfg.faults {
            if let Some(point) = faults.apply("xfs.call", op_name).await {
                return Err(CallError::Unavailable {
                    addr: self.addr.clone(),
                    why: format!("injected fault at {point}"),
                });
            }
        }
        let conn = self.conn().await?;
        let left = timeout.saturating_sub(started.elapsed());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = ClientFrame::Request(Request {
            id,
            deadline_ms: left.as_millis().min(u32::MAX as u128) as u32,
            trace: trace.to_string(),
            op,
        });
        let buf = frame::encode(&req).map_err(|e| self.protocol(e))?;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        // The connection task marks itself dead before draining `pending`: checking after the
        // insert means we either get drained or see the mark.
        if conn.is_dead() || conn.frames.send(buf).await.is_err() {
            lock(&conn.pending).remove(&id);
            return Err(CallError::ConnectionLost {
                addr: self.addr.clone(),
            });
        }
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(result)) => {
                if let Some(faults) = &self.cfg.faults {
                    if faults.apply("xfs.reply", op_name).await.is_some() {
                        return Err(CallError::ConnectionLost {
                            addr: self.addr.clone(),
                        });
                    }
                }
                result.map_err(CallError::Remote)
            }
            Ok(Err(_)) => Err(CallError::ConnectionLost {
                addr: self.addr.clone(),
            }),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(CallError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    fn protocol(&self, e: impl std::fmt::Display) -> CallError {
        CallError::Protocol {
            addr: self.addr.clone(),
            why: e.to_string(),
        }
    }

    /// A live connection: an open one, or a new one from a slot whose backoff has run out.
    async fn conn(&self) -> Result<Arc<Conn>, CallError> {
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let mut st = self.slots[(start + i) % n].lock().await;
            if let Some(c) = &st.conn {
                if !c.is_dead() {
                    return Ok(c.clone());
                }
                // Lost: wait a jittered while before coming back, like everyone else.
                st.conn = None;
                st.down_since = Some(Instant::now());
                st.retry_at = Some(Instant::now() + self.delay(&st));
                st.failures += 1;
            }
            if let Some(at) = st.retry_at {
                let now = Instant::now();
                if now < at {
                    last_err = Some(format!("reconnecting in {:?}", at - now));
                    continue;
                }
            }
            match tokio::time::timeout(self.cfg.connect_timeout, self.connect()).await {
                Ok(Ok(c)) => {
                    st.failures = 0;
                    st.retry_at = None;
                    st.down_since = None;
                    st.conn = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(why)) => last_err = Some(why),
                Err(_) => last_err = Some("connect timed out".into()),
            }
            st.down_since.get_or_insert_with(Instant::now);
            st.retry_at = Some(Instant::now() + self.delay(&st));
            st.failures += 1;
        }
        Err(CallError::Unavailable {
            addr: self.addr.clone(),
            why: last_err.unwrap_or_else(|| "no connection".into()),
        })
    }

    fn delay(&self, st: &SlotState) -> Duration {
        let down_for = st.down_since.map(|t| t.elapsed()).unwrap_or_default();
        reconnect_delay(
            self.cfg.backoff_base,
            self.cfg.backoff_cap,
            st.failures,
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
                return Err(format!("store speaks protocol version {}", h.version))
            }
            Ok(Some(ServerFrame::Refused { reason })) => return Err(format!("refused: {reason}")),
            Ok(Some(ServerFrame::Response(_))) => return Err("response before hello".into()),
            Ok(None) => return Err("closed during hello".into()),
            Err(e) => return Err(format!("hello: {e}")),
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
        let conn = Arc::new(Conn {
            frames: tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            dead: Arc::new(AtomicBool::new(false)),
        });
        let pending = conn.pending.clone();
        let dead = conn.dead.clone();
        let addr = self.addr.clone();
        let max = self.cfg.max_frame;
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = write_loop(wr, rx) => r,
                r = read_loop(&mut rd, max, &pending) => r,
            };
            if let Err(e) = outcome {
                tracing::debug!(store = %addr, error = %e, "xfs connection closed");
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
    loop {
        match frame::read_msg::<_, ServerFrame>(rd, max).await? {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-updated; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pools for many stores, keyed by address.
pub struct Client {
    cfg: Arc<ClientConfig>,
    pools: Mutex<HashMap<String, Arc<StorePool>>>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        Client {
            cfg: Arc::new(cfg),
            pools: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The pool for a store, made on first use.
    pub fn pool(&self, addr: &str) -> Arc<StorePool> {
        lock(&self.pools)
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(StorePool::new(addr, self.cfg.clone())))
            .clone()
    }

    pub async fn call(&self, addr: &str, op: Op) -> Result<Reply, CallError> {
        self.pool(addr).call(op).await
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

    #[tokio::test(start_paused = true)]
    async fn call_fault_points_delay_then_fail_before_sending() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let faults = CallFaults::new(move |point| {
            lock(&log).push(point.to_string());
            match point {
                "xfs.call" => Some((Duration::from_millis(50), false)),
                "xfs.call.ping" => Some((Duration::ZERO, true)),
                _ => None,
            }
        });
        let cfg = ClientConfig {
            faults: Some(faults),
            ..Default::default()
        };
        // Nothing listens there: the injected failure comes before any connection attempt.
        let pool = StorePool::new("127.0.0.1:9", Arc::new(cfg));
        let started = tokio::time::Instant::now();
        match pool.call(Op::Ping).await {
            Err(CallError::Unavailable { why, .. }) => {
                assert_eq!(why, "injected fault at xfs.call.ping")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(*lock(&seen), vec!["xfs.call", "xfs.call.ping"]);
    }

    #[tokio::test]
    async fn unreachable_store_is_unavailable_then_backs_off() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let cfg = ClientConfig {
            conns_per_store: 1,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            ..Default::default()
        };
        let pool = StorePool::new(addr, Arc::new(cfg));
        let first = pool.call(Op::Ping).await.unwrap_err();
        assert!(matches!(first, CallError::Unavailable { .. }), "{first}");
        // Within the backoff window the pool does not even try to connect.
        let second = pool.call(Op::Ping).await.unwrap_err();
        match second {
            CallError::Unavailable { why, .. } => assert!(
                why.starts_with("reconnecting in") || why.contains("connect"),
                "{why}"
            ),
            other => panic!("{other}"),
        }
    }
}
