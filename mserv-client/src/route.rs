//! Routing for the roles that act for users (smtp-in, front doors, login): user → placement
//! (through the caching [`Client`]) → the store's XFS address and state (from the store registry,
//! cached and refreshed in the background).
//!
//! A route is only a hint: the store fences a stale one with `Moved`, and the caller then calls
//! [`Router::invalidate`] and routes again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::proto::{MservError, Placement, StoreInfo, StoreState};

/// Where a user's mailbox is, and how to reach its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub user: String,
    pub placement: Placement,
    pub xfs_addr: String,
    pub store_state: StoreState,
    pub cluster: String,
}

impl Route {
    /// The XFS target naming this placement.
    pub fn target(&self) -> xfs::Target {
        xfs::Target::new(
            self.user.clone(),
            self.placement.segment,
            self.placement.epoch,
        )
    }
}

/// Why no route could be had.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no such user")]
    NoSuchUser,
    #[error("bad address: {0}")]
    BadAddress(String),
    /// The member index could not be reached, or named a store the registry does not hold:
    /// the caller must treat the route as unknown (a temporary failure).
    #[error("route unknown: {0}")]
    Unknown(String),
}

struct Stores {
    by_name: HashMap<String, StoreInfo>,
    fetched: Option<Instant>,
}

/// A user → store router over a member index client.
pub struct Router {
    mserv: Arc<Client>,
    stores: RwLock<Stores>,
    /// How old the store registry may get before a route refreshes it.
    refresh: Duration,
    refreshing: tokio::sync::Mutex<()>,
}

impl Router {
    pub fn new(mserv: Arc<Client>, refresh: Duration) -> Router {
        Router {
            mserv,
            stores: RwLock::new(Stores {
                by_name: HashMap::new(),
                fetched: None,
            }),
            refresh,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn mserv(&self) -> &Arc<Client> {
        &self.mserv
    }

    /// Route `user` (a full address; normalized here).
    pub async fn route(&self, user: &str) -> Result<Route, RouteError> {
        let user = crate::proto::normalize_user(user).map_err(|e| match e {
            MservError::BadRequest { why } => RouteError::BadAddress(why),
            other => RouteError::Unknown(other.to_string()),
        })?;
        let placement = match self.mserv.lookup(&user).await {
            Ok(p) => p,
            Err(MservError::NoSuchUser) => return Err(RouteError::NoSuchUser),
            Err(MservError::BadRequest { why }) => return Err(RouteError::BadAddress(why)),
            Err(e) => return Err(RouteError::Unknown(e.to_string())),
        };
        let info = self.store(&placement.store).await?;
        Ok(Route {
            user,
            xfs_addr: info.xfs_addr,
            store_state: info.state,
            cluster: info.cluster,
            placement,
        })
    }

    /// Forget `user`'s cached placement (a store answered `Moved`) and the registry's age, so the
    /// next route asks again.
    pub async fn invalidate(&self, user: &str) {
        self.mserv.invalidate(user).await;
        self.stores.write().unwrap().fetched = None;
    }

    /// A store's registry entry: from the cache while fresh; refreshed when stale or unknown. A
    /// stale entry is still used when the index cannot be reached.
    pub async fn store(&self, name: &str) -> Result<StoreInfo, RouteError> {
        let (cached, fresh) = {
            let s = self.stores.read().unwrap();
            let fresh = s.fetched.is_some_and(|t| t.elapsed() < self.refresh);
            (s.by_name.get(name).cloned(), fresh)
        };
        if let (Some(info), true) = (&cached, fresh) {
            return Ok(info.clone());
        }
        match self.refresh_stores().await {
            Ok(()) => {}
            Err(e) => {
                return cached.ok_or_else(|| RouteError::Unknown(e.to_string()));
            }
        }
        let s = self.stores.read().unwrap();
        s.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| RouteError::Unknown(format!("store {name} is not registered")))
    }

    /// Every registered store, as last fetched (refreshing first if stale).
    pub async fn stores(&self) -> Result<Vec<StoreInfo>, RouteError> {
        let fresh = {
            let s = self.stores.read().unwrap();
            s.fetched.is_some_and(|t| t.elapsed() < self.refresh)
        };
        if !fresh {
            if let Err(e) = self.refresh_stores().await {
                let s = self.stores.read().unwrap();
                if s.fetched.is_none() {
                    return Err(RouteError::Unknown(e.to_string()));
                }
            }
        }
        let s = self.stores.read().unwrap();
        let mut v: Vec<StoreInfo> = s.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn refresh_stores(&self) -> Result<(), MservError> {
        // One refresh at a time; whoever waited finds it done.
        let started = Instant::now();
        let _g = self.refreshing.lock().await;
        if self
            .stores
            .read()
            .unwrap()
            .fetched
            .is_some_and(|t| t >= started)
        {
            return Ok(());
        }
        let list = self.mserv.list_stores().await?;
        let mut s = self.stores.write().unwrap();
        s.by_name = list
            .into_iter()
            .map(|l| (l.info.name.clone(), l.info))
            .collect();
        s.fetched = Some(Instant::now());
        Ok(())
    }
}
