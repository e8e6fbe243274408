//! The XFS message types: hello, requests with ids and deadlines, replies, and the typed errors.
//!
//! Everything here crosses the wire as bincode 2 (serde). Changing a type changes the wire: bump
//! [`PROTOCOL_VERSION`] and keep a decoder for the previous version.

use serde::{Deserialize, Serialize};

/// The protocol version carried in both hellos. A peer with another version is refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// The folders every mailbox has; they cannot be renamed or deleted.
pub const SYSTEM_FOLDERS: [&str; 5] = ["Inbox", "Sent", "Drafts", "Junk", "Trash"];
/// The folder a delivery lands in unless it names another.
pub const INBOX: &str = "Inbox";
/// The folder a submission files its copy in.
pub const SENT: &str = "Sent";

/// A message id, unique and stable within one mailbox (it survives moves between folders).
pub type MsgId = u64;

/// What a client sends: one hello, then requests.
pub type ClientFrame = crate::envelope::ClientFrame<Op>;
/// What a store sends: one hello (or a refusal), then responses.
pub type ServerFrame = crate::envelope::ServerFrame<ServerHello, Result<Reply, XfsError>>;
pub type Request = crate::envelope::Request<Op>;
pub type Response = crate::envelope::Response<Result<Reply, XfsError>>;
pub use crate::envelope::ClientHello;

/// What a store says of itself when it accepts a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub version: u32,
    pub store: String,
    pub segments: Vec<u32>,
}

/// Which mailbox an operation is about, and the placement the caller holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub user: String,
    pub segment: u32,
    pub epoch: u64,
}

impl Target {
    pub fn new(user: impl Into<String>, segment: u32, epoch: u64) -> Self {
        Target {
            user: user.into(),
            segment,
            epoch,
        }
    }
}

/// Message flags, a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub struct Flags(pub u32);

impl Flags {
    pub const NONE: Flags = Flags(0);
    pub const SEEN: Flags = Flags(1);
    pub const FLAGGED: Flags = Flags(2);
    pub const ANSWERED: Flags = Flags(4);
    pub const DRAFT: Flags = Flags(8);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub fn minus(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

/// The index summary of a message, extracted by the caller (smtp-in parses the mail once).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub from: String,
    pub to: String,
    pub subject: String,
    /// The Date header as written by the sender.
    pub date: String,
    pub preview: String,
    pub attachments: Vec<String>,
}

/// One message to store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// Idempotency key (a hash of envelope, recipient and body): a repeat returns the first result.
    pub id: [u8; 32],
    /// Target folder; `None` means Inbox.
    pub folder: Option<String>,
    pub internal_date_ms: u64,
    pub flags: Flags,
    pub summary: Summary,
    /// The message as stored. Shared, not copied: one message's copies for many recipients, and
    /// every attempt at delivering one, hold the same bytes.
    pub body: bytes::Bytes,
}

/// A queue entry's id, unique within its mailbox (it moves with the mailbox).
pub type QueueId = u64;

/// One message a user sends: the copy filed in Sent and one queue entry per recipient, written
/// in one synced batch (sent means durable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// The Sent copy; its id is the submission's idempotency key (a repeat queues nothing).
    pub sent: Delivery,
    /// The envelope sender: the user's address or one of its aliases; empty for a null sender
    /// (no delivery status notification is ever sent for it).
    pub from: String,
    /// Every recipient (To, Cc and Bcc), each queued on its own.
    pub rcpts: Vec<String>,
}

/// What a submission answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub msg: MsgId,
    pub uid: u32,
    /// One queue entry per recipient, in the submission's order.
    pub queued: Vec<QueueId>,
    /// True when this submission was seen before: nothing new was stored or queued.
    pub duplicate: bool,
}

/// Where one recipient of a sent message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueState {
    /// Waiting for its next attempt (at `QueueEntry::next_attempt_ms`).
    Queued,
    /// A worker is delivering it; the lease runs out at `until_ms`, and then another may.
    Leased { worker: String, until_ms: u64 },
    /// Taken by the recipient's server (or stored in a local mailbox).
    Delivered { at_ms: u64 },
    /// Given up: refused for good, or its lifetime ran out.
    Failed { at_ms: u64 },
}

