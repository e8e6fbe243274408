//! A whole hosting cluster unit (HCU) as real processes: an `mserv` cluster, user stores
//! registered with it, and `smtp-in` in front, each on free loopback ports with temporary data.
//!
//! ```ignore
//! let hcu = LocalHcu::start(HcuOpts::default()).await?;
//! let placement = hcu.add_user("alice@megamail.test").await?;
//! // ... send mail to hcu.smtp_addr ...
//! let inbox = hcu.inbox("alice@megamail.test").await?;
//! ```
//!
//! Users are placed through the member index and their accounts created on the chosen store, so
//! smtp-in finds them the way it does in production. Dropping the `LocalHcu` kills every process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mserv::{Placement, Policy, StoreInfo, StoreState};
use role_config::{SmtpInConfig, SmtpOutConfig};
use runtime::config::FaultsConfig;
use xfs::{CallError, IndexEntry, NewAccount, Op, Reply, StorePool, Target, XfsError, INBOX};

use crate::mserv::{Mserv, MservOpts};
use crate::support::mailbox::{call_retrying, Mailbox, STORE_RETRY};
use crate::support::metrics;
use crate::{free_addr, Proc, Ustore, UstoreOpts};

/// The cluster name every test store is registered under.
pub const CLUSTER: &str = "hcu-1";

/// How a test HCU is laid out and how smtp-in is configured (the explicit fields become
/// smtp-in's config keys).
#[derive(Debug, Clone)]
pub struct HcuOpts {
    pub mserv_replicas: u64,
    /// Stores named `store-1`, `store-2`, ...
    pub stores: usize,
    pub segments_per_store: u32,
    /// Start smtp-in at once; otherwise call [`LocalHcu::start_smtp`].
    pub start_smtp: bool,
    pub hostname: String,
    pub domains: Vec<String>,
    pub max_message_bytes: u64,
    pub max_recipients: u64,
    pub max_line_bytes: u64,
    pub command_timeout_secs: u64,
    pub data_timeout_secs: u64,
    pub max_sessions: u64,
    pub max_sessions_per_client: u64,
    pub deliver_timeout_secs: u64,
    /// smtp-in's certificate: with it STARTTLS is offered.
    pub smtp_tls: Option<role_config::TlsConfig>,
    /// smtp-in's fault points, set from the start.
    pub smtp_faults: FaultsConfig,
    /// Every store's `max-in-flight` (admission control bound).
    pub store_max_in_flight: usize,
    /// Every store's fault points, set from the start.
    pub store_faults: FaultsConfig,
    /// The outbound worker's config, started with smtp-in (its index replicas, admin port and
    /// certificate are filled in). By default it polls every 50 ms, retries after a second,
    /// treats `domains` as local and has no DNS server that answers (remote domains defer).
    pub smtp_out: Option<SmtpOutConfig>,
}

impl Default for HcuOpts {
    fn default() -> Self {
        HcuOpts {
            mserv_replicas: 1,
            stores: 2,
            segments_per_store: 2,
            start_smtp: true,
            hostname: "mx.megamail.test".into(),
            domains: vec!["megamail.test".into()],
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: 100,
            max_line_bytes: 4096,
            command_timeout_secs: 300,
            data_timeout_secs: 300,
            max_sessions: 2000,
            max_sessions_per_client: 1000,
            deliver_timeout_secs: 10,
            smtp_tls: None,
            smtp_faults: FaultsConfig::new(),
            store_max_in_flight: UstoreOpts::default().max_in_flight,
            store_faults: FaultsConfig::new(),
            smtp_out: Some(SmtpOutConfig {
                hostname: "out.megamail.test".into(),
                resolvers: vec![free_addr()],
                dns_timeout_ms: 500,
                poll_ms: 50,
                domain_refresh_secs: 1,
                retry_first_secs: 1,
                retry_max_secs: 2,
                connect_timeout_secs: 5,
                command_timeout_secs: 10,
                drain_timeout_secs: 5,
                ..SmtpOutConfig::default()
            }),
        }
    }
}

impl HcuOpts {
    /// One store with one segment (every user in one place), the rest as by default.
    pub fn one_store() -> HcuOpts {
        HcuOpts {
            stores: 1,
            segments_per_store: 1,
            ..Default::default()
        }
    }

    /// The outbound worker's config for these options (`None` without one).
    pub fn smtp_out_config(
        &self,
        dir: &std::path::Path,
        admin: SocketAddr,
        mserv: &[String],
    ) -> Option<String> {
        let cfg = self.smtp_out.clone()?;
        Some(crate::config_text(&SmtpOutConfig {
            mserv: mserv.to_vec(),
            internal_tls: crate::support::pki::internal_tls(dir, xfs::Role::SmtpOut, "out-1"),
            admin: crate::admin_config(admin),
            ..cfg
        }))
    }

