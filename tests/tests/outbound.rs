//! Sending to the world through the real parts: a front door's send becomes a `Submit` to the
//! sender's store, the `smtp-out` worker leases it, finds the mail exchangers through a real
//! DNS server on loopback (MX and A records of test domains pointing at 127.0.0.2, 127.0.0.3,
//! ...), and delivers over SMTP to scripted receivers there, or into local mailboxes; refusals,
//! null MX and expiry come back as RFC 3464 reports in the sender's Inbox, which Python's
//! `email` package reads as `multipart/report`. What leaves is DKIM-signed for the sender's
//! domain, and Debian's `python3-dkim` verifies each signature against the same DNS server.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use megamail_tests::frontdoor::{wait_inbox, FrontDoor};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::dns::{DnsServer, Zone};
use megamail_tests::support::eventually;
use megamail_tests::support::postfix::{self, Postfix};
use megamail_tests::support::receiver::Receiver;
use serde_json::{json, Value};
use xfs::{QueueEntry, QueueState};

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

/// The scripted receivers: `remote.example` at 127.0.0.2, `other.example` at 127.0.0.3, and
/// `hang.example` at 127.0.0.4, which accepts connections and never answers. All on one port,
/// the worker's `mx-port`. `megamail.test` signs with an RSA key (`keys[0]`, active); an
/// Ed25519 key (`keys[1]`) is published in DNS but not yet in the index.
struct World {
    remote: Receiver,
    other: Receiver,
    _hang: Receiver,
    dns: DnsServer,
    keys: [mserv_client::DkimKey; 2],
    hcu: LocalHcu,
    fd: FrontDoor,
    alice: String,
}

async fn world() -> World {
    world_with(|_| {}).await
}

async fn world_with(tune: impl FnOnce(&mut role_config::SmtpOutConfig)) -> World {
    let remote = Receiver::start(SocketAddr::from(([127, 0, 0, 2], 0)))
        .await
        .unwrap();
    let port = remote.addr.port();
    let other = Receiver::start(SocketAddr::from(([127, 0, 0, 3], port)))
        .await
        .unwrap();
    let hang = Receiver::hanging(SocketAddr::from(([127, 0, 0, 4], port)))
        .await
        .unwrap();
    let keys = [
        smtp_out::dkim::generate(mserv_client::DkimAlgorithm::Rsa2048, "rsa1").unwrap(),
        smtp_out::dkim::generate(mserv_client::DkimAlgorithm::Ed25519, "ed1").unwrap(),
    ];
    let dns = DnsServer::start(vec![
        Zone::new("megamail.test")
            .txt(&keys[0].dns_name("megamail.test"), &keys[0].txt_record())
            .txt(&keys[1].dns_name("megamail.test"), &keys[1].txt_record()),
        Zone::new("remote.example")
            .mx("remote.example", 10, "mx.remote.example")
            .a("mx.remote.example", Ipv4Addr::new(127, 0, 0, 2)),
        Zone::new("other.example")
            .mx("other.example", 10, "mx.other.example")
            .a("mx.other.example", Ipv4Addr::new(127, 0, 0, 3)),
        Zone::new("hang.example")
            .mx("hang.example", 10, "mx.hang.example")
            .a("mx.hang.example", Ipv4Addr::new(127, 0, 0, 4)),
        Zone::new("nullmx.example").mx("nullmx.example", 0, "."),
    ])
    .await;
    let mut opts = HcuOpts::one_store();
    let out = opts.smtp_out.as_mut().unwrap();
    out.resolvers = vec![dns.addr];
    out.mx_port = port;
    out.retry_first_secs = 1;
    out.retry_max_secs = 1;
    out.lifetime_secs = 8;
    out.command_timeout_secs = 2;
    tune(out);
    let hcu = LocalHcu::start(opts).await.unwrap();
    hcu.client
        .add_dkim_key("megamail.test", keys[0].clone())
        .await
        .unwrap();
    hcu.client
        .activate_dkim_key("megamail.test", "rsa1")
        .await
        .unwrap();
    hcu.add_users(&[ALICE, BOB]).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    World {
        remote,
        other,
        _hang: hang,
        dns,
        keys,
        hcu,
        fd,
        alice,
    }
}