impl QueueState {
    /// Whether the entry is still to be delivered.
    pub fn is_pending(&self) -> bool {
        matches!(self, QueueState::Queued | QueueState::Leased { .. })
    }
}

/// One recipient of one sent message, as the queue keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub user: String,
    pub id: QueueId,
    /// The Sent copy it was submitted with (which may have been deleted since).
    pub sent_msg: MsgId,
    pub from: String,
    pub rcpt: String,
    pub size: u64,
    pub queued_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    /// The last answer of the recipient's side (or why it could not be reached).
    pub last_reply: Option<String>,
    /// A delay warning was sent to the sender.
    pub warned: bool,
    pub state: QueueState,
}

/// A due entry leased to a worker: deliver it and report with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub entry: QueueEntry,
    /// The mailbox's segment and epoch at this store, for the report's target.
    pub segment: u32,
    pub epoch: u64,
    /// This lease; a report with another token (the lease ran out and was given to another
    /// worker) is refused.
    pub token: u64,
    /// The message as it was submitted.
    pub body: bytes::Bytes,
}

/// How an attempt at one queue entry ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The recipient's server took it (its reply), or it was stored in a local mailbox.
    Delivered { reply: String },
    /// Not this time: try again at `retry_at_ms`. With `warn`, the sender is told it is late
    /// (once per entry).
    Deferred {
        reply: String,
        retry_at_ms: u64,
        warn: bool,
    },
    /// Given up; the sender gets a delivery status notification saying why.
    Failed { reply: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    pub password_hash: String,
    pub display_name: String,
    /// 0 means no quota.
    pub quota_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountState {
    Active,
    /// The last instant of a migration: writes answer `Frozen`, reads are served.
    Frozen,
    /// The mailbox lives elsewhere now; callers are redirected.
    MovedOut {
        to: String,
        epoch: u64,
    },
    /// A copy arriving from another store: every caller is told `Frozen` until the move commits.
    Importing {
        from: String,
    },
    /// Deleted by an operator (the inactivity GC): every caller is told `NoSuchUser`, the data
    /// stays until the store's retention sweep purges it, and `Undelete` brings it back.
    Deleted {
        at_ms: u64,
    },
}

/// One account as the inactivity GC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBrief {
    pub user: String,
    pub created_ms: u64,
    /// 0 when the user never signed in.
    pub last_login_ms: u64,
    pub state: AccountState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub user: String,
    pub display_name: String,
    pub created_ms: u64,
    pub last_login_ms: u64,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub messages: u64,
    pub state: AccountState,
    /// Bumped by a password change; sessions issued under an older generation are invalid.
    pub session_gen: u64,
    pub epoch: u64,
    /// The mailbox's change-log position.
    pub modseq: u64,
}

/// What login needs to check a password (the hashing CPU stays on login servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRecord {
    pub password_hash: String,
    pub display_name: String,
    pub session_gen: u64,
    pub state: AccountState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderInfo {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub total: u32,
    pub unread: u32,
    pub bytes: u64,
}

