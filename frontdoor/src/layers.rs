//! The HTTP layers around every front-door request, gathered in one place: the request id
//! (the client's sane `X-Request-Id`, else a fresh one; returned, logged, and carried as the XFS
//! trace), the `http.request` fault point, the security headers (a strict CSP unless a handler
//! set its own, nosniff, no referrer, no framing, no caching of private pages), metrics labelled
//! by route pattern, and one log line per request at info.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::{metrics, Ctx, RequestId};

/// `router` with every layer of this module around it.
pub fn wrap(router: Router<Arc<Ctx>>, ctx: Arc<Ctx>) -> Router<Arc<Ctx>> {
    router.layer(axum::middleware::from_fn_with_state(ctx, common))
}

/// The content security policy of every page, unless a handler set its own.
pub fn csp(login_origin: &str, remote_images: bool) -> String {
    let img = if remote_images {
        "'self' https: http:"
    } else {
        "'self'"
    };
    format!(
        "default-src 'none'; img-src {img}; style-src 'self'; form-action 'self' {login_origin}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// The path segments that name routes; any other segment is a parameter.
const ROUTE_WORDS: &[&str] = &[
    "api",
    "v1",
    "me",
    "folder",
    "folders",
    "message",
    "messages",
    "attachment",
    "attachments",
    "inline",
    "raw",
    "empty",
    "create",
    "rename",
    "delete",
    "move",
    "flags",
    "send",
    "compose",
    "search",
    "settings",
    "name",
    "password",
    "logout",
    "healthz",
    "static",
    "app.css",
];

/// A request's operation for metrics: the method and the path with every parameter replaced
/// (`GET /api/v1/messages/{id}`), so the label stays bounded whatever clients send.
pub fn operation(method: &axum::http::Method, path: &str) -> String {
    let method = match method.as_str() {
        m @ ("GET" | "POST" | "HEAD") => m,
        _ => "OTHER",
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if segments.len() > 6 {
        return format!("{method} other");
    }
    let route: Vec<&str> = segments
        .iter()
        .map(|s| match *s {
            w if ROUTE_WORDS.contains(&w) || w.is_empty() => w,
            p if p.bytes().all(|b| b.is_ascii_digit()) => "{id}",
            _ => "{name}",
        })
        .collect();
    format!("{method} /{}", route.join("/"))
}

/// The fault point of HTTP handling: a delay, or a 503 before the handler runs.
pub const FAULT_HTTP: &str = "http.request";

/// Every request: a request id (the client's sane `X-Request-Id`, else a fresh one; returned in
/// the answer's `X-Request-Id`, logged, and carried as the XFS trace), the `http.request` fault
/// point, security headers, no caching of private pages, metrics, and one log line at info.
async fn common(State(ctx): State<Arc<Ctx>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let _in_flight = metrics::HTTP.begin();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let kind = if path.starts_with("/api/") {
        "api"
    } else if path.starts_with("/static/") {
        "static"
    } else {
        "page"
    };
    let op = operation(&method, &path);
    let id = runtime::http::request_id(
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = match ctx.faults.inject(FAULT_HTTP).await {
        Ok(()) => next.run(req).await,
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                ),
                (axum::http::header::RETRY_AFTER, "1"),
            ],
            format!("{e}\n"),
        )
            .into_response(),
    };
    let h = resp.headers_mut();
    if !h.contains_key(CONTENT_SECURITY_POLICY) {
        if let Ok(v) = HeaderValue::from_str(&csp(&ctx.login_origin, false)) {
            h.insert(CONTENT_SECURITY_POLICY, v);
        }
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if kind != "static" && !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let elapsed = started.elapsed();
    metrics::REQUESTS.with_label_values(&[kind, class]).inc();
    metrics::REQUEST_SECONDS
        .with_label_values(&[kind])
        .observe(elapsed.as_secs_f64());
    let code = resp.status();
    let outcome = if status >= 400 {
        Err(code.as_str())
    } else {
        Ok(class)
    };
    metrics::HTTP.record(&op, outcome, elapsed);
    if status == 503 && resp.headers().contains_key(axum::http::header::RETRY_AFTER) {
        metrics::HTTP.shed.inc();
    }
    let ms = elapsed.as_secs_f64() * 1000.0;
    if kind != "static" && path != "/healthz" {
        tracing::info!(%method, %path, status, ms, request_id = %id, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_name_routes_not_parameters() {
        use axum::http::Method;
        for (method, path, op) in [
            (Method::GET, "/", "GET /"),
            (
                Method::GET,
                "/api/v1/messages/42",
                "GET /api/v1/messages/{id}",
            ),
            (
                Method::GET,
                "/api/v1/folders/Inbox/messages",
                "GET /api/v1/folders/{name}/messages",
            ),
            (
                Method::POST,
                "/api/v1/messages/move",
                "POST /api/v1/messages/move",
            ),
            (
                Method::GET,
                "/message/7/attachment/0",
                "GET /message/{id}/attachment/{id}",
            ),
            (Method::PUT, "/x", "OTHER /{name}"),
            (Method::GET, "/a/b/c/d/e/f/g", "GET other"),
        ] {
            assert_eq!(operation(&method, path), op);
        }
    }

    #[test]
    fn the_policy_blocks_remote_images_unless_asked() {
        let strict = csp("http://login.test", false);
        assert!(strict.contains("default-src 'none'"));
        assert!(strict.contains("img-src 'self';"));
        assert!(strict.contains("frame-ancestors 'none'"));
        assert!(strict.contains("base-uri 'none'"));
        assert!(strict.contains("form-action 'self' http://login.test"));
        assert!(csp("http://login.test", true).contains("img-src 'self' https: http:"));
    }
}
