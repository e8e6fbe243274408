//! End-to-end tests of a real `ustore` process with real RocksDB segments on disk, through the
//! real XFS client.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use megamail_tests::support::eventually;
use megamail_tests::support::mailbox::call_retrying;
use megamail_tests::{http_get, Ustore, UstoreOpts};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xfs::*;

fn target(user: &str) -> Target {
    Target::new(user, 0, 1)
}

fn delivery_id(seed: &str) -> [u8; 32] {
    Sha256::digest(seed.as_bytes()).into()
}

fn mail(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

fn delivery(seed: &str, body: Vec<u8>) -> Delivery {
    Delivery {
        id: delivery_id(seed),
        folder: None,
        internal_date_ms: 1_700_000_000_000,
        flags: Flags::NONE,
        summary: Summary {
            from: "bob@remote.test".into(),
            to: "alice@example.test".into(),
            subject: seed.into(),
            date: String::new(),
            preview: "preview".into(),
            attachments: vec![],
        },
        body: body.into(),
    }
}

async fn create(pool: &StorePool, user: &str) {
    create_on(pool, Target::new(user, 0, 1)).await
}

async fn create_on(pool: &StorePool, t: Target) {
    let r = pool
        .call(Op::CreateAccount {
            target: t,
            account: NewAccount {
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                display_name: "Alice".into(),
                quota_bytes: 0,
            },
        })
        .await
        .unwrap();
    assert!(matches!(r, Reply::Account(_)), "{r:?}");
}

async fn deliver(pool: &StorePool, user: &str, seed: &str, body: Vec<u8>) -> (MsgId, u32, bool) {
    match pool
        .call(Op::Deliver {
            target: target(user),
            delivery: delivery(seed, body),
        })
        .await
        .unwrap()
    {
        Reply::Delivered {
            msg,
            uid,
            duplicate,
            ..
        } => (msg, uid, duplicate),
        other => panic!("{other:?}"),
    }
}

/// Call, retrying what may succeed later (a pool reconnecting after a restart).
async fn call_retry(pool: &StorePool, op: Op) -> Result<Reply, CallError> {
    call_retrying(pool, op, Duration::from_secs(10)).await
}

async fn page(pool: &StorePool, user: &str, folder: &str) -> FolderPage {
    page_of(pool, target(user), folder).await
}

async fn page_of(pool: &StorePool, target: Target, folder: &str) -> FolderPage {
    match pool
        .call(Op::ListFolder {
            target,
            folder: folder.into(),
            offset: 0,
            limit: 1000,
            before_uid: None,
        })
        .await
        .unwrap()
    {
        Reply::Page(p) => p,
        other => panic!("{other:?}"),
    }
}

async fn fetch(pool: &StorePool, user: &str, msg: MsgId) -> Result<Message, CallError> {
    match pool
        .call(Op::Fetch {
            target: target(user),
            msg,
            mark_seen: false,
        })
        .await?
    {
        Reply::Message(m) => Ok(m),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips() {
    let store = Ustore::start(UstoreOpts::default()).await.unwrap();
    // Every metric is listed from the start, before its first event.
    let (_, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    for name in ["ustore_sync_writes_total", "ustore_bytes_written_total"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let pool = store.pool();
    let u = "alice@example.test";
    let t = || target(u);

    assert_eq!(pool.call(Op::Ping).await.unwrap(), Reply::Pong);
    create(&pool, u).await;
    // A second create is refused, and the account is unchanged.
    let again = pool
        .call(Op::CreateAccount {
            target: t(),
            account: NewAccount {
                password_hash: "x".into(),
                display_name: "X".into(),
                quota_bytes: 0,
            },
        })
        .await
        .unwrap_err();
    assert!(matches!(
        again.remote(),
        Some(XfsError::AlreadyExists { .. })
    ));

    // Account, auth, login, update.
    let Reply::Auth(auth) = pool.call(Op::GetAuth { target: t() }).await.unwrap() else {
        panic!()
    };
    assert_eq!(auth.display_name, "Alice");
    // A new account's generation is its creation time in microseconds: a re-created address
    // never matches an old owner's sessions.
    let created_gen = auth.session_gen;
    assert!(created_gen > 1_700_000_000_000_000, "{created_gen}");
    pool.call(Op::RecordLogin {
        target: t(),
        at_ms: 1234,
    })
    .await
    .unwrap();
    pool.call(Op::UpdateAccount {
        target: t(),
        display_name: Some("Alice A.".into()),
        password_hash: Some("new-hash".into()),
        quota_bytes: Some(10_000_000),
    })
    .await
    .unwrap();
    let Reply::Account(acc) = pool.call(Op::GetAccount { target: t() }).await.unwrap() else {
        panic!()
    };
    assert_eq!(acc.last_login_ms, 1234);
    assert_eq!(acc.display_name, "Alice A.");
    assert_eq!(
        acc.session_gen,
        created_gen + 1,
        "a password change bumps the generation"
    );
    assert_eq!(acc.quota_bytes, 10_000_000);
    let Reply::Auth(auth) = pool.call(Op::GetAuth { target: t() }).await.unwrap() else {
        panic!()
    };
    assert_eq!(auth.password_hash, "new-hash");

    // Folders.
    let Reply::Folders(fs) = pool.call(Op::ListFolders { target: t() }).await.unwrap() else {
        panic!()
    };
    let names: Vec<_> = fs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, SYSTEM_FOLDERS);
    pool.call(Op::CreateFolder {
        target: t(),
        name: "Work".into(),
    })
    .await
    .unwrap();
    pool.call(Op::CreateFolder {
        target: t(),
        name: "Old".into(),
    })
    .await
    .unwrap();
    pool.call(Op::RenameFolder {
        target: t(),
        from: "Work".into(),
        to: "Projects".into(),
    })
    .await
    .unwrap();
    let e = pool
        .call(Op::RenameFolder {
            target: t(),
            from: "Inbox".into(),
            to: "X".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.remote(), Some(XfsError::BadRequest { .. })),
        "{e}"
    );

    // Deliveries: bytes come back exactly.
    let b1 = mail("first", "hello there");
    let b2 = mail("second", "quarterly report attached");
    let b3 = mail("third", "lunch?");
    let (m1, u1, dup) = deliver(&pool, u, "first", b1.clone()).await;
    assert!(!dup);
    let (m2, u2, _) = deliver(&pool, u, "second", b2.clone()).await;
    let (m3, _, _) = deliver(&pool, u, "third", b3.clone()).await;
    assert!(u2 > u1);
    let msg = fetch(&pool, u, m2).await.unwrap();
    assert_eq!(msg.body, b2);
    assert_eq!(msg.entry.folder, "Inbox");
    assert_eq!(msg.entry.body_crc, crc32fast::hash(&b2));

    // A page: newest first, with counts; paging by offset and by uid.
    let p = page(&pool, u, "Inbox").await;
    assert_eq!(
        p.entries.iter().map(|e| e.msg).collect::<Vec<_>>(),
        vec![m3, m2, m1]
    );
    assert_eq!((p.folder.total, p.folder.unread), (3, 3));
    let Reply::Page(p2) = pool
        .call(Op::ListFolder {
            target: t(),
            folder: "Inbox".into(),
            offset: 1,
            limit: 1,
            before_uid: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(p2.entries.len(), 1);
    assert_eq!(p2.entries[0].msg, m2);
    let Reply::Page(p3) = pool
        .call(Op::ListFolder {
            target: t(),
            folder: "Inbox".into(),
            offset: 0,
            limit: 10,
            before_uid: Some(u2),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(p3.entries.iter().map(|e| e.msg).collect::<Vec<_>>(), [m1]);

    // Fetch with mark_seen, then flags.
    let Reply::Message(seen) = pool
        .call(Op::Fetch {
            target: t(),
            msg: m1,
            mark_seen: true,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(seen.entry.flags.contains(Flags::SEEN));
    pool.call(Op::SetFlags {
        target: t(),
        msgs: vec![m2],
        add: Flags::FLAGGED.union(Flags::SEEN),
        remove: Flags::NONE,
    })
    .await
    .unwrap();
    let p = page(&pool, u, "Inbox").await;
    assert_eq!(p.folder.unread, 1);
    let e2 = p.entries.iter().find(|e| e.msg == m2).unwrap();
    assert!(e2.flags.contains(Flags::FLAGGED));
    pool.call(Op::SetFlags {
        target: t(),
        msgs: vec![m2],
        add: Flags::NONE,
        remove: Flags::SEEN,
    })
    .await
    .unwrap();
    assert_eq!(page(&pool, u, "Inbox").await.folder.unread, 2);

    // Move keeps the body and the flags, gives a new uid in the target folder.
    let Reply::NewUids(moved) = pool
        .call(Op::Move {
            target: t(),
            msgs: vec![m2],
            to_folder: "Projects".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(moved, vec![(m2, 1)]);
    let proj = page(&pool, u, "Projects").await;
    assert_eq!(proj.entries.len(), 1);
    assert!(proj.entries[0].flags.contains(Flags::FLAGGED));
    assert_eq!(fetch(&pool, u, m2).await.unwrap().body, b2);
    assert_eq!(page(&pool, u, "Inbox").await.folder.total, 2);

    // Search: subject, sender, body.
    let hits = |r: Reply| match r {
        Reply::Hits(h) => h.into_iter().map(|e| e.msg).collect::<HashSet<_>>(),
        other => panic!("{other:?}"),
    };
    let q = |text: &str, in_body: bool| Op::Search {
        target: t(),
        query: SearchQuery {
            text: text.into(),
            in_body,
            in_subject: !in_body,
            ..Default::default()
        },
    };
    assert_eq!(
        hits(pool.call(q("THIRD", false)).await.unwrap()),
        HashSet::from([m3])
    );
    assert_eq!(
        hits(pool.call(q("quarterly", true)).await.unwrap()),
        HashSet::from([m2])
    );
    assert!(hits(pool.call(q("quarterly", false)).await.unwrap()).is_empty());

    // Move to Trash, empty Trash, delete.
    pool.call(Op::Move {
        target: t(),
        msgs: vec![m3],
        to_folder: "Trash".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        pool.call(Op::EmptyFolder {
            target: t(),
            folder: "Trash".into()
        })
        .await
        .unwrap(),
        Reply::Count(1)
    );
    assert!(matches!(
        fetch(&pool, u, m3).await.unwrap_err().remote(),
        Some(XfsError::NoSuchMessage { .. })
    ));
    assert_eq!(
        pool.call(Op::Expunge {
            target: t(),
            msgs: vec![m1, m3]
        })
        .await
        .unwrap(),
        Reply::Count(1),
        "a message already gone is skipped"
    );

    // Folder delete expunges its messages.
    assert_eq!(
        pool.call(Op::DeleteFolder {
            target: t(),
            name: "Projects".into()
        })
        .await
        .unwrap(),
        Reply::Count(1)
    );
    let e = pool
        .call(Op::DeleteFolder {
            target: t(),
            name: "Trash".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e.remote(), Some(XfsError::BadRequest { .. })));

    // Stats and the change log.
    let Reply::Stats(st) = pool.call(Op::MailboxStats { target: t() }).await.unwrap() else {
        panic!()
    };
    assert_eq!(st.account.messages, 0);
    assert_eq!(st.account.used_bytes, 0);
    let names: Vec<_> = st.folders.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["Inbox", "Sent", "Drafts", "Junk", "Trash", "Old"]);
    let Reply::Changes(ch) = pool
        .call(Op::Changes {
            target: t(),
            since: 0,
            limit: 1000,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(ch.modseq, st.account.modseq);
    assert_eq!(ch.changes.len() as u64, ch.modseq);
    assert_eq!(ch.changes[0].kind, ChangeKind::AccountCreated);
    assert!(ch.changes.iter().any(|c| c.kind
        == ChangeKind::Added {
            msg: m1,
            folder: "Inbox".into(),
            uid: u1
        }));
    let Reply::Changes(tail) = pool
        .call(Op::Changes {
            target: t(),
            since: ch.modseq - 2,
            limit: 1000,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(tail.changes.len(), 2);

    // Quota.
    pool.call(Op::UpdateAccount {
        target: t(),
        display_name: None,
        password_hash: None,
        quota_bytes: Some(100),
    })
    .await
    .unwrap();
    let e = pool
        .call(Op::Deliver {
            target: t(),
            delivery: delivery("big", vec![b'x'; 200]),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.remote(), Some(XfsError::QuotaExceeded { .. })),
        "{e}"
    );

    // Store stats and an online checkpoint.
    let Reply::StoreStats(ss) = pool.call(Op::StoreStats).await.unwrap() else {
        panic!()
    };
    assert_eq!(ss.store, "store-1");
    assert_eq!(ss.segments.len(), 2);
    assert!(ss.sync_writes > 0 && ss.wal_syncs > 0);
    let ck = store.dir.join("checkpoint-0");
    pool.call(Op::Checkpoint {
        segment: 0,
        dir: ck.display().to_string(),
    })
    .await
    .unwrap();
    let again = pool
        .call(Op::Checkpoint {
            segment: 0,
            dir: ck.display().to_string(),
        })
        .await
        .unwrap_err();
    assert!(matches!(again.remote(), Some(XfsError::BadRequest { .. })));
    // Only under the store's backup roots.
    let elsewhere = tempfile::tempdir().unwrap();
    for dir in [
        elsewhere.path().join("checkpoint"),
        store.dir.join("../checkpoint-escape"),
    ] {
        let refused = pool
            .call(Op::Checkpoint {
                segment: 0,
                dir: dir.display().to_string(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(refused.remote(), Some(XfsError::BadRequest { why }) if why.contains("refused")),
            "{refused}"
        );
        assert!(!dir.exists());
    }
    // The checkpoint is a segment of its own: it opens and holds the account.
    let seg = ustore::Segment::open(
        0,
        &ck,
        &Default::default(),
        Arc::new(runtime::faults::Faults::new()),
    )
    .unwrap();
    let r = seg.execute(Op::GetAccount { target: t() }).unwrap();
    assert!(matches!(r, Reply::Account(a) if a.display_name == "Alice A."));
    drop(seg);

    // Wrong segment, bad user id, unknown user.
    let e = pool
        .call(Op::GetAccount {
            target: Target::new(u, 9, 1),
        })
        .await
        .unwrap_err();
    assert!(matches!(e.remote(), Some(XfsError::BadRequest { .. })));
    let e = pool
        .call(Op::GetAccount {
            target: target("Not An Address"),
        })
        .await
        .unwrap_err();
    assert!(matches!(e.remote(), Some(XfsError::BadRequest { .. })));
    let e = pool
        .call(Op::GetAccount {
            target: target("nobody@example.test"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.remote(), Some(&XfsError::NoSuchUser));

    // Delete the account: everything of it is gone.
    pool.call(Op::DeleteAccount { target: t() }).await.unwrap();
    let e = pool.call(Op::GetAccount { target: t() }).await.unwrap_err();
    assert_eq!(e.remote(), Some(&XfsError::NoSuchUser));

    // The metrics and health endpoints answer.
    let (code, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("ustore_requests_total"), "{metrics}");
    let (code, health) = http_get(store.proc.admin, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_to_one_mailbox_get_distinct_uids() {
    let store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let pool = Arc::new(store.pool());
    let u = "bob@example.test";
    create(&pool, u).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            deliver(&pool, u, &format!("m{i}"), mail(&format!("m{i}"), "x")).await
        }));
    }
    let mut uids = HashSet::new();
    let mut msgs = HashSet::new();
    for t in tasks {
        let (m, uid, dup) = t.await.unwrap();
        assert!(!dup);
        uids.insert(uid);
        msgs.insert(m);
    }
    assert_eq!(uids.len(), 64);
    assert_eq!(msgs.len(), 64);
    assert_eq!(uids, (1..=64).collect::<HashSet<u32>>());
    let p = page(&pool, u, "Inbox").await;
    assert_eq!(
        (p.folder.total, p.folder.unread, p.folder.uidnext),
        (64, 64, 65)
    );
    assert_eq!(p.entries.len(), 64);
    let Reply::Stats(st) = pool
        .call(Op::MailboxStats { target: target(u) })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(st.account.messages, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_id_stores_one_copy() {
    let store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let pool = store.pool();
    let u = "carol@example.test";
    create(&pool, u).await;
    let body = mail("once", "only once");
    let (m1, u1, d1) = deliver(&pool, u, "once", body.clone()).await;
    let (m2, u2, d2) = deliver(&pool, u, "once", body.clone()).await;
    assert!(!d1 && d2);
    assert_eq!((m1, u1), (m2, u2), "the repeat returns the first result");
    // Concurrent repeats of another id: still one copy.
    let pool = Arc::new(pool);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            deliver(&pool, u, "twice", body).await
        }));
    }
    let mut firsts = 0;
    let mut results = HashSet::new();
    for t in tasks {
        let (m, uid, dup) = t.await.unwrap();
        firsts += usize::from(!dup);
        results.insert((m, uid));
    }
    assert_eq!(firsts, 1);
    assert_eq!(results.len(), 1);
    assert_eq!(page(&pool, u, "Inbox").await.folder.total, 2);
}

/// kill -9 the store while 16 clients deliver; restart; every acknowledged delivery is there,
/// byte-exact. Five cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_deliveries_loses_nothing_acknowledged() {
    let mut store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let pool = Arc::new(store.pool());
    let users: Vec<String> = (0..4).map(|i| format!("crash{i}@example.test")).collect();
    for (i, u) in users.iter().enumerate() {
        create_on(&pool, Target::new(u.clone(), (i % 2) as u32, 1)).await;
    }
    let tgt = |i: usize| Target::new(users[i % users.len()].clone(), (i % 2) as u32, 1);
    // (user index, seed) → (msg, body) for every delivery that got a success reply.
    type Acked = BTreeMap<(usize, String), (MsgId, Vec<u8>)>;
    let acked: Arc<Mutex<Acked>> = Default::default();
    let mut total_acked = 0;
    for cycle in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..16 {
            let (pool, acked, stop) = (pool.clone(), acked.clone(), stop.clone());
            let t = tgt(c);
            let ui = c % users.len();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let seed = format!("c{cycle}-k{c}-n{n}");
                    let body = mail(&seed, &seed.repeat(50 + n % 200));
                    let r = pool
                        .call_with(
                            Op::Deliver {
                                target: t.clone(),
                                delivery: delivery(&seed, body.clone()),
                            },
                            "",
                            Duration::from_secs(5),
                        )
                        .await;
                    match r {
                        Ok(Reply::Delivered { msg, .. }) => {
                            acked.lock().unwrap().insert((ui, seed), (msg, body));
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }));
        }
        // Let some deliveries land, then pull the plug mid-stream.
        let before = acked.lock().unwrap().len();
        let landed = eventually(Duration::from_secs(60), Duration::from_millis(2), || {
            let n = acked.lock().unwrap().len();
            async move { (n >= before + 40 + cycle * 7).then_some(()).ok_or(n) }
        })
        .await;
        assert!(landed.is_ok(), "deliveries stalled");
        store.proc.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        store.proc.restart().await.unwrap();
        let acked = acked.lock().unwrap().clone();
        for ((ui, seed), (msg, body)) in &acked {
            let got = call_retry(
                &pool,
                Op::Fetch {
                    target: tgt(*ui),
                    msg: *msg,
                    mark_seen: false,
                },
            )
            .await;
            match got {
                Ok(Reply::Message(m)) => {
                    assert_eq!(&m.body, body, "cycle {cycle}: {seed} not byte-exact")
                }
                other => panic!("cycle {cycle}: acknowledged {seed} lost: {other:?}"),
            }
        }
        total_acked = acked.len();
        // Counts agree with what is stored: no half-applied batch.
        for i in 0..users.len() {
            let Ok(Reply::Stats(st)) = call_retry(&pool, Op::MailboxStats { target: tgt(i) }).await
            else {
                panic!("stats")
            };
            let in_folders: u32 = st.folders.iter().map(|f| f.total).sum();
            assert_eq!(u64::from(in_folders), st.account.messages);
            let p = page_of(&pool, tgt(i), "Inbox").await;
            assert_eq!(p.entries.len() as u32, p.folder.total);
            assert_eq!(p.folder.uidnext as usize, p.entries.len() + 1);
        }
    }
    assert!(
        total_acked >= 5 * 40,
        "only {total_acked} deliveries acknowledged"
    );
    println!("{total_acked} acknowledged deliveries survived 5 kill -9 cycles");
}

type Raw = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn raw_tls_conn(addr: std::net::SocketAddr) -> Raw {
    let who = megamail_tests::support::pki::operator();
    megamail_tests::support::pki::raw_tls(addr, &who, xfs::Role::Ustore).await
}

async fn raw_conn(addr: std::net::SocketAddr) -> Raw {
    let mut s = raw_tls_conn(addr).await;
    let hello = ClientFrame::Hello(ClientHello {
        version: PROTOCOL_VERSION,
        role: xfs::Role::Operator,
        name: "test".into(),
    });
    s.write_all(&frame::encode(&hello).unwrap()).await.unwrap();
    let reply: ServerFrame = frame::read_msg(&mut s, 1 << 20).await.unwrap().unwrap();
    assert!(matches!(reply, ServerFrame::Hello(_)), "{reply:?}");
    s
}

/// Read until the server closes the connection; true if it did (within a bound).
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let pool = store.pool();
    create(&pool, "dave@example.test").await;

    // A frame whose crc does not match its payload.
    let mut bad = raw_conn(store.addr).await;
    let mut f = frame::encode(&ClientFrame::Request(Request {
        id: 1,
        deadline_ms: 1000,
        trace: String::new(),
        session: None,
        op: Op::Ping,
    }))
    .unwrap();
    f[4] ^= 0xff;
    bad.write_all(&f).await.unwrap();
    assert!(closed_by_server(&mut bad).await, "bad crc must close");

    // An absurd length.
    let mut huge = raw_conn(store.addr).await;
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut huge).await,
        "absurd length must close"
    );

    // Garbage instead of a hello.
    let mut junk = tokio::net::TcpStream::connect(store.addr).await.unwrap();
    junk.write_all(b"EHLO smtp.example.test\r\n").await.unwrap();
    assert!(closed_by_server(&mut junk).await);

    // An older protocol version is refused with a reason.
    let mut old = raw_tls_conn(store.addr).await;
    let hello = ClientFrame::Hello(ClientHello {
        version: 0,
        role: xfs::Role::Operator,
        name: "test".into(),
    });
    old.write_all(&frame::encode(&hello).unwrap())
        .await
        .unwrap();
    let reply: ServerFrame = frame::read_msg(&mut old, 1 << 20).await.unwrap().unwrap();
    assert!(matches!(reply, ServerFrame::Refused { .. }), "{reply:?}");

    // The store still serves everyone else.
    let (_, uid, _) = deliver(&pool, "dave@example.test", "after", mail("after", "ok")).await;
    assert_eq!(uid, 1);
    let (_, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("ustore_frame_errors_total{kind=\"bad_crc\"} 1"),
        "{metrics}"
    );
    // The absurd length; the SMTP line never got past the TLS handshake.
    assert!(
        metrics.contains("ustore_frame_errors_total{kind=\"too_large\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ustore_frame_errors_total{kind=\"tls\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_all_answer() {
    let store = Ustore::start(UstoreOpts::default()).await.unwrap();
    create(&store.pool(), "erin@example.test").await;
    let mut s = raw_conn(store.addr).await;
    let mut burst = Vec::new();
    for id in 1..=50u64 {
        burst.extend(
            frame::encode(&ClientFrame::Request(Request {
                id,
                deadline_ms: 5000,
                trace: format!("t{id}"),
                session: None,
                op: Op::Deliver {
                    target: target("erin@example.test"),
                    delivery: delivery(&format!("p{id}"), mail("p", &id.to_string())),
                },
            }))
            .unwrap(),
        );
    }
    s.write_all(&burst).await.unwrap();
    let mut ids = HashSet::new();
    while ids.len() < 50 {
        let f: ServerFrame = frame::read_msg(&mut s, 1 << 20).await.unwrap().unwrap();
        let ServerFrame::Response(r) = f else {
            panic!()
        };
        assert!(matches!(r.result, Ok(Reply::Delivered { .. })), "{r:?}");
        ids.insert(r.id);
    }
    assert_eq!(ids, (1..=50).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_damaged_on_disk_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Ustore::start_in(dir.path(), UstoreOpts::default())
        .await
        .unwrap();
    let pool = store.pool();
    let u = "frank@example.test";
    create(&pool, u).await;
    let (good, _, _) = deliver(&pool, u, "good", mail("good", "fine")).await;
    let (bad, _, _) = deliver(&pool, u, "bad", mail("bad", "will rot")).await;
    store.proc.terminate(Duration::from_secs(30)).unwrap();

    // The disk returns damaged bytes for one body (the stored crc no longer matches).
    let seg = ustore::Segment::open(
        0,
        &store.segment_dir(0),
        &Default::default(),
        Arc::new(runtime::faults::Faults::new()),
    )
    .unwrap();
    seg.damage_body(u, bad).unwrap();
    drop(seg);

    store.proc.restart().await.unwrap();
    let pool = store.pool();
    let e = fetch(&pool, u, bad).await.unwrap_err();
    assert!(matches!(e.remote(), Some(XfsError::Corrupt { .. })), "{e}");
    // A body search that meets it reports it rather than skipping silently.
    let e = pool
        .call(Op::Search {
            target: target(u),
            query: SearchQuery {
                text: "rot".into(),
                in_body: true,
                ..Default::default()
            },
        })
        .await
        .unwrap_err();
    assert!(matches!(e.remote(), Some(XfsError::Corrupt { .. })), "{e}");
    // The healthy message is still served.
    assert!(fetch(&pool, u, good).await.is_ok());
    let (_, metrics) = http_get(store.proc.admin, "/metrics").await.unwrap();
    assert!(metrics.contains("ustore_corrupt_reads_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_bound_callers_get_busy_at_once() {
    // Two operations in flight at most, and every deliver held for 1.5 s by a fault point.
    let store = Ustore::start(UstoreOpts {
        max_in_flight: 2,
        faults: megamail_tests::support::faults(&[("ustore.op.deliver", 1500, 0.0)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let pool = Arc::new(store.pool());
    create(&pool, "gina@example.test").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let r = pool
                .call(Op::Deliver {
                    target: target("gina@example.test"),
                    delivery: delivery(&format!("b{i}"), mail("b", "b")),
                })
                .await;
            let tag = match &r {
                Ok(_) => "ok",
                Err(e) if matches!(e.remote(), Some(XfsError::Busy { .. })) => "busy",
                Err(e) => panic!("{e}"),
            };
            order.lock().unwrap().push(tag);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let oks = order.iter().filter(|t| **t == "ok").count();
    let busy = order.len() - oks;
    assert!(oks >= 2 && busy >= 1, "{order:?}");
    // Shed callers were answered while the admitted ones were still held: every Busy comes
    // before the first success.
    assert!(order[..busy].iter().all(|t| *t == "busy"), "{order:?}");
    let (code, health) = http_get(store.proc.admin, "/healthz").await.unwrap();
    assert_eq!(code, 200, "overloaded is not failed: {health}");
    assert!(health.contains("overloaded"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_and_a_bad_config_fails_the_start() {
    let mut store = Ustore::start(UstoreOpts::default()).await.unwrap();
    let pool = store.pool();
    create(&pool, "hank@example.test").await;
    let st = store.proc.terminate(Duration::from_secs(30)).unwrap();
    assert!(st.success(), "{st:?}\n{}", store.proc.log_tail());

    let bin = megamail_tests::bin("ustore");
    let bad = store.dir.join("bad.toml");
    std::fs::write(&bad, "max-in-flight = 0\nsegments = []\n").unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-in-flight"), "{err}");
    let good = store.dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "name = \"s\"\n[internal-tls]\nname = \"s\"\nplaintext = true\n\
             [[session-keys]]\nid = \"{}\"\npublic-key = \"{}\"\n",
            megamail_tests::web::KEY_ID,
            megamail_tests::web::public_keys()[0].public_key
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
