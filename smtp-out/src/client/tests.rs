//! Sessions against scripted servers on in-memory streams, TLS included.

use std::sync::Arc;

use super::*;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The server end of a test connection, driven by the test's script.
struct Peer<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    fn new(io: S) -> Peer<S> {
        Peer {
            io: BufReader::new(io),
        }
    }

    /// The next line from the client, which must end with CRLF, without it.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.io.read_until(b'\n', &mut line).await.expect("read");
        assert!(line.ends_with(b"\r\n"), "not a CRLF line: {line:?}");
        line.truncate(line.len() - 2);
        String::from_utf8(line).expect("UTF-8 line")
    }

    async fn expect(&mut self, want: &str) {
        assert_eq!(self.line().await, want);
    }

    /// Sends each of the `\n`-separated lines with CRLF, all in one write.
    async fn say(&mut self, lines: &str) {
        let mut out = String::new();
        for line in lines.split('\n') {
            out.push_str(line);
            out.push_str("\r\n");
        }
        self.raw(out.as_bytes()).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The message data as sent, up to and without the terminating `.<CRLF>`.
    async fn data(&mut self) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.io.read_until(b'\n', &mut line).await.expect("read");
            assert!(n > 0, "the data ended without its terminator");
            if line == b".\r\n" {
                return data;
            }
            data.extend_from_slice(&line);
        }
    }

    /// Whatever arrives in one read: everything written at once, when it fits.
    async fn chunk(&mut self) -> Vec<u8> {
        let buf = self.io.fill_buf().await.expect("read").to_vec();
        self.io.consume(buf.len());
        buf
    }

    /// Asserts that the client sends nothing for a while: it is waiting for a reply.
    async fn quiet(&mut self) {
        let wait = tokio::time::timeout(Duration::from_secs(1), self.io.fill_buf()).await;
        assert!(wait.is_err(), "the client sent more before the reply");
    }

    /// Asserts that the client closed the connection without sending anything more.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        self.io.read_to_end(&mut rest).await.expect("read");
        assert_eq!(String::from_utf8_lossy(&rest), "");
    }

    /// The greeting, EHLO and the given EHLO reply.
    async fn open(&mut self, ehlo: &str) {
        self.say("220 mx.test ESMTP").await;
        self.expect("EHLO client.test").await;
        self.say(ehlo).await;
    }

    async fn quit(&mut self) {
        self.expect("QUIT").await;
        self.say("221 2.0.0 bye").await;
    }
}

fn pair() -> (DuplexStream, Peer<DuplexStream>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    (client, Peer::new(server))
}

fn serve<F>(script: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(script)
}

async fn connect(io: DuplexStream) -> Client<DuplexStream> {
    Client::connect(io, "client.test", Timeouts::default())
        .await
        .expect("connect")
}

fn to(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const FULL: &str = "250-mx.test\n250-PIPELINING\n250-SIZE 10000\n250-8BITMIME\n250-SMTPUTF8\n250 ENHANCEDSTATUSCODES";
const PLAIN: &str = "250-mx.test\n250 SIZE";

#[tokio::test]
async fn greeting_and_ehlo() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.say("220-mx.test ESMTP\n220 welcome").await;
        p.expect("EHLO client.test").await;
        p.say("250-mx.test greets client.test\n250-PIPELINING\n250-SIZE 35882577\n250-8BITMIME\n250-SMTPUTF8\n250-STARTTLS\n250 ENHANCEDSTATUSCODES").await;
        p.quit().await;
    });
    let c = connect(io).await;
    assert_eq!(c.greeting().text, "mx.test ESMTP\nwelcome");
    assert_eq!(
        c.hello_reply().text.lines().next(),
        Some("mx.test greets client.test")
    );
    let ext = c.extensions();
    assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8 && ext.starttls);
    assert!(ext.enhanced_status_codes);
    assert_eq!(ext.size_limit(), Some(35882577));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_greeting_other_than_220_answers_for_the_connection() {
    for (greeting, permanent) in [
        ("554 5.3.2 no service here", true),
        ("421 4.3.2 busy", false),
    ] {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.say(greeting).await;
            p.closed().await;
        });
        let e = Client::connect(io, "client.test", Timeouts::default())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                Error::Reply {
                    stage: Stage::Greeting,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.is_permanent(), permanent, "{e}");
        assert_eq!(e.reply().map(|r| r.code), greeting[..3].parse().ok());
        server.await.unwrap();
    }
}

