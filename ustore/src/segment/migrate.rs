//! The store's side of an online mailbox move.
//!
//! A mailbox is a key range in every column family, so a copy is made of raw records: the
//! source exports them (values keep their crc32), the target checks each crc and writes them.
//! Bodies are immutable per message id, so a bulk copy of bodies can run while the user works;
//! the final delta, under freeze, replaces every other record and copies the bodies still missing.
//! Two copies are compared by [`xfs::MailboxDigest`].

use rocksdb::WriteBatch;
use sha2::{Digest as _, Sha256};
use xfs::{
    AccountState, ExportChunk, ExportCursor, ExportPart, MailboxDigest, RawRecord, Reply, Target,
    XfsError,
};

use super::records::{AccountRec, EntryRec};
use super::{bad, now_ms, Segment};
use crate::keys::{
    self, prefix, prefix_end, ALL_CFS, CF_ACCOUNT, CF_BODY, CF_CHANGES, CF_DEDUPE, CF_FOLDER,
    CF_INDEX, CF_MSGLOC,
};

/// The column families of the `Records` part after the account, in export order.
const RECORD_CFS: [&str; 5] = [CF_FOLDER, CF_INDEX, CF_MSGLOC, CF_DEDUPE, CF_CHANGES];
/// What a digest covers, in order. Bodies are covered by their index entries' crc32 (each body's
/// own crc is checked when it is imported), so a digest reads no body: it is cheap enough to run
/// while a mailbox is frozen.
const DIGEST_CFS: [&str; 4] = [CF_FOLDER, CF_INDEX, CF_MSGLOC, CF_CHANGES];
/// Largest export chunk a caller may ask for.
const MAX_CHUNK: u32 = 32 << 20;

/// A change of a leaving mailbox's state.
pub(super) enum Moving {
    Freeze,
    Unfreeze,
    MarkMoved { to: String, epoch: u64 },
}

fn known_cf(cf: &str) -> Option<&'static str> {
    ALL_CFS.iter().copied().find(|c| *c == cf)
}

