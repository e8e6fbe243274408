//! Sessions: the token from the `mm_session` cookie or an `Authorization: Bearer` header. Its
//! signature is checked here with login's public keys (only login can make a session), then the
//! store confirms it: the store itself checks every mailbox operation's token against the
//! account's generation and its signed-out sessions. A confirmation is trusted for a few seconds
//! per session; while the store cannot be asked, a session confirmed within the grace period is
//! served (its pages say the mailbox is unavailable), and any other is answered `503`: never
//! access on an unconfirmed session.
//!
//! CSRF: every form carries the session's CSRF token (a random value inside the signed token,
//! which only holders of the token can read) and every state-changing form post is checked; JSON
//! API writes authenticated by the cookie need it in `X-CSRF-Token`, Bearer-authenticated calls
//! need nothing more.

pub use runtime::time::now_ms;
pub use runtime::time::now_secs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{
    AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use session::token::{Claims, TokenError};

use crate::mailbox::{Mailbox, StoreError};
use crate::{metrics, Ctx, RequestId};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "mm_session";
/// The header cookie-authenticated API writes carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session the store confirmed, and when: kept per token.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub display_name: String,
    pub at: Instant,
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
    /// The token itself: every store call made for this session carries it.
    pub token: String,
    pub claims: Claims,
    pub via: Via,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    pub display_name: String,
    /// The request id, carried into the store's logs.
    pub trace: String,
    /// The store could not confirm the session just now (it did within the grace period).
    pub unchecked: bool,
}

impl Session {
    pub fn mailbox<'a>(&'a self, ctx: &'a Ctx) -> Mailbox<'a> {
        Mailbox::new(ctx, &self.user, &self.token, &self.trace)
    }

    /// Whether `value` is this session's CSRF token.
    pub fn csrf_ok(&self, _ctx: &Ctx, value: Option<&str>) -> bool {
        let ok = value.is_some_and(|v| self.claims.csrf_matches(v));
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
    /// The store refused it: signed out, a password change, or another account's.
    #[error("the session has ended: {0}")]
    Ended(String),
    #[error("no such mailbox")]
    NoSuchUser,
    /// The store cannot be asked, and the session was not confirmed within the grace period.
    #[error("the session cannot be confirmed right now; try again shortly")]
    Unconfirmed,
}

impl AuthError {
    fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "none",
            AuthError::Token(TokenError::Malformed) => "malformed",
            AuthError::Token(TokenError::BadSignature) => "bad_signature",
            AuthError::Token(TokenError::UnknownKey(_)) => "unknown_key",
            AuthError::Token(TokenError::Expired) => "expired",
            AuthError::Ended(_) => "ended",
            AuthError::NoSuchUser => "no_such_user",
            AuthError::Unconfirmed => "unconfirmed",
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

/// The session confirmed by the store (its display name), from the cache while fresh; when the
/// store cannot answer, a confirmation within the grace period (`unchecked`), else
/// [`AuthError::Unconfirmed`].
async fn confirm(
    ctx: &Ctx,
    claims: &Claims,
    token: &str,
    trace: &str,
) -> Result<(String, bool), AuthError> {
    let cached = ctx.confirmed.get(token).await;
    if let Some(c) = &cached {
        if c.at.elapsed() < Duration::from_secs(ctx.cfg.session_check_secs) {
            return Ok((c.display_name.clone(), false));
        }
    }
    match Mailbox::new(ctx, &claims.user, token, trace).auth().await {
        Ok(auth) => {
            let display_name = auth.display_name;
            let fresh = Confirmed {
                display_name: display_name.clone(),
                at: Instant::now(),
            };
            ctx.confirmed.insert(token.to_string(), fresh).await;
            Ok((display_name, false))
        }
        Err(StoreError::NoSuchUser) => Err(AuthError::NoSuchUser),
        Err(StoreError::SessionEnded(why)) => {
            tracing::info!(user = %claims.user, sid = %claims.sid, %why, trace,
                "the store refused a session");
            Err(AuthError::Ended(why))
        }
        Err(e) => {
            tracing::debug!(user = %claims.user, error = %e, trace, "session not confirmed");
            let grace = Duration::from_secs(ctx.cfg.session_grace_secs);
            match cached {
                Some(c) if c.at.elapsed() < grace => Ok((c.display_name, true)),
                _ => Err(AuthError::Unconfirmed),
            }
        }
    }
}

/// This session's display name changed: what the next page of it shows.
pub async fn renamed(ctx: &Ctx, s: &Session, display_name: String) {
    if let Some(mut c) = ctx.confirmed.get(&s.token).await {
        c.display_name = display_name;
        ctx.confirmed.insert(s.token.clone(), c).await;
    }
}

/// Sign-out: the store refuses this session from now until its token would have expired.
pub async fn end(ctx: &Ctx, s: &Session) -> Result<(), StoreError> {
    ctx.confirmed.invalidate(&s.token).await;
    s.mailbox(ctx)
        .end_session(&s.claims.sid, s.claims.exp)
        .await
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
    let (display_name, unchecked) = confirm(ctx, &claims, &token, trace).await?;
    Ok(Session {
        user: claims.user.clone(),
        csrf: claims.csrf.clone(),
        token,
        claims,
        via,
        display_name,
        trace: trace.to_string(),
        unchecked,
    })
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

/// The answer to a page request whose session cannot be confirmed: `503`, try again shortly.
fn unconfirmed(text: String) -> Response {
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, format!("{text}\n")).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(crate::error::BUSY_RETRY_AFTER_SECS),
    );
    resp
}

/// A page's session; without one the browser is sent to sign in.
pub struct WebSession(pub Session);

impl FromRequestParts<Arc<Ctx>> for WebSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, Response> {
        let trace = trace_of(parts);
        match authenticate(ctx, &parts.headers, &trace).await {
            Ok(s) => Ok(WebSession(s)),
            Err(AuthError::Unconfirmed) => Err(unconfirmed(AuthError::Unconfirmed.to_string())),
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
            Err(AuthError::Unconfirmed) => {
                let body = serde_json::json!({ "error": AuthError::Unconfirmed.to_string() });
                let resp = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
                Err(crate::error::with_retry_after(resp))
            }
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
