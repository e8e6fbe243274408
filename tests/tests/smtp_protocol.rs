//! smtp-in, reply by reply, over a raw TCP dialogue: every limit and refusal in its own test, with
//! a real member index, real stores and the real smtp-in process.

use std::net::SocketAddr;
use std::time::Duration;

use megamail_tests::hcu::{strip_trace_header, Hcu, HcuOpts};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.rd.read_line(&mut line))
                .await
                .expect("reply within the wait")
                .expect("read");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line[..3].parse().expect("reply code");
                return (code, all.trim_end().to_string());
            }
        }
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

    /// Whether the server closed the connection (reads EOF within the wait).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(WAIT, self.rd.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }
}

async fn hcu(opts: HcuOpts) -> Hcu {
    let h = Hcu::start(opts).await.expect("hcu starts");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_basic_commands_answer_as_rfc_5321_says() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("MAIL FROM:<a@remote.test>", 503).await;
    let ehlo = c.ok("EHLO client.remote.test", 250).await;
    for ext in [
        "PIPELINING",
        "SIZE 10485760",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate, no STARTTLS: {ehlo}"
    );
    c.ok("RCPT TO:<alice@megamail.test>", 503).await;
    c.ok("DATA", 503).await;
    assert!(c.ok("VRFY alice", 252).await.starts_with("252 2."));
    assert!(c.ok("HELP", 214).await.contains("MAIL"));
    c.ok("NOOP", 250).await;
    c.ok("EXPN staff", 502).await;
    c.ok("FROB", 500).await;
    c.ok("MAIL FROM:a@remote.test", 501).await;
    c.ok("MAIL FROM:<a@remote.test> FANCY=1", 555).await;
    c.ok("MAIL FROM:<>", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 503).await;
    c.ok("DATA", 554).await;
    c.ok("RCPT TO:<not an address>", 501).await;
    c.ok("RSET", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 503).await;
    c.ok("HELO old.remote.test", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    // Postmaster without a domain is the first local domain's.
    h.add_user("postmaster@megamail.test").await.unwrap();
    c.ok("RCPT TO:<Postmaster>", 250).await;
    assert!(c.ok("QUIT", 221).await.starts_with("221 2.0.0"));
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_550_5_1_1() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    let t = c.ok("RCPT TO:<nobody@megamail.test>", 550).await;
    assert!(t.starts_with("550 5.1.1"), "{t}");
    // The transaction goes on for the others.
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_domain_is_550_5_7_1_never_a_relay() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<alice@megamail.test>", 250).await;
    for rcpt in [
        "someone@elsewhere.test",
        "alice@megamail.test.evil.test",
        "alice%elsewhere.test@relay.test",
        "@megamail.test:victim@elsewhere.test",
    ] {
        let t = c.ok(&format!("RCPT TO:<{rcpt}>"), 550).await;
        assert!(t.starts_with("550 5.7.1"), "{rcpt}: {t}");
    }
    // Case does not matter for our own domain.
    c.ok("RCPT TO:<Alice@MegaMail.TEST>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_is_552_5_3_4_declared_or_not() {
    let h = hcu(HcuOpts {
        max_message_bytes: 4096,
        ..Default::default()
    })
    .await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    let t = c.ok("MAIL FROM:<a@remote.test> SIZE=5000", 552).await;
    assert!(t.starts_with("552 5.3.4"), "{t}");
    c.ok("MAIL FROM:<a@remote.test> SIZE=100", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    let big = message("big", &"x".repeat(70).repeat(80).replace("xx", "x\r\n"));
    c.send(big.as_bytes()).await;
    let (code, t) = c.cmd("\r\n.").await;
    assert_eq!(code, 552, "{t}");
    assert!(t.starts_with("552 5.3.4"), "{t}");
    // The session is still in step and usable.
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(message("small", "hi\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_recipients_is_452_4_5_3() {
    let h = hcu(HcuOpts {
        max_recipients: 3,
        ..Default::default()
    })
    .await;
    for u in ["carol", "dave", "erin"] {
        h.add_user(&format!("{u}@megamail.test")).await.unwrap();
    }
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    for u in ["alice", "bob", "carol"] {
        c.ok(&format!("RCPT TO:<{u}@megamail.test>"), 250).await;
    }
    for u in ["dave", "erin"] {
        let t = c.ok(&format!("RCPT TO:<{u}@megamail.test>"), 452).await;
        assert!(t.starts_with("452 4.5.3"), "{t}");
    }
    c.ok("DATA", 354).await;
    c.send(message("many", "to many\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    for (u, n) in [
        ("alice", 1),
        ("bob", 1),
        ("carol", 1),
        ("dave", 0),
        ("erin", 0),
    ] {
        let got = h.inbox_count(&format!("{u}@megamail.test")).await.unwrap();
        assert_eq!(got, n, "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_too_long_is_refused_in_commands_and_in_data() {
    let h = hcu(HcuOpts {
        max_line_bytes: 1000,
        ..Default::default()
    })
    .await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    let long = format!("NOOP {}", "a".repeat(5000));
    let t = c.ok(&long, 500).await;
    assert!(t.starts_with("500 5.5.2"), "{t}");
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(message("long", &format!("{}\r\n", "b".repeat(3000))).as_bytes())
        .await;
    let t = c.ok(".", 554).await;
    assert!(t.starts_with("554 5.6.0"), "{t}");
    c.ok("NOOP", 250).await;
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_times_out_with_421() {
    let h = hcu(HcuOpts {
        command_timeout_secs: 1,
        data_timeout_secs: 1,
        ..Default::default()
    })
    .await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    let (code, t) = c.reply().await;
    assert_eq!(code, 421, "{t}");
    assert!(t.starts_with("421 4.4.2"), "{t}");
    assert!(c.closed().await);

    // In the middle of the data too; nothing half-received is stored.
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(b"Subject: half\r\n\r\nsome of it").await;
    let (code, t) = c.reply().await;
    assert_eq!(code, 421, "{t}");
    assert!(c.closed().await);
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_get_every_reply_in_order() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    // One write: the envelope with a bad recipient in the middle, then DATA.
    c.send(
        b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@megamail.test>\r\nRCPT TO:<nobody@megamail.test>\r\nRCPT TO:<bob@megamail.test>\r\nDATA\r\n",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.reply().await.0);
    }
    assert_eq!(got, vec![250, 250, 550, 250, 354]);
    // The message, its end, and the next transaction in one write as well.
    let mut batch = message("piped", "one\r\n").into_bytes();
    batch.extend_from_slice(b".\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    c.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.reply().await.0);
    }
    assert_eq!(got, vec![250, 250, 250, 221]);
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 1);
    assert_eq!(h.inbox_count("bob@megamail.test").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_make_one_byte_exact_message() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    // BDAT without a transaction: the chunk is read and refused, the session stays in step.
    c.send(b"BDAT 5\r\nhello").await;
    assert_eq!(c.reply().await.0, 503);
    c.ok("MAIL FROM:<a@remote.test> BODY=8BITMIME", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    // Chunks are taken as they are: no dot-stuffing, and CRLF.CRLF inside means nothing.
    let part1 =
        b"Subject: chunked\r\nMessage-ID: <bdat@remote.test>\r\n\r\nfirst\r\n.\r\n..dots stay\r\n";
    let part2 = "second part, 8-bit: d\u{e9}j\u{e0} vu\r\n".as_bytes();
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).await;
    c.send(part1).await;
    let (code, t) = c.reply().await;
    assert_eq!(code, 250, "{t}");
    // DATA cannot be mixed in.
    c.ok("DATA", 503).await;
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .await;
    c.send(part2).await;
    let (code, t) = c.reply().await;
    assert_eq!(code, 250, "{t}");
    c.ok("NOOP", 250).await;
    let inbox = h.inbox("alice@megamail.test").await.unwrap();
    assert_eq!(inbox.len(), 1);
    let mut want = part1.to_vec();
    want.extend_from_slice(part2);
    assert_eq!(strip_trace_header(&inbox[0].1), want.as_slice());
    assert_eq!(inbox[0].0.summary.subject, "chunked");
    // A bad BDAT size cannot be resynchronized: the server says so and closes.
    c.send(b"BDAT lots\r\n").await;
    assert_eq!(c.reply().await.0, 501);
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_do_not_end_the_data() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    let smuggled = "MAIL FROM:<admin@megamail.test>\r\nRCPT TO:<bob@megamail.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nforged\r\n";
    for (i, end) in ["\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r.\r\n"]
        .iter()
        .enumerate()
    {
        c.ok("MAIL FROM:<a@remote.test>", 250).await;
        c.ok("RCPT TO:<alice@megamail.test>", 250).await;
        c.ok("DATA", 354).await;
        let mut body = message(&format!("attempt{i}"), "legit").into_bytes();
        body.extend_from_slice(end.as_bytes());
        body.extend_from_slice(smuggled.as_bytes());
        c.send(&body).await;
        // Only the real end of data ends it: one reply, one message.
        let t = c.ok(".", 250).await;
        assert!(t.starts_with("250 2.0.0"), "{t}");
        let inbox = h.inbox("alice@megamail.test").await.unwrap();
        let stored = inbox
            .iter()
            .find(|(e, _)| e.summary.subject == format!("attempt{i}"))
            .expect("stored");
        // The would-be terminator and the smuggled text are part of this message, byte for
        // byte; only a CRLF-started line's leading dot is unstuffed (RFC 5321 section 4.5.2).
        let want = String::from_utf8(body.clone())
            .unwrap()
            .replace("legit\r\n.\n", "legit\r\n\n");
        assert_eq!(strip_trace_header(&stored.1), want.as_bytes());
    }
    c.ok("NOOP", 250).await;
    assert_eq!(
        h.inbox_count("bob@megamail.test").await.unwrap(),
        0,
        "smuggled mail"
    );
    assert_eq!(h.inbox_count("alice@megamail.test").await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_stuffing_is_undone_exactly() {
    let h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(b"Subject: dots\r\n\r\n..one\r\n...two\r\n.\tthree\r\nfour.\r\n..\r\n")
        .await;
    c.ok(".", 250).await;
    let inbox = h.inbox("alice@megamail.test").await.unwrap();
    assert_eq!(
        strip_trace_header(&inbox[0].1),
        b"Subject: dots\r\n\r\n.one\r\n..two\r\n\tthree\r\nfour.\r\n.\r\n"
    );
}

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
    let mut code = 0;
    for _ in 0..50 {
        code = c.cmd("RCPT TO:<bob@megamail.test>").await.0;
        if code == 250 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code, 250);
    c.ok("DATA", 354).await;
    c.send(message("back", "hi\r\n").as_bytes()).await;
    c.ok(".", 250).await;
    assert_eq!(h.inbox_count("bob@megamail.test").await.unwrap(), 1);
}

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
    let mut stored = false;
    for _ in 0..50 {
        c.ok("MAIL FROM:<a@remote.test>", 250).await;
        let a = c.cmd("RCPT TO:<alice@megamail.test>").await.0;
        let b = c.cmd("RCPT TO:<bob@megamail.test>").await.0;
        if a == 250 && b == 250 {
            c.ok("DATA", 354).await;
            c.send(msg.as_bytes()).await;
            if c.cmd(".").await.0 == 250 {
                stored = true;
                break;
            }
        } else {
            c.ok("RSET", 250).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored, "the retry never got 250");
    assert_eq!(
        h.inbox_count("alice@megamail.test").await.unwrap(),
        1,
        "no duplicate"
    );
    assert_eq!(h.inbox_count("bob@megamail.test").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_down_defers_unknown_routes_but_cached_ones_still_deliver() {
    let mut h = hcu(HcuOpts::default()).await;
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("RSET", 250).await;
    let ids: Vec<u64> = h.mserv.replicas.keys().copied().collect();
    for id in &ids {
        h.mserv.kill9(*id);
    }
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    // Never looked up, so no route is known: unsure means 4xx, never 5xx.
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
        let mut line = String::new();
        tokio::time::timeout(WAIT, rd.read_line(&mut line))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_the_session_and_mail_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("mx.pem"), dir.path().join("mx.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=mx.megamail.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = hcu(HcuOpts {
        smtp_extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
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
import smtplib, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=20)
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
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(h.smtp_addr.ip().to_string())
        .arg(h.smtp_addr.port().to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let inbox = h.inbox("alice@megamail.test").await.unwrap();
    assert_eq!(inbox.len(), 1);
    let stored = String::from_utf8_lossy(&inbox[0].1).to_string();
    assert!(stored.contains("with ESMTPS id"), "{stored}");
    assert!(stored.ends_with("\r\n\r\nsecret\r\n"), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_hostile_input_never_crash_the_server() {
    let mut h = hcu(HcuOpts::default()).await;
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\xff\xfe\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![b'A'; 200_000],
        b"EHLO\r\nMAIL FROM:<\r\nRCPT TO:<>\r\nBDAT 99999999999999999999\r\n".to_vec(),
        b"EHLO x\r\nMAIL FROM:<a@r.test>\r\nRCPT TO:<alice@megamail.test>\r\nBDAT 100 LAST\r\nshort".to_vec(),
        "EHLO \u{fffd}\r\nMAIL FROM:<j\u{f6}rg@r.test>\r\n".as_bytes().to_vec(),
    ];
    for input in inputs {
        let mut s = TcpStream::connect(h.smtp_addr).await.unwrap();
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
    }
    // Twenty bad commands close the session.
    let mut c = Smtp::connect(h.smtp_addr).await;
    for _ in 0..19 {
        c.ok("XYZZY", 500).await;
    }
    let (code, _) = c.cmd("XYZZY").await;
    assert_eq!(code, 500);
    let (code, t) = c.reply().await;
    assert_eq!(code, 421, "{t}");
    assert!(h.smtp_proc().is_running());
    let mut c = Smtp::connect(h.smtp_addr).await;
    c.ok("EHLO x", 250).await;
    c.ok("MAIL FROM:<a@remote.test>", 250).await;
    c.ok("RCPT TO:<alice@megamail.test>", 250).await;
    c.ok("DATA", 354).await;
    c.send(message("after-garbage", "ok\r\n").as_bytes()).await;
    c.ok(".", 250).await;
}
