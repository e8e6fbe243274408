//! One shared Prometheus registry for the process, constructors that register into it, and the text
//! exposition; for the programs that read other processes' metrics (loadgen, the tests), that text
//! read back, and the percentile of a sorted sample.
//!
//! Callers keep their metrics in statics so each is registered once:
//! ```
//! use std::sync::LazyLock;
//! static DELIVER_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
//!     runtime::metrics::histogram_vec("doc_deliver_seconds", "Time to deliver a message.", &["outcome"])
//! });
//! DELIVER_SECONDS.with_label_values(&["ok"]).observe(0.012);
//! ```
//!
//! The constructors panic on a programming error only: an invalid metric name or label, or a name that
//! is already registered (which is what calling one twice for the same name does).

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds, 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry every metric of the process lives in (Prometheus' default registry).
pub fn registry() -> &'static Registry {
    prometheus::default_registry()
}

fn register<C: prometheus::core::Collector + Clone + 'static>(name: &str, metric: C) -> C {
    if let Err(e) = registry().register(Box::new(metric.clone())) {
        panic!("registering metric {name}: {e}");
    }
    metric
}

/// A labelled counter. Panics on an invalid or already registered name (see the module docs).
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A labelled histogram with [`LATENCY_BUCKETS`]. Panics on an invalid or already registered name.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A histogram with [`LATENCY_BUCKETS`]. Panics on an invalid or already registered name.
pub fn histogram(name: &str, help: &str) -> prometheus::Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric =
        prometheus::Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A histogram with the given buckets (for counts rather than times). Panics on an invalid or
/// already registered name.
pub fn histogram_with(name: &str, help: &str, buckets: &[f64]) -> prometheus::Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric =
        prometheus::Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A gauge. Panics on an invalid or already registered name.
pub fn int_gauge(name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A labelled gauge. Panics on an invalid or already registered name.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    let metric = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// A counter. Panics on an invalid or already registered name.
pub fn int_counter(name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, metric)
}

/// The metrics every serving role keeps per operation, under its own prefix:
/// `{prefix}_requests_total{op,outcome}`, `{prefix}_errors_total{op,kind}`,
/// `{prefix}_request_seconds{op}` (a latency histogram), `{prefix}_in_flight` (operations started and
/// not finished) and `{prefix}_shed_total` (operations refused at once because the role was full).
/// Keep it in a static, like any metric.
pub struct Ops {
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub shed: IntCounter,
}

impl Ops {
    /// Register the five metrics; `what` names the operations in the help texts (e.g. "XFS requests").
    /// Panics on an invalid or already registered prefix.
    pub fn new(prefix: &str, what: &str) -> Ops {
        Ops {
            requests: counter_vec(
                &format!("{prefix}_requests_total"),
                &format!("{what} by operation and outcome"),
                &["op", "outcome"],
            ),
            errors: counter_vec(
                &format!("{prefix}_errors_total"),
                &format!("{what} that failed, by operation and error kind"),
                &["op", "kind"],
            ),
            seconds: histogram_vec(
                &format!("{prefix}_request_seconds"),
                &format!("{what}: latency by operation, from receipt to answer"),
                &["op"],
            ),
            in_flight: int_gauge(
                &format!("{prefix}_in_flight"),
                &format!("{what} started and not yet answered"),
            ),
            shed: int_counter(
                &format!("{prefix}_shed_total"),
                &format!("{what} refused at once because too many were in flight"),
            ),
        }
    }

    /// Count one operation as in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Record a finished operation: `Ok(outcome)` is a success (`"ok"`, or e.g. a 3xx class),
    /// `Err(kind)` an error, counted in both the requests and the errors.
    pub fn record(&self, op: &str, outcome: Result<&str, &str>, elapsed: std::time::Duration) {
        match outcome {
            Ok(o) => self.requests.with_label_values(&[op, o]).inc(),
            Err(kind) => {
                self.requests.with_label_values(&[op, kind]).inc();
                self.errors.with_label_values(&[op, kind]).inc();
            }
        }
        self.seconds
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }
}

