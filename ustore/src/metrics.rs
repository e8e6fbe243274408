//! The store's metrics, registered once in the process-wide registry.

use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec};
use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel};
use rocksdb::statistics::Ticker;
use runtime::metrics::{counter_vec, histogram_with, int_counter, Ops};

use crate::segment::Segment;

/// XFS requests: `ustore_requests_total{op,outcome}`, `ustore_errors_total{op,kind}`,
/// `ustore_request_seconds{op}`, `ustore_in_flight`, `ustore_shed_total` (answered `Busy` by
/// admission control).
pub static OPS: LazyLock<Ops> = LazyLock::new(|| Ops::new("ustore", "XFS requests"));

/// Buckets for block counts per page.
const PAGE_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub static PAGE_READS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram_with(
        "ustore_page_reads",
        "RocksDB blocks read from storage (block cache misses) per folder page (ListFolder), \
         from RocksDB's per-thread perf context",
        PAGE_BUCKETS,
    )
});

pub static PAGE_BLOCKS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram_with(
        "ustore_page_blocks",
        "RocksDB blocks a folder page (ListFolder) touched: block cache hits plus reads",
        PAGE_BUCKETS,
    )
});

/// Run one folder page, counting the RocksDB block reads it makes on this thread into
/// [`PAGE_READS`] and [`PAGE_BLOCKS`].
pub fn count_page_reads<T>(page: impl FnOnce() -> T) -> T {
    rocksdb::perf::set_perf_stats(PerfStatsLevel::EnableCount);
    let mut ctx = PerfContext::default();
    ctx.reset();
    let out = page();
    let reads = ctx.metric(PerfMetric::BlockReadCount);
    let hits = ctx.metric(PerfMetric::BlockCacheHitCount);
    rocksdb::perf::set_perf_stats(PerfStatsLevel::Disable);
    PAGE_READS.observe(reads as f64);
    PAGE_BLOCKS.observe((reads + hits) as f64);
    out
}

/// The outbound queue: entries queued by submissions, leased to workers, and finished or put
/// back by their reports, by event.
pub static QUEUE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_queue_events_total",
        "outbound queue entries by event: queued, leased, delivered, deferred, failed, cancelled",
        &["event"],
    )
});

/// Pending outbound entries by how long ago they were queued, counted every
/// [`crate::QUEUE_WATCH`]: the sign of a destination that takes nothing, or workers that fell
/// behind.
pub static QUEUE_DEPTH: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    runtime::metrics::gauge_vec(
        "ustore_queue_depth",
        "pending outbound entries by age since queued (lt_5m, lt_1h, lt_1d, ge_1d)",
        &["age"],
    )
});

/// The age labels of [`QUEUE_DEPTH`] with each bucket's upper bound in ms.
pub const QUEUE_AGES: [(&str, u64); 4] = [
    ("lt_5m", 300_000),
    ("lt_1h", 3_600_000),
    ("lt_1d", 86_400_000),
    ("ge_1d", u64::MAX),
];

pub static FRAME_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_frame_errors_total",
        "connections closed for a bad frame or a failed handshake (kind=\"tls\"), by kind",
        &["kind"],
    )
});

pub static FORBIDDEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_forbidden_total",
        "requests refused because the caller's role may not ask for them",
        &["role", "op"],
    )
});

pub static CORRUPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_corrupt_reads_total",
        "records or bodies whose checksum failed on read",
        &["what"],
    )
});

pub static ACCOUNT_LIFECYCLE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_account_lifecycle_total",
        "accounts soft-deleted, undeleted, purged by the retention sweep, restored from a backup",
        &["event"],
    )
});

pub static SYNC_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "ustore_sync_writes_total",
        "write batches committed with a WAL sync",
    )
});

pub static BYTES_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "ustore_bytes_written_total",
        "bytes of write batches committed",
    )
});

pub static CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_connections_total",
        "XFS connections by outcome",
        &["outcome"],
    )
});

