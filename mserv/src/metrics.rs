//! The member index's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use runtime::metrics::{counter_vec, int_counter, int_gauge, Ops};

/// Requests served by this replica: `mserv_requests_total{op,outcome}`,
/// `mserv_errors_total{op,kind}`, `mserv_request_seconds{op}`, `mserv_in_flight`,
/// `mserv_shed_total` (answered `Busy` by admission control).
pub static OPS: LazyLock<Ops> = LazyLock::new(|| Ops::new("mserv", "requests"));

pub static FORWARDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_forwarded_total",
        "writes a follower passed on to the leader, by outcome",
        &["outcome"],
    )
});

pub static APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_applied_total",
        "commands applied to the state machine, by command and outcome",
        &["command", "outcome"],
    )
});

pub static FRAME_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_frame_errors_total",
        "connections closed for a bad frame or a failed handshake (kind=\"tls\"), by kind",
        &["kind"],
    )
});

pub static FORBIDDEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_forbidden_total",
        "requests refused because the caller's role may not ask for them",
        &["role", "op"],
    )
});

pub static CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_connections_total",
        "connections by outcome",
        &["outcome"],
    )
});

pub static CORRUPT: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "mserv_corrupt_records_total",
        "records whose checksum failed on read",
    )
});

pub static WAL_SYNCS: LazyLock<IntCounter> =
    LazyLock::new(|| int_counter("mserv_wal_syncs_total", "WAL syncs made for log appends"));

pub static WAL_SYNC_APPENDS: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "mserv_wal_sync_appends_total",
        "log appends made durable (several share one WAL sync)",
    )
});

pub static SNAPSHOTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_snapshots_total",
        "snapshots built here or installed from a leader",
        &["event"],
    )
});

pub static TERM: LazyLock<IntGauge> =
    LazyLock::new(|| int_gauge("mserv_raft_term", "the current Raft term"));

pub static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    int_gauge(
        "mserv_raft_leader",
        "the id of the replica this one follows (-1: none known)",
    )
});

pub static IS_LEADER: LazyLock<IntGauge> =
    LazyLock::new(|| int_gauge("mserv_raft_is_leader", "1 while this replica is the leader"));

pub static APPLIED_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    int_gauge(
        "mserv_raft_applied_index",
        "the last log index applied to the state machine",
    )
});

pub static PURGED_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    int_gauge(
        "mserv_raft_purged_index",
        "the last log index removed from the log",
    )
});

pub static LOOKUPS_OK: LazyLock<IntCounter> =
    LazyLock::new(|| OPS.requests.with_label_values(&["lookup", "ok"]));

pub static LOOKUP_LATENCY: LazyLock<Histogram> =
    LazyLock::new(|| OPS.seconds.with_label_values(&["lookup"]));
