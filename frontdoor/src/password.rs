//! The password rules of the settings page in one place: what a new password must be, how many
//! wrong current passwords a user may give (per user, within the failure window of
//! `Ctx::password_failures`), and the check and hashing of passwords, which are slow on purpose
//! and so run on the blocking pool, off the request threads.

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

/// The wrong current passwords `user` gave lately, or `None` once they are too many.
pub async fn failures_allowed(ctx: &Ctx, user: &str) -> Option<u32> {
    let failures = ctx.password_failures.get(user).await.unwrap_or(0);
    (failures < MAX_FAILURES).then_some(failures)
}

/// Count one more wrong current password for `user` (who had `failures`).
pub async fn failed(ctx: &Ctx, user: &str, failures: u32) {
    ctx.password_failures
        .insert(user.to_string(), failures + 1)
        .await;
}

/// Forget `user`'s wrong passwords (the password was changed).
pub async fn succeeded(ctx: &Ctx, user: &str) {
    ctx.password_failures.invalidate(user).await;
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
}
