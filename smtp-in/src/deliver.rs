//! Recipients and copies: checking a recipient at RCPT time (index lookup, then the mailbox at
//! its store), and storing one copy after the data, retrying what is safe to retry (every
//! delivery carries its id, so a repeat stores nothing new) until the delivery deadline.
//!
//! Reply policy: a 5xx only when the answer is certain (no such user in the index, a foreign
//! domain); anything unsure — the index unreachable, the store down, busy, frozen for a move, or
//! a route that keeps changing — is a 4xx, and the sender retries.

use std::sync::Arc;
use std::time::Duration;

use mserv_client::{Route, RouteError, StoreState};
use tokio::time::Instant;
use xfs::{AccountState, CallError, Delivery, Op, Reply, XfsError};

use crate::metrics;
use crate::Ctx;

/// Longest a RCPT check waits for the store.
const RCPT_STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Route changes followed for one recipient before giving up for now.
const MAX_REROUTES: usize = 3;
/// How long RCPT waits out a mailbox frozen for the last instant of a move before `451`.
const FREEZE_WAIT: Duration = Duration::from_secs(2);

/// A recipient accepted at RCPT time: the address as given and its route.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub user: String,
    pub route: Route,
}

/// Check a recipient whose domain is ours. `Ok` is a `250`; `Err` is the reply line to send.
pub async fn check_rcpt(ctx: &Ctx, user: &str, trace: &str) -> Result<Recipient, String> {
    let freeze_deadline = Instant::now() + FREEZE_WAIT.min(ctx.deliver_timeout);
    let mut reroutes = 0;
    while reroutes < MAX_REROUTES {
        let route = match ctx.router.route(user).await {
            Ok(r) => r,
            Err(RouteError::NoSuchUser) => {
                metrics::RECIPIENTS
                    .with_label_values(&["unknown_user"])
                    .inc();
                return Err(format!(
                    "550 5.1.1 <{user}>: Recipient address rejected: no such user here"
                ));
            }
            Err(RouteError::BadAddress(why)) => {
                metrics::RECIPIENTS.with_label_values(&["bad_syntax"]).inc();
                return Err(format!("501 5.1.3 Bad recipient address syntax: {why}"));
            }
            Err(RouteError::Unknown(why)) => {
                tracing::warn!(%user, %why, trace, "no route for a recipient");
                metrics::RECIPIENTS.with_label_values(&["deferred"]).inc();
                return Err(format!(
                    "451 4.4.3 <{user}>: Recipient lookup failed (directory unreachable), try again later"
                ));
            }
        };
        if route.store_state == StoreState::Offline {
            metrics::RECIPIENTS.with_label_values(&["deferred"]).inc();
            return Err(format!(
                "451 4.4.1 <{user}>: Mailbox store is offline, try again later"
            ));
        }
        if ctx.verified.get(&route.user).await.is_some() {
            metrics::RECIPIENTS.with_label_values(&["accepted"]).inc();
            return Ok(Recipient {
                user: route.user.clone(),
                route,
            });
        }
        let op = Op::GetAccount {
            target: route.target(),
        };
        let timeout = RCPT_STORE_TIMEOUT.min(ctx.deliver_timeout);
        let answer = ctx
            .xfs
            .pool(&route.xfs_addr)
            .call_with(op, trace, timeout)
            .await;
        let deferred = |reply: String| {
            metrics::RECIPIENTS.with_label_values(&["deferred"]).inc();
            Err(reply)
        };
        match answer {
            Ok(Reply::Account(info)) => match info.state {
                AccountState::Active => {
                    if info.quota_bytes > 0 && info.used_bytes >= info.quota_bytes {
                        return deferred(format!("452 4.2.2 <{user}>: Mailbox full"));
                    }
                    metrics::RECIPIENTS.with_label_values(&["accepted"]).inc();
                    ctx.verified.insert(route.user.clone(), ()).await;
                    return Ok(Recipient {
                        user: route.user.clone(),
                        route,
                    });
                }
                AccountState::Frozen | AccountState::Importing { .. } => {
                    if wait_out_freeze(freeze_deadline).await {
                        continue;
                    }
                    return deferred(format!(
                        "451 4.2.0 <{user}>: Mailbox is being moved, try again shortly"
                    ));
                }
                // A store answers `NoSuchUser` for a deleted account; treat one alike.
                AccountState::MovedOut { .. } | AccountState::Deleted { .. } => {
                    ctx.router.invalidate(user).await;
                    reroutes += 1;
                }
            },
            Ok(other) => {
                tracing::error!(?other, trace, "unexpected answer to GetAccount");
                return deferred(format!(
                    "451 4.3.0 <{user}>: Mailbox store gave an unexpected answer, try again later"
                ));
            }
            Err(CallError::Remote(XfsError::Moved { .. }))
            | Err(CallError::Remote(XfsError::NoSuchUser)) => {
                ctx.router.invalidate(user).await;
                reroutes += 1;
            }
            Err(CallError::Remote(XfsError::Frozen { .. })) => {
                if wait_out_freeze(freeze_deadline).await {
                    continue;
                }
                return deferred(format!(
                    "451 4.2.0 <{user}>: Mailbox is being moved, try again shortly"
                ));
            }
            Err(CallError::Remote(XfsError::Busy { .. })) => {
                return deferred(format!(
                    "451 4.3.2 <{user}>: Mailbox store busy, try again later"
                ))
            }
            Err(CallError::Remote(e)) => {
                tracing::warn!(%user, error = %e, trace, "store refused a recipient check");
                return deferred(format!(
                    "451 4.3.0 <{user}>: Mailbox temporarily unavailable, try again later"
                ));
            }
            Err(e) => {
                tracing::warn!(%user, store = %route.placement.store, error = %e, trace,
                    "mailbox store unreachable at RCPT");
                return deferred(format!(
                    "451 4.4.1 <{user}>: Mailbox store unreachable, try again later"
                ));
            }
        }
    }
    metrics::RECIPIENTS.with_label_values(&["deferred"]).inc();
    Err(format!(
        "451 4.4.0 <{user}>: Mailbox is changing location, try again later"
    ))
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

/// How storing one copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        duplicate: bool,
    },
    /// Not stored (or not known to be): the reply line a `4xx` would carry.
    Deferred(String),
}

