//! The load side of `bench/migrate.sh`, against an HCU run by `mailctl up`:
//!
//! - `setup`: users `bench000..` on store-1 (half on each segment), each mailbox filled straight
//!   through XFS to the given size with text mail (each message with a unique Message-ID);
//! - `run`: a steady SMTP load to every user while `mailctl migrate --from store-1 --all` runs,
//!   then every mailbox checked: each message accepted with `250` during the run is there, and no
//!   Message-ID is stored twice. Prints the figures and the `RESULT` line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use operator::admin::Hcu;
use operator::endpoints::Endpoints;
use sha2::{Digest, Sha256};
use xfs::{Delivery, Flags, Op, Reply, Summary, Target};

#[derive(Parser)]
struct Args {
    /// The HCU's data directory (its endpoints.json).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Setup {
        /// Bytes of mail per mailbox.
        #[arg(long, default_value_t = 5_500_000)]
        bytes_per_user: usize,
        /// Size of each message.
        #[arg(long, default_value_t = 100_000)]
        message_bytes: usize,
    },
    Run {
        /// The mailctl binary.
        #[arg(long)]
        mailctl: PathBuf,
        #[arg(long, default_value_t = 4)]
        parallel: u32,
        /// SMTP messages per second during the run.
        #[arg(long, default_value_t = 50)]
        smtp_rate: u32,
    },
}

fn user(i: usize) -> String {
    format!("bench{i:03}@megamail.test")
}

fn body(tag: &str, size: usize) -> Vec<u8> {
    let mut b = format!(
        "From: load@remote.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@remote.test>\r\n\r\n"
    )
    .into_bytes();
    let words = [
        "mailbox", "store", "segment", "epoch", "freeze", "delta", "index", "the", "a", "of",
        "moves",
    ];
    let mut k = tag.len();
    while b.len() < size {
        for _ in 0..12 {
            b.extend_from_slice(words[k % words.len()].as_bytes());
            b.push(b' ');
            k = k.wrapping_mul(31).wrapping_add(7);
        }
        b.extend_from_slice(b"\r\n");
    }
    b
}

fn message_id(raw: &[u8]) -> String {
    let head = String::from_utf8_lossy(&raw[..raw.len().min(4096)]);
    head.lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID: ")
                .or_else(|| l.strip_prefix("Message-Id: "))
        })
        .unwrap_or("")
        .trim()
        .to_string()
}

