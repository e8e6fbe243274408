//! The records a segment stores in RocksDB (each `crc32 | bincode`, see `keys`), and how they
//! turn into the wire's types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xfs::{
    AccountInfo, AccountState, Flags, FolderInfo, IndexEntry, MsgId, QueueEntry, QueueId,
    QueueState, Summary, XfsError,
};

use super::FIRST_USER_FOLDER;

/// `account`: one per mailbox, in every state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountRec {
    pub display_name: String,
    pub password_hash: String,
    pub created_ms: u64,
    pub last_login_ms: u64,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub messages: u64,
    pub state: AccountState,
    pub session_gen: u64,
    pub epoch: u64,
    pub modseq: u64,
    pub next_msg: u64,
    pub next_folder: u32,
    /// Signed-out sessions of this generation: `(session id, until)`, refused until `until`
    /// (seconds since the epoch, when their tokens expire); expired entries are dropped on the
    /// next sign-out. Kept in the account so a moved or restored mailbox carries it.
    pub ended_sessions: Vec<(String, u64)>,
}

/// An account record as stores wrote it before sign-outs were kept (no `ended_sessions`).
#[derive(Deserialize)]
struct AccountRecV1 {
    display_name: String,
    password_hash: String,
    created_ms: u64,
    last_login_ms: u64,
    quota_bytes: u64,
    used_bytes: u64,
    messages: u64,
    state: AccountState,
    session_gen: u64,
    epoch: u64,
    modseq: u64,
    next_msg: u64,
    next_folder: u32,
}

impl AccountRec {
    /// Decode a stored account record, of this layout or the one before it.
    pub fn decode(bytes: &[u8]) -> Result<AccountRec, XfsError> {
        let current = crate::keys::decode::<AccountRec>(bytes, crate::keys::CF_ACCOUNT);
        let Err(e) = current else { return current };
        let Ok(v1) = crate::keys::decode::<AccountRecV1>(bytes, crate::keys::CF_ACCOUNT) else {
            return Err(e);
        };
        Ok(AccountRec {
            display_name: v1.display_name,
            password_hash: v1.password_hash,
            created_ms: v1.created_ms,
            last_login_ms: v1.last_login_ms,
            quota_bytes: v1.quota_bytes,
            used_bytes: v1.used_bytes,
            messages: v1.messages,
            state: v1.state,
            session_gen: v1.session_gen,
            epoch: v1.epoch,
            modseq: v1.modseq,
            next_msg: v1.next_msg,
            next_folder: v1.next_folder,
            ended_sessions: Vec::new(),
        })
    }
}

/// `folder`: a folder's name, uid allocation and counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FolderRec {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub total: u32,
    pub unread: u32,
    pub bytes: u64,
}

/// `index`: everything a folder page shows of a message, and its body's crc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EntryRec {
    pub msg: MsgId,
    pub size: u64,
    pub internal_date_ms: u64,
    pub flags: Flags,
    pub summary: Summary,
    pub body_crc: u32,
}

/// `msgloc`: where a message id lives now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct LocRec {
    pub folder: u32,
    pub uid: u32,
}

/// `queue` (pending) and `sendlog` (finished): one recipient of one sent message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct QueueRec {
    /// The Sent copy it was submitted with (it may be deleted; the entry does not depend on it).
    pub sent_msg: MsgId,
    /// Its message, kept in `body` under this id, shared by the submission's entries and
    /// removed with the last of them to finish.
    pub body: MsgId,
    pub body_crc: u32,
    pub from: String,
    pub rcpt: String,
    pub size: u64,
    pub queued_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_reply: Option<String>,
    pub warned: bool,
    pub state: QueueState,
    /// The current lease's token (0 before the first lease).
    pub token: u64,
}

impl QueueRec {
    pub fn into_entry(self, user: &str, id: QueueId) -> QueueEntry {
        QueueEntry {
            user: user.to_string(),
            id,
            sent_msg: self.sent_msg,
            from: self.from,
            rcpt: self.rcpt,
            size: self.size,
            queued_ms: self.queued_ms,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            last_reply: self.last_reply,
            warned: self.warned,
            state: self.state,
        }
    }