/// One index entry: everything a folder page shows, no body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub msg: MsgId,
    pub folder: String,
    pub uid: u32,
    pub size: u64,
    pub internal_date_ms: u64,
    pub flags: Flags,
    pub summary: Summary,
    /// crc32 of the stored body.
    pub body_crc: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderPage {
    pub folder: FolderInfo,
    /// Newest first.
    pub entries: Vec<IndexEntry>,
    /// Every folder of the mailbox with its counts, as `ListFolders` gives them: what a page
    /// shows beside the listing, at no extra cost (the store reads them to find the folder).
    pub folders: Vec<FolderInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub entry: IndexEntry,
    /// The stored bytes, exactly as received (with the trace header the receiver prepended).
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Case-insensitive substring.
    pub text: String,
    pub in_from: bool,
    pub in_subject: bool,
    /// Reads bodies: costs a body read per candidate.
    pub in_body: bool,
    /// Only this folder; `None` searches every folder.
    pub folder: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStats {
    pub account: AccountInfo,
    pub folders: Vec<FolderInfo>,
}

/// One entry of a mailbox's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub modseq: u64,
    pub at_ms: u64,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    AccountCreated,
    AccountUpdated,
    Added {
        msg: MsgId,
        folder: String,
        uid: u32,
    },
    Flags {
        msg: MsgId,
        flags: Flags,
    },
    /// A message moved to another folder (it keeps its id; `uid` is its uid there).
    Refiled {
        msg: MsgId,
        from: String,
        to: String,
        uid: u32,
    },
    Expunged {
        msg: MsgId,
        folder: String,
    },
    FolderCreated {
        name: String,
    },
    FolderRenamed {
        from: String,
        to: String,
    },
    FolderDeleted {
        name: String,
    },
}

/// Which part of a mailbox an export streams: the bodies (large, immutable per message id) or
/// every other record (account, folders, index, locations, delivery ids, change log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportPart {
    Records,
    Bodies,
}

/// One stored record exactly as the store keeps it: column family, key, and the value with its
/// crc32 (checked again on import).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    pub cf: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where an export goes on: the column family and the last key sent.
pub type ExportCursor = (String, Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportChunk {
    pub records: Vec<RawRecord>,
    /// Pass it back as `after` for the next chunk; `None` when the export is complete.
    pub next: Option<ExportCursor>,
    /// The mailbox's change-log position when the chunk was read.
    pub modseq: u64,
}

/// A summary of a mailbox's content that two copies must share: record counts and a sha256 over
/// folders, index (which holds each body's crc32 and size), locations and change log; not the
/// account record, whose state and epoch differ, nor delivery ids, which expire on their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxDigest {
    pub messages: u64,
    pub folders: u64,
    pub records: u64,
    pub body_bytes: u64,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// The mailbox's current position; `changes` is complete up to it when shorter than the limit.
    pub modseq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub id: u32,
    pub accounts: u64,
    /// Bytes of the segment's files on disk (SST, blob, WAL).
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub store: String,
    pub segments: Vec<SegmentStats>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub shed_total: u64,
    /// Synced write batches asked for, and WAL fsyncs done: their ratio shows group commit.
    pub sync_writes: u64,
    pub wal_syncs: u64,
    pub bytes_written: u64,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
}

/// Defines [`Op`] and its typed twins in [`ops`] from one list:
/// `Name "label" { field: Type, ... } -> Output { Reply pattern => output }`.
macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $name:ident $label:literal $({ $($field:ident : $ty:ty),* $(,)? })?
            -> $out:ty { $pat:pat => $val:expr }
    )*) => {
        /// The operations a store serves.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum Op {
            $( $(#[$doc])* $name $({ $($field: $ty),* })?, )*
        }

        impl Op {
            /// Every operation's [`Op::name`] (the fault points `ustore.op.<op>` and
            /// `xfs.call.<op>` are known by these).
            pub const NAMES: &'static [&'static str] = &[$($label),*];

            /// A short name, for metrics, logs and fault points.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Op::$name { .. } => $label, )*
                }
            }
        }

        /// One struct per operation, carrying its fields; [`Call`] names its reply.
        pub mod ops {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone)]
                pub struct $name { $($(pub $field: $ty),*)? }

                impl From<$name> for Op {
                    fn from(call: $name) -> Op {
                        let $name { $($($field),*)? } = call;
                        Op::$name $({ $($field),* })?
                    }
                }

                impl Call for $name {
                    type Output = $out;
                    const NAME: &'static str = $label;
                    fn output(reply: Reply) -> Result<$out, Box<Reply>> {
                        #[allow(unreachable_patterns)]
                        match reply {
                            $pat => Ok($val),
                            other => Err(Box::new(other)),
                        }
                    }
                }
            )*
        }
    };
}

