//! `mailctl restore`: one user's mailbox brought back into its live store, either from a backup
//! (`--from DIR`: the newest segment copy holding the user, every crc checked, streamed out by the
//! store with `RestoreMailbox`) or, without `--from`, an account soft-deleted by `gc-inactive`
//! (`Undelete` at the store that still holds it). A live user is never overwritten.

use runtime::time::now_ms;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use mserv_client::{MservError, Placement, Policy, StoreState};
use serde_json::{json, Value};
use xfs::{ops, AccountInfo, AccountState, CallError, Target, XfsError};

use super::manifest::{list_backups, FileEntry, Manifest, SegmentBackup};
use super::{backup_id, parse_as_of, pool, LONG_CALL};
use crate::admin::Hcu;
use crate::cli::{self, print};

/// Run `mailctl restore`: from the backups in `from`, or an undelete without it; print the
/// outcome.
pub async fn run(
    hcu: &Hcu,
    user: &str,
    from: Option<PathBuf>,
    as_of: Option<&str>,
    to: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let v = match from {
        Some(dir) => {
            let to = to.map(cli::placement).transpose()?;
            restore_from_backup(hcu, user, &dir, as_of, to).await?
        }
        None => undelete(hcu, user).await?,
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
    print(json_out, v, human);
    Ok(())
}

/// Build a segment's checkpoint from a backup in `into` (hard links from the pool, copies where
/// links fail), checking every file's size and crc32. Any mismatch is an error naming the file.
pub fn materialise(dir: &Path, m: &Manifest, s: &SegmentBackup, into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into)?;
    let pool_dir = pool::pool_dir(dir, &s.identity);
    let own_dir = pool::own_dir(&pool::backups_dir(dir).join(&m.id), &s.store, s.segment);
    let check = |path: &Path, f: &FileEntry| -> anyhow::Result<()> {
        let (crc, size) = pool::file_crc(path)?;
        if size != f.size || crc != f.crc32 {
            bail!(
                "crc mismatch: {} has {size} bytes with crc32 {crc:08x}, the manifest of backup {} says {} bytes with crc32 {:08x}; the backup is damaged, nothing was restored from it",
                path.display(),
                m.id,
                f.size,
                f.crc32
            );
        }
        Ok(())
    };
    for f in &s.pool_files {
        let src = pool_dir.join(&f.name);
        check(&src, f)?;
        let dst = into.join(&f.name);
        if std::fs::hard_link(&src, &dst).is_err() {
            pool::copy_with_crc(&src, &dst)?;
        }
    }
    for f in &s.own_files {
        let src = own_dir.join(&f.name);
        check(&src, f)?;
        pool::copy_with_crc(&src, &into.join(&f.name))?;
    }
    Ok(())
}

async fn account_record(
    hcu: &Hcu,
    store: &str,
    target: Target,
) -> anyhow::Result<Option<AccountInfo>> {
    let addr = hcu.store_addr(store).await?;
    match hcu.xfs.pool(&addr).run(ops::AccountRecord { target }).await {
        Ok(a) => Ok(Some(a)),
        Err(CallError::Remote(XfsError::NoSuchUser)) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("asking {store}"))),
    }
}