/// One operation in flight (see [`Ops::begin`]).
#[must_use = "the operation counts as in flight only while the guard is held"]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every registered metric in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry().gather(), &mut buf) {
        // Only reachable through an inconsistent collector; the scrape still gets a readable answer.
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The samples of a Prometheus text page: `(name{labels}, value)` as rendered, comments skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.trim(), value.trim().parse().ok()?))
        })
}

/// The value of one sample of a Prometheus text page: `name` with its labels exactly as rendered
/// (`smtp_messages_total{result="accepted"}`), `None` when absent.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    samples(text).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// The `p` quantile (0 to 1) of an ascending sample by the nearest-rank method: the smallest
/// value with at least `p` of the sample at or below it. `None` for an empty sample.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render() {
        let c = counter_vec(
            "runtime_test_events_total",
            "Events seen by a unit test.",
            &["kind"],
        );
        c.with_label_values(&["a"]).inc_by(3);
        let h = histogram_vec("runtime_test_seconds", "Timing in a unit test.", &["op"]);
        h.with_label_values(&["x"]).observe(0.003);
        let g = int_gauge("runtime_test_gauge", "A gauge in a unit test.");
        g.set(7);
        let n = int_counter("runtime_test_plain_total", "A counter in a unit test.");
        n.inc();

        let text = render();
        assert!(
            text.contains("runtime_test_events_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("runtime_test_seconds_bucket{op=\"x\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("runtime_test_seconds_bucket{op=\"x\",le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("runtime_test_gauge 7"), "{text}");
        assert!(text.contains("runtime_test_plain_total 1"), "{text}");
    }

    #[test]
    fn ops_count_requests_errors_latency_and_in_flight() {
        let ops = Ops::new("runtime_test_ops", "test operations");
        {
            let _a = ops.begin();
            let _b = ops.begin();
            assert_eq!(ops.in_flight.get(), 2);
        }
        assert_eq!(ops.in_flight.get(), 0);
        ops.record("get", Ok("ok"), std::time::Duration::from_millis(3));
        ops.record("get", Err("busy"), std::time::Duration::from_millis(1));
        ops.shed.inc();
        let text = render();
        for sample in [
            "runtime_test_ops_requests_total{op=\"get\",outcome=\"ok\"} 1",
            "runtime_test_ops_requests_total{op=\"get\",outcome=\"busy\"} 1",
            "runtime_test_ops_errors_total{kind=\"busy\",op=\"get\"} 1",
            "runtime_test_ops_request_seconds_count{op=\"get\"} 2",
            "runtime_test_ops_in_flight 0",
            "runtime_test_ops_shed_total 1",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
    }

    #[test]
    #[should_panic(expected = "runtime_test_twice_total")]
    fn duplicate_name_panics() {
        let _a = int_counter("runtime_test_twice_total", "First.");
        let _b = int_counter("runtime_test_twice_total", "Second.");
    }

    #[test]
    fn buckets_span_half_a_millisecond_to_ten_seconds() {
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.0005));
        assert_eq!(LATENCY_BUCKETS.last(), Some(&10.0));
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_rendered_page_reads_back() {
        let text = "# HELP x Things.\n# TYPE x counter\nx{kind=\"a b\"} 3\nx{kind=\"c\"} 4.5\n\
                    y 7\ny_total_other 1\nbroken line\n";
        let all: Vec<(&str, f64)> = samples(text).collect();
        assert_eq!(
            all,
            [
                ("x{kind=\"a b\"}", 3.0),
                ("x{kind=\"c\"}", 4.5),
                ("y", 7.0),
                ("y_total_other", 1.0)
            ]
        );
        assert_eq!(sample(text, "x{kind=\"c\"}"), Some(4.5));
        assert_eq!(sample(text, "y"), Some(7.0));
        assert_eq!(sample(text, "x"), None);
        let c = int_counter("runtime_test_read_back_total", "Read back by a unit test.");
        c.inc_by(5);
        assert_eq!(sample(&render(), "runtime_test_read_back_total"), Some(5.0));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(percentile(&[7.5], 0.99), Some(7.5));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }
}
