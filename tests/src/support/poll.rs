//! Waiting for something to become true: the one loop behind every "until it answers, or until
//! the deadline" in the tests.

use std::future::Future;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A deadline, and the pause between two tries: the loop of a test that tries something until
/// it holds, where the closures of [`eventually`] do not fit (a borrowed connection, a `break`
/// with a value).
///
/// ```ignore
/// let deadline = Deadline::after(Duration::from_secs(10), Duration::from_millis(200));
/// let code = loop {
///     let code = smtp.cmd("RCPT TO:<bob@megamail.test>").await.0;
///     if code == 250 || !deadline.pause().await {
///         break code;
///     }
/// };
/// ```
pub struct Deadline {
    at: Instant,
    every: Duration,
}

impl Deadline {
    /// `timeout` from now, trying again every `every`.
    pub fn after(timeout: Duration, every: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            every,
        }
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Pause before the next try and say `true`; `false` at once when the deadline has passed.
    pub async fn pause(&self) -> bool {
        if self.passed() {
            return false;
        }
        tokio::time::sleep(self.every).await;
        true
    }
}

/// Call `attempt` until it succeeds, pausing `every` between attempts, for as long as
/// `retry(&error)` says the error may pass and `timeout` has not passed; the last result.
pub async fn retry_while<T, E, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut attempt: F,
    mut retry: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Deadline::after(timeout, every);
    loop {
        let r = attempt().await;
        match &r {
            Err(e) if retry(e) => {}
            _ => return r,
        }
        if !deadline.pause().await {
            return r;
        }
    }
}

/// Ask `check` every `every` until it answers `Ok`, for at most `timeout`: its value, or its last
/// `Err` (say there what was seen instead, for the failure message).
pub async fn eventually<T, E, F, Fut>(timeout: Duration, every: Duration, check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_while(timeout, every, check, |_| true).await
}

/// Wait up to `timeout` for `child` to exit; its status, or `None` when it was still running
/// (it is then killed with SIGKILL and reaped).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Deadline::after(timeout, Duration::from_millis(20));
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if deadline.passed() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(deadline.every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn a_check_is_asked_again_until_it_holds() {
        let n = Cell::new(0);
        let got: Result<u32, String> = eventually(Duration::from_secs(5), Duration::ZERO, || {
            n.set(n.get() + 1);
            let k = n.get();
            async move {
                if k == 3 {
                    Ok(k)
                } else {
                    Err(format!("only {k}"))
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn the_last_answer_is_kept_when_time_runs_out() {
        let n = Cell::new(0);
        let started = Instant::now();
        let got: Result<(), String> =
            eventually(Duration::from_millis(50), Duration::from_millis(10), || {
                n.set(n.get() + 1);
                let k = n.get();
                async move { Err(format!("seen {k}")) }
            })
            .await;
        assert_eq!(got, Err(format!("seen {}", n.get())));
        assert!(n.get() >= 2 && started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn an_error_that_will_not_pass_ends_the_wait_at_once() {
        let n = Cell::new(0);
        let got: Result<(), &str> = retry_while(
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n.set(n.get() + 1);
                let k = n.get();
                async move { Err(if k < 3 { "later" } else { "never" }) }
            },
            |e| *e == "later",
        )
        .await;
        assert_eq!((got, n.get()), (Err("never"), 3));
    }

    #[tokio::test]
    async fn a_deadline_pauses_until_it_passes() {
        let deadline = Deadline::after(Duration::from_millis(60), Duration::from_millis(20));
        let started = Instant::now();
        let mut pauses = 0;
        while deadline.pause().await {
            pauses += 1;
        }
        assert!(deadline.passed());
        assert!((2..=4).contains(&pauses), "{pauses}");
        assert!(started.elapsed() >= Duration::from_millis(60));
        let over = Deadline::after(Duration::ZERO, Duration::from_secs(60));
        assert!(!over.pause().await, "no pause once it has passed");
    }

    #[test]
    fn a_child_that_overstays_is_killed() {
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        let status = wait_exit(&mut quick, Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
        let mut slow = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let started = Instant::now();
        assert_eq!(
            wait_exit(&mut slow, Duration::from_millis(100)).unwrap(),
            None
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(slow.try_wait().unwrap().is_some(), "reaped");
    }
}
