//! One move: [`move_user`] runs (or continues) it, the purge after the grace period ends it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context};
use mserv_client::MservError;
use runtime::time::now_ms;
use xfs::{ops, Call, CallError, Target, XfsError};

use super::jobs::{job_path, load, pending_jobs, save};
use super::targets::{check_target, store_addr};
use super::{crash_point, Dest, Done, Job, Run, Step};
use crate::admin::Hcu;
use crate::copy::{self, Side};

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
