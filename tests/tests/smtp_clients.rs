//! smtp-in end to end with real SMTP clients: lettre, Python's smtplib and Postfix's
//! smtp-source, against a whole HCU (mserv, two stores, smtp-in) of real processes. Every check
//! reads the stored messages back from the stores: a message counts as delivered only when its
//! exact bytes are in the recipient's Inbox.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncTransport, Message};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::mail::{mailer, message_id, read_reply, strip_trace_header};
use megamail_tests::support::metrics::sample;
use megamail_tests::support::{eventually, run_ok};
use megamail_tests::{http_get, workspace_root};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use xfs::IndexEntry;

const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
const ACCEPTED: &str = "smtp_messages_total{result=\"accepted\"}";
const DEFERRED: &str = "smtp_messages_total{result=\"deferred\"}";

async fn start() -> LocalHcu {
    LocalHcu::start(HcuOpts::default())
        .await
        .expect("starting the HCU")
}

/// A message with a non-ASCII subject and body lines that need dot-stuffing.
fn lettre_message(to: &[&str], subject: &str) -> Message {
    let mut b = Message::builder()
        .from("Bob Sender <bob@remote.test>".parse::<Mailbox>().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        b = b.to(t.parse::<Mailbox>().unwrap());
    }
    b.body(
        "Hello,\r\n.a line that starts with a dot\r\n.\r\n..two dots\r\n\r\nlast line\r\n"
            .to_string(),
    )
    .unwrap()
}

/// Send `msg` with lettre; returns the mail data the server received. lettre sends the
/// formatted message followed by `CRLF . CRLF`, and the first CRLF of that ends the message's
/// last line, so the mail data (RFC 5321 §4.1.1.4) is the formatted bytes plus one CRLF.
async fn lettre_send(hcu: &LocalHcu, msg: &Message) -> Vec<u8> {
    let raw = msg.formatted();
    mailer(hcu.smtp_addr)
        .send_raw(msg.envelope(), &raw)
        .await
        .unwrap_or_else(|e| panic!("lettre send failed: {e}"));
    let mut data = raw;
    data.extend_from_slice(b"\r\n");
    data
}

