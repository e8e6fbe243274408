//! smtp-in's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounterVec, IntGauge};
use runtime::metrics::{counter_vec, histogram, int_gauge};

pub static SESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_sessions_total",
        "SMTP connections by outcome at accept: accepted, refused_total, refused_client",
        &["result"],
    )
});

pub static SESSIONS_OPEN: LazyLock<IntGauge> =
    LazyLock::new(|| int_gauge("smtp_sessions_open", "SMTP sessions open now"));

pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_messages_total",
        "messages by final reply: accepted (250, every copy durable), deferred (4xx), rejected (5xx)",
        &["result"],
    )
});

pub static RECIPIENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_recipients_total",
        "RCPT commands by outcome",
        &["result"],
    )
});

pub static REPLIES: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("smtp_replies_total", "replies sent, by code", &["code"]));

pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_deliveries_total",
        "store deliveries (one per recipient copy) by outcome",
        &["result"],
    )
});

pub static DATA_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "smtp_data_seconds",
        "from the end of a message's data to the final reply (every copy durable)",
    )
});

/// Touch every metric so all are exported from the start.
pub fn register() {
    for r in ["accepted", "refused_total", "refused_client"] {
        SESSIONS.with_label_values(&[r]);
    }
    for r in ["accepted", "deferred", "rejected"] {
        MESSAGES.with_label_values(&[r]);
    }
    LazyLock::force(&SESSIONS_OPEN);
    LazyLock::force(&RECIPIENTS);
    LazyLock::force(&REPLIES);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&DATA_SECONDS);
}
