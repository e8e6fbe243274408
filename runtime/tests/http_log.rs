//! The request log line of the web layers (`runtime::http::layers`): one at info per request,
//! none for static files and `/healthz`. Alone in its test binary, so no other test's events
//! race the scoped subscriber.

use std::sync::{Arc, LazyLock, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::routing::get;
use axum::Router;
use runtime::faults::Faults;
use runtime::http::layers::{HttpMetrics, Layers};
use tower::ServiceExt as _;

/// Log lines written while the test's subscriber is the thread's default.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn one_log_line_per_request_but_not_for_static_files_or_health() {
    static M: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("t_log"));
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test's runtime is current-thread: every poll happens on this thread.
    let _default = tracing::subscriber::set_default(subscriber);
    let routes = Router::new()
        .route("/page", get(|| async { "page" }))
        .route("/static/app.css", get(|| async { "body {}" }))
        .route("/healthz", get(|| async { "ok" }));
    let csp = HeaderValue::from_static("default-src 'none'");
    let app = Layers::new(&M, Arc::new(Faults::new()), csp).wrap(routes);
    for (path, id) in [
        ("/page", "logged-1"),
        ("/static/app.css", "logged-2"),
        ("/healthz", "logged-3"),
    ] {
        let req = Request::builder()
            .uri(path)
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("request_id")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    for field in [
        "INFO",
        "request_id=logged-1",
        "path=/page",
        "status=200",
        "method=GET",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
}
