//! The store's metrics, registered once in the process-wide registry.

use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramVec, IntCounter, IntCounterVec};
use rocksdb::statistics::Ticker;
use runtime::metrics::{counter_vec, histogram_vec, int_counter};

use crate::segment::Segment;

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_requests_total",
        "XFS requests by operation and outcome",
        &["op", "outcome"],
    )
});

pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ustore_request_seconds",
        "XFS request latency by operation, from receipt to reply",
        &["op"],
    )
});

pub static FRAME_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_frame_errors_total",
        "connections closed for a bad frame, by kind",
        &["kind"],
    )
});

pub static CORRUPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ustore_corrupt_reads_total",
        "records or bodies whose checksum failed on read",
        &["what"],
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
/// statistics tickers (`BLOCK_CACHE_HIT`, `BLOCK_CACHE_MISS`) when `/metrics` is scraped.
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
}

const HITS: (&str, &str) = (
    "ustore_block_cache_hits_total",
    "RocksDB block cache hits over the open segments",
);
const MISSES: (&str, &str) = (
    "ustore_block_cache_misses_total",
    "RocksDB block cache misses over the open segments",
);

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
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let hits = counter(HITS, self.sum(Ticker::BlockCacheHit));
        let misses = counter(MISSES, self.sum(Ticker::BlockCacheMiss));
        hits.collect().into_iter().chain(misses.collect()).collect()
    }
}

/// Register every metric now, so `/metrics` lists them before their first event.
pub fn register() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    LazyLock::force(&FRAME_ERRORS);
    LazyLock::force(&CORRUPT);
    LazyLock::force(&SYNC_WRITES);
    LazyLock::force(&BYTES_WRITTEN);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&BLOCK_CACHE);
}
