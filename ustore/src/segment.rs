//! One segment: a RocksDB instance holding whole mailboxes, and every mailbox operation on it.
//!
//! Invariants:
//! - A mutating operation is one `WriteBatch` written with `sync = true`: all or nothing, durable
//!   before the reply. Concurrent batches share WAL syncs through RocksDB's group commit.
//! - Mutations of one mailbox are serialized by a striped lock held from the read of the account
//!   record to the synced write, so uid allocation and folder counts are exact.
//! - Every record and body carries a crc32 checked on read; a mismatch is `Corrupt`, never data.
//! - A folder page reads the account, the folder records and one range of the index: no bodies.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{
    checkpoint::Checkpoint, compaction_filter::Decision, BlockBasedOptions, Cache,
    ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use runtime::faults::Faults;
use serde::{Deserialize, Serialize};
use xfs::{
    AccountInfo, AccountState, AuthRecord, Change, ChangeKind, ChangePage, Delivery, Flags,
    FolderInfo, FolderPage, IndexEntry, MailboxStats, Message, MsgId, NewAccount, Op, Reply,
    SearchQuery, SegmentStats, Summary, Target, XfsError, INBOX, SYSTEM_FOLDERS,
};

use crate::keys::{self, *};
use crate::metrics;

mod backup;
mod migrate;
pub use backup::{backup_account, open_checkpoint};
use migrate::Moving;

/// How many change-log entries a mailbox keeps (older ones are trimmed as new ones arrive).
pub const CHANGES_KEPT: u64 = 50_000;
/// Largest folder page and search result a request may ask for.
pub const MAX_PAGE: u32 = 1000;
/// Longest folder name.
pub const MAX_FOLDER_NAME: usize = 200;
/// Folder ids below this are the system folders (Inbox = 1 … Trash = 5).
const FIRST_USER_FOLDER: u32 = 16;
const LOCK_STRIPES: usize = 4096;
/// What a writer to a frozen mailbox is told to wait.
const FROZEN_RETRY_MS: u32 = 100;

