//! Message operations: delivery (idempotent by delivery id, within the quota), fetch, flags,
//! moves between folders, expunge of messages and of a whole folder.

use xfs::{ChangeKind, Delivery, Flags, Message, MsgId, Reply, XfsError, INBOX};

use crate::keys::{self, encode_body, CF_BODY, CF_DEDUPE, CF_INDEX};
use crate::segment::records::{folder_name_of, DedupeRec, EntryRec, LocRec};
use crate::segment::transaction::Tx;
use crate::segment::Segment;

impl Segment {
    /// Store one message; a delivery id seen before answers its first result, storing nothing.
    pub(in crate::segment) fn deliver(&self, user: &str, d: Delivery) -> Result<Reply, XfsError> {
        let dkey = keys::dedupe(user, &d.id);
        self.mutate(user, |tx| {
            if let Some(prev) = tx.seg.get_rec::<DedupeRec>(CF_DEDUPE, &dkey)? {
                let folder = tx
                    .folders
                    .get(&prev.folder)
                    .map(|f| f.name.clone())
                    .unwrap_or_default();
                return Ok(Reply::Delivered {
                    msg: prev.msg,
                    folder,
                    uid: prev.uid,
                    duplicate: true,
                });
            }
            let size = d.body.len() as u64;
            if tx.acc.quota_bytes > 0 && tx.acc.used_bytes + size > tx.acc.quota_bytes {
                return Err(XfsError::QuotaExceeded {
                    used: tx.acc.used_bytes,
                    quota: tx.acc.quota_bytes,
                });
            }
            let folder_name = d.folder.as_deref().unwrap_or(INBOX);
            let fid = tx.folder_id(folder_name)?;
            let msg = tx.acc.next_msg;
            tx.acc.next_msg += 1;
            let body_crc = crc32fast::hash(&d.body);
            let entry = EntryRec {
                msg,
                size,
                internal_date_ms: d.internal_date_ms,
                flags: d.flags,
                summary: d.summary,
                body_crc,
            };
            let uid = tx.add_entry(fid, &entry)?;
            let seg = tx.seg;
            tx.batch
                .put_cf(seg.cf(CF_BODY), keys::msg(user, msg), encode_body(&d.body));
            let rec = DedupeRec {
                msg,
                folder: fid,
                uid,
                at_ms: tx.now,
            };
            tx.batch
                .put_cf(seg.cf(CF_DEDUPE), &dkey, keys::encode(&rec));
            tx.acc.used_bytes += size;
            tx.acc.messages += 1;
            let folder = folder_name_of(&tx.folders, fid);
            tx.log(ChangeKind::Added {
                msg,
                folder: folder.clone(),
                uid,
            });
            Ok(Reply::Delivered {
                msg,
                folder,
                uid,
                duplicate: false,
            })
        })
    }

    /// One message with its body (both crcs checked), optionally marked read.
    pub(in crate::segment) fn fetch(
        &self,
        user: &str,
        msg: MsgId,
        mark_seen: bool,
    ) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let loc = self.loc(user, msg)?;
        let mut e = self.entry(user, loc, msg)?;
        let body = self.body(user, msg, e.body_crc)?;
        if mark_seen && !e.flags.contains(Flags::SEEN) {
            // Marking read is a write; a frozen mailbox still serves the read.
            match self.mutate(user, |tx| tx.set_flags(msg, Flags::SEEN, Flags::NONE)) {
                Ok(_) => e.flags = e.flags.union(Flags::SEEN),
                Err(XfsError::Frozen { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let folders = self.folders(user)?;
        let name = folder_name_of(&folders, loc.folder);
        Ok(Reply::Message(Message {
            entry: e.into_entry(&name, loc.uid),
            body,
        }))
    }

    pub(in crate::segment) fn set_flags(
        &self,
        user: &str,
        msgs: Vec<MsgId>,
        add: Flags,
        remove: Flags,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            for m in msgs {
                tx.set_flags(m, add, remove)?;
            }
            Ok(Reply::Done)
        })
    }

    /// Move messages into `to_folder`; each gets a new uid there (one already in it keeps its).
    pub(in crate::segment) fn move_msgs(
        &self,
        user: &str,
        msgs: Vec<MsgId>,
        to_folder: &str,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let to = tx.folder_id(to_folder)?;
            let mut moved = Vec::with_capacity(msgs.len());
            for m in msgs {
                moved.push((m, tx.move_msg(m, to)?));
            }
            Ok(Reply::Moved(moved))
        })
    }

    /// Expunge messages for good; the count of those that were still there.
    pub(in crate::segment) fn delete_msgs(
        &self,
        user: &str,
        msgs: Vec<MsgId>,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let mut n = 0;
            for m in msgs {
                if tx.expunge(m)? {
                    n += 1;
                }
            }
            Ok(Reply::Count(n))
        })
    }

    /// Expunge every message of a folder; how many went.
    pub(in crate::segment) fn empty_folder(
        &self,
        user: &str,
        folder: &str,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            let fid = tx.folder_id(folder)?;
            tx.expunge_folder(fid).map(Reply::Count)
        })
    }
}

