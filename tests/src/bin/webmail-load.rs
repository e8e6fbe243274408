//! Load for the webmail front doors: signed-in users requesting their Inbox page as fast as
//! they can.
//!
//!   webmail-load setup --data DIR [--users 50 --messages 1000 --prefix load --password PW]
//!   webmail-load run   --data DIR [--users 50 --prefix load --password PW --secs 10]
//!
//! Both read `DIR/endpoints.json` (written by `mailctl up`). `setup` creates the users
//! `PREFIX0@DOMAIN ..` (their password set) and fills each Inbox with `--messages` messages
//! delivered straight to the user's store over XFS; it may be run again (what exists is kept).
//!
//! `run` signs every user in through the login server's `POST /api/v1/session`, spreads them
//! over the front doors (user i on front door i mod n), makes one warm-up pass over every Inbox
//! (then `--warmup-secs` of full load), reads the stores' block cache counters from their
//! `/metrics`, and then lets every user fetch `GET /folder/Inbox` (session cookie, one keep-alive
//! connection each) back to back for `--secs` seconds. Every page must be a 200 showing the
//! whole Inbox. Prints the rates and, last, one line:
//!
//!   RESULT inbox_pages_per_s=<n> p99_ms=<n> cache_misses_per_page=<x>

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use loadgen::measure::cpu_secs;
use loadgen::mix::WORDS;
use megamail_tests::support::metrics;
use megamail_tests::support::poll::Deadline;
use operator::admin::Hcu;
use operator::endpoints::Endpoints;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xfs::{Delivery, Flags, Op, Reply, Summary, Target, INBOX};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The `mailctl up` data directory (holding endpoints.json).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 50)]
    users: usize,
    #[arg(long, default_value = "load")]
    prefix: String,
    #[arg(long, default_value = "load-password-1")]
    password: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the users and fill their Inboxes.
    Setup {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Body bytes of each message.
        #[arg(long, default_value_t = 2048)]
        size: usize,
        /// Deliveries in flight at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
    /// Sign the users in and load the front doors.
    Run {
        #[command(flatten)]
        common: Common,
        /// How long the measured run lasts.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Full load before the measured run (after the warm-up pass).
        #[arg(long, default_value_t = 2.0)]
        warmup_secs: f64,
        /// The path every user requests.
        #[arg(long, default_value = "/folder/Inbox")]
        path: String,
        /// Load generator threads (1: a single-threaded runtime, leaving the cores to the HCU).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match &args.cmd {
        Cmd::Run { threads, .. } => *threads,
        Cmd::Setup { .. } => 2,
    };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()?;
    rt.block_on(async move {
        match args.cmd {
            Cmd::Setup {
                common,
                messages,
                size,
                parallel,
            } => setup(common, messages, size, parallel).await,
            Cmd::Run {
                common,
                secs,
                warmup_secs,
                path,
                ..
            } => run(common, secs, warmup_secs, &path).await,
        }
    })
}

fn endpoints(data: &std::path::Path) -> anyhow::Result<Endpoints> {
    Endpoints::load(&data.join("endpoints.json"))
}

fn user_name(c: &Common, e: &Endpoints, i: usize) -> String {
    let domain = e
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or("megamail.test");
    format!("{}{i}@{domain}", c.prefix)
}

fn words(seed: u64, n: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 29;
        out.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out.join(" ")
}

