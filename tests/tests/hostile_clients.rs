//! Hostile clients against a whole HCU (`mailctl up`: 3 mserv, 2 ustore, 2 frontdoor, 1 login,
//! 1 smtp-in, 2 smtp-out and the supervisor). Every listening port, each process's service port
//! and admin port (an outbound worker has only the latter) and the supervisor's admin port (21
//! in all), is attacked by clients that hold no
//! credentials and come from 127.0.0.2 to 127.0.0.250:
//!
//! - garbage: 64 KiB of random bytes, an HTTP request line of 1 MiB, a TLS ClientHello record
//!   full of garbage, a 10 MiB line with no CRLF (then its CRLF), a header block that never ends
//!   (a header line every 50 ms), and to the mutual-TLS ports a well-formed TLS client with no
//!   certificate;
//! - length bombs: an XFS frame header claiming 4 GiB, `Content-Length: 100000000000` with a
//!   body trickling in, a chunked body whose first chunk claims 2^63 bytes, and to smtp-in a
//!   message whose header block runs 4 MiB past the advertised size limit;
//! - 5,000 idle connections spread evenly over every port and over the 249 source addresses,
//!   held 20 s (one the server closes is opened again at once, as an attacker would).
//!
//! All the while a legitimate user signs in through login's JSON API, reads the Inbox through
//! both front doors' JSON API with the Bearer token it got, and receives mail through smtp-in;
//! and an operator reads every admin port's `/healthz` each second, allowing the 2 s that
//! `mailctl status` does. The test passes when:
//!
//! - every attack is answered with an error (HTTP 4xx/5xx, an SMTP 4xx/5xx reply, a TLS alert) or
//!   a close, within [`ATTACK_LIMIT`] (the longest bound a server sets is login's 30 s request
//!   limit); the 10 MiB line is answered `500` (smtp-in stayed in step) and the oversized
//!   message `552` or `421`;
//! - for each kind of call (Inbox read, delivery, sign-in, admin health) at least 95% succeeded
//!   and no run of failures lasted longer than [`MAX_FAILURE_RUN`] (5 s), and every message
//!   smtp-in answered `250` is in the Inbox;
//! - no process restarted (the same pids, the supervisor's restart counts unchanged) and every
//!   one is healthy afterwards;
//! - no process's resident memory (VmRSS from `/proc/<pid>/status`) grew by more than
//!   [`MAX_RSS_GROWTH`] (128 MiB) over its figure before the attacks, neither at the peak while
//!   the 5,000 are held nor afterwards: 26 KiB per idle connection even if all 5,000 had reached
//!   one process, while each process gets about 530 of them (its two ports). The figures are
//!   printed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use megamail_tests::http_get;
use megamail_tests::support::mail::send_raw;
use megamail_tests::up::{addr, mailctl, ok, request_session, url_addr, ApiSession, Up};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Longest any attack may go unanswered.
const ATTACK_LIMIT: Duration = Duration::from_secs(45);
/// Idle connections held at once, over every port.
const IDLE_CONNECTIONS: usize = 5_000;
/// How long they are held.
const HOLD: Duration = Duration::from_secs(20);
/// Longest run of failures the legitimate user may see, from its first failed call to the next
/// call that succeeds.
const MAX_FAILURE_RUN: Duration = Duration::from_secs(5);
/// Smallest share of the legitimate user's calls of each kind that must succeed.
const MIN_SUCCESS: f64 = 0.95;
/// Most any process's resident memory may grow over its figure before the attacks.
const MAX_RSS_GROWTH: u64 = 128 << 20;
/// Source addresses the hostile clients connect from: 127.0.0.2 ..= 127.0.0.250.
const SOURCES: usize = 249;

const USER: &str = "legit@megamail.test";
const PASSWORD: &str = "legit-password";
const VICTIM: &str = "victim@megamail.test";

/// What a port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    Http,
    Smtp,
    /// Mutual TLS, then the framed protocol (a store's XFS, the index's).
    Tls(xfs::Role),
}

#[derive(Clone, Debug)]
struct Port {
    what: String,
    addr: SocketAddr,
    speaks: Speaks,
    /// A path that takes a body (a POST), for the length bombs.
    post: &'static str,
}

