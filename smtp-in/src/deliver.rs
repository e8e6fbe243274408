//! The real [`Mailboxes`]: the member index and the stores. Checking a recipient at RCPT time
//! (index lookup, then the mailbox at its store), and storing each copy after the data, retrying
//! what is safe to retry (every delivery carries its id, so a repeat stores nothing new) until
//! the delivery deadline. Every call smtp-in makes to the index or a store is in this file.
//!
//! Reply policy: a 5xx only when the answer is certain (no such user in the index); anything
//! unsure — the index unreachable, the store down, busy, frozen for a move, or a route that keeps
//! changing — is a 4xx, and the sender retries.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mserv_client::{Route, RouteError, StoreState};
use runtime::faults::Faults;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use xfs::{ops, AccountState, CallError, Delivery, XfsError};

use crate::mailboxes::{Mailboxes, MessageCopy, Outcome, Recipient, Verdict};
use crate::metrics;
use crate::session::COPIES_IN_FLIGHT;
use crate::SmtpInConfig;

/// Longest a RCPT check waits for the store.
const RCPT_STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Route changes followed for one recipient before giving up for now.
const MAX_REROUTES: usize = 3;
/// How long RCPT waits out a mailbox frozen for the last instant of a move before `451`.
const FREEZE_WAIT: Duration = Duration::from_secs(2);
/// How long a recipient confirmed by its store is taken as deliverable without asking again.
const VERIFIED_TTL: Duration = Duration::from_secs(5);

/// The mailboxes of the member index's users, in their stores.
pub struct Stores {
    shared: Arc<Shared>,
}

struct Shared {
    router: mserv_client::Router,
    domains: mserv_client::HostedDomains,
    xfs: xfs::Client,
    faults: Arc<Faults>,
    deliver_timeout: Duration,
    /// Recipients whose mailbox their store confirmed lately (active, not full): RCPT skips the
    /// store for them. A delivery that finds otherwise drops the entry.
    verified: moka::future::Cache<String, ()>,
    /// Retry pauses for unreachable stores: full jitter between these.
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl Stores {
    /// Clients for the index replicas and the stores named in `cfg`; nothing is contacted yet.
    pub fn new(cfg: &SmtpInConfig, identity: xfs::Identity, faults: Arc<Faults>) -> Stores {
        let mserv_client = mserv_client::Client::new(
            cfg.mserv.clone(),
            mserv_client::ClientConfig::for_role(
                identity.clone(),
                Duration::from_secs(cfg.route_cache_secs),
            ),
        );
        let mserv_client = Arc::new(mserv_client);
        let domains = mserv_client::HostedDomains::names(
            mserv_client.clone(),
            Duration::from_secs(cfg.store_refresh_secs),
        );
        let router =
            mserv_client::Router::new(mserv_client, Duration::from_secs(cfg.store_refresh_secs));
        let xfs = xfs::Client::new(xfs::ClientConfig::for_role(
            identity,
            4,
            faults.call_faults(),
        ));
        Stores {
            shared: Arc::new(Shared {
                router,
                domains,
                xfs,
                faults,
                deliver_timeout: Duration::from_secs(cfg.deliver_timeout_secs),
                verified: moka::future::Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
                backoff_base: Duration::from_millis(25),
                backoff_cap: Duration::from_secs(1),
            }),
        }
    }
}

impl Mailboxes for Stores {
    type Route = Route;

