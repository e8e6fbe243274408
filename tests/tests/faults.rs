//! Injected faults over real processes: with 10% of XFS calls failing and every call delayed
//! 50 ms (client side, in smtp-in and the front door), SMTP and webmail stay correct: every
//! accepted message is stored exactly once, every webmail call succeeds or answers a clear 503,
//! and retried calls leave exactly the mailbox that was asked for. A failed disk write leaves
//! nothing behind. Faults are switched on through config and the admin endpoint, and off again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::AsyncTransport;
use megamail_tests::frontdoor::FrontDoor;
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::mail::{mailer, message_id, strip_trace_header};
use megamail_tests::support::metrics::metric;
use megamail_tests::support::poll::Deadline;
use megamail_tests::{admin_post, http_get, http_request};
use serde_json::{json, Value};
use xfs::{CallError, Delivery, Flags, Op, Reply, Summary, Target, XfsError};

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

/// Set a fault point through a process's admin endpoint.
async fn set_fault(admin: SocketAddr, point: &str, delay_ms: u64, fail_rate: f64) {
    let path = format!("/faults?point={point}&delay_ms={delay_ms}&fail_rate={fail_rate}");
    let (status, body) = admin_post(admin, &path).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

async fn clear_fault(admin: SocketAddr, point: &str) {
    let path = format!("/faults?point={point}&clear=1");
    let (status, body) = admin_post(admin, &path).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// The fault points a process has set, as its admin endpoint lists them.
async fn faults_of(admin: SocketAddr) -> Value {
    let (status, body) = http_get(admin, "/faults").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `faults_injected_total` of one point on a process's `/metrics` (0 when absent).
async fn injected(admin: SocketAddr, point: &str) -> f64 {
    let sample = format!("faults_injected_total{{point=\"{point}\"}}");
    metric(admin, &sample).await.unwrap()
}

/// A message whose mail data as received is exactly the returned bytes (lettre ends the data
/// with CRLF . CRLF, whose first CRLF ends the last line).
fn message(i: usize, to: &[&str]) -> (String, Vec<u8>, Vec<u8>) {
    let id = format!("<fault-{i}@remote.test>");
    let raw = format!(
        "From: sender{i}@remote.test\r\nTo: {}\r\nSubject: fault test {i}\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: {id}\r\n\r\nbody of message {i}",
        to.join(", ")
    )
    .into_bytes();
    let mut data = raw.clone();
    data.extend_from_slice(b"\r\n");
    (id, raw, data)
}

/// Send through SMTP like a real MTA: a 4xx or a broken connection is retried (after a pause),
/// a 5xx fails the test. Returns how many attempts were refused first.
async fn send_like_an_mta(smtp: SocketAddr, from: &str, to: &[&str], raw: &[u8]) -> usize {
    let rcpts = to.iter().map(|t| t.parse().unwrap()).collect();
    let envelope = Envelope::new(Some(from.parse().unwrap()), rcpts).unwrap();
    let mut refused = 0;
    loop {
        match mailer(smtp).send_raw(&envelope, raw).await {
            Ok(_) => return refused,
            Err(e) if e.is_permanent() => panic!("a permanent SMTP error under faults: {e}"),
            Err(e) => {
                refused += 1;
                assert!(refused < 50, "still refused after 50 attempts: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How webmail calls went: answers by status, over every attempt.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, usize>,
}

impl Tally {
    /// Run `call` until it answers 200. A 503 (or 502 for a send the relay deferred) must carry a
    /// clear JSON error and is retried; anything else fails the test, and so does a call that
    /// takes over 30 s.
    async fn until_ok<F, Fut>(&mut self, what: &str, call: F) -> Value
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<reqwest::Response>>,
    {
        for _ in 0..60 {
            let r = tokio::time::timeout(Duration::from_secs(30), call())
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let status = r.status().as_u16();
            *self.statuses.entry(status).or_default() += 1;
            let text = r.text().await.unwrap();
            match status {
                200 => return serde_json::from_str(&text).unwrap(),
                502 | 503 => {
                    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                        panic!("{what}: {status} without a JSON error: {text}")
                    });
                    let error = body["error"].as_str().unwrap_or("");
                    assert!(!error.is_empty(), "{what}: {status} with no reason: {text}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => panic!("{what}: answered {status}: {text}"),
            }
        }
        panic!("{what}: no success in 60 attempts");
    }
}

fn ids(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn ids_where(page: &Value, field: &str) -> BTreeSet<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m[field] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_and_webmail_stay_correct_with_failing_and_slow_xfs_calls() {
    // smtp-in gets one point from its config: 5% of store replies lost after the store acted
    // (the outcome is unknown to smtp-in, so only idempotent delivery keeps mail single).
    let hcu = LocalHcu::start(HcuOpts {
        smtp_faults: megamail_tests::support::faults(&[("xfs.reply", 0, 0.05)]),
        ..HcuOpts::default()
    })
    .await
    .unwrap();
    hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    hcu.add_user_on(BOB, "store-2", 1).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let (smtp_admin, fd_admin) = (hcu.smtp_admin, fd.proc.admin);
    assert_eq!(
        faults_of(smtp_admin).await,
        json!([{"point": "xfs.reply", "delay_ms": 0, "fail_rate": 0.05}])
    );

    // The rest through the admin endpoints of the running processes: 10% of XFS calls fail
    // before they are sent, each delayed 50 ms; the front door also loses 5% of replies.
    for admin in [smtp_admin, fd_admin] {
        set_fault(admin, "xfs.call", 50, 0.1).await;
    }
    set_fault(fd_admin, "xfs.reply", 0, 0.05).await;
    assert_eq!(faults_of(fd_admin).await.as_array().unwrap().len(), 2);
    // Without the operator's secret nothing changes; an unknown point or a long delay is refused.
    let (status, _) = http_request(fd_admin, "POST", "/faults?point=xfs.call&clear=1")
        .await
        .unwrap();
    assert_eq!(status, 401);
    for bad in [
        "point=xfs.nope&fail_rate=1",
        "point=xfs.call&delay_ms=600000",
    ] {
        let (status, body) = admin_post(fd_admin, &format!("/faults?{bad}"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(faults_of(fd_admin).await.as_array().unwrap().len(), 2);

    // 100 messages through SMTP, 8 senders at once, retried on 4xx like a real MTA.
    let started = Instant::now();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    const MESSAGES: usize = 100;
    for w in 0..8 {
        let (smtp, refused) = (hcu.smtp_addr, refused.clone());
        senders.spawn(async move {
            for i in (w..MESSAGES).step_by(8) {
                let to: Vec<&str> = match i {
                    _ if i % 10 == 0 => vec![ALICE, BOB],
                    _ if i % 2 == 0 => vec![ALICE],
                    _ => vec![BOB],
                };
                let (_, raw, _) = message(i, &to);
                let n = send_like_an_mta(smtp, &format!("sender{i}@remote.test"), &to, &raw).await;
                refused.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    let smtp_secs = started.elapsed().as_secs_f64();

    // Every message is in each recipient's Inbox exactly once, byte for byte.
    let mut expected: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for i in 0..MESSAGES {
        let to: Vec<&str> = match i {
            _ if i % 10 == 0 => vec![ALICE, BOB],
            _ if i % 2 == 0 => vec![ALICE],
            _ => vec![BOB],
        };
        let (id, _, data) = message(i, &to);
        for user in to {
            expected
                .entry(user)
                .or_default()
                .insert(id.clone(), data.clone());
        }
    }
    for (user, want) in &expected {
        let inbox = hcu.inbox(user).await.unwrap();
        let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (_, body) in &inbox {
            got.entry(message_id(body).unwrap_or_default())
                .or_default()
                .push(strip_trace_header(body).to_vec());
        }
        assert_eq!(
            inbox.len(),
            want.len(),
            "{user}: stored {} messages",
            inbox.len()
        );
        for (id, data) in want {
            let copies = got.get(id).map_or(0, Vec::len);
            assert_eq!(copies, 1, "{user}: {id} stored {copies} times");
            assert_eq!(&got[id][0], data, "{user}: {id} stored with other bytes");
        }
    }
    let smtp_injected =
        injected(smtp_admin, "xfs.call").await + injected(smtp_admin, "xfs.reply").await;
    println!(
        "SMTP under faults: {MESSAGES} messages in {smtp_secs:.1} s, {} attempts deferred and \
         retried, {smtp_injected} failures injected in smtp-in, every message stored once",
        refused.load(Ordering::Relaxed)
    );
    assert!(smtp_injected > 0.0, "no fault was injected in smtp-in");

    // Webmail through the JSON API, every call retried until it succeeds.
    let mut tally = Tally::default();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let inbox_path = "/api/v1/folders/Inbox/messages?offset=0&limit=100";
    let page = tally.until_ok("list", || fd.get(&alice, inbox_path)).await;
    let all = ids(&page);
    assert_eq!(all.len(), 50, "{page}");
    let (flag, rest) = all.split_at(10);
    let (moved, rest) = rest.split_at(10);
    let opened = &rest[..5];
    for id in opened {
        let path = format!("/api/v1/messages/{id}");
        let read = tally.until_ok("open", || fd.get(&alice, &path)).await;
        assert!(
            read["text"].as_str().unwrap().contains("body of message"),
            "{read}"
        );
    }
    // One call per message, so that many calls meet a fault.
    for id in flag {
        let body = json!({"ids": [id], "add": ["flagged"]});
        tally
            .until_ok("flag", || {
                fd.post_json(&alice, "/api/v1/messages/flags", &body)
            })
            .await;
    }
    for id in moved {
        let body = json!({"ids": [id], "folder": "Junk"});
        tally
            .until_ok("move", || {
                fd.post_json(&alice, "/api/v1/messages/move", &body)
            })
            .await;
        tally.until_ok("list", || fd.get(&alice, inbox_path)).await;
    }
    let mut copies = 0;
    for k in 0..3 {
        let body = json!({"to": [BOB], "subject": format!("fault send {k}"), "text": "hello"});
        let sent = tally
            .until_ok("send", || fd.post_json(&alice, "/api/v1/send", &body))
            .await;
        if sent["sent_copy"].is_u64() {
            copies += 1;
        }
    }
    let fd_injected = injected(fd_admin, "xfs.call").await + injected(fd_admin, "xfs.reply").await;
    println!(
        "webmail under faults: answers by status {:?}, {fd_injected} failures injected in the front door",
        tally.statuses
    );
    assert!(fd_injected > 0.0, "no fault was injected in the front door");

    // Faults off through the admin endpoints: nothing more is injected.
    for admin in [smtp_admin, fd_admin] {
        clear_fault(admin, "xfs.call").await;
        clear_fault(admin, "xfs.reply").await;
        assert_eq!(faults_of(admin).await, json!([]));
    }
    let before = [
        injected(smtp_admin, "xfs.call").await + injected(smtp_admin, "xfs.reply").await,
        fd_injected,
    ];

    // The mailbox is exactly what was asked, read with every call answering at once.
    let mut clean = Tally::default();
    let inbox = clean.until_ok("list", || fd.get(&alice, inbox_path)).await;
    let junk = clean
        .until_ok("list junk", || {
            fd.get(&alice, "/api/v1/folders/Junk/messages?limit=100")
        })
        .await;
    let inbox_ids: BTreeSet<u64> = ids(&inbox).into_iter().collect();
    let junk_ids: BTreeSet<u64> = ids(&junk).into_iter().collect();
    let want_inbox: BTreeSet<u64> = all.iter().copied().filter(|i| !moved.contains(i)).collect();
    assert_eq!(inbox_ids, want_inbox);
    assert_eq!(junk_ids, moved.iter().copied().collect());
    let mut flagged = ids_where(&inbox, "flagged");
    flagged.extend(ids_where(&junk, "flagged"));
    assert_eq!(flagged, flag.iter().copied().collect());
    let mut seen = ids_where(&inbox, "seen");
    seen.extend(ids_where(&junk, "seen"));
    assert_eq!(seen, opened.iter().copied().collect());
    let sent = clean
        .until_ok("list sent", || {
            fd.get(&alice, "/api/v1/folders/Sent/messages?limit=100")
        })
        .await;
    // A send reports its Sent copy when the store's answer came back; a copy whose answer was
    // lost is filed all the same (once: its delivery id is the message's hash).
    let filed: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    let unique: BTreeSet<&&str> = filed.iter().collect();
    assert_eq!(unique.len(), filed.len(), "{sent}");
    assert!(
        (copies..=3).contains(&filed.len()),
        "{copies} reported, {sent}"
    );
    let bob = fd.token(&hcu, BOB).await.unwrap();
    let deadline = Deadline::after(Duration::from_secs(30), Duration::from_millis(200));
    loop {
        let page = clean
            .until_ok("bob's inbox", || {
                fd.get(&bob, "/api/v1/folders/Inbox/messages?limit=200")
            })
            .await;
        let subjects: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["subject"].as_str())
            .filter(|s| s.starts_with("fault send"))
            .map(str::to_string)
            .collect();
        if subjects.len() >= 3 || !deadline.pause().await {
            let unique: BTreeSet<&String> = subjects.iter().collect();
            assert_eq!((subjects.len(), unique.len()), (3, 3), "{subjects:?}");
            break;
        }
    }
    // Ten more messages go through at the first attempt.
    for i in MESSAGES..MESSAGES + 10 {
        let (_, raw, _) = message(i, &[ALICE]);
        let refused = send_like_an_mta(hcu.smtp_addr, "late@remote.test", &[ALICE], &raw).await;
        assert_eq!(refused, 0, "a message was refused with the faults off");
    }
    assert_eq!(
        clean.statuses.keys().collect::<Vec<_>>(),
        vec![&200],
        "{:?}",
        clean.statuses
    );
    let after = [
        injected(smtp_admin, "xfs.call").await + injected(smtp_admin, "xfs.reply").await,
        injected(fd_admin, "xfs.call").await + injected(fd_admin, "xfs.reply").await,
    ];
    println!(
        "faults_injected_total (smtp-in, front door) when cleared: {before:?}, \
         after more traffic: {after:?}"
    );
    assert_eq!(
        before, after,
        "faults were injected after they were cleared"
    );
    assert_eq!(hcu.inbox_count(ALICE).await.unwrap(), 40 + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_fault_point_answers_a_clear_503() {
    let hcu = LocalHcu::start(HcuOpts::default()).await.unwrap();
    hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    set_fault(fd.proc.admin, "http.request", 0, 1.0).await;
    let r = fd.get(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), "injected fault at http.request\n");
    clear_fault(fd.proc.admin, "http.request").await;
    let r = fd.get(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(injected(fd.proc.admin, "http.request").await, 1.0);
}

fn delivery(id: u8, text: &str) -> Delivery {
    Delivery {
        id: [id; 32],
        folder: None,
        internal_date_ms: 1,
        flags: Flags::NONE,
        summary: Summary {
            subject: text.into(),
            ..Summary::default()
        },
        body: format!("Subject: {text}\r\n\r\n{text}\r\n").into(),
    }
}

async fn folders(pool: &xfs::StorePool, target: &Target) -> Vec<xfs::FolderInfo> {
    let op = Op::ListFolders {
        target: target.clone(),
    };
    match pool.call(op).await.unwrap() {
        Reply::Folders(f) => f,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_write_leaves_nothing_written() {
    let hcu = LocalHcu::start(HcuOpts::default()).await.unwrap();
    let p = hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    let target = Target::new(ALICE, p.segment, p.epoch);
    let store_admin = hcu.stores[0].proc.admin;
    let pool = hcu.stores[0].pool();
    let before = folders(&pool, &target).await;

    // Every write fails: the delivery is refused as unavailable, and nothing changed.
    set_fault(store_admin, "ustore.disk.write", 0, 1.0).await;
    let deliver = Op::Deliver {
        target: target.clone(),
        delivery: delivery(7, "written once"),
    };
    match pool.call(deliver.clone()).await {
        Err(CallError::Remote(XfsError::Unavailable { why })) => {
            assert!(why.contains("ustore.disk.write"), "{why}")
        }
        other => panic!("a delivery with failing disk writes answered {other:?}"),
    }
    assert_eq!(
        folders(&pool, &target).await,
        before,
        "a failed write left a change"
    );
    assert_eq!(hcu.inbox_count(ALICE).await.unwrap(), 0);

    // Half the writes fail while mail arrives through SMTP: each message is stored once.
    set_fault(store_admin, "ustore.disk.write", 0, 0.5).await;
    for i in 0..20 {
        let (_, raw, _) = message(1000 + i, &[ALICE]);
        send_like_an_mta(hcu.smtp_addr, "disk@remote.test", &[ALICE], &raw).await;
    }
    clear_fault(store_admin, "ustore.disk.write").await;
    let inbox = hcu.inbox(ALICE).await.unwrap();
    let distinct: BTreeSet<String> = inbox
        .iter()
        .map(|(_, b)| message_id(b).unwrap_or_default())
        .collect();
    assert_eq!((inbox.len(), distinct.len()), (20, 20));

    // The retry succeeds, and a second retry stores no second copy.
    let first = pool.call(deliver.clone()).await.unwrap();
    let again = pool.call(deliver).await.unwrap();
    match (&first, &again) {
        (
            Reply::Delivered {
                msg: a,
                duplicate: false,
                ..
            },
            Reply::Delivered {
                msg: b,
                duplicate: true,
                ..
            },
        ) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    assert_eq!(hcu.inbox_count(ALICE).await.unwrap(), 21);
    let n = injected(store_admin, "ustore.disk.write").await;
    println!("disk writes: {n} failures injected, every message stored once");
    assert!(n >= 2.0, "{n}");
}
