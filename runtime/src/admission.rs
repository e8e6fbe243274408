//! Admission control: a bound on operations in flight; past it a caller is refused at once, never queued.
//!
//! A refusal is a "shed". The caller answers `Busy` (or its protocol's equivalent) and health reports
//! overloaded for a while, which is different from failed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

/// How long after a shed [`Admission::overloaded`] stays true: long enough for a status poll to
/// see a short burst of shedding, short enough that the state clears within seconds of the load.
pub const SHED_MEMORY: Duration = Duration::from_secs(3);

static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    crate::metrics::int_gauge(
        "admission_in_flight",
        "Operations admitted and not yet finished.",
    )
});
static SHED: LazyLock<IntCounter> = LazyLock::new(|| {
    crate::metrics::int_counter(
        "admission_shed_total",
        "Operations refused because too many were in flight.",
    )
});

/// The in-flight bound of one server.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    in_flight: AtomicUsize,
    shed: AtomicU64,
    /// Reference point for `last_shed`.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last shed, plus one; 0 means never.
    last_shed: AtomicU64,
}

/// One admitted operation; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the operation is admitted only while the permit is held"]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Admission {
    pub fn new(max_in_flight: usize) -> Arc<Self> {
        // Register the metrics now, so a scrape shows them before the first operation.
        LazyLock::force(&IN_FLIGHT);
        LazyLock::force(&SHED);
        Arc::new(Admission {
            max: max_in_flight,
            in_flight: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            epoch: Instant::now(),
            last_shed: AtomicU64::new(0),
        })
    }

    /// Admit one operation, or refuse it at once (counting a shed) when `max_in_flight` are in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            IN_FLIGHT.inc();
            Some(Permit {
                admission: Arc::clone(self),
            })
        } else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            SHED.inc();
            let since_epoch = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_shed
                .store(since_epoch.saturating_add(1), Ordering::Relaxed);
            None
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max
    }

    /// Operations refused since creation.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// True if an operation was shed within the last [`SHED_MEMORY`], or at least 90% of the slots are taken.
    pub fn overloaded(&self) -> bool {
        let busy = self.in_flight().saturating_mul(10) >= self.max.saturating_mul(9);
        busy || self.shed_recently()
    }

    fn shed_recently(&self) -> bool {
        let last = self.last_shed.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let shed_at = self.epoch + Duration::from_nanos(last - 1);
        shed_at.elapsed() < SHED_MEMORY
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        IN_FLIGHT.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bound_sheds_and_release_admits_again() {
        let adm = Admission::new(3);
        assert_eq!(adm.max_in_flight(), 3);
        assert!(!adm.overloaded());

        let mut permits: Vec<Permit> = (0..3).map(|_| adm.try_acquire().unwrap()).collect();
        assert_eq!(adm.in_flight(), 3);
        assert_eq!(adm.shed_total(), 0);
        assert!(adm.overloaded(), "full is overloaded");

        assert!(adm.try_acquire().is_none());
        assert!(adm.try_acquire().is_none());
        assert_eq!(adm.shed_total(), 2);
        assert_eq!(adm.in_flight(), 3);

        permits.pop();
        assert_eq!(adm.in_flight(), 2);
        let again = adm.try_acquire();
        assert!(again.is_some());
        assert_eq!(adm.in_flight(), 3);
        drop(again);
        drop(permits);
        assert_eq!(adm.in_flight(), 0);
        assert_eq!(adm.shed_total(), 2);

        // Empty, but the shed is recent.
        assert!(adm.overloaded());
        tokio::time::advance(SHED_MEMORY - Duration::from_millis(1)).await;
        assert!(adm.overloaded());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!adm.overloaded());
    }

    #[tokio::test(start_paused = true)]
    async fn ninety_percent_is_overloaded() {
        let adm = Admission::new(10);
        let permits: Vec<Permit> = (0..8).map(|_| adm.try_acquire().unwrap()).collect();
        assert!(!adm.overloaded());
        let ninth = adm.try_acquire().unwrap();
        assert!(adm.overloaded());
        drop(ninth);
        assert!(!adm.overloaded());
        drop(permits);
        assert_eq!(adm.shed_total(), 0);
    }

    #[test]
    fn zero_bound_refuses_everything() {
        let adm = Admission::new(0);
        assert!(adm.try_acquire().is_none());
        assert_eq!(adm.shed_total(), 1);
        assert!(adm.overloaded());
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_bound() {
        let adm = Admission::new(4);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let adm = Arc::clone(&adm);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = adm.try_acquire() {
                            peak.fetch_max(adm.in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 4);
        assert_eq!(adm.in_flight(), 0);
    }
}
