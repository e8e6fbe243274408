//! TOML configuration: the sections every role embeds (`log`, `admin`, `faults`), loading and validation.
//!
//! A role config is one serde struct with `#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]`
//! whose fields include `log: LogConfig`, `admin: AdminConfig` and `faults: FaultsConfig`. [`load`] reads,
//! parses and validates it before anything binds a port.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::faults::FaultSpec;

/// A config section that can check itself after parsing.
pub trait Validate {
    /// `Err` holds a human-readable reason (several reasons are joined with `"; "`).
    fn validate(&self) -> Result<(), String>;
}

/// A whole role config: the common sections plus the role's own settings.
pub trait RoleConfig: DeserializeOwned + Default + Validate {
    /// The `[log]` section, used to set up logging before the role starts.
    fn log(&self) -> &LogConfig;
    /// The `[admin]` section: the admin port's credential, names and fault bounds.
    fn admin(&self) -> &AdminConfig;
    /// The `[faults]` section: the fault points set at start.
    fn faults(&self) -> &FaultsConfig;
}

/// Read a TOML file (`None` gives `T::default()`), parse it and validate it.
///
/// Errors name the file; parse errors also give the line, column and offending key.
pub fn load<T: DeserializeOwned + Default + Validate>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        let cfg = T::default();
        cfg.validate()
            .map_err(|reason| anyhow!("invalid default config: {reason}"))?;
        return Ok(cfg);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let cfg: T =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    cfg.validate()
        .map_err(|reason| anyhow!("invalid config file {}: {reason}", path.display()))?;
    Ok(cfg)
}

/// Parse a TOML string and validate it.
pub fn parse<T: DeserializeOwned + Validate>(text: &str) -> anyhow::Result<T> {
    let cfg: T = toml::from_str(text).context("parsing config")?;
    cfg.validate()
        .map_err(|reason| anyhow!("invalid config: {reason}"))?;
    Ok(cfg)
}

/// Validate several named sections, prefixing each failure with its section name.
///
/// Meant for a role's own `Validate` impl:
/// `validate_sections(&[("log", &self.log), ("admin", &self.admin), ("faults", &self.faults)])`.
pub fn validate_sections(sections: &[(&str, &dyn Validate)]) -> Result<(), String> {
    let reasons: Vec<String> = sections
        .iter()
        .filter_map(|(name, section)| section.validate().err().map(|r| format!("{name}: {r}")))
        .collect();
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

/// The end of a role's `validate`: the role's own reasons, then the common sections', joined.
pub fn conclude(
    mut reasons: Vec<String>,
    log: &LogConfig,
    admin: &AdminConfig,
    faults: &FaultsConfig,
) -> Result<(), String> {
    if let Err(e) = validate_sections(&[("log", log), ("admin", admin), ("faults", faults)]) {
        reasons.push(e);
    }
    if let Err(e) = admin.check_delays(faults) {
        reasons.push(format!("faults: {e}"));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

/// For a role's `validate`: "NAME: must be at least 1" for every field that is zero.
pub fn require_nonzero(errs: &mut Vec<String>, fields: &[(&str, u64)]) {
    for (name, v) in fields {
        if *v == 0 {
            errs.push(format!("{name}: must be at least 1"));
        }
    }
}

/// For a role's `validate`: "NAME: V is below the least workable MIN" for every field below its
/// minimum.
pub fn require_at_least(errs: &mut Vec<String>, fields: &[(&str, u64, u64)]) {
    for (name, v, min) in fields {
        if v < min {
            errs.push(format!("{name}: {v} is below the least workable {min}"));
        }
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// An `EnvFilter` directive list such as `"info"` or `"info,ustore=debug"`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Plain,
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self) -> Result<(), String> {
        validate_level(&self.level)
    }
}

/// Check a log level directive list.
///
/// Stricter than `EnvFilter` alone: a bare word must be a level, because `EnvFilter` would read a typo
/// such as `"inf"` as a target name and quietly log almost nothing.
fn validate_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("level is empty (try \"info\")".to_owned());
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "level: `{directive}` is not a level (trace, debug, info, warn, error, off) \
                 nor a `target=level` directive"
            ));
        }
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("level `{level}`: {e}"))
}

/// Longest fault delay the admin port and the config accept unless `[admin]` says otherwise.
pub const DEFAULT_MAX_FAULT_DELAY_MS: u64 = 10_000;