/// Message `i` of `user`: a plain text mail of about `size` bytes and its index summary.
fn message(user: &str, i: usize, size: usize) -> Delivery {
    let seed = u64::from_le_bytes(
        Sha256::digest(format!("{user}/{i}"))[..8]
            .try_into()
            .unwrap(),
    );
    let sender = format!("Sender {} <sender{}@remote.test>", i % 37, i % 37);
    let subject = format!("{} #{i}", words(seed, 4));
    let text = words(seed ^ 0x5eed, 40);
    let date_ms = 1_700_000_000_000 + i as u64 * 60_000;
    let mut body = format!(
        "From: {sender}\r\nTo: {user}\r\nSubject: {subject}\r\nMessage-ID: <load-{i}-{user}>\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    )
    .into_bytes();
    while body.len() < size {
        body.extend_from_slice(words(seed.wrapping_add(body.len() as u64), 12).as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    Delivery {
        id: Sha256::digest(format!("webmail-load/{user}/{i}")).into(),
        folder: None,
        internal_date_ms: date_ms,
        flags: if i.is_multiple_of(3) {
            Flags::SEEN
        } else {
            Flags::NONE
        },
        summary: Summary {
            from: sender,
            to: user.to_string(),
            subject,
            date: "Tue, 14 Nov 2023 22:13:20 +0000".into(),
            preview: text.chars().take(120).collect(),
            attachments: Vec::new(),
        },
        body: body.into(),
    }
}

async fn setup(c: Common, messages: usize, size: usize, parallel: usize) -> anyhow::Result<()> {
    let e = endpoints(&c.data)?;
    let hcu = Arc::new(Hcu::new(e.clone())?);
    let started = Instant::now();
    let mut targets = Vec::new();
    for i in 0..c.users {
        let user = user_name(&c, &e, i);
        match hcu
            .add_user(&user, &c.password, "", mserv::Policy::LeastLoaded, 0)
            .await
        {
            Ok(_) => {}
            Err(err) if err.to_string().contains("already exists") => {}
            Err(err) => return Err(err.context(format!("adding {user}"))),
        }
        let p = hcu.mserv.lookup_uncached(&user).await?;
        let addr = hcu.store_addr(&p.store).await?;
        targets.push((user.clone(), addr, Target::new(&user, p.segment, p.epoch)));
    }
    println!(
        "{} users ready in {:.1} s",
        c.users,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut have = Vec::new();
    for (user, addr, target) in &targets {
        let pool = hcu.xfs.pool(addr);
        let op = Op::ListFolder {
            target: target.clone(),
            folder: INBOX.into(),
            offset: 0,
            limit: 0,
            before_uid: None,
        };
        let total = match pool.call(op).await? {
            Reply::Page(p) => p.folder.total as usize,
            other => bail!("list_folder answered {other:?}"),
        };
        have.push(total);
        for i in total..messages {
            let permit = sem.clone().acquire_owned().await?;
            let (pool, target, user) = (pool.clone(), target.clone(), user.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let op = Op::Deliver {
                    target,
                    delivery: message(&user, i, size),
                };
                pool.call(op)
                    .await
                    .with_context(|| format!("delivering {i} to {user}"))
            });
            while let Some(r) = tasks.try_join_next() {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let delivered: usize = have.iter().map(|h| messages.saturating_sub(*h)).sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "delivered {delivered} messages in {secs:.1} s ({:.0}/s); every Inbox holds {messages}",
        delivered as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// A signed-in user: its session token and the front door it loads.
struct Signed {
    user: String,
    token: String,
    door: SocketAddr,
}

async fn sign_in(c: &Common, e: &Endpoints) -> anyhow::Result<Vec<Signed>> {
    let login = e
        .login_url
        .as_deref()
        .context("the HCU runs no login server")?;
    let doors = e
        .frontdoor_urls
        .iter()
        .map(|u| Ok(mailctl::http::split_url(u)?.0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if doors.is_empty() {
        bail!("the HCU runs no front door");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut out = Vec::new();
    let mut picked = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..c.users {
        let user = user_name(c, e, i);
        let r = http
            .post(format!("{}/api/v1/session", login.trim_end_matches('/')))
            .json(&json!({"user": user, "password": c.password}))
            .send()
            .await
            .with_context(|| format!("signing in {user}"))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        if status != 200 {
            bail!("signing in {user}: {status} {body}");
        }
        let token = body["token"]
            .as_str()
            .context("no token in the session answer")?
            .to_string();
        if let Some(fd) = body["front_door"].as_str() {
            *picked
                .entry(fd.trim_end_matches('/').to_string())
                .or_default() += 1;
        }
        out.push(Signed {
            user,
            token,
            door: doors[i % doors.len()],
        });
    }
    println!(
        "signed in {} users (login chose {picked:?}); loading {} front doors evenly",
        out.len(),
        doors.len()
    );
    Ok(out)
}

/// One keep-alive HTTP/1.1 connection asking for the same page again and again.
struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(s: &Signed, path: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(s.door)
            .await
            .with_context(|| format!("connecting to {}", s.door))?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: mm_session={}\r\nAccept: text/html\r\n\r\n",
            s.door, s.token
        )
        .into_bytes();
        Ok(Conn {
            stream,
            request,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// One request; the status and the body.
    async fn get(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("a non-UTF-8 head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        let body = if chunked {
            self.chunked(head_end).await?
        } else {
            let n = length.context("neither Content-Length nor chunked")?;
            while self.buf.len() < head_end + n {
                self.fill().await?;
            }
            self.buf[head_end..head_end + n].to_vec()
        };
        Ok((status, body))
    }

    async fn chunked(&mut self, mut at: usize) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf[at..], b"\r\n") {
                    break at + p;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("a bad chunk size")?;
            at = line_end + 2;
            while self.buf.len() < at + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[at..at + size]);
            at += size + 2;
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 32 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the front door closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What one user's loop saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// Request `path` over `conn` until `stop`; a page must be a 200 naming the whole Inbox.
async fn hammer(
    s: Arc<Signed>,
    mut conn: Conn,
    path: String,
    expect: String,
    stop: Arc<AtomicBool>,
) -> (Conn, Tally) {
    let mut t = Tally {
        latencies_us: Vec::with_capacity(8192),
        ..Default::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = conn.get().await;
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let problem = match &r {
            Ok((200, body)) if find(body, expect.as_bytes()).is_some() => None,
            Ok((200, _)) => Some(format!("{}: the page does not show {expect:?}", s.user)),
            Ok((status, body)) => Some(format!(
                "{}: {status} {}",
                s.user,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(e) => Some(format!("{}: {e:#}", s.user)),
        };
        match problem {
            None => t.latencies_us.push(us),
            Some(p) => {
                t.errors += 1;
                t.first_error.get_or_insert(p);
                if r.is_err() {
                    // A broken connection: open another (and give up on this user if we cannot).
                    match Conn::open(&s, &path).await {
                        Ok(c) => conn = c,
                        Err(_) => break,
                    }
                }
            }
        }
    }
    (conn, t)
}

/// Sum of one sample over the stores' `/metrics`.
async fn store_metric(e: &Endpoints, name: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    let mut found = 0;
    for p in e.processes.iter().filter(|p| p.role == "ustore") {
        let text = metrics::scrape(p.admin)
            .await
            .with_context(|| format!("scraping {}", p.name))?;
        if let Some(v) = metrics::sample(&text, name) {
            total += v;
            found += 1;
        }
    }
    if found == 0 {
        bail!("no store exports {name}");
    }
    Ok(total)
}

/// CPU seconds (user + system) used so far by each HCU process and by this one.
async fn cpu_times(e: &Endpoints) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for row in mailctl::status::collect(e).await {
        let (Some(name), Some(pid)) = (row["name"].as_str(), row["pid"].as_u64()) else {
            continue;
        };
        if let Some(t) = cpu_secs(&pid.to_string()) {
            out.push((name.to_string(), t));
        }
    }
    if let Some(t) = cpu_secs("self") {
        out.push(("webmail-load".to_string(), t));
    }
    out
}

async fn load(
    users: &[Arc<Signed>],
    conns: Vec<Conn>,
    path: &str,
    expect: &str,
    secs: f64,
) -> anyhow::Result<(Vec<Conn>, Vec<Tally>, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, (s, c)) in users.iter().zip(conns).enumerate() {
        let (s, path, expect, stop) = (
            s.clone(),
            path.to_string(),
            expect.to_string(),
            stop.clone(),
        );
        tasks.spawn(async move { (i, hammer(s, c, path, expect, stop).await) });
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut out: Vec<Option<(Conn, Tally)>> = (0..users.len()).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, ct) = r?;
        out[i] = Some(ct);
    }
    let elapsed = started.elapsed();
    let (conns, tallies) = out.into_iter().map(|o| o.expect("every user ran")).unzip();
    Ok((conns, tallies, elapsed))
}

async fn run(c: Common, secs: f64, warmup_secs: f64, path: &str) -> anyhow::Result<()> {
    let e = endpoints(&c.data)?;
    let users: Vec<Arc<Signed>> = sign_in(&c, &e).await?.into_iter().map(Arc::new).collect();

    // The warm-up pass: every user's page once, checked.
    let mut conns = Vec::new();
    let mut expect = String::new();
    let started = Instant::now();
    for s in &users {
        let mut conn = Conn::open(s, path).await?;
        // A front door may still be reconnecting to a store that was just restarted.
        let deadline = Deadline::after(Duration::from_secs(60), Duration::from_millis(100));
        let body = loop {
            let (status, body) = conn.get().await?;
            if status == 200 {
                break body;
            }
            if !deadline.pause().await {
                let text = String::from_utf8_lossy(&body);
                bail!("{}: {path} answered {status}: {text}", s.user);
            }
        };
        let text = String::from_utf8_lossy(&body);
        let count = text
            .split("<p class=\"sub\">")
            .nth(1)
            .and_then(|t| t.split(" messages").next())
            .with_context(|| format!("{}: {path} shows no message count:\n{text}", s.user))?
            .to_string();
        if expect.is_empty() {
            expect = format!("<p class=\"sub\">{count} messages");
            println!(
                "warm-up: {path} is {} bytes, showing {count} messages",
                body.len()
            );
        } else if !text.contains(&expect) {
            bail!(
                "{}: {path} shows {count} messages, not as the first user",
                s.user
            );
        }
        conns.push(conn);
    }
    println!(
        "warm-up pass over {} users in {:.2} s",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    if warmup_secs > 0.0 {
        let (c2, tallies, took) = load(&users, conns, path, &expect, warmup_secs).await?;
        conns = c2;
        let pages: usize = tallies.iter().map(|t| t.latencies_us.len()).sum();
        println!(
            "warm-up load: {pages} pages in {:.1} s ({:.0}/s)",
            took.as_secs_f64(),
            pages as f64 / took.as_secs_f64()
        );
    }

    let misses_before = store_metric(&e, "ustore_block_cache_misses_total").await?;
    let hits_before = store_metric(&e, "ustore_block_cache_hits_total").await?;
    let cpu_before = cpu_times(&e).await;
    let (_conns, tallies, took) = load(&users, conns, path, &expect, secs).await?;
    let cpu_after = cpu_times(&e).await;
    let misses = store_metric(&e, "ustore_block_cache_misses_total").await? - misses_before;
    let hits = store_metric(&e, "ustore_block_cache_hits_total").await? - hits_before;

    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut lat: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pages = lat.len();
    let per_user: Vec<usize> = tallies.iter().map(|t| t.latencies_us.len()).collect();
    let pct = |p: f64| metrics::percentile(&lat, p).map_or(f64::NAN, |us| us as f64 / 1000.0);
    let rate = pages as f64 / took.as_secs_f64();
    let per_page = |n: f64| {
        if pages > 0 {
            n / pages as f64
        } else {
            f64::NAN
        }
    };
    println!(
        "{} users, {pages} pages in {:.2} s: {rate:.0} pages/s; latency ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        users.len(),
        took.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "pages per user: min={} max={}; errors={errors}",
        per_user.iter().min().copied().unwrap_or(0),
        per_user.iter().max().copied().unwrap_or(0)
    );
    println!(
        "store block cache during the run: {misses:.0} misses, {hits:.0} hits ({:.3} misses and {:.1} hits per page)",
        per_page(misses),
        per_page(hits)
    );
    let mut busy: Vec<(String, f64)> = cpu_after
        .iter()
        .filter_map(|(name, after)| {
            let before = cpu_before.iter().find(|(n, _)| n == name)?.1;
            Some((name.clone(), (after - before) / took.as_secs_f64()))
        })
        .filter(|(_, cores)| *cores >= 0.005)
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = busy.iter().map(|(_, c)| c).sum();
    println!(
        "CPU during the run, in cores: {} (total {total:.2})",
        busy.iter()
            .map(|(n, c)| format!("{n}={c:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(first) = tallies.iter().find_map(|t| t.first_error.as_ref()) {
        println!("first error: {first}");
    }
    println!(
        "RESULT inbox_pages_per_s={rate:.0} p99_ms={:.1} cache_misses_per_page={:.3}",
        pct(0.99),
        per_page(misses)
    );
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
