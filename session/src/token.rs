//! Session tokens: signed, self-contained, checked by any front door without shared state.
//!
//! Format: `v1.<kid>.<payload>.<mac>` where `payload` is base64url (no padding) of the JSON
//! [`Claims`] and `mac` is base64url of HMAC-SHA256 over `v1.<kid>.<payload>` with the key named
//! `kid`. Keys rotate by adding a new key id, signing with it, and keeping the old one for
//! verification until the longest session has expired.
//!
//! A password change bumps the account's session generation at the store; a token carries the
//! generation it was issued under, and the front door refuses a token whose generation is older.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
/// Shortest key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 32;

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (full lowercase address).
    pub user: String,
    /// The account's session generation when the token was issued.
    pub gen: u64,
    /// Issued and expiry times, seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
    /// A random session id: names the session in logs, and seeds its CSRF token.
    pub sid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key `{0}`")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// The signing keys: key id → secret. Tokens are signed with `current`; any key verifies.
#[derive(Clone)]
pub struct Keys {
    current: String,
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Keys")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keys {
    /// Keys from `(id, hex secret)` pairs; `current` must be one of them. Ids are short names of
    /// letters, digits, `-` and `_`; secrets at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(current: &str, keys: &[(String, String)]) -> Result<Keys, String> {
        let mut map = BTreeMap::new();
        for (id, secret) in keys {
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !id_ok {
                return Err(format!(
                    "key id `{id}`: use 1-32 letters, digits, '-' or '_'"
                ));
            }
            let bytes = hex::decode(secret).map_err(|e| format!("key `{id}`: not hex: {e}"))?;
            if bytes.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "key `{id}`: {} bytes, at least {MIN_KEY_BYTES} needed",
                    bytes.len()
                ));
            }
            if map.insert(id.clone(), bytes).is_some() {
                return Err(format!("key id `{id}` appears twice"));
            }
        }
        if !map.contains_key(current) {
            return Err(format!("the current key `{current}` is not among the keys"));
        }
        Ok(Keys {
            current: current.to_string(),
            keys: map,
        })
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    fn mac(&self, kid: &str, msg: &[u8]) -> Option<HmacSha256> {
        let key = self.keys.get(kid)?;
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(msg);
        Some(m)
    }

    /// Sign `claims` with the current key.
    pub fn issue(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims encode"));
        let signed = format!("{VERSION}.{}.{payload}", self.current);
        let mac = self
            .mac(&self.current, signed.as_bytes())
            .expect("current key exists")
            .finalize()
            .into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Check a token's signature and expiry against `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let m = self
            .mac(kid, signed.as_bytes())
            .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
        m.verify_slice(&mac).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// A value bound to one session for a given purpose (e.g. the CSRF token of session `sid`):
    /// HMAC with the current key over `purpose \0 sid`, base64url.
    pub fn derive(&self, purpose: &str, sid: &str) -> String {
        let msg = format!("{purpose}\0{sid}");
        let mac = self
            .mac(&self.current, msg.as_bytes())
            .expect("current key exists")
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(mac)
    }

    /// Whether `value` is what [`Keys::derive`] gives for `purpose` and `sid` under any key
    /// (constant-time comparison).
    pub fn check_derived(&self, purpose: &str, sid: &str, value: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(value) else {
            return false;
        };
        let msg = format!("{purpose}\0{sid}");
        self.keys.keys().any(|kid| {
            self.mac(kid, msg.as_bytes())
                .is_some_and(|m| m.verify_slice(&raw).is_ok())
        })
    }
}

/// A fresh random session id.
pub fn new_sid() -> String {
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str) -> Keys {
        Keys::new(
            current,
            &[
                ("k1".into(), "11".repeat(32)),
                ("k2".into(), "22".repeat(32)),
            ],
        )
        .unwrap()
    }

    fn claims() -> Claims {
        Claims {
            user: "alice@megamail.test".into(),
            gen: 3,
            iat: 1000,
            exp: 2000,
            sid: new_sid(),
        }
    }

    #[test]
    fn a_token_round_trips_and_rotation_keeps_old_tokens_valid() {
        let c = claims();
        let old = keys("k1").issue(&c);
        assert!(old.starts_with("v1.k1."));
        assert_eq!(keys("k1").verify(&old, 1500).unwrap(), c);
        // After rotation to k2 the k1 token still verifies, and new tokens use k2.
        assert_eq!(keys("k2").verify(&old, 1500).unwrap(), c);
        assert!(keys("k2").issue(&c).starts_with("v1.k2."));
    }

    #[test]
    fn tampering_expiry_and_unknown_keys_are_refused() {
        let k = keys("k1");
        let t = k.issue(&claims());
        assert_eq!(k.verify(&t, 2000), Err(TokenError::Expired));
        let (signed, mac) = t.rsplit_once('.').unwrap();
        let mut forged = claims();
        forged.user = "mallory@megamail.test".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let swapped = format!("v1.k1.{payload}.{mac}");
        assert_eq!(k.verify(&swapped, 1500), Err(TokenError::BadSignature));
        let other = Keys::new("k9", &[("k9".into(), "99".repeat(32))]).unwrap();
        let t9 = other.issue(&claims());
        assert_eq!(
            k.verify(&t9, 1500),
            Err(TokenError::UnknownKey("k9".into()))
        );
        for bad in [
            "",
            "v1",
            "v1.k1.x",
            "v2.k1.e30.AAAA",
            &format!("{signed}.!!"),
        ] {
            assert!(k.verify(bad, 1500).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_values_are_bound_to_the_session_and_purpose() {
        let k = keys("k1");
        let v = k.derive("csrf", "s1");
        assert!(k.check_derived("csrf", "s1", &v));
        assert!(keys("k2").check_derived("csrf", "s1", &v));
        assert!(!k.check_derived("csrf", "s2", &v));
        assert!(!k.check_derived("other", "s1", &v));
        assert!(!k.check_derived("csrf", "s1", "not-base64!"));
    }

    #[test]
    fn bad_key_sets_are_named() {
        assert!(Keys::new("k1", &[("k1".into(), "ab".into())]).is_err());
        assert!(Keys::new("k1", &[("k1".into(), "zz".repeat(32))]).is_err());
        assert!(Keys::new("kx", &[("k1".into(), "11".repeat(32))]).is_err());
        assert!(Keys::new("a b", &[("a b".into(), "11".repeat(32))]).is_err());
    }
}