impl World {
    async fn send(&self, to: &[&str], subject: &str) -> Value {
        let body = json!({"to": to, "subject": subject, "text": "Hello\nfrom alice\n.\nend"});
        let r = self
            .fd
            .post_json(&self.alice, "/api/v1/send", &body)
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Alice's queue entries, as her store keeps them.
    async fn queue(&self) -> Vec<QueueEntry> {
        let mb = self.hcu.mailbox(ALICE).await.unwrap();
        let target = mb.target.clone();
        mb.run(xfs::ops::MailboxQueue {
            target,
            after: None,
            limit: 1000,
        })
        .await
        .unwrap()
    }

    /// The state of alice's entry for `rcpt`, once it is what `done` wants.
    async fn wait_state(&self, rcpt: &str, done: impl Fn(&QueueState) -> bool) -> QueueEntry {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let q = self.queue().await;
                match q.into_iter().find(|e| e.rcpt == rcpt) {
                    Some(e) if done(&e.state) => Ok(e),
                    other => Err(format!("{rcpt}: {other:?}")),
                }
            },
        )
        .await
        .unwrap()
    }

    /// Alice's delivery status reports, each as Python's `email` package reads it: the content
    /// types of its parts, and its Final-Recipient and Action fields.
    async fn reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (e, body) in self.hcu.inbox(ALICE).await.unwrap() {
            if !e.summary.from.contains("MAILER-DAEMON") {
                continue;
            }
            out.push(python_report(&body));
        }
        out
    }
}

/// `content types | recipient | action | status` of a report, read by Python's `email`.
fn python_report(body: &[u8]) -> String {
    let script = r#"
import email, sys
m = email.message_from_bytes(sys.stdin.buffer.read())
assert m.get_content_type() == "multipart/report", m.get_content_type()
assert m.get_param("report-type") == "delivery-status"
types = [p.get_content_type() for p in m.walk()]
status = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"][0]
blocks = status.get_payload()
per_rcpt = blocks[1]
print(",".join(types), per_rcpt["Final-Recipient"], per_rcpt["Action"], per_rcpt["Status"], sep=" | ")
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = megamail_tests::support::succeeded(&out, "reading a report with Python's email");
    text.trim().to_string()
}

/// What Debian's `python3-dkim` says of `message`'s signature, each key looked up at the test's
/// DNS server: `True d=<domain> s=<selector> a=<algorithm>`, or `False ...`.
fn python_dkim(message: &[u8], dns: SocketAddr) -> String {
    let script = r#"
import sys, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = [sys.argv[1]]
r.port = int(sys.argv[2])
def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = r.resolve(name, "TXT", lifetime=timeout)
    except Exception:
        return None
    for rr in answer:
        return b"".join(rr.strings)
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
ok = d.verify(dnsfunc=txt)
sig = d.signature_fields
print(ok, "d=" + sig[b"d"].decode(), "s=" + sig[b"s"].decode(), "a=" + sig[b"a"].decode())
"#;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, &dns.ip().to_string(), &dns.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's, with python3-dkim)");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = megamail_tests::support::succeeded(&out, "checking DKIM with python3-dkim");
    text.trim().to_string()
}

