//! The admin HTTP port every process has: `/healthz`, `/metrics` and `/faults`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | 200 when ok or overloaded, 503 when starting or draining; JSON body from [`Health::report`] |
//! | `GET /metrics` | 200, Prometheus text format |
//! | `GET /faults` | 200, `[{"point": .., "delay_ms": .., "fail_rate": ..}, ..]` |
//! | `POST /faults?point=NAME&delay_ms=N&fail_rate=F` | sets the point (either value may be left out: 0) |
//! | `POST /faults?point=NAME&clear=1` | clears the point |
//!
//! Reads are open to anyone. A change (every `POST`) is checked first, in this order: its `Host`
//! must name the port itself (its bind address, `localhost:PORT`, or a name of `[admin] hosts`),
//! else 421; an `Origin`, if sent, must be `http://` or `https://` one of those, else 403; and it
//! needs `Authorization: Bearer <operator secret>` (compared in constant time), else 401, or 403
//! when no secret is configured (changes are then refused, never open). Every refusal counts in
//! `admin_refused_total{reason}`. A web page in a browser on the same machine therefore cannot
//! change anything: it cannot name the port in `Host` (DNS rebinding), and it can neither hide
//! its `Origin` nor send the secret.
//!
//! Bad parameters get 400 with the reason (an unknown point lists the known ones; a delay over
//! `[admin] max-fault-delay-ms` is refused), a known path with the wrong method 405, anything
//! else 404.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

use crate::config::AdminConfig;
use crate::faults::{FaultSpec, Faults};
use crate::health::Health;
use crate::shutdown::Shutdown;

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "admin_refused_total",
        "Changes refused by the admin port: host, origin, credential (missing or wrong), \
         unconfigured (no operator secret).",
        &["reason"],
    )
});

/// Who may change things on an admin port, from the `[admin]` section: the operator's secret
/// (kept as its SHA-256, compared in constant time) and the extra names the port answers to.
#[derive(Clone, Default)]
pub struct Settings {
    secret: Option<[u8; 32]>,
    hosts: Vec<String>,
    max_fault_delay_ms: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("secret", &self.secret.map(|_| "<set>"))
            .field("hosts", &self.hosts)
            .field("max_fault_delay_ms", &self.max_fault_delay_ms)
            .finish()
    }
}

impl Settings {
    /// No secret: every change is refused. The default bound on fault delays.
    pub fn closed() -> Settings {
        Settings::new(None, &AdminConfig::default())
    }

    /// `secret` (none: changes refused) with the names and bounds of `cfg`.
    pub fn new(secret: Option<&str>, cfg: &AdminConfig) -> Settings {
        Settings {
            secret: secret.map(digest),
            hosts: cfg.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            max_fault_delay_ms: cfg.max_fault_delay_ms,
        }
    }

