//! DKIM (RFC 6376): making a domain's keys, and signing what its users send with the `mail-auth`
//! crate.
//!
//! Keys are Ed25519 (RFC 8463) or RSA-2048, kept in the index as PKCS#8 DER. The public half is
//! published as the `p=` of a TXT record: the raw 32 bytes for Ed25519, the SubjectPublicKeyInfo
//! for RSA, both base64. Signatures use relaxed/relaxed canonicalization and cover the headers a
//! reader sees and a forger would change; they are computed over the message exactly as it will
//! arrive (CRLF line endings, [`crate::wire::crlf_lines`]).

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mserv_client::{DkimAlgorithm, DkimKey, KeyState};

/// The headers signed, when present (RFC 6376 §5.4.1's list, less the trace headers).
const SIGNED_HEADERS: [&str; 14] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Unsubscribe",
];

/// A new key for `selector`, in state `Pending` (the index sets the state it really gets).
pub fn generate(algorithm: DkimAlgorithm, selector: &str) -> Result<DkimKey, String> {
    let (private_der, public) = match algorithm {
        DkimAlgorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| e.to_string())?;
            (der, key.public_key())
        }
        DkimAlgorithm::Rsa2048 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| e.to_string())?;
            let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| e.to_string())?;
            (der.as_bytes().to_vec(), public.as_bytes().to_vec())
        }
    };
    Ok(DkimKey {
        selector: selector.to_string(),
        algorithm,
        private_der,
        public_b64: base64::engine::general_purpose::STANDARD.encode(public),
        state: KeyState::Pending,
        created_ms: runtime::time::now_ms(),
    })
}

/// A selector for a key made now: `mm`, the UTC date and the minute (`mm202612021030`).
pub fn selector_for_now() -> String {
    let secs = runtime::time::now_secs();
    let (y, m, d) = runtime::time::civil_date(secs / 86_400);
    let minute = secs % 86_400 / 60;
    format!("mm{y:04}{m:02}{d:02}{:02}{:02}", minute / 60, minute % 60)
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One domain's active key, ready to sign.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    key: Key,
}

impl Signer {
    /// The signer of `domain` with `key` (which must carry its private half).
    pub fn new(domain: &str, key: &DkimKey) -> Result<Signer, String> {
        let bad = |e: mail_auth::Error| format!("DKIM key {} of {domain}: {e}", key.selector);
        let key_impl = match key.algorithm {
            DkimAlgorithm::Ed25519 => {
                let k = Ed25519Key::from_pkcs8_der(&key.private_der).map_err(bad)?;
                Key::Ed25519(
                    DkimSigner::from_key(k)
                        .domain(domain)
                        .selector(&key.selector)
                        .headers(SIGNED_HEADERS)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )
            }
            DkimAlgorithm::Rsa2048 => {
                let k = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs8(
                    rustls_pki_types::PrivatePkcs8KeyDer::from(key.private_der.as_slice()),
                ))
                .map_err(bad)?;
                Key::Rsa(
                    DkimSigner::from_key(k)
                        .domain(domain)
                        .selector(&key.selector)
                        .headers(SIGNED_HEADERS)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )
            }
        };
        Ok(Signer {
            domain: domain.to_string(),
            selector: key.selector.clone(),
            key: key_impl,
        })
    }

    /// `message` (CRLF line endings) with its `DKIM-Signature:` header first.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let sig = match &self.key {
            Key::Rsa(s) => s.sign(message),
            Key::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| format!("signing for {}: {e}", self.domain))?;
        let header = sig.to_header();
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@example.org\r\n\
        Subject: hello\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\
        \r\nHello Bob.\r\n";

    #[test]
    fn both_kinds_of_key_sign() {
        for alg in [DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048] {
            let key = generate(alg, "mm1").unwrap();
            assert_eq!(key.state, KeyState::Pending);
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&key.public_b64)
                .unwrap();
            match alg {
                DkimAlgorithm::Ed25519 => assert_eq!(raw.len(), 32),
                // SubjectPublicKeyInfo of a 2048-bit key.
                DkimAlgorithm::Rsa2048 => assert_eq!(raw.len(), 294),
            }
            let signer = Signer::new("example.test", &key).unwrap();
            let signed = signer.sign(MSG).unwrap();
            let text = String::from_utf8(signed.clone()).unwrap();
            assert!(text.starts_with("DKIM-Signature: v=1; a="), "{text}");
            assert!(text.contains("d=example.test"), "{text}");
            assert!(text.contains("s=mm1"), "{text}");
            assert!(text.contains("c=relaxed/relaxed"), "{text}");
            assert!(signed.ends_with(MSG));
            // The header is folded with CRLF only.
            let header = &signed[..signed.len() - MSG.len()];
            assert!(!header.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
    }

    #[test]
    fn a_key_without_its_private_half_does_not_sign() {
        let key = generate(DkimAlgorithm::Ed25519, "mm1").unwrap().public();
        assert!(Signer::new("example.test", &key).is_err());
        let mut key = generate(DkimAlgorithm::Rsa2048, "mm1").unwrap();
        key.private_der.truncate(10);
        assert!(Signer::new("example.test", &key).is_err());
    }

    #[test]
    fn selectors_are_dated() {
        let s = selector_for_now();
        assert!(s.starts_with("mm20"), "{s}");
        mserv_client::domain::check_selector(&s).unwrap();
    }
}