    async fn domains(&self) -> Option<Arc<BTreeSet<String>>> {
        match self.shared.domains.name_set().await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "hosted domains unknown");
                None
            }
        }
    }

    async fn check(&self, addr: &str, trace: &str) -> Verdict<Route> {
        check_rcpt(&self.shared, addr, trace).await
    }

    /// Every copy goes to its store in parallel, all under one deadline, with at most
    /// [`COPIES_IN_FLIGHT`] store calls (each holding the message encoded) at once; a copy
    /// waiting to retry holds no place.
    async fn deliver(&self, copies: Vec<MessageCopy<Route>>, trace: &str) -> Vec<Outcome> {
        let deadline = Instant::now() + self.shared.deliver_timeout;
        let calls = Arc::new(Semaphore::new(COPIES_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for copy in copies {
            tasks.spawn(deliver_copy(
                self.shared.clone(),
                calls.clone(),
                copy.rcpt,
                copy.delivery,
                trace.to_string(),
                deadline,
            ));
        }
        let mut outcomes = Vec::new();
        while let Some(r) = tasks.join_next().await {
            outcomes.push(r.unwrap_or_else(|e| {
                tracing::error!(error = %e, "delivery task failed");
                Outcome::Deferred("451 4.3.0 Internal error, try again later".into())
            }));
        }
        outcomes
    }
}

/// Check a recipient whose domain is ours.
async fn check_rcpt(ctx: &Shared, user: &str, trace: &str) -> Verdict<Route> {
    let freeze_deadline = Instant::now() + FREEZE_WAIT.min(ctx.deliver_timeout);
    let mut reroutes = 0;
    while reroutes < MAX_REROUTES {
        let route = match ctx.router.route(user).await {
            Ok(r) => r,
            Err(RouteError::NoSuchUser) => return Verdict::NoSuchUser,
            Err(RouteError::BadAddress(why)) => return Verdict::BadAddress(why),
            Err(RouteError::Unknown(why)) => {
                tracing::warn!(%user, %why, trace, "no route for a recipient");
                return Verdict::Deferred(format!(
                    "451 4.4.3 <{user}>: Recipient lookup failed (directory unreachable), try again later"
                ));
            }
        };
        if route.store_state == StoreState::Offline {
            return Verdict::Deferred(format!(
                "451 4.4.1 <{user}>: Mailbox store is offline, try again later"
            ));
        }
        if ctx.verified.get(&route.user).await.is_some() {
            return accepted(route);
        }
        let op = ops::GetAccount {
            target: route.target(),
        };
        let timeout = RCPT_STORE_TIMEOUT.min(ctx.deliver_timeout);
        let answer = ctx
            .xfs
            .pool(&route.xfs_addr)
            .run_with(op, trace, timeout)
            .await;
        match answer {
            Ok(info) => match info.state {
                AccountState::Active => {
                    if info.quota_bytes > 0 && info.used_bytes >= info.quota_bytes {
                        return Verdict::Deferred(format!("452 4.2.2 <{user}>: Mailbox full"));
                    }
                    ctx.verified.insert(route.user.clone(), ()).await;
                    return accepted(route);
                }
                AccountState::Frozen | AccountState::Importing { .. } => {
                    if wait_out_freeze(freeze_deadline).await {
                        continue;
                    }
                    return Verdict::Deferred(format!(
                        "451 4.2.0 <{user}>: Mailbox is being moved, try again shortly"
                    ));
                }
                // A store answers `NoSuchUser` for a deleted account; treat one alike.
                AccountState::MovedOut { .. } | AccountState::Deleted { .. } => {
                    ctx.router.invalidate(user).await;
                    reroutes += 1;
                }
            },
            Err(CallError::Remote(XfsError::Moved { .. }))
            | Err(CallError::Remote(XfsError::NoSuchUser)) => {
                ctx.router.invalidate(user).await;
                reroutes += 1;
            }
            Err(CallError::Remote(XfsError::Frozen { .. })) => {
                if wait_out_freeze(freeze_deadline).await {
                    continue;
                }
                return Verdict::Deferred(format!(
                    "451 4.2.0 <{user}>: Mailbox is being moved, try again shortly"
                ));
            }
            Err(CallError::Remote(XfsError::Busy { .. })) => {
                return Verdict::Deferred(format!(
                    "451 4.3.2 <{user}>: Mailbox store busy, try again later"
                ))
            }
            Err(CallError::Remote(e)) => {
                tracing::warn!(%user, error = %e, trace, "store refused a recipient check");
                return Verdict::Deferred(format!(
                    "451 4.3.0 <{user}>: Mailbox temporarily unavailable, try again later"
                ));
            }
            Err(e) => {
                tracing::warn!(%user, store = %route.placement.store, error = %e, trace,
                    "mailbox store unreachable at RCPT");
                return Verdict::Deferred(format!(
                    "451 4.4.1 <{user}>: Mailbox store unreachable, try again later"
                ));
            }
        }
    }
    Verdict::Deferred(format!(
        "451 4.4.0 <{user}>: Mailbox is changing location, try again later"
    ))
}

fn accepted(route: Route) -> Verdict<Route> {
    Verdict::Accepted(Recipient {
        user: route.user.clone(),
        route,
    })
}

/// Sleep a moment if the freeze wait is not over; false once it is.
async fn wait_out_freeze(deadline: Instant) -> bool {
    let pause = Duration::from_millis(50);
    if Instant::now() + pause > deadline {
        return false;
    }
    tokio::time::sleep(pause).await;
    true
}

/// Store one copy at the recipient's store, following moves and retrying busy, frozen and
/// unreachable stores with jittered backoff until `deadline`.
async fn deliver_copy(
    ctx: Arc<Shared>,
    calls: Arc<Semaphore>,
    mut rcpt: Recipient<Route>,
    delivery: Delivery,
    trace: String,
    deadline: Instant,
) -> Outcome {
    let user = rcpt.user.clone();
    let mut attempt: u32 = 0;
    let mut last = String::from("451 4.4.1 Mailbox store unreachable, try again later");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            metrics::DELIVERIES.with_label_values(&["deferred"]).inc();
            tracing::warn!(%user, trace, reason = %last, "copy not stored before the deadline");
            return Outcome::Deferred(last);
        }
        if attempt > 0 {
            metrics::DELIVERIES.with_label_values(&["retry"]).inc();
        }
        attempt += 1;
        let answer = match ctx.faults.inject("smtp.deliver").await {
            Err(e) => Err(CallError::Unavailable {
                addr: rcpt.route.xfs_addr.clone(),
                why: e.to_string(),
            }),
            Ok(()) => {
                let call = async {
                    let _place = calls.acquire().await;
                    let op = ops::Deliver {
                        target: rcpt.route.target(),
                        // The body is shared, not copied.
                        delivery: delivery.clone(),
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    ctx.xfs
                        .pool(&rcpt.route.xfs_addr)
                        .run_with(op, &trace, left)
                        .await
                };
                match tokio::time::timeout_at(deadline, call).await {
                    Ok(answer) => answer,
                    Err(_) => Err(CallError::Unavailable {
                        addr: rcpt.route.xfs_addr.clone(),
                        why: "no place for the call before the delivery deadline".into(),
                    }),
                }
            }
        };
        if answer.is_err() {
            // Whatever went wrong, the next RCPT for this user asks the store again.
            ctx.verified.invalidate(&user).await;
        }
        let pause = match answer {
            Ok(xfs::Delivered { duplicate, .. }) => {
                let r = if duplicate { "duplicate" } else { "stored" };
                metrics::DELIVERIES.with_label_values(&[r]).inc();
                return Outcome::Stored { duplicate };
            }
            Err(CallError::Remote(XfsError::Moved { .. }))
            | Err(CallError::Remote(XfsError::NoSuchUser)) => {
                ctx.router.invalidate(&user).await;
                match ctx.router.route(&user).await {
                    Ok(route) => {
                        rcpt.route = route;
                        last = "451 4.4.0 Mailbox is changing location, try again later".into();
                        Duration::ZERO
                    }
                    Err(RouteError::Unknown(why)) => {
                        last = format!("451 4.4.3 Directory unreachable ({why}), try again later");
                        xfs::client::full_jitter(ctx.backoff_base, ctx.backoff_cap, attempt)
                    }
                    Err(e) => {
                        metrics::DELIVERIES.with_label_values(&["failed"]).inc();
                        return Outcome::Deferred(format!(
                            "451 4.3.0 <{user}> no longer available ({e}), try again later"
                        ));
                    }
                }
            }
            Err(CallError::Remote(XfsError::Frozen { retry_after_ms }))
            | Err(CallError::Remote(XfsError::Busy { retry_after_ms })) => {
                last = "451 4.3.2 Mailbox store busy, try again later".into();
                let wait = Duration::from_millis(u64::from(retry_after_ms).clamp(5, 1000));
                wait + xfs::client::full_jitter(wait, wait, 0)
            }
            Err(CallError::Remote(XfsError::DeadlineExceeded)) => {
                last = "451 4.3.2 Mailbox store overloaded, try again later".into();
                xfs::client::full_jitter(ctx.backoff_base, ctx.backoff_cap, attempt)
            }
            Err(CallError::Remote(XfsError::QuotaExceeded { .. })) => {
                metrics::DELIVERIES.with_label_values(&["failed"]).inc();
                return Outcome::Deferred(format!("452 4.2.2 <{user}>: Mailbox full"));
            }
            Err(CallError::Remote(e)) => {
                tracing::error!(%user, error = %e, trace, "store refused a delivery");
                metrics::DELIVERIES.with_label_values(&["failed"]).inc();
                return Outcome::Deferred(
                    "451 4.3.0 Mailbox temporarily unavailable, try again later".into(),
                );
            }
            Err(e) => {
                tracing::debug!(%user, error = %e, trace, "delivery attempt failed; retrying");
                last = "451 4.4.1 Mailbox store unreachable, try again later".into();
                xfs::client::full_jitter(ctx.backoff_base, ctx.backoff_cap, attempt)
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mserv_client::proto::Placement;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use xfs::{frame, ClientFrame, Op, Reply, Response, ServerFrame, ServerHello};

    use super::*;

    /// A store that answers every delivery after a pause, counting the calls it holds at once.
    async fn slow_store(most: Arc<AtomicUsize>, bodies: Arc<AtomicUsize>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let now = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let (now, most, bodies) = (now.clone(), most.clone(), bodies.clone());
                tokio::spawn(async move {
                    let (mut rd, mut wr) = sock.into_split();
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ServerFrame>();
                    tokio::spawn(async move {
                        while let Some(f) = rx.recv().await {
                            if wr.write_all(&frame::encode(&f).unwrap()).await.is_err() {
                                return;
                            }
                        }
                    });
                    while let Ok(Some(f)) =
                        frame::read_msg::<_, ClientFrame>(&mut rd, 1 << 26).await
                    {
                        let r = match f {
                            ClientFrame::Hello(_) => {
                                let _ = tx.send(ServerFrame::Hello(ServerHello {
                                    version: xfs::PROTOCOL_VERSION,
                                    store: "slow".into(),
                                    segments: vec![0],
                                }));
                                continue;
                            }
                            ClientFrame::Request(r) => r,
                        };
                        let Op::Deliver { delivery, .. } = r.op else {
                            panic!("only deliveries here");
                        };
                        bodies.fetch_add(delivery.body.len(), Ordering::SeqCst);
                        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(held, Ordering::SeqCst);
                        let (now, tx) = (now.clone(), tx.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            let _ = tx.send(ServerFrame::Response(Response {
                                id: r.id,
                                result: Ok(Reply::Delivered {
                                    msg: 1,
                                    folder: "INBOX".into(),
                                    uid: 1,
                                    duplicate: false,
                                }),
                            }));
                        });
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_message_for_many_recipients_has_few_store_calls_in_flight() {
        let (most, bodies) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let addr = slow_store(most.clone(), bodies.clone()).await;
        let cfg = SmtpInConfig {
            mserv: vec!["127.0.0.1:9".into()],
            ..Default::default()
        };
        let plain = xfs::Identity::plaintext(xfs::Role::SmtpIn, "smtp-in");
        let stores = Stores::new(&cfg, plain, Arc::new(Faults::new()));
        let body = bytes::Bytes::from(vec![b'x'; 10_000]);
        let copies = (0..24)
            .map(|i| {
                let user = format!("user{i}@megamail.test");
                MessageCopy {
                    rcpt: Recipient {
                        user: user.clone(),
                        route: Route {
                            user,
                            placement: Placement {
                                store: "slow".into(),
                                segment: 0,
                                epoch: 1,
                            },
                            xfs_addr: addr.clone(),
                            store_state: StoreState::Active,
                            cluster: "c".into(),
                        },
                    },
                    delivery: Delivery {
                        id: [i; 32],
                        folder: None,
                        internal_date_ms: 0,
                        flags: Default::default(),
                        summary: Default::default(),
                        body: body.clone(),
                    },
                }
            })
            .collect();
        let outcomes = stores.deliver(copies, "t").await;
        assert_eq!(outcomes.len(), 24);
        assert!(outcomes
            .iter()
            .all(|o| *o == Outcome::Stored { duplicate: false }));
        assert_eq!(bodies.load(Ordering::SeqCst), 24 * 10_000);
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=COPIES_IN_FLIGHT).contains(&most),
            "{most} calls at once"
        );
    }
}
