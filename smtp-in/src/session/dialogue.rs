//! The whole SMTP dialogue, reply by reply, over an in-memory pipe: a client driver that asserts
//! each reply's exact code and enhanced code, and mailboxes in memory that record every copy
//! delivered, so a test also sees the exact bytes each recipient got. Time is paused: timeouts
//! are reached at once, and exactly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::shutdown::Shutdown;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use xfs::Delivery;

use crate::mailboxes::{Mailboxes, MessageCopy, Outcome, Recipient, Verdict};
use crate::{Ctx, SmtpInConfig};

/// How long the driver waits for a reply (virtual time: longer than any timeout of the server).
const WAIT: Duration = Duration::from_secs(3600);
const PEER: &str = "192.0.2.7:40000";

/// Mailboxes in memory: who exists, who is unsure at RCPT, whose copies fail; and every copy
/// stored, in order.
#[derive(Default)]
struct Fake {
    users: HashSet<String>,
    /// Address → the 4xx reply its check gets.
    unsure: HashMap<String, String>,
    /// Addresses the index would call malformed.
    bad: HashSet<String>,
    /// Users whose copy cannot be stored.
    failing: HashSet<String>,
    checked: Mutex<Vec<String>>,
    stored: Mutex<Vec<(String, Delivery)>>,
    /// The data budget, once the context is made: what it held at each delivery.
    budget: std::sync::OnceLock<Arc<crate::budget::Budget>>,
    held_at_delivery: Mutex<Vec<usize>>,
}

impl Fake {
    fn with_users(users: &[&str]) -> Fake {
        Fake {
            users: users.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Every copy stored: (recipient, delivery).
    fn stored(&self) -> Vec<(String, Delivery)> {
        self.stored.lock().unwrap().clone()
    }

    /// The bodies stored for `user`, in order.
    fn bodies(&self, user: &str) -> Vec<Vec<u8>> {
        self.stored()
            .into_iter()
            .filter(|(u, _)| u == user)
            .map(|(_, d)| d.body.to_vec())
            .collect()
    }

    fn checked(&self) -> Vec<String> {
        self.checked.lock().unwrap().clone()
    }
}

impl Mailboxes for Fake {
    type Route = ();

    async fn domains(&self) -> Option<Arc<BTreeSet<String>>> {
        Some(Arc::new(BTreeSet::from(["megamail.test".to_string()])))
    }

    async fn check(&self, addr: &str, _trace: &str) -> Verdict<()> {
        self.checked.lock().unwrap().push(addr.to_string());
        let user = addr.to_lowercase();
        if let Some(reply) = self.unsure.get(&user) {
            return Verdict::Deferred(reply.clone());
        }
        if self.bad.contains(&user) {
            return Verdict::BadAddress("not a mailbox name".into());
        }
        if self.users.contains(&user) {
            Verdict::Accepted(Recipient { user, route: () })
        } else {
            Verdict::NoSuchUser
        }
    }

    async fn deliver(&self, copies: Vec<MessageCopy<()>>, _trace: &str) -> Vec<Outcome> {
        if let Some(b) = self.budget.get() {
            self.held_at_delivery.lock().unwrap().push(b.used());
        }
        copies
            .into_iter()
            .map(|c| {
                if self.failing.contains(&c.rcpt.user) {
                    Outcome::Deferred("451 4.4.1 Mailbox store unreachable, try again later".into())
                } else {
                    self.stored
                        .lock()
                        .unwrap()
                        .push((c.rcpt.user.clone(), c.delivery));
                    Outcome::Stored { duplicate: false }
                }
            })
            .collect()
    }
}

fn config() -> SmtpInConfig {
    SmtpInConfig {
        hostname: "mx.megamail.test".into(),
        max_message_bytes: 10 * 1024 * 1024,
        ..Default::default()
    }
}

/// One reply: its lines without their CRLF.
#[derive(Debug, Clone)]
struct Reply {
    lines: Vec<String>,
}

impl Reply {
    /// Assert the reply's code (and enhanced code, when `want` names one), e.g. `"550 5.1.1"`,
    /// or its whole first line.
    #[track_caller]
    fn expect(self, want: &str) -> Reply {
        let first = &self.lines[0];
        let matches = first.strip_prefix(want).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(' ') || (want.len() == 3 && rest.starts_with('-'))
        });
        assert!(matches, "wanted {want:?}, got {:?}", self.lines);
        self
    }

    /// The text after the code of each line.
    fn texts(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|l| l.get(4..).unwrap_or(""))
            .collect()
    }

    fn first(&self) -> &str {
        &self.lines[0]
    }
}

/// A hand-driven SMTP client on one end of the pipe (or of TLS over it); the session serves the
/// other.
struct Client<S = DuplexStream> {
    rd: BufReader<ReadHalf<S>>,
    wr: WriteHalf<S>,
    server: JoinHandle<()>,
    shutdown: Shutdown,
}

/// Start a session with `fake` behind it; the greeting is read and checked.
async fn start(cfg: SmtpInConfig, fake: Fake) -> (Client, Arc<Ctx<Fake>>) {
    start_with(cfg, None, fake).await
}

async fn start_with(
    cfg: SmtpInConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    fake: Fake,
) -> (Client, Arc<Ctx<Fake>>) {
    let ctx = Arc::new(Ctx::new(cfg, tls, fake));
    ctx.mailboxes.budget.set(ctx.budget.clone()).unwrap();
    let mut c = connect(&ctx).await;
    c.reply()
        .await
        .expect("220 mx.megamail.test ESMTP megamail ready");
    (c, ctx)
}

/// A new session on the same context; the greeting is left unread.
async fn connect(ctx: &Arc<Ctx<Fake>>) -> Client {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let shutdown = Shutdown::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let server = tokio::spawn(super::serve(ctx.clone(), server, peer, shutdown.clone()));
    let (rd, wr) = tokio::io::split(client);
    Client {
        rd: BufReader::new(rd),
        wr,
        server,
        shutdown,
    }
}

