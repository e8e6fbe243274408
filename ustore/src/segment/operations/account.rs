//! Account operations: create, delete, read (the account, the auth record, the raw record in any
//! state), sign-in time, updates, and the page of a segment's accounts.

use rocksdb::WriteBatch;
use xfs::{AccountBrief, AccountState, AuthRecord, ChangeKind, NewAccount, Reply, Target};
use xfs::{XfsError, SYSTEM_FOLDERS};

use crate::keys::{self, CF_ACCOUNT};
use crate::segment::records::{AccountRec, FolderRec};
use crate::segment::transaction::Tx;
use crate::segment::{now_ms, Segment};

/// Largest page of accounts a `ListAccounts` answers.
pub const MAX_ACCOUNT_PAGE: u32 = 10_000;

impl Segment {
    /// A new mailbox at `target.epoch` with the system folders; a soft-deleted one of the same
    /// name gives way.
    pub(in crate::segment) fn create_account(
        &self,
        target: &Target,
        new: NewAccount,
    ) -> Result<Reply, XfsError> {
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
        let acc = AccountRec {
            display_name: new.display_name,
            password_hash: new.password_hash,
            quota_bytes: new.quota_bytes,
            ..AccountRec::new(AccountState::Active, target.epoch, now)
        };
        let mut tx = Tx::new(self, user, acc, Default::default(), batch, now);
        for (i, name) in SYSTEM_FOLDERS.iter().enumerate() {
            tx.folders
                .insert(i as u32 + 1, FolderRec::new(name, now, i as u32));
        }
        tx.log(ChangeKind::AccountCreated);
        let info = tx.acc.info(user);
        tx.commit()?;
        Ok(Reply::Account(info))
    }

    /// Remove a mailbox and everything in it at once (whatever its state, unless deleted).
    pub(in crate::segment) fn delete_account(&self, user: &str) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        self.account(user)?;
        let mut batch = WriteBatch::default();
        self.purge_into(&mut batch, user);
        self.write(batch)?;
        Ok(Reply::Done)
    }

    /// The account in any state but deleted (no fence: callers act on the state).
    pub(in crate::segment) fn get_account(&self, user: &str) -> Result<Reply, XfsError> {
        Ok(Reply::Account(self.account(user)?.info(user)))
    }

    /// What login checks a password against; a frozen mailbox still answers.
    pub(in crate::segment) fn get_auth(&self, user: &str) -> Result<Reply, XfsError> {
        let acc = self.live_account(user, false)?;
        Ok(Reply::Auth(AuthRecord {
            password_hash: acc.password_hash,
            display_name: acc.display_name,
            session_gen: acc.session_gen,
            state: acc.state,
        }))
    }

    /// The last sign-in time; never moves backwards.
    pub(in crate::segment) fn record_login(
        &self,
        user: &str,
        at_ms: u64,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            tx.acc.last_login_ms = tx.acc.last_login_ms.max(at_ms);
            Ok(Reply::Done)
        })
    }

    /// Change the given fields; a new password hash bumps the session generation.
    pub(in crate::segment) fn update_account(
        &self,
        user: &str,
        display_name: Option<String>,
        password_hash: Option<String>,
        quota_bytes: Option<u64>,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
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
        })
    }

    /// The account record in whatever state, a deleted one included (for operators).
    pub(in crate::segment) fn account_record(&self, user: &str) -> Result<Reply, XfsError> {
        let acc = self.stored_account(user)?.ok_or(XfsError::NoSuchUser)?;
        Ok(Reply::Account(acc.info(user)))
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
}

