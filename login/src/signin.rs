//! One sign-in, whatever the form it arrived in: throttle, route, fetch the auth record from the
//! user's store, check the password on a hashing thread, choose a front door, record the login
//! and issue the session.
//!
//! A wrong password and an unknown user end the same way ([`SignInError::BadCredentials`]), and
//! an unknown user costs a password check too, so neither the answer nor its timing tells them
//! apart. Anything that keeps the verdict from being known (index, store or front doors down) is
//! [`SignInError::Unavailable`], never a refusal.

use runtime::time::now_ms;
pub use runtime::time::now_secs;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mserv_client::{RouteError, StoreState};
use runtime::faults::Faults;
use xfs::{ops, AccountState, AuthRecord, Call, CallError, XfsError};

use crate::frontdoors::{FrontDoors, PickError};
use crate::metrics;
use session::password::{Hashing, HashingError};
use session::throttle::Throttle;
use session::token::{Claims, SigningKeys};

/// Longest a store call takes.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest an attempt waits for a hashing slot.
/// Route changes followed for one sign-in before giving up for now.
const MAX_REROUTES: usize = 3;
/// The fault point every store call of a sign-in passes.
pub const FAULT_STORE: &str = "login.store";

/// A session issued.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub token: String,
    /// The chosen front door's base URL.
    pub front_door: String,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

/// Why no session was issued.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Not a full address: said as such (this tells nothing about who has an account).
    #[error("not a full address")]
    BadAddress,
    /// Wrong password or no such user: one answer for both.
    #[error("wrong address or password")]
    BadCredentials,
    /// Too many failures for this user or from this client: try again after this long.
    #[error("too many failed sign-ins")]
    Throttled(Duration),
    /// The verdict could not be reached now (the reason is for logs, not for the user).
    #[error("sign-in unavailable: {0}")]
    Unavailable(String),
    /// The password was right but no front door of the user's cluster is up.
    #[error("no front door available: {0}")]
    NoFrontDoor(String),
}

impl SignInError {
    /// The `login_attempts_total` label.
    pub fn result(&self) -> &'static str {
        match self {
            SignInError::BadAddress => "bad_request",
            SignInError::BadCredentials => "bad_password",
            SignInError::Throttled(_) => "throttled",
            SignInError::Unavailable(_) | SignInError::NoFrontDoor(_) => "unavailable",
        }
    }
}

/// What every sign-in shares.
pub struct SignIn {
    pub router: mserv_client::Router,
    pub xfs: xfs::Client,
    /// The session signing keys: only login holds them.
    pub keys: SigningKeys,
    pub throttle: Throttle,
    pub front_doors: FrontDoors,
    pub faults: Arc<Faults>,
    pub session_ttl: Duration,
    /// Runs the password checks, a bounded number at once (each holds a core and 19 MiB).
    pub hashing: Hashing,
    /// A hash checked against when the user does not exist, so that costs the same.
    pub dummy_hash: String,
}

/// The user id as the index spells it: the full address, trimmed and lowercased. A bare local
/// part is refused, never completed with a default domain.
pub fn normalize(user: &str) -> Result<String, SignInError> {
    mserv_client::normalize_user(user).map_err(|_| SignInError::BadAddress)
}

impl SignIn {
    /// Sign `user` in with `password`, from `client`. Counts the attempt's outcome.
    pub async fn sign_in(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        trace: &str,
    ) -> Result<Session, SignInError> {
        let r = self.attempt(user, password, client, trace).await;
        let label = match &r {
            Ok(_) => "ok",
            Err(e) => e.result(),
        };
        metrics::ATTEMPTS.with_label_values(&[label]).inc();
        match &r {
            Ok(s) => tracing::info!(user = %s.user, %client, front_door = %s.front_door, trace,
                "signed in"),
            Err(SignInError::Unavailable(why)) | Err(SignInError::NoFrontDoor(why)) => {
                tracing::warn!(%client, why = %why, trace, "sign-in unavailable")
            }
            Err(e) => {
                tracing::info!(%client, outcome = label, error = %e, trace, "sign-in refused")
            }
        }
        r
    }

