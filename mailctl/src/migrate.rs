//! `mailctl migrate`: online mailbox moves between stores.
//!
//! One move: (1) bulk copy of the bodies while the user keeps working; (2) catch-up (every other
//! record, and the bodies that arrived meanwhile); (3) freeze at the source: writes answer
//! `Frozen`, reads are served; (4) the final delta, then the two copies' digests must match;
//! (5) compare-and-set of the placement in the member index: the commit point; (6) the target
//! copy goes live and the source answers `Moved`; (7) after the grace period the source copy is
//! purged.
//!
//! Each move's state is kept in `DATA/migrations/<user>.json`, written before every step, so a
//! rerun after a crash or Ctrl-C continues: before the commit it copies again (every step is
//! idempotent); after it (the index names the target at the next epoch) it finishes steps 6-7.
//! A mailbox is never lost and never live in two places: the source stays live until the index
//! names the target, and the target is `Importing` (callers wait) until then.

use runtime::time::now_ms;
use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mserv_client::{MservError, Placement, StoreState};
use serde::{Deserialize, Serialize};
use xfs::{ops, Call, CallError, ExportCursor, Target, XfsError};

use crate::admin::Hcu;
use crate::copy::{self, Rate, Side};

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Copying; the source is live.
    Copying,
    /// The source is frozen for the final delta.
    Frozen,
    /// The index names the target; the target and source may still need steps 6-7.
    Committed,
    /// The source answers `Moved`; its copy waits for the grace period.
    Moved,
}

/// The state of one move, kept across runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub user: String,
    pub from_store: String,
    pub from_segment: u32,
    /// The placement epoch when the move began; the commit makes it `epoch + 1`.
    pub epoch: u64,
    pub to_store: String,
    pub to_segment: u32,
    pub step: Step,
    pub cursor: Option<ExportCursor>,
    /// When the source copy may be purged (ms since the epoch), once moved.
    pub purge_after_ms: u64,
}

/// How a move ended.
#[derive(Debug, Clone)]
pub struct Done {
    pub user: String,
    pub from: String,
    pub to: String,
    pub bytes: u64,
    /// How long the source was frozen, if the freeze happened in this run.
    pub freeze: Option<Duration>,
    pub note: &'static str,
}

/// What a run was asked for.
pub struct Options {
    pub parallel: usize,
    pub rate_bytes_per_s: u64,
    pub dry_run: bool,
    pub grace: Duration,
}

/// Fault injection for tests: with `MAILCTL_CRASH_AT=<point>` in the environment the process
/// aborts at that point, as a kill -9 would stop it.
fn crash_point(point: &str) {
    if std::env::var("MAILCTL_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("mailctl: crashing at {point} (MAILCTL_CRASH_AT)");
        std::process::abort();
    }
}

/// The points [`crash_point`] knows, in the order a move passes them.
pub const CRASH_POINTS: [&str; 10] = [
    "begun",
    "copied",
    "caught-up",
    "frozen",
    "final-bodies",
    "verified",
    "committed",
    "live",
    "redirected",
    "purging",
];

fn jobs_dir(data: &Path) -> PathBuf {
    data.join("migrations")
}

fn job_path(data: &Path, user: &str) -> PathBuf {
    jobs_dir(data).join(format!("{user}.json"))
}

fn save(data: &Path, job: &Job) -> anyhow::Result<()> {
    let dir = jobs_dir(data);
    std::fs::create_dir_all(&dir)?;
    let path = job_path(data, &job.user);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(job)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn load(data: &Path, user: &str) -> anyhow::Result<Option<Job>> {
    match std::fs::read(job_path(data, user)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("reading the migration state of {user}")
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every unfinished move kept under `data`.
pub fn pending_jobs(data: &Path) -> anyhow::Result<Vec<Job>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(jobs_dir(data)) else {
        return Ok(out);
    };
    for e in rd {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let job: Job = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| format!("reading {}", p.display()))?;
            out.push(job);
        }
    }
    out.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(out)
}