    /// smtp-in's config for these options.
    pub fn smtp_config(
        &self,
        dir: &std::path::Path,
        listen: SocketAddr,
        admin: SocketAddr,
        mserv: &[String],
    ) -> String {
        crate::config_text(&SmtpInConfig {
            hostname: self.hostname.clone(),
            listen,
            mserv: mserv.to_vec(),
            max_message_bytes: self.max_message_bytes as usize,
            max_recipients: self.max_recipients as usize,
            max_line_bytes: self.max_line_bytes as usize,
            command_timeout_secs: self.command_timeout_secs,
            data_timeout_secs: self.data_timeout_secs,
            max_sessions: self.max_sessions as usize,
            max_sessions_per_client: self.max_sessions_per_client as usize,
            deliver_timeout_secs: self.deliver_timeout_secs,
            // Domains added during a test are seen within a second.
            store_refresh_secs: 1,
            tls: self.smtp_tls.clone(),
            internal_tls: crate::support::pki::internal_tls(dir, xfs::Role::SmtpIn, "smtp-in"),
            admin: crate::admin_config(admin),
            faults: self.smtp_faults.clone(),
            ..Default::default()
        })
    }
}

/// A running HCU.
pub struct LocalHcu {
    pub mserv: Mserv,
    /// `stores[i]` is named `store-{i+1}`.
    pub stores: Vec<Ustore>,
    /// The smtp-in process, once started.
    pub smtp: Option<Proc>,
    /// The outbound worker, started with smtp-in when the options have one.
    pub smtp_out: Option<Proc>,
    /// Where smtp-in listens for SMTP and for admin HTTP (fixed before it starts).
    pub smtp_addr: SocketAddr,
    pub smtp_admin: SocketAddr,
    /// A member index client without cache.
    pub client: mserv::Client,
    pub opts: HcuOpts,
    pools: Vec<Arc<StorePool>>,
    dir: tempfile::TempDir,
}

impl LocalHcu {
    /// Start mserv, the stores (registered as active members of [`CLUSTER`]) and, unless
    /// `opts.start_smtp` is false, smtp-in; returns once everything is healthy.
    pub async fn start(opts: HcuOpts) -> anyhow::Result<LocalHcu> {
        raise_fd_limit();
        let mserv = Mserv::start(MservOpts {
            replicas: opts.mserv_replicas,
            ..Default::default()
        })
        .await?;
        let client = mserv.client();
        let mut stores = Vec::new();
        let mut pools = Vec::new();
        for i in 1..=opts.stores {
            let s = Ustore::start(UstoreOpts {
                name: format!("store-{i}"),
                segments: opts.segments_per_store,
                max_in_flight: opts.store_max_in_flight,
                faults: opts.store_faults.clone(),
            })
            .await?;
            client
                .register_store(StoreInfo {
                    name: s.proc.name.clone(),
                    xfs_addr: s.addr.to_string(),
                    cluster: CLUSTER.into(),
                    segments: (0..opts.segments_per_store).collect(),
                    state: StoreState::Active,
                })
                .await
                .with_context(|| format!("registering store-{i}"))?;
            pools.push(Arc::new(s.pool()));
            stores.push(s);
        }
        for d in &opts.domains {
            client
                .add_domain(d, None)
                .await
                .with_context(|| format!("hosting {d}"))?;
        }
        let mut hcu = LocalHcu {
            mserv,
            stores,
            smtp: None,
            smtp_out: None,
            smtp_addr: free_addr(),
            smtp_admin: free_addr(),
            client,
            opts,
            pools,
            dir: tempfile::tempdir()?,
        };
        if hcu.opts.start_smtp {
            hcu.start_smtp().await?;
        }
        Ok(hcu)
    }

    /// Start smtp-in (on [`LocalHcu::smtp_addr`]) and wait until its `/healthz` answers 200.
    pub async fn start_smtp(&mut self) -> anyhow::Result<()> {
        let cfg = self.opts.smtp_config(
            self.dir.path(),
            self.smtp_addr,
            self.smtp_admin,
            &self.mserv.addrs(),
        );
        let mut p = Proc::start("smtp-in", "smtp-in", self.dir.path(), &cfg, self.smtp_admin)?;
        p.wait_healthy(Duration::from_secs(60)).await?;
        self.smtp = Some(p);
        if self.smtp_out.is_none() {
            let admin = free_addr();
            if let Some(cfg) =
                self.opts
                    .smtp_out_config(self.dir.path(), admin, &self.mserv.addrs())
            {
                let mut p = Proc::start("smtp-out", "out-1", self.dir.path(), &cfg, admin)?;
                p.wait_healthy(Duration::from_secs(60)).await?;
                self.smtp_out = Some(p);
            }
        }
        Ok(())
    }