/// The placement `user` has in the index now, if any, with its account at the store.
async fn current(
    hcu: &Hcu,
    user: &str,
) -> anyhow::Result<Option<(Placement, Option<AccountInfo>)>> {
    match hcu.mserv.lookup_uncached(user).await {
        Ok(p) => {
            let a = account_record(hcu, &p.store, Target::new(user, p.segment, p.epoch)).await?;
            Ok(Some((p, a)))
        }
        Err(MservError::NoSuchUser) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn live_refusal(user: &str, p: &Placement, a: &AccountInfo) -> anyhow::Error {
    anyhow::anyhow!(
        "{user} is live on {} segment {} ({:?}, created {}): it was re-created or never deleted; nothing was restored. Delete it first (`mailctl user del {user}`) if the old mailbox should replace it",
        p.store,
        p.segment,
        a.state,
        backup_id(a.created_ms)
    )
}

async fn place(hcu: &Hcu, user: &str, policy: Policy) -> anyhow::Result<Placement> {
    match hcu.mserv.create_user(user, policy).await {
        Ok(p) => Ok(p),
        Err(MservError::AlreadyExists { placement }) => Ok(placement),
        Err(e) => Err(e.into()),
    }
}

/// Bring `user` back from the backups in `dir`: the newest one at or before `as_of` that holds
/// it, into the original store and segment if it takes users, else `to` or the least loaded.
pub async fn restore_from_backup(
    hcu: &Hcu,
    user: &str,
    dir: &Path,
    as_of: Option<&str>,
    to: Option<Policy>,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let user = mserv_client::normalize_user(user)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no backup directory {}", dir.display()))?;
    // A restore that stopped half-way left a placement and an importing (or no) mailbox.
    let existing = match current(hcu, &user).await? {
        Some((p, Some(a)))
            if !matches!(
                a.state,
                AccountState::Importing { .. } | AccountState::Deleted { .. }
            ) =>
        {
            return Err(live_refusal(&user, &p, &a))
        }
        Some((p, _)) => Some(p),
        None => None,
    };
    let limit = as_of.map(parse_as_of).transpose()?;
    let mut backups = list_backups(&dir)?;
    backups.retain(|m| limit.as_ref().is_none_or(|l| m.id.as_str() <= l.as_str()));
    if backups.is_empty() {
        bail!(
            "no backup in {}{}",
            dir.display(),
            limit
                .map(|l| format!(" at or before {l}"))
                .unwrap_or_default()
        );
    }
    let work = pool::restore_dir(&dir).join(format!("{}-{}", std::process::id(), now_ms()));
    let result = async {
        for m in backups.iter().rev() {
            for s in &m.segments {
                let into = work.join(format!("{}-{}-{}", m.id, s.store, s.segment));
                materialise(&dir, m, s, &into)?;
                let addr = hcu.store_addr(&s.store).await.ok();
                let addr = match addr {
                    Some(a) => a,
                    None => first_store_addr(hcu).await?,
                };
                let op = ops::BackupAccount {
                    dir: into.to_string_lossy().to_string(),
                    user: user.clone(),
                };
                let found = match hcu.xfs.pool(&addr).run_with(op, "restore", LONG_CALL).await {
                    Ok(a) => matches!(a.state, AccountState::Active | AccountState::Frozen),
                    Err(CallError::Remote(XfsError::NoSuchUser)) => false,
                    Err(e) => return Err(anyhow::Error::new(e).context("reading the backup")),
                };
                if !found {
                    std::fs::remove_dir_all(&into).ok();
                    continue;
                }
                let p = match &existing {
                    Some(p) => p.clone(),
                    None => {
                        let policy = match &to {
                            Some(p) => p.clone(),
                            None => original_or_least(hcu, &s.store, s.segment).await?,
                        };
                        place(hcu, &user, policy).await?
                    }
                };
                let target = Target::new(&user, p.segment, p.epoch);
                let op = ops::RestoreMailbox {
                    target,
                    dir: into.to_string_lossy().to_string(),
                };
                let paddr = hcu.store_addr(&p.store).await?;
                let records = match hcu
                    .xfs
                    .pool(&paddr)
                    .run_with(op, "restore", LONG_CALL)
                    .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "restoring into {} segment {} (run the same command again to retry)",
                            p.store, p.segment
                        )))
                    }
                };
                return Ok(json!({
                    "user": user, "backup": m.id, "from_store": s.store, "from_segment": s.segment,
                    "store": p.store, "segment": p.segment, "epoch": p.epoch, "records": records,
                    "ms": started.elapsed().as_millis() as u64,
                }));
            }
        }
        bail!(
            "{user} is in none of the {} backups considered in {}",
            backups.len(),
            dir.display()
        )
    }
    .await;
    std::fs::remove_dir_all(&work).ok();
    result
}

async fn first_store_addr(hcu: &Hcu) -> anyhow::Result<String> {
    hcu.endpoints
        .ustore
        .first()
        .map(|s| s.xfs.to_string())
        .context("no store to read the backup with")
}

/// The original store and segment if that store still takes users, else the least loaded.
async fn original_or_least(hcu: &Hcu, store: &str, segment: u32) -> anyhow::Result<Policy> {
    let stores = hcu.mserv.list_stores().await?;
    let ok = stores.iter().any(|s| {
        s.info.name == store
            && s.info.state == StoreState::Active
            && s.info.segments.contains(&segment)
    });
    Ok(if ok {
        Policy::Explicit {
            store: store.to_string(),
            segment,
        }
    } else {
        Policy::LeastLoaded
    })
}