/// Store one copy at the recipient's store, following moves and retrying busy, frozen and
/// unreachable stores with jittered backoff until `deadline`.
pub async fn deliver_copy(
    ctx: Arc<Ctx>,
    mut rcpt: Recipient,
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
                let op = Op::Deliver {
                    target: rcpt.route.target(),
                    delivery: delivery.clone(),
                };
                ctx.xfs
                    .pool(&rcpt.route.xfs_addr)
                    .call_with(op, &trace, left)
                    .await
            }
        };
        if answer.is_err() {
            // Whatever went wrong, the next RCPT for this user asks the store again.
            ctx.verified.invalidate(&user).await;
        }
        let pause = match answer {
            Ok(Reply::Delivered { duplicate, .. }) => {
                let r = if duplicate { "duplicate" } else { "stored" };
                metrics::DELIVERIES.with_label_values(&[r]).inc();
                return Outcome::Stored { duplicate };
            }
            Ok(other) => {
                tracing::error!(?other, trace, "unexpected answer to Deliver");
                metrics::DELIVERIES.with_label_values(&["failed"]).inc();
                return Outcome::Deferred(
                    "451 4.3.0 Mailbox store gave an unexpected answer, try again later".into(),
                );
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

/// The one reply for a message whose copies ended as `outcomes` (all stored: `None`).
pub fn combined_reply(outcomes: &[Outcome]) -> Option<String> {
    outcomes.iter().find_map(|o| match o {
        Outcome::Deferred(reply) => Some(reply.clone()),
        Outcome::Stored { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_deferred_copy_defers_the_message() {
        let ok = Outcome::Stored { duplicate: false };
        assert_eq!(combined_reply(&[ok.clone(), ok.clone()]), None);
        let d = Outcome::Deferred("451 4.4.1 x".into());
        assert_eq!(
            combined_reply(&[ok.clone(), d, ok]),
            Some("451 4.4.1 x".to_string())
        );
        assert_eq!(combined_reply(&[]), None);
    }
}
