//! End-to-end tests of the member index: real `mserv` replica processes replicating with Raft
//! over loopback, driven through the real `mserv::Client`.
//!
//! The tests run one at a time (each starts three to five processes, and one of them times a
//! failover), so they do not compete for the machine's cores.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use megamail_tests::mserv::{test_client, Mserv, MservOpts};
use megamail_tests::support::{eventually, retry_while};
use megamail_tests::{free_addr, http_get, Proc};
use mserv::{Client, ClientConfig, MservError, Placement, Policy, StoreInfo, StoreState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn store(name: &str, segments: &[u32]) -> StoreInfo {
    StoreInfo {
        name: name.into(),
        xfs_addr: "127.0.0.1:7100".into(),
        cluster: "hcu-1".into(),
        segments: segments.to_vec(),
        state: StoreState::Active,
    }
}

/// Register two stores of two segments each and their cluster.
async fn setup_stores(c: &Client) {
    c.register_store(store("store-1", &[0, 1])).await.unwrap();
    c.register_store(store("store-2", &[0, 1])).await.unwrap();
    c.register_cluster("hcu-1", vec!["http://127.0.0.1:8080".into()])
        .await
        .unwrap();
}

/// Create `users` through `workers` concurrent callers; returns each user's placement.
async fn create_all(
    c: Arc<Client>,
    users: Vec<String>,
    workers: usize,
) -> BTreeMap<String, Placement> {
    let users = Arc::new(users);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (c, users, next) = (c.clone(), users.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(u) = users.get(i) else { break };
                let p = c.create_user(u, Policy::LeastLoaded).await.unwrap();
                out.push((u.clone(), p));
            }
            out
        });
    }
    let mut all = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i}@example.test"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_users_every_replica_answers_the_same() {
    let _serial = SERIAL.lock().await;
    let mut m = Mserv::start(MservOpts::default()).await.unwrap();
    let c = Arc::new(m.client());
    setup_stores(&c).await;
    let created = create_all(c.clone(), users("user", 1000), 32).await;
    assert_eq!(created.len(), 1000);
    m.wait_converged(Duration::from_secs(30)).await.unwrap();

    for id in m.running() {
        let rc = m.client_of(id);
        for (u, p) in &created {
            assert_eq!(
                &rc.lookup_uncached(u).await.unwrap(),
                p,
                "replica {id}, user {u}"
            );
        }
        let s = m.stats(id).await.unwrap();
        assert_eq!(s.users, 1000, "replica {id}");
        assert_eq!(
            s.stores,
            vec![("store-1".into(), 500), ("store-2".into(), 500)]
        );
        assert_eq!(
            rc.lookup_uncached("nobody@example.test").await,
            Err(MservError::NoSuchUser)
        );
    }
    // Least-loaded placement spread them evenly over stores and segments.
    for l in c.list_stores().await.unwrap() {
        assert_eq!(l.segment_users, vec![(0, 250), (1, 250)], "{}", l.info.name);
    }
    assert_eq!(c.list_clusters().await.unwrap()[0].front_doors.len(), 1);
    // A store's users page by page, for evacuation: every one once, in order.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = c
            .list_store_users("store-2", after.as_deref(), 64)
            .await
            .unwrap();
        listed.extend(page.users.into_iter().map(|(u, p)| {
            assert_eq!(p.store, "store-2");
            u
        }));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let want: Vec<String> = created
        .iter()
        .filter(|(_, p)| p.store == "store-2")
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(listed, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_never_lands_on_a_draining_or_offline_store() {
    let _serial = SERIAL.lock().await;
    let m = Mserv::start(MservOpts::default()).await.unwrap();
    let c = m.client();
    setup_stores(&c).await;
    create_all(Arc::new(m.client()), users("old", 20), 4).await;
    // Newer, emptier stores that must not take users.
    let mut draining = store("store-3", &[0]);
    draining.state = StoreState::Draining;
    c.register_store(draining).await.unwrap();
    c.register_store(store("store-4", &[0])).await.unwrap();
    c.set_store_state("store-4", StoreState::Offline)
        .await
        .unwrap();
    let placed = create_all(Arc::new(m.client()), users("new", 40), 4).await;
    assert!(placed
        .values()
        .all(|p| p.store == "store-1" || p.store == "store-2"));
    let explicit = c
        .create_user(
            "x@example.test",
            Policy::Explicit {
                store: "store-3".into(),
                segment: 0,
            },
        )
        .await;
    assert_eq!(
        explicit,
        Err(MservError::StoreNotActive {
            store: "store-3".into(),
            state: StoreState::Draining
        })
    );
    // Back to active, the empty store takes every new user until it catches up.
    c.set_store_state("store-4", StoreState::Active)
        .await
        .unwrap();
    let placed = create_all(Arc::new(m.client()), users("newest", 10), 1).await;
    assert!(placed.values().all(|p| p.store == "store-4"), "{placed:?}");
    c.set_store_state("store-1", StoreState::Offline)
        .await
        .unwrap();
    c.set_store_state("store-2", StoreState::Offline)
        .await
        .unwrap();
    c.set_store_state("store-4", StoreState::Offline)
        .await
        .unwrap();
    assert_eq!(
        c.create_user("none@example.test", Policy::LeastLoaded)
            .await,
        Err(MservError::NoActiveStore)
    );
    assert!(matches!(
        c.create_user("old1@example.test", Policy::LeastLoaded)
            .await,
        Err(MservError::AlreadyExists { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_fails_over_and_the_replica_catches_up_after_restart() {
    let _serial = SERIAL.lock().await;
    let mut m = Mserv::start(MservOpts::default()).await.unwrap();
    let c = Arc::new(m.client());
    setup_stores(&c).await;
    let created = create_all(c.clone(), users("user", 200), 16).await;
    let known: Arc<Vec<String>> = Arc::new(created.keys().cloned().collect());
    m.wait_converged(Duration::from_secs(30)).await.unwrap();
    let leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    let survivors: Vec<u64> = m.running().into_iter().filter(|id| *id != leader).collect();

    // Lookups on each surviving replica, without pause, for the whole failover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for id in &survivors {
        let rc = m.client_of(*id);
        let (stop, ok, failed, known) = (stop.clone(), ok.clone(), failed.clone(), known.clone());
        readers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match rc.lookup_uncached(&known[i % known.len()]).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("lookup failed during failover: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    m.kill9(leader);
    let killed = Instant::now();
    let mut n = 0;
    let written = eventually(Duration::from_secs(30), Duration::ZERO, || {
        n += 1;
        let (c, user) = (&c, format!("after{n}@example.test"));
        async move { c.create_user(&user, Policy::LeastLoaded).await }
    })
    .await;
    if let Err(e) = written {
        panic!("no write accepted: {e}");
    }
    let failover = killed.elapsed();
    println!(
        "failover: first write accepted {} ms after kill -9 of leader {leader}",
        failover.as_millis()
    );
    let new_leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, leader);
    // Keep reading a moment under the new leader, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "lookups failed during the failover"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "too few lookups: {ok:?}");

    // More writes while it is down, then it comes back and catches up.
    let later = create_all(c.clone(), users("later", 100), 8).await;
    m.restart(leader).await.unwrap();
    let index = m.wait_converged(Duration::from_secs(30)).await.unwrap();
    let s = m
        .wait_applied(leader, index, Duration::from_secs(30))
        .await
        .unwrap();
    // 300 plus the `after` writes: the last one surely, earlier ones if their answer was lost.
    let expected = m.stats(new_leader).await.unwrap().users;
    assert!(
        (301..=300 + n as u64).contains(&expected),
        "{expected} users"
    );
    assert_eq!(s.users, expected);
    let rc = m.client_of(leader);
    for (u, p) in later.iter().chain(created.iter().take(50)) {
        assert_eq!(&rc.lookup_uncached(u).await.unwrap(), p);
    }
    assert!(rc
        .lookup_uncached(&format!("after{n}@example.test"))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_catches_up_from_a_snapshot_after_100k_users() {
    let _serial = SERIAL.lock().await;
    let opts = MservOpts {
        snapshot_logs: 200,
        keep_logs: 100,
        ..Default::default()
    };
    let mut m = Mserv::start(opts).await.unwrap();
    let c = Arc::new(m.client());
    setup_stores(&c).await;

    // 100,000 users in batches of 100 (1,000 log entries), 8 batches in flight.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, next) = (c.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= 1000 {
                    return;
                }
                let batch = (0..100)
                    .map(|i| format!("u{}@example.test", b * 100 + i))
                    .collect();
                c.create_users(batch).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        // A batch retried after a lost answer counts its users as existing, not created.
        r.unwrap();
    }
    println!("100,000 users created in {:?}", started.elapsed());
    m.wait_converged(Duration::from_secs(60)).await.unwrap();
    let leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    let ls = m.stats(leader).await.unwrap();
    assert_eq!(ls.users, 100_000);
    // Snapshots were taken and the log behind them purged: a replica starting from nothing
    // cannot be sent the whole log.
    assert!(
        ls.raft.snapshot_index.is_some_and(|i| i >= 200),
        "{:?}",
        ls.raft
    );
    assert!(
        ls.raft.purged_index.is_some_and(|i| i >= 100),
        "{:?}",
        ls.raft
    );

    let joined = Instant::now();
    let id = m.add_replica().await.unwrap();
    println!(
        "replica {id} joined and caught up in {:?}",
        joined.elapsed()
    );
    let index = m.wait_converged(Duration::from_secs(60)).await.unwrap();
    let s = m
        .wait_applied(id, index, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        s.raft.snapshots_installed >= 1,
        "no snapshot installed: {:?}",
        s.raft
    );
    assert_eq!(s.users, 100_000);
    assert_eq!(s.raft.voters.len(), 4, "{:?}", s.raft.voters);
    let (fresh, old) = (m.client_of(id), m.client_of(leader));
    for i in (0..100_000).step_by(997) {
        let u = format!("u{i}@example.test");
        assert_eq!(
            fresh.lookup_uncached(&u).await.unwrap(),
            old.lookup_uncached(&u).await.unwrap()
        );
    }
    // Writes after the join reach it through the log.
    let p = c
        .create_user("late@example.test", Policy::LeastLoaded)
        .await
        .unwrap();
    let index = m.wait_converged(Duration::from_secs(30)).await.unwrap();
    m.wait_applied(id, index, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(fresh.lookup_uncached("late@example.test").await.unwrap(), p);

    // And it can be removed again.
    let after = c.remove_replica(id).await.unwrap();
    assert_eq!(after.voters.len(), 3, "{after:?}");
    assert!(after.learners.is_empty(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_move_is_refused_and_a_good_one_is_seen_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut m = Mserv::start(MservOpts::default()).await.unwrap();
    let c = m.client();
    setup_stores(&c).await;
    let p = c
        .create_user(
            "Alice@Example.test",
            Policy::Explicit {
                store: "store-1".into(),
                segment: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!((p.store.as_str(), p.segment, p.epoch), ("store-1", 1, 1));

    // A caching client (another role) reads the placement before the move.
    let cached = Client::new(
        m.addrs(),
        ClientConfig {
            identity: megamail_tests::support::pki::operator(),
            ..Default::default()
        },
    );
    assert_eq!(cached.lookup("alice@example.test").await.unwrap(), p);

    assert_eq!(
        c.move_user("alice@example.test", 0, "store-2", 0).await,
        Err(MservError::StaleEpoch { current: 1 })
    );
    let moved = c
        .move_user("alice@example.test", 1, "store-2", 0)
        .await
        .unwrap();
    assert_eq!(
        (moved.store.as_str(), moved.segment, moved.epoch),
        ("store-2", 0, 2)
    );
    assert_eq!(
        c.move_user("alice@example.test", 1, "store-1", 0).await,
        Err(MservError::StaleEpoch { current: 2 })
    );
    assert_eq!(
        c.move_user("alice@example.test", 2, "store-9", 0).await,
        Err(MservError::NoSuchStore {
            store: "store-9".into()
        })
    );
    m.wait_converged(Duration::from_secs(30)).await.unwrap();
    for id in m.running() {
        assert_eq!(
            m.client_of(id)
                .lookup_uncached("alice@example.test")
                .await
                .unwrap(),
            moved
        );
    }
    // The cache still holds the old route until the store answers Moved and the caller drops it.
    assert_eq!(cached.lookup("alice@example.test").await.unwrap(), p);
    cached.invalidate("ALICE@example.test").await;
    assert_eq!(cached.lookup("alice@example.test").await.unwrap(), moved);

    c.delete_user("alice@example.test").await.unwrap();
    assert_eq!(
        c.move_user("alice@example.test", 2, "store-1", 0).await,
        Err(MservError::NoSuchUser)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_losing_the_replica_it_talks_to() {
    let _serial = SERIAL.lock().await;
    let mut m = Mserv::start(MservOpts::default()).await.unwrap();
    let admin = m.client();
    setup_stores(&admin).await;
    let known: Vec<String> = create_all(Arc::new(m.client()), users("user", 100), 8)
        .await
        .into_keys()
        .collect();
    m.wait_converged(Duration::from_secs(30)).await.unwrap();
    // The client talks to the first replica it is given: make that the leader, the hardest case.
    let leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    let mut addrs = vec![m.addr(leader)];
    addrs.extend(m.addrs().into_iter().filter(|a| *a != m.addr(leader)));
    let c = Arc::new(test_client(addrs));
    for u in &known {
        c.lookup_uncached(u).await.unwrap();
    }
    let talking_to = m.stats(leader).await.unwrap();
    assert_eq!(talking_to.raft.role, "leader");

    // Lookups in flight while its replica dies.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..4 {
        let (c, stop, known) = (c.clone(), stop.clone(), known.clone());
        readers.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                c.lookup_uncached(&known[i % known.len()]).await.unwrap();
                i += 4;
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    m.kill9(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Writes through the same client wait out the election.
    let p = c
        .create_user("after@example.test", Policy::LeastLoaded)
        .await
        .unwrap();
    // The replica answering may learn of the commit a heartbeat after the leader.
    let found = retry_while(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || c.lookup_uncached("after@example.test"),
        |e| matches!(e, MservError::NoSuchUser),
    )
    .await;
    assert_eq!(found.unwrap(), p);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_five_replica_clusters_work() {
    let _serial = SERIAL.lock().await;
    {
        let m = Mserv::start(MservOpts {
            replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let c = m.client();
        setup_stores(&c).await;
        let p = c
            .create_user("solo@example.test", Policy::LeastLoaded)
            .await
            .unwrap();
        assert_eq!(c.lookup_uncached("solo@example.test").await.unwrap(), p);
    }
    let mut m = Mserv::start(MservOpts {
        replicas: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = m.client();
    setup_stores(&c).await;
    create_all(Arc::new(m.client()), users("user", 50), 8).await;
    // Two of five may fail.
    let leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    let other = m.running().into_iter().find(|id| *id != leader).unwrap();
    m.kill9(leader);
    m.kill9(other);
    let p = c
        .create_user("after@example.test", Policy::LeastLoaded)
        .await
        .unwrap();
    m.wait_converged(Duration::from_secs(30)).await.unwrap();
    for id in m.running() {
        assert_eq!(
            m.client_of(id)
                .lookup_uncached("after@example.test")
                .await
                .unwrap(),
            p
        );
        assert_eq!(m.stats(id).await.unwrap().users, 51);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_bad_frames_and_a_clean_stop() {
    let _serial = SERIAL.lock().await;
    let mut m = Mserv::start(MservOpts::default()).await.unwrap();
    let leader = m.wait_leader(Duration::from_secs(10)).await.unwrap();
    let (code, body) = http_get(m.replicas[&leader].proc.admin, "/healthz")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["raft_role"], "leader", "{h}");
    assert_eq!(h["raft_leader"], leader, "{h}");
    let follower = m.replicas.keys().copied().find(|id| *id != leader).unwrap();
    // A replica joins as a learner and is promoted once it has caught up: a follower soon.
    let admin = m.replicas[&follower].proc.admin;
    let h = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let (_, body) = http_get(admin, "/healthz")
                .await
                .map_err(|e| e.to_string())?;
            let h: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if h["raft_role"] == "follower" {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        },
    )
    .await;
    assert!(h.is_ok(), "{h:?}");

    // A frame with a bad checksum after the hello closes the connection and is counted.
    let who = megamail_tests::support::pki::operator();
    let addr = m.addr(follower).parse().unwrap();
    let mut s = megamail_tests::support::pki::raw_tls(addr, &who, xfs::Role::Mserv).await;
    let hello = mserv::proto::ClientFrame::Hello(mserv::proto::ClientHello {
        version: mserv::proto::PROTOCOL_VERSION,
        role: xfs::Role::Operator,
        name: "test".into(),
    });
    s.write_all(&xfs::frame::encode(&hello).unwrap())
        .await
        .unwrap();
    let mut bad = xfs::frame::encode(&mserv::proto::ClientFrame::Request(mserv::proto::Request {
        id: 1,
        deadline_ms: 1000,
        trace: String::new(),
        session: None,
        op: mserv::proto::Op::Ping,
    }))
    .unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    s.write_all(&bad).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open after a bad frame");
    let (_, metrics) = http_get(m.replicas[&follower].proc.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("mserv_frame_errors_total{kind=\"bad_crc\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mserv_raft_term"), "{metrics}");

    // SIGTERM drains and exits 0; the others keep serving.
    let r = m.replicas.get_mut(&follower).unwrap();
    let status = r.proc.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status:?}");
    let c = m.client();
    c.register_store(store("store-1", &[0])).await.unwrap();
    c.create_user("after@example.test", Policy::LeastLoaded)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let cfg = megamail_tests::config_text(&role_config::MservConfig {
        internal_tls: megamail_tests::support::pki::internal_tls(
            tmp.path(),
            xfs::Role::Mserv,
            "mserv-1",
        ),
        id: 1,
        listen: addr,
        data_dir: file.clone(),
        peers: vec![role_config::PeerConfig {
            id: 1,
            addr: addr.to_string(),
        }],
        admin: megamail_tests::admin_config(admin),
        ..Default::default()
    });
    let mut p = Proc::start("mserv", "mserv-bad", tmp.path(), &cfg, admin).unwrap();
    let err = p.wait_healthy(Duration::from_secs(30)).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("exited while starting"),
        "{err:#}"
    );
    let status = p.terminate(Duration::from_secs(5)).unwrap();
    assert!(!status.success(), "{status:?}");
}
