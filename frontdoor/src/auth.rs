//! Sessions: the signed token from the `mm_session` cookie or an `Authorization: Bearer` header,
//! checked here without any lookup, then against the account's session generation (a password
//! change bumps it at the store; older tokens are refused). The generation is cached per user
//! for a few seconds; while the store is unreachable the last generation seen is used, and a
//! user never seen keeps a validly signed session (the page then says the mailbox is
//! unavailable).
//!
//! CSRF: every form carries the session's CSRF token (derived from the session id with the
//! session key) and every state-changing form post is checked; JSON API writes authenticated by
//! the cookie need it in `X-CSRF-Token`, Bearer-authenticated calls need nothing more.

pub use runtime::time::now_ms;
pub use runtime::time::now_secs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use session::token::{Claims, TokenError};
use xfs::AccountState;

use crate::mailbox::{Mailbox, StoreError};
use crate::{metrics, Ctx, RequestId};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "mm_session";
/// The purpose a CSRF token is derived for.
const CSRF: &str = "csrf";
/// The header cookie-authenticated API writes carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the front door knows of an account, and when it was read from the store.
#[derive(Debug, Clone)]
pub struct AccountHint {
    pub session_gen: u64,
    pub display_name: String,
    pub read_at: Instant,
}

/// How the request carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Cookie,
    Bearer,
}

/// A checked session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub claims: Claims,
    pub via: Via,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    pub display_name: String,
    /// The request id, carried into the store's logs.
    pub trace: String,
    /// The session generation could not be checked against the store just now.
    pub unchecked: bool,
}

impl Session {
    pub fn mailbox<'a>(&'a self, ctx: &'a Ctx) -> Mailbox<'a> {
        Mailbox::new(ctx, &self.user, &self.trace)
    }

    /// Whether `value` is this session's CSRF token.
    pub fn csrf_ok(&self, ctx: &Ctx, value: Option<&str>) -> bool {
        let ok = value.is_some_and(|v| ctx.keys.check_derived(CSRF, &self.claims.sid, v));
        if !ok {
            metrics::AUTH.with_label_values(&["csrf_refused"]).inc();
            tracing::warn!(user = %self.user, sid = %self.claims.sid, trace = %self.trace,
                "refused a state-changing request without a valid CSRF token");
        }
        ok
    }

    /// A JSON API write: cookie sessions must carry the CSRF header.
    pub fn api_write_ok(&self, ctx: &Ctx, headers: &HeaderMap) -> bool {
        match self.via {
            Via::Bearer => true,
            Via::Cookie => {
                self.csrf_ok(ctx, headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
            }
        }
    }
}

/// Why a request has no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not signed in")]
    Missing,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the session ended when the password was changed")]
    OldGeneration,
    #[error("no such mailbox")]
    NoSuchUser,
}

impl AuthError {
    fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "none",
            AuthError::Token(TokenError::Malformed) => "malformed",
            AuthError::Token(TokenError::BadSignature) => "bad_signature",
            AuthError::Token(TokenError::UnknownKey(_)) => "unknown_key",
            AuthError::Token(TokenError::Expired) => "expired",
            AuthError::OldGeneration => "old_generation",
            AuthError::NoSuchUser => "no_such_user",
        }
    }
}

/// The token a request carries: a Bearer header first, else the session cookie.
pub fn token_of(headers: &HeaderMap) -> Option<(String, Via)> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some((t.trim().to_string(), Via::Bearer));
        }
    }
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == COOKIE_NAME && !value.is_empty() {
                    return Some((value.trim_matches('"').to_string(), Via::Cookie));
                }
            }
        }
    }
    None
}

/// The account's generation and name: from the cache while fresh, else from the store (the
/// stale entry, or nothing, when the store cannot answer).
async fn account_hint(
    ctx: &Ctx,
    user: &str,
    trace: &str,
) -> Result<(Option<AccountHint>, bool), AuthError> {
    let fresh_for = Duration::from_secs(ctx.cfg.session_check_secs);
    let cached = ctx.accounts.get(user).await;
    if let Some(h) = &cached {
        if h.read_at.elapsed() < fresh_for {
            return Ok((cached, false));
        }
    }
    match Mailbox::new(ctx, user, trace).auth().await {
        Ok(auth) if !matches!(auth.state, AccountState::MovedOut { .. }) => {
            let hint = AccountHint {
                session_gen: auth.session_gen,
                display_name: auth.display_name,
                read_at: Instant::now(),
            };
            remember(ctx, user, hint.clone()).await;
            Ok((Some(hint), false))
        }
        Ok(_) => Ok((cached, true)),
        Err(StoreError::NoSuchUser) => Err(AuthError::NoSuchUser),
        Err(e) => {
            tracing::debug!(%user, error = %e, trace, "session generation not checked");
            Ok((cached, true))
        }
    }
}