impl Segment {
    fn check_key(&self, user: &str, cf: &str, key: &[u8]) -> Result<&'static str, XfsError> {
        let cf = known_cf(cf).ok_or_else(|| bad(format!("no column family {cf:?}")))?;
        let inside = if cf == CF_ACCOUNT {
            key == keys::account(user).as_slice()
        } else {
            key.starts_with(&prefix(user)) && key.len() > user.len() + 1
        };
        if !inside {
            return Err(bad(format!("a {cf} key outside mailbox {user}")));
        }
        Ok(cf)
    }

    pub(super) fn export(
        &self,
        user: &str,
        part: ExportPart,
        after: Option<ExportCursor>,
        max_bytes: u32,
        keys_only: bool,
    ) -> Result<Reply, XfsError> {
        let acc = self.account(user)?;
        let max_bytes = max_bytes.clamp(1, MAX_CHUNK) as usize;
        let cfs: Vec<&'static str> = match part {
            ExportPart::Records => std::iter::once(CF_ACCOUNT).chain(RECORD_CFS).collect(),
            ExportPart::Bodies => vec![CF_BODY],
        };
        // Resume in the cursor's column family, after its key.
        let (start_cf, after_key) = match &after {
            Some((cf, key)) => {
                let i = cfs
                    .iter()
                    .position(|c| c == cf)
                    .ok_or_else(|| bad(format!("cursor names {cf:?}, not part of this export")))?;
                (i, Some(key.clone()))
            }
            None => (0, None),
        };
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for (i, cf) in cfs.iter().enumerate().skip(start_cf) {
            let from = match (&after_key, i == start_cf) {
                // The smallest key greater than the cursor's.
                (Some(k), true) => {
                    let mut k = k.clone();
                    k.push(0);
                    k
                }
                _ if *cf == CF_ACCOUNT => keys::account(user),
                _ => prefix(user),
            };
            if *cf == CF_ACCOUNT {
                if from == keys::account(user) {
                    if let Some(v) = self.get(CF_ACCOUNT, &from)? {
                        bytes += v.len();
                        records.push(RawRecord {
                            cf: CF_ACCOUNT.into(),
                            key: from,
                            value: if keys_only { Vec::new() } else { v },
                        });
                    }
                }
                continue;
            }
            for kv in self.scan(cf, from, prefix_end(user), false) {
                let (k, v) = kv?;
                if bytes >= max_bytes && !records.is_empty() {
                    let last = records
                        .last()
                        .map(|r: &RawRecord| (r.cf.clone(), r.key.clone()));
                    return Ok(Reply::Export(ExportChunk {
                        records,
                        next: last,
                        modseq: acc.modseq,
                    }));
                }
                bytes += k.len() + if keys_only { 0 } else { v.len() };
                records.push(RawRecord {
                    cf: cf.to_string(),
                    key: k.into_vec(),
                    value: if keys_only { Vec::new() } else { v.into_vec() },
                });
            }
        }
        Ok(Reply::Export(ExportChunk {
            records,
            next: None,
            modseq: acc.modseq,
        }))
    }

    pub(super) fn begin_import(&self, target: &Target, from: &str) -> Result<Reply, XfsError> {
        let user = target.user.as_str();
        let _guard = self.lock(user);
        match self.get_rec::<AccountRec>(CF_ACCOUNT, &keys::account(user))? {
            Some(acc) => match acc.state {
                AccountState::Importing { .. } => Ok(Reply::Done),
                other => Err(XfsError::AlreadyExists {
                    what: format!("mailbox {user} ({other:?})"),
                }),
            },
            None => {
                let state = AccountState::Importing {
                    from: from.to_string(),
                };
                let acc = AccountRec::new(state, target.epoch, now_ms());
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(CF_ACCOUNT), keys::account(user), keys::encode(&acc));
                self.write(batch)?;
                Ok(Reply::Done)
            }
        }
    }

    pub(super) fn import(
        &self,
        user: &str,
        records: Vec<RawRecord>,
        delete: Vec<(String, Vec<u8>)>,
        reset_records: bool,
    ) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let acc = self.account(user)?;
        let AccountState::Importing { from } = acc.state else {
            return Err(bad(format!(
                "mailbox {user} is {:?}, not being imported",
                acc.state
            )));
        };
        let mut batch = WriteBatch::default();
        if reset_records {
            for cf in RECORD_CFS {
                batch.delete_range_cf(self.cf(cf), prefix(user), prefix_end(user));
            }
        }
        for (cf, key) in &delete {
            let cf = self.check_key(user, cf, key)?;
            if cf == CF_ACCOUNT {
                return Err(bad("the account record cannot be deleted by an import"));
            }
            batch.delete_cf(self.cf(cf), key);
        }
        let mut n = 0u64;
        for r in records {
            let cf = self.check_key(user, &r.cf, &r.key)?;
            keys::checked(&r.value, cf)?;
            if cf == CF_ACCOUNT {
                // The source's account, but still not live here.
                let mut a: AccountRec = keys::decode(&r.value, CF_ACCOUNT)?;
                a.state = AccountState::Importing { from: from.clone() };
                batch.put_cf(self.cf(cf), &r.key, keys::encode(&a));
            } else {
                batch.put_cf(self.cf(cf), &r.key, &r.value);
            }
            n += 1;
        }
        self.write(batch)?;
        Ok(Reply::Count(n))
    }

    pub(super) fn finish_import(&self, target: &Target) -> Result<Reply, XfsError> {
        self.activate(
            target,
            |state| matches!(state, AccountState::Importing { .. }),
            "not being imported",
        )?;
        Ok(Reply::Done)
    }

    /// Make the mailbox `Active` at `target.epoch` if `from` accepts its current state (an
    /// import finishing, a deleted account coming back). Idempotent: a mailbox already active at
    /// that epoch is left alone. True when the state changed.
    pub(super) fn activate(
        &self,
        target: &Target,
        from: fn(&AccountState) -> bool,
        refusal: &str,
    ) -> Result<bool, XfsError> {
        let user = target.user.as_str();
        let _guard = self.lock(user);
        let mut acc = self.stored_account(user)?.ok_or(XfsError::NoSuchUser)?;
        if acc.state == AccountState::Active && acc.epoch == target.epoch {
            return Ok(false);
        }
        if !from(&acc.state) {
            return Err(bad(format!(
                "mailbox {user} is {:?} at epoch {}: {refusal}",
                acc.state, acc.epoch
            )));
        }
        acc.state = AccountState::Active;
        acc.epoch = target.epoch;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ACCOUNT), keys::account(user), keys::encode(&acc));
        self.write(batch)?;
        Ok(true)
    }

    pub(super) fn set_moving_state(&self, user: &str, to: Moving) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let mut acc = self.account(user)?;
        let next = match (&acc.state, to) {
            (AccountState::Active | AccountState::Frozen, Moving::Freeze) => AccountState::Frozen,
            (AccountState::Frozen | AccountState::Active, Moving::Unfreeze) => AccountState::Active,
            (AccountState::Active | AccountState::Frozen, Moving::MarkMoved { to, epoch }) => {
                AccountState::MovedOut { to, epoch }
            }
            (AccountState::MovedOut { to: a, epoch: e }, Moving::MarkMoved { to, epoch })
                if *a == to && *e == epoch =>
            {
                return Ok(Reply::Done)
            }
            (state, _) => {
                return Err(bad(format!(
                    "mailbox {user} is {state:?}: that change does not apply"
                )))
            }
        };
        if acc.state == next {
            return Ok(Reply::Done);
        }
        acc.state = next;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ACCOUNT), keys::account(user), keys::encode(&acc));
        self.write(batch)?;
        Ok(Reply::Done)
    }

    pub(super) fn purge(&self, user: &str) -> Result<Reply, XfsError> {
        let _guard = self.lock(user);
        let acc = self.account(user)?;
        match acc.state {
            AccountState::MovedOut { .. } | AccountState::Importing { .. } => {}
            state => {
                return Err(bad(format!(
                    "mailbox {user} is {state:?}: only a moved-out or abandoned copy is purged"
                )))
            }
        }
        let mut batch = WriteBatch::default();
        self.purge_into(&mut batch, user);
        self.write(batch)?;
        Ok(Reply::Done)
    }

    pub(super) fn digest(&self, user: &str) -> Result<Reply, XfsError> {
        self.account(user)?;
        let mut h = Sha256::new();
        let mut d = MailboxDigest {
            messages: 0,
            folders: 0,
            records: 0,
            body_bytes: 0,
            hash: [0; 32],
        };
        for cf in DIGEST_CFS {
            for kv in self.scan(cf, prefix(user), prefix_end(user), false) {
                let (k, v) = kv?;
                keys::checked(&v, cf)?;
                h.update(cf.as_bytes());
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
                d.records += 1;
                match cf {
                    CF_FOLDER => d.folders += 1,
                    CF_MSGLOC => d.messages += 1,
                    CF_INDEX => {
                        let e: EntryRec = keys::decode(&v, CF_INDEX)?;
                        d.body_bytes += e.size;
                    }
                    _ => {}
                }
            }
        }
        d.hash = h.finalize().into();
        Ok(Reply::Digest(d))
    }
}

