//! The async XFS client: a small pool of pipelined connections per store, request timeouts, and
//! reconnects spread by exponential backoff with full jitter (so a restarted store is not hit by
//! every client at the same instant).
//!
//! Fault points (see [`CallFaults`]): `xfs.call` / `xfs.call.<op>` fail a call before it is sent,
//! as if the store could not be reached (`CallError::Unavailable`); `xfs.reply` / `xfs.reply.<op>`
//! drop the store's reply, as if the connection broke after the store did the work
//! (`CallError::ConnectionLost`). Either may also delay the call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::{ConnError, Pool, PoolConfig, Protocol};
use crate::frame;
use crate::proto::*;
use crate::tls::{Identity, Role};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who we are (role, instance, TLS).
    pub identity: Identity,
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
            identity: Identity::plaintext(Role::Operator, "xfs-client"),
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

pub use crate::conn::{full_jitter, reconnect_delay};

/// XFS as the connection layer sees it.
pub struct Xfs;

impl Protocol for Xfs {
    type Op = Op;
    type Answer = Result<Reply, XfsError>;
    type ServerHello = ServerHello;
    const VERSION: u32 = PROTOCOL_VERSION;
    const PEER: &'static str = "store";
    const SERVER_ROLE: Role = Role::Ustore;

    fn version_of(hello: &ServerHello) -> u32 {
        hello.version
    }

    fn op_name(op: &Op) -> &'static str {
        op.name()
    }

    fn permitted(role: Role, op: &Op) -> bool {
        crate::access::permitted(role, op)
    }

    fn forbidden(role: Role, op: &Op) -> Result<Reply, XfsError> {
        Err(XfsError::Forbidden {
            op: op.name().to_string(),
            role: role.to_string(),
        })
    }
}

impl From<ConnError> for CallError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::NotSent { addr, why } => CallError::Unavailable { addr, why },
            ConnError::Lost { addr } => CallError::ConnectionLost { addr },
            ConnError::Timeout { addr, timeout } => CallError::Timeout { addr, timeout },
            ConnError::Protocol { addr, why } => CallError::Protocol { addr, why },
        }
    }
}

/// The connections to one store, with the caller's fault points and default timeout.
pub struct StorePool {
    pool: Pool<Xfs>,
    cfg: Arc<ClientConfig>,
}

impl StorePool {
    pub fn new(addr: impl Into<String>, cfg: Arc<ClientConfig>) -> Self {
        StorePool {
            pool: Pool::new(addr, Arc::new(cfg.pool_config())),
            cfg,
        }
    }

    pub fn addr(&self) -> &str {
        self.pool.addr()
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
        self.call_as(op, None, trace, timeout).await
    }

    /// [`StorePool::call_with`] for a signed-in user: the store checks `session` itself.
    pub async fn call_as(
        &self,
        op: Op,
        session: Option<&str>,
        trace: &str,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let started = Instant::now();
        let op_name = op.name();
        if let Some(faults) = &self.cfg.faults {
            if let Some(point) = faults.apply("xfs.call", op_name).await {
                return Err(CallError::Unavailable {
                    addr: self.addr().to_string(),
                    why: format!("injected fault at {point}"),
                });
            }
        }
        let left = timeout.saturating_sub(started.elapsed());
        let result = self
            .pool
            .call(op, trace, session, left)
            .await
            .map_err(|e| match e {
                // Report the caller's whole timeout, not what was left of it.
                ConnError::Timeout { addr, .. } => CallError::Timeout { addr, timeout },
                other => other.into(),
            })?;
        if let Some(faults) = &self.cfg.faults {
            if faults.apply("xfs.reply", op_name).await.is_some() {
                return Err(CallError::ConnectionLost {
                    addr: self.addr().to_string(),
                });
            }
        }
        result.map_err(CallError::Remote)
    }

    /// One typed call: the reply the operation answers with, or an error; a reply of another
    /// shape is a protocol error here, so no caller ever matches on one.
    pub async fn run<C: Call>(&self, call: C) -> Result<C::Output, CallError> {
        self.run_with(call, "", self.cfg.request_timeout).await
    }

    /// [`StorePool::run`] with a trace id and a timeout.
    pub async fn run_with<C: Call>(
        &self,
        call: C,
        trace: &str,
        timeout: Duration,
    ) -> Result<C::Output, CallError> {
        self.run_as(call, None, trace, timeout).await
    }

