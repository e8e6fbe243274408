//! Deletes that can be undone: `SoftDelete` marks the account `Deleted { at_ms }` (every caller
//! is told `NoSuchUser`, the data stays), `Undelete` makes it live again, and the retention sweep
//! purges for good the accounts deleted longer ago than the retention.

use rocksdb::WriteBatch;
use xfs::{AccountState, Reply, Target, XfsError};

use super::records::AccountRec;
use super::{bad, now_ms, Segment};
use crate::keys::{self, CF_ACCOUNT};
use crate::metrics;

impl Segment {
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
}

#[cfg(test)]
mod tests {
    use xfs::{AccountState, Op, Reply, Target, XfsError};

    use crate::segment::fixture::{body, mail, t, Fixture, ALICE, BOB};
    use crate::segment::now_ms;

    fn deleted_at(f: &Fixture, user: &str) -> u64 {
        match f.seg().stored_account(user).unwrap().unwrap().state {
            AccountState::Deleted { at_ms } => at_ms,
            s => panic!("{user} is {s:?}"),
        }
    }

    #[test]
    fn a_soft_deleted_account_is_absent_until_undeleted_and_keeps_its_mail() {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        f.deliver(ALICE, mail(1));
        let keys = f.stored_keys(ALICE);
        let before = now_ms();
        assert_eq!(f.ok(Op::SoftDelete { target: t(ALICE) }), Reply::Done);
        let at = deleted_at(&f, ALICE);
        assert!((before..=now_ms()).contains(&at));
        // Again: nothing changes, the first time stays.
        assert_eq!(f.ok(Op::SoftDelete { target: t(ALICE) }), Reply::Done);
        assert_eq!(deleted_at(&f, ALICE), at);
        assert_eq!(f.stored_keys(ALICE), keys);
        assert_eq!(f.fetch(ALICE, 1), Err(XfsError::NoSuchUser));
        // Back, with its mail, at the epoch of the undelete.
        assert_eq!(
            f.ok(Op::Undelete {
                target: Target::new(ALICE, 0, 5)
            }),
            Reply::Done
        );
        let a = f.account(ALICE);
        assert_eq!((a.messages, a.epoch, a.state), (1, 5, AccountState::Active));
        assert_eq!(f.fetch(ALICE, 1).unwrap().body, body(1));
        // Undelete again at the same epoch: nothing to do. At another: refused.
        assert_eq!(
            f.ok(Op::Undelete {
                target: Target::new(ALICE, 0, 5)
            }),
            Reply::Done
        );
        assert_eq!(
            f.err(Op::Undelete {
                target: Target::new(ALICE, 0, 6)
            }),
            XfsError::BadRequest {
                why: format!("mailbox {ALICE} is Active at epoch 5: not a deleted mailbox")
            }
        );
        assert_eq!(f.account(BOB).state, AccountState::Active);
    }

    #[test]
    fn only_an_active_mailbox_is_soft_deleted() {
        let f = Fixture::new();
        f.create(ALICE);
        f.ok(Op::Freeze { target: t(ALICE) });
        assert_eq!(
            f.err(Op::SoftDelete { target: t(ALICE) }),
            XfsError::BadRequest {
                why: format!("mailbox {ALICE} is Frozen: only an active mailbox is deleted")
            }
        );
        f.ok(Op::MarkMoved {
            target: t(ALICE),
            to: "store-b".into(),
            epoch: 2,
        });
        assert!(matches!(
            f.err(Op::SoftDelete { target: t(ALICE) }),
            XfsError::BadRequest { .. }
        ));
        assert!(matches!(
            f.seg().stored_account(ALICE).unwrap().unwrap().state,
            AccountState::MovedOut { .. }
        ));
    }

    #[test]
    fn the_sweep_purges_only_accounts_deleted_longer_than_the_retention() {
        let f = Fixture::new();
        for u in [ALICE, BOB, "carol@example.test"] {
            f.create(u);
            f.deliver(u, mail(1));
        }
        f.ok(Op::SoftDelete { target: t(ALICE) });
        f.ok(Op::SoftDelete { target: t(BOB) });
        assert_eq!(f.store.sweep_deleted(3_600_000), 0);
        assert_eq!(f.seg().list_accounts(None, 10).unwrap().len(), 3);
        std::thread::sleep(std::time::Duration::from_millis(3));
        f.ok(Op::Undelete { target: t(BOB) });
        assert_eq!(f.store.sweep_deleted(0), 1);
        assert_eq!(f.stored_keys(ALICE), vec![]);
        assert_eq!(
            f.err(Op::AccountRecord { target: t(ALICE) }),
            XfsError::NoSuchUser
        );
        assert_eq!(f.fetch(BOB, 1).unwrap().body, body(1));
        assert_eq!(f.fetch("carol@example.test", 1).unwrap().body, body(1));
        assert_eq!(f.seg().sweep_deleted(0), Ok(0));
    }

    #[test]
    fn a_name_created_again_replaces_the_deleted_copy() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.ok(Op::SoftDelete { target: t(ALICE) });
        let a = f.create(ALICE);
        assert_eq!(
            (a.messages, a.modseq, a.state),
            (0, 1, AccountState::Active)
        );
        assert_eq!(f.fetch(ALICE, 1), Err(XfsError::NoSuchMessage { msg: 1 }));
        assert_eq!(f.deliver(ALICE, mail(1)), (1, "Inbox".into(), 1, false));
        assert!(matches!(
            f.err(Op::Undelete {
                target: Target::new(ALICE, 0, 2)
            }),
            XfsError::BadRequest { .. }
        ));
    }
}