/// Progress shared by the moves of a run.
pub struct Progress {
    pub total: usize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub bytes: AtomicU64,
    pub planned_bytes: u64,
    started: Instant,
    tty: bool,
    last: Mutex<Instant>,
}

impl Progress {
    pub fn new(total: usize, planned_bytes: u64) -> Progress {
        Progress {
            total,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            planned_bytes,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(Instant::now()),
        }
    }

    fn line(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let done = self.done.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        let frac = if self.planned_bytes > 0 {
            (bytes as f64 / self.planned_bytes as f64).min(1.0)
        } else if self.total > 0 {
            done as f64 / self.total as f64
        } else {
            1.0
        };
        let left = if rate > 0.0 && self.planned_bytes > bytes {
            format!("{:.0} s left", (self.planned_bytes - bytes) as f64 / rate)
        } else {
            "-".into()
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        format!(
            "[{}{}] {done}/{} mailboxes, {:.1} MB, {:.1} MB/s, {left}",
            "=".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            bytes as f64 / 1e6,
            rate / 1e6
        )
    }

    /// Redraw the bar (on a terminal, at most 5 times a second; otherwise a line every 5 s).
    pub fn tick(&self, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !force && last.elapsed() < every {
            return;
        }
        *last = Instant::now();
        if self.tty {
            eprint!("\r{}\x1b[K", self.line());
        } else {
            eprintln!("{}", self.line());
        }
    }

    pub fn finish(&self) {
        self.tick(true);
        if self.tty {
            eprintln!();
        }
    }
}

fn store_addr(stores: &[mserv_client::StoreLoad], name: &str) -> anyhow::Result<String> {
    stores
        .iter()
        .find(|s| s.info.name == name)
        .map(|s| s.info.xfs_addr.clone())
        .with_context(|| format!("no store named {name} is registered"))
}

/// Choose the target of a new move, or refuse: the store must be active and not the user's own.
pub fn check_target(
    stores: &[mserv_client::StoreLoad],
    p: &Placement,
    to_store: &str,
    to_segment: Option<u32>,
) -> anyhow::Result<Option<u32>> {
    let s = stores
        .iter()
        .find(|s| s.info.name == to_store)
        .with_context(|| format!("no store named {to_store} is registered"))?;
    if p.store == to_store {
        return Ok(None);
    }
    if s.info.state != StoreState::Active {
        bail!(
            "store {to_store} is {}: mailboxes are moved only to active stores",
            s.info.state.as_str()
        );
    }
    let seg = match to_segment {
        Some(seg) if s.info.segments.contains(&seg) => seg,
        Some(seg) => bail!("store {to_store} has no segment {seg}"),
        None => s
            .segment_users
            .iter()
            .min_by_key(|(id, n)| (*n, *id))
            .map(|(id, _)| *id)
            .context("the target store has no segments")?,
    };
    Ok(Some(seg))
}

async fn xfs_ok<C: Call>(side: &Side, call: C) -> anyhow::Result<C::Output> {
    side.call(call)
        .await
        .with_context(|| format!("at {}", side.store))
}

/// A destination: a store, and a segment or the least loaded one.
pub type Dest = (String, Option<u32>);

/// What every move of a run shares.
pub struct Run<'a> {
    pub hcu: &'a Hcu,
    pub data: &'a Path,
    pub opts: &'a Options,
    pub rate: &'a Rate,
    pub progress: &'a Progress,
    /// Set on Ctrl-C: moves not yet frozen stop; frozen ones finish.
    pub stop: &'a AtomicBool,
}

