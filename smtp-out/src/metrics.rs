//! smtp-out's metrics, registered once in the process-wide registry.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

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

/// Deferrals by destination kind and reason, the class of the reply's enhanced status code
/// (RFC 3463): see [`crate::worker::deferral_reason`].
pub static DEFERRALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_out_deferrals_total",
        "deferred attempts by destination (local, remote) and reason (dns, network, expired, \
         mailbox, system, protocol, security, address, content, other)",
        &["kind", "reason"],
    )
});

/// Attempts by destination domain and outcome. At most [`MAX_DESTINATIONS`] domains get a
/// series of their own (the first seen); the rest are counted under `domain="other"`.
pub static DESTINATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_out_destination_attempts_total",
        "delivery attempts by destination domain (the first 200 seen; the rest as \"other\") \
         and outcome",
        &["domain", "outcome"],
    )
});

/// Destination domains with a series of their own.
pub const MAX_DESTINATIONS: usize = 200;
static NAMED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Count one attempt to `domain` that ended in `outcome`.
pub fn destination(domain: &str, outcome: &str) {
    let label = {
        let mut named = NAMED.lock().unwrap_or_else(|p| p.into_inner());
        if named.contains(domain) || (named.len() < MAX_DESTINATIONS && named.insert(domain.into()))
        {
            domain
        } else {
            "other"
        }
    };
    DESTINATIONS.with_label_values(&[label, outcome]).inc();
}

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
    LazyLock::force(&DEFERRALS);
    LazyLock::force(&DESTINATIONS);
}
