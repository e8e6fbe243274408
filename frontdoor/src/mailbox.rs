//! The signed-in user's mailbox: route the user through the member index, call the user's store,
//! and follow a move (`Moved`: drop the cached route and route again). Busy and frozen stores
//! are retried briefly after their hint; a store still busy after that is `Busy` (the page says
//! "try again in a few seconds"), anything else unsure is `Unavailable` and the page says so.

use std::time::{Duration, Instant};

use mserv_client::RouteError;
use xfs::{
    ops, AuthRecord, Call, CallError, Flags, FolderInfo, FolderPage, IndexEntry, Message, MsgId,
    QueueEntry, SearchQuery, Submission, Target, XfsError,
};

use crate::{metrics, Ctx};

/// Route changes (or busy answers) followed for one call before giving up.
const MAX_ATTEMPTS: usize = 3;
/// Longest pause before retrying a busy or frozen store.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// The folder a delete moves to, and where a delete is for good.
const TRASH: &str = "Trash";

/// `ids` with each id once, in the order first given: a repeated id acts once.
pub fn once_each(ids: impl IntoIterator<Item = MsgId>) -> Vec<MsgId> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// What [`Mailbox::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Moved to Trash.
    pub trashed: Vec<MsgId>,
    /// Expunged for good (they were in Trash).
    pub expunged: u64,
}

/// What a store call can end with, as the front door acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no such mailbox")]
    NoSuchUser,
    #[error("no such message")]
    NoSuchMessage,
    #[error("no such folder")]
    NoSuchFolder,
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("over quota")]
    Quota,
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The store or the index is unreachable, frozen or slow: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The store is up but shedding load, and stayed busy through the retries: try again in a
    /// few seconds.
    #[error("the mailbox store is busy")]
    Busy,
    /// The store refused the session (signed out, an older generation, not login's): sign in
    /// again.
    #[error("the session has ended: {0}")]
    SessionEnded(String),
}

/// One user's mailbox, for the length of one request. Every call carries the user's session
/// token: the store checks it itself.
pub struct Mailbox<'a> {
    pub ctx: &'a Ctx,
    pub user: &'a str,
    pub token: &'a str,
    pub trace: &'a str,
}

impl<'a> Mailbox<'a> {
    pub fn new(ctx: &'a Ctx, user: &'a str, token: &'a str, trace: &'a str) -> Self {
        Mailbox {
            ctx,
            user,
            token,
            trace,
        }
    }

    /// Call the user's store with the operation `make` builds for the current route; its typed
    /// answer.
    pub async fn call<C: Call>(&self, make: impl Fn(Target) -> C) -> Result<C::Output, StoreError> {
        let mut last = StoreError::Unavailable("no attempt made".into());
        for attempt in 0..MAX_ATTEMPTS {
            let route = match self.ctx.router.route(self.user).await {
                Ok(r) => r,
                Err(RouteError::NoSuchUser) | Err(RouteError::BadAddress(_)) => {
                    return Err(StoreError::NoSuchUser)
                }
                Err(RouteError::Unknown(why)) => {
                    tracing::warn!(user = self.user, %why, trace = self.trace, "no route");
                    return Err(StoreError::Unavailable(format!(
                        "directory unreachable: {why}"
                    )));
                }
            };
            let op = make(route.target());
            let name = C::NAME;
            let started = Instant::now();
            let answer = match self.ctx.faults.inject("frontdoor.store").await {
                Err(e) => Err(CallError::Unavailable {
                    addr: route.xfs_addr.clone(),
                    why: e.to_string(),
                }),
                Ok(()) => {
                    self.ctx
                        .xfs
                        .pool(&route.xfs_addr)
                        .run_as(op, Some(self.token), self.trace, self.ctx.store_timeout)
                        .await
                }
            };
            metrics::STORE_SECONDS
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            let result = match &answer {
                Ok(_) => "ok",
                Err(CallError::Remote(e)) => e.kind(),
                Err(_) => "unreachable",
            };
            metrics::STORE_CALLS
                .with_label_values(&[name, result])
                .inc();
            let pause = match answer {
                Ok(reply) => return Ok(reply),
                Err(CallError::Remote(XfsError::Moved { .. }))
                | Err(CallError::Remote(XfsError::NoSuchUser)) => {
                    // A stale route (or a mailbox gone for good: the next route says which).
                    self.ctx.router.invalidate(self.user).await;
                    last = StoreError::Unavailable("the mailbox is moving".into());
                    Duration::ZERO
                }
                Err(CallError::Remote(XfsError::Busy { retry_after_ms })) => {
                    last = StoreError::Busy;
                    Duration::from_millis(u64::from(retry_after_ms)).min(MAX_RETRY_PAUSE)
                }
                Err(CallError::Remote(XfsError::Frozen { retry_after_ms })) => {
                    last = StoreError::Unavailable("the mailbox is moving".into());
                    Duration::from_millis(u64::from(retry_after_ms)).min(MAX_RETRY_PAUSE)
                }
                Err(CallError::Remote(XfsError::SessionRefused { why })) => {
                    // The next request of this session asks the store again, and is refused.
                    self.ctx.confirmed.invalidate(self.token).await;
                    return Err(StoreError::SessionEnded(why));
                }
                Err(CallError::Remote(e)) => return Err(map_remote(e)),
                Err(e) => {
                    tracing::warn!(user = self.user, store = %route.placement.store, error = %e,
                        trace = self.trace, "store unreachable");
                    return Err(StoreError::Unavailable(format!(
                        "store {} unreachable",
                        route.placement.store
                    )));
                }
            };
            if attempt + 1 < MAX_ATTEMPTS {
                tokio::time::sleep(pause).await;
            }
        }
        Err(last)
    }