/// `message` without its first header when that is a `DKIM-Signature:` (with its folded lines).
fn unsigned(message: &[u8]) -> &[u8] {
    assert!(
        message.starts_with(b"DKIM-Signature: "),
        "not signed: {}",
        String::from_utf8_lossy(message)
    );
    let mut i = 0;
    loop {
        let end = i + message[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        if !matches!(message.get(end), Some(b' ' | b'\t')) {
            return &message[end..];
        }
        i = end;
    }
}

/// Whether every line ending in `wire` is CRLF.
fn crlf_only(wire: &[u8]) -> bool {
    wire.iter()
        .enumerate()
        .all(|(i, b)| *b != b'\n' || (i > 0 && wire[i - 1] == b'\r'))
        && wire
            .iter()
            .enumerate()
            .all(|(i, b)| *b != b'\r' || wire.get(i + 1) == Some(&b'\n'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_reaches_every_remote_domain_and_local_user_once_and_refusals_come_back() {
    let w = world().await;
    w.remote.script(
        "nobody@remote.example",
        &["550 5.1.1 <nobody@remote.example>: no such user"],
    );
    let sent = w
        .send(
            &[
                BOB,
                "x@remote.example",
                "y@other.example",
                "nobody@remote.example",
            ],
            "To everyone",
        )
        .await;
    assert_eq!(sent["queued"], 4, "{sent}");

    // The local recipient gets it in his Inbox, with the worker's trace line.
    wait_inbox(&w.hcu, BOB, 1).await.unwrap();
    let (_, bob_copy) = w.hcu.inbox(BOB).await.unwrap().remove(0);
    assert!(bob_copy.starts_with(b"Received: by out.megamail.test"));
    // Each remote domain gets one transaction with its recipients that were accepted.
    let x = w
        .wait_state("x@remote.example", |s| {
            matches!(s, QueueState::Delivered { .. })
        })
        .await;
    assert!(x.last_reply.as_deref().unwrap().starts_with("250"), "{x:?}");
    w.wait_state("y@other.example", |s| {
        matches!(s, QueueState::Delivered { .. })
    })
    .await;
    let nobody = w
        .wait_state("nobody@remote.example", |s| {
            matches!(s, QueueState::Failed { .. })
        })
        .await;
    assert!(
        nobody
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("550 5.1.1"),
        "{nobody:?}"
    );
    let remote = w.remote.received();
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0].rcpts, vec!["x@remote.example"]);
    assert_eq!(remote[0].from, ALICE);
    assert_eq!(w.other.received().len(), 1);
    assert_eq!(w.other.received()[0].rcpts, vec!["y@other.example"]);
    // The bytes that left are CRLF-only and dot-stuffed; the message is the Sent copy.
    let wire = &remote[0].wire;
    assert!(crlf_only(wire), "{}", String::from_utf8_lossy(wire));
    assert!(
        String::from_utf8_lossy(wire).contains("\r\n..\r\n"),
        "the lone dot is stuffed"
    );
    let mb = w.hcu.mailbox(ALICE).await.unwrap();
    let sent_copy = mb.body(sent["sent_copy"].as_u64().unwrap()).await.unwrap();
    assert_eq!(unsigned(&remote[0].message), sent_copy);
    // Signed for alice's domain, and the signature verifies against DNS.
    for got in [&remote[0], &w.other.received()[0]] {
        assert_eq!(
            python_dkim(&got.message, w.dns.addr),
            "True d=megamail.test s=rsa1 a=rsa-sha256"
        );
    }
    // The Sent copy, read through the API, says where each recipient stands.
    let path = format!("/api/v1/messages/{}", sent["sent_copy"]);
    let r = w.fd.get(&w.alice, &path).await.unwrap();
    let read: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let states: Vec<(String, String)> = read["delivery"]
        .as_array()
        .unwrap_or_else(|| panic!("{read}"))
        .iter()
        .map(|d| {
            (
                d["rcpt"].as_str().unwrap().into(),
                d["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (rcpt, state) in [
        (BOB, "delivered"),
        ("x@remote.example", "delivered"),
        ("y@other.example", "delivered"),
        ("nobody@remote.example", "failed"),
    ] {
        assert!(
            states.contains(&(rcpt.to_string(), state.to_string())),
            "{rcpt}: {states:?}"
        );
    }

    // The refusal is one report in alice's Inbox.
    let reports = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let r = w.reports().await;
            if r.len() == 1 {
                Ok(r)
            } else {
                Err(r)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        reports[0],
        "multipart/report,text/plain,message/delivery-status,text/plain,text/plain,\
         text/rfc822-headers | rfc822; nobody@remote.example | failed | 5.1.1"
    );

    // A greylisting receiver: 451 first, then taken on the retry, once.
    w.remote.script(
        "later@remote.example",
        &["451 4.7.1 greylisted, come back later"],
    );
    w.send(&["later@remote.example"], "Greylisted").await;
    let later = w
        .wait_state("later@remote.example", |s| {
            matches!(s, QueueState::Delivered { .. })
        })
        .await;
    assert_eq!(later.attempts, 2, "{later:?}");
    let got: Vec<_> = w
        .remote
        .received()
        .into_iter()
        .filter(|r| r.rcpts.contains(&"later@remote.example".to_string()))
        .collect();
    assert_eq!(got.len(), 1);

    // A domain that takes no mail (null MX) fails at once, with a report.
    w.send(&["someone@nullmx.example"], "Null MX").await;
    let null = w
        .wait_state("someone@nullmx.example", |s| {
            matches!(s, QueueState::Failed { .. })
        })
        .await;
    assert_eq!(null.attempts, 1, "{null:?}");
    assert!(
        null.last_reply.as_deref().unwrap().contains("null MX"),
        "{null:?}"
    );

    // A receiver that hangs does not hold up another domain of the same message; it is given
    // up once its lifetime is over, and the sender is told.
    w.send(&["stuck@hang.example", "z@remote.example"], "Hanging")
        .await;
    w.wait_state("z@remote.example", |s| {
        matches!(s, QueueState::Delivered { .. })
    })
    .await;
    let stuck = w
        .queue()
        .await
        .into_iter()
        .find(|e| e.rcpt == "stuck@hang.example")
        .unwrap();
    assert!(stuck.state.is_pending(), "{stuck:?}");
    let stuck = w
        .wait_state("stuck@hang.example", |s| {
            matches!(s, QueueState::Failed { .. })
        })
        .await;
    assert!(
        stuck
            .last_reply
            .as_deref()
            .unwrap()
            .starts_with("4.4.7 given up"),
        "{stuck:?}"
    );
    let reports = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let r = w.reports().await;
            if r.len() == 3 {
                Ok(r)
            } else {
                Err(r)
            }
        },
    )
    .await
    .unwrap();
    assert!(
        reports
            .iter()
            .any(|r| r.contains("rfc822; someone@nullmx.example | failed | 5.1.2")),
        "{reports:?}"
    );
    assert!(
        reports
            .iter()
            .any(|r| r.contains("rfc822; stuck@hang.example | failed | 4.4.7")),
        "{reports:?}"
    );

    // What an operator sees of all that: deferrals by reason, attempts by destination.
    let admin = w.hcu.smtp_out.as_ref().unwrap().admin;
    let m = megamail_tests::support::metrics::scrape(admin)
        .await
        .unwrap();
    let at = |name: &str| megamail_tests::support::metrics::sample(&m, name).unwrap_or(0.0);
    assert_eq!(
        at("smtp_out_deferrals_total{kind=\"remote\",reason=\"security\"}"),
        1.0,
        "the greylisting 451 4.7.1: {m}"
    );
    assert!(
        at("smtp_out_deferrals_total{kind=\"remote\",reason=\"network\"}") >= 1.0,
        "the hanging receiver: {m}"
    );
    assert!(
        at("smtp_out_destination_attempts_total{domain=\"remote.example\",outcome=\"delivered\"}")
            >= 3.0,
        "{m}"
    );
    assert_eq!(
        at("smtp_out_destination_attempts_total{domain=\"nullmx.example\",outcome=\"failed\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_line_feed_stored_in_a_message_leaves_as_crlf() {
    let t0 = std::time::Instant::now();
    let w = world().await;
    println!("world up after {:?}", t0.elapsed());
    // What a mail client could have stored: bare LF line ends, and a lone dot on a bare-LF line.
    let body =
        b"From: alice@megamail.test\nTo: w@remote.example\nSubject: lf\n\nline one\n.\nline two\n";
    let mb = w.hcu.mailbox(ALICE).await.unwrap();
    let target = mb.target.clone();
    mb.run(xfs::ops::Submit {
        target,
        submission: xfs::Submission {
            sent: megamail_tests::support::mail::delivery("bare-lf", "lf", body.to_vec()),
            from: ALICE.into(),
            rcpts: vec!["w@remote.example".into()],
        },
    })
    .await
    .unwrap();
    w.wait_state("w@remote.example", |s| {
        matches!(s, QueueState::Delivered { .. })
    })
    .await;
    println!("delivered after {:?}", t0.elapsed());
    let got = w.remote.received();
    assert_eq!(got.len(), 1);
    assert!(
        crlf_only(&got[0].wire),
        "{:?}",
        String::from_utf8_lossy(&got[0].wire)
    );
    assert_eq!(
        unsigned(&got[0].message),
        b"From: alice@megamail.test\r\nTo: w@remote.example\r\nSubject: lf\r\n\r\nline one\r\n.\r\nline two\r\n"
    );
    // What was signed is what arrived.
    assert_eq!(
        python_dkim(&got[0].message, w.dns.addr),
        "True d=megamail.test s=rsa1 a=rsa-sha256"
    );

    // A rotation: the new key waits until it is activated, then signs everything.
    w.hcu
        .client
        .add_dkim_key("megamail.test", w.keys[1].clone())
        .await
        .unwrap();
    let sign_of = |subject: &'static str| {
        let w = &w;
        async move {
            let rcpt = format!("{}@remote.example", subject);
            w.send(&[rcpt.as_str()], subject).await;
            w.wait_state(&rcpt, |s| matches!(s, QueueState::Delivered { .. }))
                .await;
            let got = w
                .remote
                .received()
                .into_iter()
                .find(|r| r.rcpts == [rcpt.clone()])
                .unwrap();
            python_dkim(&got.message, w.dns.addr)
        }
    };
    // The worker reads the domains every second: past that, the pending key still does not sign.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sign_of("pending").await,
        "True d=megamail.test s=rsa1 a=rsa-sha256"
    );
    w.hcu
        .client
        .activate_dkim_key("megamail.test", "ed1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sign_of("active").await,
        "True d=megamail.test s=ed1 a=ed25519-sha256"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_or_a_store_killed_mid_send_loses_nothing() {
    let mut w = world_with(|out| out.lease_secs = 2).await;
    let rcpts: Vec<String> = (0..20).map(|i| format!("r{i}@remote.example")).collect();
    // Twenty messages, and the worker killed once it has begun sending them.
    for r in &rcpts {
        w.send(&[r.as_str()], &format!("to {r}")).await;
    }
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(5),
        || async {
            let n = w.remote.received().len();
            if n >= 3 {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await
    .unwrap();
    w.hcu.smtp_out.as_mut().unwrap().kill9();
    let before = w.remote.received().len();
    w.hcu.smtp_out.as_mut().unwrap().restart().await.unwrap();
    // And a store killed right after a submission it answered.
    w.send(&["last@remote.example"], "after the store's death")
        .await;
    w.hcu.store("store-1").proc.kill9();
    w.hcu.store("store-1").proc.restart().await.unwrap();
    for r in rcpts
        .iter()
        .chain(std::iter::once(&"last@remote.example".to_string()))
    {
        w.wait_state(r, |s| matches!(s, QueueState::Delivered { .. }))
            .await;
    }
    let got = w.remote.received();
    let mut per_rcpt = std::collections::BTreeMap::<String, usize>::new();
    for m in &got {
        for r in &m.rcpts {
            *per_rcpt.entry(r.clone()).or_default() += 1;
        }
    }
    let duplicates: usize = per_rcpt.values().map(|n| n - 1).sum();
    println!(
        "{} messages taken ({before} before the kill), {duplicates} duplicates",
        got.len()
    );
    // Nothing is lost. A duplicate is possible only for a message whose final reply came in
    // just before the kill (its report died with the worker); the count is printed.
    assert_eq!(per_rcpt.len(), 21, "{per_rcpt:?}");
}

/// The most common receiver on the Internet, for real: a private Postfix on 127.0.0.5 with a
/// test certificate. The worker uses its STARTTLS, both recipients of one message get it in
/// one transaction, and what Postfix stores is the message as sent: CRLF-only on the wire
/// (a bare LF stored in the mailbox, and a lone dot after one, end nothing early), and its
/// signature verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_receives_signed_mail_over_starttls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = postfix::test_certificate(certs.path(), "mx.postfix.example");
    let pf = tokio::task::spawn_blocking(move || {
        Postfix::start(Ipv4Addr::new(127, 0, 0, 5), Some((&cert, &key)))
    })
    .await
    .unwrap();
    let signing = smtp_out::dkim::generate(mserv_client::DkimAlgorithm::Rsa2048, "pf1").unwrap();
    let dns = DnsServer::start(vec![
        Zone::new("megamail.test").txt(&signing.dns_name("megamail.test"), &signing.txt_record()),
        Zone::new("postfix.example")
            .mx("postfix.example", 10, "mx.postfix.example")
            .a("mx.postfix.example", Ipv4Addr::new(127, 0, 0, 5)),
    ])
    .await;
    let mut opts = HcuOpts::one_store();
    let out = opts.smtp_out.as_mut().unwrap();
    out.resolvers = vec![dns.addr];
    out.mx_port = pf.addr.port();
    let hcu = LocalHcu::start(opts).await.unwrap();
    hcu.client
        .add_dkim_key("megamail.test", signing.clone())
        .await
        .unwrap();
    hcu.client
        .activate_dkim_key("megamail.test", "pf1")
        .await
        .unwrap();
    hcu.add_users(&[ALICE]).await.unwrap();
    // Wait for the worker to read the key (it reads the domains every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let body = "From: alice@megamail.test\nTo: one@postfix.example, two@postfix.example\n\
                Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?=\nMessage-ID: <pf@megamail.test>\n\n\
                line one\n.\nline two\r\n..dots\n";
    let mb = hcu.mailbox(ALICE).await.unwrap();
    let target = mb.target.clone();
    mb.run(xfs::ops::Submit {
        target,
        submission: xfs::Submission {
            sent: megamail_tests::support::mail::delivery("pf", "pf", body.as_bytes().to_vec()),
            from: ALICE.into(),
            rcpts: vec!["one@postfix.example".into(), "two@postfix.example".into()],
        },
    })
    .await
    .unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let got = pf.wait_messages(2, Duration::from_secs(60));
        let log = pf.log();
        pf.stop();
        (got, log)
    })
    .await
    .unwrap();
    let (got, log) = got;
    // One transaction for both recipients, over TLS.
    assert_eq!(
        log.matches("Anonymous TLS connection established").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(" from=<alice@megamail.test>").count(),
        1,
        "{log}"
    );
    let mut delivered_to = vec![];
    for m in &got {
        let text = String::from_utf8_lossy(m);
        assert!(postfix::received_over_tls(m), "{text}");
        let to = text
            .lines()
            .find_map(|l| l.strip_prefix("Delivered-To: "))
            .unwrap();
        delivered_to.push(to.to_string());
        // What we sent begins at our signature; Postfix's own headers come before it, and the
        // Maildir stores LF line ends.
        let at = text.find("DKIM-Signature: ").expect("signed");
        let sent = text[at..].replace('\n', "\r\n");
        assert!(
            sent.ends_with("\r\n\r\nline one\r\n.\r\nline two\r\n..dots\r\n"),
            "{sent:?}"
        );
        assert_eq!(
            python_dkim(sent.as_bytes(), dns.addr),
            "True d=megamail.test s=pf1 a=rsa-sha256"
        );
    }
    delivered_to.sort();
    assert_eq!(delivered_to, ["one@postfix.example", "two@postfix.example"]);
    dns.stop().await;
}

/// A relay host that wants AUTH, for real: a private Postfix that relays only for a client
/// signed in over STARTTLS. Every remote message goes through it, its certificate checked
/// against the CA file; with a wrong password the mail waits (deferred, never bounced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_host_takes_everything_once_signed_in_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = postfix::test_certificate(dir.path(), "127.0.0.6");
    let (c, k) = (cert.clone(), key.clone());
    let pf = tokio::task::spawn_blocking(move || {
        Postfix::start_relay(
            Ipv4Addr::new(127, 0, 0, 6),
            (&c, &k),
            "relay-user",
            "s3cret",
        )
    })
    .await
    .unwrap();
    let relay_with = |password: &str| {
        let file = dir.path().join(format!("password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        role_config::smtp_out::RelayConfig {
            host: pf.addr.to_string(),
            user: "relay-user".into(),
            password_file: file,
            ca_file: cert.clone(),
        }
    };
    let start = |relay| async move {
        let mut opts = HcuOpts::one_store();
        let out = opts.smtp_out.as_mut().unwrap();
        out.relay = relay;
        out.resolvers = vec![];
        let hcu = LocalHcu::start(opts).await.unwrap();
        hcu.add_users(&[ALICE]).await.unwrap();
        hcu
    };
    // A wrong password: tried, deferred with the reason, nothing bounced.
    let wrong = start(relay_with("not-it")).await;
    submit_to(&wrong, "someone@far-away.example").await;
    let e = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let e = first_entry(&wrong).await;
            if e.attempts >= 1 && e.state == QueueState::Queued {
                Ok(e)
            } else {
                Err(e)
            }
        },
    )
    .await
    .unwrap();
    let reply = e.last_reply.unwrap();
    assert!(
        reply.starts_with("4.7.0 signing in to the relay"),
        "{reply}"
    );
    assert!(reply.contains("535"), "{reply}");
    assert!(!reply.contains("not-it"), "{reply}");
    drop(wrong);

    // The right one: delivered through the relay, over TLS, signed in.
    let right = start(relay_with("s3cret")).await;
    submit_to(&right, "someone@far-away.example").await;
    let e = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let e = first_entry(&right).await;
            if matches!(e.state, QueueState::Delivered { .. }) {
                Ok(e)
            } else {
                Err(e)
            }
        },
    )
    .await;
    assert!(e.is_ok(), "{e:?}");
    let (got, log) = tokio::task::spawn_blocking(move || {
        let got = pf.wait_messages(1, Duration::from_secs(30));
        let log = pf.log();
        pf.stop();
        (got, log)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        postfix::received_over_tls(&got[0]),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    assert!(log.contains("sasl_username=relay-user"), "{log}");
}

/// One message from alice to `rcpt`, submitted at her store.
async fn submit_to(hcu: &LocalHcu, rcpt: &str) {
    let body =
        format!("From: alice@megamail.test\r\nTo: {rcpt}\r\nSubject: via the relay\r\n\r\nhi\r\n");
    let mb = hcu.mailbox(ALICE).await.unwrap();
    let target = mb.target.clone();
    mb.run(xfs::ops::Submit {
        target,
        submission: xfs::Submission {
            sent: megamail_tests::support::mail::delivery(rcpt, "relay", body.into_bytes()),
            from: ALICE.into(),
            rcpts: vec![rcpt.into()],
        },
    })
    .await
    .unwrap();
}

/// Alice's first queue entry.
async fn first_entry(hcu: &LocalHcu) -> QueueEntry {
    let mb = hcu.mailbox(ALICE).await.unwrap();
    let target = mb.target.clone();
    let q = mb
        .run(xfs::ops::MailboxQueue {
            target,
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    q.into_iter().next().expect("a queue entry")
}
