//! One replica's disk: a RocksDB directory holding the Raft log and vote, the state machine's
//! records together with the log id they reflect, and a file with the current snapshot.
//!
//! - Column families: `log` (index, big-endian → entry), `raft` (vote, last purged log id),
//!   `users`, `stores`, `clusters` (the index's records), `sm` (last applied log id and the
//!   membership it carries). Every value is `crc32 | bincode`; a checksum that fails on read is
//!   an error, never data.
//! - Log appends are written at once and made durable by a flusher thread that syncs the WAL
//!   for every append queued since its last sync (group commit), then acknowledges them in
//!   order. Votes and truncations are synced before they return.
//! - Applying entries writes the changed records and the new last-applied id in one batch.
//!   The log and the state machine share one WAL, so whatever survives a crash is a prefix:
//!   the state machine is never ahead of a durable log, nor lost behind a purged one.
//! - A snapshot is the whole state machine read from one RocksDB snapshot (so records and
//!   last-applied id agree); installing one replaces the state machine in one synced batch.

// Every fallible function here returns openraft's `StorageError`, the error the storage traits
// require: it is large, but converting into it once at the trait boundary instead would only move
// the same conversion around.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write as _};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics;
use crate::proto::{Applied, ClusterInfo, Members, MservError, Placement, ReplicaId, StoreInfo};
use crate::state::{Change, State};
use crate::TypeConfig;
use mserv_client::Domain;

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_USERS: &str = "users";
const CF_STORES: &str = "stores";
const CF_CLUSTERS: &str = "clusters";
const CF_DOMAINS: &str = "domains";
const CF_SM: &str = "sm";
/// The state machine's record families, in snapshot order.
const SM_CFS: [&str; 4] = [CF_USERS, CF_STORES, CF_CLUSTERS, CF_DOMAINS];

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";

/// Record keys are user ids and names (UTF-8), which never contain this byte: `[]..[0xff]`
/// spans a whole family.
const KEY_END: &[u8] = &[0xff];

const SNAPSHOT_FILE: &str = "snapshot";

type StorageResult<T> = Result<T, StorageError<ReplicaId>>;
type Membership = StoredMembership<ReplicaId, BasicNode>;

fn sto_err(
    subject: ErrorSubject<ReplicaId>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<ReplicaId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

/// `crc32 | bincode` of a value (the one record codec, `xfs::codec`).
pub(crate) fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    match xfs::codec::encode_record(value) {
        Ok(bytes) => bytes,
        Err(e) => {
            // Only for types serde cannot express, which ours are not.
            tracing::error!(error = %e, "cannot encode a record");
            Vec::new()
        }
    }
}

/// Check and decode a `crc32 | bincode` record; a bad checksum is counted.
pub(crate) fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    xfs::codec::decode_record(bytes).map_err(|e| {
        if e.is_checksum() {
            metrics::CORRUPT.inc();
        }
        format!("record {e}")
    })
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn cf<'a>(db: &'a DB, name: &str) -> StorageResult<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| {
        sto_err(
            ErrorSubject::Store,
            ErrorVerb::Read,
            format!("no column family {name}"),
        )
    })
}

/// Open (or create) the replica's RocksDB directory and load the state machine.
pub fn open(dir: &Path) -> anyhow::Result<(LogStore, StateMachineStore)> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(64 << 20);
    let cfs = [
        CF_LOG,
        CF_RAFT,
        CF_USERS,
        CF_STORES,
        CF_CLUSTERS,
        CF_DOMAINS,
        CF_SM,
    ]
    .into_iter()
    .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)
        .with_context(|| format!("opening RocksDB in {}", dir.display()))?;
    let db = Arc::new(db);

    let (state, applied, membership) =
        load_state_machine(&db).map_err(|e| anyhow::anyhow!("loading the state machine: {e}"))?;
    let current = read_snapshot_file(&dir.join(SNAPSHOT_FILE))
        .map_err(|e| anyhow::anyhow!("reading the snapshot file: {e}"))?;
    tracing::info!(
        users = state.user_count(),
        last_applied = ?applied,
        snapshot = ?current.as_ref().map(|s| s.meta.snapshot_id.clone()),
        "state machine loaded"
    );
    let shared = Arc::new(Shared {
        state: RwLock::new(state),
        current: Mutex::new(current),
        snapshots_built: AtomicU64::new(0),
        snapshots_installed: AtomicU64::new(0),
    });
    let log = LogStore::new(db.clone()).context("starting the WAL sync thread")?;
    let sm = StateMachineStore {
        db,
        dir: dir.to_path_buf(),
        shared,
        last_applied: applied,
        membership,
    };
    Ok((log, sm))
}