async fn setup(hcu: Arc<Hcu>, users: usize, bytes: usize, msg: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..users {
        let (hcu, sem) = (hcu.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire().await?;
            let u = user(i);
            let policy = mserv::Policy::Explicit {
                store: "store-1".into(),
                segment: (i % 2) as u32,
            };
            let p = hcu.add_user(&u, "pw", "", policy, 0).await?;
            let pool = hcu.xfs.pool(&hcu.store_addr(&p.store).await?);
            for m in 0..bytes.div_ceil(msg) {
                let tag = format!("pre-{i}-{m}");
                let op = Op::Deliver {
                    target: Target::new(&u, p.segment, p.epoch),
                    delivery: Delivery {
                        id: Sha256::digest(tag.as_bytes()).into(),
                        folder: None,
                        internal_date_ms: 1_700_000_000_000,
                        flags: Flags::NONE,
                        summary: Summary {
                            subject: tag.clone(),
                            ..Default::default()
                        },
                        body: body(&tag, msg),
                    },
                };
                pool.call(op).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!(
        "setup: {users} mailboxes of {:.1} MB on store-1 in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn smtp_load(
    smtp: std::net::SocketAddr,
    users: usize,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> HashMap<String, Vec<String>> {
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut n = 0usize;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let u = user((n * 7919) % users);
        let tag = format!("load-{n}");
        let msg = Message::builder()
            .from("load@remote.test".parse().expect("address"))
            .to(u.parse().expect("address"))
            .message_id(Some(format!("<{tag}@remote.test>")))
            .subject(&tag)
            .body(format!("{tag} while the store is evacuated\n"))
            .expect("message");
        if mailer.send(msg).await.is_ok() {
            acked
                .entry(u)
                .or_default()
                .push(format!("<{tag}@remote.test>"));
        }
        next += period;
        tokio::time::sleep_until(next.into()).await;
    }
    acked
}

async fn run(
    hcu: Arc<Hcu>,
    data: PathBuf,
    users: usize,
    mailctl: PathBuf,
    parallel: u32,
    rate: u32,
) -> anyhow::Result<()> {
    let smtp = hcu.endpoints.smtp.context("no smtp-in")?;
    let mut total_bytes = 0u64;
    for i in 0..users {
        let p = hcu.mserv.lookup_uncached(&user(i)).await?;
        let pool = hcu.xfs.pool(&hcu.store_addr(&p.store).await?);
        if let Reply::Account(a) = pool
            .call(Op::GetAccount {
                target: Target::new(user(i), p.segment, p.epoch),
            })
            .await?
        {
            total_bytes += a.used_bytes;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(smtp_load(smtp, users, rate, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = Command::new(&mailctl)
        .arg("--data")
        .arg(&data)
        .args(["store", "drain", "store-1"])
        .output()?;
    if !status.status.success() {
        bail!(
            "store drain failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let started = Instant::now();
    let (mc, d) = (mailctl.clone(), data.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&mc)
            .arg("--data")
            .arg(&d)
            .args([
                "--json",
                "migrate",
                "--from",
                "store-1",
                "--all",
                "--grace",
                "0",
                "--parallel",
            ])
            .arg(parallel.to_string())
            .output()
    })
    .await??;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = load.await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut freezes = Vec::new();
    let mut failed = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {line}"))?;
        if v["ok"] != true {
            failed += 1;
            eprintln!("{line}");
        }
        if let Some(f) = v["freeze_ms"].as_f64() {
            freezes.push(f);
        }
    }
    freezes.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        freezes
            .get(((freezes.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };

    // Every accepted message there, none twice.
    let (mut lost, mut duplicated, mut stored) = (0usize, 0usize, 0usize);
    for i in 0..users {
        let u = user(i);
        let p = hcu.mserv.lookup_uncached(&u).await?;
        let pool = hcu.xfs.pool(&hcu.store_addr(&p.store).await?);
        let t = Target::new(&u, p.segment, p.epoch);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut offset = 0;
        loop {
            let Reply::Page(page) = pool
                .call(Op::ListFolder {
                    target: t.clone(),
                    folder: "Inbox".into(),
                    offset,
                    limit: 1000,
                    before_uid: None,
                })
                .await?
            else {
                bail!("unexpected answer");
            };
            if page.entries.is_empty() {
                break;
            }
            offset += page.entries.len() as u32;
            for e in page.entries {
                let Reply::Message(m) = pool
                    .call(Op::Fetch {
                        target: t.clone(),
                        msg: e.msg,
                        mark_seen: false,
                    })
                    .await?
                else {
                    bail!("unexpected answer");
                };
                *seen.entry(message_id(&m.body)).or_default() += 1;
                stored += 1;
            }
        }
        duplicated += seen
            .values()
            .filter(|n| **n > 1)
            .map(|n| n - 1)
            .sum::<usize>();
        lost += acked
            .get(&u)
            .into_iter()
            .flatten()
            .filter(|id| !seen.contains_key(*id))
            .count();
        if p.store == "store-1" {
            lost += 1;
            eprintln!("{u} is still on store-1");
        }
    }
    let secs = took.as_secs_f64();
    println!(
        "moved {} mailboxes ({:.0} MB) in {secs:.1} s with --parallel {parallel}; {} failed; {} messages accepted over SMTP meanwhile; {stored} stored in all",
        users,
        total_bytes as f64 / 1e6,
        failed,
        acked.values().map(Vec::len).sum::<usize>()
    );
    println!(
        "freeze window: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "RESULT migrate_mb_per_s={:.1} mailboxes_per_s={:.2} freeze_p99_ms={:.0} lost={lost} duplicated={duplicated}",
        total_bytes as f64 / 1e6 / secs,
        users as f64 / secs,
        pct(0.99)
    );
    if failed > 0 || lost > 0 || duplicated > 0 {
        bail!("the evacuation was not clean");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints = Endpoints::load(&args.data.join("endpoints.json"))?;
    let hcu = Arc::new(Hcu::new(endpoints));
    match args.cmd {
        Cmd::Setup {
            bytes_per_user,
            message_bytes,
        } => setup(hcu, args.users, bytes_per_user, message_bytes).await,
        Cmd::Run {
            mailctl,
            parallel,
            smtp_rate,
        } => run(hcu, args.data, args.users, mailctl, parallel, smtp_rate).await,
    }
}