#[tokio::test]
async fn an_over_long_greeting_is_a_protocol_error() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.raw(format!("220 {}\r\n", "x".repeat(10_000)).as_bytes())
            .await;
        p.closed().await;
    });
    let e = Client::connect(io, "client.test", Timeouts::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            Error::Protocol {
                stage: Stage::Greeting,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_permanent());
    server.await.unwrap();
}

#[tokio::test]
async fn a_bad_hello_name_is_refused_before_connecting() {
    for name in ["", "client.test\r\nMAIL FROM:<x>", "two words"] {
        let (io, _p) = pair();
        let e = Client::connect(io, name, Timeouts::default())
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, Error::BadHelloName(_)), "{e}");
        assert!(!e.is_permanent());
    }
}

#[tokio::test]
async fn helo_when_ehlo_is_refused() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("502 5.5.1 command unrecognized").await;
        p.expect("HELO client.test").await;
        p.say("250 mx.test").await;
        // No extensions: one command at a time, no parameters.
        p.expect("MAIL FROM:<a@client.test>").await;
        p.say("250 ok").await;
        p.expect("RCPT TO:<b@mx.test>").await;
        p.say("250 ok").await;
        p.expect("DATA").await;
        p.say("354 go ahead").await;
        assert_eq!(p.data().await, b"hi\r\n");
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    assert_eq!(c.extensions(), &Extensions::default());
    assert_eq!(c.hello_reply().text, "mx.test");
    let sent = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_temporary_ehlo_refusal_does_not_fall_back() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("421 4.7.0 too many connections").await;
        p.closed().await;
    });
    let e = Client::connect(io, "client.test", Timeouts::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            Error::Reply {
                stage: Stage::Ehlo,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_permanent());
    server.await.unwrap();
}