/// Every listening port of the HCU, from its `endpoints.json`.
fn ports(e: &Value) -> Vec<Port> {
    let admin = |what: String, addr| Port {
        what,
        addr,
        speaks: Speaks::Http,
        post: "/faults",
    };
    let mut ports = vec![admin(
        "mailctl-up admin".into(),
        addr(&e["supervisor_admin"]),
    )];
    for p in e["processes"].as_array().expect("processes") {
        let name = p["name"].as_str().expect("name");
        let role = p["role"].as_str().expect("role");
        if role == "smtp-out" {
            // An outbound worker serves nothing but its admin port.
            ports.push(admin(format!("{name} admin"), addr(&p["admin"])));
            continue;
        }
        let (speaks, post) = match role {
            "mserv" => (Speaks::Tls(xfs::Role::Mserv), "/"),
            "ustore" => (Speaks::Tls(xfs::Role::Ustore), "/"),
            "smtp-in" => (Speaks::Smtp, "/"),
            "login" => (Speaks::Http, "/api/v1/session"),
            "frontdoor" => (Speaks::Http, "/api/v1/send"),
            other => panic!("a role this test does not know: {other}"),
        };
        ports.push(Port {
            what: format!("{name} service"),
            addr: addr(&p["listen"]),
            speaks,
            post,
        });
        ports.push(admin(format!("{name} admin"), addr(&p["admin"])));
    }
    ports
}

/// The `i`-th hostile source address.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8))
}

/// A connection to `to` from the `i`-th hostile source address.
async fn connect_from(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source(i), 0))?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

// ---------------------------------------------------------------------------------------------
// Garbage and length bombs.

/// How an attack ended.
#[derive(Debug)]
enum Verdict {
    /// The server closed (or reset) the connection.
    Closed,
    /// The server answered with an error.
    Refused(String),
}

/// What an attack writes: `opening` at once, then either `trickle` every `every` until the
/// server gives its verdict, or `closing` once.
struct Script {
    opening: Vec<u8>,
    trickle: Option<(Vec<u8>, Duration)>,
    closing: Vec<u8>,
}

impl Script {
    fn once(opening: Vec<u8>, closing: &[u8]) -> Script {
        Script {
            opening,
            trickle: None,
            closing: closing.to_vec(),
        }
    }

    fn trickling(opening: Vec<u8>, chunk: Vec<u8>, every: Duration) -> Script {
        Script {
            opening,
            trickle: Some((chunk, every)),
            closing: Vec::new(),
        }
    }
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// The attacks every port gets, by name.
fn scripts(port: &Port) -> Vec<(&'static str, Script)> {
    let host = port.addr.to_string();
    let post = |framing: &str| {
        format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n",
            port.post
        )
        .into_bytes()
    };
    let slow_body = b"a".repeat(512);
    let every = Duration::from_millis(100);

    let mut request_line = b"GET /".to_vec();
    request_line.extend(b"a".repeat(1 << 20));
    request_line.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");

    // A TLS handshake record (type 22, version 3.1, 16 KiB) holding a "ClientHello" of garbage.
    let mut hello = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    hello.extend(random_bytes(2, 0x3ffc));

    let mut long_line = b"EHLO ".to_vec();
    long_line.extend(b"x".repeat(10 << 20));

    let mut four_gib = vec![0xff, 0xff, 0xff, 0xff];
    four_gib.extend_from_slice(&crc32fast::hash(b"").to_be_bytes());
    four_gib.extend_from_slice(b"then a few bytes");

    let mut chunked = post("Transfer-Encoding: chunked");
    chunked.extend_from_slice(b"7fffffffffffffff\r\n");