    /// The settings of `cfg`, the secret read from its `token-file` (its first line; an empty
    /// one is an error, never "no secret").
    pub fn load(cfg: &AdminConfig) -> anyhow::Result<Settings> {
        let Some(path) = &cfg.token_file else {
            return Ok(Settings::new(None, cfg));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading admin.token-file {}", path.display()))?;
        let secret = text.lines().next().unwrap_or("").trim();
        anyhow::ensure!(
            !secret.is_empty(),
            "admin.token-file {} holds no secret",
            path.display()
        );
        Ok(Settings::new(Some(secret), cfg))
    }

    /// The longest fault delay this process accepts.
    pub fn max_fault_delay_ms(&self) -> u64 {
        self.max_fault_delay_ms
    }

    /// The `Host` values a change may carry on a port bound at `local`.
    fn allowed_hosts(&self, local: SocketAddr) -> Vec<String> {
        let port = local.port();
        let mut hosts = vec![local.to_string(), format!("localhost:{port}")];
        for h in &self.hosts {
            if h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !h.ends_with(']')
            {
                hosts.push(h.clone());
            } else {
                hosts.push(format!("{h}:{port}"));
            }
        }
        hosts
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal in time that does not depend on where the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

tokio::task_local! {
    static SETTINGS: Arc<Settings>;
}

/// Run `f` (a role's `run`) with `settings` as the admin settings its [`crate::role::Role`]
/// serves the admin port with; `cli::main` does this with the role's `[admin]` section.
pub async fn with_settings<F: Future>(settings: Settings, f: F) -> F::Output {
    SETTINGS.scope(Arc::new(settings), f).await
}

/// The admin settings of the running role ([`with_settings`]); outside one, [`Settings::closed`].
pub fn current_settings() -> Arc<Settings> {
    SETTINGS
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::new(Settings::closed()))
}

/// Why a change was refused before it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Host,
    Origin,
    Credential,
    Unconfigured,
}

/// A change's `Host`, `Origin` and credential, checked in that order.
fn check_change(
    headers: &HeaderMap,
    allowed: &[String],
    settings: &Settings,
) -> Result<(), Refusal> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = text(HOST).map(str::to_ascii_lowercase);
    if !host.is_some_and(|h| allowed.contains(&h)) {
        return Err(Refusal::Host);
    }
    if headers.contains_key(ORIGIN) {
        let origin = text(ORIGIN)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !host.is_some_and(|h| allowed.iter().any(|a| a == h)) {
            return Err(Refusal::Origin);
        }
    }
    let Some(secret) = &settings.secret else {
        return Err(Refusal::Unconfigured);
    };
    let given = text(AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match given {
        Some(token) if same(&digest(token), secret) => Ok(()),
        _ => Err(Refusal::Credential),
    }
}

fn refused(why: Refusal) -> Response<Full<Bytes>> {
    let (reason, status, text) = match why {
        Refusal::Host => (
            "host",
            StatusCode::MISDIRECTED_REQUEST,
            "a change must name this port in Host\n",
        ),
        Refusal::Origin => (
            "origin",
            StatusCode::FORBIDDEN,
            "cross-origin change refused\n",
        ),
        Refusal::Credential => (
            "credential",
            StatusCode::UNAUTHORIZED,
            "a change needs Authorization: Bearer <operator secret>\n",
        ),
        Refusal::Unconfigured => (
            "unconfigured",
            StatusCode::FORBIDDEN,
            "changes are off: no admin.token-file is configured\n",
        ),
    };
    REFUSED.with_label_values(&[reason]).inc();
    tracing::warn!(reason, "admin change refused");
    let mut response = respond(status, TEXT, text.to_owned());
    if why == Refusal::Credential {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Admin connections served at once; the next one waits in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their request once shutdown is triggered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve the admin endpoints on `listener` until `shutdown` is triggered; then stop accepting, give open
/// connections a moment to finish, and return. Changes follow `settings`; fault points are set
/// within `faults`' own rules.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    faults: Arc<Faults>,
    settings: Arc<Settings>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, changes = settings.secret.is_some(), "admin server listening");
    let allowed: Arc<[String]> = settings.allowed_hosts(local).into();
    let limits = crate::http::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_READ_TIMEOUT,
        drain: DRAIN_TIMEOUT,
    };
    crate::http::serve(
        listener,
        limits,
        shutdown,
        |_peer| {
            let health = Arc::clone(&health);
            let faults = Arc::clone(&faults);
            let settings = Arc::clone(&settings);
            let allowed = Arc::clone(&allowed);
            service_fn(move |req: Request<Incoming>| {
                let response = if req.method() == Method::POST {
                    match check_change(req.headers(), &allowed, &settings) {
                        Ok(()) => route(&req, &health, &faults),
                        Err(why) => refused(why),
                    }
                } else {
                    route(&req, &health, &faults)
                };
                async move { Ok::<_, Infallible>(response) }
            })
        },
        || {},
    )
    .await;
    tracing::info!("admin server stopped");
    Ok(())
}

