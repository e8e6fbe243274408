//! smtp-in's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use runtime::metrics::{counter_vec, histogram, int_counter, int_gauge, Ops};

/// SMTP commands: `smtp_requests_total{op,outcome}` (`op` the command verb, `outcome` the reply
/// code), `smtp_errors_total{op,kind}` (4xx and 5xx replies), `smtp_request_seconds{op}` (from the
/// command read to its reply queued; for DATA and BDAT that includes the delivery),
/// `smtp_in_flight` (commands being handled) and `smtp_shed_total` (sessions refused at the
/// session limits).
pub static OPS: LazyLock<Ops> = LazyLock::new(|| Ops::new("smtp", "SMTP commands"));

pub static RECEIVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "smtp_received_bytes_total",
        "message bytes received (as sent, before the trace line) and handed on for delivery",
    )
});

/// The verbs counted by name; anything else counts as `other`.
const VERBS: &[&str] = &[
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS",
];

/// Record one command (its line) answered with reply `code` after `elapsed`.
pub fn record_command(line: &str, code: u16, elapsed: std::time::Duration) {
    let word = line.split(' ').next().unwrap_or("");
    let op = VERBS
        .iter()
        .find(|v| v.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("other");
    let code_text = code.to_string();
    let outcome = if code >= 400 {
        Err(code_text.as_str())
    } else {
        Ok(code_text.as_str())
    };
    OPS.record(op, outcome, elapsed);
}

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

pub static DATA_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    int_gauge(
        "smtp_data_in_flight_bytes",
        "message data held in memory by every session together (the max-data-in-flight-bytes budget)",
    )
});

pub static BUDGET_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "smtp_budget_refused_total",
        "messages refused for the data budget: declared (452 4.3.1 for a declared SIZE), data (421 4.3.2 during the data)",
        &["when"],
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
    LazyLock::force(&OPS);
    LazyLock::force(&RECEIVED_BYTES);
    LazyLock::force(&DATA_IN_FLIGHT);
    for w in ["declared", "data"] {
        BUDGET_REFUSED.with_label_values(&[w]);
    }
}