#[tokio::test]
async fn pipelining_sends_the_envelope_in_one_write() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        // Everything up to DATA is there before any reply is sent.
        let batch = p.chunk().await;
        assert_eq!(
            String::from_utf8_lossy(&batch),
            "MAIL FROM:<a@client.test> SIZE=25\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n"
        );
        p.say("250 2.1.0 ok\n250 2.1.5 ok\n250 2.1.5 ok\n354 go ahead")
            .await;
        assert_eq!(p.data().await, b"..hidden\r\n..\r\nrest\r\nend\r\n");
        p.say("250 2.0.0 queued as 1").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send(
            "a@client.test",
            &to(&["b@mx.test", "c@mx.test"]),
            b".hidden\n.\nrest\r\nend",
        )
        .await
        .unwrap();
    assert_eq!(
        sent.data.as_ref().map(|r| r.text.as_str()),
        Some("queued as 1")
    );
    assert!(sent.outcomes().all(|o| matches!(o, Outcome::Delivered(_))));
    assert_eq!(sent.outcomes().count(), 2);
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(PLAIN).await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        p.quiet().await;
        p.say("250 ok").await;
        p.expect("RCPT TO:<b@mx.test>").await;
        p.quiet().await;
        p.say("250 ok").await;
        p.expect("RCPT TO:<c@mx.test>").await;
        p.quiet().await;
        p.say("550 5.1.1 no such user").await;
        p.expect("DATA").await;
        p.quiet().await;
        p.say("354 go ahead").await;
        assert_eq!(p.data().await, b"hi\r\n");
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send("a@client.test", &to(&["b@mx.test", "c@mx.test"]), b"hi\n")
        .await
        .unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
    assert!(matches!(sent.outcome(1), Some(Outcome::Failed(r)) if r.code == 550));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn one_recipient_refused_the_others_delivered() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        for rcpt in ["b", "x", "c"] {
            p.expect(&format!("RCPT TO:<{rcpt}@mx.test>")).await;
        }
        p.expect("DATA").await;
        p.say("250 2.1.0 ok\n250 2.1.5 ok\n550-5.1.1 no such user\n550 5.1.1 here\n250 2.1.5 ok\n354 go ahead")
            .await;
        assert_eq!(p.data().await, b"hi\r\n");
        p.say("250 2.0.0 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send(
            "a@client.test",
            &to(&["b@mx.test", "x@mx.test", "c@mx.test"]),
            b"hi",
        )
        .await
        .unwrap();
    assert!(matches!(sent.rcpts[0], RcptStatus::Accepted(_)));
    let RcptStatus::Refused(refusal) = &sent.rcpts[1] else {
        panic!("x@mx.test was accepted: {sent:?}");
    };
    assert_eq!(refusal.code, 550);
    assert_eq!(refusal.enhanced, Some((5, 1, 1)));
    assert_eq!(refusal.text, "no such user\nhere");
    assert!(refusal.is_permanent());
    let outcomes: Vec<bool> = sent
        .outcomes()
        .map(|o| matches!(o, Outcome::Delivered(_)))
        .collect();
    assert_eq!(outcomes, [true, false, true]);
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn all_refused_with_pipelining_sends_no_data() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok\n550 5.1.1 no\n450 4.2.1 later\n554 5.5.1 no valid recipients")
            .await;
        // The session goes on: RSET, then the next message.
        p.expect("RSET").await;
        p.say("250 ok").await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        p.expect("RCPT TO:<c@mx.test>").await;
        p.expect("DATA").await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        assert_eq!(p.data().await, b"hi\r\n");
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send("a@client.test", &to(&["b@mx.test", "x@mx.test"]), b"hi")
        .await
        .unwrap();
    assert_eq!(sent.data, None);
    let codes: Vec<u16> = sent
        .outcomes()
        .map(|o| match o {
            Outcome::Failed(r) => r.code,
            Outcome::Delivered(_) => 0,
        })
        .collect();
    assert_eq!(codes, [550, 450]);
    let sent = c
        .send("a@client.test", &to(&["c@mx.test"]), b"hi")
        .await
        .unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn all_refused_but_data_accepted_ends_the_data_at_once() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok\n550 5.1.1 no\n354 go ahead anyway").await;
        // Nothing but the end of the data.
        p.expect(".").await;
        p.say("554 5.5.1 no valid recipients").await;
        p.expect("RSET").await;
        p.say("250 ok").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send("a@client.test", &to(&["b@mx.test"]), b"secret")
        .await
        .unwrap();
    assert_eq!(sent.data, None);
    assert!(matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.code == 550));
    c.reset().await.unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn all_refused_without_pipelining_sends_no_data() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(PLAIN).await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        p.say("250 ok").await;
        p.expect("RCPT TO:<b@mx.test>").await;
        p.say("550 5.1.1 no").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let sent = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap();
    assert_eq!(sent.data, None);
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_sender_fails_the_message_and_keeps_the_session() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("550 5.7.1 sender refused\n503 5.5.1 no sender\n503 5.5.1 no recipients")
            .await;
        p.expect("RSET").await;
        p.say("250 ok").await;
        p.chunk().await;
        p.say("451 4.3.0 try later\n503 no sender\n503 no recipients")
            .await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Reply {
                stage: Stage::MailFrom,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_permanent());
    assert_eq!(
        e.to_string(),
        "the server answered MAIL FROM with 550 5.7.1 sender refused"
    );
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(!c.is_broken());
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_closing_mid_envelope_fails_the_message_for_now() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok\n421 4.3.2 shutting down").await;
    });
    let mut c = connect(io).await;
    let e = c
        .send("a@client.test", &to(&["b@mx.test", "c@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Reply { stage: Stage::RcptTo, reply } if reply.code == 421),
        "{e}"
    );
    assert!(!e.is_permanent());
    assert!(c.is_broken());
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_sender_without_pipelining_needs_no_reset() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(PLAIN).await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        p.say("451 4.3.0 try later").await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
        p.say("550 5.7.1 no").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    for _ in 0..2 {
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Reply {
                    stage: Stage::MailFrom,
                    ..
                }
            ),
            "{e}"
        );
    }
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_refusal_after_the_data_fails_the_accepted_recipients() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok\n250 ok\n550 5.1.1 no\n354 go ahead").await;
        p.data().await;
        p.say("451 4.3.0 storage trouble").await;
        p.expect("RSET").await;
        p.say("250 ok").await;
        p.chunk().await;
        p.say("250 ok\n250 ok\n554 5.7.1 not today").await;
        p.expect("RSET").await;
        p.say("250 ok").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let rcpts = to(&["b@mx.test", "x@mx.test"]);
    let sent = c.send("a@client.test", &rcpts, b"hi").await.unwrap();
    let Some(Outcome::Failed(r)) = sent.outcome(0) else {
        panic!("delivered: {sent:?}");
    };
    assert!(r.is_transient() && r.code == 451);
    assert!(matches!(sent.outcome(1), Some(Outcome::Failed(r)) if r.code == 550));
    // A refused DATA decides for the accepted recipients the same way.
    let sent = c.send("a@client.test", &rcpts[..1], b"hi").await.unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.code == 554));
    c.reset().await.unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn too_big_for_the_server_is_refused_without_sending() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250-PIPELINING\n250 SIZE 100").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let body = vec![b'x'; 200];
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), &body)
        .await
        .unwrap_err();
    let Error::Unsendable(reply) = &e else {
        panic!("{e}");
    };
    assert_eq!((reply.code, reply.enhanced), (552, Some((5, 3, 4))));
    assert!(e.is_permanent());
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn eight_bit_bodies_need_8bitmime() {
    let body = "Subject: Grüße\r\n\r\nschön\r\n".as_bytes();
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250-PIPELINING\n250 8BITMIME").await;
        p.expect("MAIL FROM:<a@client.test> BODY=8BITMIME").await;
        p.expect("RCPT TO:<b@mx.test>").await;
        p.expect("DATA").await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        assert_eq!(p.data().await, body);
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    c.send("a@client.test", &to(&["b@mx.test"]), body)
        .await
        .unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();

    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 PIPELINING").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), body)
        .await
        .unwrap_err();
    let Error::Unsendable(reply) = &e else {
        panic!("{e}");
    };
    assert_eq!((reply.code, reply.enhanced), (554, Some((5, 6, 3))));
    assert!(reply.text.contains("conversion required"), "{reply}");
    assert!(e.is_permanent());
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn non_ascii_addresses_need_smtputf8() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.expect("MAIL FROM:<a@client.test> SIZE=4 SMTPUTF8").await;
        p.expect("RCPT TO:<jürgen@mx.test>").await;
        p.expect("DATA").await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        p.data().await;
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    c.send("a@client.test", &to(&["jürgen@mx.test"]), b"hi")
        .await
        .unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();

    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250-PIPELINING\n250 8BITMIME").await;
        // Only the ASCII recipient is asked for, and without SMTPUTF8.
        p.expect("MAIL FROM:<a@client.test>").await;
        p.expect("RCPT TO:<b@mx.test>").await;
        p.expect("DATA").await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        p.data().await;
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c
        .send("jörg@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    let Error::Unsendable(reply) = &e else {
        panic!("{e}");
    };
    assert_eq!((reply.code, reply.enhanced), (553, Some((5, 6, 7))));
    let sent = c
        .send(
            "a@client.test",
            &to(&["jürgen@mx.test", "b@mx.test"]),
            b"hi",
        )
        .await
        .unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.enhanced == Some((5, 6, 7))));
    assert!(matches!(sent.outcome(1), Some(Outcome::Delivered(_))));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn addresses_cannot_inject_commands() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c
        .send(
            "a@client.test>\r\nRCPT TO:<x@evil.test",
            &to(&["b@mx.test"]),
            b"hi",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsendable(_)), "{e}");
    let sent = c
        .send(
            "a@client.test",
            &to(&["b@mx.test>\r\nDATA", "", "<c@mx.test>"]),
            b"hi",
        )
        .await
        .unwrap();
    assert!(sent
        .outcomes()
        .all(|o| matches!(o, Outcome::Failed(r) if r.code == 553)));
    assert_eq!(sent.data, None);
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn two_messages_on_one_connection() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        for n in 1..=2 {
            let batch = p.chunk().await;
            assert!(batch.ends_with(b"DATA\r\n"), "{batch:?}");
            p.say("250 ok\n250 ok\n354 go ahead").await;
            assert_eq!(p.data().await, format!("message {n}\r\n").as_bytes());
            p.say(&format!("250 queued as {n}")).await;
            if n == 1 {
                p.expect("RSET").await;
                p.say("250 2.0.0 flushed").await;
            }
        }
        p.quit().await;
    });
    let mut c = connect(io).await;
    for n in 1..=2 {
        let body = format!("message {n}");
        let sent = c
            .send("", &to(&["b@mx.test"]), body.as_bytes())
            .await
            .unwrap();
        assert_eq!(sent.data.unwrap().text, format!("queued as {n}"));
        if n == 1 {
            c.reset().await.unwrap();
        }
    }
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_large_message_goes_in_blocks() {
    let body: Vec<u8> = (0..5 * DATA_BLOCK).map(|i| b"abcdefgh\n"[i % 9]).collect();
    let want = wire::data_bytes(&body);
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL.replace("SIZE 10000", "SIZE").as_str()).await;
        p.chunk().await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        let data = p.data().await;
        assert_eq!(data.len() + 3, want.len());
        assert!(want.starts_with(&data));
        p.say("250 queued").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    c.send("a@client.test", &to(&["b@mx.test"]), &body)
        .await
        .unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out() {
    let timeouts = Timeouts {
        command: Duration::from_secs(30),
        data_end: Duration::from_secs(60),
        ..Timeouts::default()
    };

    // No reply to EHLO.
    let (io, mut p) = pair();
    let (done, wait) = oneshot::channel::<()>();
    let server = serve(async move {
        p.say("220 mx.test").await;
        p.expect("EHLO client.test").await;
        let _ = wait.await;
    });
    let start = tokio::time::Instant::now();
    let e = Client::connect(io, "client.test", timeouts)
        .await
        .err()
        .expect("timeout");
    assert!(matches!(e, Error::Timeout { stage: Stage::Ehlo }), "{e}");
    assert!(!e.is_permanent());
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert!(start.elapsed() < Duration::from_secs(31));
    done.send(()).unwrap();
    server.await.unwrap();

    // No reply after the data; the session is unusable after.
    let (io, mut p) = pair();
    let (done, wait) = oneshot::channel::<()>();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok\n250 ok\n354 go ahead").await;
        p.data().await;
        let _ = wait.await;
    });
    let mut c = Client::connect(io, "client.test", timeouts).await.unwrap();
    let start = tokio::time::Instant::now();
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                stage: Stage::DataEnd
            }
        ),
        "{e}"
    );
    assert!(start.elapsed() >= Duration::from_secs(60));
    assert!(c.is_broken());
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Broken), "{e}");
    assert!(matches!(c.reset().await, Err(Error::Broken)));
    done.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_closed_connection_is_temporary() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.chunk().await;
        p.say("250 ok").await;
    });
    let mut c = connect(io).await;
    let e = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Closed {
                stage: Stage::RcptTo
            }
        ),
        "{e}"
    );
    assert!(!e.is_permanent());
    assert!(c.is_broken());
    server.await.unwrap();
}

