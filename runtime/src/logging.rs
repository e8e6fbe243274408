//! Process-wide `tracing` setup: plain or JSON lines on stderr, filtered by `RUST_LOG` or the config's level.
//!
//! Plain lines are coloured only when stderr is a terminal, so log files stay free of escape codes.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber.
///
/// The filter comes from `RUST_LOG` when it is set and valid, else from `cfg.level` (and `info` if that
/// does not parse either, which validation normally rules out). A second call leaves the first
/// subscriber in place.
pub fn init(cfg: &LogConfig) {
    let (filter, rust_log_error) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (
                config_filter(cfg),
                Some(format!("ignoring RUST_LOG={value:?}: {e}")),
            ),
        },
        _ => (config_filter(cfg), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    let installed = match cfg.format {
        LogFormat::Plain => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().try_init().is_ok(),
    };
    if installed {
        if let Some(msg) = rust_log_error {
            tracing::warn!("{msg}");
        }
    }
}

fn config_filter(cfg: &LogConfig) -> EnvFilter {
    EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        init(&LogConfig::default());
        init(&LogConfig {
            level: "debug".to_owned(),
            format: LogFormat::Json,
        });
        // The first call installed the subscriber; the second changed nothing and did not panic.
        assert!(tracing::dispatcher::has_been_set());
        tracing::info!("still logging");
    }
}
