//! ustore-bench: durable deliveries per second against a running store, with realistic text mail.
//!
//! `ustore-bench --addr 127.0.0.1:7100 --clients 1,16,64 --seconds 10 --size 10240`
//! creates `--users` mailboxes, then for each client count delivers for the given time and prints
//! one line per run with deliveries/s, latency percentiles and WAL fsyncs per delivery.
//! Its last line is `TOTAL mail_bytes=<n> deliveries=<n>` for the caller's disk accounting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;
use xfs::{ClientConfig, Delivery, Flags, NewAccount, Op, Reply, StorePool, Summary, Target};

#[derive(Parser, Debug)]
struct Args {
    /// Call as the operator certificate `NAME.pem` in this directory (`mailctl certs issue
    /// --role operator`); without it, plaintext.
    #[arg(long, value_name = "DIR")]
    certs: Option<std::path::PathBuf>,
    /// The store's XFS address (loopback).
    #[arg(long, default_value = "127.0.0.1:7100")]
    addr: String,
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Approximate message size in bytes.
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Mailboxes the deliveries are spread over.
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Segments of the store (users are spread over them).
    #[arg(long, default_value_t = 2)]
    segments: u32,
}

/// Common English words: mail text made of them compresses like real mail, not like noise.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
    "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
    "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do",
    "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would",
    "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look",
    "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my",
    "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now",
    "find", "meeting", "project", "report", "schedule", "budget", "review", "team", "customer",
    "please", "thanks", "regards", "attached", "update", "deadline", "quarter", "release",
    "server", "invoice", "contract", "tomorrow", "monday", "friday", "office", "agenda", "notes",
    "question", "answer", "proposal", "draft", "final", "version", "changes", "feedback",
];

fn text_mail(rng: &mut impl rand::Rng, n: u64, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Received: from mx{a}.sender.test (mx{a}.sender.test [127.0.0.{a}])\r\n\
         \tby mail.example.test with ESMTPS id {n:x}\r\n\
         \tfor <user@example.test>; Sun, 22 Nov 2026 10:{b:02}:00 +0000\r\n\
         Message-ID: <{n:x}.{c:x}@sender.test>\r\n\
         Date: Sun, 22 Nov 2026 10:{b:02}:00 +0000\r\n\
         From: \"Sender {a}\" <sender{a}@sender.test>\r\n\
         To: <user@example.test>\r\n\
         Subject: Re: {w1} {w2} {w3}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n",
        a = rng.random_range(1..200),
        b = rng.random_range(0..60),
        c = rng.random::<u64>(),
        w1 = WORDS[rng.random_range(0..WORDS.len())],
        w2 = WORDS[rng.random_range(0..WORDS.len())],
        w3 = WORDS[rng.random_range(0..WORDS.len())],
    );
    let mut line = 0;
    while m.len() < size {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        m.push_str(w);
        line += w.len() + 1;
        if line > 70 {
            m.push_str(".\r\n");
            line = 0;
            if rng.random_range(0..6) == 0 {
                m.push_str("\r\n");
            }
        } else {
            m.push(' ');
        }
    }
    m.into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn store_counters(pool: &StorePool) -> (u64, u64) {
    match pool.call(Op::StoreStats).await {
        Ok(Reply::StoreStats(s)) => (s.sync_writes, s.wal_syncs),
        _ => (0, 0),
    }
}

fn target(i: usize, segments: u32) -> Target {
    Target::new(format!("bench{i}@example.test"), (i as u32) % segments, 1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = Arc::new(StorePool::new(
        args.addr.clone(),
        Arc::new(ClientConfig {
            identity: xfs::Identity::operator(args.certs.as_deref(), "bench")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            conns_per_store: 4,
            ..Default::default()
        }),
    ));
    for i in 0..args.users {
        let r = pool
            .call(Op::CreateAccount {
                target: target(i, args.segments),
                account: NewAccount {
                    password_hash: "bench".into(),
                    display_name: format!("Bench {i}"),
                    quota_bytes: 0,
                },
            })
            .await;
        match r {
            Ok(_) => {}
            Err(e) if matches!(e.remote(), Some(xfs::XfsError::AlreadyExists { .. })) => {}
            Err(e) => anyhow::bail!("creating bench users: {e}"),
        }
    }
    let mail_bytes = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    for &clients in &args.clients {
        let (w0, s0) = store_counters(&pool).await;
        let stop = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (pool, stop, lat, count) = (pool.clone(), stop.clone(), lat.clone(), count.clone());
            let (mail_bytes, delivered, seq) = (mail_bytes.clone(), delivered.clone(), seq.clone());
            let (size, users, segments) = (args.size, args.users, args.segments);
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let body = text_mail(&mut rng, n, size);
                    let len = body.len() as u64;
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&n.to_be_bytes());
                    id[8..16].copy_from_slice(&rand::random::<u64>().to_be_bytes());
                    let op = Op::Deliver {
                        target: target(rand::random_range(0..users), segments),
                        delivery: Delivery {
                            id,
                            folder: None,
                            internal_date_ms: 0,
                            flags: Flags::NONE,
                            summary: Summary {
                                subject: "bench".into(),
                                ..Default::default()
                            },
                            body: body.into(),
                        },
                    };
                    let t = Instant::now();
                    match pool.call(op).await {
                        Ok(_) => {
                            mine.push(t.elapsed());
                            count.fetch_add(1, Ordering::Relaxed);
                            delivered.fetch_add(1, Ordering::Relaxed);
                            mail_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("delivery failed: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let (w1, s1) = store_counters(&pool).await;
        let n = count.load(Ordering::Relaxed);
        let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        l.sort();
        println!(
            "clients={clients} deliveries={n} deliveries_per_s={:.0} p50_ms={:.2} p99_ms={:.2} \
             sync_writes={} wal_fsyncs={} fsyncs_per_delivery={:.3}",
            n as f64 / secs,
            percentile(&l, 0.5).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3,
            w1 - w0,
            s1 - s0,
            (s1 - s0) as f64 / n.max(1) as f64,
        );
    }
    println!(
        "TOTAL mail_bytes={} deliveries={}",
        mail_bytes.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed)
    );
    Ok(())
}
