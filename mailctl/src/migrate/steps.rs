//! One move, step by step. [`move_user`] reads as the list of steps; each is a function below,
//! named by what it does, with the crash points (`MAILCTL_CRASH_AT`) where the steps pass them.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mserv_client::{MservError, Placement, StoreLoad};
use runtime::time::now_ms;
use xfs::{ops, Call, CallError, Target, XfsError};

use super::jobs::{job_path, load, pending_jobs, save};
use super::targets::{check_target, store_addr};
use super::{crash_point, Dest, Done, Job, Run, Step};
use crate::admin::Hcu;
use crate::copy::{self, BodyKey, Side};

/// Run or continue the move of `user` to `to` (`None`: continue its kept job).
pub async fn move_user(run: &Run<'_>, user: &str, to: Option<Dest>) -> anyhow::Result<Done> {
    let user = mserv_client::normalize_user(user)?;
    let stores = run.hcu.mserv.list_stores().await?;
    let p = run.hcu.mserv.lookup_uncached(&user).await?;
    let mut job = match open_job(run, &user, &stores, &p, to)? {
        ControlFlow::Continue(job) => job,
        ControlFlow::Break(nothing_to_do) => return Ok(nothing_to_do),
    };
    let (from, to_name) = (job.source(), job.target());
    if run.opts.dry_run {
        let note = "unfinished move would continue (dry run)";
        return Ok(Done::unchanged(user, from, to_name, note));
    }
    let committed = check_index(run.data, &p, &job)?;
    let (src, dst) = sides(run.hcu, &stores, &job)?;
    let (bytes, freeze) = if committed {
        finish_after_commit(&src, &dst, &job).await?;
        (0, None)
    } else {
        begin_import(run.data, &src, &dst, &mut job).await?;
        let bulk = bulk_copy(run, &src, &dst, &mut job).await?;
        let (caught_up, held) = catch_up(&src, &dst).await?;
        if run.stop.load(Ordering::SeqCst) {
            bail!("stopped before the freeze; a rerun continues");
        }
        let frozen_at = freeze_source(run.data, &src, &mut job).await?;
        let last = final_delta(run, &src, &dst, &mut job, held).await?;
        commit(run, &src, &mut job).await?;
        let freeze = go_live(&src, &dst, &job, frozen_at).await?;
        (bulk + caught_up + last, Some(freeze))
    };
    start_grace(run, &mut job)?;
    Ok(Done {
        user,
        from,
        to: to_name,
        bytes,
        freeze,
        note: "moved",
    })
}

/// The kept job of `user`, or a new one (its target checked), saved before anything changes;
/// `Break` with the answer when there is nothing to do (already there, a dry run of a new move).
fn open_job(
    run: &Run<'_>,
    user: &str,
    stores: &[StoreLoad],
    p: &Placement,
    to: Option<Dest>,
) -> anyhow::Result<ControlFlow<Done, Job>> {
    if let Some(job) = load(run.data, user)? {
        return Ok(ControlFlow::Continue(job));
    }
    let (to_store, to_seg) = to.context("nothing to continue")?;
    let from = format!("{}:{}", p.store, p.segment);
    let Some(seg) = check_target(stores, p, &to_store, to_seg)? else {
        let done = Done::unchanged(user.to_string(), from, to_store, "already there");
        return Ok(ControlFlow::Break(done));
    };
    let job = Job {
        user: user.to_string(),
        from_store: p.store.clone(),
        from_segment: p.segment,
        epoch: p.epoch,
        to_store,
        to_segment: seg,
        step: Step::Copying,
        cursor: None,
        purge_after_ms: 0,
    };
    if run.opts.dry_run {
        let done = Done::unchanged(user.to_string(), from, job.target(), "planned (dry run)");
        return Ok(ControlFlow::Break(done));
    }
    save(run.data, &job)?;
    Ok(ControlFlow::Continue(job))
}

/// Whether the index already names the target (the commit happened in an earlier run); a move
/// the index took elsewhere meanwhile is refused.
fn check_index(data: &Path, p: &Placement, job: &Job) -> anyhow::Result<bool> {
    let committed =
        p.store == job.to_store && p.segment == job.to_segment && p.epoch == job.epoch + 1;
    let untouched = p.store == job.from_store && p.epoch == job.epoch;
    if !committed && !untouched {
        bail!(
            "the index moved {} elsewhere meanwhile ({} segment {} epoch {}); this move is abandoned: remove {} after checking both stores",
            job.user,
            p.store,
            p.segment,
            p.epoch,
            job_path(data, &job.user).display()
        );
    }
    Ok(committed)
}