/// Run or continue the move of `user` to `to` (`None`: continue its kept job).
pub async fn move_user(run: &Run<'_>, user: &str, to: Option<Dest>) -> anyhow::Result<Done> {
    let Run {
        hcu,
        data,
        opts,
        rate,
        progress,
        stop,
    } = *run;
    let user = mserv_client::normalize_user(user)?;
    let stores = hcu.mserv.list_stores().await?;
    let p = hcu.mserv.lookup_uncached(&user).await?;
    let mut job = match load(data, &user)? {
        Some(j) => j,
        None => {
            let (to_store, to_seg) = to.context("nothing to continue")?;
            let Some(seg) = check_target(&stores, &p, &to_store, to_seg)? else {
                return Ok(Done {
                    user: user.clone(),
                    from: format!("{}:{}", p.store, p.segment),
                    to: to_store,
                    bytes: 0,
                    freeze: None,
                    note: "already there",
                });
            };
            let job = Job {
                user: user.clone(),
                from_store: p.store.clone(),
                from_segment: p.segment,
                epoch: p.epoch,
                to_store,
                to_segment: seg,
                step: Step::Copying,
                cursor: None,
                purge_after_ms: 0,
            };
            if opts.dry_run {
                return Ok(Done {
                    user: user.clone(),
                    from: format!("{}:{}", p.store, p.segment),
                    to: format!("{}:{}", job.to_store, job.to_segment),
                    bytes: 0,
                    freeze: None,
                    note: "planned (dry run)",
                });
            }
            save(data, &job)?;
            job
        }
    };
    let from = format!("{}:{}", job.from_store, job.from_segment);
    let to_name = format!("{}:{}", job.to_store, job.to_segment);
    if opts.dry_run {
        return Ok(Done {
            user,
            from,
            to: to_name,
            bytes: 0,
            freeze: None,
            note: "unfinished move would continue (dry run)",
        });
    }
    let committed =
        p.store == job.to_store && p.segment == job.to_segment && p.epoch == job.epoch + 1;
    let untouched = p.store == job.from_store && p.epoch == job.epoch;
    if !committed && !untouched {
        bail!(
            "the index moved {user} elsewhere meanwhile ({} segment {} epoch {}); this move is abandoned: remove {} after checking both stores",
            p.store,
            p.segment,
            p.epoch,
            job_path(data, &user).display()
        );
    }
    let src = Side {
        store: job.from_store.clone(),
        pool: hcu.xfs.pool(&store_addr(&stores, &job.from_store)?),
        target: Target::new(&user, job.from_segment, job.epoch),
    };
    let dst = Side {
        store: job.to_store.clone(),
        pool: hcu.xfs.pool(&store_addr(&stores, &job.to_store)?),
        target: Target::new(&user, job.to_segment, job.epoch + 1),
    };
    let mut bytes = 0;
    let mut freeze = None;
    if !committed {
        let count = |n: u64| {
            progress.bytes.fetch_add(n, Ordering::Relaxed);
            progress.tick(false);
        };
        // After a crash in the final delta the source is live again until the next freeze.
        match src
            .call(ops::Unfreeze {
                target: src.target.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(e) => return Err(e).context("at the source"),
        }
        if job.step == Step::Frozen {
            job.step = Step::Copying;
            save(data, &job)?;
        }
        match dst
            .call(ops::BeginImport {
                target: dst.target.clone(),
                from: job.from_store.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(e) => return Err(e).context(format!("beginning the copy at {}", job.to_store)),
        }
        crash_point("begun");
        // (1) bulk copy, (2) catch-up: new bodies, every record, and the bodies the source
        // expunged meanwhile, all while the user keeps working.
        let bulk = copy::copy_bodies(&src, &dst, job.cursor.clone(), rate, &count).await?;
        bytes += bulk.bytes;
        job.cursor = bulk.cursor;
        save(data, &job)?;
        crash_point("copied");
        let (n, live) = copy::copy_records(&src, &dst).await?;
        bytes += n;
        let mut held = copy::body_keys(&dst).await?;
        let gone: Vec<_> = held.difference(&live).cloned().collect();
        copy::delete_bodies(&dst, gone).await?;
        held.retain(|k| live.contains(k));
        crash_point("caught-up");
        if stop.load(Ordering::SeqCst) {
            bail!("stopped before the freeze; a rerun continues");
        }
        // (3) freeze, (4) the final delta and verification; nothing here reads a body but the
        // few new ones, so the freeze stays short.
        job.step = Step::Frozen;
        save(data, &job)?;
        let frozen_at = Instant::now();
        xfs_ok(
            &src,
            ops::Freeze {
                target: src.target.clone(),
            },
        )
        .await?;
        crash_point("frozen");
        let finalize = async {
            let last = copy::copy_bodies(&src, &dst, job.cursor.clone(), rate, &count).await?;
            crash_point("final-bodies");
            let (m, live) = copy::copy_records(&src, &dst).await?;
            held.extend(last.keys.iter().cloned());
            let gone: Vec<_> = held.difference(&live).cloned().collect();
            copy::delete_bodies(&dst, gone).await?;
            copy::verify(&src, &dst).await?;
            crash_point("verified");
            anyhow::Ok((last.cursor, last.bytes + m))
        }
        .await;
        let (cursor, n) = match finalize {
            Ok(x) => x,
            Err(e) => {
                // Not committed: the source goes back to work; a rerun tries again.
                let _ = src
                    .call(ops::Unfreeze {
                        target: src.target.clone(),
                    })
                    .await;
                job.step = Step::Copying;
                save(data, &job)?;
                return Err(e);
            }
        };
        bytes += n;
        job.cursor = cursor;
        // (5) the commit point.
        let cas = hcu
            .mserv
            .move_user(&user, job.epoch, &job.to_store, job.to_segment)
            .await;
        match cas {
            Ok(_) => {}
            Err(MservError::OutcomeUnknown { .. }) => {
                let now = hcu.mserv.lookup_uncached(&user).await?;
                if !(now.store == job.to_store && now.epoch == job.epoch + 1) {
                    let _ = src
                        .call(ops::Unfreeze {
                            target: src.target.clone(),
                        })
                        .await;
                    job.step = Step::Copying;
                    save(data, &job)?;
                    bail!("the index did not take the move; a rerun tries again");
                }
            }
            Err(e) => {
                let _ = src
                    .call(ops::Unfreeze {
                        target: src.target.clone(),
                    })
                    .await;
                job.step = Step::Copying;
                save(data, &job)?;
                return Err(e).context("the index refused the move");
            }
        }
        crash_point("committed");
        job.step = Step::Committed;
        save(data, &job)?;
        // (6) live at the target, redirect at the source.
        xfs_ok(
            &dst,
            ops::FinishImport {
                target: dst.target.clone(),
            },
        )
        .await?;
        crash_point("live");
        xfs_ok(
            &src,
            ops::MarkMoved {
                target: src.target.clone(),
                to: job.to_store.clone(),
                epoch: job.epoch + 1,
            },
        )
        .await?;
        freeze = Some(frozen_at.elapsed());
        crash_point("redirected");
    } else {
        xfs_ok(
            &dst,
            ops::FinishImport {
                target: dst.target.clone(),
            },
        )
        .await?;
        match src
            .call(ops::MarkMoved {
                target: src.target.clone(),
                to: job.to_store.clone(),
                epoch: job.epoch + 1,
            })
            .await
        {
            // Purged already by an earlier run.
            Ok(_) | Err(CallError::Remote(XfsError::NoSuchUser)) => {}
            Err(e) => return Err(e).context("at the source"),
        }
    }
    if job.step != Step::Moved {
        job.step = Step::Moved;
        job.purge_after_ms = now_ms() + opts.grace.as_millis() as u64;
        save(data, &job)?;
    }
    Ok(Done {
        user,
        from,
        to: to_name,
        bytes,
        freeze,
        note: "moved",
    })
}

/// Purge the source copies of moved mailboxes whose grace period is over; how many, and how many
/// still wait.
pub async fn purge_due(hcu: &Hcu, data: &Path) -> anyhow::Result<(usize, usize)> {
    let stores = hcu.mserv.list_stores().await?;
    let (mut purged, mut waiting) = (0, 0);
    for job in pending_jobs(data)? {
        if job.step != Step::Moved {
            continue;
        }
        if job.purge_after_ms > now_ms() {
            waiting += 1;
            continue;
        }
        crash_point("purging");
        let src = hcu.xfs.pool(&store_addr(&stores, &job.from_store)?);
        let op = ops::Purge {
            target: Target::new(&job.user, job.from_segment, job.epoch),
        };
        match src.run(op).await {
            Ok(_) | Err(CallError::Remote(XfsError::NoSuchUser)) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("purging the old copy of {}", job.user))
            }
        }
        std::fs::remove_file(job_path(data, &job.user))?;
        purged += 1;
    }
    Ok((purged, waiting))
}

