//! Failed sign-in counters per user id and per client address, each in a fixed window that
//! starts at the first failure.
//!
//! An attempt reserves its place before the password is checked (so concurrent guesses cannot
//! overrun the limit); a success or an attempt that never reached a verdict (the store was down)
//! gives the place back, and a success also clears the user's counter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

/// Most counters kept per kind; the oldest go first past it.
const CAPACITY: u64 = 1_000_000;

/// One counter: failures since the window began.
#[derive(Debug)]
struct Window {
    started: Instant,
    count: AtomicU32,
}

impl Window {
    fn retry_after(&self, window: Duration) -> Duration {
        window.saturating_sub(self.started.elapsed())
    }
}

/// The failure counters.
pub struct Throttle {
    users: Cache<String, Arc<Window>>,
    clients: Cache<IpAddr, Arc<Window>>,
    max_per_user: u32,
    max_per_client: u32,
    window: Duration,
}

/// An attempt admitted by [`Throttle::admit`]; tell the throttle how it ended.
#[must_use = "an attempt must be settled with success, failure or abandon"]
pub struct Attempt {
    user: Arc<Window>,
    client: Arc<Window>,
}

impl Throttle {
    pub fn new(max_per_user: u32, max_per_client: u32, window: Duration) -> Throttle {
        Throttle {
            users: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(window)
                .build(),
            clients: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(window)
                .build(),
            max_per_user,
            max_per_client,
            window,
        }
    }

    /// Count an attempt for `user` from `client`. `Err` is how long until the window that
    /// refused it ends (at least a second).
    pub async fn admit(&self, user: &str, client: IpAddr) -> Result<Attempt, Duration> {
        let new = || async {
            Arc::new(Window {
                started: Instant::now(),
                count: AtomicU32::new(0),
            })
        };
        let u = self
            .users
            .entry_by_ref(user)
            .or_insert_with(new())
            .await
            .into_value();
        let c = self
            .clients
            .entry(client)
            .or_insert_with(new())
            .await
            .into_value();
        let nu = u.count.fetch_add(1, Ordering::AcqRel) + 1;
        let nc = c.count.fetch_add(1, Ordering::AcqRel) + 1;
        if nu > self.max_per_user || nc > self.max_per_client {
            // A refused attempt is not a failure: the counts stay at what was tried.
            u.count.fetch_sub(1, Ordering::AcqRel);
            c.count.fetch_sub(1, Ordering::AcqRel);
            let mut wait = Duration::ZERO;
            if nu > self.max_per_user {
                wait = wait.max(u.retry_after(self.window));
            }
            if nc > self.max_per_client {
                wait = wait.max(c.retry_after(self.window));
            }
            return Err(wait.max(Duration::from_secs(1)));
        }
        Ok(Attempt { user: u, client: c })
    }

    /// The password was right: give the client's place back and clear the user's counter.
    pub async fn success(&self, attempt: Attempt, user: &str) {
        attempt.client.count.fetch_sub(1, Ordering::AcqRel);
        self.users.invalidate(user).await;
    }
}

impl Attempt {
    /// Wrong password or no such user: the reserved place stays counted.
    pub fn failure(self) {}

    /// No verdict (the store or index could not be asked): give the places back.
    pub fn abandon(self) {
        self.user.count.fetch_sub(1, Ordering::AcqRel);
        self.client.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn the_user_limit_refuses_past_n_failures_and_a_success_clears_it() {
        let t = Throttle::new(3, 100, Duration::from_secs(60));
        for _ in 0..3 {
            t.admit("u@x", A).await.unwrap().failure();
        }
        let wait = t.admit("u@x", B).await.err().expect("refused");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        // Refused attempts do not extend anything; another user is not affected.
        t.admit("v@x", A).await.unwrap().failure();

        let t = Throttle::new(3, 100, Duration::from_secs(60));
        for _ in 0..2 {
            t.admit("u@x", A).await.unwrap().failure();
        }
        let ok = t.admit("u@x", A).await.unwrap();
        t.success(ok, "u@x").await;
        for _ in 0..3 {
            t.admit("u@x", A).await.unwrap().failure();
        }
        assert!(t.admit("u@x", A).await.is_err());
    }

    #[tokio::test]
    async fn the_client_limit_spans_users_and_abandoned_attempts_are_not_counted() {
        let t = Throttle::new(100, 2, Duration::from_secs(60));
        t.admit("a@x", A).await.unwrap().abandon();
        t.admit("b@x", A).await.unwrap().failure();
        t.admit("c@x", A).await.unwrap().failure();
        assert!(t.admit("d@x", A).await.is_err());
        assert!(t.admit("d@x", B).await.is_ok());
    }

    #[tokio::test]
    async fn the_window_ends() {
        let t = Throttle::new(1, 100, Duration::from_millis(200));
        t.admit("u@x", A).await.unwrap().failure();
        assert!(t.admit("u@x", A).await.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(t.admit("u@x", A).await.is_ok());
    }
}
