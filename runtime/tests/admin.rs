//! The admin server over real TCP: health states, metrics, fault control, errors and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use runtime::admin::Settings;
use runtime::admission::Admission;
use runtime::config::AdminConfig;
use runtime::faults::{FaultSpec, Faults, Rules};
use runtime::health::Health;
use runtime::shutdown::Shutdown;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

static REQUESTS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    runtime::metrics::counter_vec(
        "admin_test_requests_total",
        "Requests seen by the admin test.",
        &["kind"],
    )
});

/// Bound for things that should happen at once; only reached if the server hangs.
const HANG: Duration = Duration::from_secs(20);

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// The operator secret of the test's admin port.
const SECRET: &str = "operator-secret-for-the-test";

/// One HTTP/1.1 request on a fresh connection, read to the end; as the operator would send it
/// (the port's own address in `Host`, and the secret).
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let host = format!("Host: {addr}");
    let auth = format!("Authorization: Bearer {SECRET}");
    request_with(addr, method, target, &[&host, &auth]).await
}

/// One request with exactly these header lines (besides `Connection` and `Content-Length`).
async fn request_with(addr: SocketAddr, method: &str, target: &str, headers: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    Reply {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// `admin_refused_total{reason}` now.
fn refused(reason: &str) -> u64 {
    let text = runtime::metrics::render();
    let sample = format!("admin_refused_total{{reason=\"{reason}\"}}");
    runtime::metrics::sample(&text, &sample).unwrap_or(0.0) as u64
}

#[tokio::test]
async fn admin_endpoints_and_shutdown() {
    REQUESTS.with_label_values(&["probe"]).inc();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Health::new("testrole");
    health.set_info("store", Value::from("s1"));
    let faults = Arc::new(Faults::with_rules(Rules::for_role("smtp-in", 10_000)));
    let shutdown = Shutdown::new();
    let settings = Settings::new(Some(SECRET), &AdminConfig::default());
    let server = tokio::spawn(runtime::admin::serve(
        listener,
        Arc::clone(&health),
        Arc::clone(&faults),
        Arc::new(settings),
        shutdown.clone(),
    ));

    // Starting: 503, with the report as the body.
    let reply = request(addr, "GET", "/healthz").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.headers.contains("content-type: application/json"),
        "{}",
        reply.headers
    );
    let report = reply.json();
    assert_eq!(report["status"], "starting");
    assert_eq!(report["role"], "testrole");
    assert_eq!(report["version"], runtime::VERSION);
    assert_eq!(report["pid"], std::process::id());
    assert_eq!(report["store"], "s1");

    health.set_ready();
    let reply = request(addr, "GET", "/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");

    // Overloaded still answers 200: it is serving, just shedding.
    let admission = Admission::new(1);
    health.set_admission(Arc::clone(&admission));
    let permit = admission.try_acquire().expect("first permit");
    assert!(admission.try_acquire().is_none());
    let reply = request(addr, "GET", "/healthz").await;
    assert_eq!(reply.status, 200);
    let report = reply.json();
    assert_eq!(report["status"], "overloaded");
    assert_eq!(report["in_flight"], 1);
    assert_eq!(report["max_in_flight"], 1);
    assert_eq!(report["shed_total"], 1);
    drop(permit);

    // Metrics.
    let reply = request(addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        reply.headers
    );
    assert!(
        reply
            .body
            .contains("admin_test_requests_total{kind=\"probe\"} 1"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("admission_shed_total"),
        "{}",
        reply.body
    );

    // Faults: set, seen through GET and the shared Faults, then cleared.
    let reply = request(addr, "GET", "/faults").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!([]));

    let reply = request(
        addr,
        "POST",
        "/faults?point=smtp.deliver&delay_ms=25&fail_rate=0.5",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected = FaultSpec {
        delay_ms: 25,
        fail_rate: 0.5,
    };
    assert_eq!(faults.list(), vec![("smtp.deliver".to_owned(), expected)]);
    let reply = request(addr, "GET", "/faults").await;
    assert_eq!(
        reply.json(),
        serde_json::json!([{"point": "smtp.deliver", "delay_ms": 25, "fail_rate": 0.5}])
    );

    let reply = request(addr, "POST", "/faults?point=smtp.deliver&fail_rate=3").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("fail-rate must be between 0 and 1"),
        "{}",
        reply.body
    );
    let reply = request(addr, "POST", "/faults?delay_ms=1").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("missing point"), "{}", reply.body);
    let reply = request(addr, "POST", "/faults?point=ustore.disk.write&fail_rate=1").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .body
            .contains("known: xfs.call, xfs.call.<op>, xfs.reply, xfs.reply.<op>, smtp.deliver"),
        "{}",
        reply.body
    );
    let reply = request(addr, "POST", "/faults?point=smtp.deliver&delay_ms=10001").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("over the most allowed"),
        "{}",
        reply.body
    );

    // A change without the secret, for another host, or from a web page is refused and counted;
    // reads stay open to anyone.
    let host = &format!("Host: {addr}") as &str;
    let local = &format!("Host: localhost:{}", addr.port()) as &str;
    let auth = &format!("Authorization: Bearer {SECRET}") as &str;
    let set = "/faults?point=smtp.deliver&fail_rate=1";
    let before = |reason: &str| refused(reason);
    let (hosts, origins, creds) = (before("host"), before("origin"), before("credential"));
    for (headers, status) in [
        (vec![host], 401),
        (vec![host, "Authorization: Bearer wrong"], 401),
        (vec![host, "Authorization: Basic b3A6c2VjcmV0"], 401),
        (vec!["Host: attacker.example:1234", auth], 421),
        (vec![auth], 421),
        (vec![host, auth, "Origin: http://attacker.example"], 403),
        (vec![local, auth, "Origin: null"], 403),
    ] {
        let reply = request_with(addr, "POST", set, &headers).await;
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.body);
    }
    assert_eq!(
        (
            refused("host") - hosts,
            refused("origin") - origins,
            refused("credential") - creds
        ),
        (2, 2, 3)
    );
    let origin = &format!("Origin: http://localhost:{}", addr.port()) as &str;
    let clear = "/faults?point=smtp.deliver&clear=1";
    let reply = request_with(addr, "POST", clear, &[local, auth, origin]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(request_with(addr, "GET", "/metrics", &[]).await.status, 200);
    assert_eq!(
        request_with(addr, "GET", "/faults", &[host]).await.status,
        200
    );
    let reply = request(
        addr,
        "POST",
        "/faults?point=smtp.deliver&delay_ms=25&fail_rate=0.5",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(faults.list(), vec![("smtp.deliver".to_owned(), expected)]);

    let reply = request(addr, "POST", "/faults?point=smtp.deliver&clear=1").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(faults.list().is_empty());

    // Unknown paths and wrong methods.
    assert_eq!(request(addr, "GET", "/nope").await.status, 404);
    assert_eq!(request(addr, "GET", "/").await.status, 404);
    assert_eq!(request(addr, "POST", "/healthz/extra").await.status, 404);
    let reply = request(addr, "DELETE", "/faults").await;
    assert_eq!(reply.status, 405);
    assert!(
        reply.headers.contains("allow: get, post"),
        "{}",
        reply.headers
    );
    assert_eq!(request(addr, "POST", "/metrics").await.status, 405);

    // Garbage instead of HTTP gets an error reply or a closed connection, and the server goes on.
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"\x00\x01 not http\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(HANG, junk.read_to_end(&mut sink)).await;
    assert_eq!(request(addr, "GET", "/healthz").await.status, 200);

    // Draining: 503 again.
    health.set_draining();
    let reply = request(addr, "GET", "/healthz").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["status"], "draining");

    // An idle keep-alive connection does not hold up shutdown.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 503");

    shutdown.trigger();
    let result = tokio::time::timeout(HANG, server)
        .await
        .expect("serve returns after shutdown")
        .expect("serve did not panic");
    assert!(result.is_ok(), "{result:?}");

    // The idle connection was closed and the port no longer accepts.
    let mut rest = Vec::new();
    tokio::time::timeout(HANG, idle.read_to_end(&mut rest))
        .await
        .expect("idle connection closed")
        .expect("read");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn serve_returns_at_once_if_already_triggered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let result = tokio::time::timeout(
        HANG,
        runtime::admin::serve(
            listener,
            Health::new("x"),
            Arc::new(Faults::new()),
            Arc::new(Settings::closed()),
            shutdown,
        ),
    )
    .await
    .expect("serve returns");
    assert!(result.is_ok());
}
