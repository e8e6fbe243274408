//! Exponential backoff with full jitter, so clients of a restarted server do not all come back at once.
//!
//! Delay number `n` (from 0) is uniform in `[0, min(cap, base * 2^n)]`.

use std::time::Duration;

use rand::Rng as _;

/// Backoff state for one retry loop. Call [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The largest delay the next call to [`Backoff::next_delay`] can return: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[0, ceiling()]`, and one more attempt counted.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let max_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=max_nanos))
    }

    /// Start again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays have been handed out since creation or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sleep for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(1);
    const SAMPLES: usize = 300;

    /// The largest of `SAMPLES` delays drawn at `attempt`.
    fn max_delay_at(attempt: u32) -> Duration {
        (0..SAMPLES)
            .map(|_| {
                let mut b = Backoff::new(BASE, CAP);
                b.attempt = attempt;
                b.next_delay()
            })
            .max()
            .unwrap_or_default()
    }

    #[test]
    fn delays_stay_within_zero_and_cap() {
        let mut b = Backoff::new(BASE, CAP);
        for n in 0..2000u32 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling && d <= CAP, "attempt {n}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.attempt(), 2000);
    }

    #[test]
    fn upper_bound_doubles_then_caps() {
        // 10ms * 2^n reaches the 1s cap at n = 7 (1.28s).
        let expected: Vec<Duration> = (0..10u32).map(|n| (BASE * 2u32.pow(n)).min(CAP)).collect();
        for (n, &ceiling) in expected.iter().enumerate() {
            let n = n as u32;
            let seen = max_delay_at(n);
            assert!(seen <= ceiling, "attempt {n}: {seen:?} > {ceiling:?}");
            // With full jitter the largest of many samples lands near the ceiling: the chance that
            // all of them fall in its lower 3/4 is 0.75^300, about 1e-37.
            assert!(
                seen > ceiling * 3 / 4,
                "attempt {n}: max {seen:?} far below {ceiling:?}"
            );
        }
        assert!(max_delay_at(6) > BASE * 2u32.pow(5), "bound did not grow");
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            let _ = b.next_delay();
        }
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), Duration::MAX);
        let _ = b.next_delay();
        assert_eq!(b.attempt(), u32::MAX);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(BASE, CAP);
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), BASE * 32);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), BASE);
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn zero_base_never_waits() {
        let mut b = Backoff::new(Duration::ZERO, CAP);
        assert!((0..100).all(|_| b.next_delay() == Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_at_most_the_ceiling() {
        let mut b = Backoff::new(BASE, CAP);
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let start = tokio::time::Instant::now();
            b.wait().await;
            assert!(start.elapsed() <= ceiling + Duration::from_millis(1));
        }
        assert_eq!(b.attempt(), 10);
    }
}