#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub block_cache_bytes: usize,
    /// How long a delivery id is remembered for deduplication.
    pub dedupe_retention: Duration,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            block_cache_bytes: 64 << 20,
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountRec {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FolderRec {
    name: String,
    uidvalidity: u32,
    uidnext: u32,
    total: u32,
    unread: u32,
    bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryRec {
    msg: MsgId,
    size: u64,
    internal_date_ms: u64,
    flags: Flags,
    summary: Summary,
    body_crc: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LocRec {
    folder: u32,
    uid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DedupeRec {
    msg: MsgId,
    folder: u32,
    uid: u32,
    at_ms: u64,
}

/// A key and its value, as a RocksDB iterator yields them.
type KeyValue = (Box<[u8]>, Box<[u8]>);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn db_err(e: rocksdb::Error) -> XfsError {
    if e.kind() == rocksdb::ErrorKind::Corruption {
        metrics::CORRUPT.with_label_values(&["rocksdb"]).inc();
        XfsError::Corrupt {
            what: e.to_string(),
        }
    } else {
        XfsError::Unavailable {
            why: format!("storage: {e}"),
        }
    }
}

fn bad(why: impl Into<String>) -> XfsError {
    XfsError::BadRequest { why: why.into() }
}

/// A user id must be a lowercased address without spaces or control bytes.
pub fn validate_user(user: &str) -> Result<(), XfsError> {
    let ok = !user.is_empty()
        && user.len() <= 254
        && user.contains('@')
        && !user
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c.is_uppercase());
    if ok {
        Ok(())
    } else {
        Err(bad(format!("not a valid user id: {user:?}")))
    }
}

fn validate_folder_name(name: &str) -> Result<(), XfsError> {
    if name.trim().is_empty() || name.len() > MAX_FOLDER_NAME || name.chars().any(char::is_control)
    {
        return Err(bad(format!("not a valid folder name: {name:?}")));
    }
    Ok(())
}

fn is_system(name: &str) -> bool {
    SYSTEM_FOLDERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

fn check_state(acc: &AccountRec, write: bool) -> Result<(), XfsError> {
    match &acc.state {
        AccountState::MovedOut { to, epoch } => Err(XfsError::Moved {
            to: to.clone(),
            epoch: *epoch,
        }),
        AccountState::Frozen if write => Err(XfsError::Frozen {
            retry_after_ms: FROZEN_RETRY_MS,
        }),
        // Not live here until the move commits: callers wait like for a frozen mailbox.
        AccountState::Importing { .. } => Err(XfsError::Frozen {
            retry_after_ms: FROZEN_RETRY_MS,
        }),
        AccountState::Deleted { .. } => Err(XfsError::NoSuchUser),
        _ => Ok(()),
    }
}

pub struct Segment {
    id: u32,
    path: PathBuf,
    db: DB,
    opts: Options,
    locks: Vec<Mutex<()>>,
    faults: Arc<Faults>,
}

impl Segment {
    /// Open (creating if missing) the segment at `path`.
    pub fn open(
        id: u32,
        path: &Path,
        so: &SegmentOptions,
        faults: Arc<Faults>,
    ) -> Result<Segment, rocksdb::Error> {
        Self::open_with(id, path, so, faults, false)
    }

    /// Open read-only (a checkpoint kept by a backup): nothing in `path` is written.
    pub fn open_read_only(path: &Path) -> Result<Segment, rocksdb::Error> {
        let so = SegmentOptions {
            block_cache_bytes: 8 << 20,
            ..SegmentOptions::default()
        };
        Self::open_with(u32::MAX, path, &so, Arc::new(Faults::new()), true)
    }

    fn open_with(
        id: u32,
        path: &Path,
        so: &SegmentOptions,
        faults: Arc<Faults>,
        read_only: bool,
    ) -> Result<Segment, rocksdb::Error> {
        let cache = Cache::new_lru_cache(so.block_cache_bytes);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.enable_statistics();
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        opts.set_keep_log_file_num(4);

        let table = |bloom: bool| {
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_cache_index_and_filter_blocks(true);
            if bloom {
                t.set_bloom_filter(10.0, false);
            }
            t
        };
        let small = |bloom: bool| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table(bloom));
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            o
        };
        let mut cfs = Vec::new();
        for name in ALL_CFS {
            let o = match name {
                CF_BODY => {
                    // Key/value separation: bodies live in blob files, compressed; the LSM keeps
                    // only small pointers, so compactions do not rewrite mail.
                    let mut o = small(true);
                    o.set_enable_blob_files(true);
                    o.set_min_blob_size(0);
                    o.set_blob_file_size(64 << 20);
                    o.set_blob_compression_type(DBCompressionType::Zstd);
                    o.set_enable_blob_gc(true);
                    o
                }
                CF_DEDUPE => {
                    let mut o = small(true);
                    let keep_ms = so.dedupe_retention.as_millis() as u64;
                    o.set_compaction_filter("dedupe-retention", move |_, _: &[u8], v: &[u8]| {
                        match keys::decode::<DedupeRec>(v, "dedupe") {
                            Ok(r) if now_ms().saturating_sub(r.at_ms) > keep_ms => Decision::Remove,
                            _ => Decision::Keep,
                        }
                    });
                    o
                }
                CF_INDEX | CF_CHANGES => small(false),
                _ => small(true),
            };
            cfs.push(ColumnFamilyDescriptor::new(name, o));
        }
        let db = if read_only {
            opts.create_if_missing(false);
            opts.create_missing_column_families(false);
            DB::open_cf_descriptors_read_only(&opts, path, cfs, false)?
        } else {
            DB::open_cf_descriptors(&opts, path, cfs)?
        };
        Ok(Segment {
            id,
            path: path.to_path_buf(),
            db,
            opts,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            faults,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every column family is created at open; a missing one is a programming error.
        self.db.cf_handle(name).expect("column family opened")
    }

    fn lock(&self, user: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, XfsError> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err)
    }

    fn get_rec<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, XfsError> {
        match self.get(cf, key)? {
            Some(v) => keys::decode(&v, cf).map(Some),
            None => Ok(None),
        }
    }

    /// Commit one batch durably.
    fn write(&self, batch: WriteBatch) -> Result<(), XfsError> {
        self.faults
            .inject_blocking("ustore.disk.write")
            .map_err(|e| XfsError::Unavailable { why: e.to_string() })?;
        let size = batch.size_in_bytes() as u64;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(db_err)?;
        metrics::SYNC_WRITES.inc();
        metrics::BYTES_WRITTEN.inc_by(size);
        Ok(())
    }

    /// `(key, value)` pairs of `[from, to)` in one column family, forward or newest first.
    fn scan(
        &self,
        cf: &str,
        from: Vec<u8>,
        to: Vec<u8>,
        reverse: bool,
    ) -> impl Iterator<Item = Result<KeyValue, XfsError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from);
        ro.set_iterate_upper_bound(to);
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        self.db
            .iterator_cf_opt(self.cf(cf), ro, mode)
            .map(|r| r.map_err(db_err))
    }

    /// The account; a deleted one is `NoSuchUser` like an absent one.
    fn account(&self, user: &str) -> Result<AccountRec, XfsError> {
        match self.stored_account(user)? {
            Some(AccountRec {
                state: AccountState::Deleted { .. },
                ..
            })
            | None => Err(XfsError::NoSuchUser),
            Some(acc) => Ok(acc),
        }
    }

    /// The account record in whatever state, a deleted one included.
    fn stored_account(&self, user: &str) -> Result<Option<AccountRec>, XfsError> {
        self.get_rec(CF_ACCOUNT, &keys::account(user))
    }

    /// The account, fenced: `Moved` if the mailbox left, `Frozen` for writes while it is leaving.
    fn live_account(&self, user: &str, write: bool) -> Result<AccountRec, XfsError> {
        let acc = self.account(user)?;
        check_state(&acc, write)?;
        Ok(acc)
    }

    fn folders(&self, user: &str) -> Result<BTreeMap<u32, FolderRec>, XfsError> {
        let mut out = BTreeMap::new();
        for kv in self.scan(CF_FOLDER, prefix(user), prefix_end(user), false) {
            let (k, v) = kv?;
            let id_bytes: [u8; 4] = k[k.len() - 4..].try_into().map_err(|_| XfsError::Corrupt {
                what: "folder key".into(),
            })?;
            out.insert(u32::from_be_bytes(id_bytes), keys::decode(&v, CF_FOLDER)?);
        }
        Ok(out)
    }

    fn loc(&self, user: &str, msg: MsgId) -> Result<LocRec, XfsError> {
        self.get_rec(CF_MSGLOC, &keys::msg(user, msg))?
            .ok_or(XfsError::NoSuchMessage { msg })
    }

    fn entry(&self, user: &str, loc: LocRec, msg: MsgId) -> Result<EntryRec, XfsError> {
        self.get_rec(CF_INDEX, &keys::index(user, loc.folder, loc.uid))?
            .ok_or(XfsError::NoSuchMessage { msg })
    }

    fn body(&self, user: &str, msg: MsgId, crc: u32) -> Result<Vec<u8>, XfsError> {
        let raw = self
            .get(CF_BODY, &keys::msg(user, msg))?
            .ok_or(XfsError::NoSuchMessage { msg })?;
        let body = keys::checked(&raw, CF_BODY)?;
        if crc32fast::hash(body) != crc {
            metrics::CORRUPT.with_label_values(&["body-index"]).inc();
            return Err(XfsError::Corrupt {
                what: format!("message {msg}: body does not match its index checksum"),
            });
        }
        Ok(body.to_vec())
    }

    /// Run one operation. Blocking: call from a blocking thread.
    pub fn execute(&self, op: Op) -> Result<Reply, XfsError> {
        if let Some(t) = op.target() {
            validate_user(&t.user)?;
        }
        match op {
            Op::CreateAccount { target, account } => self.create_account(&target, account),
            Op::DeleteAccount { target } => self.delete_account(&target.user),
            Op::GetAccount { target } => {
                let acc = self.account(&target.user)?;
                Ok(Reply::Account(info(&target.user, &acc)))
            }
            Op::GetAuth { target } => {
                let acc = self.live_account(&target.user, false)?;
                Ok(Reply::Auth(AuthRecord {
                    password_hash: acc.password_hash,
                    display_name: acc.display_name,
                    session_gen: acc.session_gen,
                    state: acc.state,
                }))
            }
            Op::RecordLogin { target, at_ms } => self.mutate(&target.user, |tx| {
                tx.acc.last_login_ms = tx.acc.last_login_ms.max(at_ms);
                Ok(Reply::Done)
            }),
            Op::UpdateAccount {
                target,
                display_name,
                password_hash,
                quota_bytes,
            } => self.mutate(&target.user, |tx| {
                if let Some(d) = display_name {
                    tx.acc.display_name = d;
                }
                if let Some(h) = password_hash {
                    tx.acc.password_hash = h;
                    tx.acc.session_gen += 1;
                }
                if let Some(q) = quota_bytes {
                    tx.acc.quota_bytes = q;
                }
                tx.log(ChangeKind::AccountUpdated);
                Ok(Reply::Done)
            }),
            Op::Deliver { target, delivery } => self.deliver(&target.user, delivery),
            Op::ListFolders { target } => {
                self.live_account(&target.user, false)?;
                Ok(Reply::Folders(folder_infos(&self.folders(&target.user)?)))
            }
            Op::ListFolder {
                target,
                folder,
                offset,
                limit,
                before_uid,
            } => metrics::count_page_reads(|| {
                self.list_folder(&target.user, &folder, offset, limit, before_uid)
            }),
            Op::Fetch {
                target,
                msg,
                mark_seen,
            } => self.fetch(&target, msg, mark_seen),
            Op::SetFlags {
                target,
                msgs,
                add,
                remove,
            } => self.mutate(&target.user, |tx| {
                for m in msgs {
                    tx.set_flags(m, add, remove)?;
                }
                Ok(Reply::Done)
            }),
            Op::Move {
                target,
                msgs,
                to_folder,
            } => self.mutate(&target.user, |tx| {
                let to = tx.folder_id(&to_folder)?;
                let mut moved = Vec::with_capacity(msgs.len());
                for m in msgs {
                    moved.push((m, tx.move_msg(m, to)?));
                }
                Ok(Reply::NewUids(moved))
            }),
            Op::Expunge { target, msgs } => self.mutate(&target.user, |tx| {
                let mut n = 0;
                for m in msgs {
                    if tx.expunge(m)? {
                        n += 1;
                    }
                }
                Ok(Reply::Count(n))
            }),
            Op::EmptyFolder { target, folder } => self.mutate(&target.user, |tx| {
                let fid = tx.folder_id(&folder)?;
                tx.expunge_folder(fid).map(Reply::Count)
            }),
            Op::CreateFolder { target, name } => self.mutate(&target.user, |tx| {
                tx.create_folder(&name)?;
                Ok(Reply::Done)
            }),
            Op::RenameFolder { target, from, to } => self.mutate(&target.user, |tx| {
                tx.rename_folder(&from, &to)?;
                Ok(Reply::Done)
            }),
            Op::DeleteFolder { target, name } => self.mutate(&target.user, |tx| {
                if is_system(&name) {
                    return Err(bad(format!("{name} is a system folder")));
                }
                let fid = tx.folder_id(&name)?;
                let n = tx.expunge_folder(fid)?;
                tx.batch
                    .delete_cf(tx.seg.cf(CF_FOLDER), keys::folder(tx.user, fid));
                tx.folders.remove(&fid);
                tx.log(ChangeKind::FolderDeleted { name });
                Ok(Reply::Count(n))
            }),
            Op::Search { target, query } => self.search(&target.user, &query),
            Op::MailboxStats { target } => {
                let acc = self.live_account(&target.user, false)?;
                let folders = self.folders(&target.user)?;
                Ok(Reply::Stats(MailboxStats {
                    account: info(&target.user, &acc),
                    folders: folder_infos(&folders),
                }))
            }
            Op::Changes {
                target,
                since,
                limit,
            } => {
                let acc = self.account(&target.user)?;
                let mut changes = Vec::new();
                let from = keys::change(&target.user, since.saturating_add(1));
                for kv in self.scan(CF_CHANGES, from, prefix_end(&target.user), false) {
                    if changes.len() >= limit.min(MAX_PAGE * 10) as usize {
                        break;
                    }
                    let (_, v) = kv?;
                    changes.push(keys::decode::<Change>(&v, CF_CHANGES)?);
                }
                Ok(Reply::Changes(ChangePage {
                    changes,
                    modseq: acc.modseq,
                }))
            }
            Op::Export {
                target,
                part,
                after,
                max_bytes,
                keys_only,
            } => self.export(&target.user, part, after, max_bytes, keys_only),
            Op::BeginImport { target, from } => self.begin_import(&target, &from),
            Op::Import {
                target,
                records,
                delete,
                reset_records,
            } => self.import(&target.user, records, delete, reset_records),
            Op::FinishImport { target } => self.finish_import(&target),
            Op::Freeze { target } => self.set_moving_state(&target.user, Moving::Freeze),
            Op::Unfreeze { target } => self.set_moving_state(&target.user, Moving::Unfreeze),
            Op::MarkMoved { target, to, epoch } => {
                self.set_moving_state(&target.user, Moving::MarkMoved { to, epoch })
            }
            Op::Purge { target } => self.purge(&target.user),
            Op::Digest { target } => self.digest(&target.user),
            Op::SoftDelete { target } => self.soft_delete(&target.user),
            Op::Undelete { target } => self.undelete(&target),
            Op::AccountRecord { target } => self.account_record(&target.user),
            Op::RestoreMailbox { target, dir } => self.restore_mailbox(&target, Path::new(&dir)),
            Op::Ping
            | Op::StoreStats
            | Op::Checkpoint { .. }
            | Op::ListAccounts { .. }
            | Op::BackupAccount { .. } => Err(bad("not a mailbox operation")),
        }
    }

    /// Run `f` on the mailbox under its lock and commit what it did as one synced batch.
    fn mutate(
        &self,
        user: &str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<Reply, XfsError>,
    ) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let acc = self.live_account(user, true)?;
        let folders = self.folders(user)?;
        let mut tx = Tx {
            seg: self,
            user,
            acc,
            folders,
            batch: WriteBatch::default(),
            now: now_ms(),
        };
        let reply = f(&mut tx)?;
        tx.commit()?;
        Ok(reply)
    }

    fn create_account(&self, target: &Target, new: NewAccount) -> Result<Reply, XfsError> {
        let user = target.user.as_str();
        let _guard = self.lock(user);
        let mut batch = WriteBatch::default();
        match self.stored_account(user)? {
            // A name given again after a soft delete: the deleted copy gives way.
            Some(AccountRec {
                state: AccountState::Deleted { .. },
                ..
            }) => self.purge_into(&mut batch, user),
            Some(_) => {
                return Err(XfsError::AlreadyExists {
                    what: format!("account {user}"),
                })
            }
            None => {}
        }
        let now = now_ms();
        let mut tx = Tx {
            seg: self,
            user,
            acc: AccountRec {
                display_name: new.display_name,
                password_hash: new.password_hash,
                created_ms: now,
                last_login_ms: 0,
                quota_bytes: new.quota_bytes,
                used_bytes: 0,
                messages: 0,
                state: AccountState::Active,
                session_gen: 1,
                epoch: target.epoch,
                modseq: 0,
                next_msg: 1,
                next_folder: FIRST_USER_FOLDER,
            },
            folders: BTreeMap::new(),
            batch,
            now,
        };
        for (i, name) in SYSTEM_FOLDERS.iter().enumerate() {
            tx.folders
                .insert(i as u32 + 1, new_folder(name, now, i as u32));
        }
        tx.log(ChangeKind::AccountCreated);
        let info = info(user, &tx.acc);
        tx.commit()?;
        Ok(Reply::Account(info))
    }

    fn delete_account(&self, user: &str) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        self.account(user)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_ACCOUNT), keys::account(user));
        for cf in ALL_CFS.iter().filter(|c| **c != CF_ACCOUNT) {
            batch.delete_range_cf(self.cf(cf), prefix(user), prefix_end(user));
        }
        self.write(batch)?;
        Ok(Reply::Done)
    }

    fn deliver(&self, user: &str, d: Delivery) -> Result<Reply, XfsError> {
        let dkey = keys::dedupe(user, &d.id);
        self.mutate(user, |tx| {
            if let Some(prev) = tx.seg.get_rec::<DedupeRec>(CF_DEDUPE, &dkey)? {
                let folder = tx
                    .folders
                    .get(&prev.folder)
                    .map(|f| f.name.clone())
                    .unwrap_or_default();
                return Ok(Reply::Delivered {
                    msg: prev.msg,
                    folder,
                    uid: prev.uid,
                    duplicate: true,
                });
            }
            let size = d.body.len() as u64;
            if tx.acc.quota_bytes > 0 && tx.acc.used_bytes + size > tx.acc.quota_bytes {
                return Err(XfsError::QuotaExceeded {
                    used: tx.acc.used_bytes,
                    quota: tx.acc.quota_bytes,
                });
            }
            let folder_name = d.folder.as_deref().unwrap_or(INBOX);
            let fid = tx.folder_id(folder_name)?;
            let msg = tx.acc.next_msg;
            tx.acc.next_msg += 1;
            let body_crc = crc32fast::hash(&d.body);
            let entry = EntryRec {
                msg,
                size,
                internal_date_ms: d.internal_date_ms,
                flags: d.flags,
                summary: d.summary,
                body_crc,
            };
            let uid = tx.add_entry(fid, &entry)?;
            let seg = tx.seg;
            tx.batch
                .put_cf(seg.cf(CF_BODY), keys::msg(user, msg), encode_body(&d.body));
            let rec = DedupeRec {
                msg,
                folder: fid,
                uid,
                at_ms: tx.now,
            };
            tx.batch
                .put_cf(seg.cf(CF_DEDUPE), &dkey, keys::encode(&rec));
            tx.acc.used_bytes += size;
            tx.acc.messages += 1;
            let folder = folder_name_of(&tx.folders, fid);
            tx.log(ChangeKind::Added {
                msg,
                folder: folder.clone(),
                uid,
            });
            Ok(Reply::Delivered {
                msg,
                folder,
                uid,
                duplicate: false,
            })
        })
    }

    fn list_folder(
        &self,
        user: &str,
        folder: &str,
        offset: u32,
        limit: u32,
        before_uid: Option<u32>,
    ) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let folders = self.folders(user)?;
        let (fid, frec) = find_folder(&folders, folder)?;
        let upper = match before_uid {
            Some(b) => keys::index(user, fid, b),
            None => keys::folder(user, fid + 1),
        };
        let mut entries = Vec::new();
        let it = self
            .scan(CF_INDEX, keys::folder(user, fid), upper, true)
            .skip(offset as usize)
            .take(limit.min(MAX_PAGE) as usize);
        for kv in it {
            let (k, v) = kv?;
            let (_, uid) = keys::parse_index(user, &k).ok_or_else(|| XfsError::Corrupt {
                what: "index key".into(),
            })?;
            let e: EntryRec = keys::decode(&v, CF_INDEX)?;
            entries.push(to_entry(e, &frec.name, uid));
        }
        Ok(Reply::Page(FolderPage {
            folder: folder_info(frec),
            entries,
            folders: folder_infos(&folders),
        }))
    }

    fn fetch(&self, target: &Target, msg: MsgId, mark_seen: bool) -> Result<Reply, XfsError> {
        let user = target.user.as_str();
        self.live_account(user, false)?;
        let loc = self.loc(user, msg)?;
        let mut e = self.entry(user, loc, msg)?;
        let body = self.body(user, msg, e.body_crc)?;
        if mark_seen && !e.flags.contains(Flags::SEEN) {
            // Marking read is a write; a frozen mailbox still serves the read.
            match self.mutate(user, |tx| tx.set_flags(msg, Flags::SEEN, Flags::NONE)) {
                Ok(_) => e.flags = e.flags.union(Flags::SEEN),
                Err(XfsError::Frozen { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let folders = self.folders(user)?;
        let name = folder_name_of(&folders, loc.folder);
        Ok(Reply::Message(Message {
            entry: to_entry(e, &name, loc.uid),
            body,
        }))
    }

    fn search(&self, user: &str, q: &SearchQuery) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let needle = q.text.to_lowercase();
        if needle.is_empty() {
            return Err(bad("empty search"));
        }
        let folders = self.folders(user)?;
        let (from, to) = match &q.folder {
            Some(name) => {
                let (fid, _) = find_folder(&folders, name)?;
                (keys::folder(user, fid), keys::folder(user, fid + 1))
            }
            None => (prefix(user), prefix_end(user)),
        };
        let all_fields = !q.in_from && !q.in_subject && !q.in_body;
        let limit = if q.limit == 0 {
            100
        } else {
            q.limit.min(MAX_PAGE)
        } as usize;
        let mut hits = Vec::new();
        for kv in self.scan(CF_INDEX, from, to, false) {
            let (k, v) = kv?;
            let Some((fid, uid)) = keys::parse_index(user, &k) else {
                continue;
            };
            let e: EntryRec = keys::decode(&v, CF_INDEX)?;
            let s = &e.summary;
            let mut hit = ((q.in_from || all_fields) && s.from.to_lowercase().contains(&needle))
                || ((q.in_subject || all_fields) && s.subject.to_lowercase().contains(&needle))
                || (all_fields
                    && (s.to.to_lowercase().contains(&needle)
                        || s.preview.to_lowercase().contains(&needle)));
            if !hit && (q.in_body || all_fields) {
                let body = self.body(user, e.msg, e.body_crc)?;
                hit = String::from_utf8_lossy(&body)
                    .to_lowercase()
                    .contains(&needle);
            }
            if hit {
                hits.push(to_entry(e, &folder_name_of(&folders, fid), uid));
            }
        }
        hits.sort_by_key(|e| std::cmp::Reverse(e.internal_date_ms));
        hits.truncate(limit);
        Ok(Reply::Hits(hits))
    }

    /// An online, consistent checkpoint of the segment into `dir` (hard links where possible).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), XfsError> {
        if dir.exists() {
            return Err(bad(format!("{} exists already", dir.display())));
        }
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(db_err)?;
        // The database's identity names its files in a backup's pool; a checkpoint may lack it.
        let id = dir.join("IDENTITY");
        if !id.exists() {
            std::fs::copy(self.path.join("IDENTITY"), &id).map_err(|e| XfsError::Unavailable {
                why: format!("copying IDENTITY into {}: {e}", dir.display()),
            })?;
        }
        Ok(())
    }

    pub fn stats(&self) -> SegmentStats {
        let accounts = self
            .db
            .property_int_value_cf(self.cf(CF_ACCOUNT), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0);
        SegmentStats {
            id: self.id,
            accounts,
            disk_bytes: dir_bytes(&self.path),
        }
    }

    pub fn ticker(&self, t: rocksdb::statistics::Ticker) -> u64 {
        self.opts.get_ticker_count(t)
    }

    /// Flush memtables so the WAL can be dropped (called on a clean shutdown).
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// Overwrite a stored body with `bytes`, keeping its old checksum: a stand-in for a disk
    /// that returned damaged data, used by tests (on a segment no server has open).
    pub fn damage_body(&self, user: &str, msg: MsgId) -> Result<(), XfsError> {
        let key = keys::msg(user, msg);
        let mut raw = self
            .get(CF_BODY, &key)?
            .ok_or(XfsError::NoSuchMessage { msg })?;
        let last = raw.len() - 1;
        raw[last] ^= 0x20;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BODY), key, raw);
        self.write(batch)
    }
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn new_folder(name: &str, now_ms: u64, salt: u32) -> FolderRec {
    FolderRec {
        name: name.to_string(),
        uidvalidity: ((now_ms / 1000) as u32).wrapping_add(salt),
        uidnext: 1,
        total: 0,
        unread: 0,
        bytes: 0,
    }
}