fn route<B>(req: &Request<B>, health: &Health, faults: &Faults) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    match (req.uri().path(), req.method()) {
        ("/healthz", &Method::GET) => {
            let status = if health.state().is_serving() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, JSON, health.report().to_string() + "\n")
        }
        ("/metrics", &Method::GET) => respond(StatusCode::OK, METRICS, crate::metrics::render()),
        ("/faults", &Method::GET) => {
            let list: Vec<Value> = faults
                .list()
                .into_iter()
                .map(|(point, spec)| fault_json(&point, spec))
                .collect();
            respond(StatusCode::OK, JSON, Value::Array(list).to_string() + "\n")
        }
        ("/faults", &Method::POST) => match change_fault(query, faults) {
            Ok(body) => respond(StatusCode::OK, JSON, body.to_string() + "\n"),
            Err(reason) => respond(StatusCode::BAD_REQUEST, TEXT, reason + "\n"),
        },
        ("/healthz" | "/metrics", _) => method_not_allowed("GET"),
        ("/faults", _) => method_not_allowed("GET, POST"),
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        "method not allowed\n".to_owned(),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn fault_json(point: &str, spec: FaultSpec) -> Value {
    json!({ "point": point, "delay_ms": spec.delay_ms, "fail_rate": spec.fail_rate })
}

/// Apply `POST /faults`; `Err` is the reason for a 400.
fn change_fault(query: &str, faults: &Faults) -> Result<Value, String> {
    let mut point = None;
    let mut delay_ms = None;
    let mut fail_rate = None;
    let mut clear = None;
    for (key, value) in parse_query(query)? {
        let duplicate = match key.as_str() {
            "point" => point.replace(value).is_some(),
            "delay_ms" | "delay-ms" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|e| format!("delay_ms `{value}`: {e}"))?;
                delay_ms.replace(ms).is_some()
            }
            "fail_rate" | "fail-rate" => {
                let rate = value
                    .parse::<f64>()
                    .map_err(|e| format!("fail_rate `{value}`: {e}"))?;
                fail_rate.replace(rate).is_some()
            }
            "clear" => {
                let on = match value.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("clear `{value}`: expected 1 or 0")),
                };
                clear.replace(on).is_some()
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (expected point, delay_ms, fail_rate, clear)"
                ))
            }
        };
        if duplicate {
            return Err(format!("parameter `{key}` given twice"));
        }
    }
    let point = point
        .filter(|p| !p.trim().is_empty())
        .ok_or("missing point=NAME")?;
    let changes_spec = delay_ms.is_some() || fail_rate.is_some();
    if clear == Some(true) {
        if changes_spec {
            return Err("clear=1 takes no delay_ms or fail_rate".to_owned());
        }
        faults.clear(&point);
        return Ok(json!({ "point": point, "cleared": true }));
    }
    if !changes_spec {
        return Err("give delay_ms and/or fail_rate, or clear=1".to_owned());
    }
    let spec = FaultSpec {
        delay_ms: delay_ms.unwrap_or(0),
        fail_rate: fail_rate.unwrap_or(0.0),
    };
    faults.set_checked(&point, spec)?;
    Ok(fault_json(&point, spec))
}

