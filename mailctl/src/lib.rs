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
pub mod up;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use mserv_client::{Policy, StoreState};
use runtime::shutdown::Shutdown;
use serde_json::json;

use cli::{print, Cli, Cmd, MigrateArgs, StoreCmd, UserCmd};

pub use operator::{admin, status};
pub use runtime::http_client as http;

/// Read a password: one line from standard input (prompted, without echo, on a terminal).
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    // SAFETY: termios calls on standard input with a zeroed, then filled, struct.
    let saved = tty.then(|| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut t);
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        saved
    });
    if tty {
        eprint!("Password: ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restoring the attributes read above.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        eprintln!();
    }
    r.context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("no password on standard input");
    }
    Ok(pw)
}

async fn admin_command(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .endpoints
        .clone()
        .unwrap_or_else(|| cli.data.join("endpoints.json"));
    let hcu = admin::Hcu::new(plan::Endpoints::load(&path)?);
    let j = cli.json;
    match cli.cmd {
        Cmd::Up { .. } => unreachable!("handled by main"),
        Cmd::User(UserCmd::Add {
            user,
            display_name,
            store,
            quota,
        }) => {
            let policy = match &store {
                Some(s) => cli::placement(s)?,
                None => Policy::LeastLoaded,
            };
            let pw = read_password()?;
            let name = if display_name.is_empty() {
                user.split('@').next().unwrap_or("").to_string()
            } else {
                display_name
            };
            let p = hcu.add_user(&user, &pw, &name, policy, quota).await?;
            print(
                j,
                json!({"user": user, "store": p.store, "segment": p.segment, "epoch": p.epoch}),
                format!("OK {user} on {} segment {}", p.store, p.segment),
            );
        }
        Cmd::User(UserCmd::Del { user }) => {
            let p = hcu.del_user(&user).await?;
            print(
                j,
                json!({"user": user, "deleted": true, "store": p.store}),
                format!("OK {user} deleted (was on {})", p.store),
            );
        }
        Cmd::User(UserCmd::Show { user }) => {
            let v = hcu.show_user(&user).await?;
            let mut human = format!(
                "{}\n  store {} segment {} (epoch {})\n  name {:?}, state {}, {} messages, {} bytes used\n  folders:",
                v["user"].as_str().unwrap_or(""),
                v["store"].as_str().unwrap_or(""),
                v["segment"],
                v["epoch"],
                v["display_name"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or(""),
                v["messages"],
                v["used_bytes"],
            );
            for f in v["folders"].as_array().into_iter().flatten() {
                human.push_str(&format!(
                    "\n    {:<12} {:>6} messages, {:>6} unread",
                    f["name"].as_str().unwrap_or(""),
                    f["total"],
                    f["unread"]
                ));
            }
            print(j, v, human);
        }
        Cmd::User(UserCmd::Passwd { user }) => {
            let pw = read_password()?;
            hcu.passwd(&user, &pw).await?;
            print(
                j,
                json!({"user": user, "password_changed": true}),
                format!("OK password of {user} changed; its older sessions are signed out"),
            );
        }
        Cmd::Store(StoreCmd::Add {
            name,
            xfs,
            segments,
            cluster,
        }) => {
            let cluster = cluster.unwrap_or_else(|| hcu.endpoints.cluster.clone());
            hcu.store_add(&name, &xfs, segments, &cluster).await?;
            print(
                j,
                json!({"store": name, "added": true}),
                format!("OK store {name} at {xfs} takes users"),
            );
        }
        Cmd::Store(StoreCmd::Drain { name }) => {
            hcu.store_state(&name, StoreState::Draining).await?;
            print(
                j,
                json!({"store": name, "state": "draining"}),
                format!("OK store {name} is draining: no new users are placed on it"),
            );
        }
        Cmd::Store(StoreCmd::List) => {
            let stores = hcu.store_list().await?;
            let rows: Vec<_> = stores
                .iter()
                .map(|s| {
                    json!({"name": s.info.name, "xfs": s.info.xfs_addr, "cluster": s.info.cluster,
                        "state": s.info.state.as_str(), "users": s.users,
                        "segments": s.segment_users})
                })
                .collect();
            let mut human = format!(
                "{:<12} {:<22} {:<8} {:<9} {:>8}",
                "STORE", "XFS", "CLUSTER", "STATE", "USERS"
            );
            for s in &stores {
                human.push_str(&format!(
                    "\n{:<12} {:<22} {:<8} {:<9} {:>8}",
                    s.info.name,
                    s.info.xfs_addr,
                    s.info.cluster,
                    s.info.state.as_str(),
                    s.users
                ));
            }
            print(j, json!(rows), human);
        }
        Cmd::Status => {
            let rows = status::collect(&hcu.endpoints).await;
            let all_ok = rows.iter().all(|r| r["state"] == "ok");
            print(j, json!(rows), status::table(&rows));
            if !all_ok {
                bail!("not every process is healthy");
            }
        }
        Cmd::Migrate(args) => run_migrate(&hcu, &cli.data, args, j).await?,
        Cmd::Backup { store, to } => {
            let v = backup::backup(&hcu, store.as_deref(), &to).await?;
            let human = backup::backup_table(&v);
            print(j, v, human);
        }
        Cmd::Restore {
            user,
            from,
            as_of,
            to,
        } => {
            let v = match from {
                Some(dir) => {
                    let to = to.as_deref().map(cli::placement).transpose()?;
                    backup::restore_from_backup(&hcu, &user, &dir, as_of.as_deref(), to).await?
                }
                None => backup::undelete(&hcu, &user).await?,
            };
            let human = format!(
                "OK {user} restored on {} segment {}{}",
                v["store"].as_str().unwrap_or(""),
                v["segment"],
                v["backup"]
                    .as_str()
                    .map(|b| format!(" from backup {b} ({} records)", v["records"]))
                    .unwrap_or_else(|| " (undeleted)".into())
            );
            print(j, v, human);
        }
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
        Cmd::Probe => match probe::run(&hcu).await {
            Ok(v) => print(
                j,
                v.clone(),
                format!(
                    "probe OK via {}: smtp {} ms, sign-in {} ms, seen {} ms after sending, read {} ms; total {} ms",
                    v["front_door"].as_str().unwrap_or(""),
                    v["smtp_ms"],
                    v["login_ms"],
                    v["seen_ms"],
                    v["read_ms"],
                    v["total_ms"]
                ),
            ),
            Err(e) => {
                if j {
                    println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
                }
                return Err(e.context("probe failed"));
            }
        },
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
