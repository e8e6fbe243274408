//! The layers around every request of a web role (the front doors and login), in one place:
//!
//! - the request id: the client's sane `X-Request-Id`, else a fresh one, put in the request as
//!   the [`RequestId`] extension (handlers send it on as the XFS trace), returned in the answer's
//!   `X-Request-Id` and logged;
//! - the `http.request` fault point ([`FAULT_HTTP`]): a delay, or a `503` with `Retry-After`
//!   before the handler runs;
//! - a handler's panic answered as a `500` naming the request id (never a dropped connection),
//!   logged and counted in `{prefix}_http_panics_total`;
//! - security headers: the role's CSP unless the handler set its own, `nosniff`, `no-referrer`,
//!   `X-Frame-Options: DENY`, and `Cache-Control: no-store` unless the handler set one or the
//!   path is static ([`STATIC_PREFIX`]);
//! - metrics labelled by the matched route pattern (axum's [`MatchedPath`], e.g.
//!   `GET /api/v1/messages/{id}`; a request no route matched is `GET unmatched`), so labels stay
//!   bounded whatever clients send;
//! - one log line per request at info, except static files and `/healthz`.
//!
//! A role keeps its [`HttpMetrics`] in a static and wraps its router once with
//! [`Layers::wrap`] (after every route and the fallback are added: axum applies a layer to the
//! routes that exist).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, RETRY_AFTER,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::FutureExt as _;
use prometheus::{HistogramVec, IntCounter, IntCounterVec};

use super::{request_id, RequestId};
use crate::faults::Faults;
use crate::metrics::{counter_vec, histogram_vec, int_counter, Ops};

/// The fault point of HTTP handling: a delay, or a 503 before the handler runs.
pub const FAULT_HTTP: &str = "http.request";
/// Paths under this prefix are static files: cacheable, and not logged.
pub const STATIC_PREFIX: &str = "/static/";
/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request metrics of a web role, under its prefix (`frontdoor`, `login`):
///
/// - `{prefix}_http_requests_total{op,outcome}`, `{prefix}_http_errors_total{op,kind}`,
///   `{prefix}_http_request_seconds{op}`, `{prefix}_http_in_flight`: the per-operation set
///   ([`Ops`]); `op` is the method and the matched route pattern, `outcome` the status class, or
///   the status code from 400 on;
/// - `{prefix}_http_shed_total`: answered `503` or `429` with `Retry-After` (the client is asked
///   to come back: a store or the index unavailable, a throttle, the fault point);
/// - `{prefix}_requests_total{kind,status}` and `{prefix}_request_seconds{kind}`: by kind (`page`,
///   `api`, `static`) and status class;
/// - `{prefix}_http_panics_total`: handlers that panicked (answered `500`).
///
/// Keep it in a static, like any metric.
pub struct HttpMetrics {
    pub ops: Ops,
    pub requests: IntCounterVec,
    pub seconds: HistogramVec,
    pub panics: IntCounter,
}

impl HttpMetrics {
    /// Register the metrics under `prefix`. Panics on an invalid or already registered prefix.
    pub fn new(prefix: &str) -> HttpMetrics {
        HttpMetrics {
            ops: Ops::new(&format!("{prefix}_http"), "HTTP requests"),
            requests: counter_vec(
                &format!("{prefix}_requests_total"),
                "HTTP requests by kind (page, api, static) and status class",
                &["kind", "status"],
            ),
            seconds: histogram_vec(
                &format!("{prefix}_request_seconds"),
                "time to answer an HTTP request, by kind (page, api, static)",
                &["kind"],
            ),
            panics: int_counter(
                &format!("{prefix}_http_panics_total"),
                "HTTP handlers that panicked (answered 500)",
            ),
        }
    }
}

/// The layer stack of one web role: its metrics, its fault points and its default CSP.
#[derive(Clone)]
pub struct Layers(Arc<Inner>);

struct Inner {
    metrics: &'static HttpMetrics,
    faults: Arc<Faults>,
    csp: HeaderValue,
}

impl Layers {
    /// `csp` is the policy of every answer whose handler set none.
    pub fn new(metrics: &'static HttpMetrics, faults: Arc<Faults>, csp: HeaderValue) -> Layers {
        Layers(Arc::new(Inner {
            metrics,
            faults,
            csp,
        }))
    }

    /// `router` with every layer of this module around each of its routes and its fallback.
    /// Call it after the last route is added.
    pub fn wrap<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            every_request,
        ))
    }
}

/// What a request is for the `kind` label.
fn kind(path: &str) -> &'static str {
    if path.starts_with("/api/") {
        "api"
    } else if path.starts_with(STATIC_PREFIX) {
        "static"
    } else {
        "page"
    }
}

