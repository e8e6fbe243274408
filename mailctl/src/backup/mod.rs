//! `mailctl backup` and `mailctl restore`: online checkpoints of every segment kept in a pool of
//! immutable files, and one mailbox brought back into its live store.
//!
//! - `id`: backup ids (the UTC time a backup was taken) and `--as-of` values.
//! - `pool`: what a backup directory keeps where, and the byte-level file work (copies and
//!   checks with crc32); immutable files are shared by every backup of the directory, so a
//!   later backup copies only the files not there yet.
//! - `manifest`: what one backup holds, and the complete backups of a directory.
//! - `take`: taking a backup (`mailctl backup`); a crash leaves no half backup behind.
//! - `restore`: one mailbox back from a backup, or an undelete (`mailctl restore`).
//!
//! The store writes its checkpoint into `staging/` and mailctl reads it: the backup directory
//! must be on the store's machine (one machine in a local HCU; in production, run the backup on
//! each store's host). A restore materialises one segment (hard links from the pool, copies
//! otherwise; every crc checked) and asks the live store to stream the mailbox out of it
//! (`RestoreMailbox`): the store owns mailboxes on disk, mailctl never opens RocksDB itself.

mod id;
mod manifest;
mod pool;
pub mod restore;
mod take;

use std::time::Duration;

pub use id::{backup_id, parse_as_of};
pub use manifest::{list_backups, FileEntry, Manifest, SegmentBackup};
pub use restore::{materialise, restore_from_backup, undelete};
pub use take::{backup, backup_table, run};

/// How long a store may take over a checkpoint or a whole-mailbox restore.
const LONG_CALL: Duration = Duration::from_secs(600);