/// A typed operation: what it is on the wire, and the reply it answers with.
pub trait Call: Into<Op> {
    type Output;
    const NAME: &'static str;
    /// The typed reply, or the reply given back (boxed: the rare path) when it has another shape.
    fn output(reply: Reply) -> Result<Self::Output, Box<Reply>>;
}

/// What a delivery answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub msg: MsgId,
    pub folder: String,
    pub uid: u32,
    /// True when this delivery id was seen before: nothing new was stored.
    pub duplicate: bool,
}

// The operations a store serves, each with its name (for metrics, logs and fault points) and
// the reply it answers with. One list makes both the wire enum `Op` and, in `ops`, one struct
// per operation whose `Call` impl names its reply type: callers get the type they asked for,
// never a `Reply` to match on. The structs' names shadow the reply types of the same name
// inside `ops`, hence the two `crate::proto::` paths.
operations! {
    Ping "ping" -> () { Reply::Pong => () }
    CreateAccount "create_account" {
        target: Target,
        account: NewAccount,
    } -> AccountInfo { Reply::Account(a) => a }
    DeleteAccount "delete_account" {
        target: Target,
    } -> () { Reply::Done => () }
    GetAccount "get_account" {
        target: Target,
    } -> AccountInfo { Reply::Account(a) => a }
    GetAuth "get_auth" {
        target: Target,
    } -> AuthRecord { Reply::Auth(a) => a }
    RecordLogin "record_login" {
        target: Target,
        at_ms: u64,
    } -> () { Reply::Done => () }
    /// Sign-out: the session `sid` is refused by this mailbox until `until` (seconds since the
    /// epoch, when its token expires). The request must carry that session (idempotent).
    EndSession "end_session" {
        target: Target,
        sid: String,
        until: u64,
    } -> () { Reply::Done => () }
    /// Change any of the given fields; a new password hash bumps the session generation.
    UpdateAccount "update_account" {
        target: Target,
        display_name: Option<String>,
        password_hash: Option<String>,
        quota_bytes: Option<u64>,
    } -> () { Reply::Done => () }
    Deliver "deliver" {
        target: Target,
        delivery: Delivery,
    } -> Delivered {
        Reply::Delivered { msg, folder, uid, duplicate } => Delivered { msg, folder, uid, duplicate }
    }
    /// Send: file `submission.sent` in Sent and queue one entry per recipient, in one synced
    /// batch (idempotent by the Sent copy's delivery id).
    Submit "submit" {
        target: Target,
        submission: Submission,
    } -> Submitted {
        Reply::Submitted { msg, uid, queued, duplicate } => Submitted { msg, uid, queued, duplicate }
    }
    /// A worker takes up to `max` due entries of this store (any mailbox), each leased for
    /// `lease_ms`: queued ones whose next attempt is due, and leased ones whose lease ran out.
    LeaseQueue "lease_queue" {
        worker: String,
        max: u32,
        lease_ms: u32,
    } -> Vec<Lease> { Reply::Leases(l) => l }
    /// A worker's outcome for an entry it leased. `mta` names the reporting server in a
    /// delivery status notification.
    ReportQueue "report_queue" {
        target: Target,
        id: QueueId,
        token: u64,
        mta: String,
        outcome: Outcome,
    } -> () { Reply::Done => () }
    /// A mailbox's queue entries, pending ones and those finished within the store's
    /// retention, in id order after `after` (a user's Sent view, an operator's listing).
    MailboxQueue "mailbox_queue" {
        target: Target,
        after: Option<QueueId>,
        limit: u32,
    } -> Vec<QueueEntry> { Reply::Queue(q) => q }
    /// Every pending entry of a segment, in (user, id) order after `after`.
    ListQueue "list_queue" {
        segment: u32,
        after: Option<(String, QueueId)>,
        limit: u32,
    } -> Vec<QueueEntry> { Reply::Queue(q) => q }
    /// Make pending entries due now: one (`id`), or all of the mailbox's. The count made due.
    RetryQueue "retry_queue" {
        target: Target,
        id: Option<QueueId>,
    } -> u64 { Reply::Count(n) => n }
    /// Give a pending entry up: with `bounce`, the sender gets a delivery status notification.
    CancelQueued "cancel_queued" {
        target: Target,
        id: QueueId,
        bounce: bool,
    } -> () { Reply::Done => () }
    ListFolders "list_folders" {
        target: Target,
    } -> Vec<FolderInfo> { Reply::Folders(f) => f }
    /// A page of a folder, newest first: skip `offset` entries below `before_uid` (or from the top).
    ListFolder "list_folder" {
        target: Target,
        folder: String,
        offset: u32,
        limit: u32,
        before_uid: Option<u32>,
    } -> FolderPage { Reply::Page(p) => p }
    Fetch "fetch" {
        target: Target,
        msg: MsgId,
        mark_seen: bool,
    } -> Message { Reply::Message(m) => m }
    SetFlags "set_flags" {
        target: Target,
        msgs: Vec<MsgId>,
        add: Flags,
        remove: Flags,
    } -> () { Reply::Done => () }
    Move "move" {
        target: Target,
        msgs: Vec<MsgId>,
        to_folder: String,
    } -> Vec<(MsgId, u32)> { Reply::NewUids(u) => u }
    /// Expunge for good (moving to Trash is a `Move`).
    Expunge "expunge" {
        target: Target,
        msgs: Vec<MsgId>,
    } -> u64 { Reply::Count(n) => n }
    /// Expunge every message of a folder (empty Trash).
    EmptyFolder "empty_folder" {
        target: Target,
        folder: String,
    } -> u64 { Reply::Count(n) => n }
    CreateFolder "create_folder" {
        target: Target,
        name: String,
    } -> () { Reply::Done => () }
    RenameFolder "rename_folder" {
        target: Target,
        from: String,
        to: String,
    } -> () { Reply::Done => () }
    /// Deletes the folder and expunges its messages. System folders refuse.
    DeleteFolder "delete_folder" {
        target: Target,
        name: String,
    } -> u64 { Reply::Count(n) => n }
    Search "search" {
        target: Target,
        query: SearchQuery,
    } -> Vec<IndexEntry> { Reply::Hits(h) => h }
    MailboxStats "mailbox_stats" {
        target: Target,
    } -> crate::proto::MailboxStats { Reply::Stats(s) => s }
    /// The change log after `since`, at most `limit` entries.
    Changes "changes" {
        target: Target,
        since: u64,
        limit: u32,
    } -> ChangePage { Reply::Changes(c) => c }
    StoreStats "store_stats" -> crate::proto::StoreStats { Reply::StoreStats(s) => s }
    /// Migration, source side: a chunk of the mailbox's records or bodies after `after`, at most
    /// about `max_bytes` (always at least one record); with `keys_only` values are left empty.
    Export "export" {
        target: Target,
        part: ExportPart,
        after: Option<ExportCursor>,
        max_bytes: u32,
        keys_only: bool,
    } -> ExportChunk { Reply::Export(c) => c }
    /// Migration, target side: make an empty mailbox in state `Importing{from}` (idempotent).
    BeginImport "begin_import" {
        target: Target,
        from: String,
    } -> () { Reply::Done => () }
    /// Write exported records (each value's crc checked) and delete `delete`, atomically; with
    /// `reset_records` every non-body record of the mailbox is removed first. Only into a mailbox
    /// that is `Importing`; an imported account record keeps the `Importing` state.
    Import "import" {
        target: Target,
        records: Vec<RawRecord>,
        delete: Vec<(String, Vec<u8>)>,
        reset_records: bool,
    } -> u64 { Reply::Count(n) => n }
    /// Migration commit at the target: `Importing` → `Active` at `target.epoch` (idempotent).
    FinishImport "finish_import" {
        target: Target,
    } -> () { Reply::Done => () }
    /// Writes answer `Frozen`, reads are served (idempotent).
    Freeze "freeze" {
        target: Target,
    } -> () { Reply::Done => () }
    Unfreeze "unfreeze" {
        target: Target,
    } -> () { Reply::Done => () }
    /// The mailbox now lives at `to` under `epoch`: every caller is answered `Moved`.
    MarkMoved "mark_moved" {
        target: Target,
        to: String,
        epoch: u64,
    } -> () { Reply::Done => () }
    /// Remove a mailbox that is `MovedOut` (after the grace period) or `Importing` (an abandoned
    /// copy). A live mailbox is refused.
    Purge "purge" {
        target: Target,
    } -> () { Reply::Done => () }
    /// The content summary two copies are compared by.
    Digest "digest" {
        target: Target,
    } -> MailboxDigest { Reply::Digest(d) => d }
    /// An online RocksDB checkpoint of one segment into `dir` (a path on the store's machine that
    /// must not exist yet).
    Checkpoint "checkpoint" {
        segment: u32,
        dir: String,
    } -> () { Reply::Done => () }
    /// A page of a segment's accounts in user order after `after`, at most `limit`, deleted ones
    /// included (for the inactivity GC: one range scan, no per-user round trip).
    ListAccounts "list_accounts" {
        segment: u32,
        after: Option<String>,
        limit: u32,
    } -> Vec<AccountBrief> { Reply::Accounts(a) => a }
    /// Soft delete: the account answers `NoSuchUser` to every caller while its data stays, until
    /// the store's retention sweep purges it or `Undelete` brings it back (idempotent).
    SoftDelete "soft_delete" {
        target: Target,
    } -> () { Reply::Done => () }
    /// A soft-deleted account becomes `Active` again at `target.epoch` (idempotent).
    Undelete "undelete" {
        target: Target,
    } -> () { Reply::Done => () }
    /// The account record in whatever state, a deleted one included (for operators).
    AccountRecord "account_record" {
        target: Target,
    } -> AccountInfo { Reply::Account(a) => a }
    /// The account of `user` in the checkpoint at `dir` (opened read-only), or `NoSuchUser`.
    BackupAccount "backup_account" {
        dir: String,
        user: String,
    } -> AccountInfo { Reply::Account(a) => a }
    /// Bring `target.user`'s mailbox back from the checkpoint at `dir` through the import path
    /// (each value's crc checked); it goes live at `target.epoch` only once complete. Refused if
    /// the user has a mailbox in this segment already.
    RestoreMailbox "restore_mailbox" {
        target: Target,
        dir: String,
    } -> u64 { Reply::Count(n) => n }
}

