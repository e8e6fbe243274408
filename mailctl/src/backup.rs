//! `mailctl backup` and `mailctl restore`: online checkpoints of every segment kept in a pool of
//! immutable files, and one mailbox brought back into its live store.
//!
//! Layout of a backup directory:
//! - `files/<db identity>/<name>`: the immutable RocksDB files (`*.sst`, `*.blob`). RocksDB never
//!   reuses a file number inside one database, so identity + name + size names one content: a
//!   later backup copies only the files not there yet.
//! - `backups/<id>/` (id = UTC `YYYYMMDDTHHMMSSZ`): `manifest.json` (every segment's store,
//!   segment, identity, and each file with its size and crc32) and the small mutable files
//!   (MANIFEST-*, CURRENT, OPTIONS-*, WAL) under `<store>/<segment>/`. A backup is written as
//!   `backups/<id>.tmp/` and renamed when complete, so a crash leaves no half backup behind.
//!
//! The store writes its checkpoint into `staging/` and mailctl reads it: the backup directory
//! must be on the store's machine (one machine in a local HCU; in production, run the backup on
//! each store's host). A restore materialises one segment (hard links from the pool, copies
//! otherwise; every crc checked) and asks the live store to stream the mailbox out of it
//! (`RestoreMailbox`): the store owns mailboxes on disk, mailctl never opens RocksDB itself.

