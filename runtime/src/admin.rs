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
//! Bad parameters get 400 with the reason, a known path with the wrong method 405, anything else 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::Validate as _;
use crate::faults::{FaultSpec, Faults};
use crate::health::Health;
use crate::shutdown::Shutdown;

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
/// connections a moment to finish, and return.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    faults: Arc<Faults>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
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
            service_fn(move |req: Request<Incoming>| {
                let response = route(&req, &health, &faults);
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
    spec.validate()?;
    faults.set(&point, spec);
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

    #[test]
    fn fault_changes() {
        let faults = Faults::new();
        let set = change_fault("point=x.y&delay_ms=50&fail_rate=0.25", &faults).unwrap();
        assert_eq!(
            set,
            json!({"point": "x.y", "delay_ms": 50, "fail_rate": 0.25})
        );
        change_fault("point=z&fail-rate=1", &faults).unwrap();
        assert_eq!(
            faults.list(),
            vec![
                (
                    "x.y".to_owned(),
                    FaultSpec {
                        delay_ms: 50,
                        fail_rate: 0.25
                    }
                ),
                (
                    "z".to_owned(),
                    FaultSpec {
                        delay_ms: 0,
                        fail_rate: 1.0
                    }
                ),
            ]
        );
        change_fault("point=z&clear=1", &faults).unwrap();
        assert_eq!(faults.list().len(), 1);

        for (bad, reason) in [
            ("", "missing point"),
            ("delay_ms=5", "missing point"),
            ("point=&delay_ms=5", "missing point"),
            ("point=a", "give delay_ms"),
            ("point=a&delay_ms=-1", "delay_ms `-1`"),
            ("point=a&delay_ms=1e3", "delay_ms `1e3`"),
            ("point=a&fail_rate=2", "fail-rate must be between 0 and 1"),
            ("point=a&fail_rate=NaN", "fail-rate must be between 0 and 1"),
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
