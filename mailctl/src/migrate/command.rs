//! `mailctl migrate`: what to move where, the moves run a few at a time under one bandwidth limit
//! with a progress bar, each outcome printed, and the old copies purged once their grace period
//! is over. Ctrl-C stops the moves not yet frozen; a second Ctrl-C exits at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures_util::StreamExt as _;
use serde_json::json;

use super::jobs::pending_jobs;
use super::steps::{move_user, purge_due};
use super::targets::{mailbox_bytes, spread, users_of};
use super::{Dest, Done, Options, Progress, Run};
use crate::admin::Hcu;
use crate::cli::{store_spec, MigrateArgs};
use crate::copy::Rate;

/// Run `mailctl migrate`: every planned move, then the purge of the old copies.
pub async fn run(hcu: &Hcu, data: &Path, args: MigrateArgs, json_out: bool) -> anyhow::Result<()> {
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of MB/s, 0 or more");
    }
    let plan = plan(hcu, data, &args).await?;
    let opts = Options {
        parallel: args.parallel as usize,
        rate_bytes_per_s: (args.rate * 1e6) as u64,
        dry_run: args.dry_run,
        grace: Duration::from_secs(args.grace),
    };
    let mut planned = 0;
    for (u, _) in &plan {
        planned += mailbox_bytes(hcu, u).await;
    }
    let progress = Arc::new(Progress::new(plan.len(), planned));
    let rate = Arc::new(Rate::new(opts.rate_bytes_per_s));
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel));
    let mut results = Vec::new();
    let run = Run {
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
            let r = move_user(run, &user, to).await;
            match &r {
                Ok(_) => progress.done.fetch_add(1, Ordering::Relaxed),
                Err(_) => progress.failed.fetch_add(1, Ordering::Relaxed),
            };
            progress.tick(false);
            (user, r)
        }
    });
    let mut stream: futures_util::stream::FuturesUnordered<_> = tasks.collect();
    while let Some((user, r)) = stream.next().await {
        report(&user, &r, json_out);
        results.push(r.is_ok());
    }
    progress.finish();
    if !opts.dry_run {
        purge_after_grace(hcu, data, &opts, &stop).await?;
    }
    let failed = results.iter().filter(|ok| !**ok).count();
    if failed > 0 {
        bail!("{failed} of {} mailboxes were not moved", results.len());
    }
    Ok(())
}

/// The moves a run makes: each user with its target, or `None` to continue its kept move.
async fn plan(
    hcu: &Hcu,
    data: &Path,
    args: &MigrateArgs,
) -> anyhow::Result<Vec<(String, Option<Dest>)>> {
    let to = args.to.as_deref().map(store_spec).transpose()?;
    Ok(match (&args.user, &args.from) {
        (Some(u), None) => {
            if to.is_none() && pending_jobs(data)?.iter().all(|j| &j.user != u) {
                bail!("--to is needed: {u} has no unfinished move to continue");
            }
            vec![(u.clone(), to.clone())]
        }
        (None, Some(from)) => {
            let users = users_of(hcu, data, from).await?;
            match &to {
                Some(t) => users.into_iter().map(|u| (u, Some(t.clone()))).collect(),
                None => {
                    let stores = hcu.mserv.list_stores().await?;
                    spread(&stores, from, &users)?
                        .into_iter()
                        .map(|(u, s)| (u, Some((s, None))))
                        .collect()
                }
            }
        }
        _ => bail!("say what to move: --user U --to STORE[:SEGMENT], or --from STORE --all"),
    })
}

/// On Ctrl-C set `stop` (moves in their last step finish, the others stop); a second Ctrl-C
/// exits at once.
fn stop_on_ctrl_c(stop: Arc<AtomicBool>) {
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

/// Print how one move ended: a JSON line, or `OK`/`ERR` and the details.
fn report(user: &str, r: &anyhow::Result<Done>, json_out: bool) {
    match r {
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
}

/// (7) The old copies go once their grace period is over: waited for here when it is short,
/// left to a later run otherwise.
async fn purge_after_grace(
    hcu: &Hcu,
    data: &Path,
    opts: &Options,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let wait = opts.grace <= Duration::from_secs(300);
    loop {
        let (purged, waiting) = purge_due(hcu, data).await?;
        if purged > 0 {
            eprintln!("mailctl: purged {purged} old copies");
        }
        if waiting == 0 {
            return Ok(());
        }
        if !wait || stop.load(Ordering::SeqCst) {
            eprintln!(
                "mailctl: {waiting} old copies wait for their grace period; a later run purges them"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
