//! Checkpoints and single-mailbox restore from one.
//!
//! A checkpoint is an online, consistent RocksDB checkpoint of a whole segment (with its
//! `IDENTITY`, which names the files of a backup pool); it opens read-only as a segment. A
//! restore opens one and streams one mailbox out of it through the same export code a move uses,
//! into this segment through the import path (each value's crc checked; the mailbox is
//! `Importing`, so callers wait, until the last chunk is in and it goes live at once). Only that
//! user's keys are written.

use std::path::Path;

use rocksdb::{checkpoint::Checkpoint, WriteBatch};
use xfs::{AccountState, ExportPart, Reply, Target, XfsError};

use super::opening::open_checkpoint;
use super::reads::db_err;
use super::records::AccountRec;
use super::{bad, validate_user, Segment};
use crate::metrics;

/// Chunk size of a restore's export → import loop.
const RESTORE_CHUNK: u32 = 4 << 20;

impl Segment {
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

    /// Bring `target.user`'s mailbox back from the checkpoint at `dir` (see the module doc).
    pub(super) fn restore_mailbox(&self, target: &Target, dir: &Path) -> Result<Reply, XfsError> {
        let user = target.user.as_str();
        let src = open_checkpoint(dir)?;
        let acc = src.account(user).map_err(|e| match e {
            XfsError::NoSuchUser => bad(format!("{user} has no mailbox in {}", dir.display())),
            e => e,
        })?;
        if !matches!(acc.state, AccountState::Active | AccountState::Frozen) {
            return Err(bad(format!(
                "{user} is {:?} in {}: not a live copy",
                acc.state,
                dir.display()
            )));
        }
        {
            let _guard = self.lock(user);
            match self.stored_account(user)? {
                None => {}
                // A restore that stopped half-way, a deleted copy, or an old copy left by a
                // move: the backup the operator chose replaces it.
                Some(AccountRec {
                    state:
                        AccountState::Importing { .. }
                        | AccountState::Deleted { .. }
                        | AccountState::MovedOut { .. },
                    ..
                }) => {
                    let mut batch = WriteBatch::default();
                    self.purge_into(&mut batch, user);
                    self.write(batch)?;
                }
                Some(a) => {
                    return Err(XfsError::AlreadyExists {
                        what: format!("mailbox {user} ({:?}) in segment {}", a.state, self.id),
                    })
                }
            }
        }
        self.begin_import(target, &format!("backup {}", dir.display()))?;
        let mut records = 0u64;
        for part in [ExportPart::Records, ExportPart::Bodies] {
            let mut after = None;
            loop {
                let Reply::Export(chunk) = src.export(user, part, after, RESTORE_CHUNK, false)?
                else {
                    return Err(bad("export gave an unexpected answer"));
                };
                records += chunk.records.len() as u64;
                self.import(user, chunk.records, Vec::new(), false)?;
                match chunk.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        self.finish_import(target)?;
        metrics::ACCOUNT_LIFECYCLE
            .with_label_values(&["restored"])
            .inc();
        Ok(Reply::Count(records))
    }
}

/// The account of `user` in the checkpoint at `dir`, in whatever state.
pub fn backup_account(dir: &Path, user: &str) -> Result<Reply, XfsError> {
    validate_user(user)?;
    open_checkpoint(dir)?.account_record(user)
}

#[cfg(test)]
mod tests {
    use xfs::{AccountState, ExportPart, Op, Reply, Target, XfsError};

    use crate::keys::{self, CF_ACCOUNT};
    use crate::segment::fixture::{body, expect_reply, mail, t, Fixture, ALICE, BOB};
    use crate::segment::open_checkpoint;

    fn checkpoint(f: &Fixture, name: &str) -> String {
        let dir = f.path(name).display().to_string();
        assert_eq!(
            f.ok(Op::Checkpoint {
                segment: 0,
                dir: dir.clone()
            }),
            Reply::Done
        );
        dir
    }

    fn restore(f: &Fixture, user: &str, epoch: u64, dir: &str) -> Result<Reply, XfsError> {
        f.exec(Op::RestoreMailbox {
            target: Target::new(user, 0, epoch),
            dir: dir.into(),
        })
    }

    fn backup_account(f: &Fixture, dir: &str, user: &str) -> Result<Reply, XfsError> {
        f.exec(Op::BackupAccount {
            dir: dir.into(),
            user: user.into(),
        })
    }

    /// Alice with two messages and Bob with one.
    fn fixture() -> Fixture {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        f.deliver(ALICE, mail(1));
        f.deliver(ALICE, mail(2));
        f.deliver(BOB, mail(3));
        f
    }

    #[test]
    fn a_checkpoint_of_the_layout_before_the_outbound_queue_still_restores() {
        let f = fixture();
        let dir = checkpoint(&f, "old");
        // Make it what an older store wrote: no `queue` or `sendlog` column family.
        {
            let opts = rocksdb::Options::default();
            let mut db = rocksdb::DB::open_cf(&opts, &dir, keys::ALL_CFS).unwrap();
            db.drop_cf(keys::CF_QUEUE).unwrap();
            db.drop_cf(keys::CF_SENDLOG).unwrap();
        }
        let present = rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).unwrap();
        assert!(!present.iter().any(|c| c == keys::CF_QUEUE), "{present:?}");
        assert!(matches!(
            backup_account(&f, &dir, ALICE),
            Ok(Reply::Account(_))
        ));
        let dst = Fixture::new();
        assert!(matches!(restore(&dst, ALICE, 2, &dir), Ok(Reply::Count(_))));
        assert_eq!(dst.fetch(ALICE, 2).unwrap().body, body(2));
    }

    #[test]
    fn a_checkpoint_is_a_consistent_copy_that_opens_read_only() {
        let f = fixture();
        let dir = checkpoint(&f, "cp");
        assert_eq!(
            f.err(Op::Checkpoint {
                segment: 0,
                dir: dir.clone()
            }),
            XfsError::BadRequest {
                why: format!("{dir} exists already")
            }
        );
        assert!(matches!(
            f.err(Op::Checkpoint {
                segment: 4,
                dir: f.path("cp4").display().to_string()
            }),
            XfsError::BadRequest { .. }
        ));
        // It names the database it came from.
        let identity = std::fs::read(f.seg().path().join("IDENTITY")).unwrap();
        assert_eq!(
            std::fs::read(f.path("cp").join("IDENTITY")).unwrap(),
            identity
        );
        // Later writes are not in it.
        f.deliver(ALICE, mail(4));
        let cp = open_checkpoint(&f.path("cp")).unwrap();
        assert_eq!(
            cp.execute(Op::GetAccount { target: t(ALICE) }),
            Ok(Reply::Account(xfs::AccountInfo {
                messages: 2,
                used_bytes: (body(1).len() + body(2).len()) as u64,
                modseq: 3,
                ..f.account(ALICE)
            }))
        );
        let m = expect_reply!(
            cp.execute(Op::Fetch { target: t(ALICE), msg: 2, mark_seen: false }),
            Ok(Reply::Message(m)) => m
        );
        assert_eq!(m.body, body(2));
        assert!(matches!(
            open_checkpoint(f.dir()).map(|_| ()),
            Err(XfsError::BadRequest { .. })
        ));
    }

    #[test]
    fn backup_account_reads_the_account_from_a_checkpoint_in_any_state() {
        let f = fixture();
        f.ok(Op::SoftDelete { target: t(BOB) });
        let dir = checkpoint(&f, "cp");
        let a = expect_reply!(backup_account(&f, &dir, ALICE), Ok(Reply::Account(a)) => a);
        assert_eq!(a, f.account(ALICE));
        let b = expect_reply!(backup_account(&f, &dir, BOB), Ok(Reply::Account(a)) => a);
        assert!(matches!(b.state, AccountState::Deleted { .. }));
        assert_eq!(
            backup_account(&f, &dir, "carol@example.test"),
            Err(XfsError::NoSuchUser)
        );
        let here = f.dir().display().to_string();
        assert_eq!(
            backup_account(&f, &here, ALICE),
            Err(XfsError::BadRequest {
                why: format!("{here} holds no checkpoint (no CURRENT file)")
            })
        );
        assert!(matches!(
            backup_account(&f, &dir, "Alice"),
            Err(XfsError::BadRequest { .. })
        ));
    }

    #[test]
    fn a_mailbox_comes_back_from_a_checkpoint_and_a_live_one_is_refused() {
        let f = fixture();
        let dir = checkpoint(&f, "cp");
        let exported = {
            let cp = open_checkpoint(&f.path("cp")).unwrap();
            let mut n = 0;
            for part in [ExportPart::Records, ExportPart::Bodies] {
                let c = expect_reply!(
                    cp.execute(Op::Export { target: t(ALICE), part, after: None, max_bytes: 32 << 20, keys_only: false }),
                    Ok(Reply::Export(c)) => c
                );
                n += c.records.len() as u64;
            }
            n
        };
        assert!(matches!(
            restore(&f, ALICE, 3, &dir),
            Err(XfsError::AlreadyExists { .. })
        ));
        let old = f.account(ALICE);
        // Lost: the mailbox is deleted outright, and Bob gets new mail meanwhile.
        f.ok(Op::DeleteAccount { target: t(ALICE) });
        f.deliver(BOB, mail(5));
        let bob = f.stored_keys(BOB);
        assert_eq!(restore(&f, ALICE, 3, &dir), Ok(Reply::Count(exported)));
        assert_eq!(f.account(ALICE), xfs::AccountInfo { epoch: 3, ..old });
        for n in 1..=2 {
            assert_eq!(f.fetch(ALICE, n).unwrap().body, body(n as u8));
        }
        // Only Alice's keys were written.
        assert_eq!(f.stored_keys(BOB), bob);
        assert_eq!(f.fetch(BOB, 2).unwrap().body, body(5));
    }

    #[test]
    fn a_restore_replaces_a_deleted_moved_out_or_half_restored_copy() {
        let f = fixture();
        let dir = checkpoint(&f, "cp");
        let restored = |f: &Fixture| {
            let a = f.account(ALICE);
            assert_eq!((a.messages, a.epoch, a.state), (2, 4, AccountState::Active));
            assert_eq!(f.fetch(ALICE, 2).unwrap().body, body(2));
        };
        // Deleted (soft), with different mail since the checkpoint.
        f.deliver(ALICE, mail(7));
        f.ok(Op::SoftDelete { target: t(ALICE) });
        restore(&f, ALICE, 4, &dir).unwrap();
        restored(&f);
        assert_eq!(f.fetch(ALICE, 3), Err(XfsError::NoSuchMessage { msg: 3 }));
        // Moved out.
        f.ok(Op::MarkMoved {
            target: t(ALICE),
            to: "store-b".into(),
            epoch: 9,
        });
        restore(&f, ALICE, 4, &dir).unwrap();
        restored(&f);
        // A restore that stopped half-way.
        f.ok(Op::DeleteAccount { target: t(ALICE) });
        f.ok(Op::BeginImport {
            target: t(ALICE),
            from: "an earlier restore".into(),
        });
        restore(&f, ALICE, 4, &dir).unwrap();
        restored(&f);
    }

    #[test]
    fn a_restore_needs_a_live_copy_of_the_user_in_the_checkpoint() {
        let f = fixture();
        f.ok(Op::SoftDelete { target: t(BOB) });
        let dir = checkpoint(&f, "cp");
        assert_eq!(
            restore(&f, "carol@example.test", 2, &dir),
            Err(XfsError::BadRequest {
                why: format!("carol@example.test has no mailbox in {dir}")
            })
        );
        // Bob is deleted in the checkpoint, which a restore does not bring back.
        f.ok(Op::DeleteAccount { target: t(ALICE) });
        let bob = f.stored_keys(BOB);
        assert_eq!(
            restore(&f, BOB, 2, &dir),
            Err(XfsError::BadRequest {
                why: format!("{BOB} has no mailbox in {dir}")
            })
        );
        assert_eq!(f.stored_keys(BOB), bob);
        let missing = f.path("missing").display().to_string();
        assert!(matches!(
            restore(&f, ALICE, 2, &missing),
            Err(XfsError::BadRequest { .. })
        ));
        assert_eq!(f.raw(CF_ACCOUNT, &keys::account(ALICE)), None);
    }
}