fn find_folder<'a>(
    folders: &'a BTreeMap<u32, FolderRec>,
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

fn folder_name_of(folders: &BTreeMap<u32, FolderRec>, fid: u32) -> String {
    folders
        .get(&fid)
        .map(|f| f.name.clone())
        .unwrap_or_default()
}

fn folder_info(f: &FolderRec) -> FolderInfo {
    FolderInfo {
        name: f.name.clone(),
        uidvalidity: f.uidvalidity,
        uidnext: f.uidnext,
        total: f.total,
        unread: f.unread,
        bytes: f.bytes,
    }
}

/// System folders first in their fixed order, then the user's own by name.
fn folder_infos(folders: &BTreeMap<u32, FolderRec>) -> Vec<FolderInfo> {
    let mut out: Vec<_> = folders
        .iter()
        .filter(|(id, _)| **id < FIRST_USER_FOLDER)
        .map(|(_, f)| folder_info(f))
        .collect();
    let mut own: Vec<_> = folders
        .iter()
        .filter(|(id, _)| **id >= FIRST_USER_FOLDER)
        .map(|(_, f)| folder_info(f))
        .collect();
    own.sort_by_key(|a| a.name.to_lowercase());
    out.extend(own);
    out
}

fn to_entry(e: EntryRec, folder: &str, uid: u32) -> IndexEntry {
    IndexEntry {
        msg: e.msg,
        folder: folder.to_string(),
        uid,
        size: e.size,
        internal_date_ms: e.internal_date_ms,
        flags: e.flags,
        summary: e.summary,
        body_crc: e.body_crc,
    }
}

