//! The password rules of the settings page in one place: what a new password must be, how many
//! wrong current passwords a user may give (login's throttle, `session::throttle`, counted per
//! user: an attempt takes its place before the check, so concurrent guesses cannot overrun it),
//! and the check and hashing of passwords, which are slow on purpose and so run on login's
//! bounded pool (`session::password::Hashing`: a few at once, each on a blocking thread), never
//! one thread per request.

use std::time::Duration;

use session::password::{Hashing, HashingError};
use session::throttle::{Attempt, Throttle};

use crate::Ctx;

/// Shortest new password accepted, in characters.
pub const MIN_CHARS: usize = 8;
/// Wrong current passwords allowed per user within the failure window.
pub const MAX_FAILURES: u32 = 5;

/// Why a new password is refused before anything is checked.
pub fn check_new(new: &str, confirm: Option<&str>) -> Result<(), &'static str> {
    if Some(new) != confirm {
        return Err("The new passwords differ.");
    }
    if new.chars().count() < MIN_CHARS || new.len() > session::password::MAX_PASSWORD_BYTES {
        return Err("A new password needs at least 8 characters.");
    }
    Ok(())
}

/// How long wrong current passwords are remembered.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The throttle of wrong current passwords: per user only (the signed-in user is known; the
/// client address adds nothing here, so its bound is never the one that refuses).
pub fn throttle() -> Throttle {
    Throttle::new(MAX_FAILURES, u32::MAX, FAILURE_WINDOW)
}

/// An attempt to give `user`'s current password, or how long until one is allowed again.
pub async fn admit(ctx: &Ctx, user: &str) -> Result<Attempt, Duration> {
    ctx.password_throttle.admit(user, ANYONE).await
}

/// The client address the per-user throttle is asked with (its per-client bound is off here).
const ANYONE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// How a check of the current password ended.
#[derive(Debug)]
pub enum Verdict {
    /// Right: the user's count is cleared.
    Right,
    /// Wrong: counted.
    Wrong,
    /// Every hashing slot stayed busy: not counted, try again.
    Busy,
}

/// Check `password` against `stored` for the `attempt` admitted before (so the place it took is
/// what bounds guesses in flight), on the bounded pool, and settle the attempt with the verdict.
pub async fn check(
    throttle: &Throttle,
    hashing: &Hashing,
    attempt: Attempt,
    user: &str,
    password: &str,
    stored: String,
) -> Verdict {
    match hashing.verify(password, stored).await {
        Ok(true) => {
            throttle.success(attempt, user).await;
            Verdict::Right
        }
        Ok(false) => {
            attempt.failure();
            Verdict::Wrong
        }
        Err(e) => {
            tracing::warn!(user, error = %e, "current password not checked");
            attempt.abandon();
            Verdict::Busy
        }
    }
}

/// Why a new password could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The password itself was refused (the user can choose another).
    Refused(String),
    /// Every hashing slot stayed busy.
    Busy,
}

/// The PHC string of a new password, hashed on the bounded pool.
pub async fn hash(hashing: &Hashing, password: &str) -> Result<String, HashError> {
    hashing.hash(password).await.map_err(|e| match e {
        HashingError::Busy => HashError::Busy,
        HashingError::Failed(why) => HashError::Refused(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_follow_the_rules() {
        assert_eq!(check_new("long enough", Some("long enough")), Ok(()));
        assert_eq!(
            check_new("long enough", Some("long enougH")),
            Err("The new passwords differ.")
        );
        assert_eq!(
            check_new("long enough", None),
            Err("The new passwords differ.")
        );
        assert!(check_new("short", Some("short")).is_err());
        // Characters count, not bytes: eight Cyrillic letters are enough, seven are not.
        assert_eq!(check_new("пароль12", Some("пароль12")), Ok(()));
        assert!(check_new("пароль1", Some("пароль1")).is_err());
        assert_eq!(
            check_new("🔑🔑🔑🔑🔑🔑🔑🔑", Some("🔑🔑🔑🔑🔑🔑🔑🔑")),
            Ok(())
        );
        let huge = "x".repeat(session::password::MAX_PASSWORD_BYTES + 1);
        assert!(check_new(&huge, Some(&huge)).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_wrong_guesses_never_verify_past_the_limit() {
        // Twenty wrong guesses at once, each admitted and checked as the settings page does:
        // no more than the limit reach a verdict, the rest are refused unchecked, and then even
        // the right password is refused until the window ends.
        let throttle = std::sync::Arc::new(throttle());
        let hashing = std::sync::Arc::new(Hashing::new(4, Duration::from_secs(60)));
        let stored = session::password::hash("the right one").unwrap();
        let user = "alice@example.test";
        let guesses = (0..20).map(|i| {
            let (throttle, hashing, stored) = (throttle.clone(), hashing.clone(), stored.clone());
            tokio::spawn(async move {
                let Ok(attempt) = throttle.admit(user, ANYONE).await else {
                    return None;
                };
                let guess = format!("wrong guess {i}");
                Some(check(&throttle, &hashing, attempt, user, &guess, stored).await)
            })
        });
        let mut verified = 0;
        for g in guesses.collect::<Vec<_>>() {
            match g.await.unwrap() {
                Some(Verdict::Wrong) => verified += 1,
                Some(other) => panic!("{other:?}"),
                None => {}
            }
        }
        assert_eq!(verified, MAX_FAILURES);
        assert!(throttle.admit(user, ANYONE).await.is_err());
    }

    #[tokio::test]
    async fn guesses_in_flight_count_before_their_verdict() {
        // Each guess takes its place before the password is checked: with five still being
        // checked, a sixth at the same moment is refused (a read-then-count throttle let every
        // concurrent guess through).
        let t = throttle();
        let anyone = ANYONE;
        let mut in_flight = Vec::new();
        for _ in 0..MAX_FAILURES {
            in_flight.push(
                t.admit("alice@example.test", anyone)
                    .await
                    .expect("admitted"),
            );
        }
        assert!(t.admit("alice@example.test", anyone).await.is_err());
        // Another user is not held back by alice's guesses.
        t.admit("bob@example.test", anyone)
            .await
            .expect("bob")
            .abandon();
        // Wrong: the places stay taken. A right password clears the user's count.
        let last = in_flight.pop().expect("one");
        for a in in_flight {
            a.failure();
        }
        assert!(t.admit("alice@example.test", anyone).await.is_err());
        t.success(last, "alice@example.test").await;
        t.admit("alice@example.test", anyone)
            .await
            .expect("cleared")
            .abandon();
    }
}
