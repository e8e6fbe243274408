//! The HTTP surface: the sign-in page and form, the JSON session API, logout, the main port's
//! `/healthz`, and the headers every answer carries.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the sign-in page; sets the login CSRF cookie |
//! | `POST /login` (form: `user`, `password`, `csrf`) | `303` to a front door with the session cookie; 400/401/403/429/503 pages |
//! | `POST /api/v1/session` (JSON `{user, password}`) | `200 {token, front_door, expires, user}`; `{"error"}` with 400/401/413/415/422/429/503 |
//! | `POST /logout` (form: `csrf`) | clears the session cookie, `303` to `/`; 403 without the session's CSRF value |
//! | `GET /healthz` | `200 ok` while serving, `503` while starting or draining |
//! | `GET /static/login.css` | the style sheet |
//!
//! Login CSRF: `GET /` sets a random `mm_login_csrf` cookie and puts an HMAC of it (the session
//! keys, purpose `login-csrf`) in a hidden field; `POST /login` needs both to match, so a form
//! planted on another site cannot sign a victim into the attacker's account.
//!
//! Logout CSRF: `POST /logout` clears the session only with the session's own CSRF value in the
//! `csrf` field, the one every front-door form carries (`Keys::derive("csrf", sid)` of the
//! session in the cookie), and only without a foreign `Origin`; otherwise `403` and the cookie
//! stays. A request with no valid session changes nothing (`303` to `/`), so a page elsewhere
//! cannot sign a user out (`GET /logout` is `405`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, RETRY_AFTER,
    SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use runtime::health::Health;
use runtime::http::layers::Layers;
use runtime::http::RequestId;
use serde::Deserialize;
use serde_json::json;

use crate::config::Cidr;
use crate::frontdoors::parse_base;
use crate::pages::{self, Notice};
use crate::signin::{Session, SignIn, SignInError};
use session::token;

/// The header proxies name the client in.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// The session cookie the front doors read.
pub const SESSION_COOKIE: &str = "mm_session";
/// The login form's CSRF cookie.
pub const CSRF_COOKIE: &str = "mm_login_csrf";
/// The purpose the CSRF field is derived under.
const CSRF_PURPOSE: &str = "login-csrf";
/// Largest request body read (a sign-in is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// How long the login CSRF cookie lives.
const CSRF_MAX_AGE_SECS: u64 = 3600;
/// What a `503` asks the client to wait.
const UNAVAILABLE_RETRY_SECS: u64 = 30;

/// The CSP of every answer that is not a page holding the sign-in form.
const BASE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the handlers share.
pub struct App {
    pub signin: SignIn,
    pub health: Arc<Health>,
    pub cookie_secure: bool,
    /// This server's own base URL (`public-url`): an `Origin` it accepts for a sign-out.
    pub public_url: String,
    /// The proxies whose `X-Forwarded-For` names the client (`trusted-proxies`).
    pub trusted_proxies: Vec<Cidr>,
}

impl App {
    /// The client of a request from `peer` ([`client_ip`] with this server's proxies).
    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted_proxies)
    }
}

/// The router with every route, wrapped in the shared web layers (`runtime::http::layers`:
/// request id, fault point, the headers every answer carries, metrics, the log line).
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/login", post(login_form))
        .route("/api/v1/session", post(login_json))
        .route("/logout", post(logout))
        .route("/healthz", get(healthz))
        .route(pages::CSS_PATH, get(css))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let layers = Layers::new(
        &crate::metrics::HTTP,
        app.signin.faults.clone(),
        HeaderValue::from_static(BASE_CSP),
    );
    layers.wrap(routes).with_state(app)
}