fn get_record<T: DeserializeOwned>(db: &DB, family: &str, key: &[u8]) -> StorageResult<Option<T>> {
    let v = db
        .get_pinned_cf(cf(db, family)?, key)
        .map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
    match v {
        None => Ok(None),
        Some(bytes) => decode_record(&bytes).map(Some).map_err(|e| {
            sto_err(
                ErrorSubject::Store,
                ErrorVerb::Read,
                format!("{family}/{}: {e}", String::from_utf8_lossy(key)),
            )
        }),
    }
}

/// The records and the last-applied id stored in the state machine's families.
fn load_state_machine(db: &DB) -> StorageResult<(State, Option<LogId<ReplicaId>>, Membership)> {
    let mut state = State::new();
    // Stores first, so the loads of the users below land on known stores.
    for item in db.iterator_cf(cf(db, CF_STORES)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let info: StoreInfo = decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        state.load_store(info);
    }
    for item in db.iterator_cf(cf(db, CF_CLUSTERS)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let c: ClusterInfo = decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        state.load_cluster(c);
    }
    for item in db.iterator_cf(cf(db, CF_DOMAINS)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let d: Domain = decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        state.load_domain(d);
    }
    for item in db.iterator_cf(cf(db, CF_USERS)?, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let user = String::from_utf8(k.to_vec())
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let p: Placement = decode_record(&v).map_err(|e| {
            sto_err(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                format!("user {user}: {e}"),
            )
        })?;
        state.load_user(user, p);
    }
    let applied: Option<LogId<ReplicaId>> = get_record(db, CF_SM, KEY_APPLIED)?.flatten();
    let membership: Membership = get_record(db, CF_SM, KEY_MEMBERSHIP)?.unwrap_or_default();
    Ok((state, applied, membership))
}

// ---------------------------------------------------------------------------------------------
// The log.

/// The Raft log and vote. Owned by the Raft core; readers get a [`LogReader`].
pub struct LogStore {
    db: Arc<DB>,
    /// Appends waiting for the flusher's WAL sync.
    flushes: Option<std_mpsc::Sender<LogFlushed<TypeConfig>>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// A read handle on the log, for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<DB>,
}

impl LogStore {
    fn new(db: Arc<DB>) -> std::io::Result<LogStore> {
        let (tx, rx) = std_mpsc::channel::<LogFlushed<TypeConfig>>();
        let flusher_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("mserv-wal-sync".into())
            .spawn(move || flusher(flusher_db, rx))?;
        Ok(LogStore {
            db,
            flushes: Some(tx),
            flusher: Some(thread),
        })
    }
}

impl Drop for LogStore {
    /// Stop the flusher and wait for it, so the database is closed when the log store is gone.
    fn drop(&mut self) {
        drop(self.flushes.take());
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

/// Sync the WAL once for every run of queued appends, then acknowledge them in order. Ends when
/// the log store is dropped.
fn flusher(db: Arc<DB>, rx: std_mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = db.flush_wal(true);
        metrics::WAL_SYNCS.inc();
        metrics::WAL_SYNC_APPENDS.inc_by(batch.len() as u64);
        for cb in batch {
            cb.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    }
}

fn read_entries<RB: RangeBounds<u64>>(db: &DB, range: RB) -> StorageResult<Vec<Entry<TypeConfig>>> {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let key = index_key(start);
    let mut out = Vec::new();
    let it = db.iterator_cf(
        cf(db, CF_LOG)?,
        IteratorMode::From(&key, rocksdb::Direction::Forward),
    );
    for item in it {
        let (k, v) = item.map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let index = <[u8; 8]>::try_from(&k[..])
            .map(u64::from_be_bytes)
            .map_err(|_| {
                sto_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    "log key is not 8 bytes",
                )
            })?;
        if !range.contains(&index) {
            break;
        }
        let entry: Entry<TypeConfig> = decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e))?;
        out.push(entry);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        read_entries(&self.db, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        read_entries(&self.db, range)
    }
}