    /// Whether a worker may take it at `now`: queued and due, or leased and the lease is over.
    pub fn is_due(&self, now: u64) -> bool {
        match &self.state {
            QueueState::Queued => self.next_attempt_ms <= now,
            QueueState::Leased { until_ms, .. } => *until_ms <= now,
            QueueState::Delivered { .. } | QueueState::Failed { .. } => false,
        }
    }
}

/// `dedupe`: the first result of a delivery id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DedupeRec {
    pub msg: MsgId,
    pub folder: u32,
    pub uid: u32,
    pub at_ms: u64,
}

impl AccountRec {
    /// A new, empty mailbox in `state` at `epoch`.
    pub fn new(state: AccountState, epoch: u64, now_ms: u64) -> AccountRec {
        AccountRec {
            display_name: String::new(),
            password_hash: String::new(),
            created_ms: now_ms,
            last_login_ms: 0,
            quota_bytes: 0,
            used_bytes: 0,
            messages: 0,
            state,
            session_gen: 1,
            epoch,
            modseq: 0,
            next_msg: 1,
            next_folder: FIRST_USER_FOLDER,
            ended_sessions: Vec::new(),
        }
    }

    pub fn info(&self, user: &str) -> AccountInfo {
        AccountInfo {
            user: user.to_string(),
            display_name: self.display_name.clone(),
            created_ms: self.created_ms,
            last_login_ms: self.last_login_ms,
            quota_bytes: self.quota_bytes,
            used_bytes: self.used_bytes,
            messages: self.messages,
            state: self.state.clone(),
            session_gen: self.session_gen,
            epoch: self.epoch,
            modseq: self.modseq,
        }
    }
}

impl FolderRec {
    pub fn new(name: &str, now_ms: u64, salt: u32) -> FolderRec {
        FolderRec {
            name: name.to_string(),
            uidvalidity: ((now_ms / 1000) as u32).wrapping_add(salt),
            uidnext: 1,
            total: 0,
            unread: 0,
            bytes: 0,
        }
    }

    pub fn info(&self) -> FolderInfo {
        FolderInfo {
            name: self.name.clone(),
            uidvalidity: self.uidvalidity,
            uidnext: self.uidnext,
            total: self.total,
            unread: self.unread,
            bytes: self.bytes,
        }
    }
}

impl EntryRec {
    pub fn into_entry(self, folder: &str, uid: u32) -> IndexEntry {
        IndexEntry {
            msg: self.msg,
            folder: folder.to_string(),
            uid,
            size: self.size,
            internal_date_ms: self.internal_date_ms,
            flags: self.flags,
            summary: self.summary,
            body_crc: self.body_crc,
        }
    }
}

/// A mailbox's folders by id.
pub(super) type Folders = BTreeMap<u32, FolderRec>;

/// The folder called `name`: the exact name first, else the first one equal ignoring ASCII case.
pub(super) fn find_folder<'a>(
    folders: &'a Folders,
    name: &str,
) -> Result<(u32, &'a FolderRec), XfsError> {
    folders
        .iter()
        .find(|(_, f)| f.name == name)
        .or_else(|| {
            folders
                .iter()
                .find(|(_, f)| f.name.eq_ignore_ascii_case(name))
        })
        .map(|(id, f)| (*id, f))
        .ok_or_else(|| XfsError::NoSuchFolder {
            name: name.to_string(),
        })
}

/// The name of folder `fid`, empty if it is gone.
pub(super) fn folder_name_of(folders: &Folders, fid: u32) -> String {
    folders
        .get(&fid)
        .map(|f| f.name.clone())
        .unwrap_or_default()
}

/// System folders first in their fixed order, then the user's own by name.
pub(super) fn folder_infos(folders: &Folders) -> Vec<FolderInfo> {
    let mut out: Vec<_> = folders
        .iter()
        .filter(|(id, _)| **id < FIRST_USER_FOLDER)
        .map(|(_, f)| f.info())
        .collect();
    let mut own: Vec<_> = folders
        .iter()
        .filter(|(id, _)| **id >= FIRST_USER_FOLDER)
        .map(|(_, f)| f.info())
        .collect();
    own.sort_by_key(|a| a.name.to_lowercase());
    out.extend(own);
    out
}
