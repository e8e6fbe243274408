//! Config loading: defaults, the example file, and the errors a bad file gets.

use std::io::Write as _;
use std::net::SocketAddr;

use runtime::config::{
    self, AdminConfig, CommonConfig, FaultsConfig, LogConfig, LogFormat, RoleConfig, Validate,
};
use runtime::faults::FaultSpec;
use serde::Deserialize;

/// A role config shaped like the real ones: the common sections plus settings of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct SampleConfig {
    workers: usize,
    log: LogConfig,
    admin: AdminConfig,
    faults: FaultsConfig,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            workers: 4,
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            faults: FaultsConfig::default(),
        }
    }
}

impl Validate for SampleConfig {
    fn validate(&self) -> Result<(), String> {
        let own = if self.workers == 0 {
            Err("workers must be at least 1".to_owned())
        } else {
            Ok(())
        };
        config::validate_sections(&[
            ("log", &self.log),
            ("admin", &self.admin),
            ("faults", &self.faults),
        ])
        .and(own)
    }
}

impl RoleConfig for SampleConfig {
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

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

#[test]
fn defaults_are_as_documented() {
    let log = LogConfig::default();
    assert_eq!(log.level, "info");
    assert_eq!(log.format, LogFormat::Plain);
    let admin = AdminConfig::default();
    assert_eq!(admin.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    assert!(log.validate().is_ok());
    assert!(admin.validate().is_ok());
}

#[test]
fn empty_toml_equals_default() {
    assert_eq!(
        config::parse::<LogConfig>("").unwrap(),
        LogConfig::default()
    );
    assert_eq!(
        config::parse::<AdminConfig>("").unwrap(),
        AdminConfig::default()
    );
    assert_eq!(
        config::parse::<SampleConfig>("").unwrap(),
        SampleConfig::default()
    );
    assert_eq!(
        config::parse::<CommonConfig>("").unwrap(),
        CommonConfig::default()
    );
    // Empty sections too.
    assert_eq!(
        config::parse::<SampleConfig>("[log]\n[admin]\n[faults]\n").unwrap(),
        SampleConfig::default()
    );
}

#[test]
fn no_path_gives_default() {
    let cfg: SampleConfig = config::load(None).unwrap();
    assert_eq!(cfg, SampleConfig::default());
}

#[test]
fn example_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/example.toml");
    let cfg: CommonConfig = config::load(Some(path.as_ref())).unwrap();
    assert_eq!(cfg.log.level, "info,ustore=debug");
    assert_eq!(cfg.log.format, LogFormat::Plain);
    assert_eq!(
        cfg.admin.listen,
        "127.0.0.1:9100".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        cfg.admin.token_file.as_deref(),
        Some(std::path::Path::new("secrets/operator.secret"))
    );
    assert_eq!(cfg.admin.hosts, ["admin.hcu-1.example"]);
    assert_eq!(cfg.admin.max_fault_delay_ms, 10_000);
    assert_eq!(
        cfg.faults.get("xfs.call"),
        Some(&FaultSpec {
            delay_ms: 50,
            fail_rate: 0.1
        })
    );
    assert_eq!(
        cfg.faults.get("http.request"),
        Some(&FaultSpec {
            delay_ms: 0,
            fail_rate: 1.0
        })
    );
    assert_eq!(cfg.faults.len(), 2);

    // A role config with settings of its own accepts the same sections.
    let role: SampleConfig = config::load(Some(path.as_ref())).unwrap();
    assert_eq!(role.faults, cfg.faults);
    assert_eq!(role.workers, 4);
}

#[test]
fn full_sample_parses() {
    let cfg: SampleConfig = config::parse(
        r#"
workers = 8
[log]
format = "json"
[admin]
listen = "[::1]:9000"
[faults."a.b"]
delay-ms = 3
"#,
    )
    .unwrap();
    assert_eq!(cfg.workers, 8);
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert_eq!(cfg.log.level, "info");
    assert_eq!(
        cfg.admin.listen,
        "[::1]:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.faults["a.b"].delay_ms, 3);
    assert_eq!(cfg.faults["a.b"].fail_rate, 0.0);
}

#[test]
fn unknown_key_is_rejected_naming_file_line_and_key() {
    let file = write_temp("workers = 2\n\n[log]\nlevle = \"debug\"\n");
    let err = config::load::<SampleConfig>(Some(file.path())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&file.path().display().to_string()), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    assert!(msg.contains("unknown field `levle`"), "{msg}");
    assert!(msg.contains("`level`"), "lists the expected keys: {msg}");

    let err = config::parse::<SampleConfig>("wrokers = 2\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown field `wrokers`"),
        "{err:#}"
    );

    let err = config::parse::<SampleConfig>("[faults.\"a\"]\nfail_rate = 0.5\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown field `fail_rate`"),
        "{err:#}"
    );
}

#[test]
fn bad_values_are_rejected() {
    let err = config::parse::<SampleConfig>("[faults.\"x.y\"]\nfail-rate = 1.5\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("faults: \"x.y\": fail-rate must be between 0 and 1, got 1.5"),
        "{msg}"
    );

    let err = config::parse::<SampleConfig>("[faults.\"x.y\"]\nfail-rate = -0.1\n").unwrap_err();
    assert!(format!("{err:#}").contains("fail-rate"), "{err:#}");

    let err = config::parse::<SampleConfig>("[log]\nlevel = \"loud\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("log: level: `loud`"), "{err:#}");

    let err = config::parse::<SampleConfig>("[log]\nformat = \"xml\"\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown variant `xml`"),
        "{err:#}"
    );

    let err = config::parse::<SampleConfig>("[admin]\nlisten = \"nowhere\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("line 2"), "{err:#}");

    let err = config::parse::<SampleConfig>("workers = 0\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("workers must be at least 1"),
        "{err:#}"
    );

    // Validation errors from a file name the file.
    let file = write_temp("[faults.\"x.y\"]\nfail-rate = 2.0\n");
    let err = config::load::<SampleConfig>(Some(file.path())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&file.path().display().to_string()), "{msg}");
    assert!(msg.contains("fail-rate must be between 0 and 1"), "{msg}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = config::load::<SampleConfig>(Some(&path)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("reading config file"), "{msg}");
    assert!(msg.contains("absent.toml"), "{msg}");
}

#[test]
fn round_trip_through_toml() {
    let cfg: CommonConfig = config::load(Some(
        concat!(env!("CARGO_MANIFEST_DIR"), "/example.toml").as_ref(),
    ))
    .unwrap();
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(config::parse::<CommonConfig>(&text).unwrap(), cfg);
}