    pub async fn auth(&self) -> Result<AuthRecord, StoreError> {
        self.call(|target| ops::GetAuth { target }).await
    }

    /// Sign-out: the store refuses session `sid` (this request's own) until `until`.
    pub async fn end_session(&self, sid: &str, until: u64) -> Result<(), StoreError> {
        self.call(|target| ops::EndSession {
            target,
            sid: sid.to_string(),
            until,
        })
        .await
    }

    pub async fn update_account(
        &self,
        display_name: Option<String>,
        password_hash: Option<String>,
    ) -> Result<(), StoreError> {
        self.call(|target| ops::UpdateAccount {
            target,
            display_name: display_name.clone(),
            password_hash: password_hash.clone(),
            quota_bytes: None,
        })
        .await
    }

    /// Every folder, system folders first (in their usual order), then the user's own by name.
    pub async fn folders(&self) -> Result<Vec<FolderInfo>, StoreError> {
        self.call(|target| ops::ListFolders { target })
            .await
            .map(in_order)
    }

    /// A page of a folder, newest first.
    pub async fn list(
        &self,
        folder: &str,
        offset: u32,
        limit: u32,
    ) -> Result<FolderPage, StoreError> {
        self.call(|target| ops::ListFolder {
            target,
            folder: folder.to_string(),
            offset,
            limit,
            before_uid: None,
        })
        .await
    }

    pub async fn fetch(&self, msg: MsgId, mark_seen: bool) -> Result<Message, StoreError> {
        self.call(|target| ops::Fetch {
            target,
            msg,
            mark_seen,
        })
        .await
    }

    pub async fn set_flags(
        &self,
        msgs: &[MsgId],
        add: Flags,
        remove: Flags,
    ) -> Result<(), StoreError> {
        self.call(|target| ops::SetFlags {
            target,
            msgs: msgs.to_vec(),
            add,
            remove,
        })
        .await
    }

    /// Move messages; each message's new uid.
    pub async fn move_to(
        &self,
        msgs: &[MsgId],
        folder: &str,
    ) -> Result<Vec<(MsgId, u32)>, StoreError> {
        self.call(|target| ops::Move {
            target,
            msgs: msgs.to_vec(),
            to_folder: folder.to_string(),
        })
        .await
    }

    /// Expunge for good (whatever folder they are in); how many were there.
    pub async fn expunge(&self, msgs: &[MsgId]) -> Result<u64, StoreError> {
        self.call(|target| ops::Expunge {
            target,
            msgs: msgs.to_vec(),
        })
        .await
    }