/// RocksDB block cache hits and misses over every open segment, read from the segments'
/// statistics tickers (`BLOCK_CACHE_HIT`, `BLOCK_CACHE_MISS`) when `/metrics` is scraped, with the
/// hit ratio, and the WAL syncs RocksDB made (`WAL_FILE_SYNCED`: the fsyncs behind synced batches).
pub static BLOCK_CACHE: LazyLock<BlockCache> = LazyLock::new(|| {
    let c = BlockCache::default();
    if let Err(e) = runtime::metrics::registry().register(Box::new(c.clone())) {
        panic!("registering the block cache metrics: {e}");
    }
    c
});

/// The segments whose block cache tickers `/metrics` reports (the counters only describe the
/// metrics; each scrape builds them afresh from the tickers).
#[derive(Clone)]
pub struct BlockCache {
    segments: Arc<Mutex<Vec<Weak<Segment>>>>,
    hits: IntCounter,
    misses: IntCounter,
    ratio: Gauge,
    wal_syncs: IntCounter,
}

const HITS: (&str, &str) = (
    "ustore_block_cache_hits_total",
    "RocksDB block cache hits over the open segments",
);
const MISSES: (&str, &str) = (
    "ustore_block_cache_misses_total",
    "RocksDB block cache misses over the open segments",
);
const RATIO: (&str, &str) = (
    "ustore_block_cache_hit_ratio",
    "RocksDB block cache hits / (hits + misses) over the open segments since start (0 before any)",
);
const WAL_SYNCS: (&str, &str) = (
    "ustore_wal_syncs_total",
    "WAL fsyncs made by RocksDB over the open segments (synced batches share them)",
);

fn gauge((name, help): (&str, &str), value: f64) -> Gauge {
    let g = Gauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g.set(value);
    g
}

fn counter((name, help): (&str, &str), value: u64) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c.inc_by(value);
    c
}

impl Default for BlockCache {
    fn default() -> Self {
        BlockCache {
            segments: Arc::default(),
            hits: counter(HITS, 0),
            misses: counter(MISSES, 0),
            ratio: gauge(RATIO, 0.0),
            wal_syncs: counter(WAL_SYNCS, 0),
        }
    }
}

impl BlockCache {
    /// Report `segment`'s tickers from now on (until it is dropped).
    pub fn watch(&self, segment: &Arc<Segment>) {
        let mut list = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(segment));
    }

    /// The sum of `ticker` over the open segments.
    fn sum(&self, ticker: Ticker) -> u64 {
        let list = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.ticker(ticker))
            .sum()
    }
}

impl Collector for BlockCache {
    fn desc(&self) -> Vec<&Desc> {
        self.hits
            .desc()
            .into_iter()
            .chain(self.misses.desc())
            .chain(self.ratio.desc())
            .chain(self.wal_syncs.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (h, m) = (
            self.sum(Ticker::BlockCacheHit),
            self.sum(Ticker::BlockCacheMiss),
        );
        let ratio = if h + m == 0 {
            0.0
        } else {
            h as f64 / (h + m) as f64
        };
        let mut families = counter(HITS, h).collect();
        families.extend(counter(MISSES, m).collect());
        families.extend(gauge(RATIO, ratio).collect());
        families.extend(counter(WAL_SYNCS, self.sum(Ticker::WalFileSynced)).collect());
        families
    }
}

/// Register every metric now, so `/metrics` lists them before their first event.
pub fn register() {
    LazyLock::force(&OPS);
    LazyLock::force(&PAGE_READS);
    LazyLock::force(&PAGE_BLOCKS);
    LazyLock::force(&FRAME_ERRORS);
    LazyLock::force(&FORBIDDEN);
    LazyLock::force(&CORRUPT);
    LazyLock::force(&ACCOUNT_LIFECYCLE);
    LazyLock::force(&SYNC_WRITES);
    LazyLock::force(&BYTES_WRITTEN);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&BLOCK_CACHE);
}

/// Sessions checked for operations that act for a user, by outcome: `ok`, `missing`,
/// `bad_token` (not signed by login, malformed or expired), `other_user` (another user's
/// mailbox, or another session's sign-out), `ended` (an older generation, or signed out).
pub static SESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_sessions_total",
        "sessions checked for operations that act for a signed-in user, by outcome",
        &["outcome"],
    )
});
