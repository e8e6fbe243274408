//! `loadgen`: drives a running HCU (from `mailctl up`) with a realistic mix — simulated users
//! signing in, listing folders, opening their Inbox and messages, sometimes sending; SMTP
//! arrivals at a set rate with realistic sizes; optionally a day/night shape — and measures what
//! each operation costs every role. It writes the capacity profile `hcu-sizing` reads.
//!
//!   loadgen --data DIR [--users 50 --sessions 20 --smtp-rate 20 --duration 30s --warmup 3s
//!           --day-night 60s --seed 1] --out capacity.toml [--json]

pub mod load;
pub mod measure;
pub mod mix;
pub mod profile;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use operator::admin::Hcu;
use operator::endpoints::Endpoints;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::load::{Ctx, OPS};
use crate::mix::SizeModel;

/// The largest message the generator sends (smtp-in's own limit may be lower).
const MAX_MESSAGE_BYTES: usize = 1_400_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Load a running HCU and write its capacity profile"
)]
pub struct Args {
    /// The `mailctl up` data directory (holding endpoints.json).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// The endpoints file, if not DATA/endpoints.json.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// Simulated users (created if missing: PREFIX0@DOMAIN ..).
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Users signed in at once (closed loop).
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// SMTP arrivals per second at the peak (open loop, Poisson).
    #[arg(long, default_value_t = 20.0)]
    pub smtp_rate: f64,
    /// The measured window (e.g. 30s, 2m, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A day/night cycle of this period: both rates follow a sine between 2/3 and 1 of the peak.
    #[arg(long, value_parser = parse_duration)]
    pub day_night: Option<Duration>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mean think time between a user's pages, in milliseconds (exponential).
    #[arg(long, default_value_t = 300.0)]
    pub think_ms: f64,
    /// Mean pages a session views before the user signs out (another signs in).
    #[arg(long, default_value_t = 20.0)]
    pub pages_per_session: f64,
    /// Share of page views that send a message.
    #[arg(long, default_value_t = 0.05)]
    pub send_fraction: f64,
    /// Messages delivered to each user through SMTP before the run.
    #[arg(long, default_value_t = 5)]
    pub seed_messages: usize,
    /// Mean message size in bytes (log-normal; larger ones carry an attachment).
    #[arg(long, default_value_t = 30_000.0)]
    pub mean_message_bytes: f64,
    #[arg(long, default_value = "lg")]
    pub prefix: String,
    #[arg(long, default_value = "loadgen-password-1")]
    pub password: String,
    /// Where the capacity profile goes.
    #[arg(long, default_value = "capacity.toml")]
    pub out: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero (after writing the profile) if any operation failed more often than this.
    #[arg(long, default_value_t = 0.05)]
    pub max_error_rate: f64,
}

/// `30s`, `2m`, `500ms`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 2m, 500ms)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 1e7 {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.users == 0 || self.sessions == 0 {
            bail!("--users and --sessions must be at least 1");
        }
        if self.duration < Duration::from_secs(1) {
            bail!("--duration must be at least 1s");
        }
        if !(self.smtp_rate.is_finite() && self.smtp_rate >= 0.0) {
            bail!("--smtp-rate must be a rate >= 0");
        }
        if !(self.think_ms.is_finite() && self.think_ms >= 0.0) {
            bail!("--think-ms must be >= 0");
        }
        if !(self.pages_per_session.is_finite() && self.pages_per_session > 0.0) {
            bail!("--pages-per-session must be > 0");
        }
        if !(0.0..=0.5).contains(&self.send_fraction) {
            bail!("--send-fraction must lie in [0, 0.5]");
        }
        if !(self.mean_message_bytes >= 1000.0 && self.mean_message_bytes <= 1e6) {
            bail!("--mean-message-bytes must lie in [1000, 1000000]");
        }
        if self.day_night.is_some_and(|d| d < Duration::from_secs(1)) {
            bail!("--day-night must be at least 1s");
        }
        Ok(())
    }
}