/// A test certificate authority and a certificate it issued for `name`.
struct Pki {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test authority");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn acceptor(pki: &Pki) -> TlsAcceptor {
    let config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    roots
}

fn mx_test() -> ServerName<'static> {
    ServerName::try_from("mx.test").unwrap()
}

/// A server that offers STARTTLS and, over TLS, different extensions, and takes one message
/// there; or, when the handshake fails, sees it fail.
fn tls_server(p: Peer<DuplexStream>, pki: &Pki, handshake_ok: bool) -> JoinHandle<()> {
    let acceptor = acceptor(pki);
    let mut p = p;
    serve(async move {
        p.open("250-mx.test\n250-STARTTLS\n250 SIZE 1000").await;
        p.expect("STARTTLS").await;
        p.say("220 2.0.0 ready").await;
        let accepted = acceptor.accept(p.io.into_inner()).await;
        if !handshake_ok {
            assert!(accepted.is_err());
            return;
        }
        let mut p = Peer::new(accepted.expect("handshake"));
        p.expect("EHLO client.test").await;
        p.say("250-mx.test\n250-PIPELINING\n250 SIZE 5000").await;
        assert_eq!(
            String::from_utf8_lossy(&p.chunk().await),
            "MAIL FROM:<a@client.test> SIZE=4\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n"
        );
        p.say("250 ok\n250 ok\n354 go ahead").await;
        assert_eq!(p.data().await, b"hi\r\n");
        p.say("250 queued").await;
        p.quit().await;
    })
}