/// The users a run moves: one, or every user on a store plus its unfinished moves.
pub async fn users_of(hcu: &Hcu, data: &Path, store: &str) -> anyhow::Result<Vec<String>> {
    let mut users: Vec<String> = pending_jobs(data)?
        .into_iter()
        .filter(|j| j.from_store == store && j.step != Step::Moved)
        .map(|j| j.user)
        .collect();
    let mut after: Option<String> = None;
    loop {
        let page = hcu
            .mserv
            .list_store_users(store, after.as_deref(), 1000)
            .await?;
        users.extend(page.users.into_iter().map(|(u, _)| u));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// Targets for an evacuation: each user to the active store (not `from`) with the fewest users,
/// counting the ones assigned in this run.
pub fn spread(
    stores: &[mserv_client::StoreLoad],
    from: &str,
    users: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut load: HashMap<String, u64> = stores
        .iter()
        .filter(|s| s.info.state == StoreState::Active && s.info.name != from)
        .map(|s| (s.info.name.clone(), s.users))
        .collect();
    if load.is_empty() {
        bail!("no active store other than {from} to move mailboxes to");
    }
    let mut out = Vec::new();
    for u in users {
        let name = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(name, _)| name.clone())
            .expect("not empty");
        *load.get_mut(&name).expect("present") += 1;
        out.push((u.clone(), name));
    }
    Ok(out)
}

/// Size of a user's mailbox in bytes, for the plan and the progress bar (0 if unknown).
pub async fn mailbox_bytes(hcu: &Hcu, user: &str) -> u64 {
    let Ok(p) = hcu.mserv.lookup_uncached(user).await else {
        return 0;
    };
    let Ok(addr) = hcu.store_addr(&p.store).await else {
        return 0;
    };
    let op = ops::GetAccount {
        target: Target::new(user, p.segment, p.epoch),
    };
    match hcu.xfs.pool(&addr).run(op).await {
        Ok(a) => a.used_bytes,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mserv_client::StoreInfo;

    fn load(name: &str, users: u64, state: StoreState) -> mserv_client::StoreLoad {
        mserv_client::StoreLoad {
            info: StoreInfo {
                name: name.into(),
                xfs_addr: String::new(),
                cluster: "c".into(),
                segments: vec![0, 1],
                state,
            },
            users,
            segment_users: vec![(0, users / 2 + 1), (1, users / 2)],
        }
    }

    #[test]
    fn targets_are_active_other_stores_least_loaded_first() {
        let stores = [
            load("s1", 10, StoreState::Draining),
            load("s2", 5, StoreState::Active),
            load("s3", 0, StoreState::Active),
            load("s4", 0, StoreState::Offline),
        ];
        let users: Vec<String> = (0..8).map(|i| format!("u{i}@x.test")).collect();
        let plan = spread(&stores, "s1", &users).unwrap();
        let to_s3 = plan.iter().filter(|(_, s)| s == "s3").count();
        assert_eq!(to_s3, 6, "{plan:?}");
        assert!(plan.iter().all(|(_, s)| s == "s2" || s == "s3"));
        assert!(spread(&stores[..1], "s1", &users).is_err());
    }

    #[test]
    fn a_target_must_be_active_and_elsewhere() {
        let stores = [
            load("s1", 4, StoreState::Active),
            load("s2", 4, StoreState::Draining),
        ];
        let p = Placement {
            store: "s1".into(),
            segment: 0,
            epoch: 1,
        };
        assert_eq!(check_target(&stores, &p, "s1", None).unwrap(), None);
        let err = check_target(&stores, &p, "s2", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("draining"), "{err}");
        assert!(check_target(&stores, &p, "s9", None).is_err());
        let p2 = Placement {
            store: "s2".into(),
            ..p
        };
        assert_eq!(check_target(&stores, &p2, "s1", None).unwrap(), Some(1));
        assert!(check_target(&stores, &p2, "s1", Some(7)).is_err());
    }
}