/// Remember an account's generation and name (read from the store, or just changed here). A
/// generation never goes back.
pub async fn remember(ctx: &Ctx, user: &str, hint: AccountHint) {
    let keep = match ctx.accounts.get(user).await {
        Some(old) if old.session_gen > hint.session_gen => AccountHint {
            session_gen: old.session_gen,
            ..hint
        },
        _ => hint,
    };
    ctx.accounts.insert(user.to_string(), keep).await;
}

/// Check the request's session.
pub async fn authenticate(
    ctx: &Ctx,
    headers: &HeaderMap,
    trace: &str,
) -> Result<Session, AuthError> {
    let result = check(ctx, headers, trace).await;
    let label = match &result {
        Ok(s) if s.unchecked => "unchecked",
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    metrics::AUTH.with_label_values(&[label]).inc();
    result
}

async fn check(ctx: &Ctx, headers: &HeaderMap, trace: &str) -> Result<Session, AuthError> {
    let (token, via) = token_of(headers).ok_or(AuthError::Missing)?;
    let claims = ctx.keys.verify(&token, now_secs())?;
    let (hint, unchecked) = account_hint(ctx, &claims.user, trace).await?;
    if let Some(h) = &hint {
        if claims.gen < h.session_gen {
            tracing::info!(user = %claims.user, sid = %claims.sid, token_gen = claims.gen,
                current = h.session_gen, trace, "refused a session of an older generation");
            return Err(AuthError::OldGeneration);
        }
    }
    let display_name = hint.map(|h| h.display_name).unwrap_or_default();
    Ok(Session {
        user: claims.user.clone(),
        csrf: ctx.keys.derive(CSRF, &claims.sid),
        claims,
        via,
        display_name,
        trace: trace.to_string(),
        unchecked,
    })
}

/// The `Set-Cookie` value carrying a session token until `exp` (seconds since the epoch).
pub fn session_cookie(ctx: &Ctx, token: &str, exp: u64) -> HeaderValue {
    let max_age = exp.saturating_sub(now_secs());
    let secure = if ctx.cfg.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let v =
        format!("{COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| clear_cookie(ctx))
}

/// The `Set-Cookie` value of a fresh session for `s` at generation `gen` (after a password
/// change), expiring when `s` would have: a new session id, so a new CSRF token too.
pub fn reissue(ctx: &Ctx, s: &Session, gen: u64) -> HeaderValue {
    let claims = Claims {
        user: s.user.clone(),
        gen,
        iat: now_secs(),
        exp: s.claims.exp,
        sid: session::token::new_sid(),
    };
    session_cookie(ctx, &ctx.keys.issue(&claims), claims.exp)
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(ctx: &Ctx) -> HeaderValue {
    let secure = if ctx.cfg.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("a fixed cookie is a valid header")
}

fn trace_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// A page's session; without one the browser is sent to sign in.
pub struct WebSession(pub Session);

impl FromRequestParts<Arc<Ctx>> for WebSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, Response> {
        let trace = trace_of(parts);
        match authenticate(ctx, &parts.headers, &trace).await {
            Ok(s) => Ok(WebSession(s)),
            Err(e) => {
                let mut resp = StatusCode::SEE_OTHER.into_response();
                let h = resp.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&ctx.cfg.login_url) {
                    h.insert(LOCATION, v);
                }
                if e != AuthError::Missing {
                    h.insert(SET_COOKIE, clear_cookie(ctx));
                }
                Err(resp)
            }
        }
    }
}

/// An API call's session; without one the answer is 401.
pub struct ApiSession(pub Session);

impl FromRequestParts<Arc<Ctx>> for ApiSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, Response> {
        let trace = trace_of(parts);
        match authenticate(ctx, &parts.headers, &trace).await {
            Ok(s) => Ok(ApiSession(s)),
            Err(e) => {
                let body = serde_json::json!({ "error": e.to_string() });
                let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h), None);
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=b; mm_session=v1.k1.x.y; c=d"),
        );
        assert_eq!(token_of(&h), Some(("v1.k1.x.y".into(), Via::Cookie)));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer v1.k1.p.q"));
        assert_eq!(token_of(&h), Some(("v1.k1.p.q".into(), Via::Bearer)));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("mm_session=; other=1"));
        assert_eq!(token_of(&h), None);
    }
}