/// The source copy (at the move's epoch) and the target copy (at the next) as the move calls them.
fn sides(hcu: &Hcu, stores: &[StoreLoad], job: &Job) -> anyhow::Result<(Side, Side)> {
    let src = Side {
        store: job.from_store.clone(),
        pool: hcu.xfs.pool(&store_addr(stores, &job.from_store)?),
        target: Target::new(&job.user, job.from_segment, job.epoch),
    };
    let dst = Side {
        store: job.to_store.clone(),
        pool: hcu.xfs.pool(&store_addr(stores, &job.to_store)?),
        target: Target::new(&job.user, job.to_segment, job.epoch + 1),
    };
    Ok((src, dst))
}

/// Make the source live again (a crash in the final delta leaves it frozen until the next
/// freeze) and begin, or continue, the importing copy at the target.
async fn begin_import(data: &Path, src: &Side, dst: &Side, job: &mut Job) -> anyhow::Result<()> {
    let unfreeze = ops::Unfreeze {
        target: src.target.clone(),
    };
    src.call(unfreeze).await.context("at the source")?;
    if job.step == Step::Frozen {
        job.step = Step::Copying;
        save(data, job)?;
    }
    let begin = ops::BeginImport {
        target: dst.target.clone(),
        from: job.from_store.clone(),
    };
    dst.call(begin)
        .await
        .with_context(|| format!("beginning the copy at {}", job.to_store))?;
    crash_point("begun");
    Ok(())
}

/// (1) The bulk copy of the bodies from the kept cursor, while the user keeps working; the bytes
/// copied. The cursor is kept, so a rerun continues from it.
async fn bulk_copy(run: &Run<'_>, src: &Side, dst: &Side, job: &mut Job) -> anyhow::Result<u64> {
    let progress = run.progress;
    let count = |n: u64| progress.count(n);
    let bulk = copy::copy_bodies(src, dst, job.cursor.clone(), run.rate, &count).await?;
    job.cursor = bulk.cursor;
    save(run.data, job)?;
    crash_point("copied");
    Ok(bulk.bytes)
}

/// (2) The catch-up, still live: every other record, and the bodies the source expunged
/// meanwhile dropped at the target. The bytes copied, and the body keys the target holds now.
async fn catch_up(src: &Side, dst: &Side) -> anyhow::Result<(u64, BTreeSet<BodyKey>)> {
    let (n, live) = copy::copy_records(src, dst).await?;
    let mut held = copy::body_keys(dst).await?;
    let gone: Vec<_> = held.difference(&live).cloned().collect();
    copy::delete_bodies(dst, gone).await?;
    held.retain(|k| live.contains(k));
    crash_point("caught-up");
    Ok((n, held))
}

/// (3) Freeze the source: writes answer `Frozen`, reads are served. The job says so first, so a
/// rerun unfreezes it. When the freeze began.
async fn freeze_source(data: &Path, src: &Side, job: &mut Job) -> anyhow::Result<Instant> {
    job.step = Step::Frozen;
    save(data, job)?;
    let frozen_at = Instant::now();
    let freeze = ops::Freeze {
        target: src.target.clone(),
    };
    xfs_ok(src, freeze).await?;
    crash_point("frozen");
    Ok(frozen_at)
}

/// (4) The final delta under the freeze: the new bodies, every record, the expunged bodies
/// dropped, then both digests must match. Nothing here reads a body but the few new ones, so the
/// freeze stays short. On failure the source goes back to work. The bytes copied.
async fn final_delta(
    run: &Run<'_>,
    src: &Side,
    dst: &Side,
    job: &mut Job,
    mut held: BTreeSet<BodyKey>,
) -> anyhow::Result<u64> {
    let progress = run.progress;
    let count = |n: u64| progress.count(n);
    let finalize = async {
        let last = copy::copy_bodies(src, dst, job.cursor.clone(), run.rate, &count).await?;
        crash_point("final-bodies");
        let (m, live) = copy::copy_records(src, dst).await?;
        held.extend(last.keys.iter().cloned());
        let gone: Vec<_> = held.difference(&live).cloned().collect();
        copy::delete_bodies(dst, gone).await?;
        copy::verify(src, dst).await?;
        crash_point("verified");
        anyhow::Ok((last.cursor, last.bytes + m))
    }
    .await;
    match finalize {
        Ok((cursor, n)) => {
            job.cursor = cursor;
            Ok(n)
        }
        Err(e) => {
            back_to_copying(run.data, src, job).await?;
            Err(e)
        }
    }
}

