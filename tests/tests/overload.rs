//! Overload, end to end: a store offered three times what it can do sheds the excess with `Busy`
//! at once, keeps serving what it admits at a bounded latency, says "overloaded" (never failed)
//! while it sheds, and is back to normal within seconds of the load stopping. Through the front
//! door the user sees a short "try again" page, never a 500; through smtp-in a sender sees `451`,
//! never a 5xx, and what got `250` is stored exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use megamail_tests::frontdoor::status_and_text;
use megamail_tests::support::mail::mailer;
use megamail_tests::support::{eventually, metrics};
use megamail_tests::{http_get, Ustore, UstoreOpts};
use sha2::{Digest, Sha256};
use xfs::*;

/// The store's admission bound in these tests.
const MAX_IN_FLIGHT: usize = 4;
/// Every write batch waits this long before it commits (a slow disk), so the store's capacity
/// is set by the store, not by how much CPU the load generator leaves it.
const DISK_DELAY_MS: u64 = 10;
const USERS: usize = 64;
const CAPACITY_RUN: Duration = Duration::from_secs(3);
const OVERLOAD_RUN: Duration = Duration::from_secs(5);
/// The goal for the overloaded state to clear and service to be normal after the load stops.
const RECOVERY_GOAL: Duration = Duration::from_secs(5);

fn faults() -> runtime::config::FaultsConfig {
    megamail_tests::support::faults(&[("ustore.disk.write", DISK_DELAY_MS, 0.0)])
}

fn user(i: usize) -> String {
    format!("user{}@megamail.test", i % USERS)
}

