//! The reads every operation shares: values with their crc checked, the account fenced by its
//! state, a mailbox's folders, index entries and bodies.

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use xfs::{AccountState, MsgId, XfsError};

use super::records::{AccountRec, EntryRec, Folders, LocRec};
use super::Segment;
use crate::keys::{self, prefix, prefix_end, CF_ACCOUNT, CF_BODY, CF_FOLDER, CF_INDEX, CF_MSGLOC};
use crate::metrics;

/// What a writer to a frozen mailbox is told to wait.
const FROZEN_RETRY_MS: u32 = 100;

/// A key and its value, as a RocksDB iterator yields them.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// A RocksDB error as callers see it: `Corrupt` (counted) for damaged data, else `Unavailable`.
pub(super) fn db_err(e: rocksdb::Error) -> XfsError {
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

/// The fence of an account's state: `Moved` once it left, `Frozen` for writes while it is
/// leaving and for everything while it is arriving, `NoSuchUser` once deleted.
pub(super) fn check_state(acc: &AccountRec, write: bool) -> Result<(), XfsError> {
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

impl Segment {
    pub(super) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, XfsError> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err)
    }

    pub(super) fn get_rec<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, XfsError> {
        match self.get(cf, key)? {
            Some(v) => keys::decode(&v, cf).map(Some),
            None => Ok(None),
        }
    }

    /// `(key, value)` pairs of `[from, to)` in one column family, forward or newest first.
    pub(super) fn scan(
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
    pub(super) fn account(&self, user: &str) -> Result<AccountRec, XfsError> {
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
    pub(super) fn stored_account(&self, user: &str) -> Result<Option<AccountRec>, XfsError> {
        self.get_rec(CF_ACCOUNT, &keys::account(user))
    }

    /// The account, fenced by [`check_state`].
    pub(super) fn live_account(&self, user: &str, write: bool) -> Result<AccountRec, XfsError> {
        let acc = self.account(user)?;
        check_state(&acc, write)?;
        Ok(acc)
    }

    pub(super) fn folders(&self, user: &str) -> Result<Folders, XfsError> {
        let mut out = Folders::new();
        for kv in self.scan(CF_FOLDER, prefix(user), prefix_end(user), false) {
            let (k, v) = kv?;
            let id_bytes: [u8; 4] = k[k.len() - 4..].try_into().map_err(|_| XfsError::Corrupt {
                what: "folder key".into(),
            })?;
            out.insert(u32::from_be_bytes(id_bytes), keys::decode(&v, CF_FOLDER)?);
        }
        Ok(out)
    }

    pub(super) fn loc(&self, user: &str, msg: MsgId) -> Result<LocRec, XfsError> {
        self.get_rec(CF_MSGLOC, &keys::msg(user, msg))?
            .ok_or(XfsError::NoSuchMessage { msg })
    }

    pub(super) fn entry(&self, user: &str, loc: LocRec, msg: MsgId) -> Result<EntryRec, XfsError> {
        self.get_rec(CF_INDEX, &keys::index(user, loc.folder, loc.uid))?
            .ok_or(XfsError::NoSuchMessage { msg })
    }

    /// The body of `msg`, checked against its own crc and against `crc` from its index entry.
    pub(super) fn body(&self, user: &str, msg: MsgId, crc: u32) -> Result<Vec<u8>, XfsError> {
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

    /// For tests of corruption handling: damage the stored body of `user`'s message `msg` in
    /// place, as a disk returning bad data would. It flips bit 0x20 of the last byte of the stored
    /// value `crc32 | bytes` (the body's last byte; the crc's own for an empty body) and writes
    /// the value back, so every later read of that body fails its crc check and answers
    /// `Corrupt`. The write is one synced batch through the `ustore.disk.write` fault point; use
    /// it on a segment no server has open. `NoSuchMessage` if there is no such body.
    pub fn damage_body(&self, user: &str, msg: MsgId) -> Result<(), XfsError> {
        let key = keys::msg(user, msg);
        let mut raw = self
            .get(CF_BODY, &key)?
            .ok_or(XfsError::NoSuchMessage { msg })?;
        if let Some(last) = raw.last_mut() {
            *last ^= 0x20;
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BODY), key, raw);
        self.write(batch)
    }
}

