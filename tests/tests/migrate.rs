//! `mailctl migrate` on a whole HCU run by `mailctl up`: a store evacuated while mail arrives
//! through SMTP and a client reads and flags through the JSON API, and moves crashed at every
//! step (mailctl aborted, or a store killed) then run again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use megamail_tests::support::mail::{delivery, message_id, padded, smtp_load};
use megamail_tests::support::mailbox::{call_retrying, STORE_RETRY};
use megamail_tests::support::metrics::percentile;
use megamail_tests::support::{eventually, Mailbox};
use megamail_tests::up::{self, add_user_on, addr, mailctl, ok, url_addr, Up};
use operator::admin::Hcu;
use serde_json::{json, Value};
use xfs::{ops, CallError, Delivery, Flags, IndexEntry, Op, Target, XfsError};

/// Deliver straight to the user's store (fast setup).
async fn preload(hcu: &Hcu, user: &str, n: usize, size: usize) {
    let mailbox = Mailbox::of(hcu, user).await.unwrap();
    for i in 0..n {
        let key = format!("pre-{i}-{user}");
        let body = padded(
            &format!("Subject: preload {i}\r\nMessage-ID: <{key}>\r\n"),
            size,
        );
        let delivery = Delivery {
            internal_date_ms: 1_700_000_000_000 + i as u64,
            ..delivery(&key, &format!("preload {i}"), body)
        };
        let op = ops::Deliver {
            target: mailbox.target.clone(),
            delivery,
        };
        mailbox.run(op).await.unwrap();
    }
}

/// What a mailbox holds: per folder, (uid, flags, Message-ID), and where it lives.
#[derive(Debug, PartialEq, Eq)]
struct Content {
    store: String,
    folders: BTreeMap<String, Vec<(u32, u32, String)>>,
}

async fn content(hcu: &Hcu, user: &str) -> Content {
    let mailbox = Mailbox::of(hcu, user).await.unwrap();
    let folders = mailbox.content().await.unwrap().into_iter();
    let ids = |messages: Vec<(IndexEntry, Vec<u8>)>| {
        messages
            .iter()
            .map(|(e, body)| (e.uid, e.flags.0, message_id(body).unwrap_or_default()))
            .collect()
    };
    Content {
        store: mailbox.store,
        folders: folders.map(|(name, m)| (name, ids(m))).collect(),
    }
}

/// The old copy is gone from `store` (or only redirects callers).
async fn not_live_at(hcu: &Hcu, store: &str, user: &str) {
    let pool = hcu.xfs.pool(&hcu.store_addr(store).await.unwrap());
    for seg in 0..2 {
        let op = Op::ListFolders {
            target: Target::new(user, seg, 0),
        };
        match call_retrying(&pool, op, STORE_RETRY).await {
            Err(CallError::Remote(XfsError::NoSuchUser))
            | Err(CallError::Remote(XfsError::Moved { .. })) => {}
            other => panic!("{user} still live at {store} segment {seg}: {other:?}"),
        }
    }
}

/// Create `folder` in the mailbox and move `msgs` into it.
async fn file_away(mailbox: &Mailbox, folder: &str, msgs: Vec<u64>) {
    let target = mailbox.target.clone();
    let create = Op::CreateFolder {
        target: target.clone(),
        name: folder.into(),
    };
    mailbox.call(create).await.unwrap();
    let to_folder = folder.into();
    let op = Op::Move {
        target,
        msgs,
        to_folder,
    };
    mailbox.call(op).await.unwrap();
}

