//! Length bombs against real processes: frames whose header is honest but whose bincode payload
//! claims a string or byte buffer of 2^62 or 2^40 bytes, a header claiming 4 GiB, and truncated
//! frames, sent to a store's XFS port and to a member index replica, before and after a good
//! hello. Each one must close only its own connection and be counted by kind in
//! `ustore_frame_errors_total` / `mserv_frame_errors_total`; the process keeps running, stays
//! healthy and answers the next normal call. The bombs come from a peer with a valid operator
//! certificate, through the TLS handshake: what the decoders must survive once anything at all
//! reaches them.
//!
//! A 19-byte hello claiming a 2^62-byte client name once aborted a store
//! (`memory allocation of 4611686018427387904 bytes failed`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use megamail_tests::mserv::{test_client, Mserv, MservOpts};
use megamail_tests::support::metrics::sample;
use megamail_tests::support::pki::{operator, raw_tls};
use megamail_tests::{http_get, Proc, Ustore, UstoreOpts};
use mserv::{Policy, StoreInfo, StoreState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xfs::{frame, Role};

/// The frame-error kinds a server counts; every one is checked after every bomb.
const KINDS: [&str; 8] = [
    "io",
    "too_large",
    "bad_crc",
    "decode",
    "truncated",
    "no_hello",
    "second_hello",
    "version",
];

/// A frame around `payload`: `u32 length | u32 crc32`, big-endian, then the payload.
fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// bincode's varint for a u64 length: `0xfd` then the value little-endian.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut v = vec![0xfd];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

/// A hello frame (variant 0, version 1 as a one-byte varint) whose client name claims `claim`
/// bytes and carries none. Both the stores' hello (`u16` version) and the index's (`u32`)
/// encode this way.
fn hello_bomb(claim: u64) -> Vec<u8> {
    let mut payload = vec![0x00, 0x01];
    payload.extend(varint_u64(claim));
    frame_of(&payload)
}

/// A distinct filler of `len` bytes (251..=65535, so bincode writes its length as `0xfb` and a
/// u16) to find in an encoded frame.
fn marker(tag: u8, len: usize) -> Vec<u8> {
    assert!((251..=65535).contains(&len));
    (0..len)
        .map(|i| b"QZXJ"[i % 4] ^ (tag & 0x0f) << 4)
        .collect()
}

/// Re-frame the correctly encoded `frame` with the length of the string or buffer holding
/// `field` replaced by `claim`: its `0xfb lo hi` varint becomes `0xfd` and eight bytes, and the
/// crc is recomputed, so only the lying length is wrong.
fn with_lying_length(frame: &[u8], field: &[u8], claim: u64) -> Vec<u8> {
    let payload = &frame[frame::HEADER_LEN..];
    let at = payload
        .windows(field.len())
        .position(|w| w == field)
        .expect("the field is in the frame");
    let len = field.len() as u16;
    let mut varint = vec![0xfb];
    varint.extend_from_slice(&len.to_le_bytes());
    assert_eq!(
        &payload[at - 3..at],
        &varint[..],
        "length varint before the field"
    );
    let mut patched = payload[..at - 3].to_vec();
    patched.extend(varint_u64(claim));
    patched.extend_from_slice(&payload[at..]);
    frame_of(&patched)
}

/// What to send on a fresh connection.
struct Bomb {
    what: &'static str,
    /// Send a good hello (and read the server's) first.
    after_hello: bool,
    bytes: Vec<u8>,
    /// The kind it is counted under.
    kind: &'static str,
}

impl Bomb {
    fn new(what: &'static str, after_hello: bool, bytes: Vec<u8>, kind: &'static str) -> Bomb {
        Bomb {
            what,
            after_hello,
            bytes,
            kind,
        }
    }

    /// A frame of `encoded` whose string or buffer holding `field` claims `claim` bytes.
    fn lying(what: &'static str, encoded: &[u8], field: &[u8], claim: u64) -> Bomb {
        Bomb::new(
            what,
            true,
            with_lying_length(encoded, field, claim),
            "decode",
        )
    }

    /// Close our writing half after the bytes: a truncated frame ends at the peer's close.
    fn then_shutdown(&self) -> bool {
        self.kind == "truncated"
    }
}

/// The bombs every framed server must survive whatever its protocol: hellos whose client name
/// claims 2^62 (19 bytes in all) and 2^40 bytes, a header claiming 4 GiB before and after the
/// hello, and a hello cut short.
fn common_bombs() -> Vec<Bomb> {
    let hello_19 = hello_bomb(1 << 62);
    assert_eq!(hello_19.len(), 19);
    vec![
        Bomb::new(
            "hello whose client name claims 2^62 bytes (19 bytes)",
            false,
            hello_19,
            "decode",
        ),
        Bomb::new(
            "hello whose client name claims 2^40 bytes",
            false,
            hello_bomb(1 << 40),
            "decode",
        ),
        Bomb::new(
            "a header claiming 4 GiB instead of a hello",
            false,
            four_gib_header(),
            "too_large",
        ),
        Bomb::new(
            "a header claiming 4 GiB after the hello",
            true,
            four_gib_header(),
            "too_large",
        ),
        Bomb::new(
            "a hello cut short inside its payload",
            false,
            hello_bomb(1 << 62)[..13].to_vec(),
            "truncated",
        ),
    ]
}

/// Send one bomb and wait for the server to close the connection.
async fn explode(addr: SocketAddr, role: Role, good_hello: &[u8], bomb: &Bomb) {
    let mut s = raw_tls(addr, &operator(), role).await;
    if bomb.after_hello {
        s.write_all(good_hello).await.unwrap();
        let reply =
            tokio::time::timeout(Duration::from_secs(10), frame::read_frame(&mut s, 1 << 20))
                .await
                .unwrap_or_else(|_| panic!("{}: no answer to the hello", bomb.what))
                .unwrap_or_else(|e| panic!("{}: the hello failed: {e}", bomb.what));
        assert!(reply.is_some(), "{}: closed at the hello", bomb.what);
    }
    s.write_all(&bomb.bytes).await.unwrap();
    if bomb.then_shutdown() {
        s.shutdown().await.unwrap();
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "{}: the connection stayed open after the bomb",
        bomb.what
    );
    assert!(
        rest.is_empty() || matches!(read, Ok(Err(_))),
        "{}: the server answered a bad frame with {} bytes",
        bomb.what,
        rest.len()
    );
}

/// Every kind's count on `/metrics` of the process at `admin` is exactly as `expected` (0 when
/// not listed), and `/healthz` is 200.
async fn assert_counted(
    admin: SocketAddr,
    metric: &str,
    expected: &BTreeMap<&str, u64>,
    what: &str,
) {
    let (code, _) = http_get(admin, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{what}: /healthz after the bomb");
    let (code, text) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(code, 200, "{what}: /metrics");
    for kind in KINDS {
        let name = format!("{metric}{{kind=\"{kind}\"}}");
        let got = sample(&text, &name).unwrap_or(0.0);
        let want = expected.get(kind).copied().unwrap_or(0) as f64;
        assert_eq!(got, want, "{what}: {name}");
    }
}

/// The server behind `addr` (admin port `admin`, counting under `metric`) survives every bomb:
/// after each one (each on a fresh connection) it is running (`alive`), has counted exactly the
/// bombs so far by kind, is healthy, and still does its work (`answers`).
async fn survive<Fut: std::future::Future<Output = ()>>(
    who: &str,
    (addr, admin, metric, role): (SocketAddr, SocketAddr, &str, Role),
    good_hello: &[u8],
    bombs: &[Bomb],
    mut alive: impl FnMut(&str),
    mut answers: impl FnMut(&'static str) -> Fut,
) {
    let mut expected = BTreeMap::new();
    assert_counted(admin, metric, &expected, "at start").await;
    for bomb in bombs {
        let started = Instant::now();
        explode(addr, role, good_hello, bomb).await;
        *expected.entry(bomb.kind).or_insert(0) += 1;
        alive(bomb.what);
        assert_counted(admin, metric, &expected, bomb.what).await;
        answers(bomb.what).await;
        alive(bomb.what);
        println!(
            "{who}: {} -> {} ({:?})",
            bomb.what,
            bomb.kind,
            started.elapsed()
        );
    }
}

fn assert_alive(proc: &mut Proc, what: &str) {
    assert!(
        proc.is_running(),
        "{what}: {} exited:\n{}",
        proc.name,
        proc.log_tail()
    );
}

fn four_gib_header() -> Vec<u8> {
    let mut h = vec![0xff, 0xff, 0xff, 0xff];
    h.extend_from_slice(&crc32fast::hash(b"").to_be_bytes());
    h.extend_from_slice(b"then a few bytes");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_survives_length_bombs_and_counts_them() {
    use xfs::{ClientFrame, ClientHello, Delivery, Flags, Op, Request, Summary, Target};

    let mut store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let cfg = || xfs::ClientConfig {
        identity: operator(),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(500),
        ..Default::default()
    };
    // A client whose pooled connections were open before any bomb, and one made after each.
    let kept = xfs::Client::new(cfg());
    let addr = store.addr.to_string();
    kept.pool(&addr).run(xfs::ops::Ping {}).await.unwrap();

    let good_hello = frame::encode(&ClientFrame::Hello(ClientHello {
        version: xfs::PROTOCOL_VERSION,
        role: Role::Operator,
        name: "test".into(),
    }))
    .unwrap();
    let request = |trace: String, body: Vec<u8>| {
        frame::encode(&ClientFrame::Request(Request {
            id: 1,
            deadline_ms: 5000,
            trace,
            session: None,
            op: Op::Deliver {
                target: Target::new("nobody@example.test", 0, 1),
                delivery: Delivery {
                    id: [7; 32],
                    folder: None,
                    internal_date_ms: 1,
                    flags: Flags::default(),
                    summary: Summary::default(),
                    body: body.into(),
                },
            },
        }))
        .unwrap()
    };
    let (trace, body) = (marker(1, 300), marker(2, 400));
    let plain = request(String::from_utf8(trace.clone()).unwrap(), body.clone());
    let mut bad_crc_bomb = hello_bomb(1 << 62);
    bad_crc_bomb[4] ^= 0x01;
    let mut bombs = common_bombs();
    bombs.extend([
        Bomb::new(
            "the 2^62 hello with a wrong crc",
            false,
            bad_crc_bomb,
            "bad_crc",
        ),
        Bomb::lying(
            "a request whose trace claims 2^62 bytes",
            &plain,
            &trace,
            1 << 62,
        ),
        Bomb::lying(
            "a delivery whose body claims 2^62 bytes",
            &plain,
            &body,
            1 << 62,
        ),
        Bomb::lying(
            "a delivery whose body claims 2^40 bytes",
            &plain,
            &body,
            1 << 40,
        ),
        Bomb::new("three bytes of a header", false, vec![0, 0, 0], "truncated"),
        Bomb::new(
            "a delivery cut short after the hello",
            true,
            plain[..plain.len() / 2].to_vec(),
            "truncated",
        ),
    ]);

    let server = (
        store.addr,
        store.proc.admin,
        "ustore_frame_errors_total",
        Role::Ustore,
    );
    let proc = &mut store.proc;
    let alive = |what: &str| assert_alive(proc, what);
    let (kept, addr) = (&kept, &addr);
    let answers = |what: &'static str| async move {
        xfs::Client::new(cfg())
            .pool(addr)
            .run(xfs::ops::Ping {})
            .await
            .unwrap_or_else(|e| panic!("{what}: a fresh client's ping: {e}"));
        kept.pool(addr)
            .run(xfs::ops::Ping {})
            .await
            .unwrap_or_else(|e| panic!("{what}: a pooled client's ping: {e}"));
    };
    survive("store", server, &good_hello, &bombs, alive, answers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_replica_survives_length_bombs_and_counts_them() {
    use mserv::proto::{ClientFrame, ClientHello, Command, Op, Request, PROTOCOL_VERSION};

    let mut m = Mserv::start(MservOpts {
        replicas: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let id = *m.replicas.keys().next().unwrap();
    let addr = m.replicas[&id].addr;
    let admin = m.replicas[&id].proc.admin;
    let kept = m.client_of(id);
    kept.register_store(StoreInfo {
        name: "store-1".into(),
        xfs_addr: "127.0.0.1:1".into(),
        cluster: "hcu-1".into(),
        segments: vec![0],
        state: StoreState::Active,
    })
    .await
    .unwrap();
    let placed = kept
        .create_user("alice@example.test", Policy::LeastLoaded)
        .await
        .unwrap();

    let good_hello = frame::encode(&ClientFrame::Hello(ClientHello {
        version: PROTOCOL_VERSION,
        role: Role::Operator,
        name: "test".into(),
    }))
    .unwrap();
    let (name, other) = (marker(3, 300), marker(4, 500));
    let lookup = frame::encode(&ClientFrame::Request(Request {
        id: 1,
        deadline_ms: 5000,
        trace: String::new(),
        session: None,
        op: Op::Lookup {
            user: String::from_utf8(name.clone()).unwrap(),
        },
    }))
    .unwrap();
    let write = frame::encode(&ClientFrame::Request(Request {
        id: 2,
        deadline_ms: 5000,
        trace: String::new(),
        session: None,
        op: Op::Write {
            cmd: Command::CreateUser {
                user: String::from_utf8(other.clone()).unwrap(),
                policy: Policy::LeastLoaded,
            },
            forwarded: false,
        },
    }))
    .unwrap();
    let mut bombs = common_bombs();
    bombs.extend([
        Bomb::lying(
            "a lookup whose user claims 2^62 bytes",
            &lookup,
            &name,
            1 << 62,
        ),
        Bomb::lying(
            "a create-user write whose user claims 2^40 bytes",
            &write,
            &other,
            1 << 40,
        ),
        Bomb::lying(
            "a create-user write whose user claims 2^62 bytes",
            &write,
            &other,
            1 << 62,
        ),
        Bomb::new(
            "a lookup cut short after the hello",
            true,
            lookup[..lookup.len() / 2].to_vec(),
            "truncated",
        ),
    ]);

    let alive = |what: &str| assert_alive(&mut m.replicas.get_mut(&id).unwrap().proc, what);
    let (kept, placed) = (&kept, &placed);
    let answers = |what: &'static str| async move {
        let fresh = test_client(vec![addr.to_string()]);
        fresh
            .ping()
            .await
            .unwrap_or_else(|e| panic!("{what}: a fresh client's ping: {e}"));
        let found = fresh.lookup("alice@example.test").await.unwrap();
        assert_eq!(&found, placed, "{what}: a fresh client's lookup");
        let found = kept.lookup("alice@example.test").await.unwrap();
        assert_eq!(&found, placed, "{what}: a pooled client's lookup");
    };
    let server = (addr, admin, "mserv_frame_errors_total", Role::Mserv);
    survive("mserv", server, &good_hello, &bombs, alive, answers).await;
}
