//! mserv-bench: the member index under load, against running replicas.
//!
//! `mserv-bench --addrs A,B,C --pids 1=PID,2=PID,3=PID --seconds 5`
//! registers stores, creates `--users` users, then measures in turn: lookups per second from one
//! replica through the client without cache (`--concurrency` callers pipelining on a few
//! connections), the same through the cache, placement creations per second (each its own
//! replicated write), and the time from kill -9 of the leader (found through stats, killed by
//! pid) to the first write accepted. Its last line is
//! `RESULT lookups_per_s=<n> cached_lookups_per_s=<n> creates_per_s=<n> failover_ms=<n>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use mserv::{Client, ClientConfig, Policy, StoreInfo, StoreState};

#[derive(Parser, Debug)]
struct Args {
    /// Call as the operator certificate `bench.pem` in this directory (`mailctl certs issue
    /// --role operator --name bench`); without it, plaintext.
    #[arg(long, value_name = "DIR")]
    certs: Option<std::path::PathBuf>,
    /// Every replica's address.
    #[arg(long, value_delimiter = ',', required = true)]
    addrs: Vec<String>,
    /// `id=pid` of every replica, to kill the leader; without it the failover is not measured.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent callers for lookups.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Concurrent callers for creations.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Users created before the lookups (in batches).
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Connections from the client to each replica.
    #[arg(long, default_value_t = 4)]
    conns: usize,
}

fn user(i: u64) -> String {
    format!("bench{i}@example.test")
}

fn client(identity: &xfs::Identity, addrs: Vec<String>, conns: usize, cache: bool) -> Arc<Client> {
    Arc::new(Client::new(
        addrs,
        ClientConfig {
            identity: identity.clone(),
            conns_per_replica: conns,
            cache_ttl: if cache {
                Duration::from_secs(600)
            } else {
                Duration::ZERO
            },
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Run `op(i)` from `callers` tasks for `secs` seconds; returns operations per second and prints
/// latency percentiles (every 16th operation sampled).
async fn run_for<F, Fut>(name: &str, callers: usize, secs: u64, op: F) -> anyhow::Result<u64>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (op, stop, count, samples, seq) = (
            op.clone(),
            stop.clone(),
            count.clone(),
            samples.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                op(i).await?;
                if i % 16 == 0 {
                    local.push(t.elapsed());
                }
                count.fetch_add(1, Ordering::Relaxed);
                if i % 32 == 0 {
                    // A cache hit never waits: let the timer and the other callers run.
                    tokio::task::yield_now().await;
                }
            }
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(local);
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    let rate = (n as f64 / elapsed) as u64;
    let mut lat = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    println!(
        "{name}: {rate}/s ({n} in {elapsed:.1}s, {callers} callers) p50={:?} p99={:?} max={:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    Ok(rate)
}

async fn leader(identity: &xfs::Identity, addrs: &[String]) -> Option<(u64, String)> {
    for a in addrs {
        let c = client(identity, vec![a.clone()], 1, false);
        if let Ok(s) = c.stats().await {
            if s.raft.role == "leader" {
                return Some((s.raft.id, a.clone()));
            }
        }
    }
    None
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = xfs::Identity::operator(args.certs.as_deref(), "bench")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let all = client(&identity, args.addrs.clone(), args.conns, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(&identity, &args.addrs).await.is_none() {
        if Instant::now() > deadline {
            bail!("no leader among {:?}", args.addrs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in 1..=4 {
        all.register_store(StoreInfo {
            name: format!("store-{s}"),
            xfs_addr: format!("127.0.0.1:{}", 7100 + s),
            cluster: "hcu-1".into(),
            segments: vec![0, 1, 2, 3],
            state: StoreState::Active,
        })
        .await?;
    }
    all.register_cluster("hcu-1", vec!["http://127.0.0.1:8080".into()])
        .await?;

    let started = Instant::now();
    let users = args.users as u64;
    let mut next = 0;
    while next < users {
        let end = (next + 1000).min(users);
        all.create_users((next..end).map(user).collect()).await?;
        next = end;
    }
    println!(
        "setup: {users} users in {:.1}s (batches of 1000)",
        started.elapsed().as_secs_f64()
    );

    // Lookups from one replica (a follower when there is one: the leader also replicates).
    let lead = leader(&identity, &args.addrs).await.map(|(_, a)| a);
    let one = args
        .addrs
        .iter()
        .find(|a| Some(*a) != lead.as_ref())
        .unwrap_or(&args.addrs[0])
        .clone();
    let c = client(&identity, vec![one.clone()], args.conns, false);
    let lookups = run_for(
        "lookups (uncached)",
        args.concurrency,
        args.seconds,
        move |i| {
            let c = c.clone();
            async move {
                c.lookup_uncached(&user((i * 7919) % users)).await?;
                Ok(())
            }
        },
    )
    .await?;

    let c = client(&identity, vec![one.clone()], args.conns, true);
    for i in 0..users.min(10_000) {
        c.lookup(&user(i)).await?;
    }
    let hot = users.min(10_000);
    let cached = run_for(
        "lookups (cached)",
        args.concurrency,
        args.seconds,
        move |i| {
            let c = c.clone();
            async move {
                c.lookup(&user((i * 7919) % hot)).await?;
                Ok(())
            }
        },
    )
    .await?;

    let c = all.clone();
    let creates = run_for("creates", args.create_concurrency, args.seconds, move |i| {
        let c = c.clone();
        async move {
            c.create_user(&format!("new{i}@example.test"), Policy::LeastLoaded)
                .await?;
            Ok(())
        }
    })
    .await?;
    let s = all.stats().await?;
    println!("index: {} users, raft {:?}", s.users, s.raft);

    let pids: BTreeMap<u64, String> = args
        .pids
        .iter()
        .filter_map(|p| {
            p.split_once('=')
                .and_then(|(id, pid)| Some((id.parse().ok()?, pid.to_string())))
        })
        .collect();
    let mut failover_ms = 0;
    if !pids.is_empty() {
        let (id, _) = leader(&identity, &args.addrs)
            .await
            .context("no leader to kill")?;
        let pid = pids
            .get(&id)
            .with_context(|| format!("no pid for replica {id}"))?;
        let status = std::process::Command::new("kill")
            .args(["-9", pid])
            .status()?;
        let killed = Instant::now();
        if !status.success() {
            bail!("kill -9 {pid} failed");
        }
        let mut n = 0;
        loop {
            n += 1;
            match all
                .create_user(&format!("failover{n}@example.test"), Policy::LeastLoaded)
                .await
            {
                Ok(_) => break,
                Err(e) if killed.elapsed() < Duration::from_secs(60) => {
                    eprintln!("write refused during failover: {e}");
                }
                Err(e) => bail!("no write accepted within 60s of the kill: {e}"),
            }
        }
        failover_ms = killed.elapsed().as_millis();
        println!("failover: leader {id} killed, first write accepted after {failover_ms} ms ({n} attempts)");
    }
    println!(
        "RESULT lookups_per_s={lookups} cached_lookups_per_s={cached} creates_per_s={creates} failover_ms={failover_ms}"
    );
    Ok(())
}