/// Bring back an account deleted by `gc-inactive --apply` (still within the retention period):
/// the store that holds it marks it active and the index places it there again.
pub async fn undelete(hcu: &Hcu, user: &str) -> anyhow::Result<Value> {
    let user = mserv_client::normalize_user(user)?;
    // A placement already there: either a re-created user (refuse) or a half-done undelete.
    if let Some((p, a)) = current(hcu, &user).await? {
        match a {
            Some(a) if matches!(a.state, AccountState::Deleted { .. }) => {
                return finish_undelete(hcu, &user, p).await
            }
            Some(a) => return Err(live_refusal(&user, &p, &a)),
            None => bail!(
                "{user} is placed on {} segment {} but has no mailbox there; nothing was restored",
                p.store,
                p.segment
            ),
        }
    }
    let mut found: Option<(String, u32, u64)> = None;
    for s in hcu.mserv.list_stores().await? {
        for &seg in &s.info.segments {
            let a = account_record(hcu, &s.info.name, Target::new(&user, seg, 0)).await?;
            if let Some(AccountInfo {
                state: AccountState::Deleted { at_ms },
                ..
            }) = a
            {
                if found.as_ref().is_none_or(|f| f.2 < at_ms) {
                    found = Some((s.info.name.clone(), seg, at_ms));
                }
            }
        }
    }
    let Some((store, segment, _)) = found else {
        bail!("no store holds a deleted account {user} (purged after its retention period?); restore it from a backup with --from DIR")
    };
    let p = hcu
        .mserv
        .create_user(
            &user,
            Policy::Explicit {
                store: store.clone(),
                segment,
            },
        )
        .await
        .with_context(|| format!("placing {user} on {store} segment {segment} again"))?;
    finish_undelete(hcu, &user, p).await
}

async fn finish_undelete(hcu: &Hcu, user: &str, p: Placement) -> anyhow::Result<Value> {
    let addr = hcu.store_addr(&p.store).await?;
    let op = ops::Undelete {
        target: Target::new(user, p.segment, p.epoch),
    };
    hcu.xfs
        .pool(&addr)
        .run(op)
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| format!("undeleting {user} on {}", p.store))?;
    Ok(
        json!({"user": user, "store": p.store, "segment": p.segment, "epoch": p.epoch, "undeleted": true}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::tests::one_segment;

    /// A backup `20261122T000000Z` in `dir` of one segment with one pool and one own file.
    fn one_backup(dir: &Path) -> Manifest {
        let id = "20261122T000000Z";
        let pool_dir = pool::pool_dir(dir, "abc");
        let own_dir = pool::own_dir(&pool::backups_dir(dir).join(id), "store-1", 0);
        std::fs::create_dir_all(&pool_dir).unwrap();
        std::fs::create_dir_all(&own_dir).unwrap();
        let entry = |path: PathBuf, bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            FileEntry {
                name: path.file_name().unwrap().to_string_lossy().into(),
                size: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
            }
        };
        one_segment(
            id,
            entry(pool_dir.join("000012.sst"), b"table bytes"),
            entry(own_dir.join("CURRENT"), b"MANIFEST-000005\n"),
        )
    }

    #[test]
    fn a_segment_is_materialised_from_the_pool_and_its_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let m = one_backup(tmp.path());
        let into = tmp.path().join("restore").join("x");
        materialise(tmp.path(), &m, &m.segments[0], &into).unwrap();
        assert_eq!(
            std::fs::read(into.join("000012.sst")).unwrap(),
            b"table bytes"
        );
        assert_eq!(
            std::fs::read(into.join("CURRENT")).unwrap(),
            b"MANIFEST-000005\n"
        );
    }

    #[test]
    fn a_damaged_file_is_named_and_nothing_is_restored_from_it() {
        let tmp = tempfile::tempdir().unwrap();
        let m = one_backup(tmp.path());
        let table = pool::pool_dir(tmp.path(), "abc").join("000012.sst");
        std::fs::write(&table, b"table bytez").unwrap();
        let into = tmp.path().join("restore").join("x");
        let err = materialise(tmp.path(), &m, &m.segments[0], &into)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crc mismatch") && err.contains("000012.sst"),
            "{err}"
        );
        assert!(!into.join("000012.sst").exists());
        // A missing file is an error too.
        std::fs::remove_file(&table).unwrap();
        assert!(materialise(tmp.path(), &m, &m.segments[0], &into).is_err());
    }
}
