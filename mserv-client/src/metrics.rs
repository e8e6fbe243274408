//! The index client's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec};
use runtime::metrics::{counter_vec, int_counter};

pub static CLIENT_FAILOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "mserv_client_failovers_total",
        "times a client moved to another replica after an error",
    )
});

pub static CLIENT_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mserv_client_cache_total",
        "client lookups by cache result",
        &["result"],
    )
});

// Handles for the hottest series, so a lookup does not hash its labels.

pub static CLIENT_CACHE_HIT: LazyLock<IntCounter> =
    LazyLock::new(|| CLIENT_CACHE.with_label_values(&["hit"]));

pub static CLIENT_CACHE_MISS: LazyLock<IntCounter> =
    LazyLock::new(|| CLIENT_CACHE.with_label_values(&["miss"]));
