//! The store's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounter, IntCounterVec};
use runtime::metrics::{counter_vec, histogram_vec, int_counter};

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

/// Register every metric now, so `/metrics` lists them before their first event.
pub fn register() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    LazyLock::force(&FRAME_ERRORS);
    LazyLock::force(&CORRUPT);
    LazyLock::force(&SYNC_WRITES);
    LazyLock::force(&BYTES_WRITTEN);
    LazyLock::force(&CONNECTIONS);
}
