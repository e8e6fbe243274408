//! login's metrics, registered once in the process-wide registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntCounterVec};
use runtime::http::layers::HttpMetrics;
use runtime::metrics::{counter_vec, histogram, int_counter};

/// HTTP requests (`runtime::http::layers::HttpMetrics`): `login_http_requests_total{op,outcome}`
/// (`op` is the method and route, e.g. `POST /api/v1/session`), `login_http_errors_total{op,kind}`
/// (status >= 400), `login_http_request_seconds{op}`, `login_http_in_flight`,
/// `login_http_shed_total` (answered 503 or 429 with `Retry-After`: the index, store or front doors
/// were unavailable, or throttled), `login_http_panics_total`, and by kind (page, api, static)
/// `login_requests_total{kind,status}` and `login_request_seconds{kind}`.
pub static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics::new("login"));

/// The outcomes counted by [`ATTEMPTS`].
pub const RESULTS: &[&str] = &[
    "ok",
    "bad_password",
    "throttled",
    "unavailable",
    "bad_request",
];

pub static ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "login_attempts_total",
        "sign-in attempts by outcome: ok, bad_password (wrong password or unknown user), \
         throttled (429), unavailable (index, store or front doors down), bad_request",
        &["result"],
    )
});

pub static VERIFY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "login_verify_seconds",
        "time to check one password hash, waiting for a hashing slot included",
    )
});

pub static FRONT_DOOR_PROBES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "login_front_door_probes_total",
        "front door health probes by outcome: healthy, unhealthy",
        &["result"],
    )
});

pub static LOGOUTS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "login_logouts_refused_total",
        "sign-outs refused: no session CSRF value, or a foreign Origin",
    )
});

pub static LOGOUTS_UNRECORDED: LazyLock<IntCounter> = LazyLock::new(|| {
    int_counter(
        "login_logouts_unrecorded_total",
        "sign-outs the user's store could not record (the session stays valid until it expires)",
    )
});

/// Touch every metric so all are exported from the start.
pub fn register() {
    for r in RESULTS {
        ATTEMPTS.with_label_values(&[r]);
    }
    for r in ["healthy", "unhealthy"] {
        FRONT_DOOR_PROBES.with_label_values(&[r]);
    }
    LazyLock::force(&VERIFY_SECONDS);
    LazyLock::force(&LOGOUTS_REFUSED);
    LazyLock::force(&LOGOUTS_UNRECORDED);
    LazyLock::force(&HTTP);
}