/// smtp-in's message size limit, from its config under DATA/conf (its default when not set).
fn smtp_limit(e: &Endpoints) -> usize {
    let path = e.data_dir.join("conf").join("smtp-in.toml");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
        .and_then(|v| v.get("max-message-bytes").and_then(|x| x.as_integer()))
        .map(|n| n.max(0) as usize)
        .unwrap_or(25 << 20)
}

/// Create the users (an existing one gets the password again).
async fn create_users(hcu: &Hcu, args: &Args) -> anyhow::Result<Vec<String>> {
    let domain = hcu
        .endpoints
        .domains
        .first()
        .context("the HCU accepts no domain")?
        .clone();
    let mut users = Vec::new();
    for i in 0..args.users {
        let user = format!("{}{i}@{domain}", args.prefix);
        match hcu
            .add_user(
                &user,
                &args.password,
                "",
                mserv_client::Policy::LeastLoaded,
                0,
            )
            .await
        {
            Ok(_) => {}
            Err(err) if err.to_string().contains("already exists") => {
                hcu.passwd(&user, &args.password)
                    .await
                    .with_context(|| format!("setting the password of {user}"))?;
            }
            Err(err) => return Err(err.context(format!("adding {user}"))),
        }
        users.push(user);
    }
    Ok(users)
}

