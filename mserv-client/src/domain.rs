//! Hosted mail domains as the index keeps them, with their DKIM keys, and the cache the mail
//! roles read them through.
//!
//! A domain is hosted when it is in the index: smtp-in accepts mail for it, smtp-out delivers to
//! it without an SMTP hop and signs what its users send with its active key. Adding or removing
//! one is an index write (`mailctl domain add|del`), seen by every role within its cache's TTL,
//! with no restart.
//!
//! Keys are made by the operator's tool (applying a command must be deterministic, so the index
//! never generates one). A domain has at most one `Active` key, the one that signs; a rotation
//! adds a `Pending` key, which is published in DNS and then activated, and the old key is kept
//! `Retired` (still published, so mail signed just before the switch still verifies) until the
//! next activation drops it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::client::Client;
use crate::proto::MservError;

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// `ed25519-sha256` (RFC 8463): short keys and signatures; not every verifier has it yet.
    Ed25519,
    /// `rsa-sha256` with a 2048-bit key: what every verifier checks.
    Rsa2048,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Ed25519 => "ed25519",
            DkimAlgorithm::Rsa2048 => "rsa",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DkimAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(DkimAlgorithm::Ed25519),
            "rsa" | "rsa2048" | "rsa-2048" => Ok(DkimAlgorithm::Rsa2048),
            other => Err(format!("`{other}` is not a DKIM algorithm (ed25519, rsa)")),
        }
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyState {
    /// Made, to be published in DNS; does not sign yet.
    Pending,
    /// Signs the domain's mail.
    Active,
    /// Signed until the last activation; keep its DNS record a while longer.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DKIM key of a domain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKey {
    /// The DNS label under `_domainkey.<domain>`.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 DER. Empty in what [`crate::proto::Op::ListDomains`] answers: only smtp-out and
    /// operators read private keys.
    pub private_der: Vec<u8>,
    /// The `p=` value of the DNS record (base64).
    pub public_b64: String,
    pub state: KeyState,
    pub created_ms: u64,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field(
                "private_der",
                &format_args!("<{} bytes>", self.private_der.len()),
            )
            .field("state", &self.state)
            .finish()
    }
}

impl DkimKey {
    /// The name the TXT record is published under.
    pub fn dns_name(&self, domain: &str) -> String {
        format!("{}._domainkey.{domain}", self.selector)
    }

    /// The TXT record's text (RFC 6376 §3.6.1).
    pub fn txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.as_str(),
            self.public_b64
        )
    }

    /// The same key without its private half.
    pub fn public(&self) -> DkimKey {
        DkimKey {
            private_der: Vec::new(),
            ..self.clone()
        }
    }
}

/// A hosted domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Lowercase, no final dot.
    pub name: String,
    /// Oldest first.
    pub keys: Vec<DkimKey>,
}

impl Domain {
    /// The key that signs, if any.
    pub fn active_key(&self) -> Option<&DkimKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    pub fn pending_key(&self) -> Option<&DkimKey> {
        self.keys.iter().find(|k| k.state == KeyState::Pending)
    }

    /// The same domain without private keys.
    pub fn public(&self) -> Domain {
        Domain {
            name: self.name.clone(),
            keys: self.keys.iter().map(DkimKey::public).collect(),
        }
    }
}

/// Lowercase and check a domain name: dot-separated labels of letters, digits and hyphens (or
/// non-ASCII, for internationalized names), none empty or longer than 63 bytes, at most 253
/// bytes in all; a final dot is dropped.
pub fn normalize_domain(name: &str) -> Result<String, MservError> {
    let d = name.trim().trim_end_matches('.').to_lowercase();
    let bad = |why: &str| MservError::BadRequest {
        why: format!("domain `{name}`: {why}"),
    };
    if d.is_empty() || d.len() > 253 {
        return Err(bad("must be 1 to 253 bytes"));
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 bytes"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label may not begin or end with a hyphen"));
        }
        if !label
            .chars()
            .all(|c| c == '-' || c.is_alphanumeric() && (c.is_ascii() || !c.is_control()))
        {
            return Err(bad("only letters, digits and hyphens"));
        }
    }
    Ok(d)
}