/// A unique small delivery.
fn delivery(seq: u64) -> Delivery {
    let body = format!(
        "From: load@remote.test\r\nTo: someone@megamail.test\r\nSubject: load {seq}\r\n\r\n\
         message number {seq}\r\n"
    )
    .into_bytes();
    Delivery {
        id: Sha256::digest(format!("overload-{seq}").as_bytes()).into(),
        folder: None,
        internal_date_ms: 1_700_000_000_000,
        flags: Flags::NONE,
        summary: Summary {
            from: "load@remote.test".into(),
            to: "someone@megamail.test".into(),
            subject: format!("load {seq}"),
            date: String::new(),
            preview: String::new(),
            attachments: vec![],
        },
        body: body.into(),
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Busy,
    Other,
}

fn outcome(r: &Result<Reply, CallError>) -> Outcome {
    match r {
        Ok(Reply::Delivered { .. }) => Outcome::Ok,
        Err(CallError::Remote(XfsError::Busy { .. })) => Outcome::Busy,
        _ => Outcome::Other,
    }
}

/// The `p` quantile of sorted latencies (zero when there are none).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    metrics::percentile(sorted, p).unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The store's `/healthz`: HTTP status and the reported state.
async fn health(admin: SocketAddr) -> Option<(u16, String)> {
    let (code, body) = http_get(admin, "/healthz").await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((code, v["status"].as_str().unwrap_or("").to_string()))
}

/// Where `mailctl` finds one store.
#[derive(Clone)]
struct StoreAt {
    name: String,
    xfs: SocketAddr,
    admin: SocketAddr,
}

impl StoreAt {
    fn of(store: &Ustore) -> StoreAt {
        StoreAt {
            name: store.proc.name.clone(),
            xfs: store.addr,
            admin: store.proc.admin,
        }
    }
}

/// `mailctl --json status` for an HCU made of this one store: the store's row.
fn mailctl_status(store: &StoreAt, data: &std::path::Path) -> serde_json::Value {
    let endpoints = mailctl::plan::Endpoints {
        cluster: "hcu-1".into(),
        domains: vec!["megamail.test".into()],
        data_dir: data.to_path_buf(),
        supervisor_admin: megamail_tests::free_addr(),
        smtp: None,
        login_url: None,
        frontdoor_urls: vec![],
        mserv: vec![],
        ustore: vec![mailctl::plan::StoreEndpoint {
            name: store.name.clone(),
            xfs: store.xfs,
            segments: vec![0],
        }],
        processes: vec![mailctl::plan::ProcessEndpoint {
            name: store.name.clone(),
            role: "ustore".into(),
            listen: store.xfs,
            admin: store.admin,
        }],
        operator_tls: megamail_tests::support::pki::internal_tls(
            data,
            xfs::Role::Operator,
            "mailctl",
        ),
    };
    std::fs::create_dir_all(data).expect("data dir");
    std::fs::write(
        data.join("endpoints.json"),
        serde_json::to_string(&endpoints).expect("endpoints as JSON"),
    )
    .expect("writing endpoints.json");
    let out = megamail_tests::up::mailctl(data, &["--json", "status"], None);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mailctl status printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    rows.into_iter()
        .find(|r| r["name"] == store.name.as_str())
        .expect("a row for the store")
}

/// Latencies of finished calls, by outcome.
#[derive(Default)]
struct Record {
    ok: Vec<Duration>,
    busy: Vec<Duration>,
    other: Vec<String>,
}

/// Deliveries straight to one store over XFS, spread over several connections and mailboxes.
#[derive(Clone)]
struct Load {
    pools: Arc<Vec<StorePool>>,
    targets: Arc<Vec<Target>>,
    seq: Arc<AtomicU64>,
}

/// What an open-loop run did.
struct Run {
    sent: u64,
    offered_for: Duration,
    /// From the first request until the last answer.
    elapsed: Duration,
    record: Record,
}

impl Load {
    fn new(store: &Ustore, targets: Vec<Target>) -> Load {
        Load {
            pools: Arc::new((0..8).map(|_| store.pool()).collect()),
            targets: Arc::new(targets),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// One delivery, numbered `n`, to one of the mailboxes.
    fn op(&self, n: u64) -> Op {
        Op::Deliver {
            target: self.targets[n as usize % self.targets.len()].clone(),
            delivery: delivery(n),
        }
    }

    async fn deliver(&self) -> Result<Reply, CallError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.pools[n as usize % self.pools.len()]
            .call(self.op(n))
            .await
    }

    /// Deliveries per second with `MAX_IN_FLIGHT` callers and no think time (just enough to keep
    /// every admission slot busy), and how many were delivered.
    async fn capacity(&self) -> (f64, u64) {
        let started = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| {
                let (load, done) = (self.clone(), done.clone());
                tokio::spawn(async move {
                    while started.elapsed() < CAPACITY_RUN {
                        let r = load.deliver().await;
                        match outcome(&r) {
                            Outcome::Ok => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Busy => tokio::time::sleep(Duration::from_millis(1)).await,
                            Outcome::Other => panic!("delivery failed while measuring: {r:?}"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("capacity worker");
        }
        let done = done.load(Ordering::Relaxed);
        (done as f64 / started.elapsed().as_secs_f64(), done)
    }

    /// An open loop: `rate` deliveries per second for `run`, each its own task whatever the
    /// answers to earlier ones; returns once every answer is in.
    async fn open_loop(&self, rate: f64, run: Duration) -> Run {
        let record = Arc::new(Mutex::new(Record::default()));
        let started = Instant::now();
        let mut sent = 0u64;
        let mut calls = Vec::new();
        while started.elapsed() < run {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let (load, record) = (self.clone(), record.clone());
                calls.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = load.deliver().await;
                    let took = t.elapsed();
                    let mut rec = record.lock().expect("lock");
                    match outcome(&r) {
                        Outcome::Ok => rec.ok.push(took),
                        Outcome::Busy => rec.busy.push(took),
                        Outcome::Other => rec.other.push(format!("{r:?}")),
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let offered_for = started.elapsed();
        for c in calls {
            c.await.expect("call task");
        }
        let elapsed = started.elapsed();
        let mut record = std::mem::take(&mut *record.lock().expect("lock"));
        record.ok.sort();
        record.busy.sort();
        Run {
            sent,
            offered_for,
            elapsed,
            record,
        }
    }
}

/// Create the `USERS` test mailboxes (segment 0, epoch 1) on `store`.
async fn create_users(store: &Ustore) -> Vec<Target> {
    let pool = store.pool();
    let mut targets = Vec::new();
    for i in 0..USERS {
        let t = Target::new(user(i), 0, 1);
        let op = Op::CreateAccount {
            target: t.clone(),
            account: NewAccount {
                password_hash: "x".into(),
                display_name: user(i),
                quota_bytes: 0,
            },
        };
        pool.call(op).await.expect("creating an account");
        targets.push(t);
    }
    targets
}

/// Wait until the store's `/healthz` says ok again; how long that took from `since`.
async fn wait_health_ok(admin: SocketAddr, since: Instant) -> Duration {
    let left = RECOVERY_GOAL.saturating_sub(since.elapsed());
    let ok = eventually(left, Duration::from_millis(100), || async {
        match health(admin).await {
            Some((200, s)) if s == "ok" => Ok(since.elapsed()),
            other => Err(other),
        }
    })
    .await;
    ok.unwrap_or_else(|seen| {
        panic!("still not ok {RECOVERY_GOAL:?} after the load stopped: {seen:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sheds_three_times_its_capacity_and_recovers() {
    megamail_tests::hcu::raise_fd_limit();
    let mut store = Ustore::start(UstoreOpts {
        name: "store-1".into(),
        segments: 1,
        max_in_flight: MAX_IN_FLIGHT,
        faults: faults(),
    })
    .await
    .expect("store starts");
    let status_dir = tempfile::tempdir().expect("tempdir");
    let load = Load::new(&store, create_users(&store).await);

    let (capacity, measured) = load.capacity().await;
    println!(
        "capacity: {capacity:.0} deliveries/s with {MAX_IN_FLIGHT} in flight \
         ({DISK_DELAY_MS} ms per write batch)"
    );
    assert!(capacity > 10.0, "the store delivered almost nothing");
    // Let the overloaded mark of the capacity run (every slot taken) pass.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Watch health (as a failure detector would) and run `mailctl status` (as an operator
    // would) while the store is offered three times its capacity.
    let admin = store.proc.admin;
    let at = StoreAt::of(&store);
    let sampler = tokio::spawn(async move {
        let started = Instant::now();
        let mut seen = Vec::new();
        while started.elapsed() < OVERLOAD_RUN {
            tokio::time::sleep(Duration::from_millis(250)).await;
            seen.push(health(admin).await);
        }
        seen
    });
    let operator = {
        let (at, data) = (at.clone(), status_dir.path().to_path_buf());
        tokio::spawn(async move {
            tokio::time::sleep(OVERLOAD_RUN / 2).await;
            tokio::task::spawn_blocking(move || mailctl_status(&at, &data))
                .await
                .expect("mailctl status")
        })
    };
    let run = load.open_loop(3.0 * capacity, OVERLOAD_RUN).await;
    let load_stopped = Instant::now();
    let seen = sampler.await.expect("health sampler");
    let mid_status = operator.await.expect("operator");

    let rec = &run.record;
    let offered = run.sent as f64 / run.offered_for.as_secs_f64();
    let goodput = rec.ok.len() as f64 / run.elapsed.as_secs_f64();
    println!(
        "offered: {offered:.0}/s for {:?} ({} requests, {:.1}x capacity)",
        run.offered_for,
        run.sent,
        offered / capacity
    );
    println!(
        "goodput: {goodput:.0}/s = {:.0}% of capacity; admitted {}, shed {}, other {}",
        100.0 * goodput / capacity,
        rec.ok.len(),
        rec.busy.len(),
        rec.other.len()
    );
    println!(
        "shed latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&rec.busy, 0.50)),
        ms(percentile(&rec.busy, 0.99)),
        ms(rec.busy.last().copied().unwrap_or_default())
    );
    println!(
        "admitted latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&rec.ok, 0.50)),
        ms(percentile(&rec.ok, 0.99)),
        ms(rec.ok.last().copied().unwrap_or_default())
    );
    let states: Vec<String> = seen
        .iter()
        .map(|h| match h {
            Some((code, s)) => format!("{code} {s}"),
            None => "no answer".into(),
        })
        .collect();
    println!("/healthz during the overload: {states:?}");
    println!(
        "mailctl status during the overload: state {}, load {}/{}, shed {}",
        mid_status["state"],
        mid_status["in_flight"],
        mid_status["max_in_flight"],
        mid_status["shed_total"]
    );

    assert!(
        rec.other.is_empty(),
        "calls failed other than Busy: {:?}",
        &rec.other[..rec.other.len().min(5)]
    );
    assert!(
        rec.busy.len() as u64 > run.sent / 4,
        "the store was not overloaded: only {} of {} shed",
        rec.busy.len(),
        run.sent
    );
    // How fast a shed caller hears `Busy` and how long admitted calls take are printed above,
    // not asserted: a latency bound in a test fails on a loaded machine, not on a regression.
    // That shedding never waits is proven in-process (`runtime::admission`'s tests); here, that
    // the store sheds, keeps its goodput, stays up and healthy, and loses or doubles nothing.
    assert!(
        goodput >= 0.5 * capacity,
        "throughput collapsed: {goodput:.0}/s against a capacity of {capacity:.0}/s"
    );
    assert!(store.proc.is_running(), "the store died under load");
    // A failure detector must not mistake load for failure: every probe was answered 200.
    for h in &seen {
        match h {
            Some((200, s)) if s == "ok" || s == "overloaded" => {}
            other => panic!("/healthz under load answered {other:?}: {states:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|h| matches!(h, Some((200, s)) if s == "overloaded")),
        "/healthz never said overloaded while shedding: {states:?}"
    );
    assert_eq!(mid_status["up"], true, "{mid_status}");
    assert_eq!(mid_status["state"], "overloaded", "{mid_status}");

    // After the load: health back to ok and a normal operation admitted, within seconds.
    let recovered = wait_health_ok(admin, load_stopped).await;
    let t = Instant::now();
    let r = load.deliver().await;
    assert_eq!(outcome(&r), Outcome::Ok, "{r:?}");
    println!(
        "health ok again {recovered:?} after the load stopped (goal {RECOVERY_GOAL:?}); \
         a delivery then took {:.2} ms",
        ms(t.elapsed())
    );
    let row = mailctl_status(&at, status_dir.path());
    assert_eq!(row["state"], "ok", "{row}");

    // Every admitted delivery is stored, once; no shed one is.
    let mut total = 0u64;
    for t in load.targets.iter() {
        let op = Op::ListFolder {
            target: t.clone(),
            folder: INBOX.into(),
            offset: 0,
            limit: 0,
            before_uid: None,
        };
        match load.pools[0].call(op).await {
            Ok(Reply::Page(p)) => total += u64::from(p.folder.total),
            other => panic!("list_folder answered {other:?}"),
        }
    }
    assert_eq!(
        total,
        measured + rec.ok.len() as u64 + 1,
        "stored deliveries against admitted ones"
    );
    store
        .proc
        .terminate(Duration::from_secs(20))
        .expect("clean stop");
}

/// A front door's answer: its status (0 when there was none), `Retry-After` and text.
async fn answer(
    r: anyhow::Result<reqwest::Response>,
) -> (u16, Option<reqwest::header::HeaderValue>, String) {
    match r {
        Ok(r) => {
            let retry_after = r.headers().get("retry-after").cloned();
            let (status, text) = status_and_text(r).await;
            (status, retry_after, text)
        }
        Err(e) => (0, None, e.to_string()),
    }
}

/// What the front door and smtp-in answered while the store was overloaded.
#[derive(Default)]
struct Answers {
    pages_ok: u64,
    pages_busy: u64,
    pages_unavailable: u64,
    api_ok: u64,
    api_busy: u64,
    api_unavailable: u64,
    /// Rounds where the page and the API listing got different answers.
    differed: u64,
    /// Messages answered 250: (recipient, subject).
    accepted: Vec<(String, String)>,
    /// Messages answered 4xx: (recipient, subject, reply code).
    deferred: Vec<(String, String, String)>,
    /// Anything a user or a sender must never see: a 500 page, a 5xx reply, a broken session.
    wrong: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_door_and_smtp_say_try_again_under_overload() {
    use megamail_tests::frontdoor::FrontDoor;
    use megamail_tests::hcu::{HcuOpts, LocalHcu};

    let hcu = LocalHcu::start(HcuOpts {
        stores: 1,
        segments_per_store: 1,
        store_max_in_flight: MAX_IN_FLIGHT,
        store_faults: faults(),
        deliver_timeout_secs: 5,
        ..Default::default()
    })
    .await
    .expect("HCU starts");
    let fd = FrontDoor::start(&hcu).await.expect("front door starts");
    let mut targets = Vec::new();
    for i in 0..USERS {
        let p = hcu.add_user(&user(i)).await.expect("adding a user");
        targets.push(Target::new(user(i), p.segment, p.epoch));
    }
    let store = &hcu.stores[0];
    let admin = store.proc.admin;
    let load = Load::new(store, targets);
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push((user(i), fd.token(&hcu, &user(i)).await.expect("a token")));
    }

    let (capacity, _) = load.capacity().await;
    println!("store capacity: {capacity:.0} deliveries/s");
    let answers = Arc::new(Mutex::new(Answers::default()));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fd = Arc::new(fd);

    // Web users: a folder page and the same listing through the JSON API, over and over.
    let mut users = Vec::new();
    for (who, token) in tokens.clone() {
        let (fd, answers, running) = (fd.clone(), answers.clone(), running.clone());
        users.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let page = fd.page(&token, "/folder/Inbox").await;
                let api = fd.get(&token, "/api/v1/folders/Inbox/messages").await;
                let (page, api) = (answer(page).await, answer(api).await);
                let mut a = answers.lock().expect("lock");
                if page.0 != api.0 {
                    a.differed += 1;
                }
                match page {
                    (200, _, _) => a.pages_ok += 1,
                    (503, Some(_), body) if body.contains("try again in a few seconds") => {
                        a.pages_busy += 1
                    }
                    (503, Some(_), body) if body.to_lowercase().contains("try again") => {
                        a.pages_unavailable += 1
                    }
                    (code, _, body) => a.wrong.push(format!(
                        "{who}: folder page answered {code}: {}",
                        &body[..body.len().min(300)]
                    )),
                }
                let json: serde_json::Value = serde_json::from_str(&api.2).unwrap_or_default();
                match api {
                    (200, _, _) if json["messages"].is_array() => a.api_ok += 1,
                    (503, Some(_), _) if json["error"] == "busy" => a.api_busy += 1,
                    (503, _, _) if json["error"].is_string() => a.api_unavailable += 1,
                    (code, _, body) => a.wrong.push(format!(
                        "{who}: API listing answered {code}: {}",
                        &body[..body.len().min(300)]
                    )),
                }
            }
        }));
    }

    // Senders: one message at a time each, to one mailbox after another.
    let mut senders = Vec::new();
    for s in 0..4 {
        let (answers, running) = (answers.clone(), running.clone());
        let smtp_addr = hcu.smtp_addr;
        senders.push(tokio::spawn(async move {
            use lettre::AsyncTransport;
            let smtp = mailer(smtp_addr);
            let mut k = 0;
            while running.load(Ordering::Relaxed) {
                k += 1;
                let to = user(s * 16 + k);
                let subject = format!("smtp-overload-{s}-{k}");
                let raw = format!(
                    "From: sender@remote.test\r\nTo: {to}\r\nSubject: {subject}\r\n\
                     Message-ID: <{subject}@remote.test>\r\n\r\nunder load\r\n"
                );
                let envelope = lettre::address::Envelope::new(
                    Some("sender@remote.test".parse().expect("address")),
                    vec![to.parse().expect("address")],
                )
                .expect("envelope");
                let r = smtp.send_raw(&envelope, raw.as_bytes()).await;
                let mut a = answers.lock().expect("lock");
                match r {
                    Ok(_) => a.accepted.push((to, subject)),
                    Err(e) if e.is_transient() => {
                        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
                        a.deferred.push((to, subject, code))
                    }
                    Err(e) => a.wrong.push(format!("sending {subject}: {e}")),
                }
            }
        }));
    }

    let run = load.open_loop(3.0 * capacity, OVERLOAD_RUN).await;
    running.store(false, Ordering::Relaxed);
    for t in users.into_iter().chain(senders) {
        t.await.expect("client task");
    }
    let load_stopped = Instant::now();
    println!(
        "direct load: {} requests at {:.0}/s, {} admitted, {} shed",
        run.sent,
        run.sent as f64 / run.offered_for.as_secs_f64(),
        run.record.ok.len(),
        run.record.busy.len()
    );
    let a = std::mem::take(&mut *answers.lock().expect("lock"));
    let mut codes: Vec<&str> = a.deferred.iter().map(|d| d.2.as_str()).collect();
    codes.sort();
    codes.dedup();
    println!(
        "front door pages: {} ok, {} busy (503 try again), {} unavailable (503)",
        a.pages_ok, a.pages_busy, a.pages_unavailable
    );
    println!(
        "front door API: {} ok, {} busy (503), {} unavailable (503); \
         {} rounds where page and API differed",
        a.api_ok, a.api_busy, a.api_unavailable, a.differed
    );
    println!(
        "smtp-in: {} accepted (250), {} deferred (codes {codes:?})",
        a.accepted.len(),
        a.deferred.len()
    );
    assert!(
        a.wrong.is_empty(),
        "{:#?}",
        &a.wrong[..a.wrong.len().min(5)]
    );
    assert!(
        run.record.busy.len() as u64 > run.sent / 4,
        "the store was not overloaded"
    );
    assert!(
        a.pages_busy + a.api_busy > 0,
        "no front door answer said busy while the store shed most requests"
    );
    assert!(
        codes.iter().all(|c| c.starts_with('4')),
        "deferred with {codes:?}"
    );
    assert!(
        a.pages_ok + a.api_ok + a.accepted.len() as u64 > 0,
        "nothing got through the overload at all"
    );

    // After the load: healthy within seconds, and every accepted message is stored exactly once.
    let recovered = wait_health_ok(admin, load_stopped).await;
    println!("store health ok again {recovered:?} after the load stopped");
    let mut by_user: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for i in 0..USERS {
        let entries = hcu.inbox_entries(&user(i)).await.expect("the inbox");
        by_user.insert(
            user(i),
            entries.into_iter().map(|e| e.summary.subject).collect(),
        );
    }
    let count = |to: &str, subject: &str| {
        by_user
            .get(to)
            .map(|s| s.iter().filter(|x| *x == subject).count())
            .unwrap_or(0)
    };
    for (to, subject) in &a.accepted {
        assert_eq!(count(to, subject), 1, "{subject} to {to} was answered 250");
    }
    for (to, subject, code) in &a.deferred {
        assert!(
            count(to, subject) <= 1,
            "{subject} to {to} (answered {code}) stored twice"
        );
    }
    let page = fd
        .page(&tokens[0].1, "/folder/Inbox")
        .await
        .expect("a page");
    assert_eq!(page.status(), 200, "the folder page after the load");
}
