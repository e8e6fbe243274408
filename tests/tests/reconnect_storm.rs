//! Reconnect storms: 500 independent XFS clients hold live connections to one store; the store
//! is killed with SIGKILL and started again on the same port and data. Their reconnects must be
//! spread over the clients' backoff windows, not land on the restarted store all at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use megamail_tests::support::eventually;
use megamail_tests::support::metrics::metric;
use megamail_tests::{hcu::raise_fd_limit, Ustore, UstoreOpts};
use xfs::{ClientConfig, Op, Reply, StorePool};

const CLIENTS: usize = 500;
/// Each client pings about this often.
const PING_EVERY: Duration = Duration::from_millis(200);
/// Reconnect histogram bucket.
const BUCKET: Duration = Duration::from_millis(100);
/// How long the store stays dead before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// All clients must be back within this long after the restart.
const ALL_BACK_WITHIN: Duration = Duration::from_secs(30);

/// What every client task shares with the test.
struct Shared {
    /// Set once the store has been killed: from then on a successful ping is a reconnect.
    killed: AtomicBool,
    stop: AtomicBool,
    /// Clients that had a successful ping before the kill.
    connected: AtomicUsize,
    /// Per client, the first successful ping after the kill.
    back_at: Mutex<Vec<Option<Instant>>>,
}

async fn client(i: usize, pool: StorePool, shared: Arc<Shared>) {
    // Start the clients out of step, as real callers are.
    tokio::time::sleep(PING_EVERY.mul_f64(i as f64 / CLIENTS as f64)).await;
    let mut was_connected = false;
    // Saw the store gone (a failed call after the kill): the next answer is a reconnect.
    let mut saw_down = false;
    let mut back = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let killed = shared.killed.load(Ordering::SeqCst);
        let answer = pool.call_with(Op::Ping, "", Duration::from_secs(2)).await;
        if matches!(answer, Ok(Reply::Pong)) {
            if !killed && !was_connected {
                was_connected = true;
                shared.connected.fetch_add(1, Ordering::SeqCst);
            }
            if saw_down && !back {
                back = true;
                let now = Instant::now();
                shared.back_at.lock().expect("lock")[i] = Some(now);
            }
        } else if killed {
            saw_down = true;
        }
        tokio::time::sleep(PING_EVERY).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_store_sees_reconnects_spread_out() {
    raise_fd_limit();
    let mut store = Ustore::start(UstoreOpts {
        name: "storm".into(),
        segments: 1,
        max_in_flight: 4096,
        ..Default::default()
    })
    .await
    .expect("store starts");

    let shared = Arc::new(Shared {
        killed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        connected: AtomicUsize::new(0),
        back_at: Mutex::new(vec![None; CLIENTS]),
    });
    // The library's default reconnect policy, one connection per client.
    let cfg = Arc::new(ClientConfig {
        identity: megamail_tests::support::pki::operator(),
        conns_per_store: 1,
        ..Default::default()
    });
    let defaults = ClientConfig::default();
    println!(
        "{CLIENTS} clients, backoff base {:?} cap {:?}, ping every {PING_EVERY:?}",
        defaults.backoff_base, defaults.backoff_cap
    );
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let pool = StorePool::new(store.addr.to_string(), Arc::clone(&cfg));
            tokio::spawn(client(i, pool, Arc::clone(&shared)))
        })
        .collect();

    // Every client holds a live connection.
    let connected = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            match shared.connected.load(Ordering::SeqCst) {
                CLIENTS => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    if let Err(n) = connected {
        panic!("only {n} of {CLIENTS} clients connected");
    }
    // Let them settle into their ping rhythm.
    tokio::time::sleep(Duration::from_secs(1)).await;

    shared.killed.store(true, Ordering::SeqCst);
    store.proc.kill9();
    // Down for two seconds, about what a supervisor's restart after a crash takes: long enough
    // that every client has failed and backed off more than once.
    tokio::time::sleep(DOWN_FOR).await;
    let restarted = Instant::now();
    store.proc.restart().await.expect("store restarts");
    let ready = restarted.elapsed();

    let wait = ALL_BACK_WITHIN.saturating_sub(restarted.elapsed());
    // Missing clients are counted and reported below.
    let _ = eventually(wait, Duration::from_millis(100), || async {
        let back_at = shared.back_at.lock().expect("lock");
        match back_at.iter().filter(|t| t.is_some()).count() {
            CLIENTS => Ok(()),
            back => Err(back),
        }
    })
    .await;
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client task");
    }

    let back_at = shared.back_at.lock().expect("lock").clone();
    let missing = back_at.iter().filter(|t| t.is_none()).count();
    let offsets: Vec<Duration> = back_at
        .iter()
        .flatten()
        .map(|t| t.saturating_duration_since(restarted))
        .collect();
    let last = offsets.iter().max().copied().unwrap_or_default();
    let buckets = (last.as_millis() / BUCKET.as_millis()) as usize + 1;
    let mut histogram = vec![0usize; buckets];
    for o in &offsets {
        histogram[(o.as_millis() / BUCKET.as_millis()) as usize] += 1;
    }
    println!("store healthy again {ready:?} after the restart began");
    println!("reconnects per {BUCKET:?} from the restart:");
    for (i, n) in histogram.iter().enumerate() {
        if *n > 0 {
            let from = i as u128 * BUCKET.as_millis();
            println!(
                "  {:>6}..{:<6} ms {:>4} {}",
                from,
                from + BUCKET.as_millis(),
                n,
                "#".repeat(n.div_ceil(5))
            );
        }
    }
    let closed = metric(
        store.proc.admin,
        "ustore_connections_total{outcome=\"closed_at_start\"}",
    )
    .await
    .unwrap_or(0.0);
    println!("connections queued while the store was opening, closed: {closed}");
    let peak = histogram.iter().max().copied().unwrap_or(0);
    println!(
        "all back after {last:?}; busiest interval holds {peak} of {} ({:.1}%)",
        offsets.len(),
        100.0 * peak as f64 / CLIENTS as f64
    );

    assert_eq!(
        missing, 0,
        "{missing} of {CLIENTS} clients not back within {ALL_BACK_WITHIN:?}"
    );
    assert!(
        peak * 4 <= CLIENTS,
        "one {BUCKET:?} interval holds {peak} of {CLIENTS} reconnects (more than a quarter)"
    );
    // The store took them all and still answers.
    assert!(store.proc.is_running());
    let pool = store.pool();
    pool.call(Op::Ping)
        .await
        .expect("the store answers after the storm");
}