#[tokio::test]
async fn starttls_with_a_trusted_certificate() {
    let pki = pki("mx.test");
    let (io, p) = pair();
    let server = tls_server(p, &pki, true);
    let c = connect(io).await;
    assert!(c.extensions().starttls);
    assert!(!c.extensions().pipelining);
    let connector = verifying_connector(roots(&pki.ca)).unwrap();
    let mut c = c.starttls(&connector, mx_test()).await.unwrap();
    // The extensions are those offered over TLS.
    assert!(!c.extensions().starttls);
    assert!(c.extensions().pipelining);
    assert_eq!(c.extensions().size, Some(5000));
    assert_eq!(c.greeting().text, "mx.test ESMTP");
    let sent = c
        .send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap();
    assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_refuses_an_unknown_authority() {
    let pki = pki("mx.test");
    let other = self::pki("mx.test");
    let (io, p) = pair();
    let server = tls_server(p, &pki, false);
    let c = connect(io).await;
    let connector = verifying_connector(roots(&other.ca)).unwrap();
    let e = c
        .starttls(&connector, mx_test())
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, Error::Tls(_)), "{e}");
    assert!(!e.is_permanent());
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_refuses_a_certificate_for_another_name() {
    let pki = pki("other.test");
    let (io, p) = pair();
    let server = tls_server(p, &pki, false);
    let c = connect(io).await;
    let connector = verifying_connector(roots(&pki.ca)).unwrap();
    let e = c
        .starttls(&connector, mx_test())
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, Error::Tls(_)), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn opportunistic_tls_accepts_any_certificate() {
    let pki = pki("other.test");
    let (io, p) = pair();
    let server = tls_server(p, &pki, true);
    let c = connect(io).await;
    let connector = opportunistic_connector().unwrap();
    let mut c = c.starttls(&connector, mx_test()).await.unwrap();
    assert!(c.extensions().pipelining);
    c.send("a@client.test", &to(&["b@mx.test"]), b"hi")
        .await
        .unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_not_offered_or_refused() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open(FULL).await;
        p.closed().await;
    });
    let c = connect(io).await;
    let connector = opportunistic_connector().unwrap();
    let e = c
        .starttls(&connector, mx_test())
        .await
        .err()
        .expect("not offered");
    assert!(matches!(e, Error::Tls(_)), "{e}");
    server.await.unwrap();

    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 STARTTLS").await;
        p.expect("STARTTLS").await;
        p.say("454 4.7.0 TLS not available").await;
        p.closed().await;
    });
    let c = connect(io).await;
    let e = c
        .starttls(&connector, mx_test())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            Error::Reply {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_permanent());
    server.await.unwrap();
}