/// A request's operation for metrics: the method (GET, POST, HEAD, else OTHER) and the route
/// pattern that matched it, or [`UNMATCHED`].
pub fn operation(method: &Method, route: Option<&str>) -> String {
    let method = match method.as_str() {
        m @ ("GET" | "POST" | "HEAD") => m,
        _ => "OTHER",
    };
    format!("{method} {}", route.unwrap_or(UNMATCHED))
}

/// A status's class label (`2xx`, ...).
fn class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

async fn every_request(State(layers): State<Layers>, mut req: Request, next: Next) -> Response {
    let l = &layers.0;
    let started = Instant::now();
    let _in_flight = l.metrics.ops.begin();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let kind = kind(&path);
    let op = operation(
        &method,
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let id = request_id(
        req.headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(RequestId(id.clone()));

    let mut resp = match l.faults.inject(FAULT_HTTP).await {
        Ok(()) => match AssertUnwindSafe(next.run(req)).catch_unwind().await {
            Ok(resp) => resp,
            Err(panic) => {
                l.metrics.panics.inc();
                tracing::error!(%method, %path, request_id = %id, panic = panic_text(&*panic),
                    "handler panicked");
                panic_answer(kind, &id)
            }
        },
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8"),
                (RETRY_AFTER, "1"),
            ],
            format!("{e}\n"),
        )
            .into_response(),
    };

    let h = resp.headers_mut();
    if !h.contains_key(CONTENT_SECURITY_POLICY) {
        h.insert(CONTENT_SECURITY_POLICY, l.csp.clone());
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if kind != "static" && !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(X_REQUEST_ID, v);
    }

    let status = resp.status();
    let elapsed = started.elapsed();
    record(l.metrics, kind, &op, &resp, elapsed);
    if kind != "static" && path != "/healthz" {
        let ms = elapsed.as_secs_f64() * 1000.0;
        tracing::info!(%method, %path, status = status.as_u16(), ms, request_id = %id, "request");
    }
    resp
}

fn record(m: &HttpMetrics, kind: &str, op: &str, resp: &Response, elapsed: Duration) {
    let status = resp.status();
    let class = class(status);
    m.requests.with_label_values(&[kind, class]).inc();
    m.seconds
        .with_label_values(&[kind])
        .observe(elapsed.as_secs_f64());
    let outcome = if status.as_u16() >= 400 {
        Err(status.as_str())
    } else {
        Ok(class)
    };
    m.ops.record(op, outcome, elapsed);
    let asks_to_return =
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
    if asks_to_return && resp.headers().contains_key(RETRY_AFTER) {
        m.ops.shed.inc();
    }
}

