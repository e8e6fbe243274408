//! Per-destination rate limits: at most `per_minute` transactions to one domain each minute,
//! in a burst of at most a tenth of that (at least one), as a token bucket per domain. A
//! delivery that finds the bucket empty waits for its token (holding its lease, which lasts
//! far longer than a minute), so a limit slows a destination down without counting failed
//! attempts against its mail. Some large receivers throttle or block senders that go faster
//! than they like; this is how an operator keeps under their limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Domains tracked before idle buckets (full again) are forgotten.
const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every destination; no limit when `per_minute` is 0.
pub struct Limits {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limits {
    pub fn new(per_minute: u32) -> Limits {
        Limits {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        f64::from((self.per_minute / 10).max(1))
    }

    /// Wait until one more transaction to `domain` is within its limit, and take it.
    pub async fn take(&self, domain: &str) {
        while let Some(wait) = self.try_take(domain, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Take a token for `domain` at `now` (`None`), or say how long until one is there.
    fn try_take(&self, domain: &str, now: Instant) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        let burst = self.burst();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_TRACKED {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(domain.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_destination() {
        let l = Limits::new(60);
        let t0 = Instant::now();
        // A burst of six (a tenth of a minute's sixty), then one a second.
        for _ in 0..6 {
            assert_eq!(l.try_take("a.example", t0), None);
        }
        let wait = l.try_take("a.example", t0).unwrap();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(l.try_take("a.example", t0 + Duration::from_secs(1)), None);
        assert!(l
            .try_take("a.example", t0 + Duration::from_secs(1))
            .is_some());
        // Another destination has its own bucket.
        assert_eq!(l.try_take("b.example", t0), None);
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..6 {
            assert_eq!(l.try_take("a.example", later), None);
        }
        assert!(l.try_take("a.example", later).is_some());
    }

    #[test]
    fn no_limit_never_waits() {
        let l = Limits::new(0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(l.try_take("a.example", t0), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_the_token() {
        let l = Limits::new(6);
        let t0 = Instant::now();
        l.take("a.example").await;
        l.take("a.example").await;
        // Six a minute, a burst of one: the second waited ten seconds.
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }
}
