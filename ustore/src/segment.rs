//! One segment: a RocksDB instance holding whole mailboxes, and every mailbox operation on it.
//!
//! Invariants:
//! - A mutating operation is one `WriteBatch` written with `sync = true`: all or nothing, durable
//!   before the reply. Concurrent batches share WAL syncs through RocksDB's group commit.
//! - Mutations of one mailbox are serialized by a striped lock held from the read of the account
//!   record to the synced write, so uid allocation and folder counts are exact.
//! - Every record and body carries a crc32 checked on read; a mismatch is `Corrupt`, never data.
//! - A folder page reads the account, the folder records and one range of the index: no bodies.
//!
//! By feature: `records` (what is stored), `opening` (RocksDB tuning and opening), `reads` (the
//! checked, fenced reads every operation shares), `transaction` (the mailbox lock and the one
//! synced batch), `operations` (`Segment::execute` and the mailbox operations), `migrate`
//! (online moves), `softdelete` (deletes that can be undone) and `restore` (checkpoints and a
//! mailbox brought back from one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{Options, DB};
use runtime::faults::Faults;
use xfs::XfsError;

mod dsn;
mod migrate;
mod opening;
mod operations;
mod reads;
mod records;
mod restore;
mod softdelete;
mod transaction;

#[cfg(test)]
mod fixture;

pub use opening::{open_checkpoint, SegmentOptions};
pub use restore::backup_account;

/// How many change-log entries a mailbox keeps (older ones are trimmed as new ones arrive).
pub const CHANGES_KEPT: u64 = 50_000;
/// Largest folder page and search result a request may ask for.
pub const MAX_PAGE: u32 = 1000;
/// Longest folder name.
pub const MAX_FOLDER_NAME: usize = 200;
/// Folder ids below this are the system folders (Inbox = 1 … Trash = 5).
const FIRST_USER_FOLDER: u32 = 16;

pub struct Segment {
    id: u32,
    path: PathBuf,
    db: DB,
    opts: Options,
    locks: Vec<Mutex<()>>,
    faults: Arc<Faults>,
}

impl Segment {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every column family is created at open; a missing one is a programming error (only a
        // checkpoint of an older layout, opened read-only, lacks some, and it is never written).
        self.db.cf_handle(name).expect("column family opened")
    }
}

pub use runtime::time::now_ms;

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