/// The users the tests deliver to.
fn users() -> Fake {
    Fake::with_users(&[
        "alice@megamail.test",
        "bob@megamail.test",
        "carol@megamail.test",
        "dave@megamail.test",
        "erin@megamail.test",
        "postmaster@megamail.test",
    ])
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn write(&mut self, raw: &[u8]) {
        self.wr.write_all(raw).await.expect("write");
    }

    /// Send one command line and read its reply.
    async fn send(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// The next reply, all its lines.
    async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(WAIT, self.rd.read_until(b'\n', &mut line))
                .await
                .expect("a reply within the wait")
                .expect("read");
            assert!(n > 0, "connection closed; got so far: {lines:?}");
            assert!(line.ends_with(b"\r\n"), "reply line without CRLF: {line:?}");
            line.truncate(line.len() - 2);
            let line = String::from_utf8(line).expect("replies are UTF-8");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Reply { lines };
            }
        }
    }

    /// Assert the server closed the connection (nothing more comes) and its task ended cleanly.
    async fn closed(self) {
        let Client {
            mut rd, server, wr, ..
        } = self;
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, rd.read_to_end(&mut rest))
            .await
            .expect("closed within the wait")
            .expect("read");
        assert_eq!(String::from_utf8_lossy(&rest), "", "after the last reply");
        drop(wr);
        server.await.expect("the session ends without a panic");
    }

    async fn ehlo(&mut self) {
        self.send("EHLO client.remote.test").await.expect("250");
    }

    /// MAIL and a RCPT for each of `rcpts`, all `250`.
    async fn envelope(&mut self, from: &str, rcpts: &[&str]) {
        self.send(&format!("MAIL FROM:<{from}>"))
            .await
            .expect("250 2.1.0");
        for r in rcpts {
            self.send(&format!("RCPT TO:<{r}>"))
                .await
                .expect("250 2.1.5");
        }
    }

    /// DATA, `354`, then `data` as it goes on the wire (stuffed by the caller) and the end of
    /// data; the final reply.
    async fn data(&mut self, data: &[u8]) -> Reply {
        self.send("DATA").await.expect("354");
        self.write(data).await;
        self.write(b".\r\n").await;
        self.reply().await
    }
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@remote.test>\r\nTo: alice@megamail.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\n{body}"
    )
}

/// The message id a `250` names (`250 2.0.0 Ok: stored as <id>`).
fn stored_as(r: &Reply) -> String {
    r.first()
        .strip_prefix("250 2.0.0 Ok: stored as ")
        .unwrap_or_else(|| panic!("not a stored reply: {r:?}"))
        .to_string()
}

/// What a recipient's copy must be: the trace line, then the data exactly as received. The
/// trace line names the recipient (`rcpt`) only of a message for one recipient.
fn with_trace(
    protocol: &str,
    trace: &str,
    rcpt: Option<&str>,
    delivery: &Delivery,
    helo: &str,
    data: &[u8],
) -> Vec<u8> {
    let date = mail_parser::DateTime::from_timestamp((delivery.internal_date_ms / 1000) as i64)
        .to_rfc822();
    let head = format!(
        "Received: from {helo} ([192.0.2.7])\r\n\tby mx.megamail.test (megamail smtp-in) with {protocol} id {trace}"
    );
    let mut want = match rcpt {
        Some(rcpt) => format!("{head}\r\n\tfor <{rcpt}>; {date}\r\n"),
        None => format!("{head};\r\n\t{date}\r\n"),
    }
    .into_bytes();
    want.extend_from_slice(data);
    want
}

