//! RocksDB tuning and opening: the options of each column family, a segment opened for writing
//! or read-only (a checkpoint), and the flush of a clean shutdown.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, Cache, ColumnFamilyDescriptor,
    DBCompressionType, Options, DB,
};
use runtime::faults::Faults;
use xfs::XfsError;

use super::records::DedupeRec;
use super::{bad, now_ms, Segment};
use crate::keys::{self, ALL_CFS, CF_BODY, CF_CHANGES, CF_DEDUPE, CF_INDEX};
use crate::metrics;

const LOCK_STRIPES: usize = 4096;

#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub block_cache_bytes: usize,
    /// How long a delivery id is remembered for deduplication.
    pub dedupe_retention: Duration,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            block_cache_bytes: 64 << 20,
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Segment {
    /// Open (creating if missing) the segment at `path`.
    pub fn open(
        id: u32,
        path: &Path,
        so: &SegmentOptions,
        faults: Arc<Faults>,
    ) -> Result<Segment, rocksdb::Error> {
        Self::open_with(id, path, so, faults, false)
    }

    /// Open read-only (a checkpoint kept by a backup): nothing in `path` is written.
    pub fn open_read_only(path: &Path) -> Result<Segment, rocksdb::Error> {
        let so = SegmentOptions {
            block_cache_bytes: 8 << 20,
            ..SegmentOptions::default()
        };
        Self::open_with(u32::MAX, path, &so, Arc::new(Faults::new()), true)
    }

    fn open_with(
        id: u32,
        path: &Path,
        so: &SegmentOptions,
        faults: Arc<Faults>,
        read_only: bool,
    ) -> Result<Segment, rocksdb::Error> {
        let cache = Cache::new_lru_cache(so.block_cache_bytes);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.enable_statistics();
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        opts.set_keep_log_file_num(4);

        // Read-only (a checkpoint), only the column families it has: one of an older layout
        // lacks those added since.
        let present = if read_only {
            DB::list_cf(&opts, path)?
        } else {
            ALL_CFS.iter().map(|c| c.to_string()).collect()
        };
        let cfs = ALL_CFS
            .iter()
            .filter(|name| present.iter().any(|p| p == *name))
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, so, &cache)))
            .collect::<Vec<_>>();
        let db = if read_only {
            opts.create_if_missing(false);
            opts.create_missing_column_families(false);
            DB::open_cf_descriptors_read_only(&opts, path, cfs, false)?
        } else {
            DB::open_cf_descriptors(&opts, path, cfs)?
        };
        Ok(Segment {
            id,
            path: path.to_path_buf(),
            db,
            opts,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            faults,
        })
    }

    /// Flush memtables so the WAL can be dropped (called on a clean shutdown).
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

/// The options of column family `name`, its block cache shared with the others.
fn cf_options(name: &str, so: &SegmentOptions, cache: &Cache) -> Options {
    let table = |bloom: bool| {
        let mut t = BlockBasedOptions::default();
        t.set_block_cache(cache);
        t.set_cache_index_and_filter_blocks(true);
        if bloom {
            t.set_bloom_filter(10.0, false);
        }
        t
    };
    let small = |bloom: bool| {
        let mut o = Options::default();
        o.set_block_based_table_factory(&table(bloom));
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
        o
    };
    match name {
        CF_BODY => {
            // Key/value separation: bodies live in blob files, compressed; the LSM keeps only
            // small pointers, so compactions do not rewrite mail.
            let mut o = small(true);
            o.set_enable_blob_files(true);
            o.set_min_blob_size(0);
            o.set_blob_file_size(64 << 20);
            o.set_blob_compression_type(DBCompressionType::Zstd);
            o.set_enable_blob_gc(true);
            o
        }
        CF_DEDUPE => {
            let mut o = small(true);
            let keep_ms = so.dedupe_retention.as_millis() as u64;
            o.set_compaction_filter("dedupe-retention", move |_, _: &[u8], v: &[u8]| {
                match keys::decode::<DedupeRec>(v, "dedupe") {
                    Ok(r) if now_ms().saturating_sub(r.at_ms) > keep_ms => Decision::Remove,
                    _ => Decision::Keep,
                }
            });
            o
        }
        CF_INDEX | CF_CHANGES => small(false),
        _ => small(true),
    }
}

/// Open a checkpoint read-only; a directory that is not one is a clear `BadRequest`.
pub fn open_checkpoint(dir: &Path) -> Result<Segment, XfsError> {
    if !dir.join("CURRENT").is_file() {
        return Err(bad(format!(
            "{} holds no checkpoint (no CURRENT file)",
            dir.display()
        )));
    }
    Segment::open_read_only(dir).map_err(|e| {
        if e.kind() == rocksdb::ErrorKind::Corruption {
            metrics::CORRUPT.with_label_values(&["rocksdb"]).inc();
            XfsError::Corrupt {
                what: format!("checkpoint {}: {e}", dir.display()),
            }
        } else {
            bad(format!("opening checkpoint {}: {e}", dir.display()))
        }
    })
}