/// (5) The commit point: compare-and-set of the placement in the index. An unknown outcome is
/// looked up; a refusal sends the source back to work. The job then says committed.
async fn commit(run: &Run<'_>, src: &Side, job: &mut Job) -> anyhow::Result<()> {
    let cas = run
        .hcu
        .mserv
        .move_user(&job.user, job.epoch, &job.to_store, job.to_segment)
        .await;
    match cas {
        Ok(_) => {}
        Err(MservError::OutcomeUnknown { .. }) => {
            let now = run.hcu.mserv.lookup_uncached(&job.user).await?;
            if !(now.store == job.to_store && now.epoch == job.epoch + 1) {
                back_to_copying(run.data, src, job).await?;
                bail!("the index did not take the move; a rerun tries again");
            }
        }
        Err(e) => {
            back_to_copying(run.data, src, job).await?;
            return Err(e).context("the index refused the move");
        }
    }
    crash_point("committed");
    job.step = Step::Committed;
    save(run.data, job)?;
    Ok(())
}

/// Not committed: the source is unfrozen (best effort) and the job goes back to copying, so a
/// rerun tries again.
async fn back_to_copying(data: &Path, src: &Side, job: &mut Job) -> anyhow::Result<()> {
    let unfreeze = ops::Unfreeze {
        target: src.target.clone(),
    };
    let _ = src.call(unfreeze).await;
    job.step = Step::Copying;
    save(data, job)
}

/// (6) The target copy goes live and the source redirects its callers (`Moved`); how long the
/// source was frozen.
async fn go_live(
    src: &Side,
    dst: &Side,
    job: &Job,
    frozen_at: Instant,
) -> anyhow::Result<Duration> {
    let finish = ops::FinishImport {
        target: dst.target.clone(),
    };
    xfs_ok(dst, finish).await?;
    crash_point("live");
    xfs_ok(src, mark_moved(src, job)).await?;
    let freeze = frozen_at.elapsed();
    crash_point("redirected");
    Ok(freeze)
}

/// (6) again, in a rerun after the commit: the target goes live and the source redirects, unless
/// an earlier run purged it already.
async fn finish_after_commit(src: &Side, dst: &Side, job: &Job) -> anyhow::Result<()> {
    let finish = ops::FinishImport {
        target: dst.target.clone(),
    };
    xfs_ok(dst, finish).await?;
    match src.call(mark_moved(src, job)).await {
        // Purged already by an earlier run.
        Ok(_) | Err(CallError::Remote(XfsError::NoSuchUser)) => Ok(()),
        Err(e) => Err(e).context("at the source"),
    }
}

/// The source's redirect to the target at the next epoch.
fn mark_moved(src: &Side, job: &Job) -> ops::MarkMoved {
    ops::MarkMoved {
        target: src.target.clone(),
        to: job.to_store.clone(),
        epoch: job.epoch + 1,
    }
}

/// The old copy waits out the grace period: the job says when it may be purged.
fn start_grace(run: &Run<'_>, job: &mut Job) -> anyhow::Result<()> {
    if job.step != Step::Moved {
        job.step = Step::Moved;
        job.purge_after_ms = now_ms() + run.opts.grace.as_millis() as u64;
        save(run.data, job)?;
    }
    Ok(())
}

/// (7) Purge the source copies of moved mailboxes whose grace period is over; how many, and how
/// many still wait.
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

/// One call that must succeed, its error naming the store.
async fn xfs_ok<C: Call>(side: &Side, call: C) -> anyhow::Result<C::Output> {
    side.call(call)
        .await
        .with_context(|| format!("at {}", side.store))
}