/// Deliver `per_user` messages to every user through smtp-in, a few at a time.
async fn seed_mail(
    smtp: std::net::SocketAddr,
    users: &[String],
    per_user: usize,
    sizes: SizeModel,
    seed: u64,
) -> anyhow::Result<(usize, u64)> {
    let mailer = load::mailer(smtp);
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut bytes = 0u64;
    for round in 0..per_user {
        for user in users {
            let size = sizes.draw(&mut rng);
            let from = format!("seed{round}@remote.test");
            let body = mix::message(&mut rng, &from, user, size, &sizes);
            bytes += body.len() as u64;
            let permit = sem.clone().acquire_owned().await?;
            let (mailer, user) = (mailer.clone(), user.clone());
            tasks.spawn(async move {
                let _permit = permit;
                load::smtp_send(&mailer, &from, &user, &body)
                    .await
                    .with_context(|| format!("seeding mail to {user}"))
            });
            while let Some(r) = tasks.try_join_next() {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((per_user * users.len(), bytes))
}

fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = runtime::time::civil_date(secs / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The whole run: set up, load, measure, write the profile; the report.
pub async fn run(args: Args) -> anyhow::Result<profile::Report> {
    args.validate()?;
    let path = args
        .endpoints
        .clone()
        .unwrap_or_else(|| args.data.join("endpoints.json"));
    let e = Endpoints::load(&path)?;
    let login_url = e
        .login_url
        .clone()
        .context("the HCU runs no login server")?
        .trim_end_matches('/')
        .to_string();
    let smtp = e.smtp.context("the HCU runs no smtp-in")?;
    let hcu = Hcu::new(e.clone())?;
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };

    let t = Instant::now();
    let users = create_users(&hcu, &args).await?;
    say(format!(
        "{} users ready in {:.1} s",
        users.len(),
        t.elapsed().as_secs_f64()
    ));
    measure::flush_stores(&hcu).await?;
    let disk_before = measure::disk_bytes(&measure::store_stats(&hcu).await?);
    let stored_before = measure::stored_bytes(&hcu, &users).await?;

    let sizes = SizeModel::new(
        args.mean_message_bytes,
        smtp_limit(&e)
            .saturating_sub(64 * 1024)
            .clamp(4096, MAX_MESSAGE_BYTES),
    );
    let t = Instant::now();
    let (seeded, seeded_bytes) =
        seed_mail(smtp, &users, args.seed_messages, sizes, args.seed).await?;
    say(format!(
        "seeded {seeded} messages ({:.1} MB) through SMTP in {:.1} s",
        seeded_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    let data_dir = e.data_dir.clone();
    let fsync_per_s =
        tokio::task::spawn_blocking(move || measure::fsync_rate(&data_dir, 1.0)).await??;
    say(format!(
        "synced 4 KiB writes in the data directory: {fsync_per_s:.0}/s"
    ));

    let ctx = Arc::new(Ctx {
        users: users.clone(),
        password: args.password.clone(),
        login_url,
        smtp,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(args.sessions.max(4))
            .build()?,
        mailer: load::mailer(smtp),
        sizes,
        think_ms: args.think_ms,
        pages_per_session: args.pages_per_session,
        send_fraction: args.send_fraction,
        day_night_secs: args.day_night.map(|d| d.as_secs_f64()),
        started: Instant::now(),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Default::default()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.sessions {
        tasks.spawn(load::session_loop(ctx.clone(), i, args.seed));
    }
    tasks.spawn(load::smtp_loop(ctx.clone(), args.smtp_rate, args.seed));
    say(format!(
        "{} sessions over {} users, {} SMTP messages/s; warm-up {:.1} s, then {:.1} s measured",
        args.sessions,
        users.len(),
        args.smtp_rate,
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    ));
    tokio::time::sleep(args.warmup).await;
    let before = measure::snapshot(&hcu).await?;
    let from = ctx.started.elapsed().as_secs_f64();
    tokio::time::sleep(args.duration).await;
    let to = ctx.started.elapsed().as_secs_f64();
    let after = measure::snapshot(&hcu).await?;
    ctx.stop.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        bail!("the load did not stop within 60 s of the end of the run");
    }

    measure::flush_stores(&hcu).await?;
    let disk_after = measure::disk_bytes(&measure::store_stats(&hcu).await?);
    let stored_after = measure::stored_bytes(&hcu, &users).await?;

    let delta = measure::Delta::between(&e, &before, &after);
    let tally = std::mem::take(&mut *ctx.tally.lock().unwrap_or_else(|p| p.into_inner()));
    let ops = OPS
        .iter()
        .map(|op| {
            let samples = tally.samples.get(op).map(Vec::as_slice).unwrap_or(&[]);
            profile::op_figures(op, samples, tally.first_error.get(op), from, to)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let extra = profile::Extra {
        cores,
        source: format!(
            "loadgen {} on {cores} cores, {:.0} s",
            today(),
            args.duration.as_secs_f64()
        ),
        fsync_per_s,
        filesystem_bytes: measure::filesystem_bytes(&e.data_dir)?,
        disk_growth_bytes: disk_after as f64 - disk_before as f64,
        stored_growth_bytes: stored_after as f64 - stored_before as f64,
        mserv_replicas: e.mserv.len() as u64,
        // SAFETY: sysconf only reads a configuration value.
        cpu_tick_secs: 1.0 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64),
    };
    let report = profile::derive(ops, &delta, &extra)?;
    let text = profile::to_toml(&report);
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    Ok(report)
}

/// The binary: parse, run on a small runtime (leaving cores to the HCU), report.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = args.out.clone();
    let (json, max_error_rate) = (args.json, args.max_error_rate);
    match rt.block_on(run(args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("loadgen: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", profile::table(&report));
                println!("capacity profile written to {}", out.display());
            }
            let worst = report
                .ops
                .iter()
                .filter(|o| o.count > 0)
                .map(|o| (o.op.clone(), o.errors as f64 / o.count as f64))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match worst {
                Some((op, rate)) if rate > max_error_rate => {
                    eprintln!(
                        "loadgen: {op} failed {:.1}% of the time (more than {:.1}%)",
                        rate * 100.0,
                        max_error_rate * 100.0
                    );
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3s").is_err());
    }

    #[test]
    fn bad_arguments_are_refused() {
        let ok = Args::parse_from(["loadgen"]);
        assert!(ok.validate().is_ok());
        for bad in [
            vec!["loadgen", "--users", "0"],
            vec!["loadgen", "--duration", "0s"],
            vec!["loadgen", "--send-fraction", "0.9"],
            vec!["loadgen", "--smtp-rate", "-1"],
        ] {
            let refused = Args::try_parse_from(&bad).map_or(true, |a| a.validate().is_err());
            assert!(refused, "{bad:?}");
        }
        assert!(today().len() == 10);
    }
}