    async fn attempt(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        trace: &str,
    ) -> Result<Session, SignInError> {
        let user = normalize(user)?;
        let attempt = self
            .throttle
            .admit(&user, client)
            .await
            .map_err(SignInError::Throttled)?;
        let (record, route) = match self.auth_record(&user, trace).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                // Cost the same as a real check, then answer as for a wrong password.
                let hash = self.dummy_hash.clone();
                let _ = self.verify(password, hash).await;
                attempt.failure();
                return Err(SignInError::BadCredentials);
            }
            Err(e) => {
                attempt.abandon();
                return Err(e);
            }
        };
        match self.verify(password, record.password_hash.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                attempt.failure();
                return Err(SignInError::BadCredentials);
            }
            Err(e) => {
                attempt.abandon();
                return Err(e);
            }
        }
        self.throttle.success(attempt, &user).await;

        let front_door = self
            .front_doors
            .pick(&route.cluster)
            .await
            .map_err(|e| match e {
                PickError::IndexUnavailable(why) => SignInError::Unavailable(why),
                other => SignInError::NoFrontDoor(other.to_string()),
            })?;
        self.record_login(&route, trace).await?;

        let claims = Claims::new(
            &user,
            record.session_gen,
            now_secs(),
            self.session_ttl.as_secs(),
        );
        let expires = claims.exp;
        let token = self.keys.issue(&claims);
        Ok(Session {
            user,
            token,
            front_door,
            expires,
        })
    }

    /// The user's auth record from their store, following moves; `None` when there is no such
    /// user.
    async fn auth_record(
        &self,
        user: &str,
        trace: &str,
    ) -> Result<Option<(AuthRecord, mserv_client::Route)>, SignInError> {
        let mut missing_once = false;
        for _ in 0..MAX_REROUTES {
            let route = match self.router.route(user).await {
                Ok(r) => r,
                Err(RouteError::NoSuchUser) => return Ok(None),
                Err(RouteError::BadAddress(_)) => return Err(SignInError::BadAddress),
                Err(RouteError::Unknown(why)) => {
                    return Err(SignInError::Unavailable(format!("member index: {why}")))
                }
            };
            if route.store_state == StoreState::Offline {
                return Err(SignInError::Unavailable(format!(
                    "store {} is offline",
                    route.placement.store
                )));
            }
            let answer = self.call(
                &route,
                ops::GetAuth {
                    target: route.target(),
                },
                trace,
            );
            match answer.await {
                Ok(rec) => match rec.state {
                    // A mailbox frozen for the last instant of a move can still be signed into.
                    AccountState::Active | AccountState::Frozen => return Ok(Some((rec, route))),
                    AccountState::MovedOut { .. } => self.router.invalidate(user).await,
                    // A store answers `NoSuchUser` for a deleted account; treat one alike.
                    AccountState::Deleted { .. } => return Ok(None),
                    AccountState::Importing { .. } => {
                        return Err(SignInError::Unavailable(
                            "the mailbox is being moved; try again in a moment".into(),
                        ))
                    }
                },
                Err(CallError::Remote(XfsError::Moved { .. })) => {
                    self.router.invalidate(user).await
                }
                Err(CallError::Remote(XfsError::NoSuchUser)) => {
                    // The index places the user here but the store has no such mailbox: a stale
                    // route (ask again once), or an account being created or deleted.
                    if missing_once {
                        return Ok(None);
                    }
                    missing_once = true;
                    self.router.invalidate(user).await;
                }
                Err(e) => {
                    return Err(SignInError::Unavailable(format!(
                        "store {}: {e}",
                        route.placement.store
                    )))
                }
            }
        }
        Err(SignInError::Unavailable(
            "the mailbox keeps changing location".into(),
        ))
    }

    /// Record the sign-in at the store. A mailbox frozen for a move cannot take the write now;
    /// the sign-in goes ahead (the next one records it).
    async fn record_login(
        &self,
        route: &mserv_client::Route,
        trace: &str,
    ) -> Result<(), SignInError> {
        let op = ops::RecordLogin {
            target: route.target(),
            at_ms: now_ms(),
        };
        match self.call(route, op, trace).await {
            Ok(_) => Ok(()),
            Err(CallError::Remote(XfsError::Frozen { .. })) => {
                tracing::info!(user = %route.user, trace, "mailbox frozen: login not recorded");
                Ok(())
            }
            Err(CallError::Remote(XfsError::Moved { .. })) => {
                // It moved between the check and now: the new store holds the same password.
                self.router.invalidate(&route.user).await;
                Err(SignInError::Unavailable(
                    "the mailbox moved during sign-in".into(),
                ))
            }
            Err(e) => Err(SignInError::Unavailable(format!(
                "recording the login at {}: {e}",
                route.placement.store
            ))),
        }
    }

    /// Sign-out: the user's store refuses the session of `token` (with `claims`) until it
    /// would have expired.
    pub async fn end_session(
        &self,
        token: &str,
        claims: &Claims,
        trace: &str,
    ) -> Result<(), SignInError> {
        for _ in 0..MAX_REROUTES {
            let route = match self.router.route(&claims.user).await {
                Ok(r) => r,
                Err(RouteError::Unknown(why)) => {
                    return Err(SignInError::Unavailable(format!("member index: {why}")))
                }
                Err(_) => return Ok(()),
            };
            let op = ops::EndSession {
                target: route.target(),
                sid: claims.sid.clone(),
                until: claims.exp,
            };
            match self.call_as(&route, op, Some(token), trace).await {
                Ok(()) => return Ok(()),
                // Gone, or already refused: nothing left to end.
                Err(CallError::Remote(XfsError::NoSuchUser))
                | Err(CallError::Remote(XfsError::SessionRefused { .. })) => return Ok(()),
                Err(CallError::Remote(XfsError::Moved { .. })) => {
                    self.router.invalidate(&claims.user).await
                }
                Err(e) => {
                    return Err(SignInError::Unavailable(format!(
                        "store {}: {e}",
                        route.placement.store
                    )))
                }
            }
        }
        Err(SignInError::Unavailable(
            "the mailbox keeps changing location".into(),
        ))
    }

    async fn call<C: Call>(
        &self,
        route: &mserv_client::Route,
        call: C,
        trace: &str,
    ) -> Result<C::Output, CallError> {
        self.call_as(route, call, None, trace).await
    }

    async fn call_as<C: Call>(
        &self,
        route: &mserv_client::Route,
        call: C,
        session: Option<&str>,
        trace: &str,
    ) -> Result<C::Output, CallError> {
        if let Err(e) = self.faults.inject(FAULT_STORE).await {
            return Err(CallError::Unavailable {
                addr: route.xfs_addr.clone(),
                why: e.to_string(),
            });
        }
        self.xfs
            .pool(&route.xfs_addr)
            .run_as(call, session, trace, STORE_TIMEOUT)
            .await
    }

    /// Check `password` against `hash` on the bounded hashing pool.
    async fn verify(&self, password: &str, hash: String) -> Result<bool, SignInError> {
        let started = Instant::now();
        let ok = self
            .hashing
            .verify(password, hash)
            .await
            .map_err(|e| match e {
                HashingError::Busy => SignInError::Unavailable(e.to_string()),
                HashingError::Failed(why) => {
                    SignInError::Unavailable(format!("password check failed: {why}"))
                }
            })?;
        metrics::VERIFY_SECONDS.observe(started.elapsed().as_secs_f64());
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_lowercased_full_addresses() {
        assert_eq!(
            normalize(" Alice@MegaMail.Test ").unwrap(),
            "alice@megamail.test"
        );
        assert!(matches!(normalize("alice"), Err(SignInError::BadAddress)));
        assert!(matches!(normalize("@x"), Err(SignInError::BadAddress)));
        assert!(matches!(
            normalize(&format!("{}@x.test", "a".repeat(400))),
            Err(SignInError::BadAddress)
        ));
    }
}
