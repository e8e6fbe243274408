//! The session signing keys the login servers and the front doors share.

use serde::{Deserialize, Serialize};
use session::token::Keys;

/// One session signing key: an id (named in every token it signs) and a hex secret of at least
/// 32 bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeyConfig {
    pub id: String,
    /// Hex, at least 32 bytes.
    pub secret: String,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The signing keys of a `current-key` and its `[[keys]]` list.
pub fn signing_keys(current: &str, keys: &[KeyConfig]) -> Result<Keys, String> {
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.id.clone(), k.secret.clone()))
        .collect();
    Keys::new(current, &pairs)
}

/// The check both roles make of their keys: at least one, all well formed, the current one
/// among them.
pub fn check(current: &str, keys: &[KeyConfig], errs: &mut Vec<String>) {
    if keys.is_empty() {
        errs.push("keys: at least one [[keys]] entry (id and hex secret) is needed".into());
    } else if let Err(e) = signing_keys(current, keys) {
        errs.push(format!("keys: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let k = KeyConfig {
            id: "k1".into(),
            secret: "ab".repeat(32),
        };
        assert!(!format!("{k:?}").contains("abab"));
    }

    #[test]
    fn keys_are_checked() {
        let good = [KeyConfig {
            id: "k1".into(),
            secret: "ab".repeat(32),
        }];
        let mut errs = Vec::new();
        check("k1", &good, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        check("k2", &good, &mut errs);
        check("k1", &[], &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.starts_with("keys: ")));
    }
}