impl LogStore {
    fn write(
        &self,
        batch: WriteBatch,
        sync: bool,
        subject: ErrorSubject<ReplicaId>,
    ) -> StorageResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| sto_err(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<ReplicaId>> = get_record(&self.db, CF_RAFT, KEY_PURGED)?;
        let last = match self
            .db
            .iterator_cf(cf(&self.db, CF_LOG)?, IteratorMode::End)
            .next()
        {
            None => None,
            Some(item) => {
                let (_, v) = item.map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                let e: Entry<TypeConfig> = decode_record(&v)
                    .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(e.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            db: self.db.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> StorageResult<()> {
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT)?, KEY_VOTE, encode_record(vote));
        self.write(b, true, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<ReplicaId>>> {
        get_record(&self.db, CF_RAFT, KEY_VOTE)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let family = cf(&self.db, CF_LOG)?;
        let mut b = WriteBatch::default();
        for e in entries {
            b.put_cf(family, index_key(e.log_id.index), encode_record(&e));
        }
        // Readable now; durable once the flusher has synced the WAL and called back.
        self.write(b, false, ErrorSubject::Logs)?;
        let queued = match &self.flushes {
            Some(tx) => tx.send(callback),
            None => Err(std_mpsc::SendError(callback)),
        };
        if let Err(std_mpsc::SendError(cb)) = queued {
            // The flusher is gone (only while dropping): sync here.
            let r = self
                .db
                .flush_wal(true)
                .map_err(|e| std::io::Error::other(e.to_string()));
            cb.log_io_completed(r);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        tracing::info!(%log_id, "truncating the log");
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            cf(&self.db, CF_LOG)?,
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        self.write(b, true, ErrorSubject::Logs)
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging the log");
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT)?, KEY_PURGED, encode_record(&log_id));
        b.delete_range_cf(
            cf(&self.db, CF_LOG)?,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.write(b, false, ErrorSubject::Logs)?;
        metrics::PURGED_INDEX.set(log_id.index as i64);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine.

/// A snapshot as kept in memory and in the snapshot file.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<ReplicaId, BasicNode>,
    data: Arc<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<ReplicaId, BasicNode>,
    data: Vec<u8>,
}

/// A snapshot's data: the raw records of every state machine family, in key order.
#[derive(Serialize, Deserialize, Default)]
struct SnapshotBody {
    families: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// What readers of the state machine share with it.
pub struct Shared {
    /// The index, as of the last applied entry. Lookups read it.
    pub state: RwLock<State>,
    current: Mutex<Option<StoredSnapshot>>,
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

impl Shared {
    /// The index for reading (a panic elsewhere cannot leave it half-applied: apply changes
    /// nothing when it refuses a command, and the lock only guards plain data).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<StoredSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, s: StoredSnapshot) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }
}

/// The state machine: applies committed entries to the in-memory index and to RocksDB.
pub struct StateMachineStore {
    db: Arc<DB>,
    dir: PathBuf,
    shared: Arc<Shared>,
    last_applied: Option<LogId<ReplicaId>>,
    membership: Membership,
}

impl StateMachineStore {
    /// The handle lookups and stats read through.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Builds snapshots from a RocksDB snapshot, off the Raft core's task.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
    shared: Arc<Shared>,
}

fn put_change(db: &DB, b: &mut WriteBatch, c: Change) -> StorageResult<()> {
    match c {
        Change::PutUser(user, p) => b.put_cf(cf(db, CF_USERS)?, user.as_bytes(), encode_record(&p)),
        Change::DeleteUser(user) => b.delete_cf(cf(db, CF_USERS)?, user.as_bytes()),
        Change::PutStore(info) => b.put_cf(
            cf(db, CF_STORES)?,
            info.name.as_bytes(),
            encode_record(&info),
        ),
        Change::PutDomain(d) => b.put_cf(cf(db, CF_DOMAINS)?, d.name.as_bytes(), encode_record(&d)),
        Change::DeleteDomain(name) => b.delete_cf(cf(db, CF_DOMAINS)?, name.as_bytes()),
        Change::PutCluster(c) => {
            b.put_cf(cf(db, CF_CLUSTERS)?, c.name.as_bytes(), encode_record(&c))
        }
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<ReplicaId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Result<Applied, MservError>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut changes = Vec::new();
        {
            let mut state = self.shared.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let r = match entry.payload {
                    EntryPayload::Blank => Ok(Applied::Done),
                    EntryPayload::Normal(cmd) => {
                        let r = state.apply(&cmd, &mut changes);
                        metrics::APPLIED
                            .with_label_values(&[
                                cmd.name(),
                                if r.is_ok() { "ok" } else { "refused" },
                            ])
                            .inc();
                        r
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(Applied::Done)
                    }
                };
                results.push(r);
            }
        }
        if results.is_empty() {
            return Ok(results);
        }
        let mut b = WriteBatch::default();
        for c in changes {
            put_change(&self.db, &mut b, c)?;
        }
        let sm = cf(&self.db, CF_SM)?;
        b.put_cf(sm, KEY_APPLIED, encode_record(&self.last_applied));
        b.put_cf(sm, KEY_MEMBERSHIP, encode_record(&self.membership));
        // Not synced: the log these entries came from is, and shares the WAL.
        self.db
            .write(b)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        if let Some(id) = self.last_applied {
            metrics::APPLIED_INDEX.set(id.index as i64);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let (db, dir, m) = (self.db.clone(), self.dir.clone(), meta.clone());
        let state = tokio::task::spawn_blocking(move || install(&db, &dir, &m, data))
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        let (state, stored) = state;
        *self.shared.write() = state;
        self.shared.set_current(stored);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        metrics::SNAPSHOTS.with_label_values(&["installed"]).inc();
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.shared.current().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data.as_ref().clone())),
        }))
    }
}

/// Replace the state machine with a snapshot's records (one synced batch), keep the snapshot as
/// the current one, and return the index it holds.
fn install(
    db: &DB,
    dir: &Path,
    meta: &SnapshotMeta<ReplicaId, BasicNode>,
    data: Vec<u8>,
) -> StorageResult<(State, StoredSnapshot)> {
    let bad = |e: String| {
        sto_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            e,
        )
    };
    let body: SnapshotBody = decode_record(&data).map_err(bad)?;
    // A snapshot from before domains were kept has the first three families only.
    if body.families.len() != SM_CFS.len() && body.families.len() != 3 {
        return Err(bad(format!(
            "{} record families, expected {}",
            body.families.len(),
            SM_CFS.len()
        )));
    }
    let mut b = WriteBatch::default();
    let none = Vec::new();
    for (i, name) in SM_CFS.iter().enumerate() {
        let family = cf(db, name)?;
        b.delete_range_cf(family, [].as_slice(), KEY_END);
        for (k, v) in body.families.get(i).unwrap_or(&none) {
            b.put_cf(family, k, v);
        }
    }
    let sm = cf(db, CF_SM)?;
    b.put_cf(sm, KEY_APPLIED, encode_record(&meta.last_log_id));
    b.put_cf(sm, KEY_MEMBERSHIP, encode_record(&meta.last_membership));
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(b, &wo)
        .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
    let (state, _, _) = load_state_machine(db)?;
    let stored = StoredSnapshot {
        meta: meta.clone(),
        data: Arc::new(data),
    };
    write_snapshot_file(dir, &stored)?;
    Ok((state, stored))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        let stored = tokio::task::spawn_blocking(move || build(&db, &dir))
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        self.shared.set_current(stored.clone());
        self.shared.snapshots_built.fetch_add(1, Ordering::Relaxed);
        metrics::SNAPSHOTS.with_label_values(&["built"]).inc();
        tracing::info!(
            snapshot = %stored.meta.snapshot_id,
            bytes = stored.data.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data.as_ref().clone())),
        })
    }
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Read the whole state machine from one RocksDB snapshot and keep it as the current snapshot.
fn build(db: &DB, dir: &Path) -> StorageResult<StoredSnapshot> {
    let snap = db.snapshot();
    let read_err = |e: rocksdb::Error| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e);
    let meta_record = |key: &[u8]| -> StorageResult<Option<Vec<u8>>> {
        snap.get_cf(cf(db, CF_SM)?, key).map_err(read_err)
    };
    let last_log_id: Option<LogId<ReplicaId>> = match meta_record(KEY_APPLIED)? {
        Some(v) => decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?,
        None => None,
    };
    let last_membership: Membership = match meta_record(KEY_MEMBERSHIP)? {
        Some(v) => decode_record(&v)
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?,
        None => Membership::default(),
    };
    let mut body = SnapshotBody::default();
    for name in SM_CFS {
        let mut records = Vec::new();
        for item in snap.iterator_cf(cf(db, name)?, IteratorMode::Start) {
            let (k, v) = item.map_err(read_err)?;
            records.push((k.to_vec(), v.to_vec()));
        }
        body.families.push(records);
    }
    let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match last_log_id {
        Some(id) => format!(
            "{}-{}-{}-{seq}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("empty-{seq}"),
    };
    let stored = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        },
        data: Arc::new(encode_record(&body)),
    };
    write_snapshot_file(dir, &stored)?;
    Ok(stored)
}