#[tokio::test]
async fn starttls_refuses_injected_replies() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 STARTTLS").await;
        p.expect("STARTTLS").await;
        p.say("220 ready\n250 injected").await;
        p.closed().await;
    });
    let c = connect(io).await;
    let connector = opportunistic_connector().unwrap();
    let e = c
        .starttls(&connector, mx_test())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            Error::Protocol {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{e}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn auth_plain_sends_the_credentials_in_one_line() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250-AUTH LOGIN plain\n250 PIPELINING")
            .await;
        // base64("\0relay-user\0s3cret")
        p.expect("AUTH PLAIN AHJlbGF5LXVzZXIAczNjcmV0").await;
        p.say("235 2.7.0 Authentication successful").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    assert_eq!(c.extensions().auth, ["LOGIN", "PLAIN"]);
    c.auth("relay-user", "s3cret").await.unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn auth_login_answers_each_challenge() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 AUTH LOGIN").await;
        p.expect("AUTH LOGIN").await;
        p.say("334 VXNlcm5hbWU6").await;
        p.expect("cmVsYXktdXNlcg==").await;
        p.say("334 UGFzc3dvcmQ6").await;
        p.expect("czNjcmV0").await;
        p.say("235 2.7.0 ok").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    c.auth("relay-user", "s3cret").await.unwrap();
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_sign_in_says_so_without_the_password() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 AUTH PLAIN").await;
        p.line().await;
        p.say("535 5.7.8 Authentication credentials invalid").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c.auth("relay-user", "s3cret").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Reply {
                stage: Stage::Auth,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("czNjcmV0"));
    c.quit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn without_a_known_mechanism_nothing_is_sent() {
    let (io, mut p) = pair();
    let server = serve(async move {
        p.open("250-mx.test\n250 AUTH CRAM-MD5 XOAUTH2").await;
        p.quit().await;
    });
    let mut c = connect(io).await;
    let e = c.auth("relay-user", "s3cret").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                stage: Stage::Auth,
                ..
            }
        ),
        "{e:?}"
    );
    c.quit().await.unwrap();
    server.await.unwrap();
}
