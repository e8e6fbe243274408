//! One user's mailbox read at its store over XFS, as a test checks what is stored: its folders,
//! every entry of a folder, the bodies, everything at once; and the store calls behind them,
//! retried while a store restarts or a move holds the mailbox frozen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use xfs::{ops, Call, CallError, FolderInfo, IndexEntry, MsgId, Op, Reply, StorePool, Target};

use crate::support::poll::{eventually, retry_while};

/// How long a store call is retried while it fails transiently.
pub const STORE_RETRY: Duration = Duration::from_secs(60);

/// `op` to the store behind `pool`, retried every 50 ms for up to `within` while it fails
/// transiently (the store restarting, the mailbox frozen, busy). Only for idempotent operations.
pub async fn call_retrying(pool: &StorePool, op: Op, within: Duration) -> Result<Reply, CallError> {
    let attempt = || pool.call(op.clone());
    retry_while(within, Duration::from_millis(50), attempt, |e| {
        e.is_transient()
    })
    .await
}

/// Per folder, every message with its stored bytes, newest first.
pub type Content = BTreeMap<String, Vec<(IndexEntry, Vec<u8>)>>;

/// A mailbox on its store.
#[derive(Clone)]
pub struct Mailbox {
    pub store: String,
    pub pool: Arc<StorePool>,
    pub target: Target,
}

impl Mailbox {
    /// `user`'s mailbox where the index places it now (asked without a cache).
    pub async fn of(hcu: &operator::admin::Hcu, user: &str) -> anyhow::Result<Mailbox> {
        let p = hcu
            .mserv
            .lookup_uncached(user)
            .await
            .with_context(|| format!("looking up {user}"))?;
        let addr = hcu.store_addr(&p.store).await?;
        Ok(Mailbox {
            pool: hcu.xfs.pool(&addr),
            target: Target::new(user, p.segment, p.epoch),
            store: p.store,
        })
    }

    /// One operation (it names its own target), retried as [`call_retrying`] does.
    pub async fn call(&self, op: Op) -> Result<Reply, CallError> {
        call_retrying(&self.pool, op, STORE_RETRY).await
    }

    /// One typed operation, retried as [`call_retrying`] does.
    pub async fn run<C: Call + Clone>(&self, call: C) -> Result<C::Output, CallError> {
        let attempt = || self.pool.run(call.clone());
        retry_while(STORE_RETRY, Duration::from_millis(50), attempt, |e| {
            e.is_transient()
        })
        .await
    }

    /// Every folder with its counts.
    pub async fn folders(&self) -> Result<Vec<FolderInfo>, CallError> {
        self.run(ops::ListFolders {
            target: self.target.clone(),
        })
        .await
    }

    /// How many messages `folder` holds (its own count).
    pub async fn count(&self, folder: &str) -> Result<u64, CallError> {
        let page = self.page(folder, 0, None).await?;
        Ok(page.folder.total.into())
    }

    async fn page(
        &self,
        folder: &str,
        limit: u32,
        before_uid: Option<u32>,
    ) -> Result<xfs::FolderPage, CallError> {
        self.run(ops::ListFolder {
            target: self.target.clone(),
            folder: folder.into(),
            offset: 0,
            limit,
            before_uid,
        })
        .await
    }

    /// Every entry of `folder`, newest first (read page by page).
    pub async fn entries(&self, folder: &str) -> Result<Vec<IndexEntry>, CallError> {
        let mut entries = Vec::new();
        let mut before_uid = None;
        loop {
            let page = self.page(folder, 500, before_uid).await?;
            let Some(last) = page.entries.last() else {
                return Ok(entries);
            };
            before_uid = Some(last.uid);
            entries.extend(page.entries);
        }
    }

    /// The stored bytes of one message (its seen flag unchanged).
    pub async fn body(&self, msg: MsgId) -> Result<Vec<u8>, CallError> {
        let m = self
            .run(ops::Fetch {
                target: self.target.clone(),
                msg,
                mark_seen: false,
            })
            .await?;
        Ok(m.body)
    }

    /// Every message of `folder` with its stored bytes, newest first.
    pub async fn messages(&self, folder: &str) -> Result<Vec<(IndexEntry, Vec<u8>)>, CallError> {
        let mut out = Vec::new();
        for e in self.entries(folder).await? {
            let body = self.body(e.msg).await?;
            out.push((e, body));
        }
        Ok(out)
    }

    /// Everything the mailbox holds: every folder's messages with their bytes.
    pub async fn content(&self) -> Result<Content, CallError> {
        let mut out = BTreeMap::new();
        for f in self.folders().await? {
            let messages = self.messages(&f.name).await?;
            out.insert(f.name, messages);
        }
        Ok(out)
    }

    /// The entry of `folder` with `subject`, once it is there (for up to `timeout`); panics
    /// naming what the folder holds instead.
    pub async fn wait_for(&self, folder: &str, subject: &str, timeout: Duration) -> IndexEntry {
        let found = eventually(timeout, Duration::from_millis(200), || async {
            let entries = match self.entries(folder).await {
                Ok(entries) => entries,
                Err(CallError::Remote(xfs::XfsError::NoSuchFolder { .. })) => Vec::new(),
                Err(e) => panic!("listing {folder}: {e}"),
            };
            match entries.iter().find(|e| e.summary.subject == subject) {
                Some(e) => Ok(e.clone()),
                None => Err(subjects(&entries).join(", ")),
            }
        })
        .await;
        found.unwrap_or_else(|held| {
            panic!(
                "{}: no {subject:?} in {folder} after {timeout:?}; it holds [{held}]",
                self.target.user
            )
        })
    }
}

impl From<&mailctl::copy::Side> for Mailbox {
    /// The mailbox one side of a move addresses.
    fn from(side: &mailctl::copy::Side) -> Mailbox {
        Mailbox {
            store: side.store.clone(),
            pool: side.pool.clone(),
            target: side.target.clone(),
        }
    }
}

/// The subjects of some entries, in order.
pub fn subjects(entries: &[IndexEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.summary.subject.as_str()).collect()
}