    /// Delete: messages in Trash go for good, the others move to Trash. Which messages are in
    /// Trash is the store's answer, never the caller's: a page or API call that says its
    /// messages are in Trash cannot expunge mail of another folder by naming its ids. `hint`, a
    /// folder other than Trash, skips those reads (moving a message to Trash where it already
    /// is changes nothing). Ids that no longer exist are left out.
    pub async fn delete(&self, msgs: &[MsgId], hint: Option<&str>) -> Result<Deleted, StoreError> {
        let (in_trash, elsewhere) = match hint {
            Some(folder) if folder != TRASH => (Vec::new(), msgs.to_vec()),
            _ => {
                let (mut t, mut e) = (Vec::new(), Vec::new());
                for id in msgs {
                    match self.fetch(*id, false).await {
                        Ok(m) if m.entry.folder == TRASH => t.push(*id),
                        Ok(_) => e.push(*id),
                        Err(StoreError::NoSuchMessage) => {}
                        Err(err) => return Err(err),
                    }
                }
                (t, e)
            }
        };
        let expunged = if in_trash.is_empty() {
            0
        } else {
            self.expunge(&in_trash).await?
        };
        if !elsewhere.is_empty() {
            self.move_to(&elsewhere, TRASH).await?;
        }
        Ok(Deleted {
            trashed: elsewhere,
            expunged,
        })
    }

    pub async fn empty_folder(&self, folder: &str) -> Result<u64, StoreError> {
        self.call(|target| ops::EmptyFolder {
            target,
            folder: folder.to_string(),
        })
        .await
    }

    pub async fn create_folder(&self, name: &str) -> Result<(), StoreError> {
        self.call(|target| ops::CreateFolder {
            target,
            name: name.to_string(),
        })
        .await
    }

    pub async fn rename_folder(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.call(|target| ops::RenameFolder {
            target,
            from: from.to_string(),
            to: to.to_string(),
        })
        .await
    }

    pub async fn delete_folder(&self, name: &str) -> Result<(), StoreError> {
        self.call(|target| ops::DeleteFolder {
            target,
            name: name.to_string(),
        })
        .await
        .map(drop)
    }

    pub async fn search(&self, query: SearchQuery) -> Result<Vec<IndexEntry>, StoreError> {
        self.call(|target| ops::Search {
            target,
            query: query.clone(),
        })
        .await
    }

    /// Send: file the Sent copy and queue its recipients (idempotent by the copy's delivery
    /// id); the Sent copy's id.
    pub async fn submit(&self, submission: Submission) -> Result<MsgId, StoreError> {
        self.call(|target| ops::Submit {
            target,
            submission: submission.clone(),
        })
        .await
        .map(|s| s.msg)
    }

    /// The mailbox's outbound queue entries (pending and recently finished), oldest first.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        self.call(|target| ops::MailboxQueue {
            target,
            after: None,
            limit: 1000,
        })
        .await
    }
}

/// Folders in display order: system folders first (in their usual order), then the user's own
/// by name.
pub fn in_order(mut folders: Vec<FolderInfo>) -> Vec<FolderInfo> {
    folders.sort_by_key(|f| folder_order(&f.name));
    folders
}

/// Sort key: the system folders in their usual order, then the rest by name.
pub fn folder_order(name: &str) -> (usize, String) {
    let i = xfs::SYSTEM_FOLDERS
        .iter()
        .position(|s| *s == name)
        .unwrap_or(xfs::SYSTEM_FOLDERS.len());
    (i, name.to_lowercase())
}

fn map_remote(e: XfsError) -> StoreError {
    match e {
        XfsError::NoSuchMessage { .. } => StoreError::NoSuchMessage,
        XfsError::NoSuchFolder { .. } => StoreError::NoSuchFolder,
        XfsError::AlreadyExists { what } => StoreError::Exists(what),
        XfsError::BadRequest { why } => StoreError::BadRequest(why),
        XfsError::QuotaExceeded { .. } => StoreError::Quota,
        XfsError::Corrupt { what } => {
            tracing::error!(%what, "the store reports corrupt data");
            StoreError::Corrupt(what)
        }
        XfsError::NoSuchUser => StoreError::NoSuchUser,
        other => StoreError::Unavailable(other.to_string()),
    }
}