fn info(user: &str, acc: &AccountRec) -> AccountInfo {
    AccountInfo {
        user: user.to_string(),
        display_name: acc.display_name.clone(),
        created_ms: acc.created_ms,
        last_login_ms: acc.last_login_ms,
        quota_bytes: acc.quota_bytes,
        used_bytes: acc.used_bytes,
        messages: acc.messages,
        state: acc.state.clone(),
        session_gen: acc.session_gen,
        epoch: acc.epoch,
        modseq: acc.modseq,
    }
}

/// One mutation of one mailbox in the making: the records it changes and the batch that holds
/// them. Nothing reaches disk until `commit`.
struct Tx<'a> {
    seg: &'a Segment,
    user: &'a str,
    acc: AccountRec,
    folders: BTreeMap<u32, FolderRec>,
    batch: WriteBatch,
    now: u64,
}

impl Tx<'_> {
    fn folder_id(&self, name: &str) -> Result<u32, XfsError> {
        find_folder(&self.folders, name).map(|(id, _)| id)
    }

    fn folder_mut(&mut self, fid: u32) -> Result<&mut FolderRec, XfsError> {
        self.folders.get_mut(&fid).ok_or_else(|| XfsError::Corrupt {
            what: format!("message in missing folder {fid}"),
        })
    }

    fn log(&mut self, kind: ChangeKind) {
        self.acc.modseq += 1;
        let change = Change {
            modseq: self.acc.modseq,
            at_ms: self.now,
            kind,
        };
        let cf = self.seg.cf(CF_CHANGES);
        self.batch.put_cf(
            cf,
            keys::change(self.user, self.acc.modseq),
            keys::encode(&change),
        );
        if self.acc.modseq > CHANGES_KEPT {
            self.batch
                .delete_cf(cf, keys::change(self.user, self.acc.modseq - CHANGES_KEPT));
        }
    }

    /// File an index entry in a folder under a new uid, with the folder's counts.
    fn add_entry(&mut self, fid: u32, e: &EntryRec) -> Result<u32, XfsError> {
        let f = self.folder_mut(fid)?;
        let uid = f.uidnext;
        f.uidnext = f
            .uidnext
            .checked_add(1)
            .ok_or_else(|| XfsError::Unavailable {
                why: "folder ran out of uids".into(),
            })?;
        f.total += 1;
        f.bytes += e.size;
        if !e.flags.contains(Flags::SEEN) {
            f.unread += 1;
        }
        let seg = self.seg;
        self.batch.put_cf(
            seg.cf(CF_INDEX),
            keys::index(self.user, fid, uid),
            keys::encode(e),
        );
        self.batch.put_cf(
            seg.cf(CF_MSGLOC),
            keys::msg(self.user, e.msg),
            keys::encode(&LocRec { folder: fid, uid }),
        );
        Ok(uid)
    }

    /// Take an entry out of its folder's index and counts.
    fn remove_entry(&mut self, loc: LocRec, e: &EntryRec) -> Result<(), XfsError> {
        let f = self.folder_mut(loc.folder)?;
        f.total = f.total.saturating_sub(1);
        f.bytes = f.bytes.saturating_sub(e.size);
        if !e.flags.contains(Flags::SEEN) {
            f.unread = f.unread.saturating_sub(1);
        }
        let seg = self.seg;
        self.batch.delete_cf(
            seg.cf(CF_INDEX),
            keys::index(self.user, loc.folder, loc.uid),
        );
        Ok(())
    }

    fn set_flags(&mut self, msg: MsgId, add: Flags, remove: Flags) -> Result<Reply, XfsError> {
        let loc = self.seg.loc(self.user, msg)?;
        let mut e = self.seg.entry(self.user, loc, msg)?;
        let flags = e.flags.union(add).minus(remove);
        if flags == e.flags {
            return Ok(Reply::Done);
        }
        let was_unread = !e.flags.contains(Flags::SEEN);
        let is_unread = !flags.contains(Flags::SEEN);
        let f = self.folder_mut(loc.folder)?;
        if was_unread && !is_unread {
            f.unread = f.unread.saturating_sub(1);
        } else if !was_unread && is_unread {
            f.unread += 1;
        }
        e.flags = flags;
        let seg = self.seg;
        self.batch.put_cf(
            seg.cf(CF_INDEX),
            keys::index(self.user, loc.folder, loc.uid),
            keys::encode(&e),
        );
        self.log(ChangeKind::Flags { msg, flags });
        Ok(Reply::Done)
    }

    fn move_msg(&mut self, msg: MsgId, to: u32) -> Result<u32, XfsError> {
        let loc = self.seg.loc(self.user, msg)?;
        if loc.folder == to {
            return Ok(loc.uid);
        }
        let e = self.seg.entry(self.user, loc, msg)?;
        self.remove_entry(loc, &e)?;
        let uid = self.add_entry(to, &e)?;
        let from = folder_name_of(&self.folders, loc.folder);
        let to = folder_name_of(&self.folders, to);
        self.log(ChangeKind::Refiled { msg, from, to, uid });
        Ok(uid)
    }

    /// Remove a message for good; `false` if it was gone already (a retried delete is no error).
    fn expunge(&mut self, msg: MsgId) -> Result<bool, XfsError> {
        let loc = match self.seg.loc(self.user, msg) {
            Ok(l) => l,
            Err(XfsError::NoSuchMessage { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let e = self.seg.entry(self.user, loc, msg)?;
        self.expunge_entry(loc, &e)?;
        Ok(true)
    }

    fn expunge_entry(&mut self, loc: LocRec, e: &EntryRec) -> Result<(), XfsError> {
        self.remove_entry(loc, e)?;
        let seg = self.seg;
        self.batch
            .delete_cf(seg.cf(CF_MSGLOC), keys::msg(self.user, e.msg));
        self.batch
            .delete_cf(seg.cf(CF_BODY), keys::msg(self.user, e.msg));
        self.acc.used_bytes = self.acc.used_bytes.saturating_sub(e.size);
        self.acc.messages = self.acc.messages.saturating_sub(1);
        let folder = folder_name_of(&self.folders, loc.folder);
        self.log(ChangeKind::Expunged { msg: e.msg, folder });
        Ok(())
    }

    fn expunge_folder(&mut self, fid: u32) -> Result<u64, XfsError> {
        let user = self.user;
        let mut doomed = Vec::new();
        for kv in self.seg.scan(
            CF_INDEX,
            keys::folder(user, fid),
            keys::folder(user, fid + 1),
            false,
        ) {
            let (k, v) = kv?;
            if let Some((_, uid)) = keys::parse_index(user, &k) {
                doomed.push((uid, keys::decode::<EntryRec>(&v, CF_INDEX)?));
            }
        }
        let n = doomed.len() as u64;
        for (uid, e) in doomed {
            self.expunge_entry(LocRec { folder: fid, uid }, &e)?;
        }
        Ok(n)
    }

    fn create_folder(&mut self, name: &str) -> Result<(), XfsError> {
        validate_folder_name(name)?;
        if find_folder(&self.folders, name).is_ok() {
            return Err(XfsError::AlreadyExists {
                what: format!("folder {name}"),
            });
        }
        let fid = self.acc.next_folder;
        self.acc.next_folder += 1;
        self.folders.insert(fid, new_folder(name, self.now, fid));
        self.log(ChangeKind::FolderCreated { name: name.into() });
        Ok(())
    }

    fn rename_folder(&mut self, from: &str, to: &str) -> Result<(), XfsError> {
        if is_system(from) {
            return Err(bad(format!("{from} is a system folder")));
        }
        validate_folder_name(to)?;
        let fid = self.folder_id(from)?;
        if is_system(to) {
            return Err(bad(format!("{to} is a system folder")));
        }
        if let Ok((other, _)) = find_folder(&self.folders, to) {
            if other != fid {
                return Err(XfsError::AlreadyExists {
                    what: format!("folder {to}"),
                });
            }
        }
        self.folder_mut(fid)?.name = to.to_string();
        self.log(ChangeKind::FolderRenamed {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }

    fn commit(self) -> Result<(), XfsError> {
        let Tx {
            seg,
            user,
            acc,
            folders,
            mut batch,
            ..
        } = self;
        for (fid, f) in &folders {
            batch.put_cf(seg.cf(CF_FOLDER), keys::folder(user, *fid), keys::encode(f));
        }
        batch.put_cf(seg.cf(CF_ACCOUNT), keys::account(user), keys::encode(&acc));
        seg.write(batch)
    }
}
