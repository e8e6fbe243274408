//! `mailctl backup`: a checkpoint of every segment (the stores keep serving), its immutable files
//! put in the pool unless they are there already, its small files and manifest in a new backup
//! directory renamed into place once complete.

use runtime::time::now_ms;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use xfs::ops;

use super::manifest::{list_backups, FileEntry, Manifest, SegmentBackup};
use super::{backup_id, pool, LONG_CALL};
use crate::admin::Hcu;
use crate::cli::print;

/// What earlier backups know of the pool: (identity, name, size) → crc32.
type Known = HashMap<(String, String, u64), u32>;

/// Run `mailctl backup`: back up every store (or `only`) into `dir`; print the report.
pub async fn run(hcu: &Hcu, only: Option<&str>, dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let v = backup(hcu, only, dir).await?;
    let human = backup_table(&v);
    print(json_out, v, human);
    Ok(())
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
    let mut known = Known::new();
    for m in list_backups(&dir)? {
        for s in m.segments {
            for f in s.pool_files {
                known.insert((s.identity.clone(), f.name, f.size), f.crc32);
            }
        }
    }
    let mut id = backup_id(now_ms());
    while pool::backups_dir(&dir).join(&id).exists() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        id = backup_id(now_ms());
    }
    let tmp = pool::unfinished_dir(&dir, &id);
    let staging = pool::staging_dir(&dir, &id);
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
        let mpath = tmp.join(pool::MANIFEST);
        let mut f = File::create(&mpath)?;
        f.write_all(&text)?;
        f.sync_all()?;
        pool::sync_dir(&tmp);
        let done = pool::backups_dir(&dir).join(&id);
        std::fs::rename(&tmp, &done)
            .with_context(|| format!("renaming {} to {}", tmp.display(), done.display()))?;
        pool::sync_dir(&pool::backups_dir(&dir));
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
    known: &mut Known,
    started: Instant,
) -> anyhow::Result<(SegmentBackup, SegmentReport)> {
    let identity = std::fs::read_to_string(cp.join("IDENTITY"))
        .with_context(|| format!("reading the IDENTITY of {}", cp.display()))?
        .trim()
        .to_string();
    if identity.is_empty() || identity.contains(['/', '\\', '.']) {
        bail!("checkpoint {} has an unusable IDENTITY", cp.display());
    }
    let pool_dir = pool::pool_dir(dir, &identity);
    let own_dir = pool::own_dir(tmp, store, seg);
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
        if pool::is_pool_file(&name) {
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
                    None => pool::file_crc(&dst)?.0,
                }
            } else {
                let (crc, n) = pool::copy_with_crc(&src, &dst)?;
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
            let (crc, n) = pool::copy_with_crc(&src, &own_dir.join(&name))?;
            rep.own.0 += 1;
            rep.own.1 += n;
            sb.own_files.push(FileEntry {
                name,
                size: n,
                crc32: crc,
            });
        }
    }
    pool::sync_dir(&pool_dir);
    pool::sync_dir(&own_dir);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lines_up_under_its_headers() {
        let v = json!({"id": "20261122T000000Z", "dir": "/bk",
            "segments": [{"store": "store-1", "segment": 1, "files_copied": 3,
                "bytes_copied": 4096, "files_reused": 2, "bytes_reused": 100, "ms": 7}],
            "files_copied": 3, "bytes_copied": 4096, "files_reused": 2, "bytes_reused": 100,
            "ms": 9});
        let text = backup_table(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "backup 20261122T000000Z in /bk");
        assert_eq!(
            lines[1],
            "STORE      SEG   COPIED        BYTES   REUSED        BYTES       MS"
        );
        assert_eq!(
            lines[2],
            "store-1      1        3         4096        2          100        7"
        );
        assert_eq!(
            lines[3],
            "OK 3 files (4096 bytes) copied, 2 files (100 bytes) reused, 9 ms"
        );
    }
}