/// Write the snapshot file atomically: a temporary file, synced, renamed over the old one.
fn write_snapshot_file(dir: &Path, s: &StoredSnapshot) -> StorageResult<()> {
    let err = |e: std::io::Error| {
        sto_err(
            ErrorSubject::Snapshot(Some(s.meta.signature())),
            ErrorVerb::Write,
            e,
        )
    };
    let file = SnapshotFile {
        meta: s.meta.clone(),
        data: s.data.as_ref().clone(),
    };
    let bytes = encode_record(&file);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

fn read_snapshot_file(path: &Path) -> Result<Option<StoredSnapshot>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let f: SnapshotFile = decode_record(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(StoredSnapshot {
        meta: f.meta,
        data: Arc::new(f.data),
    }))
}

/// The voters and learners of a membership, with their addresses.
pub fn members(m: &openraft::Membership<ReplicaId, BasicNode>) -> (Members, Members) {
    let nodes: BTreeMap<ReplicaId, String> =
        m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let addr = |id: ReplicaId| nodes.get(&id).cloned().unwrap_or_default();
    let voters = m.voter_ids().map(|id| (id, addr(id))).collect();
    let learners = m.learner_ids().map(|id| (id, addr(id))).collect();
    (voters, learners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Command, Policy, StoreState};
    use openraft::{CommittedLeaderId, Membership as RaftMembership};
    use std::collections::BTreeSet;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn cmd(c: Command) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(c)
    }

    fn store_cmd() -> Command {
        Command::RegisterStore {
            info: StoreInfo {
                name: "s1".into(),
                xfs_addr: "127.0.0.1:7100".into(),
                cluster: "hcu-1".into(),
                segments: vec![0, 1],
                state: StoreState::Active,
            },
        }
    }

    fn create(user: &str) -> Command {
        Command::CreateUser {
            user: user.into(),
            policy: Policy::LeastLoaded,
        }
    }

    fn membership() -> RaftMembership<ReplicaId, BasicNode> {
        let nodes = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
        RaftMembership::new(vec![BTreeSet::from([1])], nodes)
    }

    #[test]
    fn records_are_checksummed() {
        let p = Placement {
            store: "s1".into(),
            segment: 2,
            epoch: 3,
        };
        let mut bytes = encode_record(&p);
        assert_eq!(decode_record::<Placement>(&bytes), Ok(p));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(decode_record::<Placement>(&bytes)
            .unwrap_err()
            .contains("checksum"));
        assert!(decode_record::<Placement>(&[1, 2]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applied_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, mut sm) = open(dir.path()).unwrap();
            let r = sm
                .apply(vec![
                    entry(1, EntryPayload::Membership(membership())),
                    entry(2, cmd(store_cmd())),
                    entry(3, cmd(create("a@x.test"))),
                    entry(4, cmd(create("a@x.test"))),
                    entry(5, EntryPayload::Blank),
                ])
                .await
                .unwrap();
            assert_eq!(r.len(), 5);
            assert!(matches!(r[3], Err(MservError::AlreadyExists { .. })));
        }
        let (_log, mut sm) = open(dir.path()).unwrap();
        let (applied, m) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
        assert_eq!(m.log_id().map(|l| l.index), Some(1));
        let st = sm.shared();
        let state = st.read();
        assert_eq!(
            state.lookup("a@x.test").map(|p| p.store.as_str()),
            Some("s1")
        );
        assert_eq!(state.stores()[0].users, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_append_read_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open(dir.path()).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
        let entries: Vec<_> = (1..=10)
            .map(|i| entry(i, cmd(create(&format!("u{i}@x.test")))))
            .collect();
        for e in entries {
            log.blocking_append_one(e).await;
        }
        let got = log.try_get_log_entries(3..6).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
            .await
            .unwrap();
        assert_eq!(
            log.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .map(|l| l.index),
            Some(7)
        );
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(4));
        let mut reader = log.get_log_reader().await;
        let left = reader.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        let vote = Vote::new(3, 2);
        log.save_vote(&vote).await.unwrap();
        drop((log, reader, _sm));
        let (mut log, _sm) = open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 7))
            .await
            .unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(
            st.last_log_id.map(|l| l.index),
            Some(7),
            "an empty log reports the last purged id"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_builds_and_installs_elsewhere() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (_la, mut sa) = open(a.path()).unwrap();
        let mut entries = vec![
            entry(1, EntryPayload::Membership(membership())),
            entry(2, cmd(store_cmd())),
        ];
        for i in 0..500 {
            entries.push(entry(3 + i, cmd(create(&format!("u{i}@x.test")))));
        }
        sa.apply(entries).await.unwrap();
        let snap = sa
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(502));

        let (_lb, mut sb) = open(b.path()).unwrap();
        // Something the snapshot must replace.
        sb.apply(vec![
            entry(1, cmd(store_cmd())),
            entry(2, cmd(create("stale@x.test"))),
        ])
        .await
        .unwrap();
        let data = sa.get_current_snapshot().await.unwrap().unwrap();
        sb.install_snapshot(&snap.meta, data.snapshot)
            .await
            .unwrap();
        {
            let shared = sb.shared();
            let state = shared.read();
            assert_eq!(state.user_count(), 500);
            assert!(state.lookup("stale@x.test").is_none());
            assert_eq!(
                state.lookup("u7@x.test"),
                sa.shared().read().lookup("u7@x.test")
            );
        }
        assert_eq!(
            sb.applied_state().await.unwrap().0.map(|l| l.index),
            Some(502)
        );
        drop(sb);
        drop(_lb);
        // Installed state and snapshot survive a restart.
        let (_lb, mut sb) = open(b.path()).unwrap();
        assert_eq!(sb.shared().read().user_count(), 500);
        let cur = sb.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, snap.meta);
    }

    impl LogStore {
        /// Append one entry and wait for it to be durable (tests only).
        async fn blocking_append_one(&mut self, e: Entry<TypeConfig>) {
            use openraft::storage::RaftLogStorageExt as _;
            self.blocking_append([e]).await.unwrap();
        }
    }
}