    vec![
        (
            "64 KiB of random bytes",
            Script::once(random_bytes(1, 64 << 10), b"\r\n\r\n"),
        ),
        (
            "an HTTP request line of 1 MiB",
            Script::once(request_line, b""),
        ),
        (
            "a TLS ClientHello record of garbage",
            Script::once(hello, b"\r\n"),
        ),
        (
            "a 10 MiB line without CRLF, then its CRLF",
            Script::once(long_line, b"\r\n"),
        ),
        (
            "a header block that never ends",
            Script::trickling(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\n").into_bytes(),
                format!("X-Never-Ending: {}\r\n", "b".repeat(80)).into_bytes(),
                Duration::from_millis(50),
            ),
        ),
        (
            "an XFS frame header claiming 4 GiB",
            Script::once(four_gib, b"\r\n"),
        ),
        (
            "Content-Length: 100000000000 with a body trickling in",
            Script::trickling(
                post("Content-Length: 100000000000"),
                slow_body.clone(),
                every,
            ),
        ),
        (
            "a chunked body whose first chunk claims 2^63 bytes",
            Script::trickling(chunked, slow_body, every),
        ),
    ]
}

/// Whether what the server sent so far is its verdict: `Ok(Some)` for an error answer,
/// `Ok(None)` to read on, `Err` for an answer a hostile client must never get.
fn error_answer(seen: &[u8], speaks: Speaks) -> Result<Option<Verdict>, String> {
    let text = String::from_utf8_lossy(seen);
    match speaks {
        Speaks::Http => {
            let Some((status_line, _)) = text.split_once("\r\n") else {
                return Ok(None);
            };
            let code: u16 = Some(status_line)
                .filter(|l| l.starts_with("HTTP/1."))
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
            if (400..600).contains(&code) {
                Ok(Some(Verdict::Refused(status_line.to_string())))
            } else {
                Err(format!("answered {status_line:?}"))
            }
        }
        Speaks::Smtp => {
            // Complete lines only; the greeting and any 2xx/3xx reply are read past.
            let complete = text.rsplit_once("\r\n").map_or("", |(lines, _)| lines);
            Ok(complete
                .split("\r\n")
                .find(|l| l.starts_with('4') || l.starts_with('5'))
                .map(|l| Verdict::Refused(l.chars().take(60).collect())))
        }
        Speaks::Tls(_) => match seen.first() {
            None => Ok(None),
            Some(0x15) => Ok(Some(Verdict::Refused("a TLS alert".into()))),
            Some(b) => Err(format!("a TLS record of type {b:#04x}")),
        },
    }
}

/// Read until the server closes the connection or answers with an error.
async fn judge(mut rd: impl AsyncRead + Unpin, speaks: Speaks) -> Result<Verdict, String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(Verdict::Closed),
            Ok(n) => {
                // The verdict is at the start; keep no more than a few KiB of it.
                let room = (8usize << 10).saturating_sub(seen.len());
                seen.extend_from_slice(&buf[..n.min(room)]);
                if let Some(v) = error_answer(&seen, speaks)? {
                    return Ok(v);
                }
            }
        }
    }
}

/// Write `script` (stopping quietly once the server has closed), then wait forever.
async fn write_script(mut wr: impl AsyncWrite + Unpin, script: &Script) {
    let _ = async {
        wr.write_all(&script.opening).await?;
        match &script.trickle {
            Some((chunk, every)) => loop {
                tokio::time::sleep(*every).await;
                wr.write_all(chunk).await?;
            },
            None => wr.write_all(&script.closing).await,
        }
    }
    .await;
    std::future::pending::<()>().await
}

/// Run one attack on a fresh connection from the `i`-th source: its verdict within
/// [`ATTACK_LIMIT`].
async fn attack(i: usize, port: &Port, script: &Script) -> Result<Verdict, String> {
    let stream = connect_from(i, port.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (rd, wr) = stream.into_split();
    let run = async {
        tokio::select! {
            v = judge(rd, port.speaks) => v,
            () = write_script(wr, script) => unreachable!(),
        }
    };
    tokio::time::timeout(ATTACK_LIMIT, run)
        .await
        .map_err(|_| format!("no answer and no close within {ATTACK_LIMIT:?}"))?
}

/// A well-formed TLS client with no certificate (it trusts the HCU's authority, `ca`), then an
/// XFS frame header claiming 4 GiB: the server must refuse the handshake.
async fn tls_without_certificate(
    i: usize,
    port: &Port,
    role: xfs::Role,
    ca: &Path,
) -> Result<Verdict, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = connect_from(i, port.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(role.dns_name()).map_err(|e| e.to_string())?;
    let run = async {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return Ok(Verdict::Refused(format!("handshake: {e}"))),
        };
        // TLS 1.3: the client's side is done before the server has checked it.
        let mut header = vec![0xff; 4];
        header.extend_from_slice(&crc32fast::hash(b"").to_be_bytes());
        let _ = tls.write_all(&header).await;
        let _ = tls.flush().await;
        let mut buf = [0u8; 1024];
        match tls.read(&mut buf).await {
            Err(e) => Ok(Verdict::Refused(e.to_string())),
            Ok(0) => Ok(Verdict::Closed),
            Ok(n) => Err(format!(
                "the server sent {n} bytes of protocol to a client without a certificate"
            )),
        }
    };
    tokio::time::timeout(ATTACK_LIMIT, run)
        .await
        .map_err(|_| format!("no answer and no close within {ATTACK_LIMIT:?}"))?
}

