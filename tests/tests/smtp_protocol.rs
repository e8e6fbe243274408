//! smtp-in over a raw TCP dialogue with a real member index, real stores and the real smtp-in
//! process: only what needs them. The dialogue itself (every reply code, limit, refusal, the data
//! rules, BDAT, pipelining, timeouts) is tested in memory beside the session, in
//! `smtp-in/src/session/dialogue.rs`; each test here says why it needs the processes.

use std::net::SocketAddr;
use std::time::Duration;

use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::mail::{read_reply, smtplib};
use megamail_tests::support::poll::Deadline;
use megamail_tests::support::run_ok;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// A hand-driven SMTP client.
struct Smtp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Smtp {
    async fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).await.expect("connect");
        Smtp::over(s).await
    }

    /// Connect from a given loopback source address (each is its own "client address").
    async fn connect_from(addr: SocketAddr, from: [u8; 4]) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((from, 0))).unwrap();
        sock.connect(addr).await.expect("connect")
    }

    async fn over(s: TcpStream) -> Smtp {
        let (rd, wr) = s.into_split();
        let mut c = Smtp {
            rd: BufReader::new(rd),
            wr,
        };
        let (code, text) = c.reply().await;
        assert_eq!(code, 220, "greeting: {text}");
        c
    }

    async fn send(&mut self, raw: &[u8]) {
        self.wr.write_all(raw).await.expect("write");
    }

    /// One reply (all its lines): the code and the whole text.
    async fn reply(&mut self) -> (u16, String) {
        let (code, text) = tokio::time::timeout(WAIT, read_reply(&mut self.rd))
            .await
            .expect("reply within the wait")
            .expect("a reply before the connection closed");
        assert_ne!(code, 0, "no reply code: {text:?}");
        (code, text.trim_end().to_string())
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn ok(&mut self, line: &str, want: u16) -> String {
        let (code, text) = self.cmd(line).await;
        assert_eq!(code, want, "{line} -> {text}");
        text
    }
}

async fn hcu(opts: HcuOpts) -> LocalHcu {
    let h = LocalHcu::start(opts).await.expect("hcu starts");
    h.add_user_on("alice@megamail.test", "store-1", 0)
        .await
        .unwrap();
    h.add_user_on("bob@megamail.test", "store-2", 1)
        .await
        .unwrap();
    h
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@remote.test>\r\nTo: alice@megamail.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\n{body}"
    )
}

