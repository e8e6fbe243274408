//! Session keys: login's private signing keys, and the public keys the front doors and the
//! stores check sessions with.

use serde::{Deserialize, Serialize};
use session::token::{SigningKeys, VerifyingKeys};

/// One of login's session signing keys: an id (named in every token it signs) and a hex
/// Ed25519 private key (32 bytes).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeyConfig {
    pub id: String,
    /// Hex, 32 bytes. Only the login servers hold it.
    pub private_key: String,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyConfig {
    /// A new random key named `id`.
    pub fn generate(id: &str) -> KeyConfig {
        KeyConfig {
            id: id.to_string(),
            private_key: session::token::generate_private_key(),
        }
    }

    /// Its public half, for the verifiers' configs.
    pub fn public(&self) -> Result<PublicKeyConfig, String> {
        Ok(PublicKeyConfig {
            id: self.id.clone(),
            public_key: session::token::public_key_of(&self.private_key)?,
        })
    }
}

/// A session key as the front doors and stores hold it: its id and its hex Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PublicKeyConfig {
    pub id: String,
    /// Hex, 32 bytes.
    pub public_key: String,
}

/// The signing keys of a `current-key` and its `[[keys]]` list.
pub fn signing_keys(current: &str, keys: &[KeyConfig]) -> Result<SigningKeys, String> {
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.id.clone(), k.private_key.clone()))
        .collect();
    SigningKeys::new(current, &pairs)
}

/// The verifying keys of a `[[session-keys]]` list.
pub fn verifying_keys(keys: &[PublicKeyConfig]) -> Result<VerifyingKeys, String> {
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.id.clone(), k.public_key.clone()))
        .collect();
    VerifyingKeys::new(&pairs)
}

/// The check login makes of its keys: at least one, all well formed, the current one among
/// them.
pub fn check(current: &str, keys: &[KeyConfig], errs: &mut Vec<String>) {
    if keys.is_empty() {
        errs.push("keys: at least one [[keys]] entry (id and hex private-key) is needed".into());
    } else if let Err(e) = signing_keys(current, keys) {
        errs.push(format!("keys: {e}"));
    }
}

/// The check a verifier makes of its public keys: at least one, all well formed.
pub fn check_public(keys: &[PublicKeyConfig], errs: &mut Vec<String>) {
    if let Err(e) = verifying_keys(keys) {
        errs.push(format!(
            "session-keys: {e} (each [[session-keys]] has an id and a hex public-key)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let k = KeyConfig {
            id: "k1".into(),
            private_key: "ab".repeat(32),
        };
        assert!(!format!("{k:?}").contains("abab"));
    }

    #[test]
    fn keys_are_checked() {
        let good = [KeyConfig::generate("k1")];
        let mut errs = Vec::new();
        check("k1", &good, &mut errs);
        check_public(&[good[0].public().unwrap()], &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        check("k2", &good, &mut errs);
        check("k1", &[], &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.starts_with("keys: ")));
        errs.clear();
        check_public(&[], &mut errs);
        let short = PublicKeyConfig {
            id: "k1".into(),
            public_key: "ab".into(),
        };
        check_public(&[short], &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.starts_with("session-keys: ")));
    }

    #[test]
    fn a_public_key_checks_what_its_private_key_signs() {
        let k = KeyConfig::generate("k7");
        let signer = signing_keys("k7", std::slice::from_ref(&k)).unwrap();
        let verifier = verifying_keys(&[k.public().unwrap()]).unwrap();
        let claims = session::token::Claims::new("a@b.test", 1, 100, 50);
        let token = signer.issue(&claims);
        assert_eq!(verifier.verify(&token, 120).unwrap(), claims);
    }
}
