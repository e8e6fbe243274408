//! The admin server over real TCP: health states, metrics, fault control, errors and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use runtime::admission::Admission;
use runtime::faults::{FaultSpec, Faults};
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

/// One HTTP/1.1 request on a fresh connection, read to the end.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
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

#[tokio::test]
async fn admin_endpoints_and_shutdown() {
    REQUESTS.with_label_values(&["probe"]).inc();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Health::new("testrole");
    health.set_info("store", Value::from("s1"));
    let faults = Arc::new(Faults::new());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(runtime::admin::serve(
        listener,
        Arc::clone(&health),
        Arc::clone(&faults),
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
        "/faults?point=ustore.deliver&delay_ms=25&fail_rate=0.5",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected = FaultSpec {
        delay_ms: 25,
        fail_rate: 0.5,
    };
    assert_eq!(faults.list(), vec![("ustore.deliver".to_owned(), expected)]);
    let reply = request(addr, "GET", "/faults").await;
    assert_eq!(
        reply.json(),
        serde_json::json!([{"point": "ustore.deliver", "delay_ms": 25, "fail_rate": 0.5}])
    );

    let reply = request(addr, "POST", "/faults?point=ustore.deliver&fail_rate=3").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("fail-rate must be between 0 and 1"),
        "{}",
        reply.body
    );
    let reply = request(addr, "POST", "/faults?delay_ms=1").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("missing point"), "{}", reply.body);
    assert_eq!(faults.list(), vec![("ustore.deliver".to_owned(), expected)]);

    let reply = request(addr, "POST", "/faults?point=ustore.deliver&clear=1").await;
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
            shutdown,
        ),
    )
    .await
    .expect("serve returns");
    assert!(result.is_ok());
}