/// One SMTP reply (all its lines): its code and its last line.
async fn smtp_reply(rd: &mut (impl AsyncBufReadExt + Unpin)) -> Result<(u16, String), String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut line))
            .await
            .map_err(|_| "no reply in 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {all:?}"));
        }
        all.push_str(&line);
        let mut chars = line.chars();
        let code: String = chars.by_ref().take(3).collect();
        if chars.next() != Some('-') {
            let code = code.parse().map_err(|_| format!("not a reply: {line:?}"))?;
            return Ok((code, all));
        }
    }
}

/// A message to a real user whose header block goes on 4 MiB past the size smtp-in advertises:
/// it must be refused (`552`, or `421` if the data budget stops it first), never stored.
async fn oversized_header(i: usize, port: &Port) -> Result<Verdict, String> {
    let stream = connect_from(i, port.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let run = async {
        let (code, _) = smtp_reply(&mut rd).await?;
        if code != 220 {
            return Err(format!("greeting {code}"));
        }
        let mut size = None;
        for (cmd, want) in [
            ("EHLO hostile.test".to_string(), 250),
            ("MAIL FROM:<hostile@remote.test>".into(), 250),
            (format!("RCPT TO:<{VICTIM}>"), 250),
            ("DATA".into(), 354),
        ] {
            wr.write_all(format!("{cmd}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let (code, text) = smtp_reply(&mut rd).await?;
            if code != want {
                return Err(format!("{cmd}: {text:?}"));
            }
            if cmd.starts_with("EHLO") {
                size = text
                    .lines()
                    .find_map(|l| l.split_once(['-', ' '])?.1.strip_prefix("SIZE "))
                    .and_then(|n| n.trim().parse::<usize>().ok());
            }
        }
        let size = size.ok_or("no SIZE in the EHLO reply")?;
        let line = format!("X-Never-Ending: {}\r\n", "h".repeat(100));
        let lines = (size + (4 << 20)) / line.len() + 1;
        let writer = async {
            wr.write_all(b"Subject: a header block that never ends\r\n")
                .await?;
            let block = line.repeat(1000);
            for _ in 0..lines / 1000 + 1 {
                wr.write_all(block.as_bytes()).await?;
            }
            wr.write_all(b"\r\n.\r\n").await
        };
        // The server may stop reading and answer before the end.
        let (written, reply) = tokio::join!(writer, smtp_reply(&mut rd));
        match reply {
            Ok((552 | 421, text)) => Ok(Verdict::Refused(text.trim_end().to_string())),
            Ok((code, text)) => Err(format!("answered {code} ({written:?}): {text:?}")),
            Err(e) if written.is_err() => Ok(Verdict::Refused(format!("closed: {e}"))),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(ATTACK_LIMIT, run)
        .await
        .map_err(|_| format!("no answer and no close within {ATTACK_LIMIT:?}"))?
}

/// Every attack on every port, all at once; each one's outcome and how long it took, printed.
/// Panics listing every attack that got neither an error nor a close.
async fn attack_every_port(ports: &[Port], ca: &Path) {
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0usize;
    for port in ports {
        let mut jobs: Vec<(&'static str, Job)> = scripts(port)
            .into_iter()
            .map(|(name, s)| (name, Job::Script(s)))
            .collect();
        match port.speaks {
            Speaks::Tls(role) => jobs.push((
                "a TLS client without a certificate, then a 4 GiB frame header",
                Job::NoCertificate(role),
            )),
            Speaks::Smtp => jobs.push((
                "a message whose header block runs past the size limit",
                Job::Oversized,
            )),
            Speaks::Http => {}
        }
        for (name, job) in jobs {
            n += 1;
            let (port, ca, i) = (port.clone(), ca.to_path_buf(), n);
            set.spawn(async move {
                let started = Instant::now();
                let verdict = match &job {
                    Job::Script(s) => attack(i, &port, s).await,
                    Job::NoCertificate(role) => tls_without_certificate(i, &port, *role, &ca).await,
                    Job::Oversized => oversized_header(i, &port).await,
                };
                (port, name, verdict, started.elapsed())
            });
        }
    }
    let mut failed = Vec::new();
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.expect("an attack task"));
    }
    results.sort_by(|a, b| (&a.0.what, a.1).cmp(&(&b.0.what, b.1)));
    for (port, name, verdict, took) in results {
        let shown = match &verdict {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("FAILED: {e}"),
        };
        println!("attack {:<22} {name:<62} {took:>8.1?}  {shown}", port.what);
        let wrong = match (&verdict, port.speaks, name) {
            (Err(e), ..) => Some(e.clone()),
            // smtp-in reads an over-long line to its end and stays in step.
            (Ok(Verdict::Refused(r)), Speaks::Smtp, n) if n.starts_with("a 10 MiB") => {
                (!r.starts_with("500")).then(|| format!("answered {r:?}, not 500"))
            }
            (Ok(Verdict::Closed), Speaks::Smtp, n) if n.starts_with("a 10 MiB") => {
                Some("closed instead of answering 500".into())
            }
            _ => None,
        };
        if let Some(why) = wrong {
            failed.push(format!("{}: {name}: {why}", port.what));
        }
    }
    assert!(
        failed.is_empty(),
        "attacks not refused:\n{}",
        failed.join("\n")
    );
}

enum Job {
    Script(Script),
    NoCertificate(xfs::Role),
    Oversized,
}

// ---------------------------------------------------------------------------------------------
// Idle connections.

/// What the idle connections to one port saw.
#[derive(Default)]
struct IdleStats {
    opened: AtomicUsize,
    connect_failed: AtomicUsize,
    /// Closed by the server before the end of the hold.
    closed: AtomicUsize,
    /// Shortest and longest life of a connection the server closed, in ms.
    lives: Mutex<(u64, u64)>,
}

/// Keep a connection from the `i`-th source to `to` open until `stop`, reading and dropping
/// whatever the server sends; when the server closes it, open another.
async fn hold_idle(
    i: usize,
    to: SocketAddr,
    stats: Arc<IdleStats>,
    open: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let mut s = match connect_from(i, to).await {
            Ok(s) => s,
            Err(_) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let opened = Instant::now();
        stats.opened.fetch_add(1, Ordering::Relaxed);
        open.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 256];
        let closed_by_server = tokio::select! {
            _ = stop.wait_for(|s| *s) => false,
            () = async {
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            } => true,
        };
        open.fetch_sub(1, Ordering::SeqCst);
        if closed_by_server {
            stats.closed.fetch_add(1, Ordering::Relaxed);
            let life = opened.elapsed().as_millis() as u64;
            let mut lives = stats.lives.lock().unwrap();
            *lives = if lives.1 == 0 {
                (life, life)
            } else {
                (lives.0.min(life), lives.1.max(life))
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory and processes.

/// A process's resident set size in bytes (`VmRSS`), `None` once it is gone.
fn rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Every process's name and pid, from `mailctl status`.
fn pids(up: &Up) -> BTreeMap<String, i32> {
    up.status()
        .iter()
        .map(|r| {
            let name = r["name"].as_str().expect("name").to_string();
            let pid = r["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name} has no pid: {r}"));
            (name, pid as i32)
        })
        .collect()
}

/// The supervisor's restart count per process, from its `/healthz`.
async fn restarts(supervisor: SocketAddr) -> BTreeMap<String, u64> {
    let (code, body) = http_get(supervisor, "/healthz").await.expect("supervisor");
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("a JSON report");
    let list = report["processes"]
        .as_array()
        .or_else(|| report["info"]["processes"].as_array())
        .unwrap_or_else(|| panic!("no processes in the supervisor's report: {report}"));
    list.iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["restarts"].as_u64().expect("restarts"),
            )
        })
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------------------------------------
// The legitimate user.

/// One call of the legitimate user.
struct Call {
    started: Instant,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Calls(Mutex<BTreeMap<&'static str, Vec<Call>>>);

impl Calls {
    fn record(&self, kind: &'static str, started: Instant, result: Result<(), String>) {
        let call = Call {
            started,
            ok: result.is_ok(),
            detail: result.err().unwrap_or_default(),
        };
        self.0.lock().unwrap().entry(kind).or_default().push(call);
    }
}

/// Sign in through login's JSON API.
async fn sign_in(login: SocketAddr) -> Result<ApiSession, String> {
    match request_session(login, USER, PASSWORD, Duration::from_secs(10)).await {
        Ok((_, Some(session))) => Ok(session),
        Ok((status, None)) => Err(format!("sign-in answered {status}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Where the legitimate user and the operator go.
struct Doors {
    login: SocketAddr,
    front: Vec<SocketAddr>,
    smtp: SocketAddr,
    /// Every admin port, the supervisor's included.
    admin: Vec<SocketAddr>,
}

/// The user's work until `stop`: the Inbox read through each front door in turn every 250 ms,
/// a message through smtp-in every 500 ms, a sign-in every 2 s; and an operator's look at every
/// admin port's `/healthz` each second, with the 2 s `mailctl status` allows. The subjects
/// answered `250`.
async fn legitimate_user(
    doors: Doors,
    auth: String,
    calls: Arc<Calls>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let Doors {
        login,
        front: doors,
        smtp,
        admin,
    } = doors;
    let limit = Duration::from_secs(10);
    let reads = async {
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let session = ApiSession {
                door: doors[n % doors.len()],
                auth: auth.clone(),
            };
            let started = Instant::now();
            let r = tokio::time::timeout(
                limit,
                session.get("/api/v1/folders/Inbox/messages?offset=0&limit=5"),
            )
            .await;
            let r = match r {
                Err(_) => Err("timed out".to_string()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Ok(Ok(a)) if a.status == 200 => Ok(()),
                Ok(Ok(a)) => Err(format!("answered {}", a.status)),
            };
            calls.record("inbox read", started, r);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let mail = async {
        let mut acked = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let subject = format!("legit {n}");
            let raw = format!(
                "From: friend@remote.test\r\nTo: {USER}\r\nSubject: {subject}\r\n\
                 Message-ID: <legit-{n}@remote.test>\r\n\r\nmessage {n}\r\n"
            );
            let started = Instant::now();
            let sent = tokio::time::timeout(
                Duration::from_secs(15),
                send_raw(smtp, "friend@remote.test", &[USER], raw.as_bytes()),
            )
            .await;
            let r = match sent {
                Err(_) => Err("timed out".to_string()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Ok(Ok(())) => {
                    acked.push(subject);
                    Ok(())
                }
            };
            calls.record("smtp delivery", started, r);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        acked
    };
    let sign_ins = async {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let r = match tokio::time::timeout(limit, sign_in(login)).await {
                Err(_) => Err("timed out".to_string()),
                Ok(r) => r.map(|_| ()),
            };
            calls.record("sign-in", started, r);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    let health = async {
        while !stop.load(Ordering::SeqCst) {
            for a in &admin {
                let started = Instant::now();
                let r = match http_get_within(*a, "/healthz", Duration::from_secs(2)).await {
                    Ok(200) => Ok(()),
                    Ok(code) => Err(format!("{a}: answered {code}")),
                    Err(e) => Err(format!("{a}: {e}")),
                };
                calls.record("admin health", started, r);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let ((), acked, (), ()) = tokio::join!(reads, mail, sign_ins, health);
    acked
}

/// `GET path` at `addr`: its status, within `limit`.
async fn http_get_within(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, String> {
    runtime::http_client::get(addr, path, limit)
        .await
        .map(|a| a.status)
        .map_err(|e| format!("{e:#}"))
}

/// The longest run of failures among `calls` (from the first failed call's start to the start
/// of the next call that succeeded, or to `end`), and the failures' details.
fn longest_failure_run(calls: &[Call], end: Instant) -> (Duration, Vec<&str>) {
    let mut longest = Duration::ZERO;
    let mut run_start: Option<Instant> = None;
    for c in calls {
        match (c.ok, run_start) {
            (false, None) => run_start = Some(c.started),
            (true, Some(s)) => {
                longest = longest.max(c.started - s);
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        longest = longest.max(end - s);
    }
    let details = calls
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.detail.as_str())
        .collect();
    (longest, details)
}

/// Every subject in the user's Inbox, read page by page through the JSON API.
async fn inbox_subjects(session: &ApiSession) -> Vec<String> {
    let mut subjects = Vec::new();
    loop {
        let path = format!(
            "/api/v1/folders/Inbox/messages?offset={}&limit=500",
            subjects.len()
        );
        let a = session.get(&path).await.expect("the Inbox");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let page = a.json().expect("JSON");
        let messages = page["messages"].as_array().expect("messages");
        if messages.is_empty() {
            return subjects;
        }
        subjects.extend(
            messages
                .iter()
                .map(|m| m["subject"].as_str().unwrap_or_default().to_string()),
        );
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_on_every_port_leave_every_other_user_served() {
    megamail_tests::hcu::raise_fd_limit();
    let started = Instant::now();
    let mut up = Up::start().await;
    println!("the HCU is up after {:?}", started.elapsed());
    let started = Instant::now();
    let e = up.endpoints();
    let ports = ports(&e);
    assert_eq!(ports.len(), 21, "{ports:?}");
    let ca = up.data.join("certs").join("ca.pem");
    assert!(ca.exists(), "no {}", ca.display());
    let supervisor = addr(&e["supervisor_admin"]);
    let login = url_addr(e["login_url"].as_str().expect("login_url"));
    let smtp = addr(&e["smtp"]);
    let doors: Vec<SocketAddr> = e["frontdoor_urls"]
        .as_array()
        .expect("frontdoor_urls")
        .iter()
        .map(|u| url_addr(u.as_str().unwrap()))
        .collect();

    for user in [USER, VICTIM] {
        ok(&mailctl(
            &up.data,
            &["user", "add", user],
            Some(&format!("{PASSWORD}\n")),
        ));
    }
    let first = sign_in(login).await.expect("the user signs in");
    let pids_before = pids(&up);
    assert_eq!(pids_before.len(), 12, "{pids_before:?}");
    let restarts_before = restarts(supervisor).await;

    // The legitimate user works from here to the end.
    let calls = Arc::new(Calls::default());
    let stop_user = Arc::new(AtomicBool::new(false));
    let admin = ports
        .iter()
        .filter(|p| p.what.ends_with(" admin"))
        .map(|p| p.addr)
        .collect();
    let user = tokio::spawn(legitimate_user(
        Doors {
            login,
            front: doors,
            smtp,
            admin,
        },
        first.auth.clone(),
        calls.clone(),
        stop_user.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before: BTreeMap<&str, u64> = pids_before
        .iter()
        .map(|(name, pid)| (name.as_str(), rss(*pid).expect("running")))
        .collect();

    // Garbage and length bombs, every attack on every port at once.
    let t = Instant::now();
    attack_every_port(&ports, &ca).await;
    println!("every attack answered or closed within {:?}", t.elapsed());
    let rss_after_attacks: BTreeMap<&str, u64> = pids_before
        .iter()
        .map(|(name, pid)| (name.as_str(), rss(*pid).unwrap_or(0)))
        .collect();

    // 5,000 idle connections over every port and every source address.
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let stats: Vec<Arc<IdleStats>> = ports.iter().map(|_| Arc::default()).collect();
    let mut holders = tokio::task::JoinSet::new();
    for i in 0..IDLE_CONNECTIONS {
        let p = i % ports.len();
        holders.spawn(hold_idle(
            i / ports.len(),
            ports[p].addr,
            stats[p].clone(),
            open.clone(),
            stop_rx.clone(),
        ));
    }
    let t = Instant::now();
    while open.load(Ordering::SeqCst) < IDLE_CONNECTIONS && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} idle connections open after {:?}",
        open.load(Ordering::SeqCst),
        t.elapsed()
    );
    let mut rss_peak = rss_after_attacks.clone();
    let mut fewest_open = usize::MAX;
    let hold = Instant::now();
    while hold.elapsed() < HOLD {
        for (name, pid) in &pids_before {
            let now = rss(*pid).unwrap_or(0);
            let peak = rss_peak.get_mut(name.as_str()).unwrap();
            *peak = (*peak).max(now);
        }
        fewest_open = fewest_open.min(open.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_tx.send(true).unwrap();
    while holders.join_next().await.is_some() {}
    println!("held {HOLD:?}; at least {fewest_open} open throughout");
    for (port, s) in ports.iter().zip(&stats) {
        let (shortest, longest) = *s.lives.lock().unwrap();
        println!(
            "idle   {:<22} opened {:>4}  closed by the server {:>4} (after {:.1}-{:.1} s)  failed to connect {}",
            port.what,
            s.opened.load(Ordering::Relaxed),
            s.closed.load(Ordering::Relaxed),
            shortest as f64 / 1000.0,
            longest as f64 / 1000.0,
            s.connect_failed.load(Ordering::Relaxed),
        );
    }

    // The user goes on a little after the attackers left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_user.store(true, Ordering::SeqCst);
    let acked = user.await.expect("the user's task");
    let end = Instant::now();

    // Nothing restarted, everything healthy.
    up.wait_all_ok(Duration::from_secs(30)).await;
    assert_eq!(pids(&up), pids_before, "a process was restarted");
    assert_eq!(
        restarts(supervisor).await,
        restarts_before,
        "the supervisor restarted a process"
    );

    // Memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut too_big = Vec::new();
    println!(
        "{:<14} {:>10} {:>14} {:>10} {:>10}  (MiB)",
        "rss", "before", "after attacks", "peak", "after"
    );
    for (name, pid) in &pids_before {
        let before = rss_before[name.as_str()];
        let after = rss(*pid).expect("still running");
        let peak = rss_peak[name.as_str()].max(after);
        println!(
            "{name:<14} {:>10.1} {:>14.1} {:>10.1} {:>10.1}",
            mib(before),
            mib(rss_after_attacks[name.as_str()]),
            mib(peak),
            mib(after)
        );
        if peak.saturating_sub(before) > MAX_RSS_GROWTH {
            too_big.push(format!(
                "{name}: {:.1} MiB at the peak over {:.1} before",
                mib(peak),
                mib(before)
            ));
        }
    }
    assert!(
        too_big.is_empty(),
        "resident memory grew by more than {} MiB:\n{}",
        MAX_RSS_GROWTH >> 20,
        too_big.join("\n")
    );

    // The legitimate user was served throughout.
    let all = std::mem::take(&mut *calls.0.lock().unwrap());
    for kind in ["inbox read", "smtp delivery", "sign-in", "admin health"] {
        let list = all.get(kind).map(Vec::as_slice).unwrap_or_default();
        let good = list.iter().filter(|c| c.ok).count();
        let (run, mut details) = longest_failure_run(list, end);
        details.truncate(20);
        println!(
            "user   {kind:<14} {good}/{} succeeded, longest run of failures {run:?}",
            list.len()
        );
        assert!(list.len() >= 10, "{kind}: only {} calls", list.len());
        assert!(
            good as f64 >= MIN_SUCCESS * list.len() as f64,
            "{kind}: {good} of {} succeeded: {details:?}",
            list.len()
        );
        assert!(
            run <= MAX_FAILURE_RUN,
            "{kind}: failures for {run:?}: {details:?}"
        );
    }
    let stored = inbox_subjects(&first).await;
    let missing: Vec<&String> = acked.iter().filter(|s| !stored.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted messages are not in the Inbox: {missing:?}",
        missing.len(),
        acked.len()
    );
    println!(
        "{} messages accepted and in the Inbox; the test took {:?} once the HCU was up",
        acked.len(),
        started.elapsed()
    );
}