    /// [`StorePool::run_with`] for a signed-in user: the store checks `session` itself.
    pub async fn run_as<C: Call>(
        &self,
        call: C,
        session: Option<&str>,
        trace: &str,
        timeout: Duration,
    ) -> Result<C::Output, CallError> {
        let reply = self.call_as(call.into(), session, trace, timeout).await?;
        C::output(reply).map_err(|other| CallError::Protocol {
            addr: self.addr().to_string(),
            why: format!("{} answered with {other:?}", C::NAME),
        })
    }
}

impl ClientConfig {
    /// The store client of a serving role (front door, login, smtp-in): someone is waiting on
    /// each call, so connects give up after a second and reconnects back off from 20 ms to at
    /// most 500 ms; `faults` are the process's fault points (`runtime::faults::Faults`).
    pub fn for_role(identity: Identity, conns_per_store: usize, faults: CallFaults) -> Self {
        ClientConfig {
            identity,
            conns_per_store,
            connect_timeout: Duration::from_secs(1),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(500),
            faults: Some(faults),
            ..Default::default()
        }
    }

    fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            identity: self.identity.clone(),
            conns: self.conns_per_store,
            connect_timeout: self.connect_timeout,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            max_frame: self.max_frame,
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

    /// One typed call to the store at `addr` ([`StorePool::run`]).
    pub async fn run<C: Call>(&self, addr: &str, call: C) -> Result<C::Output, CallError> {
        self.pool(addr).run(call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A store stand-in that answers every request `Pong`, on the shared connection layer.
    struct PongStore;

    impl crate::serve::Service for PongStore {
        type Protocol = Xfs;

        fn hello(&self, _caller: &crate::tls::Caller) -> Result<ServerHello, String> {
            Ok(ServerHello {
                version: PROTOCOL_VERSION,
                store: "pong".into(),
                segments: vec![],
            })
        }

        async fn handle(
            self: Arc<Self>,
            _caller: Arc<crate::tls::Caller>,
            _req: Request,
        ) -> Result<Reply, XfsError> {
            Ok(Reply::Pong)
        }

        fn frame_error(&self, _peer: std::net::SocketAddr, _kind: &'static str, _error: &str) {}

        fn forbidden(&self, _caller: &crate::tls::Caller, _op: &'static str) {}
    }

    /// Serve `PongStore` on `listener` until `stop`; dropping the task closes every connection.
    fn pong_store(
        listener: tokio::net::TcpListener,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => r.unwrap(),
                };
                let stop = stop.clone();
                conns.spawn(async move {
                    let limits = crate::serve::ConnLimits::default();
                    let plain = crate::tls::Transport::Plaintext;
                    crate::serve::connection(
                        stream,
                        peer,
                        Arc::new(PongStore),
                        &plain,
                        &limits,
                        stop,
                    )
                    .await
                });
            }
            conns.shutdown().await;
        })
    }

    #[tokio::test]
    async fn after_a_restart_the_first_call_goes_out_on_a_fresh_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ClientConfig {
            conns_per_store: 2,
            // A backoff this long would fail the test if a found-dead connection waited it out.
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            ..Default::default()
        };
        let pool = StorePool::new(addr.to_string(), Arc::new(cfg));
        let stop = tokio_util::sync::CancellationToken::new();
        let server = pong_store(listener, stop.clone());
        for _ in 0..4 {
            assert_eq!(pool.run(crate::ops::Ping {}).await.unwrap(), ());
        }
        // The store dies: every connection is closed under the pool's feet.
        stop.cancel();
        server.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... and comes back on the same port.
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = pong_store(listener, stop.clone());
        for i in 0..4 {
            let r = pool.run(crate::ops::Ping {}).await;
            assert!(r.is_ok(), "call {i} after the restart: {r:?}");
        }
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_reply_of_another_shape_is_a_protocol_error_not_a_match_arm() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = pong_store(listener, stop.clone());
        let pool = StorePool::new(addr.to_string(), Arc::new(ClientConfig::default()));
        let target = Target::new("a@b.test", 1, 1);
        match pool.run(crate::ops::ListFolders { target }).await {
            Err(CallError::Protocol { why, .. }) => {
                assert_eq!(why, "list_folders answered with Pong")
            }
            other => panic!("{other:?}"),
        }
        stop.cancel();
        server.await.unwrap();
    }
}