/// Check a DKIM selector: one or more dot-separated labels of ASCII letters, digits and hyphens.
pub fn check_selector(selector: &str) -> Result<(), MservError> {
    let ok = !selector.is_empty()
        && selector.len() <= 63
        && selector
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(MservError::BadRequest {
            why: format!("`{selector}` is not a DKIM selector"),
        })
    }
}

struct Cached<T> {
    value: Arc<T>,
    fetched: Instant,
}

/// What the mail roles know of the hosted domains: read from the index at most once per `ttl`;
/// when the index cannot be reached, the last answer is used (a domain stays hosted through an
/// index outage) and only a role that never had one fails.
pub struct HostedDomains {
    client: Arc<Client>,
    ttl: Duration,
    /// Whether to read private keys too (smtp-out, which signs).
    with_keys: bool,
    cached: Mutex<Option<Cached<Vec<Domain>>>>,
}

impl HostedDomains {
    /// Names only, for smtp-in and the front doors.
    pub fn names(client: Arc<Client>, ttl: Duration) -> Self {
        HostedDomains {
            client,
            ttl,
            with_keys: false,
            cached: Mutex::new(None),
        }
    }

    /// With the private keys, for smtp-out.
    pub fn with_keys(client: Arc<Client>, ttl: Duration) -> Self {
        HostedDomains {
            with_keys: true,
            ..HostedDomains::names(client, ttl)
        }
    }

    /// Every hosted domain, by name.
    pub async fn all(&self) -> Result<Arc<Vec<Domain>>, MservError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.fetched.elapsed() < self.ttl {
                return Ok(c.value.clone());
            }
        }
        let fetched = if self.with_keys {
            self.client.domain_keys().await
        } else {
            self.client.list_domains().await
        };
        match fetched {
            Ok(domains) => {
                let value = Arc::new(domains);
                *cached = Some(Cached {
                    value: value.clone(),
                    fetched: Instant::now(),
                });
                Ok(value)
            }
            Err(e) => match cached.as_mut() {
                Some(c) => {
                    tracing::warn!(error = %e, "could not refresh the hosted domains; using the last list");
                    // Try again after another TTL, not on every call.
                    c.fetched = Instant::now();
                    Ok(c.value.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Whether `domain` (any case) is hosted here.
    pub async fn contains(&self, domain: &str) -> Result<bool, MservError> {
        let d = domain.trim_end_matches('.').to_lowercase();
        Ok(self.all().await?.iter().any(|x| x.name == d))
    }

    /// The hosted domain `domain` (any case), if it is one.
    pub async fn get(&self, domain: &str) -> Result<Option<Domain>, MservError> {
        let d = domain.trim_end_matches('.').to_lowercase();
        Ok(self.all().await?.iter().find(|x| x.name == d).cloned())
    }

    /// The names, as a set.
    pub async fn name_set(&self) -> Result<BTreeSet<String>, MservError> {
        Ok(self.all().await?.iter().map(|d| d.name.clone()).collect())
    }

    /// Forget the cached list, so the next call reads the index.
    pub async fn refresh(&self) {
        *self.cached.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked_and_lowercased() {
        assert_eq!(normalize_domain("Example.TEST.").unwrap(), "example.test");
        assert_eq!(normalize_domain("почта.рф").unwrap(), "почта.рф");
        for bad in [
            "", ".", "a..b", "-a.test", "a-.test", "a b.test", "a_b.test", "a@b",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_domain(&format!("{}.test", "a".repeat(64))).is_err());
        check_selector("mm-2026").unwrap();
        check_selector("a.b").unwrap();
        for bad in ["", "a b", "a..b", "é"] {
            assert!(check_selector(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_print_their_record_and_hide_their_secret() {
        let k = DkimKey {
            selector: "mm1".into(),
            algorithm: DkimAlgorithm::Ed25519,
            private_der: vec![1, 2, 3],
            public_b64: "AAAA".into(),
            state: KeyState::Active,
            created_ms: 0,
        };
        assert_eq!(k.dns_name("example.test"), "mm1._domainkey.example.test");
        assert_eq!(k.txt_record(), "v=DKIM1; k=ed25519; p=AAAA");
        assert!(!format!("{k:?}").contains("[1, 2, 3]"));
        assert!(k.public().private_der.is_empty());
        assert_eq!("RSA".parse::<DkimAlgorithm>(), Ok(DkimAlgorithm::Rsa2048));
        assert!("dsa".parse::<DkimAlgorithm>().is_err());
    }
}
