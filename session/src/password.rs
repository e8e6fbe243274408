//! Password hashing: argon2id in PHC string form. The store keeps only the hash; hashing and
//! checking run on the login servers, the front doors (password change) and mailctl, never on a
//! store. [`Hashing`] runs them on blocking threads, a bounded number at once.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longest password accepted (bytes): hashing cost must not be the attacker's to choose.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn hasher() -> Argon2<'static> {
    // 19 MiB, 2 passes, 1 lane: the OWASP minimum for argon2id.
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash a new password.
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// Whether `password` matches `stored` (a PHC string). A malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    // The parameters come from the stored hash, so older hashes keep verifying.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Why a hashing job did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashingError {
    /// Every slot stayed busy for the whole wait: the server is overloaded, try again.
    #[error("every hashing slot is busy")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The bounded pool password checks run on: each holds a core and 19 MiB, so at most `slots`
/// run at once and a caller waits at most `wait` for a slot.
pub struct Hashing {
    slots: Semaphore,
    wait: Duration,
}

impl Hashing {
    pub fn new(slots: usize, wait: Duration) -> Hashing {
        Hashing {
            slots: Semaphore::new(slots.max(1)),
            wait,
        }
    }

    /// Two slots per core, waiting up to ten seconds: what the servers use.
    pub fn for_this_machine() -> Hashing {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Hashing::new(2 * cores, Duration::from_secs(10))
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashingError> {
        let _slot = tokio::time::timeout(self.wait, self.slots.acquire())
            .await
            .map_err(|_| HashingError::Busy)?
            .map_err(|_| HashingError::Failed("shutting down".into()))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| HashingError::Failed(e.to_string()))
    }

    /// [`verify`] on the pool.
    pub async fn verify(&self, password: &str, stored: String) -> Result<bool, HashingError> {
        let password = password.to_string();
        self.run(move || verify(&password, &stored)).await
    }

    /// [`hash`] on the pool; a password that cannot be hashed is `Failed` with the reason.
    pub async fn hash(&self, password: &str) -> Result<String, HashingError> {
        let password = password.to_string();
        self.run(move || hash(&password))
            .await?
            .map_err(HashingError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b);
        assert!(verify("correct horse", &a));
        assert!(!verify("correct horsf", &a));
        assert!(!verify("correct horse", "x"));
        assert!(!verify("", &a));
        assert!(hash("").is_err());
        assert!(hash(&"p".repeat(2000)).is_err());
    }

    #[tokio::test]
    async fn the_pool_runs_jobs_and_refuses_when_every_slot_stays_busy() {
        let pool = Hashing::new(1, Duration::from_millis(50));
        let h = pool.hash("pässwörd 日本").await.unwrap();
        assert_eq!(pool.verify("pässwörd 日本", h.clone()).await, Ok(true));
        assert_eq!(pool.verify("password", h).await, Ok(false));
        let _held = pool.slots.acquire().await.unwrap();
        assert_eq!(pool.verify("x", "y".into()).await, Err(HashingError::Busy));
        assert!(matches!(pool.hash("").await, Err(HashingError::Busy)));
    }
}
