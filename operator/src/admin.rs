//! User and store administration against a running HCU: the member index through
//! `mserv_client::Client`, mailboxes through XFS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mserv_client::{MservError, Placement, Policy, StoreInfo, StoreState};
use serde_json::{json, Value};
use xfs::{ops, Call, CallError, NewAccount, Target, XfsError};

use crate::endpoints::Endpoints;

/// Clients of one HCU.
pub struct Hcu {
    pub endpoints: Endpoints,
    pub mserv: Arc<mserv_client::Client>,
    pub xfs: xfs::Client,
}

impl Hcu {
    /// The HCU in `endpoints`, called with the operator certificate it names.
    pub fn new(endpoints: Endpoints) -> anyhow::Result<Hcu> {
        let identity = endpoints
            .operator_tls
            .identity(xfs::Role::Operator)
            .map_err(|e| anyhow::anyhow!("the operator's certificate: {e}"))?;
        let mserv = mserv_client::Client::new(
            endpoints.mserv_addrs(),
            mserv_client::ClientConfig {
                identity: identity.clone(),
                cache_ttl: Duration::ZERO,
                request_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        );
        let xfs = xfs::Client::new(xfs::ClientConfig {
            identity,
            conns_per_store: 1,
            // Fault points for tests, from MEGAMAIL_FAULTS only (mailctl has no faults config).
            faults: Some(
                std::sync::Arc::new(runtime::faults::Faults::from_config(
                    &runtime::config::FaultsConfig::new(),
                ))
                .call_faults(),
            ),
            ..Default::default()
        });
        Ok(Hcu {
            endpoints,
            mserv: Arc::new(mserv),
            xfs,
        })
    }

    /// The XFS address of a registered store.
    pub async fn store_addr(&self, store: &str) -> anyhow::Result<String> {
        let stores = self.mserv.list_stores().await?;
        stores
            .into_iter()
            .find(|s| s.info.name == store)
            .map(|s| s.info.xfs_addr)
            .with_context(|| format!("no store named {store} is registered"))
    }

    /// One typed call to the store named `store`.
    pub async fn call<C: Call>(&self, store: &str, call: C) -> anyhow::Result<C::Output> {
        let addr = self.store_addr(store).await?;
        Ok(self.xfs.pool(&addr).run(call).await?)
    }

    /// Create `user` with `password`: place it through the index, then create the mailbox at its
    /// store. Running it again after a failure in between finishes the job.
    pub async fn add_user(
        &self,
        user: &str,
        password: &str,
        display_name: &str,
        policy: Policy,
        quota_bytes: u64,
    ) -> anyhow::Result<Placement> {
        let user = mserv_client::normalize_user(user)?;
        let domain = user.rsplit_once('@').map(|x| x.1).unwrap_or("");
        let hosted = self.mserv.list_domains().await?;
        if !hosted.iter().any(|d| d.name == domain) {
            let names: Vec<&str> = hosted.iter().map(|d| d.name.as_str()).collect();
            bail!(
                "{user}: the domain is not hosted here ({}); `mailctl domain add` hosts it",
                names.join(", ")
            );
        }
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || session::password::hash(&pw))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        let placement = match self.mserv.create_user(&user, policy).await {
            Ok(p) => p,
            // A half-done earlier add: the placement exists; make sure the mailbox does.
            Err(MservError::AlreadyExists { placement }) => placement,
            Err(e) => return Err(e.into()),
        };
        let op = ops::CreateAccount {
            target: Target::new(&user, placement.segment, placement.epoch),
            account: NewAccount {
                password_hash: hash,
                display_name: display_name.to_string(),
                quota_bytes,
            },
        };
        match self.call(&placement.store, op).await {
            Ok(_) => Ok(placement),
            Err(e) => match e.downcast_ref::<CallError>().and_then(CallError::remote) {
                Some(XfsError::AlreadyExists { .. }) => bail!("{user} already exists"),
                _ => Err(e.context(format!(
                    "{user} is placed on {} segment {} but its mailbox could not be created; run the same command again",
                    placement.store, placement.segment
                ))),
            },
        }
    }

    /// Delete `user`: first from the index (no new mail is routed to it), then its mailbox.
    pub async fn del_user(&self, user: &str) -> anyhow::Result<Placement> {
        let p = self.mserv.lookup_uncached(user).await?;
        self.mserv.delete_user(user).await?;
        let op = ops::DeleteAccount {
            target: Target::new(mserv_client::normalize_user(user)?, p.segment, p.epoch),
        };
        match self.call(&p.store, op).await {
            Ok(_) => Ok(p),
            Err(e) => match e.downcast_ref::<CallError>().and_then(CallError::remote) {
                Some(XfsError::NoSuchUser) => Ok(p),
                _ => Err(e.context(format!(
                    "{user} is gone from the index, but its mailbox on {} could not be deleted",
                    p.store
                ))),
            },
        }
    }

    /// Placement, account and folders of `user`.
    pub async fn show_user(&self, user: &str) -> anyhow::Result<Value> {
        let user = mserv_client::normalize_user(user)?;
        let p = self.mserv.lookup_uncached(&user).await?;
        let target = Target::new(&user, p.segment, p.epoch);
        let stats = self.call(&p.store, ops::MailboxStats { target }).await?;
        let folders: Vec<Value> = stats
            .folders
            .iter()
            .map(|f| json!({"name": f.name, "total": f.total, "unread": f.unread}))
            .collect();
        let a = &stats.account;
        Ok(json!({
            "user": user,
            "store": p.store,
            "segment": p.segment,
            "epoch": p.epoch,
            "display_name": a.display_name,
            "state": format!("{:?}", a.state),
            "created_ms": a.created_ms,
            "last_login_ms": a.last_login_ms,
            "quota_bytes": a.quota_bytes,
            "used_bytes": a.used_bytes,
            "messages": a.messages,
            "folders": folders,
        }))
    }

    /// Set a new password (which also ends the user's sessions).
    pub async fn passwd(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let user = mserv_client::normalize_user(user)?;
        let p = self.mserv.lookup_uncached(&user).await?;
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || session::password::hash(&pw))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        let op = ops::UpdateAccount {
            target: Target::new(&user, p.segment, p.epoch),
            display_name: None,
            password_hash: Some(hash),
            quota_bytes: None,
        };
        self.call(&p.store, op).await?;
        Ok(())
    }

    pub async fn store_add(
        &self,
        name: &str,
        xfs_addr: &str,
        segments: Vec<u32>,
        cluster: &str,
    ) -> anyhow::Result<()> {
        if self
            .mserv
            .list_stores()
            .await?
            .iter()
            .any(|s| s.info.name == name)
        {
            bail!("store {name} is registered already");
        }
        // The store must answer before it takes users.
        self.xfs
            .pool(xfs_addr)
            .run(ops::Ping {})
            .await
            .with_context(|| format!("store {name} does not answer at {xfs_addr}"))?;
        self.mserv
            .register_store(StoreInfo {
                name: name.to_string(),
                xfs_addr: xfs_addr.to_string(),
                cluster: cluster.to_string(),
                segments,
                state: StoreState::Active,
            })
            .await?;
        Ok(())
    }

    pub async fn store_state(&self, name: &str, state: StoreState) -> anyhow::Result<()> {
        Ok(self.mserv.set_store_state(name, state).await?)
    }

    pub async fn store_list(&self) -> anyhow::Result<Vec<mserv_client::StoreLoad>> {
        Ok(self.mserv.list_stores().await?)
    }
}