/// The `[admin]` section: where `/healthz`, `/metrics` and `/faults` are served, and who may
/// change anything there.
///
/// Reads (`GET`) are open to anyone (Prometheus, health checks). A change (`POST /faults`)
/// needs `Authorization: Bearer <secret>` with the secret held in `token-file`; with no
/// `token-file` every change is refused. A change must also name the port itself in `Host`
/// (its bind address, `localhost:PORT`, or one of `hosts`) and, when it has an `Origin`, come
/// from one of those: a web page cannot reach the port through a browser (DNS rebinding, or a
/// form posted cross-site).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file holding the operator's secret (one line; keep it mode 0600).
    pub token_file: Option<PathBuf>,
    /// More names the port answers changes under, as `name` (the port's own port is implied)
    /// or `name:port`: what operators type when the port is bound to a wildcard address.
    pub hosts: Vec<String>,
    /// Longest fault delay, in milliseconds, that the config, `MEGAMAIL_FAULTS` or `/faults`
    /// may set.
    pub max_fault_delay_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token_file: None,
            hosts: Vec::new(),
            max_fault_delay_ms: DEFAULT_MAX_FAULT_DELAY_MS,
        }
    }
}

impl AdminConfig {
    /// The section for a port at `listen` whose changes need the secret in `token_file`.
    pub fn with_token(listen: SocketAddr, token_file: PathBuf) -> AdminConfig {
        AdminConfig {
            listen,
            token_file: Some(token_file),
            ..AdminConfig::default()
        }
    }

    /// Every delay of `faults` within [`AdminConfig::max_fault_delay_ms`].
    pub fn check_delays(&self, faults: &FaultsConfig) -> Result<(), String> {
        let long: Vec<String> = faults
            .iter()
            .filter(|(_, spec)| spec.delay_ms > self.max_fault_delay_ms)
            .map(|(point, spec)| {
                format!(
                    "\"{point}\": delay-ms {} is over admin.max-fault-delay-ms {}",
                    spec.delay_ms, self.max_fault_delay_ms
                )
            })
            .collect();
        if long.is_empty() {
            Ok(())
        } else {
            Err(long.join("; "))
        }
    }
}

impl Validate for AdminConfig {
    fn validate(&self) -> Result<(), String> {
        // Any address parses; binding is where a bad one shows up. The token file is read at
        // start (`admin::Settings::load`).
        let bad: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/'))
            .map(|h| format!("hosts: `{h}` is not a host name"))
            .collect();
        if matches!(&self.token_file, Some(p) if p.as_os_str().is_empty()) {
            return Err("token-file: empty path".to_owned());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

/// Fault point name → spec, e.g.
/// ```toml
/// [faults."ustore.deliver"]
/// delay-ms = 50
/// fail-rate = 0.1
/// ```
pub type FaultsConfig = BTreeMap<String, FaultSpec>;

impl Validate for FaultsConfig {
    fn validate(&self) -> Result<(), String> {
        let reasons: Vec<String> = self
            .iter()
            .filter_map(|(point, spec)| {
                if point.trim().is_empty() {
                    Some("empty fault point name".to_owned())
                } else {
                    spec.validate().err().map(|r| format!("\"{point}\": {r}"))
                }
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// A config with only the common sections, for processes with no settings of their own
/// (and the shape of `runtime/example.toml`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommonConfig {
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub faults: FaultsConfig,
}

impl Validate for CommonConfig {
    fn validate(&self) -> Result<(), String> {
        conclude(Vec::new(), &self.log, &self.admin, &self.faults)
    }
}

impl RoleConfig for CommonConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }
    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
    fn faults(&self) -> &FaultsConfig {
        &self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for ok in [
            "info",
            "DEBUG",
            "warn,ustore=debug",
            "ustore::xfs=trace",
            "off",
        ] {
            assert_eq!(validate_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", "  ", "inf", "info,verbose", "ustore=loud"] {
            assert!(validate_level(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sections_prefix_their_reasons() {
        let mut cfg = CommonConfig::default();
        cfg.log.level = "loud".to_owned();
        cfg.faults.insert(
            "a.b".to_owned(),
            FaultSpec {
                delay_ms: 0,
                fail_rate: 2.0,
            },
        );
        let err = cfg.validate().unwrap_err();
        assert!(err.starts_with("log: level: `loud`"), "{err}");
        assert!(err.contains("; faults: \"a.b\": fail-rate"), "{err}");
    }

    #[test]
    fn fault_delays_are_bounded_by_the_admin_section() {
        let text = "[admin]\nmax-fault-delay-ms = 500\n[faults.\"x.y\"]\ndelay-ms = 501\n";
        let err = parse::<CommonConfig>(text).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("\"x.y\": delay-ms 501 is over admin.max-fault-delay-ms 500"),
            "{err:#}"
        );
        let text = "[faults.\"x.y\"]\ndelay-ms = 10001\n";
        assert!(
            parse::<CommonConfig>(text).is_err(),
            "the default bound is 10 s"
        );
        let ok = "[admin]\ntoken-file = \"op.secret\"\nhosts = [\"admin.example\"]\n\
                  [faults.\"x.y\"]\ndelay-ms = 10000\n";
        let cfg = parse::<CommonConfig>(ok).unwrap();
        assert_eq!(cfg.admin.token_file, Some(PathBuf::from("op.secret")));
        for bad in ["hosts = [\"\"]", "hosts = [\"a b\"]", "token-file = \"\""] {
            assert!(
                parse::<CommonConfig>(&format!("[admin]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }
}