fn other(store: &str) -> &'static str {
    if store == "store-1" {
        "store-2"
    } else {
        "store-1"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_crashed_at_any_step_completes_when_run_again() {
    let mut up = Up::start().await;
    let hcu = up.hcu();
    let users: Vec<String> = (0..4).map(|i| format!("crash{i}@megamail.test")).collect();
    for (i, u) in users.iter().enumerate() {
        add_user_on(&hcu, u, "store-1", i as u32 % 2).await;
        preload(&hcu, u, 30, 60_000).await;
    }
    // Some folders and flags that must survive.
    let mailbox = Mailbox::of(&hcu, &users[0]).await.unwrap();
    file_away(&mailbox, "Kept", vec![1, 2, 3]).await;
    let flag = Op::SetFlags {
        target: mailbox.target.clone(),
        msgs: vec![4, 5],
        add: Flags::FLAGGED,
        remove: Flags::NONE,
    };
    mailbox.call(flag).await.unwrap();
    let mut points = 0;
    // mailctl itself stops dead at each step of a move.
    for (k, point) in mailctl::migrate::CRASH_POINTS.iter().enumerate() {
        let user = &users[k % users.len()];
        let before = content(&hcu, user).await;
        let to = other(&before.store);
        let out = Command::new(megamail_tests::bin("mailctl"))
            .args(["--data"])
            .arg(&up.data)
            .args(["migrate", "--user", user, "--to", to, "--grace", "0"])
            .env("MAILCTL_CRASH_AT", point)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: no crash");
        let out = mailctl(
            &up.data,
            &["migrate", "--user", user, "--to", to, "--grace", "0"],
            None,
        );
        let text = ok(&out);
        let after = content(&hcu, user).await;
        assert_eq!(after.store, to, "{point}: {text}");
        assert_eq!(after.folders, before.folders, "{point}: content changed");
        not_live_at(&hcu, &before.store, user).await;
        println!("crash at {point}: resumed and completed ({})", text.trim());
        points += 1;
    }
    // A store killed at different moments of a move (the supervisor restarts it).
    let big = &users[3];
    preload(&hcu, big, 40, 200_000).await;
    for (k, delay_ms) in [0u64, 30, 80, 150, 250, 400, 600, 900, 1300, 1800]
        .iter()
        .enumerate()
    {
        let before = content(&hcu, big).await;
        let to = other(&before.store);
        let victim = if k % 2 == 0 {
            before.store.clone()
        } else {
            to.to_string()
        };
        let mut run = Command::new(megamail_tests::bin("mailctl"))
            .args(["--data"])
            .arg(&up.data)
            .args(["migrate", "--user", big, "--to", to, "--grace", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
        let pid = up.pid_of(&victim);
        // SAFETY: SIGKILL to a store the test's supervisor started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let first = run.wait().unwrap();
        up.wait_all_ok(Duration::from_secs(60)).await;
        // Run again until it goes through (the restarted store may take a moment).
        let rerun = eventually(Duration::from_secs(60), Duration::from_millis(300), || {
            let args = ["migrate", "--user", big, "--to", to, "--grace", "0"];
            let out = mailctl(&up.data, &args, None);
            async move { out.status.success().then_some(()).ok_or(out) }
        })
        .await;
        if let Err(out) = rerun {
            panic!(
                "kill {victim} after {delay_ms} ms: never completed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let after = content(&hcu, big).await;
        assert_eq!(after.store, to);
        assert_eq!(
            after.folders, before.folders,
            "kill {victim} after {delay_ms} ms"
        );
        not_live_at(&hcu, &before.store, big).await;
        println!(
            "killed {victim} {delay_ms} ms into a move (first run: {first}); completed on rerun"
        );
        points += 1;
    }
    assert!(points >= 20);
    // Nothing is left half-done.
    assert!(mailctl::migrate::pending_jobs(&up.data).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_no_ops_and_refused_targets() {
    let up = Up::start().await;
    let hcu = up.hcu();
    add_user_on(&hcu, "stay@megamail.test", "store-1", 0).await;
    preload(&hcu, "stay@megamail.test", 5, 5000).await;
    let before = content(&hcu, "stay@megamail.test").await;
    let out = ok(&mailctl(
        &up.data,
        &["migrate", "--from", "store-1", "--all", "--dry-run"],
        None,
    ));
    assert!(
        out.contains("stay@megamail.test") && out.contains("store-2"),
        "{out}"
    );
    let out = ok(&mailctl(
        &up.data,
        &[
            "migrate",
            "--user",
            "stay@megamail.test",
            "--to",
            "store-2",
            "--dry-run",
        ],
        None,
    ));
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(content(&hcu, "stay@megamail.test").await, before);
    assert!(mailctl::migrate::pending_jobs(&up.data).unwrap().is_empty());
    // Already there: nothing happens.
    let out = ok(&mailctl(
        &up.data,
        &["migrate", "--user", "stay@megamail.test", "--to", "store-1"],
        None,
    ));
    assert!(out.contains("already there"), "{out}");
    // Draining or offline targets are refused with the reason.
    ok(&mailctl(&up.data, &["store", "drain", "store-2"], None));
    let out = mailctl(
        &up.data,
        &["migrate", "--user", "stay@megamail.test", "--to", "store-2"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("draining"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    hcu.mserv
        .set_store_state("store-2", mserv::StoreState::Offline)
        .await
        .unwrap();
    let out = mailctl(
        &up.data,
        &["migrate", "--user", "stay@megamail.test", "--to", "store-2"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("offline"));
    let out = mailctl(
        &up.data,
        &["migrate", "--user", "stay@megamail.test", "--to", "store-9"],
        None,
    );
    assert!(!out.status.success());
    let out = mailctl(&up.data, &["migrate", "--user", "stay@megamail.test"], None);
    assert!(!out.status.success(), "no --to and nothing to continue");
    assert_eq!(content(&hcu, "stay@megamail.test").await, before);
}

/// A client signed in as `user`, reading its inbox and flagging messages; the ids it flagged.
async fn api_client(
    login: std::net::SocketAddr,
    user: String,
    stop: Arc<AtomicBool>,
    flagged: Arc<Mutex<Vec<(String, u64)>>>,
) {
    let session = up::sign_in(login, &user, "pw").await.1.expect("signed in");
    let mut k = 0usize;
    while !stop.load(Ordering::SeqCst) {
        k += 1;
        let page = session
            .get("/api/v1/folders/Inbox/messages?offset=0&limit=50")
            .await;
        let Ok(page) = page else { continue };
        if page.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let v: Value = page.json().unwrap();
        let ids: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        if let Some(id) = ids.get(k % ids.len().max(1)) {
            let flag = json!({"ids": [id], "add": ["flagged"]});
            let r = session.post_json("/api/v1/messages/flags", &flag).await;
            if matches!(r, Ok(a) if a.status == 200) {
                flagged.lock().unwrap().push((user.clone(), *id));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuating_a_store_under_load_loses_and_duplicates_nothing() {
    let up = Up::start().await;
    let e = up.endpoints();
    let hcu = Arc::new(up.hcu());
    let users: Vec<String> = (0..200)
        .map(|i| format!("evac{i:03}@megamail.test"))
        .collect();
    // 200 mailboxes on store-1, from empty to 20 MB.
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut setup = tokio::task::JoinSet::new();
    for (i, u) in users.iter().enumerate() {
        let (hcu, u, sem) = (hcu.clone(), u.clone(), sem.clone());
        setup.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            add_user_on(&hcu, &u, "store-1", i as u32 % 2).await;
            let (n, size) = match i {
                0 => (0, 0),
                1 => (20, 1_000_000),
                _ => (i % 9, 4_000 + (i % 13) * 3_000),
            };
            preload(&hcu, &u, n, size).await;
        });
    }
    while let Some(r) = setup.join_next().await {
        r.unwrap();
    }
    // Folders to keep: a few users file messages away.
    for u in users[2..13].iter().filter(|u| !u.starts_with("evac009")) {
        let mailbox = Mailbox::of(&hcu, u).await.unwrap();
        file_away(&mailbox, "Archive", vec![1]).await;
    }
    let mut before = HashMap::new();
    for u in &users {
        before.insert(u.clone(), content(&hcu, u).await);
    }

    // Load: SMTP to every user, and API clients reading and flagging.
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(10);
    let load = tokio::spawn(smtp_load(
        addr(&e["smtp"]),
        users.clone(),
        every,
        stop.clone(),
    ));
    let flagged = Arc::new(Mutex::new(Vec::new()));
    let login = url_addr(e["login_url"].as_str().unwrap());
    let mut clients = Vec::new();
    for u in &users[1..5] {
        clients.push(tokio::spawn(api_client(
            login,
            u.clone(),
            stop.clone(),
            flagged.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Evacuate store-1.
    ok(&mailctl(&up.data, &["store", "drain", "store-1"], None));
    let started = Instant::now();
    let data = up.data.clone();
    let out = tokio::task::spawn_blocking(move || {
        mailctl(
            &data,
            &[
                "--json",
                "migrate",
                "--from",
                "store-1",
                "--all",
                "--parallel",
                "4",
                "--grace",
                "1",
            ],
            None,
        )
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let text = ok(&out);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = load.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }

    let mut freezes: Vec<f64> = Vec::new();
    let mut moved = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["ok"], true, "{line}");
        moved += 1;
        if let Some(f) = v["freeze_ms"].as_f64() {
            freezes.push(f);
        }
    }
    assert_eq!(moved, 200);
    freezes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "evacuated 200 mailboxes in {took:?}; freeze window p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} messages accepted during the run, {} flags set",
        percentile(&freezes, 0.5).unwrap_or(0.0),
        percentile(&freezes, 0.99).unwrap_or(0.0),
        freezes.last().copied().unwrap_or(0.0),
        acked.values().map(Vec::len).sum::<usize>(),
        flagged.lock().unwrap().len()
    );

    // Nothing lost, nothing duplicated, folders as they were, flags kept; store-1 holds nothing.
    let flagged: HashSet<(String, u64)> = flagged.lock().unwrap().iter().cloned().collect();
    let (mut lost, mut duplicated) = (0, 0);
    for u in &users {
        let now = content(&hcu, u).await;
        assert_eq!(now.store, "store-2", "{u}");
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for entries in now.folders.values() {
            for (_, _, id) in entries {
                *seen.entry(id.as_str()).or_default() += 1;
            }
        }
        duplicated += seen.values().filter(|n| **n > 1).count();
        for (folder, entries) in &before[u].folders {
            let kept: HashSet<&String> = now.folders[folder].iter().map(|(_, _, id)| id).collect();
            lost += entries
                .iter()
                .filter(|(_, _, id)| !kept.contains(id))
                .count();
        }
        for id in acked.get(u).into_iter().flatten() {
            if !seen.contains_key(id.as_str()) {
                lost += 1;
            }
        }
        let mailbox = Mailbox::of(&hcu, u).await.unwrap();
        for (fu, id) in flagged.iter().filter(|(fu, _)| fu == u) {
            let op = ops::Fetch {
                target: mailbox.target.clone(),
                msg: *id,
                mark_seen: false,
            };
            let Ok(m) = mailbox.run(op).await else {
                panic!("{fu} message {id} gone")
            };
            assert!(
                m.entry.flags.contains(Flags::FLAGGED),
                "{fu} message {id} lost its flag"
            );
        }
        not_live_at(&hcu, "store-1", u).await;
    }
    assert_eq!((lost, duplicated), (0, 0), "lost / duplicated");
    let left = hcu
        .mserv
        .list_store_users("store-1", None, 10)
        .await
        .unwrap();
    assert!(left.users.is_empty(), "{left:?}");
    assert!(mailctl::migrate::pending_jobs(&up.data).unwrap().is_empty());
}
