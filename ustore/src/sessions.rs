//! The store's own check of a signed-in user's session, for the operations that act for one
//! (every front-door operation on a mailbox, and any caller's sign-out): the token login signed,
//! for the mailbox's user, not expired; then, in the store, the account's generation and its
//! sign-outs (`Store::check_session`). A compromised front door holds no signing key, so it can
//! reach only the mailboxes of users who signed in through it, and only until they sign out.
//!
//! A signature is checked once per token and the claims kept for a while (they cannot change);
//! the generation and sign-outs are read from the account on every operation.

use std::sync::Arc;
use std::time::Duration;

use session::token::{Claims, VerifyingKeys};
use xfs::{Op, Request, XfsError};

use crate::metrics;

/// Tokens whose signature is remembered.
const CACHED_TOKENS: u64 = 100_000;
/// How long a checked signature is remembered.
const CACHE_FOR: Duration = Duration::from_secs(600);

pub struct Sessions {
    keys: VerifyingKeys,
    checked: moka::future::Cache<String, Arc<Claims>>,
}

fn refused(outcome: &'static str, why: impl Into<String>) -> XfsError {
    metrics::SESSIONS.with_label_values(&[outcome]).inc();
    XfsError::SessionRefused { why: why.into() }
}

impl Sessions {
    pub fn new(keys: VerifyingKeys) -> Sessions {
        Sessions {
            keys,
            checked: moka::future::Cache::builder()
                .max_capacity(CACHED_TOKENS)
                .time_to_live(CACHE_FOR)
                .build(),
        }
    }

    /// The claims of the session `req` carries, when they allow `req.op` on its mailbox (the
    /// account's own checks come after, in the store).
    pub async fn check(&self, req: &Request, now: u64) -> Result<Arc<Claims>, XfsError> {
        let Some(token) = &req.session else {
            return Err(refused(
                "missing",
                "this operation needs the user's session",
            ));
        };
        let claims = match self.checked.get(&token.0).await {
            Some(c) => c,
            None => {
                let c = self
                    .keys
                    .verify(&token.0, now)
                    .map_err(|e| refused("bad_token", e.to_string()))?;
                let c = Arc::new(c);
                self.checked.insert(token.0.clone(), c.clone()).await;
                c
            }
        };
        if claims.exp <= now {
            return Err(refused("bad_token", "token expired"));
        }
        let Some(target) = req.op.target() else {
            return Err(refused("other_user", "the operation names no mailbox"));
        };
        if target.user != claims.user {
            return Err(refused("other_user", "a session of another user"));
        }
        if let Op::EndSession { sid, .. } = &req.op {
            if *sid != claims.sid {
                return Err(refused("other_user", "only a session's own token ends it"));
            }
        }
        Ok(claims)
    }
}

/// Count what the store decided of a session it checked in full.
pub fn record(result: &Result<(), XfsError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(XfsError::SessionRefused { .. }) => "ended",
        Err(_) => return,
    };
    metrics::SESSIONS.with_label_values(&[outcome]).inc();
}