// Needs processes: a store really killed, the real client finding it unreachable at RCPT
// (`451 4.4.1`), the other store still taking mail, and the store restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_defers_its_users_and_no_one_else() {
    let mut h = hcu(HcuOpts {
        deliver_timeout_secs: 2,
        ..Default::default()
    })
    .await;
    h.store("store-2").proc.kill9();
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    let t = c.ok("RCPT TO:<bob@megamail.test>", 451).await;
    assert!(t.starts_with("451 4.4.1"), "{t}");
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(message("one-down", "hi\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 1);
    // The store comes back: its users get mail again.
    h.store("store-2").proc.restart().await.unwrap();
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    let deadline = Deadline::after(Duration::from_secs(10), Duration::from_millis(200));
    let code = loop {
        let code = c.cmd("RCPT TO:<bob@megamail.test>").await.0;
        if code == 250 || !deadline.pause().await {
            break code;
        }
    };
    assert_eq!(code, 250);
    c.ok("DATA", 354).await;
    c.send(message("back", "hi\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    assert_eq!(h.inbox_count("bob@megamail.test").await.unwrap(), 1);
}

// Needs processes: durability and dedupe are the store's. One copy acknowledged by a real
// store, the other store killed mid-message (`451`), and the sender's retry stored once there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dying_after_rcpt_defers_the_message_and_the_retry_stores_one_copy() {
    let mut h = hcu(HcuOpts {
        deliver_timeout_secs: 2,
        ..Default::default()
    })
    .await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("RCPT TO:<bob@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    h.store("store-2").proc.kill9();
    let msg = message("retry-me", "hi\r\n");
    c.send(msg.as_bytes()).await;
    let t = c.ok(".", 451).await;
    assert!(t.starts_with("451 4."), "{t}");
    // Alice's copy was stored before the 451; the sender retries once the store is back.
    h.store("store-2").proc.restart().await.unwrap();
    let deadline = Deadline::after(Duration::from_secs(10), Duration::from_millis(200));
    let stored = loop {
        c.ok("MAIL FROM:<a@remote.test>", 250).await;
        let a = c.cmd("RCPT TO:<alice@megamail.test>").await.0;
        let b = c.cmd("RCPT TO:<bob@megamail.test>").await.0;
        if a == 250 && b == 250 {
            c.ok("DATA", 354).await;
            c.send(msg.as_bytes()).await;
            if c.cmd(".").await.0 == 250 {
                break true;
            }
        } else {
            c.ok("RSET", 250).await;
        }
        if !deadline.pause().await {
            break false;
        }
    };
    assert!(stored, "the retry never got 250");
    assert_eq!(
        h.inbox_count("alice@megamail.test").await.unwrap(),
        1,
        "no duplicate"
    );
    assert_eq!(h.inbox_count("bob@megamail.test").await.unwrap(), 1);
}

// Needs processes: only the member index can say a user does not exist (`550 5.1.1`), and only
// with every replica killed can an unknown route be shown to be `451 4.4.3`, never a 5xx, while a
// cached route still delivers to its real store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_index_says_no_such_user_and_while_it_is_down_only_cached_routes_deliver() {
    let mut h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    // The index is sure: no such user. The transaction goes on for the others.
    let t = c.ok("RCPT TO:<nobody@megamail.test>", 550).await;
    assert!(t.starts_with("550 5.1.1"), "{t}");
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("RSET", 250).await;
    let ids: Vec<u64> = h.mserv.replicas.keys().copied().collect();
    for id in &ids {
        h.mserv.kill9(*id);
    }
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    // No route is known for either (a "no such user" is never cached): unsure means 4xx, never
    // 5xx, even for the address the index called unknown a moment ago.
    let t = c.ok("RCPT TO:<bob@megamail.test>", 451).await;
    assert!(t.starts_with("451 4.4.3"), "{t}");
    let t = c.ok("RCPT TO:<nobody@megamail.test>", 451).await;
    assert!(t.starts_with("451 4.4.3"), "{t}");
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(message("cached", "hi\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    for id in ids {
        h.mserv.restart(id).await.unwrap();
    }
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 1);
}

// Needs processes: the session limits are decided at accept, over real TCP connections from
// distinct client addresses, not inside a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_limited_in_total_and_per_client_address() {
    let h = hcu(HcuOpts {
        max_sessions: 6,
        max_sessions_per_client: 3,
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = Smtp::connect_from(h.smtp_addr, [127, 0, 0, 1]).await;
        held.push(Smtp::over(s).await);
    }
    let refused = |from: [u8; 4]| async move {
        let s = Smtp::connect_from(h.smtp_addr, from).await;
        let mut rd = BufReader::new(s);
        let (_, line) = tokio::time::timeout(WAIT, read_reply(&mut rd))
            .await
            .unwrap()
            .unwrap();
        line
    };
    let line = refused([127, 0, 0, 1]).await;
    assert!(line.starts_with("421 4.7.0"), "{line}");
    // Another client address still gets in, up to the total.
    for _ in 0..3 {
        let s = Smtp::connect_from(h.smtp_addr, [127, 0, 0, 2]).await;
        held.push(Smtp::over(s).await);
    }
    let line = refused([127, 0, 0, 3]).await;
    assert!(line.starts_with("421 4.7.0"), "{line}");
    // Places free up when sessions end.
    held.pop().unwrap().ok("QUIT", 221).await;
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = Smtp::connect_from(h.smtp_addr, [127, 0, 0, 3]).await;
    let mut c = Smtp::over(s).await;
    c.ok("EHLO x", 250).await;
}

// Needs processes: a real certificate from openssl, a real TLS client (Python's smtplib), and
// the message read back from the real store with its `ESMTPS` trace line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_the_session_and_mail_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("mx.pem"), dir.path().join("mx.key"));
    run_ok(
        std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=mx.megamail.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
    );
    let h = hcu(HcuOpts {
        smtp_tls: Some(role_config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..Default::default()
    })
    .await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    assert!(c.ok("EHLO x", 250).await.contains("STARTTLS"));
    // Commands sent in the clear behind STARTTLS must not survive into TLS.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(c.reply().await.0, 220);
    drop(c);

    let script = r#"
import ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.ehlo("client.remote.test")
assert s.has_extn("starttls")
code, _ = s.starttls(context=ctx)
assert code == 220, code
s.ehlo("client.remote.test")
assert not s.has_extn("starttls"), "STARTTLS offered inside TLS"
s.sendmail("a@remote.test", ["alice@megamail.test"], b"Subject: over tls\r\nMessage-ID: <tls@remote.test>\r\n\r\nsecret\r\n")
s.quit()
print("sent")
"#;
    assert_eq!(smtplib(h.smtp_addr, script).trim(), "sent");
    let inbox = h.inbox("alice@megamail.test").await.unwrap();
    assert_eq!(inbox.len(), 1);
    let stored = String::from_utf8_lossy(&inbox[0].1).to_string();
    assert!(stored.contains("with ESMTPS id"), "{stored}");
    assert!(stored.ends_with("\r\n\r\nsecret\r\n"), "{stored}");
}
