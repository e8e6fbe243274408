//! The config file of every role, as typed structs: what each role parses at start-up, and what
//! `mailctl up` and the test harness build and serialize, so a renamed key fails at compile time
//! rather than when a process starts. No role's code lives here, only its settings: this crate
//! links neither RocksDB nor openraft, so an operator tool can depend on it.
//!
//! Every struct follows `runtime::config`'s conventions (`default`, `deny_unknown_fields`,
//! kebab-case keys, `log`/`admin`/`faults` sections) and validates itself.

/// `RoleConfig` for a config whose common sections are its `log`, `admin` and `faults` fields
/// (every role's are).
macro_rules! role_config {
    ($config:ty) => {
        impl runtime::config::RoleConfig for $config {
            fn log(&self) -> &runtime::config::LogConfig {
                &self.log
            }
            fn admin(&self) -> &runtime::config::AdminConfig {
                &self.admin
            }
            fn faults(&self) -> &runtime::config::FaultsConfig {
                &self.faults
            }
        }
    };
}

pub mod frontdoor;
pub mod keys;
pub mod login;
pub mod mserv;
pub mod smtp_in;
pub mod smtp_out;
pub mod ustore;

pub use frontdoor::FrontdoorConfig;
pub use keys::{KeyConfig, PublicKeyConfig};
pub use login::LoginConfig;
pub use mserv::{MservConfig, PeerConfig};
pub use smtp_in::{SmtpInConfig, TlsConfig};
pub use smtp_out::SmtpOutConfig;
pub use ustore::{SegmentConfig, UstoreConfig};

/// A config as its role reads it: TOML, with a first comment line saying who wrote it.
pub fn to_toml<T: serde::Serialize>(cfg: &T, written_by: &str) -> String {
    let body = toml::to_string(cfg).expect("a role config always serializes");
    format!("# {written_by}\n{body}")
}

/// `true` for `http://host[:port]...` or `https://...` with a host and no white space.
pub fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

/// Add to `errs` why `hostname` (the name a mail server gives of itself) is not a host name.
pub(crate) fn check_hostname(hostname: &str, errs: &mut Vec<String>) {
    let ok = !hostname.is_empty()
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !ok {
        errs.push(format!(
            "hostname: `{hostname}` is not a host name (letters, digits, '.' and '-')"
        ));
    }
}

/// The `[internal-tls]` section the config tests add to a file that is otherwise all defaults.
#[cfg(test)]
pub(crate) const TEST_TLS: &str = "\n[internal-tls]\nname = \"x\"\nplaintext = true\n";

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::config::{parse, Validate};

    /// Each role's defaults, once serialized, parse back to the same value: what `mailctl up`
    /// writes is what the role reads.
    fn round_trips<T>(cfg: T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Validate,
    {
        let text = to_toml(&cfg, "written by a test");
        let back: T = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg, "{text}");
    }

    #[test]
    fn every_role_config_survives_serialization() {
        round_trips(UstoreConfig::default());
        round_trips(MservConfig::default());
        round_trips(SmtpInConfig {
            tls: Some(TlsConfig {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            }),
            ..SmtpInConfig::default()
        });
        let mut out = SmtpOutConfig::default();
        out.routes
            .insert("*".into(), vec!["relay.example.net:587".into()]);
        round_trips(out);
        let keys = vec![KeyConfig::generate("k1")];
        let mut faults = runtime::config::FaultsConfig::new();
        faults.insert(
            "xfs.call".into(),
            runtime::faults::FaultSpec {
                delay_ms: 5,
                fail_rate: 0.5,
            },
        );
        let login = LoginConfig {
            current_key: "k1".into(),
            keys: keys.clone(),
            faults,
            internal_tls: xfs::tls::InternalTls::plaintext("login"),
            ..LoginConfig::default()
        };
        round_trips(login.clone());
        assert!(parse::<LoginConfig>(&to_toml(&login, "x")).is_ok());
        let session_keys = vec![keys[0].public().unwrap()];
        round_trips(FrontdoorConfig {
            session_keys: session_keys.clone(),
            ..FrontdoorConfig::default()
        });
        round_trips(UstoreConfig {
            session_keys,
            ..UstoreConfig::default()
        });
    }

    #[test]
    fn http_urls() {
        assert!(is_http_url("http://127.0.0.1:8080"));
        assert!(is_http_url("https://mail.example.test/x"));
        for bad in ["ftp://x", "http://", "https://a b", "127.0.0.1"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
