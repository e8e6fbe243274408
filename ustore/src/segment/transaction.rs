//! One mutation of one mailbox: the striped per-mailbox lock, `Tx` (the records a mutation
//! changes, kept exact: uids, folder counts, the change log), and the commit of one synced
//! `WriteBatch`.

use std::hash::{Hash, Hasher};
use std::sync::MutexGuard;

use rocksdb::{WriteBatch, WriteOptions};
use xfs::{Change, ChangeKind, Flags, Reply, XfsError};

use super::reads::db_err;
use super::records::{
    find_folder, folder_name_of, AccountRec, EntryRec, FolderRec, Folders, LocRec,
};
use super::{now_ms, Segment, CHANGES_KEPT};
use crate::keys::{
    self, prefix, prefix_end, ALL_CFS, CF_ACCOUNT, CF_BODY, CF_CHANGES, CF_FOLDER, CF_INDEX,
    CF_MSGLOC,
};
use crate::metrics;

impl Segment {
    /// The lock of `user`'s stripe: held from the read of the account to the synced write.
    pub(super) fn lock(&self, user: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commit one batch durably (after the `ustore.disk.write` fault point).
    pub(super) fn write(&self, batch: WriteBatch) -> Result<(), XfsError> {
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

    /// Add to `batch` the removal of every record of `user`.
    pub(super) fn purge_into(&self, batch: &mut WriteBatch, user: &str) {
        batch.delete_cf(self.cf(CF_ACCOUNT), keys::account(user));
        for cf in ALL_CFS.iter().filter(|c| **c != CF_ACCOUNT) {
            batch.delete_range_cf(self.cf(cf), prefix(user), prefix_end(user));
        }
    }

    /// Run `f` on the live mailbox under its lock and commit what it did as one synced batch.
    pub(super) fn mutate(
        &self,
        user: &str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<Reply, XfsError>,
    ) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let acc = self.live_account(user, true)?;
        let folders = self.folders(user)?;
        let mut tx = Tx::new(self, user, acc, folders, WriteBatch::default(), now_ms());
        let reply = f(&mut tx)?;
        tx.commit()?;
        Ok(reply)
    }
}

/// One mutation of one mailbox in the making: the records it changes and the batch that holds
/// them. Nothing reaches disk until `commit`.
pub(super) struct Tx<'a> {
    pub seg: &'a Segment,
    pub user: &'a str,
    pub acc: AccountRec,
    pub folders: Folders,
    pub batch: WriteBatch,
    pub now: u64,
}

impl<'a> Tx<'a> {
    /// A mutation of `user` starting from `acc` and `folders`; the caller holds the lock.
    pub fn new(
        seg: &'a Segment,
        user: &'a str,
        acc: AccountRec,
        folders: Folders,
        batch: WriteBatch,
        now: u64,
    ) -> Tx<'a> {
        Tx {
            seg,
            user,
            acc,
            folders,
            batch,
            now,
        }
    }

    /// A new id from the mailbox's one sequence (messages, queued bodies, queue entries).
    pub fn next_id(&mut self) -> u64 {
        let id = self.acc.next_msg;
        self.acc.next_msg += 1;
        id
    }

    pub fn folder_id(&self, name: &str) -> Result<u32, XfsError> {
        find_folder(&self.folders, name).map(|(id, _)| id)
    }

    pub fn folder_mut(&mut self, fid: u32) -> Result<&mut FolderRec, XfsError> {
        self.folders.get_mut(&fid).ok_or_else(|| XfsError::Corrupt {
            what: format!("message in missing folder {fid}"),
        })
    }

    /// Append to the change log under the next modseq, trimming it to `CHANGES_KEPT` entries.
    pub fn log(&mut self, kind: ChangeKind) {
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
    pub fn add_entry(&mut self, fid: u32, e: &EntryRec) -> Result<u32, XfsError> {
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
    pub fn remove_entry(&mut self, loc: LocRec, e: &EntryRec) -> Result<(), XfsError> {
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

    /// Remove a message for good: its entry, location and body, and its share of the quota.
    pub fn expunge_entry(&mut self, loc: LocRec, e: &EntryRec) -> Result<(), XfsError> {
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

    /// Write the folders and the account into the batch and commit it as one synced write.
    pub fn commit(self) -> Result<(), XfsError> {
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

#[cfg(test)]
mod tests {
    use runtime::faults::FaultSpec;
    use xfs::{Flags, Op, XfsError};

    use crate::segment::fixture::{mail, t, Fixture, ALICE, BOB};

    #[test]
    fn a_failed_disk_write_answers_unavailable_and_writes_nothing() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        let before = f.stored_keys(ALICE);
        let account = f.account(ALICE);
        f.faults.set(
            "ustore.disk.write",
            FaultSpec {
                delay_ms: 0,
                fail_rate: 1.0,
            },
        );
        let refused = XfsError::Unavailable {
            why: "injected fault at ustore.disk.write".into(),
        };
        for op in [
            Op::Deliver {
                target: t(ALICE),
                delivery: mail(2),
            },
            Op::SetFlags {
                target: t(ALICE),
                msgs: vec![1],
                add: Flags::SEEN,
                remove: Flags::NONE,
            },
            Op::DeleteAccount { target: t(ALICE) },
            Op::SoftDelete { target: t(ALICE) },
            Op::CreateAccount {
                target: t(BOB),
                account: xfs::NewAccount {
                    password_hash: "h".into(),
                    display_name: "B".into(),
                    quota_bytes: 0,
                },
            },
        ] {
            let name = op.name();
            assert_eq!(f.exec(op), Err(refused.clone()), "{name}");
        }
        assert_eq!(f.stored_keys(ALICE), before);
        assert_eq!(f.account(ALICE), account);
        assert_eq!(f.stored_keys(BOB), vec![]);
        f.faults.clear("ustore.disk.write");
        assert_eq!(f.deliver(ALICE, mail(2)), (2, "Inbox".into(), 2, false));
    }

    #[test]
    fn concurrent_deliveries_to_one_mailbox_get_distinct_uids_and_exact_counts() {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        std::thread::scope(|s| {
            for th in 0..4u8 {
                let f = &f;
                s.spawn(move || {
                    for i in 0..10u8 {
                        let n = th * 10 + i + 1;
                        f.deliver(ALICE, mail(n));
                        f.deliver(BOB, mail(n));
                    }
                });
            }
        });
        for user in [ALICE, BOB] {
            let mut uids = f.uids(user, "Inbox");
            uids.sort_unstable();
            assert_eq!(uids, (1..=40).collect::<Vec<u32>>());
            let a = f.account(user);
            let bytes: u64 = (1..=40)
                .map(|n| crate::segment::fixture::body(n).len() as u64)
                .sum();
            assert_eq!((a.messages, a.used_bytes, a.modseq), (40, bytes, 41));
            assert_eq!(f.counts(user, "Inbox"), (40, 40, bytes));
            let seqs: Vec<u64> = f
                .changes(user, 0, 100)
                .changes
                .iter()
                .map(|c| c.modseq)
                .collect();
            assert_eq!(seqs, (1..=41).collect::<Vec<u64>>());
        }
    }
}
