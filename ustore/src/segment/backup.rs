//! Restorable deletes and single-mailbox restore from a backup.
//!
//! - A soft delete marks the account `Deleted { at_ms }`: every caller is told `NoSuchUser`, the
//!   data stays. `Undelete` makes it live again; the retention sweep purges it for good.
//! - A backup keeps RocksDB checkpoints of whole segments. A restore opens one read-only and
//!   streams one mailbox out of it through the same export code a move uses, into this segment
//!   through the import path (each value's crc checked; the mailbox is `Importing`, so callers
//!   wait, until the last chunk is in and it goes live at once).

use xfs::{AccountBrief, ExportPart};

use super::*;

/// Largest page of accounts a `ListAccounts` answers.
pub const MAX_ACCOUNT_PAGE: u32 = 10_000;
/// Chunk size of a restore's export → import loop.
const RESTORE_CHUNK: u32 = 4 << 20;

impl Segment {
    /// Add to `batch` the removal of every record of `user`.
    pub(super) fn purge_into(&self, batch: &mut WriteBatch, user: &str) {
        batch.delete_cf(self.cf(CF_ACCOUNT), keys::account(user));
        for cf in ALL_CFS.iter().filter(|c| **c != CF_ACCOUNT) {
            batch.delete_range_cf(self.cf(cf), prefix(user), prefix_end(user));
        }
    }