/// Split a query string into decoded `key=value` pairs (`+` is a space, `%XX` a byte).
fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("point=a.b&delay_ms=5&&x").unwrap(),
            vec![
                ("point".to_owned(), "a.b".to_owned()),
                ("delay_ms".to_owned(), "5".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("a%2Eb+c%e2%9c%93").unwrap(), "a.b c\u{2713}");
        for bad in ["%", "%4", "%zz", "%ff", "a%C3"] {
            assert!(percent_decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_change_needs_this_ports_host_a_same_origin_and_the_secret() {
        let cfg = AdminConfig {
            hosts: vec!["Admin.Example".into(), "ops:9000".into()],
            ..AdminConfig::default()
        };
        let settings = Settings::new(Some("s3cret"), &cfg);
        let local: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let allowed = settings.allowed_hosts(local);
        assert_eq!(
            allowed,
            [
                "127.0.0.1:9100",
                "localhost:9100",
                "admin.example:9100",
                "ops:9000"
            ]
        );
        let check =
            |pairs: &[(&'static str, &str)]| check_change(&headers(pairs), &allowed, &settings);
        let auth = ("authorization", "Bearer s3cret");
        for host in [
            "127.0.0.1:9100",
            "LOCALHOST:9100",
            "admin.example:9100",
            "ops:9000",
        ] {
            assert_eq!(check(&[("host", host), auth]), Ok(()), "{host}");
        }
        assert_eq!(
            check(&[
                ("host", "127.0.0.1:9100"),
                ("authorization", "bearer s3cret")
            ]),
            Ok(())
        );
        for host in [
            "evil.example:9100",
            "127.0.0.1",
            "localhost",
            "127.0.0.1:9101",
            "",
        ] {
            assert_eq!(
                check(&[("host", host), auth]),
                Err(Refusal::Host),
                "{host:?}"
            );
        }
        assert_eq!(check(&[auth]), Err(Refusal::Host), "no Host");
        let host = ("host", "localhost:9100");
        assert_eq!(
            check(&[host, ("origin", "http://localhost:9100"), auth]),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:9101",
            "localhost:9100",
        ] {
            assert_eq!(
                check(&[host, ("origin", origin), auth]),
                Err(Refusal::Origin),
                "{origin}"
            );
        }
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert_eq!(
                check(&[host, ("authorization", bad)]),
                Err(Refusal::Credential),
                "{bad}"
            );
        }
        assert_eq!(check(&[host]), Err(Refusal::Credential));
        let closed = Settings::new(None, &cfg);
        assert_eq!(
            check_change(&headers(&[host, auth]), &allowed, &closed),
            Err(Refusal::Unconfigured)
        );
    }

    #[test]
    fn the_secret_comes_from_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.secret");
        std::fs::write(&path, "  abc123  \nignored\n").unwrap();
        let cfg = AdminConfig::with_token("127.0.0.1:0".parse().unwrap(), path.clone());
        let s = Settings::load(&cfg).unwrap();
        assert!(same(&s.secret.unwrap(), &digest("abc123")));
        assert!(
            !format!("{s:?}").contains("abc"),
            "the secret is not printed"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(Settings::load(&cfg).is_err(), "an empty file is no secret");
        let missing = AdminConfig::with_token(cfg.listen, dir.path().join("nope"));
        assert!(Settings::load(&missing).is_err());
        assert!(Settings::load(&AdminConfig::default())
            .unwrap()
            .secret
            .is_none());
    }

    #[test]
    fn fault_changes() {
        let faults = Faults::with_rules(crate::faults::Rules::for_role("frontdoor", 60_000));
        let set = change_fault("point=xfs.call&delay_ms=50&fail_rate=0.25", &faults).unwrap();
        assert_eq!(
            set,
            json!({"point": "xfs.call", "delay_ms": 50, "fail_rate": 0.25})
        );
        change_fault("point=xfs.reply&fail-rate=1", &faults).unwrap();
        assert_eq!(
            faults.list(),
            vec![
                (
                    "xfs.call".to_owned(),
                    FaultSpec {
                        delay_ms: 50,
                        fail_rate: 0.25
                    }
                ),
                (
                    "xfs.reply".to_owned(),
                    FaultSpec {
                        delay_ms: 0,
                        fail_rate: 1.0
                    }
                ),
            ]
        );
        change_fault("point=xfs.reply&clear=1", &faults).unwrap();
        assert_eq!(faults.list().len(), 1);

        for (bad, reason) in [
            ("", "missing point"),
            ("delay_ms=5", "missing point"),
            ("point=&delay_ms=5", "missing point"),
            ("point=a", "give delay_ms"),
            ("point=a&delay_ms=-1", "delay_ms `-1`"),
            ("point=a&delay_ms=1e3", "delay_ms `1e3`"),
            (
                "point=a&fail_rate=1",
                "unknown fault point `a`; known: xfs.call, xfs.call.<op>",
            ),
            ("point=xfs.call.nope&fail_rate=1", "unknown fault point"),
            (
                "point=http.request&delay_ms=60001",
                "over the most allowed, 60000 ms",
            ),
            (
                "point=http.request&fail_rate=2",
                "fail-rate must be between 0 and 1",
            ),
            (
                "point=http.request&fail_rate=NaN",
                "fail-rate must be between 0 and 1",
            ),
            ("point=a&fail_rate=x", "fail_rate `x`"),
            ("point=a&clear=yes", "clear `yes`"),
            ("point=a&clear=1&fail_rate=1", "takes no"),
            ("point=a&point=b&fail_rate=1", "given twice"),
            ("point=a&rate=1", "unknown parameter `rate`"),
            ("point=a%zz&rate=1", "bad percent escape"),
        ] {
            let err = change_fault(bad, &faults).unwrap_err();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        assert_eq!(faults.list().len(), 1, "a rejected request changes nothing");
    }
}