#[tokio::test(start_paused = true)]
async fn ehlo_lists_the_extensions_and_helo_does_not() {
    let (mut c, _) = start(config(), users()).await;
    let r = c.send("EHLO client.remote.test").await.expect("250");
    assert_eq!(
        r.lines,
        vec![
            "250-mx.megamail.test Hello client.remote.test [192.0.2.7]",
            "250-PIPELINING",
            "250-SIZE 10485760",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-ENHANCEDSTATUSCODES",
            "250-CHUNKING",
            "250 HELP",
        ],
        "no certificate, no STARTTLS"
    );
    let r = c.send("HELO old.remote.test").await.expect("250");
    assert_eq!(r.lines, vec!["250 mx.megamail.test"]);
    c.send("EHLO").await.expect("501 5.5.4");
    c.send("HELO   ").await.expect("501 5.5.4");
    c.send("STARTTLS").await.expect("502 5.5.1");
    // A bare CR or another control character in a command is refused, never echoed.
    for bad in [
        "EHLO evil\r250 forged.test",
        "EHLO a\u{b}b",
        "HELO x\u{1b}[31m",
        "NOOP \0",
    ] {
        let r = c.send(bad).await.expect("500 5.5.2");
        assert!(r
            .lines
            .iter()
            .all(|l| !l.contains("evil") && !l.contains("forged")));
    }
    c.send("QUIT").await.expect("221 2.0.0 Bye");
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn the_basic_commands_answer_as_rfc_5321_says() {
    let (mut c, ctx) = start(config(), users()).await;
    c.send("MAIL FROM:<a@remote.test>")
        .await
        .expect("503 5.5.1");
    c.ehlo().await;
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("503 5.5.1");
    c.send("DATA").await.expect("503 5.5.1");
    c.send("VRFY alice").await.expect("252 2.5.2");
    let help = c.send("HELP").await.expect("214 2.0.0");
    assert_eq!(
        help.texts(),
        vec!["2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS"]
    );
    c.send("NOOP").await.expect("250 2.0.0");
    c.send("noop with an argument").await.expect("250 2.0.0");
    c.send("EXPN staff").await.expect("502 5.5.1");
    c.send("FROB").await.expect("500 5.5.2");
    c.send("").await.expect("500 5.5.2 Error: empty command");
    c.send("MAIL FROM:a@remote.test").await.expect("501 5.5.4");
    c.send("MAIL FROM:<a@remote.test> FANCY=1")
        .await
        .expect("555 5.5.4");
    c.send("MAIL FROM:<>").await.expect("250 2.1.0");
    c.send("MAIL FROM:<a@remote.test>")
        .await
        .expect("503 5.5.1 Error: nested MAIL command");
    c.send("DATA")
        .await
        .expect("554 5.5.1 Error: no valid recipients");
    c.send("DATA now").await.expect("501 5.5.4");
    c.send("RCPT TO:<not an address>").await.expect("501 5.1.3");
    c.send("RCPT TO:alice@megamail.test")
        .await
        .expect("501 5.5.4");
    c.send("RCPT TO:<alice@megamail.test> NOTIFY=NEVER")
        .await
        .expect("555 5.5.4");
    c.send("RSET").await.expect("250 2.0.0");
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("503 5.5.1 Error: need MAIL command");
    c.send("HELO old.remote.test").await.expect("250");
    c.send("MAIL FROM:<a@remote.test>")
        .await
        .expect("250 2.1.0");
    // Postmaster without a domain is the first local domain's.
    c.send("RCPT TO:<Postmaster>").await.expect("250 2.1.5");
    assert_eq!(ctx.mailboxes.checked(), vec!["postmaster@megamail.test"]);
    c.send("QUIT").await.expect("221 2.0.0");
    c.closed().await;
    assert!(ctx.mailboxes.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn mail_from_parameters_and_sender_syntax() {
    let mut cfg = config();
    cfg.max_message_bytes = 4096;
    let (mut c, _) = start(cfg, users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test> SIZE=5000")
        .await
        .expect("552 5.3.4");
    c.send("MAIL FROM:<a@remote.test> SIZE=lots")
        .await
        .expect("501 5.5.4 Bad SIZE parameter");
    c.send("MAIL FROM:<a@remote.test> BODY=BINARYMIME")
        .await
        .expect("555 5.5.4 Unsupported BODY type");
    c.send("MAIL FROM:<not-an-address>")
        .await
        .expect("501 5.1.7");
    c.send("MAIL FROM:<jörg@remote.test>")
        .await
        .expect("553 5.6.7");
    c.send("MAIL FROM:<jörg@remote.test> SMTPUTF8")
        .await
        .expect("250 2.1.0");
    c.send("RSET").await.expect("250 2.0.0");
    c.send("mail from: <a@remote.test> size=4096 body=8bitmime")
        .await
        .expect("250 2.1.0");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_user_is_550_5_1_1_and_the_transaction_goes_on() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>").await.expect("250");
    let r = c
        .send("RCPT TO:<nobody@megamail.test>")
        .await
        .expect("550 5.1.1");
    assert_eq!(
        r.first(),
        "550 5.1.1 <nobody@megamail.test>: Recipient address rejected: no such user here"
    );
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("250 2.1.5");
    let r = c.data(message("one", "hi\r\n").as_bytes()).await;
    r.expect("250 2.0.0");
    let stored: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(stored, vec!["alice@megamail.test"]);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_domain_is_550_5_7_1_never_a_relay() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<alice@megamail.test>")
        .await
        .expect("250");
    for rcpt in [
        "someone@elsewhere.test",
        "alice@megamail.test.evil.test",
        "alice%elsewhere.test@relay.test",
        "@megamail.test:victim@elsewhere.test",
    ] {
        let r = c
            .send(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect("550 5.7.1");
        assert!(r.first().ends_with(">: Relay access denied"), "{r:?}");
    }
    // The mailboxes were never asked about another domain.
    assert!(ctx.mailboxes.checked().is_empty());
    // Case does not matter for our own domain.
    c.send("RCPT TO:<Alice@MegaMail.TEST>")
        .await
        .expect("250 2.1.5");
    assert_eq!(ctx.mailboxes.checked(), vec!["Alice@MegaMail.TEST"]);
}

#[tokio::test(start_paused = true)]
async fn an_unsure_or_malformed_recipient_gets_the_mailboxes_answer() {
    let mut fake = users();
    let unsure = "451 4.4.3 <frank@megamail.test>: Recipient lookup failed (directory unreachable), try again later";
    fake.unsure
        .insert("frank@megamail.test".into(), unsure.into());
    fake.unsure.insert(
        "gina@megamail.test".into(),
        "452 4.2.2 <gina@megamail.test>: Mailbox full".into(),
    );
    fake.bad.insert("x..y@megamail.test".into());
    let (mut c, ctx) = start(config(), fake).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>").await.expect("250");
    let r = c
        .send("RCPT TO:<frank@megamail.test>")
        .await
        .expect("451 4.4.3");
    assert_eq!(r.first(), unsure);
    c.send("RCPT TO:<gina@megamail.test>")
        .await
        .expect("452 4.2.2");
    let r = c
        .send("RCPT TO:<x..y@megamail.test>")
        .await
        .expect("501 5.1.3");
    assert_eq!(
        r.first(),
        "501 5.1.3 Bad recipient address syntax: not a mailbox name"
    );
    c.send("RCPT TO:<jörg@megamail.test>")
        .await
        .expect("553 5.6.7");
    c.send("RCPT TO:<bob@megamail.test>").await.expect("250");
    c.data(message("some", "x\r\n").as_bytes())
        .await
        .expect("250 2.0.0");
    let stored: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(stored, vec!["bob@megamail.test"]);
}

#[tokio::test(start_paused = true)]
async fn too_many_recipients_is_452_4_5_3() {
    let mut cfg = config();
    cfg.max_recipients = 3;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    c.envelope(
        "a@remote.test",
        &[
            "alice@megamail.test",
            "bob@megamail.test",
            "carol@megamail.test",
        ],
    )
    .await;
    for u in ["dave", "erin"] {
        c.send(&format!("RCPT TO:<{u}@megamail.test>"))
            .await
            .expect("452 4.5.3");
    }
    // A foreign domain is still refused as such past the limit.
    c.send("RCPT TO:<x@elsewhere.test>")
        .await
        .expect("550 5.7.1");
    c.data(message("many", "to many\r\n").as_bytes())
        .await
        .expect("250 2.0.0");
    let stored: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(
        stored,
        vec![
            "alice@megamail.test",
            "bob@megamail.test",
            "carol@megamail.test"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_mailbox_named_twice_gets_one_copy() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.envelope(
        "a@remote.test",
        &["alice@megamail.test", "ALICE@megamail.test"],
    )
    .await;
    c.data(message("twice", "x\r\n").as_bytes())
        .await
        .expect("250 2.0.0");
    assert_eq!(ctx.mailboxes.stored().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_too_big_is_552_5_3_4_declared_or_not() {
    let mut cfg = config();
    cfg.max_message_bytes = 4096;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test> SIZE=5000")
        .await
        .expect("552 5.3.4");
    c.send("MAIL FROM:<a@remote.test> SIZE=100")
        .await
        .expect("250");
    c.send("RCPT TO:<alice@megamail.test>").await.expect("250");
    let big = message("big", &"x".repeat(70).repeat(80).replace("xx", "x\r\n"));
    c.data(format!("{big}\r\n").as_bytes())
        .await
        .expect("552 5.3.4 Error: message too big");
    // The session is still in step and usable.
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let small = message("small", "hi\r\n");
    c.data(small.as_bytes()).await.expect("250 2.0.0");
    assert_eq!(ctx.mailboxes.bodies("alice@megamail.test").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_exactly_at_the_limit_is_taken() {
    let mut cfg = config();
    cfg.max_message_bytes = 4096;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    let head = message("exact", "");
    let mut data = head.into_bytes();
    while data.len() < 4096 - 2 {
        data.push(b'y');
    }
    data.extend_from_slice(b"\r\n");
    assert_eq!(data.len(), 4096);
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.data(&data).await.expect("250 2.0.0");
    data.insert(data.len() - 2, b'z');
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.data(&data).await.expect("552 5.3.4");
    assert_eq!(ctx.mailboxes.bodies("alice@megamail.test").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_line_too_long_is_refused_in_commands_and_in_data() {
    let mut cfg = config();
    cfg.max_line_bytes = 1000;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    let long = format!("NOOP {}", "a".repeat(5000));
    let r = c.send(&long).await.expect("500 5.5.2");
    assert_eq!(
        r.first(),
        "500 5.5.2 Error: line too long (limit 1000 bytes)"
    );
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let r = c
        .data(message("long", &format!("{}\r\n", "b".repeat(3000))).as_bytes())
        .await
        .expect("554 5.6.0");
    assert_eq!(
        r.first(),
        "554 5.6.0 Error: message has a line longer than 1000 bytes"
    );
    c.send("NOOP").await.expect("250");
    assert!(ctx.mailboxes.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_command_that_is_not_utf8_is_500_and_multibyte_text_is_handled() {
    let (mut c, ctx) = start(config(), users()).await;
    c.write(b"EHLO \xff\xfe\r\n").await;
    c.reply()
        .await
        .expect("500 5.5.2 Error: command is not valid UTF-8");
    // Multibyte characters where the parser looks for a verb, a keyword or a bracket.
    c.send("ÉHLO x").await.expect("500 5.5.2");
    c.send("€").await.expect("500 5.5.2");
    let r = c.send("EHLO ☃.test").await.expect("250");
    assert_eq!(r.lines[0], "250-mx.megamail.test Hello ☃.test [192.0.2.7]");
    c.send("MAIL FRÖM:<a@remote.test>")
        .await
        .expect("501 5.5.4");
    c.send("MAIL FR€:<a@remote.test>").await.expect("501 5.5.4");
    c.send("MAIL FRO€:<a@remote.test>")
        .await
        .expect("501 5.5.4");
    c.send("MAIL FROM:<日本@例え.jp> SMTPUTF8")
        .await
        .expect("250 2.1.0");
    c.send("RCPT Tö:<alice@megamail.test>")
        .await
        .expect("501 5.5.4");
    c.send("RCPT TO:<ёлка@megamail.test>")
        .await
        .expect("550 5.1.1");
    c.send("RCPT TO:<ёлка@пример.рф>").await.expect("550 5.7.1");
    c.send("RCPT TO:<@€,@ü:alice@megamail.test>")
        .await
        .expect("250 2.1.5");
    assert_eq!(
        ctx.mailboxes.checked(),
        vec!["ёлка@megamail.test", "alice@megamail.test"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_delivered_copy_is_the_trace_line_then_the_exact_bytes() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<отправитель@remote.test> SMTPUTF8 BODY=8BITMIME")
        .await
        .expect("250");
    c.send("RCPT TO:<alice@megamail.test>").await.expect("250");
    c.send("RCPT TO:<bob@megamail.test>").await.expect("250");
    // Raw UTF-8 headers (RFC 6532) and encoded words, names and file names in five scripts.
    let data = "From: =?UTF-8?B?2LPYp9ix2Kk=?= <sara@remote.test>\r\n\
To: Алиса <alice@megamail.test>, 鲍勃 <bob@megamail.test>\r\n\
Subject: Отчёт за квартал 📊 — 季度报告\r\n\
Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <utf8@remote.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Привет! 你好！ こんにちは 🎉\r\n\
--b1\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"報告書.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0=\r\n\
--b1--\r\n";
    let r = c.data(data.as_bytes()).await.expect("250 2.0.0");
    let trace = stored_as(&r);
    let stored = ctx.mailboxes.stored();
    assert_eq!(stored.len(), 2);
    for (user, d) in &stored {
        let want = with_trace(
            "UTF8SMTP",
            &trace,
            None,
            d,
            "client.remote.test",
            data.as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&d.body),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(d.body, want);
        assert_eq!(d.folder, None);
        assert_eq!(
            d.id,
            crate::message::delivery_id("отправитель@remote.test", user, data.as_bytes())
        );
        assert_eq!(d.summary.from, "سارة <sara@remote.test>");
        assert_eq!(
            d.summary.to,
            "Алиса <alice@megamail.test>, 鲍勃 <bob@megamail.test>"
        );
        assert_eq!(d.summary.subject, "Отчёт за квартал 📊 — 季度报告");
        assert_eq!(d.summary.preview, "Привет! 你好！ こんにちは 🎉");
        assert_eq!(d.summary.attachments, vec!["報告書.pdf".to_string()]);
    }
    let users: Vec<&str> = stored.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(users, vec!["alice@megamail.test", "bob@megamail.test"]);
    // Each copy has its own delivery id.
    assert_ne!(stored[0].1.id, stored[1].1.id);
}

#[tokio::test(start_paused = true)]
async fn the_trace_line_names_how_the_message_came() {
    let (mut c, ctx) = start(config(), users()).await;
    c.send("HELO old.remote.test").await.expect("250");
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let data = message("plain", "hi\r\n");
    let r = c.data(data.as_bytes()).await.expect("250 2.0.0");
    let trace = stored_as(&r);
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let r = c.data(data.as_bytes()).await.expect("250 2.0.0");
    let trace2 = stored_as(&r);
    // One session, numbered messages.
    let (session, n) = trace.rsplit_once('.').unwrap();
    assert_eq!(n, "1");
    assert_eq!(trace2, format!("{session}.2"));
    let stored = ctx.mailboxes.stored();
    let rcpt = "alice@megamail.test";
    let d = &stored[0].1;
    assert_eq!(
        d.body,
        with_trace(
            "SMTP",
            &trace,
            Some(rcpt),
            d,
            "old.remote.test",
            data.as_bytes()
        )
    );
    let d = &stored[1].1;
    assert_eq!(
        d.body,
        with_trace(
            "ESMTP",
            &trace2,
            Some(rcpt),
            d,
            "client.remote.test",
            data.as_bytes()
        )
    );
    // The same message again is the same delivery (the store keeps one).
    assert_eq!(stored[0].1.id, stored[1].1.id);
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_is_not_stored_makes_the_message_451() {
    let mut fake = users();
    fake.failing.insert("bob@megamail.test".into());
    let (mut c, ctx) = start(config(), fake).await;
    c.ehlo().await;
    c.envelope(
        "a@remote.test",
        &["alice@megamail.test", "bob@megamail.test"],
    )
    .await;
    let r = c.data(message("half", "x\r\n").as_bytes()).await;
    let r = r.expect("451 4.4.1");
    assert_eq!(
        r.first(),
        "451 4.4.1 Mailbox store unreachable, try again later"
    );
    // Alice's copy is durable; the sender's retry must not duplicate it (the delivery id).
    let stored: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(stored, vec!["alice@megamail.test"]);
    // The transaction is over either way.
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("503 5.5.1");
}

#[tokio::test(start_paused = true)]
async fn smuggling_attempts_do_not_end_the_data() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    let smuggled = "MAIL FROM:<admin@megamail.test>\r\nRCPT TO:<bob@megamail.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nforged\r\n";
    for (i, end) in ["\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r.\r\n"]
        .iter()
        .enumerate()
    {
        c.envelope("a@remote.test", &["alice@megamail.test"]).await;
        let mut body = message(&format!("attempt{i}"), "legit").into_bytes();
        body.extend_from_slice(end.as_bytes());
        body.extend_from_slice(smuggled.as_bytes());
        // Only the real end of data ends it: one reply, one message.
        let r = c.data(&body).await.expect("250 2.0.0");
        let trace = stored_as(&r);
        let stored = ctx.mailboxes.stored();
        let (user, d) = stored.last().unwrap();
        assert_eq!(user, "alice@megamail.test");
        // The would-be terminator and the smuggled text are part of this message, byte for
        // byte; only a CRLF-started line's leading dot is unstuffed (RFC 5321 section 4.5.2).
        let want = String::from_utf8(body.clone())
            .unwrap()
            .replace("legit\r\n.\n", "legit\r\n\n");
        let want = with_trace(
            "ESMTP",
            &trace,
            Some(user),
            d,
            "client.remote.test",
            want.as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&d.body),
            String::from_utf8_lossy(&want)
        );
    }
    c.send("NOOP").await.expect("250");
    assert!(
        ctx.mailboxes.bodies("bob@megamail.test").is_empty(),
        "smuggled mail"
    );
    assert_eq!(ctx.mailboxes.bodies("alice@megamail.test").len(), 5);
    assert_eq!(ctx.mailboxes.checked().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn dot_stuffing_is_undone_exactly() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let r = c
        .data(b"Subject: dots\r\n\r\n..one\r\n...two\r\n.\tthree\r\nfour.\r\n..\r\n")
        .await
        .expect("250 2.0.0");
    let trace = stored_as(&r);
    let (user, d) = &ctx.mailboxes.stored()[0];
    assert_eq!(
        d.body,
        with_trace(
            "ESMTP",
            &trace,
            Some(user),
            d,
            "client.remote.test",
            b"Subject: dots\r\n\r\n.one\r\n..two\r\n\tthree\r\nfour.\r\n.\r\n"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn bdat_chunks_make_one_byte_exact_message() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    // BDAT without a transaction: the chunk is read and refused, the session stays in step.
    c.write(b"BDAT 5\r\nhello").await;
    c.reply().await.expect("503 5.5.1");
    c.send("MAIL FROM:<a@remote.test> BODY=8BITMIME")
        .await
        .expect("250");
    // No recipient yet: refused the same way.
    c.write(b"BDAT 5 LAST\r\nhello").await;
    c.reply()
        .await
        .expect("554 5.5.1 Error: no valid recipients");
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    // Chunks are taken as they are: no dot-stuffing, and CRLF.CRLF inside means nothing.
    let part1 =
        b"Subject: chunked\r\nMessage-ID: <bdat@remote.test>\r\n\r\nfirst\r\n.\r\n..dots stay\r\n";
    let part2 = "second part, 8-bit: d\u{e9}j\u{e0} vu, 日本語 🙂\r\n".as_bytes();
    c.write(format!("BDAT {}\r\n", part1.len()).as_bytes())
        .await;
    c.write(part1).await;
    let r = c.reply().await.expect("250 2.0.0");
    assert_eq!(
        r.first(),
        format!("250 2.0.0 {} octets received", part1.len())
    );
    // DATA and RCPT cannot be mixed in.
    c.send("DATA")
        .await
        .expect("503 5.5.1 Error: DATA after BDAT");
    c.send("RCPT TO:<bob@megamail.test>")
        .await
        .expect("503 5.5.1 Error: RCPT after BDAT");
    c.write(format!("BDAT {} last\r\n", part2.len()).as_bytes())
        .await;
    c.write(part2).await;
    let r = c.reply().await.expect("250 2.0.0");
    let trace = stored_as(&r);
    c.send("NOOP").await.expect("250");
    let stored = ctx.mailboxes.stored();
    assert_eq!(stored.len(), 1);
    let mut want = part1.to_vec();
    want.extend_from_slice(part2);
    let (user, d) = &stored[0];
    assert_eq!(
        d.body,
        with_trace("ESMTP", &trace, Some(user), d, "client.remote.test", &want)
    );
    assert_eq!(d.summary.subject, "chunked");
    // A bad BDAT size cannot be resynchronized: the server says so and closes.
    c.write(b"BDAT lots\r\n").await;
    c.reply()
        .await
        .expect("501 5.5.4 Syntax: BDAT size [LAST]; closing the connection");
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn bdat_over_the_size_limit_is_552_after_the_last_chunk() {
    let mut cfg = config();
    cfg.max_message_bytes = 4096;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let chunk = vec![b'x'; 3000];
    for _ in 0..2 {
        c.write(b"BDAT 3000\r\n").await;
        c.write(&chunk).await;
        c.reply().await.expect("250 2.0.0");
    }
    c.write(b"BDAT 0 LAST\r\n").await;
    c.reply().await.expect("552 5.3.4 Error: message too big");
    // In step: the next message goes through.
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.write(b"BDAT 4 LAST\r\nhi\r\n").await;
    c.reply().await.expect("250 2.0.0");
    let bodies = ctx.mailboxes.bodies("alice@megamail.test");
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].ends_with(b"\r\nhi\r\n"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_times_out_with_421_at_the_command_timeout() {
    let mut cfg = config();
    cfg.command_timeout_secs = 300;
    let (mut c, _) = start(cfg, users()).await;
    let t0 = Instant::now();
    let r = c.reply().await.expect("421 4.4.2");
    assert_eq!(
        r.first(),
        "421 4.4.2 mx.megamail.test Error: timeout exceeded"
    );
    assert_eq!(t0.elapsed().as_secs(), 300);
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_command_line_that_never_ends_is_cut_at_the_command_timeout() {
    let mut cfg = config();
    cfg.command_timeout_secs = 300;
    let (mut c, _) = start(cfg, users()).await;
    c.ehlo().await;
    let t0 = Instant::now();
    // A byte a second and never a line feed: each byte arrives well within the timeout, but the
    // timeout is for the whole line.
    let (rd, wr) = (&mut c.rd, &mut c.wr);
    let trickle = async {
        while wr.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut line = String::new();
    let replied = tokio::time::timeout(WAIT, async {
        tokio::select! {
            r = rd.read_line(&mut line) => r.expect("read"),
            () = trickle => panic!("the server closed without a reply"),
        }
    });
    replied.await.expect("a reply while the line goes on");
    assert_eq!(
        line,
        "421 4.4.2 mx.megamail.test Error: timeout exceeded\r\n"
    );
    assert_eq!(t0.elapsed().as_secs(), 300);
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_data_times_out_with_421_and_nothing_is_stored() {
    let mut cfg = config();
    cfg.data_timeout_secs = 60;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.send("DATA").await.expect("354");
    c.write(b"Subject: half\r\n\r\nsome of it").await;
    let t0 = Instant::now();
    c.reply().await.expect("421 4.4.2");
    assert_eq!(t0.elapsed().as_secs(), 60);
    c.closed().await;
    assert!(ctx.mailboxes.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_bdat_chunk_times_out_with_421() {
    let mut cfg = config();
    cfg.data_timeout_secs = 60;
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.write(b"BDAT 100 LAST\r\nshort").await;
    c.reply().await.expect("421 4.4.2");
    c.closed().await;
    assert!(ctx.mailboxes.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pipelined_commands_get_every_reply_in_order() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    // One write: the envelope with a bad recipient in the middle, then DATA.
    c.write(
        b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@megamail.test>\r\nRCPT TO:<nobody@megamail.test>\r\nRCPT TO:<bob@megamail.test>\r\nDATA\r\n",
    )
    .await;
    for want in ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354"] {
        c.reply().await.expect(want);
    }
    // The message, its end, and the next transaction in one write as well.
    let mut batch = message("piped", "one\r\n").into_bytes();
    batch.extend_from_slice(b".\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    c.write(&batch).await;
    for want in ["250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"] {
        c.reply().await.expect(want);
    }
    c.closed().await;
    let stored: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(stored, vec!["alice@megamail.test", "bob@megamail.test"]);
}

#[tokio::test(start_paused = true)]
async fn twenty_bad_commands_close_the_session() {
    let (mut c, _) = start(config(), users()).await;
    for _ in 0..19 {
        c.send("XYZZY").await.expect("500 5.5.2");
    }
    c.send("XYZZY").await.expect("500 5.5.2");
    c.reply()
        .await
        .expect("421 4.7.0 Too many errors, closing the connection");
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn garbage_and_hostile_input_end_sessions_without_a_panic() {
    let ctx = Arc::new(Ctx::new(config(), None, users()));
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\xff\xfe\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![b'A'; 200_000],
        b"EHLO\r\nMAIL FROM:<\r\nRCPT TO:<>\r\nBDAT 99999999999999999999\r\n".to_vec(),
        b"EHLO x\r\nMAIL FROM:<a@r.test>\r\nRCPT TO:<alice@megamail.test>\r\nBDAT 100 LAST\r\nshort".to_vec(),
        "EHLO \u{fffd}\r\nMAIL FROM:<j\u{f6}rg@r.test>\r\n".as_bytes().to_vec(),
        b"EHLO x\r\nMAIL FROM:<a@r.test>\r\nRCPT TO:<alice@megamail.test>\r\nDATA\r\nSubject: cut".to_vec(),
    ];
    for input in inputs {
        let mut c = connect(&ctx).await;
        c.write(&input).await;
        c.wr.shutdown().await.expect("shutdown");
        let mut sink = Vec::new();
        tokio::time::timeout(WAIT, c.rd.read_to_end(&mut sink))
            .await
            .expect("closed within the wait")
            .expect("read");
        assert!(
            sink.starts_with(b"220 "),
            "{}",
            String::from_utf8_lossy(&sink)
        );
        c.server.await.expect("the session ends without a panic");
    }
    assert!(ctx.mailboxes.stored().is_empty());
    // A good session afterwards.
    let mut c = connect(&ctx).await;
    c.reply().await.expect("220");
    c.ehlo().await;
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.data(message("after-garbage", "ok\r\n").as_bytes())
        .await
        .expect("250 2.0.0");
}

#[tokio::test(start_paused = true)]
async fn shutdown_tells_a_waiting_client_421_4_3_2() {
    let (mut c, _) = start(config(), users()).await;
    c.ehlo().await;
    c.shutdown.trigger();
    c.reply()
        .await
        .expect("421 4.3.2 Service shutting down, try again later");
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn every_copy_shares_one_body() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    let rcpts = [
        "alice@megamail.test",
        "bob@megamail.test",
        "carol@megamail.test",
        "dave@megamail.test",
    ];
    c.envelope("a@remote.test", &rcpts).await;
    let data = message("shared", &"a line of the body\r\n".repeat(5000));
    let r = c.data(data.as_bytes()).await.expect("250 2.0.0");
    let trace = stored_as(&r);
    let stored = ctx.mailboxes.stored();
    assert_eq!(stored.len(), 4);
    let first = &stored[0].1.body;
    for (user, d) in &stored {
        let want = with_trace(
            "ESMTP",
            &trace,
            None,
            d,
            "client.remote.test",
            data.as_bytes(),
        );
        assert_eq!(d.body, want, "{user}");
        // The same bytes in memory, not an equal copy.
        assert_eq!(d.body.as_ptr(), first.as_ptr(), "{user}");
        assert_eq!(
            d.id,
            crate::message::delivery_id("a@remote.test", user, data.as_bytes())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_declared_size_past_the_data_budget_is_452_4_3_1() {
    let cfg = SmtpInConfig {
        max_data_in_flight_bytes: 64 * 1024,
        ..config()
    };
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    // Within the size limit, past what the budget holds: refused at RCPT, no lookup made.
    c.send("MAIL FROM:<a@remote.test> SIZE=100000")
        .await
        .expect("250 2.1.0");
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("452 4.3.1");
    assert!(ctx.mailboxes.checked().is_empty());
    c.send("RSET").await.expect("250");
    // Fits at RCPT; by DATA other sessions hold the budget.
    c.send("MAIL FROM:<a@remote.test> SIZE=30000")
        .await
        .expect("250 2.1.0");
    c.send("RCPT TO:<alice@megamail.test>")
        .await
        .expect("250 2.1.5");
    let mut others = ctx.budget.reservation();
    assert!(others.grow_to(40 * 1024));
    c.send("DATA").await.expect("452 4.3.1");
    drop(others);
    let r = c.data(message("fits", "now\r\n").as_bytes()).await;
    r.expect("250 2.0.0");
    assert_eq!(ctx.mailboxes.stored().len(), 1);
    assert_eq!(ctx.budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn data_past_the_budget_is_421_4_3_2_and_the_budget_is_given_back() {
    let cfg = SmtpInConfig {
        max_data_in_flight_bytes: 64 * 1024,
        ..config()
    };
    let (mut c, ctx) = start(cfg, users()).await;
    c.ehlo().await;
    // Held while the copies are delivered, given back after.
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let small = message("small", &format!("{}\r\n", "x".repeat(98)).repeat(200));
    c.data(small.as_bytes()).await.expect("250 2.0.0");
    let held = ctx.mailboxes.held_at_delivery.lock().unwrap().clone();
    assert_eq!(held.len(), 1);
    assert!(held[0] >= small.len() && held[0] <= 64 * 1024, "{held:?}");
    assert_eq!(ctx.budget.used(), 0);
    // DATA bigger than the whole budget (no SIZE declared): the session is closed mid-data.
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    c.send("DATA").await.expect("354");
    c.write(message("big", &format!("{}\r\n", "y".repeat(98)).repeat(1000)).as_bytes())
        .await;
    c.reply().await.expect("421 4.3.2");
    c.closed().await;
    assert_eq!(ctx.budget.used(), 0);
    // BDAT alike.
    let mut c = connect(&ctx).await;
    c.reply().await.expect("220");
    c.ehlo().await;
    c.envelope("a@remote.test", &["bob@megamail.test"]).await;
    c.write(b"BDAT 100000 LAST\r\n").await;
    c.write(&vec![b'z'; 100_000]).await;
    c.reply().await.expect("421 4.3.2");
    c.closed().await;
    assert_eq!(ctx.budget.used(), 0);
    // Two sessions at once share it: one holding 40 KiB of BDAT chunks, the other cannot add
    // 40 KiB more.
    let mut a = connect(&ctx).await;
    a.reply().await.expect("220");
    a.ehlo().await;
    a.envelope("a@remote.test", &["carol@megamail.test"]).await;
    a.write(b"BDAT 40000\r\n").await;
    a.write(&vec![b'a'; 40_000]).await;
    a.reply().await.expect("250 2.0.0");
    let mut b = connect(&ctx).await;
    b.reply().await.expect("220");
    b.ehlo().await;
    b.envelope("a@remote.test", &["dave@megamail.test"]).await;
    b.write(b"BDAT 40000 LAST\r\n").await;
    b.write(&vec![b'b'; 40_000]).await;
    b.reply().await.expect("421 4.3.2");
    b.closed().await;
    a.write(b"BDAT 0 LAST\r\n").await;
    a.reply().await.expect("250 2.0.0");
    assert_eq!(ctx.budget.used(), 0);
    let users: Vec<String> = ctx.mailboxes.stored().into_iter().map(|s| s.0).collect();
    assert_eq!(users, vec!["alice@megamail.test", "carol@megamail.test"]);
}

#[tokio::test(start_paused = true)]
async fn guessing_addresses_slows_the_client_and_ends_the_session() {
    let (mut c, ctx) = start(config(), users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>").await.expect("250");
    // A real recipient is answered at once.
    let t = Instant::now();
    c.send("RCPT TO:<alice@megamail.test>").await.expect("250");
    assert_eq!(t.elapsed(), Duration::ZERO);
    // Each unknown one waits 0.5 s longer than the last, up to 5 s.
    let mut waits = Vec::new();
    for i in 1..20 {
        let t = Instant::now();
        c.send(&format!("RCPT TO:<guess{i}@megamail.test>"))
            .await
            .expect("550 5.1.1");
        waits.push(t.elapsed().as_millis());
    }
    assert_eq!(&waits[..3], &[500, 1000, 1500]);
    assert_eq!(waits[9..], [5000; 10]);
    // The twentieth error ends the session.
    c.send("RCPT TO:<guess20@megamail.test>")
        .await
        .expect("550 5.1.1");
    c.reply()
        .await
        .expect("421 4.7.0 Too many errors, closing the connection");
    c.closed().await;
    assert_eq!(ctx.mailboxes.checked().len(), 21);
}

#[tokio::test(start_paused = true)]
async fn the_guessing_delay_is_configurable() {
    let cfg = SmtpInConfig {
        unknown_rcpt_delay_ms: 10,
        unknown_rcpt_delay_max_ms: 30,
        ..config()
    };
    let (mut c, _) = start(cfg, users()).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>").await.expect("250");
    let t = Instant::now();
    for i in 0..5 {
        c.send(&format!("RCPT TO:<nobody{i}@megamail.test>"))
            .await
            .expect("550 5.1.1");
    }
    // 10 + 20 + 30 + 30 + 30.
    assert_eq!(t.elapsed(), Duration::from_millis(120));
}

/// The test certificate's directory (a throwaway CA and a certificate for `mx.megamail.test`).
fn tls_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

/// A TLS client that trusts only the test CA.
fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(tls_dir().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(start_paused = true)]
async fn starttls_upgrades_the_session_and_drops_what_was_pipelined_behind_it() {
    let dir = tls_dir();
    let acceptor = crate::tls::acceptor(&dir.join("mx.pem"), &dir.join("mx.key")).unwrap();
    let (mut c, ctx) = start_with(config(), Some(acceptor), users()).await;
    let r = c.send("EHLO client.remote.test").await.expect("250");
    assert_eq!(r.lines[r.lines.len() - 2], "250-STARTTLS");
    c.send("STARTTLS now")
        .await
        .expect("501 5.5.4 Syntax: STARTTLS");
    c.send("MAIL FROM:<a@remote.test>").await.expect("250");
    // A command pipelined behind STARTTLS in the clear must not survive into TLS.
    c.write(b"STARTTLS\r\nRCPT TO:<alice@megamail.test>\r\n")
        .await;
    c.reply().await.expect("220 2.0.0 Ready to start TLS");
    let Client {
        rd,
        wr,
        server,
        shutdown,
    } = c;
    assert!(rd.buffer().is_empty());
    let clear = rd.into_inner().unsplit(wr);
    let name = rustls_pki_types::ServerName::try_from("mx.megamail.test").unwrap();
    let tls = tls_connector()
        .connect(name, clear)
        .await
        .expect("handshake");
    let (rd, wr) = tokio::io::split(tls);
    let mut c = Client {
        rd: BufReader::new(rd),
        wr,
        server,
        shutdown,
    };
    // The session starts over inside TLS: no greeting, HELO/EHLO again, no envelope.
    c.send("MAIL FROM:<a@remote.test>")
        .await
        .expect("503 5.5.1");
    let r = c.send("EHLO client.remote.test").await.expect("250");
    assert!(!r.lines.iter().any(|l| l.contains("STARTTLS")), "{r:?}");
    c.send("STARTTLS")
        .await
        .expect("503 5.5.1 Error: TLS already active");
    c.envelope("a@remote.test", &["alice@megamail.test"]).await;
    let data = message("over tls", "secret\r\n");
    let r = c.data(data.as_bytes()).await.expect("250 2.0.0");
    let trace = stored_as(&r);
    c.send("QUIT").await.expect("221");
    c.closed().await;
    let stored = ctx.mailboxes.stored();
    assert_eq!(stored.len(), 1);
    let (user, d) = &stored[0];
    assert_eq!(
        d.body,
        with_trace(
            "ESMTPS",
            &trace,
            Some(user),
            d,
            "client.remote.test",
            data.as_bytes()
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_tls_handshake_ends_the_session() {
    let dir = tls_dir();
    let acceptor = crate::tls::acceptor(&dir.join("mx.pem"), &dir.join("mx.key")).unwrap();
    let (mut c, ctx) = start_with(config(), Some(acceptor), users()).await;
    c.ehlo().await;
    c.send("STARTTLS").await.expect("220 2.0.0");
    c.write(b"EHLO this is not a TLS hello\r\n").await;
    // The server closes; at most a TLS alert comes first, never an SMTP reply.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.rd.read_to_end(&mut rest))
        .await
        .expect("closed within the wait")
        .expect("read");
    assert!(rest.is_empty() || rest[0] == 0x15, "{rest:?}");
    c.server.await.expect("the session ends without a panic");
    assert!(ctx.mailboxes.stored().is_empty());
}