/// The client's address, what the per-client throttle counts (IPv4-mapped IPv6 addresses as
/// IPv4): the TCP peer's, unless the peer is one of `trusted` proxies; then the right-most
/// `X-Forwarded-For` address that is not itself a trusted proxy (each proxy appends the address
/// it was reached from, so everything left of that is the client's to invent). A trusted peer
/// with no usable header is the client itself.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    let is_trusted = |a: IpAddr| trusted.iter().any(|c| c.contains(a));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // What a trusted proxy wrote is an address; anything else stops the walk there.
        let Ok(addr) = hop.parse::<IpAddr>() else {
            break;
        };
        client = addr.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The value of cookie `name` in the request, if sent once with a sane value (base64url and
/// `.`, what the CSRF cookie and session tokens are made of).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= session::token::MAX_TOKEN_BYTES
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

fn cookie_header(name: &str, value: &str, extra: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly{extra}{secure}"))
        .expect("cookie values are header-safe")
}

/// The login CSRF cookie value (the request's, if it has a sane one, or a new one), and the
/// hidden field's value for it.
fn csrf_pair(app: &App, headers: &HeaderMap) -> (String, String) {
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_else(token::new_sid);
    let field = app.signin.keys.derive(CSRF_PURPOSE, &cookie);
    (cookie, field)
}

/// The origin (`scheme://host[:port]`) of a base URL, if it is fit for a CSP source list.
fn origin(base: &str) -> Option<String> {
    let b = parse_base(base)?;
    let ok = b
        .authority
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c));
    ok.then(|| format!("{}://{}", if b.tls { "https" } else { "http" }, b.authority))
}

/// The CSP of a page holding the sign-in form: the form posts here and is then redirected to a
/// front door, and browsers hold the redirect to `form-action` too.
async fn form_page_csp(app: &App) -> HeaderValue {
    let mut origins: Vec<String> = app
        .signin
        .front_doors
        .all()
        .await
        .iter()
        .filter_map(|b| origin(b))
        .collect();
    origins.sort();
    origins.dedup();
    let mut form_action = String::from("'self'");
    for o in &origins {
        form_action.push(' ');
        form_action.push_str(o);
    }
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(BASE_CSP))
}

/// The sign-in page with `status` and an optional notice, setting the CSRF cookie.
async fn form_page(
    app: &App,
    headers: &HeaderMap,
    status: StatusCode,
    notice: Option<Notice>,
    user: &str,
) -> Response {
    let (cookie, field) = csrf_pair(app, headers);
    let body = pages::sign_in(notice.as_ref(), user, &field);
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        SET_COOKIE,
        cookie_header(
            CSRF_COOKIE,
            &cookie,
            &format!("; SameSite=Strict; Max-Age={CSRF_MAX_AGE_SECS}"),
            app.cookie_secure,
        ),
    );
    h.insert(CONTENT_SECURITY_POLICY, form_page_csp(app).await);
    res
}

#[derive(Debug, Deserialize)]
struct IndexQuery {
    #[serde(default)]
    signed_out: Option<String>,
    #[serde(default)]
    password_changed: Option<String>,
}

async fn index(
    State(app): State<Arc<App>>,
    Query(query): Query<IndexQuery>,
    headers: HeaderMap,
) -> Response {
    let notice = match (query.signed_out, query.password_changed) {
        (_, Some(_)) => Some(Notice::ok(
            "Your password was changed, and every session of your account has ended. \
             Sign in with the new password.",
        )),
        (Some(_), None) => Some(Notice::ok("You have signed out.")),
        (None, None) => None,
    };
    form_page(&app, &headers, StatusCode::OK, notice, "").await
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login_form(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(RequestId(trace)): Extension<RequestId>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(rejection) => {
            let status = rejection.status();
            crate::metrics::ATTEMPTS
                .with_label_values(&["bad_request"])
                .inc();
            let notice = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "That sign-in request was too large."
            } else {
                "That sign-in request could not be read. Please try again."
            };
            let status = if status.is_client_error() {
                status
            } else {
                StatusCode::BAD_REQUEST
            };
            return form_page(&app, &headers, status, Some(Notice::error(notice)), "").await;
        }
    };
    // Only a short, printable prefix of what was typed goes back into the page.
    let shown: String = form.user.chars().take(320).collect();
    let csrf_ok = cookie(&headers, CSRF_COOKIE)
        .is_some_and(|c| app.signin.keys.check_derived(CSRF_PURPOSE, &c, &form.csrf));
    if !csrf_ok {
        crate::metrics::ATTEMPTS
            .with_label_values(&["bad_request"])
            .inc();
        let notice = Notice::warn(
            "This sign-in form had expired, or your browser is not accepting cookies. \
             Please try again.",
        );
        return form_page(&app, &headers, StatusCode::FORBIDDEN, Some(notice), &shown).await;
    }
    match app
        .signin
        .sign_in(
            &form.user,
            &form.password,
            app.client_ip(peer, &headers),
            &trace,
        )
        .await
    {
        Ok(session) => session_redirect(&app, &session),
        Err(e) => {
            let (status, notice) = error_page_notice(&e);
            let mut res = form_page(&app, &headers, status, Some(notice), &shown).await;
            add_retry_after(&mut res, &e);
            res
        }
    }
}

