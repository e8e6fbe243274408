//! mailctl: the operator's tool. `mailctl up` runs and supervises a whole HCU on this machine;
//! the other commands administer users and stores, show every process's state, and run the
//! end-to-end probe, against the endpoints a running `mailctl up` wrote.

pub mod backup;
pub mod cli;
pub mod copy;
pub mod demo;
pub mod gc;
pub mod layout;
pub mod migrate;
pub mod plan;
pub mod probe;
pub mod status;
pub mod stores;
pub mod up;
pub mod users;

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use runtime::shutdown::Shutdown;
use serde_json::json;

use cli::{Cli, Cmd, MigrateArgs};

pub use operator::admin;
pub use runtime::http_client as http;

async fn admin_command(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .endpoints
        .clone()
        .unwrap_or_else(|| cli.data.join("endpoints.json"));
    let hcu = admin::Hcu::new(plan::Endpoints::load(&path)?);
    let j = cli.json;
    match cli.cmd {
        Cmd::Up { .. } => unreachable!("handled by main"),
        Cmd::User(cmd) => users::run(&hcu, cmd, j).await?,
        Cmd::Store(cmd) => stores::run(&hcu, cmd, j).await?,
        Cmd::Status => status::run(&hcu, j).await?,
        Cmd::Migrate(args) => run_migrate(&hcu, &cli.data, args, j).await?,
        Cmd::Backup { store, to } => backup::run(&hcu, store.as_deref(), &to, j).await?,
        Cmd::Restore {
            user,
            from,
            as_of,
            to,
        } => backup::restore::run(&hcu, &user, from, as_of.as_deref(), to.as_deref(), j).await?,
        Cmd::GcInactive {
            days,
            apply,
            max_fraction,
        } => {
            let opts = gc::Options {
                days,
                apply,
                max_fraction,
            };
            gc::run(&hcu, &opts, j).await?;
        }
        Cmd::Probe => probe::run(&hcu, j).await?,
    }
    Ok(())
}

async fn run_migrate(
    hcu: &admin::Hcu,
    data: &std::path::Path,
    args: MigrateArgs,
    json_out: bool,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of MB/s, 0 or more");
    }
    let to = args.to.as_deref().map(cli::store_spec).transpose()?;
    // (user, target or None to continue a kept move)
    let plan: Vec<(String, Option<migrate::Dest>)> = match (&args.user, &args.from) {
        (Some(u), None) => {
            if to.is_none() && migrate::pending_jobs(data)?.iter().all(|j| &j.user != u) {
                bail!("--to is needed: {u} has no unfinished move to continue");
            }
            vec![(u.clone(), to.clone())]
        }
        (None, Some(from)) => {
            let users = migrate::users_of(hcu, data, from).await?;
            match &to {
                Some(t) => users.into_iter().map(|u| (u, Some(t.clone()))).collect(),
                None => {
                    let stores = hcu.mserv.list_stores().await?;
                    migrate::spread(&stores, from, &users)?
                        .into_iter()
                        .map(|(u, s)| (u, Some((s, None))))
                        .collect()
                }
            }
        }
        _ => bail!("say what to move: --user U --to STORE[:SEGMENT], or --from STORE --all"),
    };
    let opts = migrate::Options {
        parallel: args.parallel as usize,
        rate_bytes_per_s: (args.rate * 1e6) as u64,
        dry_run: args.dry_run,
        grace: std::time::Duration::from_secs(args.grace),
    };
    let mut planned = 0;
    for (u, _) in &plan {
        planned += migrate::mailbox_bytes(hcu, u).await;
    }
    let progress = std::sync::Arc::new(migrate::Progress::new(plan.len(), planned));
    let rate = std::sync::Arc::new(copy::Rate::new(opts.rate_bytes_per_s));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nmailctl: stopping: moves in their last step finish, the others stop; a rerun continues");
                stop.store(true, Ordering::SeqCst);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(opts.parallel));
    let mut results = Vec::new();
    let run = migrate::Run {
        hcu,
        data,
        opts: &opts,
        rate: &rate,
        progress: &progress,
        stop: &stop,
    };
    let tasks = plan.into_iter().map(|(user, to)| {
        let (sem, progress, stop, run) = (sem.clone(), progress.clone(), stop.clone(), &run);
        async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            if stop.load(Ordering::SeqCst) {
                return (user, Err(anyhow::anyhow!("not started: stopped")));
            }
            let r = migrate::move_user(run, &user, to).await;
            match &r {
                Ok(_) => progress.done.fetch_add(1, Ordering::Relaxed),
                Err(_) => progress.failed.fetch_add(1, Ordering::Relaxed),
            };
            progress.tick(false);
            (user, r)
        }
    });
    let mut stream: futures_util::stream::FuturesUnordered<_> = tasks.collect();
    use futures_util::StreamExt as _;
    while let Some((user, r)) = stream.next().await {
        match &r {
            Ok(d) => {
                let freeze = d
                    .freeze
                    .map(|f| format!(" freeze {} ms", f.as_millis()))
                    .unwrap_or_default();
                if json_out {
                    println!(
                        "{}",
                        json!({"user": user, "ok": true, "from": d.from, "to": d.to,
                        "bytes": d.bytes, "freeze_ms": d.freeze.map(|f| f.as_secs_f64() * 1000.0), "note": d.note})
                    );
                } else {
                    println!(
                        "OK {user} {} -> {} {:.1} MB{freeze} ({})",
                        d.from,
                        d.to,
                        d.bytes as f64 / 1e6,
                        d.note
                    );
                }
            }
            Err(e) => {
                if json_out {
                    println!(
                        "{}",
                        json!({"user": user, "ok": false, "error": format!("{e:#}")})
                    );
                } else {
                    println!("ERR {user}: {e:#}");
                }
            }
        }
        results.push(r.is_ok());
    }
    progress.finish();
    // (7) the old copies go once their grace period is over: waited for here when it is short,
    // left to a later run otherwise.
    if !opts.dry_run {
        let wait = opts.grace <= std::time::Duration::from_secs(300);
        loop {
            let (purged, waiting) = migrate::purge_due(hcu, data).await?;
            if purged > 0 {
                eprintln!("mailctl: purged {purged} old copies");
            }
            if waiting == 0 {
                break;
            }
            if !wait || stop.load(Ordering::SeqCst) {
                eprintln!(
                    "mailctl: {waiting} old copies wait for their grace period; a later run purges them"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    let failed = results.iter().filter(|ok| !**ok).count();
    if failed > 0 {
        bail!("{failed} of {} mailboxes were not moved", results.len());
    }
    Ok(())
}

/// The `mailctl` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if let Cmd::Up { config, demo } = &cli.cmd {
            runtime::logging::init(&runtime::config::LogConfig::default());
            let layout = layout::load(config)?;
            let shutdown = Shutdown::new();
            runtime::shutdown::on_signals(&shutdown);
            let args = up::UpArgs {
                layout,
                data: cli.data.clone(),
                demo: *demo,
            };
            up::up(args, shutdown).await
        } else {
            admin_command(cli).await
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