/// Assert that exactly one message in `user`'s Inbox is `data` (after its trace header), and
/// return its index entry.
async fn assert_arrived(hcu: &LocalHcu, user: &str, data: &[u8]) -> IndexEntry {
    let inbox = hcu.inbox(user).await.expect("reading the inbox");
    let matches: Vec<&(IndexEntry, Vec<u8>)> = inbox
        .iter()
        .filter(|(_, body)| strip_trace_header(body) == data)
        .collect();
    if matches.len() != 1 {
        let got: Vec<String> = inbox
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        panic!(
            "{user}: {} copies of the expected message (want 1)\nexpected:\n{}\ninbox:\n{}",
            matches.len(),
            String::from_utf8_lossy(data),
            got.join("\n-----\n")
        );
    }
    let (entry, body) = matches[0];
    assert!(
        body.starts_with(b"Received: "),
        "{user}: stored message does not start with a Received header"
    );
    assert_eq!(
        entry.size,
        body.len() as u64,
        "index size of {user}'s message"
    );
    entry.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_one_message_arrives_byte_exact() {
    let hcu = start().await;
    hcu.add_user("alice@megamail.test").await.unwrap();
    let subject = "Grüße aus Köln — ✉ über alles";
    let msg = lettre_message(&["Alice <alice@megamail.test>"], subject);
    let data = lettre_send(&hcu, &msg).await;
    let entry = assert_arrived(&hcu, "alice@megamail.test", &data).await;
    assert_eq!(entry.summary.subject, subject);
    assert!(
        entry.summary.from.contains("bob@remote.test") || entry.summary.from.contains("Bob"),
        "summary from: {:?}",
        entry.summary.from
    );
    assert_eq!(hcu.inbox_count("alice@megamail.test").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_one_message_to_two_stores() {
    let hcu = start().await;
    let a = hcu
        .add_user_on("alice@megamail.test", "store-1", 0)
        .await
        .unwrap();
    let b = hcu
        .add_user_on("bob@megamail.test", "store-2", 1)
        .await
        .unwrap();
    assert_ne!(a.store, b.store);
    let msg = lettre_message(
        &["alice@megamail.test", "bob@megamail.test"],
        "Zwei Speicher, eine Nachricht ✓",
    );
    let data = lettre_send(&hcu, &msg).await;
    for user in ["alice@megamail.test", "bob@megamail.test"] {
        let e = assert_arrived(&hcu, user, &data).await;
        assert_eq!(e.summary.subject, "Zwei Speicher, eine Nachricht ✓");
        assert_eq!(hcu.inbox_count(user).await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_one_message_and_two_stores() {
    let hcu = start().await;
    let a = "carol@megamail.test";
    let b = "dave@megamail.test";
    hcu.add_user_on(a, "store-1", 1).await.unwrap();
    hcu.add_user_on(b, "store-2", 0).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = workspace_root().join("tests/py/smtplib_cases.py");
    run_ok(
        Command::new("python3")
            .arg(&script)
            .arg("127.0.0.1")
            .arg(hcu.smtp_addr.port().to_string())
            .arg(out.path())
            .args([a, b]),
        "the smtplib script",
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for case in manifest.as_array().unwrap() {
        let data = std::fs::read(case["file"].as_str().unwrap()).unwrap();
        for rcpt in case["rcpts"].as_array().unwrap() {
            let rcpt = rcpt.as_str().unwrap();
            let e = assert_arrived(&hcu, rcpt, &data).await;
            *expected.entry(rcpt.to_string()).or_default() += 1;
            if case["name"] == "smtputf8" {
                assert_eq!(e.summary.subject, "Grüße aus Köln ✉");
            }
        }
    }
    assert_eq!(expected.get(b), Some(&1));
    for (user, n) in expected {
        assert_eq!(hcu.inbox_count(&user).await.unwrap(), n, "{user}'s inbox");
    }
}

/// Child processes killed when dropped (a failing test leaves no smtp-source behind).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_kill9_a_store_loses_nothing() {
    assert!(
        Path::new(SMTP_SOURCE).exists(),
        "{SMTP_SOURCE} is missing: install Postfix (apt-get install postfix), which ships it"
    );
    const USERS: usize = 10;
    const PER_USER: usize = 200;
    let mut hcu = start().await;
    let mut users = Vec::new();
    for i in 0..USERS {
        let user = format!("u{i}@megamail.test");
        let store = format!("store-{}", i % 2 + 1);
        hcu.add_user_on(&user, &store, (i / 2 % 2) as u32)
            .await
            .unwrap();
        users.push((user, store));
    }
    let logs = tempfile::tempdir().unwrap();
    let target = format!("127.0.0.1:{}", hcu.smtp_addr.port());
    let mut children = Children(Vec::new());
    for (i, (user, _)) in users.iter().enumerate() {
        let log = std::fs::File::create(logs.path().join(format!("smtp-source-{i}.log"))).unwrap();
        // Two sessions per process, twenty in all; -A keeps going after a 451.
        let child = Command::new(SMTP_SOURCE)
            .args([
                "-A",
                "-d",
                "-s",
                "2",
                "-m",
                &PER_USER.to_string(),
                "-l",
                "2048",
            ])
            .args(["-f", "sender@remote.test", "-t", user, &target])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting smtp-source");
        children.0.push(child);
    }

    // kill -9 store-1 mid-run, and bring it back a second later.
    let timeout = Duration::from_secs(120);
    let accepted = eventually(timeout, Duration::from_millis(50), || async {
        match hcu.smtp_metric(ACCEPTED).await.unwrap_or(0.0) {
            v if v >= 200.0 => Ok(()),
            v => Err(v),
        }
    })
    .await;
    if let Err(v) = accepted {
        panic!("{ACCEPTED} is {v}, not 200, after {timeout:?}");
    }
    hcu.store("store-1").proc.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    hcu.store("store-1").proc.restart().await.unwrap();

    let finished = eventually(Duration::from_secs(600), Duration::from_millis(100), || {
        let running = children
            .0
            .iter_mut()
            .any(|c| c.try_wait().unwrap().is_none());
        async move {
            if running {
                Err(())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "smtp-source did not finish");

    let metrics = hcu.smtp_metrics().await.unwrap();
    let accepted = sample(&metrics, ACCEPTED).unwrap_or(0.0) as u64;
    let deferred = sample(&metrics, DEFERRED).unwrap_or(0.0) as u64;
    let mut stored = 0u64;
    let mut all_ids = HashSet::new();
    let mut mailboxes = BTreeMap::new();
    for (user, store) in &users {
        let inbox = hcu.inbox(user).await.unwrap();
        let mut ids = HashSet::new();
        for (_, body) in &inbox {
            let id = message_id(body).unwrap_or_else(|| panic!("no Message-Id in {user}'s mail"));
            assert!(ids.insert(id.clone()), "{user}: {id} stored twice");
            assert!(all_ids.insert(id.clone()), "{id} stored in two mailboxes");
        }
        if store == "store-2" {
            // The store that stayed up got every message.
            assert_eq!(inbox.len(), PER_USER, "{user} on the healthy store");
        }
        stored += inbox.len() as u64;
        assert_eq!(hcu.inbox_count(user).await.unwrap(), inbox.len() as u64);
        mailboxes.insert(user.clone(), inbox);
    }
    eprintln!("accepted {accepted}, deferred {deferred}, stored {stored}");
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("smtp_") && !l.contains("_bucket"))
    {
        eprintln!("  {l}");
    }
    for i in 0..USERS {
        let log = std::fs::read_to_string(logs.path().join(format!("smtp-source-{i}.log")));
        let log = log.unwrap_or_default();
        if !log.is_empty() {
            eprintln!(
                "smtp-source {i}: {} lines, first: {:?}",
                log.lines().count(),
                log.lines().next()
            );
        }
    }
    assert!(
        accepted >= (USERS * PER_USER / 2) as u64,
        "only {accepted} accepted"
    );
    assert!(
        stored >= accepted,
        "{accepted} messages got 250 but only {stored} are stored"
    );
    assert!(
        stored <= accepted + deferred,
        "{stored} stored, more than the {accepted} accepted and {deferred} deferred"
    );

    // The sender's retry: the same envelope and bytes again must not add a copy.
    let resend = workspace_root().join("tests/py/resend.py");
    let dir = tempfile::tempdir().unwrap();
    let mut resent = 0;
    for (user, inbox) in &mailboxes {
        let n = inbox.len();
        for (k, (_, body)) in [0, n / 2, n.saturating_sub(1)]
            .into_iter()
            .filter(|&k| k < n)
            .map(|k| (k, &inbox[k]))
        {
            let file = dir.path().join(format!("{user}-{k}.eml"));
            std::fs::write(&file, strip_trace_header(body)).unwrap();
            run_ok(
                Command::new("python3")
                    .arg(&resend)
                    .arg("127.0.0.1")
                    .arg(hcu.smtp_addr.port().to_string())
                    .args(["sender@remote.test", user])
                    .arg(&file),
                &format!("resending to {user}"),
            );
            resent += 1;
        }
    }
    assert!(resent > 0);
    for (user, inbox) in &mailboxes {
        let again = hcu.inbox(user).await.unwrap();
        assert_eq!(
            again.len(),
            inbox.len(),
            "{user}: a retried message was stored again"
        );
    }
}

async fn greet(addr: std::net::SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let mut r = BufReader::new(TcpStream::connect(addr).await?);
    let (code, text) = read_reply(&mut r).await?;
    if code != 220 {
        return Err(std::io::Error::other(format!("greeting: {text}")));
    }
    r.get_mut().write_all(b"EHLO x\r\n").await?;
    let (code, text) = read_reply(&mut r).await?;
    if code != 250 {
        return Err(std::io::Error::other(format!("EHLO: {text}")));
    }
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_do_not_wedge() {
    let hcu = start().await;
    hcu.add_user("erin@megamail.test").await.unwrap();
    let addr = hcu.smtp_addr;
    // A thousand sessions open at once, their handshakes a hundred at a time (a thousand SYNs in
    // the same instant would test the kernel's queues, not the server).
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let handshakes = handshakes.clone();
        set.spawn(async move {
            let _turn = handshakes.acquire_owned().await;
            tokio::time::timeout(Duration::from_secs(300), greet(addr)).await
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        let conn = r
            .unwrap()
            .expect("greeting and EHLO within 300 s")
            .expect("greeting and EHLO");
        conns.push(conn);
    }
    assert_eq!(conns.len(), 1000);

    // Half say goodbye; the other half hold their sessions open.
    let quitting = conns.split_off(500);
    let mut set = tokio::task::JoinSet::new();
    for mut c in quitting {
        set.spawn(async move {
            c.get_mut().write_all(b"QUIT\r\n").await?;
            read_reply(&mut c).await
        });
    }
    while let Some(r) = set.join_next().await {
        let (code, text) = r.unwrap().expect("QUIT reply");
        assert_eq!(code, 221, "QUIT: {text}");
    }

    let msg = lettre_message(&["erin@megamail.test"], "while 500 sessions idle");
    let data = lettre_send(&hcu, &msg).await;
    assert_arrived(&hcu, "erin@megamail.test", &data).await;

    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = http_get(hcu.smtp_admin, "/healthz").await.unwrap();
    assert_eq!(status, 200, "/healthz: {body}");
    let msg = lettre_message(&["erin@megamail.test"], "after the crowd left");
    let data = lettre_send(&hcu, &msg).await;
    assert_arrived(&hcu, "erin@megamail.test", &data).await;
    assert_eq!(hcu.inbox_count("erin@megamail.test").await.unwrap(), 2);
}