/// The message of a panic, when it has one.
fn panic_text(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// The answer to a request whose handler panicked: JSON under `/api/`, plain text elsewhere,
/// naming the request id so a report can be matched with the log.
fn panic_answer(kind: &str, id: &str) -> Response {
    let status = StatusCode::INTERNAL_SERVER_ERROR;
    if kind == "api" {
        let body = serde_json::json!({ "error": "internal", "request_id": id });
        return (status, axum::Json(body)).into_response();
    }
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "Something went wrong on our side. Please try again; if it keeps happening, \
             quote request id {id}.\n"
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;
    use crate::faults::FaultSpec;

    const CSP: &str = "default-src 'none'";

    /// A router whose handlers say what the layers gave them, through `metrics`.
    fn app(metrics: &'static HttpMetrics, faults: Arc<Faults>) -> Router {
        let api = Router::new().route("/messages/{id}", get(|| async { "message" }));
        let routes = Router::new()
            .route(
                "/id",
                get(|axum::Extension(RequestId(id)): axum::Extension<RequestId>| async move { id }),
            )
            .route(
                "/own",
                get(|| async {
                    (
                        [
                            (CONTENT_SECURITY_POLICY, "sandbox"),
                            (CACHE_CONTROL, "private, max-age=60"),
                        ],
                        "own",
                    )
                }),
            )
            .route("/static/app.css", get(|| async { "body {}" }))
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/busy",
                get(|| async { (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "5")], "busy") }),
            )
            .route("/boom", get(boom))
            .nest("/api/v1", api)
            .route("/api/v1/boom", get(boom))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found") });
        Layers::new(metrics, faults, HeaderValue::from_static(CSP)).wrap(routes)
    }

    async fn boom() -> &'static str {
        panic!("a handler bug")
    }

    async fn get_path(app: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn requests(m: &HttpMetrics, op: &str, outcome: &str) -> u64 {
        m.ops.requests.with_label_values(&[op, outcome]).get()
    }

    #[tokio::test]
    async fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_layers_id"));
        let app = app(&M, Arc::new(Faults::new()));
        let resp = get_path(&app, "/id", &[("x-request-id", "abc-123")]).await;
        assert_eq!(resp.headers()["x-request-id"], "abc-123");
        assert_eq!(text(resp).await, "abc-123", "the handler sees the same id");

        let resp = get_path(&app, "/id", &[("x-request-id", "no spaces")]).await;
        let sent = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(sent.len(), 16, "{sent}");
        assert_eq!(text(resp).await, sent);
    }

    #[tokio::test]
    async fn the_fault_point_answers_503_with_retry_after_before_the_handler() {
        static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_layers_fault"));
        let faults = Arc::new(Faults::new());
        let app = app(&M, faults.clone());
        faults.set(
            FAULT_HTTP,
            FaultSpec {
                delay_ms: 0,
                fail_rate: 1.0,
            },
        );
        let resp = get_path(&app, "/id", &[]).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(resp.headers()[X_FRAME_OPTIONS], "DENY");
        assert_eq!(text(resp).await, "injected fault at http.request\n");
        assert_eq!(M.ops.shed.get(), 1);
        assert_eq!(requests(&M, "GET /id", "503"), 1);

        faults.clear(FAULT_HTTP);
        let resp = get_path(&app, "/id", &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn security_headers_unless_the_handler_chose_its_own() {
        static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_layers_headers"));
        let app = app(&M, Arc::new(Faults::new()));
        let resp = get_path(&app, "/id", &[]).await;
        let h = resp.headers();
        assert_eq!(h[CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[CACHE_CONTROL], "no-store");

        let resp = get_path(&app, "/own", &[]).await;
        assert_eq!(resp.headers()[CONTENT_SECURITY_POLICY], "sandbox");
        assert_eq!(resp.headers()[CACHE_CONTROL], "private, max-age=60");

        let resp = get_path(&app, "/static/app.css", &[]).await;
        assert!(
            !resp.headers().contains_key(CACHE_CONTROL),
            "static files may be cached"
        );
        assert_eq!(resp.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");

        let resp = get_path(&app, "/nope", &[]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn metrics_are_labelled_by_the_matched_route_pattern() {
        static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_layers_routes"));
        let app = app(&M, Arc::new(Faults::new()));
        for id in ["1", "2", "%3Cscript%3E", "%2e%2e"] {
            let resp = get_path(&app, &format!("/api/v1/messages/{id}"), &[]).await;
            assert_eq!(resp.status(), StatusCode::OK);
        }
        for path in ["/nope", "/a/b/c/d/e/f/g/h", "/api/v1/nope"] {
            let resp = get_path(&app, path, &[]).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        }
        let resp = get_path(&app, "/busy", &[]).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        get_path(&app, "/static/app.css", &[]).await;

        assert_eq!(requests(&M, "GET /api/v1/messages/{id}", "2xx"), 4);
        assert_eq!(requests(&M, "GET unmatched", "404"), 3);
        assert_eq!(
            M.ops
                .errors
                .with_label_values(&["GET unmatched", "404"])
                .get(),
            3
        );
        assert_eq!(requests(&M, "GET /busy", "429"), 1);
        assert_eq!(
            M.ops.shed.get(),
            1,
            "a 429 with Retry-After asks the client to return"
        );
        assert_eq!(M.requests.with_label_values(&["api", "2xx"]).get(), 4);
        assert_eq!(M.requests.with_label_values(&["api", "4xx"]).get(), 1);
        assert_eq!(M.requests.with_label_values(&["page", "4xx"]).get(), 3);
        assert_eq!(M.requests.with_label_values(&["static", "2xx"]).get(), 1);
        assert_eq!(M.seconds.with_label_values(&["api"]).get_sample_count(), 5);
        assert_eq!(M.ops.in_flight.get(), 0);

        let text = crate::metrics::render();
        let ops: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("t_layers_routes_http_requests_total{"))
            .collect();
        assert_eq!(ops.len(), 4, "bounded labels: {ops:?}");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_naming_the_request_and_counted() {
        static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_layers_panic"));
        let app = app(&M, Arc::new(Faults::new()));
        let resp = get_path(&app, "/boom", &[("x-request-id", "req-7")]).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["x-request-id"], "req-7");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(text(resp).await.contains("request id req-7"));
        assert_eq!(M.panics.get(), 1);
        assert_eq!(requests(&M, "GET /boom", "500"), 1);

        let resp = get_path(&app, "/api/v1/boom", &[("x-request-id", "req-8")]).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "internal", "request_id": "req-8"})
        );
        assert_eq!(M.panics.get(), 2);
        assert_eq!(
            M.ops.in_flight.get(),
            0,
            "the in-flight guard is released after a panic"
        );

        // The router still serves.
        assert_eq!(get_path(&app, "/id", &[]).await.status(), StatusCode::OK);
    }

    #[test]
    fn operations_name_the_method_and_the_route() {
        assert_eq!(operation(&Method::GET, Some("/")), "GET /");
        assert_eq!(
            operation(&Method::POST, Some("/api/v1/messages/move")),
            "POST /api/v1/messages/move"
        );
        assert_eq!(operation(&Method::PUT, Some("/x")), "OTHER /x");
        assert_eq!(operation(&Method::GET, None), "GET unmatched");
    }
}
