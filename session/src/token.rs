//! Session tokens: signed by login alone, checked by anyone holding its public keys (the front
//! doors, the stores) without shared state or shared secrets.
//!
//! Format: `v2.<kid>.<payload>.<sig>` where `payload` is base64url (no padding) of the JSON
//! [`Claims`] and `sig` is base64url of the Ed25519 signature over `v2.<kid>.<payload>` by the
//! key named `kid`. Only the login servers hold private keys ([`SigningKeys`]); front doors and
//! stores hold [`VerifyingKeys`], so a compromised front door can check sessions but never make
//! one. Keys rotate by adding a key id: login signs with the new one, and every verifier keeps
//! the old public key until the longest session signed with it has expired.
//!
//! A password change bumps the account's session generation at the store, and sign-out records
//! the session id as revoked there; the store refuses a token whose generation is not the
//! account's or whose session id is revoked. A new account starts at a generation taken from
//! the clock, so a re-created address never matches an old owner's token.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v2";
/// An Ed25519 private key (seed) and public key are 32 bytes each.
pub const KEY_BYTES: usize = 32;
/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;

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
    /// A random session id: names the session in logs and in the store's list of revoked
    /// sessions.
    pub sid: String,
    /// The session's CSRF token, random: every form of the session carries it. Only holders of
    /// the token (which travels in an HttpOnly cookie or a Bearer header) can read it.
    pub csrf: String,
}

impl Claims {
    /// Fresh claims for `user` at generation `gen`, valid for `ttl_secs` from `now`.
    pub fn new(user: &str, gen: u64, now: u64, ttl_secs: u64) -> Claims {
        Claims {
            user: user.to_string(),
            gen,
            iat: now,
            exp: now.saturating_add(ttl_secs),
            sid: new_sid(),
            csrf: new_sid(),
        }
    }

    /// Whether `value` is this session's CSRF token (constant-time comparison).
    pub fn csrf_matches(&self, value: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), value.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
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

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id `{id}`: use 1-32 letters, digits, '-' or '_'"
        ))
    }
}

fn key_bytes(id: &str, hex_text: &str, what: &str) -> Result<[u8; KEY_BYTES], String> {
    let bytes = hex::decode(hex_text).map_err(|e| format!("key `{id}`: {what} not hex: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "key `{id}`: {what} is {} bytes, {KEY_BYTES} needed",
            b.len()
        )
    })
}

/// The login servers' keys: key id → Ed25519 key pair. Tokens are signed with `current`.
pub struct SigningKeys {
    current: String,
    keys: BTreeMap<String, (Ed25519KeyPair, [u8; KEY_BYTES])>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("SigningKeys")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A new random private key, hex (for a config's `private-key`).
pub fn generate_private_key() -> String {
    hex::encode(rand::random::<[u8; KEY_BYTES]>())
}

/// The public key (hex) of a private key (hex), for the verifiers' configs.
pub fn public_key_of(private_hex: &str) -> Result<String, String> {
    let seed = key_bytes("-", private_hex, "private key")?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| e.to_string())?;
    Ok(hex::encode(pair.public_key().as_ref()))
}

impl SigningKeys {
    /// Keys from `(id, hex private key)` pairs; `current` must be one of them. Ids are short
    /// names of letters, digits, `-` and `_`; a private key is a 32-byte Ed25519 seed.
    pub fn new(current: &str, keys: &[(String, String)]) -> Result<SigningKeys, String> {
        let mut map = BTreeMap::new();
        for (id, private) in keys {
            check_id(id)?;
            let seed = key_bytes(id, private, "private key")?;
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|e| format!("key `{id}`: {e}"))?;
            if map.insert(id.clone(), (pair, seed)).is_some() {
                return Err(format!("key id `{id}` appears twice"));
            }
        }
        if !map.contains_key(current) {
            return Err(format!("the current key `{current}` is not among the keys"));
        }
        Ok(SigningKeys {
            current: current.to_string(),
            keys: map,
        })
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// The public halves, for checking what these keys sign.
    pub fn verifying(&self) -> VerifyingKeys {
        VerifyingKeys {
            keys: self
                .keys
                .iter()
                .map(|(id, (pair, _))| {
                    let mut public = [0u8; KEY_BYTES];
                    public.copy_from_slice(pair.public_key().as_ref());
                    (id.clone(), public)
                })
                .collect(),
        }
    }