fn session_redirect(app: &App, session: &Session) -> Response {
    let location = format!("{}/", session.front_door.trim_end_matches('/'));
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            h.insert(LOCATION, v);
        }
        Err(_) => {
            tracing::error!(front_door = %session.front_door, "a front door URL unfit for Location");
            return (StatusCode::SERVICE_UNAVAILABLE, "no usable front door").into_response();
        }
    }
    h.insert(
        SET_COOKIE,
        cookie_header(
            SESSION_COOKIE,
            &session.token,
            "; SameSite=Lax",
            app.cookie_secure,
        ),
    );
    res
}

/// The status and notice of a sign-in page after `e`.
fn error_page_notice(e: &SignInError) -> (StatusCode, Notice) {
    match e {
        SignInError::BadAddress => (
            StatusCode::BAD_REQUEST,
            Notice::error("Enter your full email address, like name@example.test."),
        ),
        SignInError::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            Notice::error("Wrong address or password."),
        ),
        SignInError::Throttled(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            Notice::warn(format!(
                "Too many failed sign-ins. Please wait {} before trying again.",
                human_wait(*wait)
            )),
        ),
        SignInError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Notice::warn(
                "Sign-in is temporarily unavailable: part of the service cannot be reached. \
                 Your mail is safe. Please try again in a minute.",
            ),
        ),
        SignInError::NoFrontDoor(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Notice::warn(
                "Your password was accepted, but webmail is temporarily unavailable for your \
                 account. Your mail is safe. Please try again in a minute.",
            ),
        ),
    }
}

fn human_wait(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    if secs == 1 {
        "1 second".to_string()
    } else if secs < 90 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    }
}

fn add_retry_after(res: &mut Response, e: &SignInError) {
    let secs = match e {
        SignInError::Throttled(d) => d.as_secs().max(1),
        SignInError::Unavailable(_) | SignInError::NoFrontDoor(_) => UNAVAILABLE_RETRY_SECS,
        _ => return,
    };
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
}

#[derive(Deserialize)]
pub struct SessionRequest {
    user: String,
    password: String,
}

fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