    /// The smtp-in process (to kill -9, restart or terminate it).
    pub fn smtp_proc(&mut self) -> &mut Proc {
        self.smtp.as_mut().expect("smtp-in was not started")
    }

    /// The store named `name`.
    pub fn store(&mut self, name: &str) -> &mut Ustore {
        let i = self.store_index(name);
        &mut self.stores[i]
    }

    /// The names of the stores, in order.
    pub fn store_names(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.proc.name.clone()).collect()
    }

    fn store_index(&self, name: &str) -> usize {
        self.stores
            .iter()
            .position(|s| s.proc.name == name)
            .unwrap_or_else(|| panic!("no store named {name}"))
    }

    /// Place `user` on the least-loaded store and create the account there.
    pub async fn add_user(&self, user: &str) -> anyhow::Result<Placement> {
        self.add_user_with(user, Policy::LeastLoaded).await
    }

    /// Place each of `users` on the least-loaded store and create its account there.
    pub async fn add_users(&self, users: &[&str]) -> anyhow::Result<()> {
        for user in users {
            self.add_user(user).await?;
        }
        Ok(())
    }

    /// Place `user` on `store`/`segment` and create the account there.
    pub async fn add_user_on(
        &self,
        user: &str,
        store: &str,
        segment: u32,
    ) -> anyhow::Result<Placement> {
        let policy = Policy::Explicit {
            store: store.into(),
            segment,
        };
        self.add_user_with(user, policy).await
    }

    async fn add_user_with(&self, user: &str, policy: Policy) -> anyhow::Result<Placement> {
        let p = self
            .client
            .create_user(user, policy)
            .await
            .with_context(|| format!("placing {user}"))?;
        let op = Op::CreateAccount {
            target: Target::new(user, p.segment, p.epoch),
            account: NewAccount {
                password_hash: "x".into(),
                display_name: user.into(),
                quota_bytes: 0,
            },
        };
        match self.call(&p.store, op).await {
            Ok(_) | Err(CallError::Remote(XfsError::AlreadyExists { .. })) => Ok(p),
            Err(e) => Err(e).with_context(|| format!("creating the account of {user}")),
        }
    }

    /// Call the store named `store`, retrying transient failures (a restarted store takes a
    /// moment to come back). Only for idempotent operations.
    pub async fn call(&self, store: &str, op: Op) -> Result<Reply, CallError> {
        let pool = &self.pools[self.store_index(store)];
        call_retrying(pool, op, STORE_RETRY).await
    }

    /// `user`'s mailbox where the index places it.
    pub async fn mailbox(&self, user: &str) -> anyhow::Result<Mailbox> {
        let p = self
            .client
            .lookup(user)
            .await
            .with_context(|| format!("looking up {user}"))?;
        Ok(Mailbox {
            pool: self.pools[self.store_index(&p.store)].clone(),
            target: Target::new(user, p.segment, p.epoch),
            store: p.store,
        })
    }

    /// Every message in `user`'s Inbox with its stored bytes, oldest first.
    pub async fn inbox(&self, user: &str) -> anyhow::Result<Vec<(IndexEntry, Vec<u8>)>> {
        let mut messages = self.mailbox(user).await?.messages(INBOX).await?;
        messages.reverse();
        Ok(messages)
    }

    /// The index entries of `user`'s Inbox, oldest first.
    pub async fn inbox_entries(&self, user: &str) -> anyhow::Result<Vec<IndexEntry>> {
        let mut entries = self.mailbox(user).await?.entries(INBOX).await?;
        entries.reverse();
        Ok(entries)
    }

    /// How many messages `user`'s Inbox holds (the folder's own count).
    pub async fn inbox_count(&self, user: &str) -> anyhow::Result<u64> {
        Ok(self.mailbox(user).await?.count(INBOX).await?)
    }

    /// smtp-in's `/metrics` text.
    pub async fn smtp_metrics(&self) -> anyhow::Result<String> {
        metrics::scrape(self.smtp_admin).await
    }

    /// The value of one sample on smtp-in's `/metrics` (`name{labels}` exactly as printed, e.g.
    /// `smtp_messages_total{result="accepted"}`), 0 when absent.
    pub async fn smtp_metric(&self, sample: &str) -> anyhow::Result<f64> {
        metrics::metric(self.smtp_admin, sample).await
    }
}

/// Raise this process's open-file limit to its hard limit (children inherit it), so a test can
/// hold a thousand connections and the servers can accept them.
pub fn raise_fd_limit() {
    runtime::net::raise_fd_limit();
}

impl Drop for LocalHcu {
    /// A failing test shows the end of smtp-in's and every store's log (mserv prints its own).
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(p) = &self.smtp {
                eprintln!("--- smtp-in log tail:\n{}", p.log_tail());
            }
            for s in &self.stores {
                eprintln!("--- {} log tail:\n{}", s.proc.name, s.proc.log_tail());
            }
        }
    }
}