    /// Sign `claims` with the current key.
    pub fn issue(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims encode"));
        let signed = format!("{VERSION}.{}.{payload}", self.current);
        let (pair, _) = &self.keys[&self.current];
        let sig = pair.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A MAC key of this login's own, derived from a private key (for values login alone makes
    /// and checks, such as its sign-in form's CSRF field).
    fn mac(seed: &[u8; KEY_BYTES], msg: &[u8]) -> HmacSha256 {
        let key = Sha256::new()
            .chain_update(b"megamail login mac\0")
            .chain_update(seed)
            .finalize();
        let mut m = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
        m.update(msg);
        m
    }

    /// A value bound to `sid` for `purpose`, that only a holder of these keys can make:
    /// HMAC under the current key over `purpose \0 sid`, base64url.
    pub fn derive(&self, purpose: &str, sid: &str) -> String {
        let (_, seed) = &self.keys[&self.current];
        let mac = Self::mac(seed, format!("{purpose}\0{sid}").as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `value` is what [`SigningKeys::derive`] gives for `purpose` and `sid` under any
    /// key (constant-time comparison).
    pub fn check_derived(&self, purpose: &str, sid: &str, value: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(value) else {
            return false;
        };
        let msg = format!("{purpose}\0{sid}");
        self.keys
            .values()
            .any(|(_, seed)| Self::mac(seed, msg.as_bytes()).verify_slice(&raw).is_ok())
    }
}

/// What front doors and stores hold: key id → Ed25519 public key. They check tokens; they
/// cannot make one.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKeys {
    keys: BTreeMap<String, [u8; KEY_BYTES]>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl VerifyingKeys {
    /// Keys from `(id, hex public key)` pairs, at least one.
    pub fn new(keys: &[(String, String)]) -> Result<VerifyingKeys, String> {
        if keys.is_empty() {
            return Err("at least one session key is needed".into());
        }
        let mut map = BTreeMap::new();
        for (id, public) in keys {
            check_id(id)?;
            let bytes = key_bytes(id, public, "public key")?;
            if map.insert(id.clone(), bytes).is_some() {
                return Err(format!("key id `{id}` appears twice"));
            }
        }
        Ok(VerifyingKeys { keys: map })
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Check a token's signature and expiry against `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let public = self
            .keys
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
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

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn signing(current: &str) -> SigningKeys {
        SigningKeys::new(
            current,
            &[("k1".into(), K1.into()), ("k2".into(), K2.into())],
        )
        .unwrap()
    }

    fn claims() -> Claims {
        Claims {
            exp: 2000,
            ..Claims::new("alice@megamail.test", 3, 1000, 1000)
        }
    }

    #[test]
    fn a_token_round_trips_and_rotation_keeps_old_tokens_valid() {
        let c = claims();
        let old = signing("k1").issue(&c);
        assert!(old.starts_with("v2.k1."));
        let verifiers = signing("k2").verifying();
        assert_eq!(verifiers.verify(&old, 1500).unwrap(), c);
        // After rotation to k2 the k1 token still verifies, and new tokens use k2.
        assert!(signing("k2").issue(&c).starts_with("v2.k2."));
        // Verifiers built from the public keys in a config agree.
        let from_config = VerifyingKeys::new(&[
            ("k1".into(), public_key_of(K1).unwrap()),
            ("k2".into(), public_key_of(K2).unwrap()),
        ])
        .unwrap();
        assert_eq!(from_config, verifiers);
        // A verifier that no longer holds k1 refuses its tokens.
        let only_k2 = VerifyingKeys::new(&[("k2".into(), public_key_of(K2).unwrap())]).unwrap();
        assert_eq!(
            only_k2.verify(&old, 1500),
            Err(TokenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn tampering_expiry_and_unknown_keys_are_refused() {
        let k = signing("k1");
        let v = k.verifying();
        let t = k.issue(&claims());
        assert_eq!(v.verify(&t, 2000), Err(TokenError::Expired));
        let (_, sig) = t.rsplit_once('.').unwrap();
        let mut forged = claims();
        forged.user = "mallory@megamail.test".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let swapped = format!("v2.k1.{payload}.{sig}");
        assert_eq!(v.verify(&swapped, 1500), Err(TokenError::BadSignature));
        // A key of another login, under a known id, does not verify.
        let other = SigningKeys::new("k1", &[("k1".into(), "99".repeat(32))]).unwrap();
        assert_eq!(
            v.verify(&other.issue(&claims()), 1500),
            Err(TokenError::BadSignature)
        );
        let (signed, _) = t.rsplit_once('.').unwrap();
        for bad in [
            "",
            "v2",
            "v2.k1.x",
            "v1.k1.e30.AAAA",
            &format!("{signed}.!!"),
            &format!("{signed}.{}", "A".repeat(MAX_TOKEN_BYTES)),
        ] {
            assert!(v.verify(bad, 1500).is_err(), "{bad}");
        }
    }

    #[test]
    fn csrf_values_are_per_session_and_login_derivations_need_its_keys() {
        let a = claims();
        let b = claims();
        assert_ne!(a.csrf, b.csrf);
        assert!(a.csrf_matches(&a.csrf.clone()));
        assert!(!a.csrf_matches(&b.csrf));
        assert!(!a.csrf_matches(""));
        let k = signing("k1");
        let v = k.derive("login-csrf", "s1");
        assert!(k.check_derived("login-csrf", "s1", &v));
        assert!(signing("k2").check_derived("login-csrf", "s1", &v));
        assert!(!k.check_derived("login-csrf", "s2", &v));
        assert!(!k.check_derived("other", "s1", &v));
        assert!(!k.check_derived("login-csrf", "s1", "not-base64!"));
        let other = SigningKeys::new("k1", &[("k1".into(), "99".repeat(32))]).unwrap();
        assert!(!other.check_derived("login-csrf", "s1", &v));
    }

    #[test]
    fn bad_key_sets_are_named() {
        let one = |id: &str, key: &str| vec![(id.to_string(), key.to_string())];
        assert!(SigningKeys::new("k1", &one("k1", "ab")).is_err());
        assert!(SigningKeys::new("k1", &one("k1", &"zz".repeat(32))).is_err());
        assert!(SigningKeys::new("kx", &one("k1", K1)).is_err());
        assert!(SigningKeys::new("a b", &one("a b", K1)).is_err());
        assert!(VerifyingKeys::new(&[]).is_err());
        assert!(VerifyingKeys::new(&one("k1", "ab")).is_err());
        let twice = [("k1".into(), K1.into()), ("k1".into(), K2.into())];
        assert!(VerifyingKeys::new(&twice).is_err());
        assert!(!format!("{:?}", signing("k1")).contains("1111"));
    }
}