async fn login_json(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(RequestId(trace)): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<SessionRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(rejection) => {
            crate::metrics::ATTEMPTS
                .with_label_values(&["bad_request"])
                .inc();
            let status = rejection.status();
            let status = if status.is_client_error() {
                status
            } else {
                StatusCode::BAD_REQUEST
            };
            let why = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    "expected Content-Type: application/json".to_string()
                }
                _ => {
                    "expected a JSON object {\"user\": \"...\", \"password\": \"...\"}".to_string()
                }
            };
            return json_error(status, &why);
        }
    };
    match app
        .signin
        .sign_in(
            &req.user,
            &req.password,
            app.client_ip(peer, &headers),
            &trace,
        )
        .await
    {
        Ok(s) => Json(json!({
            "token": s.token,
            "front_door": s.front_door,
            "expires": s.expires,
            "user": s.user,
        }))
        .into_response(),
        Err(e) => {
            let (status, msg) = match &e {
                SignInError::BadAddress => (
                    StatusCode::BAD_REQUEST,
                    "user must be a full address (name@domain)",
                ),
                SignInError::BadCredentials => {
                    (StatusCode::UNAUTHORIZED, "wrong address or password")
                }
                SignInError::Throttled(_) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed sign-ins; try again later",
                ),
                SignInError::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sign-in temporarily unavailable; try again later",
                ),
                SignInError::NoFrontDoor(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no front door available for this account; try again later",
                ),
            };
            let mut res = json_error(status, msg);
            add_retry_after(&mut res, &e);
            res
        }
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Whether `origin` (an `Origin` header, if sent) is this server or one of its front doors.
async fn same_site_origin(app: &App, origin: Option<&HeaderValue>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let doors = app.signin.front_doors.all().await;
    std::iter::once(&app.public_url)
        .chain(doors.iter())
        .filter_map(|base| self::origin(base))
        .any(|o| o.eq_ignore_ascii_case(origin))
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let signed_out = || {
        let mut res = StatusCode::SEE_OTHER.into_response();
        res.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/?signed_out=1"));
        res
    };
    let token = cookie(&headers, SESSION_COOKIE).unwrap_or_default();
    let session = app
        .signin
        .keys
        .verifying()
        .verify(&token, runtime::time::now_secs())
        .ok();
    let Some(claims) = session else {
        // No session to end: nothing changes, whoever asked.
        return signed_out();
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    let csrf_ok = claims.csrf_matches(&csrf);
    if !csrf_ok || !same_site_origin(&app, headers.get(ORIGIN)).await {
        crate::metrics::LOGOUTS_REFUSED.inc();
        let mut res = (StatusCode::FORBIDDEN, "sign out from a megamail page\n").into_response();
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return res;
    }
    // The store refuses the session from now on: a copy of the token is worth nothing.
    let sent = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let trace = runtime::http::request_id(sent);
    if let Err(e) = app.signin.end_session(&token, &claims, &trace).await {
        crate::metrics::LOGOUTS_UNRECORDED.inc();
        tracing::warn!(user = %claims.user, sid = %claims.sid, error = %e, trace,
            "sign-out not recorded at the store; the session stays valid until it expires");
    }
    let mut res = signed_out();
    res.headers_mut().insert(
        SET_COOKIE,
        cookie_header(
            SESSION_COOKIE,
            "",
            "; SameSite=Lax; Max-Age=0",
            app.cookie_secure,
        ),
    );
    res
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let state = app.health.state();
    let status = if state.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if state.is_serving() {
        "ok"
    } else {
        state.as_str()
    };
    (status, body).into_response()
}

async fn css() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        pages::CSS,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8", "::1"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let xff = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
            }
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let peer = |s: &str| SocketAddr::new(ip(s), 4000);
        // From an untrusted peer the header is the client's own invention: ignored.
        let spoof = xff(&["198.51.100.7"]);
        assert_eq!(
            client_ip(peer("203.0.113.9"), &spoof, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("203.0.113.9"), &spoof, &[]),
            ip("203.0.113.9")
        );
        // Through a trusted proxy: the right-most address that is not a trusted proxy.
        let via = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            client_ip(peer("10.0.0.2"), &via, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(peer("::ffff:10.0.0.2"), &via, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(peer("::1"), &xff(&["::ffff:192.0.2.1"]), &trusted),
            ip("192.0.2.1")
        );
        // No header, or only proxies in it: the left-most proxy is all there is.
        assert_eq!(
            client_ip(peer("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(peer("10.0.0.2"), &xff(&["10.9.9.9"]), &trusted),
            ip("10.9.9.9")
        );
        // Garbage where an address should be stops the walk at the last good hop.
        let junk = xff(&["198.51.100.7, nonsense"]);
        assert_eq!(client_ip(peer("10.0.0.2"), &junk, &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn cookies_are_read_by_exact_name_and_sane_values_only() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; mm_login_csrfx=2"));
        h.append(COOKIE, HeaderValue::from_static("mm_login_csrf=abc-_9"));
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("abc-_9"));
        assert_eq!(cookie(&h, "a").as_deref(), Some("1"));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("mm_login_csrf=a\"b"));
        assert_eq!(cookie(&h, CSRF_COOKIE), None);
    }

    #[test]
    fn origins_come_from_base_urls() {
        assert_eq!(
            origin("http://127.0.0.1:8081/").as_deref(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            origin("https://mail.example.test/web").as_deref(),
            Some("https://mail.example.test")
        );
        assert_eq!(origin("javascript:alert(1)"), None);
    }

    #[test]
    fn waits_read_naturally() {
        assert_eq!(human_wait(Duration::from_secs(0)), "1 second");
        assert_eq!(human_wait(Duration::from_secs(45)), "45 seconds");
        assert_eq!(human_wait(Duration::from_secs(300)), "5 minutes");
    }
}
