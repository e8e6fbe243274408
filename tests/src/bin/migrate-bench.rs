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
use megamail_tests::support::mail::{delivery, message_id, padded, smtp_load};
use megamail_tests::support::metrics::percentile;
use megamail_tests::support::Mailbox;
use operator::admin::Hcu;
use operator::endpoints::Endpoints;
use xfs::{ops, Target, INBOX};

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

/// A message of `size` bytes with a unique Message-ID.
fn body(tag: &str, size: usize) -> Vec<u8> {
    let headers =
        format!("From: load@remote.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@remote.test>\r\n");
    padded(&headers, size)
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
                let op = ops::Deliver {
                    target: Target::new(&u, p.segment, p.epoch),
                    delivery: delivery(&tag, &tag, body(&tag, msg)),
                };
                pool.run(op).await?;
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
        let mailbox = Mailbox::of(&hcu, &user(i)).await?;
        let op = ops::GetAccount {
            target: mailbox.target.clone(),
        };
        total_bytes += mailbox.run(op).await?.used_bytes;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let names = (0..users).map(user).collect();
    let load = tokio::spawn(smtp_load(smtp, names, every, stop.clone()));
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
    let pct = |p: f64| percentile(&freezes, p).unwrap_or(0.0);

    // Every accepted message there, none twice.
    let (mut lost, mut duplicated, mut stored) = (0usize, 0usize, 0usize);
    for i in 0..users {
        let u = user(i);
        let mailbox = Mailbox::of(&hcu, &u).await?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (_, body) in mailbox.messages(INBOX).await? {
            *seen
                .entry(message_id(&body).unwrap_or_default())
                .or_default() += 1;
            stored += 1;
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
        if mailbox.store == "store-1" {
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
    let hcu = Arc::new(Hcu::new(endpoints)?);
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