impl Op {
    /// The mailbox this operation is about, if any.
    pub fn target(&self) -> Option<&Target> {
        match self {
            Op::Ping
            | Op::StoreStats
            | Op::Checkpoint { .. }
            | Op::ListAccounts { .. }
            | Op::BackupAccount { .. }
            | Op::LeaseQueue { .. }
            | Op::ListQueue { .. } => None,
            Op::CreateAccount { target, .. }
            | Op::DeleteAccount { target }
            | Op::GetAccount { target }
            | Op::GetAuth { target }
            | Op::RecordLogin { target, .. }
            | Op::EndSession { target, .. }
            | Op::UpdateAccount { target, .. }
            | Op::Deliver { target, .. }
            | Op::Submit { target, .. }
            | Op::ReportQueue { target, .. }
            | Op::MailboxQueue { target, .. }
            | Op::RetryQueue { target, .. }
            | Op::CancelQueued { target, .. }
            | Op::ListFolders { target }
            | Op::ListFolder { target, .. }
            | Op::Fetch { target, .. }
            | Op::SetFlags { target, .. }
            | Op::Move { target, .. }
            | Op::Expunge { target, .. }
            | Op::EmptyFolder { target, .. }
            | Op::CreateFolder { target, .. }
            | Op::RenameFolder { target, .. }
            | Op::DeleteFolder { target, .. }
            | Op::Search { target, .. }
            | Op::MailboxStats { target }
            | Op::Changes { target, .. }
            | Op::Export { target, .. }
            | Op::BeginImport { target, .. }
            | Op::Import { target, .. }
            | Op::FinishImport { target }
            | Op::Freeze { target }
            | Op::Unfreeze { target }
            | Op::MarkMoved { target, .. }
            | Op::Purge { target }
            | Op::Digest { target }
            | Op::SoftDelete { target }
            | Op::Undelete { target }
            | Op::AccountRecord { target }
            | Op::RestoreMailbox { target, .. } => Some(target),
        }
    }
}