    /// A page of accounts after `after`, in user order: one range scan of the account records.
    pub fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountBrief>, XfsError> {
        let limit = limit.clamp(1, MAX_ACCOUNT_PAGE) as usize;
        let from = match after {
            // The smallest key greater than `after`.
            Some(a) => {
                let mut k = keys::account(a);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        // User ids are UTF-8, which never holds the byte 0xff.
        for kv in self.scan(CF_ACCOUNT, from, vec![0xff], false) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let user = String::from_utf8(k.into_vec()).map_err(|_| XfsError::Corrupt {
                what: "an account key is not UTF-8".into(),
            })?;
            let acc: AccountRec = keys::decode(&v, CF_ACCOUNT)?;
            out.push(AccountBrief {
                user,
                created_ms: acc.created_ms,
                last_login_ms: acc.last_login_ms,
                state: acc.state,
            });
        }
        Ok(out)
    }

    pub(super) fn soft_delete(&self, user: &str) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let mut acc = self.stored_account(user)?.ok_or(XfsError::NoSuchUser)?;
        match acc.state {
            AccountState::Active => {}
            AccountState::Deleted { .. } => return Ok(Reply::Done),
            state => {
                return Err(bad(format!(
                    "mailbox {user} is {state:?}: only an active mailbox is deleted"
                )))
            }
        }
        acc.state = AccountState::Deleted { at_ms: now_ms() };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ACCOUNT), keys::account(user), keys::encode(&acc));
        self.write(batch)?;
        metrics::ACCOUNT_LIFECYCLE
            .with_label_values(&["soft_deleted"])
            .inc();
        Ok(Reply::Done)
    }

    pub(super) fn undelete(&self, target: &Target) -> Result<Reply, XfsError> {
        let changed = self.activate(
            target,
            |state| matches!(state, AccountState::Deleted { .. }),
            "not a deleted mailbox",
        )?;
        if changed {
            metrics::ACCOUNT_LIFECYCLE
                .with_label_values(&["undeleted"])
                .inc();
        }
        Ok(Reply::Done)
    }

    pub(super) fn account_record(&self, user: &str) -> Result<Reply, XfsError> {
        let acc = self.stored_account(user)?.ok_or(XfsError::NoSuchUser)?;
        Ok(Reply::Account(info(user, &acc)))
    }

    /// Purge the accounts deleted more than `retention_ms` ago; how many went.
    pub fn sweep_deleted(&self, retention_ms: u64) -> Result<u64, XfsError> {
        let now = now_ms();
        let mut after: Option<String> = None;
        let mut purged = 0;
        loop {
            let page = self.list_accounts(after.as_deref(), 1000)?;
            let Some(last) = page.last() else {
                return Ok(purged);
            };
            after = Some(last.user.clone());
            for a in &page {
                let AccountState::Deleted { at_ms } = a.state else {
                    continue;
                };
                if now.saturating_sub(at_ms) <= retention_ms {
                    continue;
                }
                let _guard = self.lock(&a.user);
                // Check again under the lock: an undelete may have come in between.
                if let Some(AccountRec {
                    state: AccountState::Deleted { .. },
                    ..
                }) = self.stored_account(&a.user)?
                {
                    let mut batch = WriteBatch::default();
                    self.purge_into(&mut batch, &a.user);
                    self.write(batch)?;
                    metrics::ACCOUNT_LIFECYCLE
                        .with_label_values(&["purged"])
                        .inc();
                    purged += 1;
                }
            }
        }
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

/// Open a checkpoint read-only; a directory that is not one is a clear `BadRequest`.
pub fn open_checkpoint(dir: &Path) -> Result<Segment, XfsError> {
    if !dir.join("CURRENT").is_file() {
        return Err(bad(format!(
            "{} holds no checkpoint (no CURRENT file)",
            dir.display()
        )));
    }
    Segment::open_read_only(dir).map_err(|e| {
        if e.kind() == rocksdb::ErrorKind::Corruption {
            metrics::CORRUPT.with_label_values(&["rocksdb"]).inc();
            XfsError::Corrupt {
                what: format!("checkpoint {}: {e}", dir.display()),
            }
        } else {
            bad(format!("opening checkpoint {}: {e}", dir.display()))
        }
    })
}

/// The account of `user` in the checkpoint at `dir`, in whatever state.
pub fn backup_account(dir: &Path, user: &str) -> Result<Reply, XfsError> {
    validate_user(user)?;
    open_checkpoint(dir)?.account_record(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xfs::{Delivery, Flags, NewAccount, Summary};

    fn seg(dir: &Path) -> Segment {
        Segment::open(0, dir, &SegmentOptions::default(), Arc::new(Faults::new())).unwrap()
    }

    fn create(s: &Segment, user: &str) {
        let op = Op::CreateAccount {
            target: Target::new(user, 0, 1),
            account: NewAccount {
                password_hash: "h".into(),
                display_name: String::new(),
                quota_bytes: 0,
            },
        };
        s.execute(op).unwrap();
    }

    fn deliver(s: &Segment, user: &str, n: u8) -> Result<Reply, XfsError> {
        s.execute(Op::Deliver {
            target: Target::new(user, 0, 1),
            delivery: Delivery {
                id: [n; 32],
                folder: None,
                internal_date_ms: 1,
                flags: Flags::NONE,
                summary: Summary::default(),
                body: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
            },
        })
    }

    #[test]
    fn a_soft_deleted_account_is_absent_until_undeleted_and_the_sweep_purges_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let (a, b) = ("a@x.test", "b@x.test");
        create(&s, a);
        create(&s, b);
        deliver(&s, a, 1).unwrap();
        let t = Target::new(a, 0, 1);
        s.execute(Op::SoftDelete { target: t.clone() }).unwrap();
        s.execute(Op::SoftDelete { target: t.clone() }).unwrap();
        for op in [
            Op::GetAccount { target: t.clone() },
            Op::GetAuth { target: t.clone() },
            Op::ListFolders { target: t.clone() },
        ] {
            assert_eq!(s.execute(op).unwrap_err(), XfsError::NoSuchUser);
        }
        assert_eq!(deliver(&s, a, 2).unwrap_err(), XfsError::NoSuchUser);
        let page = s.list_accounts(None, 10).unwrap();
        assert_eq!(page.len(), 2);
        assert!(matches!(page[0].state, AccountState::Deleted { .. }));
        assert_eq!(s.list_accounts(Some(a), 10).unwrap()[0].user, b);
        // Back, with its mail, at the new epoch.
        s.execute(Op::Undelete {
            target: Target::new(a, 0, 5),
        })
        .unwrap();
        let Reply::Account(info) = s.execute(Op::GetAccount { target: t.clone() }).unwrap() else {
            panic!()
        };
        assert_eq!((info.messages, info.epoch), (1, 5));
        // Deleted again: a long retention keeps it, a short one purges it.
        s.execute(Op::SoftDelete { target: t.clone() }).unwrap();
        assert_eq!(s.sweep_deleted(3_600_000).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.sweep_deleted(0).unwrap(), 1);
        assert_eq!(
            s.execute(Op::AccountRecord { target: t.clone() })
                .unwrap_err(),
            XfsError::NoSuchUser
        );
        assert_eq!(s.list_accounts(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_name_created_again_replaces_the_deleted_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(dir.path());
        let a = "a@x.test";
        create(&s, a);
        deliver(&s, a, 1).unwrap();
        s.execute(Op::SoftDelete {
            target: Target::new(a, 0, 1),
        })
        .unwrap();
        create(&s, a);
        let Reply::Account(info) = s
            .execute(Op::GetAccount {
                target: Target::new(a, 0, 1),
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(info.messages, 0);
        assert!(s
            .execute(Op::Undelete {
                target: Target::new(a, 0, 2)
            })
            .is_err());
    }

    #[test]
    fn a_mailbox_comes_back_from_a_checkpoint_and_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = seg(&dir.path().join("live"));
        let a = "a@x.test";
        create(&s, a);
        create(&s, "b@x.test");
        deliver(&s, a, 1).unwrap();
        deliver(&s, a, 2).unwrap();
        let cp = dir.path().join("cp");
        s.checkpoint(&cp).unwrap();
        let Reply::Account(info) = backup_account(&cp, a).unwrap() else {
            panic!()
        };
        assert_eq!(info.messages, 2);
        assert_eq!(
            backup_account(&cp, "c@x.test").unwrap_err(),
            XfsError::NoSuchUser
        );
        assert!(matches!(
            backup_account(dir.path(), a).unwrap_err(),
            XfsError::BadRequest { .. }
        ));
        let t = Target::new(a, 0, 3);
        let op = Op::RestoreMailbox {
            target: t.clone(),
            dir: cp.to_string_lossy().to_string(),
        };
        assert!(matches!(
            s.execute(op.clone()).unwrap_err(),
            XfsError::AlreadyExists { .. }
        ));
        s.execute(Op::DeleteAccount { target: t.clone() }).unwrap();
        s.execute(op).unwrap();
        let Reply::Account(info) = s.execute(Op::GetAccount { target: t.clone() }).unwrap() else {
            panic!()
        };
        assert_eq!(
            (info.messages, info.epoch, info.state),
            (2, 3, AccountState::Active)
        );
        let Reply::Message(m) = s
            .execute(Op::Fetch {
                target: t,
                msg: 2,
                mark_seen: false,
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.body, b"Subject: 2\r\n\r\nbody 2\r\n");
    }
}
