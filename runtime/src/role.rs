//! The start and stop every role shares. [`Role::start`] makes the fault points from the role's
//! config (only the points the role has, within the delay bound: anything else fails the start)
//! and its health (`starting`) and serves the admin port with the admin settings the role runs
//! under (`admin::with_settings`, which `cli::main` sets from the `[admin]` section; without
//! them the port refuses every change); the role then opens what it
//! needs, calls [`Role::ready`] and serves its port until shutdown (a web role through
//! `runtime::http::serve`, whose drain calls [`Role::set_draining`]; a TCP role runs its accept
//! loop and then [`Role::drain`]s the connections it tracked); [`Role::finish`] waits for the
//! admin port to close.
//!
//! ```no_run
//! # async fn run(admin: tokio::net::TcpListener, cfg: runtime::config::FaultsConfig,
//! #     shutdown: runtime::shutdown::Shutdown) -> anyhow::Result<()> {
//! let role = runtime::role::Role::start("example", admin, &cfg, &shutdown)?;
//! // ... open stores, build clients, with role.faults and role.health ...
//! role.ready("127.0.0.1:25".parse()?);
//! let conns = shutdown.child();
//! // ... the accept loop, its connections tracked by `conns`, until shutdown ...
//! role.drain(&conns, std::time::Duration::from_secs(10)).await;
//! role.finish().await
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::FaultsConfig;
use crate::faults::{Faults, Rules};
use crate::health::Health;
use crate::shutdown::Shutdown;

/// A role's process between its start and its stop.
pub struct Role {
    name: &'static str,
    /// The fault points, from the role's config and `MEGAMAIL_FAULTS`, set at run time through
    /// the admin port.
    pub faults: Arc<Faults>,
    /// What `/healthz` reports: `starting` until [`Role::ready`].
    pub health: Arc<Health>,
    admin_addr: SocketAddr,
    admin: JoinHandle<anyhow::Result<()>>,
}

impl Role {
    /// The role's fault points and health, and its admin port served on `admin` until
    /// `shutdown`. A fault point the role does not have, or a delay over the bound, in `faults`
    /// or `MEGAMAIL_FAULTS` is an error.
    pub fn start(
        name: &'static str,
        admin: TcpListener,
        faults: &FaultsConfig,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Role> {
        let settings = crate::admin::current_settings();
        let rules = Rules::for_role(name, settings.max_fault_delay_ms());
        let env = std::env::var(crate::faults::ENV_VAR).ok();
        let faults = Faults::for_role(rules, faults, env.as_deref())
            .map_err(|reason| anyhow::anyhow!("fault points: {reason}"))?;
        let faults = Arc::new(faults);
        let health = Health::new(name);
        let admin_addr = admin.local_addr()?;
        let admin = tokio::spawn(crate::admin::serve(
            admin,
            health.clone(),
            faults.clone(),
            settings,
            shutdown.clone(),
        ));
        Ok(Role {
            name,
            faults,
            health,
            admin_addr,
            admin,
        })
    }

    /// The admin port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Report healthy and log that the role serves on `listen`.
    pub fn ready(&self, listen: SocketAddr) {
        self.health.set_ready();
        tracing::info!(role = self.name, %listen, admin = %self.admin_addr,
            version = crate::VERSION, "{} ready", self.name);
    }

    /// Stop reporting healthy (shutdown has begun).
    pub fn set_draining(&self) {
        self.health.set_draining();
    }

    /// After the accept loop returned: report draining and wait for the tasks `tracked` holds
    /// (the connections), at most `timeout`.
    pub async fn drain(&self, tracked: &Shutdown, timeout: Duration) {
        self.set_draining();
        tracing::info!("draining");
        if tokio::time::timeout(timeout, tracked.wait_tasks())
            .await
            .is_err()
        {
            tracing::warn!(drain = ?timeout, "still busy after the drain timeout");
        }
    }

    /// Wait for the admin port to stop (it stops on shutdown) and log the stop.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.admin.await.context("admin task")??;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::State;

    #[tokio::test]
    async fn a_role_starts_reports_ready_drains_and_stops() {
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = Shutdown::new();
        let mut faults = FaultsConfig::new();
        faults.insert(
            "http.request".into(),
            crate::faults::FaultSpec {
                delay_ms: 1,
                fail_rate: 0.0,
            },
        );
        let role = Role::start("login", admin, &faults, &shutdown).unwrap();
        assert_eq!(role.health.state(), State::Starting);
        assert_eq!(role.faults.list().len(), 1, "the config's fault points");
        let health = crate::http_client::get(role.admin_addr(), "/healthz", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(health.status, 503, "starting");
        role.ready("127.0.0.1:1".parse().unwrap());
        assert_eq!(role.health.state(), State::Ok);

        let conns = shutdown.child();
        conns.spawn(async { tokio::time::sleep(Duration::from_millis(20)).await });
        shutdown.trigger();
        role.drain(&conns, Duration::from_secs(5)).await;
        assert_eq!(role.health.state(), State::Draining);
        tokio::time::timeout(Duration::from_secs(10), role.finish())
            .await
            .expect("the admin port stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn a_role_does_not_start_with_a_point_it_lacks_or_too_long_a_delay() {
        let shutdown = Shutdown::new();
        let spec = |delay_ms| crate::faults::FaultSpec {
            delay_ms,
            fail_rate: 0.0,
        };
        for (point, delay) in [("smtp.deliver", 0), ("login.store", 10_001)] {
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let faults = FaultsConfig::from([(point.to_owned(), spec(delay))]);
            let err = Role::start("login", admin, &faults, &shutdown).err();
            assert!(err.is_some(), "{point} {delay}");
        }
        // Under settings that allow longer delays, the same delay is accepted.
        let cfg = crate::config::AdminConfig {
            max_fault_delay_ms: 20_000,
            ..Default::default()
        };
        let settings = crate::admin::Settings::new(None, &cfg);
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let faults = FaultsConfig::from([("login.store".to_owned(), spec(10_001))]);
        let started = crate::admin::with_settings(settings, async {
            Role::start("login", admin, &faults, &shutdown)
        })
        .await;
        assert!(started.is_ok());
        shutdown.trigger();
    }
}