/// Successful replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong,
    Done,
    Account(AccountInfo),
    Auth(AuthRecord),
    Delivered {
        msg: MsgId,
        folder: String,
        uid: u32,
        /// True when this delivery id was seen before: nothing new was stored.
        duplicate: bool,
    },
    Folders(Vec<FolderInfo>),
    Page(FolderPage),
    Message(Message),
    /// For moves: each message's new uid in the target folder.
    NewUids(Vec<(MsgId, u32)>),
    Count(u64),
    Hits(Vec<IndexEntry>),
    Stats(MailboxStats),
    Changes(ChangePage),
    StoreStats(StoreStats),
    Export(ExportChunk),
    Digest(MailboxDigest),
    Accounts(Vec<AccountBrief>),
    Submitted {
        msg: MsgId,
        uid: u32,
        queued: Vec<QueueId>,
        /// True when this submission was seen before: nothing new was stored or queued.
        duplicate: bool,
    },
    Leases(Vec<Lease>),
    Queue(Vec<QueueEntry>),
}

/// The errors a caller must handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum XfsError {
    #[error("no such user")]
    NoSuchUser,
    #[error("mailbox moved to {to} at epoch {epoch}")]
    Moved { to: String, epoch: u64 },
    #[error("mailbox frozen, retry after {retry_after_ms} ms")]
    Frozen { retry_after_ms: u32 },
    #[error("store busy, retry after {retry_after_ms} ms")]
    Busy { retry_after_ms: u32 },
    #[error("quota exceeded: {used} of {quota} bytes used")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("corrupt data: {what}")]
    Corrupt { what: String },
    #[error("bad request: {why}")]
    BadRequest { why: String },
    #[error("no such folder: {name}")]
    NoSuchFolder { name: String },
    #[error("no such message: {msg}")]
    NoSuchMessage { msg: MsgId },
    #[error("already exists: {what}")]
    AlreadyExists { what: String },
    #[error("deadline passed before the store started the work")]
    DeadlineExceeded,
    #[error("store unavailable: {why}")]
    Unavailable { why: String },
    /// The caller's role may not ask for this operation.
    #[error("forbidden: a {role} may not {op}")]
    Forbidden { op: String, role: String },
    /// The operation needs a session of the mailbox's user, and the one it carries is missing,
    /// not signed by login, another user's, of an older generation, expired or signed out.
    #[error("session refused: {why}")]
    SessionRefused { why: String },
}

impl XfsError {
    /// A short name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            XfsError::NoSuchUser => "no_such_user",
            XfsError::Forbidden { .. } => "forbidden",
            XfsError::SessionRefused { .. } => "session_refused",
            XfsError::Moved { .. } => "moved",
            XfsError::Frozen { .. } => "frozen",
            XfsError::Busy { .. } => "busy",
            XfsError::QuotaExceeded { .. } => "quota_exceeded",
            XfsError::Corrupt { .. } => "corrupt",
            XfsError::BadRequest { .. } => "bad_request",
            XfsError::NoSuchFolder { .. } => "no_such_folder",
            XfsError::NoSuchMessage { .. } => "no_such_message",
            XfsError::AlreadyExists { .. } => "already_exists",
            XfsError::DeadlineExceeded => "deadline_exceeded",
            XfsError::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether the same request may succeed later unchanged (the route or the load changes).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            XfsError::Frozen { .. }
                | XfsError::Busy { .. }
                | XfsError::DeadlineExceeded
                | XfsError::Unavailable { .. }
        )
    }
}
