//! What the HCU itself says before and after the measured window: every process's CPU time
//! (`/proc/<pid>/stat`), its `/metrics`, the stores' own statistics (`StoreStats`: synced
//! batches, WAL syncs, bytes on disk per segment), and this machine's fsync rate and disk size.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use operator::admin::Hcu;
use operator::endpoints::Endpoints;
use xfs::{ops, StoreStats};

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One process as `mailctl status` sees it, with its CPU seconds so far.
#[derive(Debug, Clone)]
pub struct ProcCpu {
    pub name: String,
    pub role: String,
    pub pid: u64,
    pub cpu_secs: f64,
}

/// Everything read at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub procs: Vec<ProcCpu>,
    /// This process's own CPU seconds.
    pub self_cpu_secs: f64,
    /// Per process name: its `/metrics` samples (`name{labels}` → value).
    pub metrics: BTreeMap<String, Vec<(String, f64)>>,
    pub stores: Vec<StoreStats>,
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// CPU seconds (user + system) used so far by the process `pid` ("self" for this one).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) close with ')'.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / clock_tick())
}

/// The samples of a Prometheus text page (comments skipped), kept.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    runtime::metrics::samples(text)
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

/// Sum of the samples named `name` whose labels contain every `key="value"` of `labels`.
pub fn sum(samples: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, _)| {
            let (base, rest) = match n.split_once('{') {
                Some((b, r)) => (b, r),
                None => (n.as_str(), ""),
            };
            base == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The value of label `key` in a sample name such as `x{op="fetch",outcome="ok"}`.
pub fn label<'a>(sample: &'a str, key: &str) -> Option<&'a str> {
    let rest = sample.split_once('{')?.1;
    let start = rest.find(&format!("{key}=\""))? + key.len() + 2;
    let len = rest[start..].find('"')?;
    Some(&rest[start..start + len])
}

async fn scrape(admin: std::net::SocketAddr, name: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let a = runtime::http_client::get(admin, "/metrics", SCRAPE_TIMEOUT)
        .await
        .with_context(|| format!("scraping {name}'s /metrics"))?;
    if a.status != 200 {
        bail!("{name}'s /metrics answered {}", a.status);
    }
    Ok(parse_metrics(&String::from_utf8_lossy(&a.body)))
}

/// Each store's own statistics, over XFS.
pub async fn store_stats(hcu: &Hcu) -> anyhow::Result<Vec<StoreStats>> {
    let mut out = Vec::new();
    for s in &hcu.endpoints.ustore {
        let st = hcu
            .xfs
            .pool(&s.xfs.to_string())
            .run(ops::StoreStats {})
            .await
            .with_context(|| format!("{}: StoreStats", s.name))?;
        out.push(st);
    }
    Ok(out)
}

/// Read every process's CPU time and metrics, and the stores' statistics.
pub async fn snapshot(hcu: &Hcu) -> anyhow::Result<Snapshot> {
    let e = &hcu.endpoints;
    let mut procs = Vec::new();
    for row in operator::status::collect(e).await {
        let (Some(name), Some(role), Some(pid)) = (
            row["name"].as_str(),
            row["role"].as_str(),
            row["pid"].as_u64(),
        ) else {
            continue;
        };
        if let Some(cpu) = cpu_secs(&pid.to_string()) {
            procs.push(ProcCpu {
                name: name.to_string(),
                role: role.to_string(),
                pid,
                cpu_secs: cpu,
            });
        }
    }
    let mut metrics = BTreeMap::new();
    for p in &e.processes {
        metrics.insert(p.name.clone(), scrape(p.admin, &p.name).await?);
    }
    Ok(Snapshot {
        at: Instant::now(),
        procs,
        self_cpu_secs: cpu_secs("self").unwrap_or(0.0),
        metrics,
        stores: store_stats(hcu).await?,
    })
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub secs: f64,
    /// CPU seconds per role (processes that restarted in between are left out and named).
    pub cpu_by_role: BTreeMap<String, f64>,
    pub restarted: Vec<String>,
    pub self_cpu_secs: f64,
    /// Per role: the summed growth of every sample.
    pub metrics_by_role: BTreeMap<String, Vec<(String, f64)>>,
    pub wal_syncs: f64,
    pub sync_writes: f64,
    pub bytes_written: f64,
    pub block_cache_misses: f64,
    pub block_cache_hits: f64,
}

impl Delta {
    pub fn between(e: &Endpoints, a: &Snapshot, b: &Snapshot) -> Delta {
        let mut d = Delta {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            self_cpu_secs: b.self_cpu_secs - a.self_cpu_secs,
            ..Default::default()
        };
        for pb in &b.procs {
            match a.procs.iter().find(|pa| pa.name == pb.name) {
                Some(pa) if pa.pid == pb.pid => {
                    *d.cpu_by_role.entry(pb.role.clone()).or_default() += pb.cpu_secs - pa.cpu_secs;
                }
                _ => d.restarted.push(pb.name.clone()),
            }
        }
        for p in &e.processes {
            let (Some(ma), Some(mb)) = (a.metrics.get(&p.name), b.metrics.get(&p.name)) else {
                continue;
            };
            let before: BTreeMap<&str, f64> = ma.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let role = d.metrics_by_role.entry(p.role.clone()).or_default();
            for (n, v) in mb {
                let grown = v - before.get(n.as_str()).copied().unwrap_or(0.0);
                match role.iter_mut().find(|(rn, _)| rn == n) {
                    Some((_, x)) => *x += grown,
                    None => role.push((n.clone(), grown)),
                }
            }
        }
        for sb in &b.stores {
            if let Some(sa) = a.stores.iter().find(|s| s.store == sb.store) {
                let g = |x: u64, y: u64| y.saturating_sub(x) as f64;
                d.wal_syncs += g(sa.wal_syncs, sb.wal_syncs);
                d.sync_writes += g(sa.sync_writes, sb.sync_writes);
                d.bytes_written += g(sa.bytes_written, sb.bytes_written);
                d.block_cache_misses += g(sa.block_cache_misses, sb.block_cache_misses);
                d.block_cache_hits += g(sa.block_cache_hits, sb.block_cache_hits);
            }
        }
        d
    }