impl Tx<'_> {
    fn set_flags(&mut self, msg: MsgId, add: Flags, remove: Flags) -> Result<Reply, XfsError> {
        let loc = self.seg.loc(self.user, msg)?;
        let mut e = self.seg.entry(self.user, loc, msg)?;
        let flags = e.flags.union(add).minus(remove);
        if flags == e.flags {
            return Ok(Reply::Done);
        }
        let was_unread = !e.flags.contains(Flags::SEEN);
        let is_unread = !flags.contains(Flags::SEEN);
        let f = self.folder_mut(loc.folder)?;
        if was_unread && !is_unread {
            f.unread = f.unread.saturating_sub(1);
        } else if !was_unread && is_unread {
            f.unread += 1;
        }
        e.flags = flags;
        let seg = self.seg;
        self.batch.put_cf(
            seg.cf(CF_INDEX),
            keys::index(self.user, loc.folder, loc.uid),
            keys::encode(&e),
        );
        self.log(ChangeKind::Flags { msg, flags });
        Ok(Reply::Done)
    }

    fn move_msg(&mut self, msg: MsgId, to: u32) -> Result<u32, XfsError> {
        let loc = self.seg.loc(self.user, msg)?;
        if loc.folder == to {
            return Ok(loc.uid);
        }
        let e = self.seg.entry(self.user, loc, msg)?;
        self.remove_entry(loc, &e)?;
        let uid = self.add_entry(to, &e)?;
        let from = folder_name_of(&self.folders, loc.folder);
        let to = folder_name_of(&self.folders, to);
        self.log(ChangeKind::Moved { msg, from, to, uid });
        Ok(uid)
    }

    /// Remove a message for good; `false` if it was gone already (a retried delete is no error).
    fn expunge(&mut self, msg: MsgId) -> Result<bool, XfsError> {
        let loc = match self.seg.loc(self.user, msg) {
            Ok(l) => l,
            Err(XfsError::NoSuchMessage { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let e = self.seg.entry(self.user, loc, msg)?;
        self.expunge_entry(loc, &e)?;
        Ok(true)
    }

    /// Expunge every message of folder `fid`; how many went.
    pub(in crate::segment) fn expunge_folder(&mut self, fid: u32) -> Result<u64, XfsError> {
        let user = self.user;
        let mut doomed = Vec::new();
        for kv in self.seg.scan(
            CF_INDEX,
            keys::folder(user, fid),
            keys::folder(user, fid + 1),
            false,
        ) {
            let (k, v) = kv?;
            if let Some((_, uid)) = keys::parse_index(user, &k) {
                doomed.push((uid, keys::decode::<EntryRec>(&v, CF_INDEX)?));
            }
        }
        let n = doomed.len() as u64;
        for (uid, e) in doomed {
            self.expunge_entry(LocRec { folder: fid, uid }, &e)?;
        }
        Ok(n)
    }
}

