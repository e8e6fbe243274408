//! `Faults::from_config` reads MEGAMAIL_FAULTS. Alone in its file: it sets a process environment variable.

use runtime::config::FaultsConfig;
use runtime::faults::{FaultSpec, Faults, ENV_VAR};

#[tokio::test]
async fn environment_overrides_config() {
    let mut cfg = FaultsConfig::new();
    cfg.insert(
        "ustore.deliver".to_owned(),
        FaultSpec {
            delay_ms: 0,
            fail_rate: 0.0,
        },
    );
    cfg.insert(
        "mserv.lookup".to_owned(),
        FaultSpec {
            delay_ms: 7,
            fail_rate: 0.0,
        },
    );

    std::env::set_var(ENV_VAR, "ustore.deliver=0:1, smtp.rcpt=3:0");
    let faults = Faults::from_config(&cfg);
    assert_eq!(
        faults.list(),
        vec![
            (
                "mserv.lookup".to_owned(),
                FaultSpec {
                    delay_ms: 7,
                    fail_rate: 0.0
                }
            ),
            (
                "smtp.rcpt".to_owned(),
                FaultSpec {
                    delay_ms: 3,
                    fail_rate: 0.0
                }
            ),
            (
                "ustore.deliver".to_owned(),
                FaultSpec {
                    delay_ms: 0,
                    fail_rate: 1.0
                }
            ),
        ]
    );
    assert!(faults.inject("ustore.deliver").await.is_err());

    // A malformed value is ignored as a whole: the config stands.
    std::env::set_var(ENV_VAR, "ustore.deliver=0:1,smtp.rcpt");
    let faults = Faults::from_config(&cfg);
    assert_eq!(faults.list().len(), 2);
    assert!(faults.inject("ustore.deliver").await.is_ok());

    std::env::remove_var(ENV_VAR);
    assert_eq!(Faults::from_config(&cfg).list().len(), 2);
}
