//! A store: the segments it serves, and the dispatch of one XFS operation to the right one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rocksdb::statistics::Ticker;
use runtime::admission::Admission;
use runtime::faults::Faults;
use xfs::{Op, Reply, StoreStats, Target, XfsError};

use crate::segment::{Segment, SegmentOptions};

pub struct Store {
    name: String,
    segments: BTreeMap<u32, Arc<Segment>>,
    admission: Arc<Admission>,
}

impl Store {
    /// Open every configured segment.
    pub fn open(
        name: &str,
        segments: &[(u32, &Path)],
        so: &SegmentOptions,
        admission: Arc<Admission>,
        faults: Arc<Faults>,
    ) -> anyhow::Result<Store> {
        let mut map = BTreeMap::new();
        for (id, path) in segments {
            std::fs::create_dir_all(path)
                .map_err(|e| anyhow::anyhow!("creating segment {id} at {}: {e}", path.display()))?;
            let seg = Segment::open(*id, path, so, faults.clone())
                .map_err(|e| anyhow::anyhow!("opening segment {id} at {}: {e}", path.display()))?;
            let seg = Arc::new(seg);
            crate::metrics::BLOCK_CACHE.watch(&seg);
            map.insert(*id, seg);
        }
        Ok(Store {
            name: name.to_string(),
            segments: map,
            admission,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn segment_ids(&self) -> Vec<u32> {
        self.segments.keys().copied().collect()
    }

    pub fn segment(&self, id: u32) -> Result<&Arc<Segment>, XfsError> {
        self.segments.get(&id).ok_or_else(|| XfsError::BadRequest {
            why: format!("segment {id} is not served by store {}", self.name),
        })
    }

    /// Run one operation. Blocking: call from a blocking thread.
    pub fn execute(&self, op: Op) -> Result<Reply, XfsError> {
        match op {
            Op::Ping => Ok(Reply::Pong),
            Op::StoreStats => Ok(Reply::StoreStats(self.stats())),
            Op::Checkpoint { segment, dir } => {
                self.segment(segment)?.checkpoint(Path::new(&dir))?;
                Ok(Reply::Done)
            }
            Op::ListAccounts {
                segment,
                after,
                limit,
            } => Ok(Reply::Accounts(
                self.segment(segment)?
                    .list_accounts(after.as_deref(), limit)?,
            )),
            Op::LeaseQueue {
                worker,
                max,
                lease_ms,
            } => {
                let mut leases = Vec::new();
                for seg in self.segments.values() {
                    let left = max.saturating_sub(leases.len() as u32);
                    if left == 0 {
                        break;
                    }
                    leases.extend(seg.lease_queue(&worker, left, lease_ms)?);
                }
                Ok(Reply::Leases(leases))
            }
            Op::ListQueue {
                segment,
                after,
                limit,
            } => Ok(Reply::Queue(
                self.segment(segment)?.list_queue(after, limit)?,
            )),
            Op::BackupAccount { dir, user } => {
                crate::segment::backup_account(Path::new(&dir), &user)
            }
            op => {
                let Some(t) = op.target() else {
                    return Err(XfsError::BadRequest {
                        why: format!("{} names no mailbox", op.name()),
                    });
                };
                let seg = self.segment(t.segment)?;
                seg.execute(op)
            }
        }
    }

    /// `Ok` when a session of `target.user` at generation `gen` with id `sid` may act on the
    /// mailbox (see `Segment::check_session`). Blocking.
    pub fn check_session(&self, target: &Target, gen: u64, sid: &str) -> Result<(), XfsError> {
        crate::segment::validate_user(&target.user)?;
        self.segment(target.segment)?
            .check_session(&target.user, gen, sid)
    }

    pub fn stats(&self) -> StoreStats {
        let sum = |t: Ticker| self.segments.values().map(|s| s.ticker(t)).sum::<u64>();
        StoreStats {
            store: self.name.clone(),
            segments: self.segments.values().map(|s| s.stats()).collect(),
            in_flight: self.admission.in_flight() as u64,
            max_in_flight: self.admission.max_in_flight() as u64,
            shed_total: self.admission.shed_total(),
            sync_writes: crate::metrics::SYNC_WRITES.get(),
            wal_syncs: sum(Ticker::WalFileSynced),
            bytes_written: sum(Ticker::BytesWritten),
            block_cache_hits: sum(Ticker::BlockCacheHit),
            block_cache_misses: sum(Ticker::BlockCacheMiss),
        }
    }

    /// Purge the accounts of every segment deleted more than `retention_ms` ago; how many went.
    pub fn sweep_deleted(&self, retention_ms: u64) -> u64 {
        let mut purged = 0;
        for s in self.segments.values() {
            match s.sweep_deleted(retention_ms) {
                Ok(n) => purged += n,
                Err(e) => {
                    tracing::warn!(segment = s.id(), error = %e, "sweep of deleted accounts failed")
                }
            }
        }
        purged
    }

    /// Pending outbound entries of every segment by age bucket, into
    /// [`crate::metrics::QUEUE_DEPTH`].
    pub fn count_queue(&self) {
        let now = crate::segment::now_ms();
        let mut total = [0i64; 4];
        for s in self.segments.values() {
            match s.queue_ages(now) {
                Ok(n) => total.iter_mut().zip(n).for_each(|(t, n)| *t += n),
                Err(e) => {
                    tracing::warn!(segment = s.id(), error = %e, "the queue could not be counted")
                }
            }
        }
        for ((label, _), n) in crate::metrics::QUEUE_AGES.iter().zip(total) {
            crate::metrics::QUEUE_DEPTH
                .with_label_values(&[label])
                .set(n);
        }
    }

    /// Flush every segment's memtables (a clean shutdown leaves a short WAL to replay).
    pub fn flush(&self) {
        for s in self.segments.values() {
            if let Err(e) = s.flush() {
                tracing::warn!(segment = s.id(), error = %e, "flush on shutdown failed");
            }
        }
    }
}