    pub fn cpu(&self, role: &str) -> f64 {
        self.cpu_by_role.get(role).copied().unwrap_or(0.0)
    }

    /// The growth of `name` (with `labels`) summed over the processes of `role`.
    pub fn metric(&self, role: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics_by_role
            .get(role)
            .map(|s| sum(s, name, labels))
            .unwrap_or(0.0)
    }

    /// Per value of `key`: the growth of `name` over the processes of `role`.
    pub fn by_label(&self, role: &str, name: &str, key: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, v) in self.metrics_by_role.get(role).into_iter().flatten() {
            if n.split_once('{').map(|x| x.0) == Some(name) {
                if let Some(l) = label(n, key) {
                    *out.entry(l.to_string()).or_default() += v;
                }
            }
        }
        out
    }
}

/// Bytes on disk of every store segment.
pub fn disk_bytes(stores: &[StoreStats]) -> u64 {
    stores
        .iter()
        .flat_map(|s| s.segments.iter())
        .map(|s| s.disk_bytes)
        .sum()
}

/// Make every segment flush its memtables, so what the WAL held is in table and blob files:
/// an online checkpoint (RocksDB flushes before it links the files) into a directory beside the
/// HCU's data, removed again at once.
pub async fn flush_stores(hcu: &Hcu) -> anyhow::Result<()> {
    let base = hcu
        .endpoints
        .data_dir
        .join(format!("loadgen-flush-{}", std::process::id()));
    for s in &hcu.endpoints.ustore {
        for seg in &s.segments {
            let dir = base.join(format!("{}-{seg}", s.name));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&base)
                .with_context(|| format!("creating {}", base.display()))?;
            let op = ops::Checkpoint {
                segment: *seg,
                dir: dir.display().to_string(),
            };
            let r = hcu.xfs.pool(&s.xfs.to_string()).run(op).await;
            let _ = std::fs::remove_dir_all(&dir);
            r.with_context(|| format!("{} segment {seg}: checkpoint", s.name))?;
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Bytes of mail the given users hold, summed over their folders (the stores' own counts).
pub async fn stored_bytes(hcu: &Hcu, users: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for user in users {
        let p = hcu
            .mserv
            .lookup_uncached(user)
            .await
            .with_context(|| format!("looking up {user}"))?;
        let addr = match hcu.endpoints.store(&p.store) {
            Some(s) => s.xfs.to_string(),
            None => hcu.store_addr(&p.store).await?,
        };
        let op = ops::ListFolders {
            target: xfs::Target::new(user, p.segment, p.epoch),
        };
        let folders = hcu
            .xfs
            .pool(&addr)
            .run(op)
            .await
            .with_context(|| format!("{user}: ListFolders"))?;
        total += folders.iter().map(|f| f.bytes).sum::<u64>();
    }
    Ok(total)
}

/// Synced 4 KiB writes per second one thread gets in `dir` for `secs` (the rate a store's WAL
/// could be synced at when every sync waits for the one before).
pub fn fsync_rate(dir: &Path, secs: f64) -> anyhow::Result<f64> {
    use std::io::{Seek, Write};
    let path = dir.join(format!("loadgen-fsync-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    let r = (|| -> std::io::Result<()> {
        while started.elapsed().as_secs_f64() < secs {
            f.seek(std::io::SeekFrom::Start((n % 256) * 4096))?;
            f.write_all(&block)?;
            f.sync_data()?;
            n += 1;
        }
        Ok(())
    })();
    let took = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    r.with_context(|| format!("syncing writes to {}", path.display()))?;
    Ok(n as f64 / took.max(1e-9))
}

/// Size in bytes of the file system holding `dir`.
pub fn filesystem_bytes(dir: &Path) -> anyhow::Result<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        bail!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_blocks as f64 * st.f_frsize as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_label() {
        let s = parse_metrics(
            "# HELP x y\nustore_requests_total{op=\"fetch\",outcome=\"ok\"} 5\n\
             ustore_requests_total{op=\"deliver\",outcome=\"ok\"} 3\n\
             ustore_requests_total{op=\"deliver\",outcome=\"busy\"} 1\nustore_sync_writes_total 9\n\
             ustore_requests_total_other 100\n",
        );
        assert_eq!(sum(&s, "ustore_requests_total", &[]), 9.0);
        assert_eq!(sum(&s, "ustore_requests_total", &[("op", "deliver")]), 4.0);
        assert_eq!(sum(&s, "ustore_sync_writes_total", &[]), 9.0);
        assert_eq!(label(&s[0].0, "op"), Some("fetch"));
        assert_eq!(label(&s[2].0, "outcome"), Some("busy"));
        assert_eq!(label("plain", "op"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let before = cpu_secs("self").unwrap();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_secs("self").unwrap() >= before);
        assert!(filesystem_bytes(Path::new("/")).unwrap() > 0.0);
    }
}
