//! smtp-out's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec};
use runtime::metrics::{counter_vec, int_counter};

/// Queue entries leased from the stores (`ok`), and lease calls that failed (`error`).
pub static LEASES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_out_leases_total",
        "queue entries leased from the stores (result=ok), and lease calls that failed",
        &["result"],
    )
});

/// Attempts by destination kind (`local`, `remote`) and outcome.
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_out_deliveries_total",
        "delivery attempts by destination (local, remote) and outcome (delivered, deferred, failed)",
        &["kind", "outcome"],
    )
});

/// Outcomes that never reached their store (the entry is leased again when its lease ends).
pub static REPORTS_LOST: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "smtp_out_reports_lost_total",
        "outcomes the store did not take (the entry is tried again when its lease runs out)",
    )
});

/// Messages sent over SMTP by signature: `signed`, `unsigned` (the sender's domain has no active
/// key) or `failed` (the key could not sign; sent unsigned).
pub static DKIM: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_out_dkim_total",
        "messages sent over SMTP by DKIM result (signed, unsigned, failed)",
        &["result"],
    )
});

/// Make every series visible from the start.
pub fn register() {
    for r in ["signed", "unsigned", "failed"] {
        DKIM.with_label_values(&[r]);
    }
    LEASES.with_label_values(&["ok"]);
    LEASES.with_label_values(&["error"]);
    for kind in ["local", "remote"] {
        for o in ["delivered", "deferred", "failed"] {
            DELIVERIES.with_label_values(&[kind, o]);
        }
    }
    LazyLock::force(&REPORTS_LOST);
}
