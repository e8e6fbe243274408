//! frontdoor's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec};
use runtime::http::layers::HttpMetrics;
use runtime::metrics::{counter_vec, histogram_vec};

/// HTTP requests (`runtime::http::layers::HttpMetrics`): `frontdoor_http_requests_total{op,outcome}`
/// (`op` is the method and route pattern, e.g. `GET /api/v1/messages/{id}`; outcome: the status
/// class, or the status code for 4xx/5xx), `frontdoor_http_errors_total{op,kind}` (status >= 400),
/// `frontdoor_http_request_seconds{op}`, `frontdoor_http_in_flight`, `frontdoor_http_shed_total`
/// (answered 503 or 429 with `Retry-After`: the store was busy or unreachable, or the front door
/// refused the request), `frontdoor_http_panics_total`, and by kind (page, api, static)
/// `frontdoor_requests_total{kind,status}` and `frontdoor_request_seconds{kind}`.
pub static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("frontdoor"));

pub static STORE_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "frontdoor_store_calls_total",
        "XFS calls to user stores by operation and outcome (ok, an XFS error kind, unreachable)",
        &["op", "result"],
    )
});

pub static STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "frontdoor_store_call_seconds",
        "time of one XFS call to a user store, by operation",
        &["op"],
    )
});

pub static AUTH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "frontdoor_auth_total",
        "session checks by outcome: ok, none, malformed, bad_signature, unknown_key, expired, \
         ended (refused by the store: signed out, password changed, another account), \
         no_such_user, unchecked (store unreachable, confirmed within the grace period), \
         unconfirmed (store unreachable: 503), csrf_refused, signout_unrecorded",
        &["result"],
    )
});

pub static SENDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "frontdoor_sends_total",
        "messages sent by outcome: sent, sent_no_copy (relay took it, the Sent copy failed), \
         refused (the relay refused it), failed",
        &["result"],
    )
});

/// Touch every metric so all are exported from the start.
pub fn register() {
    for r in ["sent", "sent_no_copy", "refused", "failed"] {
        SENDS.with_label_values(&[r]);
    }
    for r in ["ok", "none", "expired", "old_generation", "csrf_refused"] {
        AUTH.with_label_values(&[r]);
    }
    LazyLock::force(&HTTP);
    LazyLock::force(&STORE_CALLS);
    LazyLock::force(&STORE_SECONDS);
}
