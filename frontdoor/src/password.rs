//! The password rules of the settings page in one place: what a new password must be, how many
//! wrong current passwords a user may give (login's throttle, `session::throttle`, counted per
//! user: an attempt takes its place before the check, so concurrent guesses cannot overrun it),
//! and the check and hashing of passwords, which are slow on purpose and so run on the blocking
//! pool, off the request threads.

use std::time::Duration;

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
    let anyone = std::net::IpAddr::from([0, 0, 0, 0]);
    ctx.password_throttle.admit(user, anyone).await
}

/// Whether `password` matches the stored PHC string.
pub async fn verify(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || session::password::verify(&password, &stored))
        .await
        .unwrap_or(false)
}

/// Why a new password could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The password itself was refused (the user can choose another).
    Refused(String),
    /// The hashing task failed.
    Failed(String),
}

/// The PHC string of a new password.
pub async fn hash(password: String) -> Result<String, HashError> {
    match tokio::task::spawn_blocking(move || session::password::hash(&password)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(HashError::Refused(e)),
        Err(e) => Err(HashError::Failed(e.to_string())),
    }
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

    #[tokio::test]
    async fn guesses_in_flight_count_before_their_verdict() {
        // Each guess takes its place before the password is checked: with five still being
        // checked, a sixth at the same moment is refused (a read-then-count throttle let every
        // concurrent guess through).
        let t = throttle();
        let anyone = std::net::IpAddr::from([0, 0, 0, 0]);
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