use runtime::time::civil_date;
use runtime::time::now_ms;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mserv_client::{MservError, Placement, Policy, StoreState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use xfs::{ops, AccountInfo, AccountState, CallError, Target, XfsError};

use crate::admin::Hcu;

/// How long a store may take over a checkpoint or a whole-mailbox restore.
const LONG_CALL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentBackup {
    pub store: String,
    pub segment: u32,
    /// The database's IDENTITY: the pool directory of its immutable files.
    pub identity: String,
    /// Immutable files, kept in `files/<identity>/`.
    pub pool_files: Vec<FileEntry>,
    /// Small mutable files, kept in this backup's `<store>/<segment>/`.
    pub own_files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub created_ms: u64,
    pub version: String,
    pub segments: Vec<SegmentBackup>,
}

impl Manifest {
    /// Every name the manifest joins to a path must stay inside the backup directory: a damaged
    /// or altered manifest must not make a restore read (or link) files elsewhere.
    fn check_names(&self) -> anyhow::Result<()> {
        let plain = |name: &str| {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
        };
        let mut names = vec![self.id.as_str()];
        for s in &self.segments {
            names.extend([s.store.as_str(), s.identity.as_str()]);
            names.extend(
                s.pool_files
                    .iter()
                    .chain(&s.own_files)
                    .map(|f| f.name.as_str()),
            );
        }
        match names.into_iter().find(|n| !plain(n)) {
            Some(bad) => bail!(
                "the manifest of backup {} names {bad:?}, which is not a plain file name",
                self.id
            ),
            None => Ok(()),
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in milliseconds (UTC).
pub fn backup_id(ms: u64) -> String {
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (y, m, d) = civil_date(secs / 86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A `--as-of` value as a comparable backup id: a backup id, or an RFC 3339 UTC time
/// (`2026-11-22T19:30:00Z`), or a date alone (the end of that day).
pub fn parse_as_of(s: &str) -> anyhow::Result<String> {
    let compact: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    let ok_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if compact.len() == 8 && ok_digits(&compact) {
        return Ok(format!("{compact}T235959Z"));
    }
    let compact = compact.trim_end_matches('Z');
    let compact = compact.split('.').next().unwrap_or("");
    match compact.split_once('T') {
        Some((d, t)) if d.len() == 8 && t.len() == 6 && ok_digits(d) && ok_digits(t) => {
            Ok(format!("{d}T{t}Z"))
        }
        _ => bail!(
            "--as-of `{s}` is neither a backup id (20261122T193000Z) nor a UTC time (2026-11-22T19:30:00Z)"
        ),
    }
}

fn is_pool_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// Copy `from` to `to` (through `to.tmp`, fsynced, renamed); the crc32 and size of the bytes.
fn copy_with_crc(from: &Path, to: &Path) -> anyhow::Result<(u32, u64)> {
    let tmp = to.with_extension("copying");
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = src
            .read(&mut buf)
            .with_context(|| format!("reading {}", from.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        dst.write_all(&buf[..k])
            .with_context(|| format!("writing {}", tmp.display()))?;
        n += k as u64;
    }
    dst.sync_all()?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))?;
    Ok((h.finalize(), n))
}

fn file_crc(path: &Path) -> anyhow::Result<(u32, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            return Ok((h.finalize(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The complete backups under `dir`, oldest first.
pub fn list_backups(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let root = dir.join("backups");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            continue;
        }
        let path = e.path().join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        m.check_names()
            .with_context(|| format!("checking {}", path.display()))?;
        out.push(m);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// What one segment's backup cost.
struct SegmentReport {
    store: String,
    segment: u32,
    copied: (u64, u64),
    reused: (u64, u64),
    own: (u64, u64),
    ms: u64,
}

/// Back up every segment of every store (or of `only`) into `dir`.
pub async fn backup(hcu: &Hcu, only: Option<&str>, dir: &Path) -> anyhow::Result<Value> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let stores: Vec<_> = hcu
        .mserv
        .list_stores()
        .await?
        .into_iter()
        .map(|s| s.info)
        .filter(|s| only.is_none_or(|o| o == s.name))
        .collect();
    if stores.is_empty() {
        bail!("no store named {}", only.unwrap_or("?"));
    }
    // What earlier backups know of the pool: (identity, name, size) → crc32.
    let mut known: HashMap<(String, String, u64), u32> = HashMap::new();
    for m in list_backups(&dir)? {
        for s in m.segments {
            for f in s.pool_files {
                known.insert((s.identity.clone(), f.name, f.size), f.crc32);
            }
        }
    }
    let mut id = backup_id(now_ms());
    while dir.join("backups").join(&id).exists() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        id = backup_id(now_ms());
    }
    let tmp = dir.join("backups").join(format!("{id}.tmp"));
    let staging = dir.join("staging").join(&id);
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&staging)?;
    let mut manifest = Manifest {
        id: id.clone(),
        created_ms: now_ms(),
        version: runtime::VERSION.to_string(),
        segments: Vec::new(),
    };
    let mut reports = Vec::new();
    let result: anyhow::Result<()> = async {
        for store in &stores {
            let pool = hcu.xfs.pool(&store.xfs_addr);
            for &seg in &store.segments {
                let t = Instant::now();
                let cp = staging.join(format!("{}-{seg}", store.name));
                let op = ops::Checkpoint {
                    segment: seg,
                    dir: cp.to_string_lossy().to_string(),
                };
                pool.run_with(op, "backup", LONG_CALL)
                    .await
                    .with_context(|| format!("checkpoint of {} segment {seg}", store.name))?;
                let (sb, rep) = copy_segment(&dir, &tmp, &cp, &store.name, seg, &mut known, t)?;
                std::fs::remove_dir_all(&cp).ok();
                manifest.segments.push(sb);
                reports.push(rep);
            }
        }
        let text = serde_json::to_vec_pretty(&manifest)?;
        let mpath = tmp.join("manifest.json");
        let mut f = File::create(&mpath)?;
        f.write_all(&text)?;
        f.sync_all()?;
        sync_dir(&tmp);
        let done = dir.join("backups").join(&id);
        std::fs::rename(&tmp, &done)
            .with_context(|| format!("renaming {} to {}", tmp.display(), done.display()))?;
        sync_dir(&dir.join("backups"));
        Ok(())
    }
    .await;
    std::fs::remove_dir_all(&staging).ok();
    if let Err(e) = result {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }
    let rows: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({"store": r.store, "segment": r.segment,
                "files_copied": r.copied.0, "bytes_copied": r.copied.1,
                "files_reused": r.reused.0, "bytes_reused": r.reused.1,
                "small_files": r.own.0, "small_bytes": r.own.1, "ms": r.ms})
        })
        .collect();
    let sum = |f: fn(&SegmentReport) -> u64| reports.iter().map(f).sum::<u64>();
    Ok(json!({
        "id": id,
        "dir": dir.display().to_string(),
        "segments": rows,
        "files_copied": sum(|r| r.copied.0),
        "bytes_copied": sum(|r| r.copied.1),
        "files_reused": sum(|r| r.reused.0),
        "bytes_reused": sum(|r| r.reused.1),
        "ms": started.elapsed().as_millis() as u64,
    }))
}

/// Put one checkpoint's files in the pool and the backup's own directory.
fn copy_segment(
    dir: &Path,
    tmp: &Path,
    cp: &Path,
    store: &str,
    seg: u32,
    known: &mut HashMap<(String, String, u64), u32>,
    started: Instant,
) -> anyhow::Result<(SegmentBackup, SegmentReport)> {
    let identity = std::fs::read_to_string(cp.join("IDENTITY"))
        .with_context(|| format!("reading the IDENTITY of {}", cp.display()))?
        .trim()
        .to_string();
    if identity.is_empty() || identity.contains(['/', '\\', '.']) {
        bail!("checkpoint {} has an unusable IDENTITY", cp.display());
    }
    let pool_dir = dir.join("files").join(&identity);
    let own_dir = tmp.join(store).join(seg.to_string());
    std::fs::create_dir_all(&pool_dir)?;
    std::fs::create_dir_all(&own_dir)?;
    let mut sb = SegmentBackup {
        store: store.to_string(),
        segment: seg,
        identity: identity.clone(),
        pool_files: Vec::new(),
        own_files: Vec::new(),
    };
    let mut rep = SegmentReport {
        store: store.to_string(),
        segment: seg,
        copied: (0, 0),
        reused: (0, 0),
        own: (0, 0),
        ms: 0,
    };
    let mut names: Vec<(String, u64)> = Vec::new();
    for e in std::fs::read_dir(cp)? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() {
            names.push((e.file_name().to_string_lossy().to_string(), meta.len()));
        }
    }
    names.sort();
    for (name, size) in names {
        let src = cp.join(&name);
        if is_pool_file(&name) {
            let dst = pool_dir.join(&name);
            let key = (identity.clone(), name.clone(), size);
            let present = std::fs::metadata(&dst)
                .map(|m| m.len() == size)
                .unwrap_or(false);
            let crc = if present {
                rep.reused.0 += 1;
                rep.reused.1 += size;
                match known.get(&key) {
                    Some(c) => *c,
                    None => file_crc(&dst)?.0,
                }
            } else {
                let (crc, n) = copy_with_crc(&src, &dst)?;
                if n != size {
                    bail!("{} changed while it was copied", src.display());
                }
                rep.copied.0 += 1;
                rep.copied.1 += size;
                crc
            };
            known.insert(key, crc);
            sb.pool_files.push(FileEntry {
                name,
                size,
                crc32: crc,
            });
        } else {
            let (crc, n) = copy_with_crc(&src, &own_dir.join(&name))?;
            rep.own.0 += 1;
            rep.own.1 += n;
            sb.own_files.push(FileEntry {
                name,
                size: n,
                crc32: crc,
            });
        }
    }
    sync_dir(&pool_dir);
    sync_dir(&own_dir);
    rep.ms = started.elapsed().as_millis() as u64;
    Ok((sb, rep))
}

/// Human lines for a backup's report.
pub fn backup_table(v: &Value) -> String {
    let mut out = format!(
        "backup {} in {}\n{:<10} {:>3} {:>8} {:>12} {:>8} {:>12} {:>8}",
        v["id"].as_str().unwrap_or(""),
        v["dir"].as_str().unwrap_or(""),
        "STORE",
        "SEG",
        "COPIED",
        "BYTES",
        "REUSED",
        "BYTES",
        "MS"
    );
    for r in v["segments"].as_array().into_iter().flatten() {
        // Numbers as integers: a JSON value ignores the column widths.
        let n = |key: &str| r[key].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "\n{:<10} {:>3} {:>8} {:>12} {:>8} {:>12} {:>8}",
            r["store"].as_str().unwrap_or(""),
            n("segment"),
            n("files_copied"),
            n("bytes_copied"),
            n("files_reused"),
            n("bytes_reused"),
            n("ms")
        ));
    }
    out.push_str(&format!(
        "\nOK {} files ({} bytes) copied, {} files ({} bytes) reused, {} ms",
        v["files_copied"], v["bytes_copied"], v["files_reused"], v["bytes_reused"], v["ms"]
    ));
    out
}

/// Build a segment's checkpoint from a backup in `into` (hard links from the pool, copies where
/// links fail), checking every file's size and crc32. Any mismatch is an error naming the file.
pub fn materialise(dir: &Path, m: &Manifest, s: &SegmentBackup, into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into)?;
    let pool_dir = dir.join("files").join(&s.identity);
    let own_dir = dir
        .join("backups")
        .join(&m.id)
        .join(&s.store)
        .join(s.segment.to_string());
    let check = |path: &Path, f: &FileEntry| -> anyhow::Result<()> {
        let (crc, size) = file_crc(path)?;
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
            copy_with_crc(&src, &dst)?;
        }
    }
    for f in &s.own_files {
        let src = own_dir.join(&f.name);
        check(&src, f)?;
        copy_with_crc(&src, &into.join(&f.name))?;
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
    let work = dir
        .join("restore")
        .join(format!("{}-{}", std::process::id(), now_ms()));
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

    #[test]
    fn a_manifest_naming_paths_outside_the_backup_is_refused() {
        let file = |name: &str| FileEntry {
            name: name.into(),
            size: 1,
            crc32: 0,
        };
        let manifest = |name: &str| Manifest {
            id: "20261122T000000Z".into(),
            created_ms: 0,
            version: "0".into(),
            segments: vec![SegmentBackup {
                store: "store-1".into(),
                segment: 0,
                identity: "abc".into(),
                pool_files: vec![file("000012.sst")],
                own_files: vec![file(name)],
            }],
        };
        assert!(manifest("CURRENT").check_names().is_ok());
        for bad in ["../../etc/passwd", "a/b", "..", ""] {
            let err = manifest(bad).check_names().unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad}: {err}");
        }
    }

    #[test]
    fn backup_ids_are_utc_and_as_of_accepts_ids_and_times() {
        assert_eq!(backup_id(0), "19700101T000000Z");
        assert_eq!(backup_id(1_795_376_096_000), "20261122T193456Z");
        assert_eq!(backup_id(951_782_400_000), "20000229T000000Z");
        assert_eq!(parse_as_of("20261122T192456Z").unwrap(), "20261122T192456Z");
        assert_eq!(
            parse_as_of("2026-11-22T19:24:56Z").unwrap(),
            "20261122T192456Z"
        );
        assert_eq!(
            parse_as_of("2026-11-22T19:24:56.250Z").unwrap(),
            "20261122T192456Z"
        );
        assert_eq!(parse_as_of("2026-11-22").unwrap(), "20261122T235959Z");
        assert!(parse_as_of("yesterday").is_err());
        assert!(parse_as_of("2026-11-22T19:24").is_err());
    }
}
