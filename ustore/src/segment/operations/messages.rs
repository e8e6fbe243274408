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
        self.mutate(user, |tx| {
            let f = tx.file(d)?;
            Ok(Reply::Delivered {
                msg: f.msg,
                folder: f.folder,
                uid: f.uid,
                duplicate: f.duplicate,
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
            for m in once_each(msgs) {
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
            let msgs = once_each(msgs);
            let mut moved = Vec::with_capacity(msgs.len());
            for m in msgs {
                moved.push((m, tx.move_msg(m, to)?));
            }
            Ok(Reply::NewUids(moved))
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
            for m in once_each(msgs) {
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

/// `msgs` with each id once, in the order first given. A transaction reads the records as they
/// were before it began, so an id named twice would be acted on twice: a message expunged twice
/// frees its size twice, a move or flag change counted twice skews the folder counts.
fn once_each(msgs: Vec<MsgId>) -> Vec<MsgId> {
    let mut seen = std::collections::HashSet::with_capacity(msgs.len());
    msgs.into_iter().filter(|m| seen.insert(*m)).collect()
}

/// Where [`Tx::file`] put a message.
pub(in crate::segment) struct Filed {
    pub msg: MsgId,
    pub folder: String,
    pub uid: u32,
    /// The delivery id was seen before: nothing new was stored.
    pub duplicate: bool,
}

impl Tx<'_> {
    /// File one message in its folder within the quota, body and all; a delivery id seen
    /// before answers where its first copy went, storing nothing.
    pub(in crate::segment) fn file(&mut self, d: Delivery) -> Result<Filed, XfsError> {
        let user = self.user;
        let dkey = keys::dedupe(user, &d.id);
        if let Some(prev) = self.seg.get_rec::<DedupeRec>(CF_DEDUPE, &dkey)? {
            let folder = self
                .folders
                .get(&prev.folder)
                .map(|f| f.name.clone())
                .unwrap_or_default();
            return Ok(Filed {
                msg: prev.msg,
                folder,
                uid: prev.uid,
                duplicate: true,
            });
        }
        let size = d.body.len() as u64;
        if self.acc.quota_bytes > 0 && self.acc.used_bytes + size > self.acc.quota_bytes {
            return Err(XfsError::QuotaExceeded {
                used: self.acc.used_bytes,
                quota: self.acc.quota_bytes,
            });
        }
        let folder_name = d.folder.as_deref().unwrap_or(INBOX);
        let fid = self.folder_id(folder_name)?;
        let msg = self.next_id();
        let body_crc = crc32fast::hash(&d.body);
        let entry = EntryRec {
            msg,
            size,
            internal_date_ms: d.internal_date_ms,
            flags: d.flags,
            summary: d.summary,
            body_crc,
        };
        let uid = self.add_entry(fid, &entry)?;
        let seg = self.seg;
        self.batch
            .put_cf(seg.cf(CF_BODY), keys::msg(user, msg), encode_body(&d.body));
        let rec = DedupeRec {
            msg,
            folder: fid,
            uid,
            at_ms: self.now,
        };
        self.batch
            .put_cf(seg.cf(CF_DEDUPE), &dkey, keys::encode(&rec));
        self.acc.used_bytes += size;
        self.acc.messages += 1;
        let folder = folder_name_of(&self.folders, fid);
        self.log(ChangeKind::Added {
            msg,
            folder: folder.clone(),
            uid,
        });
        Ok(Filed {
            msg,
            folder,
            uid,
            duplicate: false,
        })
    }

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
        self.log(ChangeKind::Refiled { msg, from, to, uid });
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

#[cfg(test)]
mod tests {
    use xfs::{ChangeKind, Flags, Op, Reply, XfsError};

    use crate::keys::{self, CF_BODY, CF_DEDUPE, CF_INDEX, CF_MSGLOC};
    use crate::segment::fixture::{body, expect_reply, mail, t, Fixture, ALICE, BOB};

    fn flags(f: &Fixture, msgs: Vec<u64>, add: Flags, remove: Flags) -> Result<Reply, XfsError> {
        f.exec(Op::SetFlags {
            target: t(ALICE),
            msgs,
            add,
            remove,
        })
    }

    #[test]
    fn deliver_files_into_inbox_with_exact_counts_and_stores_the_body() {
        let f = Fixture::new();
        f.create(ALICE);
        assert_eq!(f.deliver(ALICE, mail(1)), (1, "Inbox".into(), 1, false));
        assert_eq!(f.deliver(ALICE, mail(2)), (2, "Inbox".into(), 2, false));
        let size = |n| body(n).len() as u64;
        assert_eq!(f.counts(ALICE, "Inbox"), (2, 2, size(1) + size(2)));
        let a = f.account(ALICE);
        assert_eq!(
            (a.messages, a.used_bytes, a.modseq),
            (2, size(1) + size(2), 3)
        );
        assert_eq!(f.folder(ALICE, "Inbox").uidnext, 3);
        // The body as stored: crc32 | bytes; the index entry holds the same crc.
        assert_eq!(
            f.raw(CF_BODY, &keys::msg(ALICE, 2)),
            Some(keys::encode_body(&body(2)))
        );
        let e = &f.page(ALICE, "Inbox", 0, 1, None).entries[0];
        assert_eq!((e.msg, e.body_crc), (2, crc32fast::hash(&body(2))));
        assert_eq!(
            f.changes(ALICE, 1, 10).changes[1].kind,
            ChangeKind::Added {
                msg: 2,
                folder: "Inbox".into(),
                uid: 2
            }
        );
    }

    #[test]
    fn a_repeated_delivery_answers_the_first_result_and_stores_nothing() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.deliver(ALICE, mail(2));
        let before = f.stored_keys(ALICE);
        let a = f.account(ALICE);
        let mut again = mail(1);
        again.body = b"other bytes under the same id".to_vec().into();
        assert_eq!(f.deliver(ALICE, again), (1, "Inbox".into(), 1, true));
        let b = f.account(ALICE);
        assert_eq!((b.messages, b.used_bytes), (a.messages, a.used_bytes));
        assert_eq!(f.stored_keys(ALICE), before);
        assert_eq!(f.fetch(ALICE, 1).unwrap().body, body(1));
        assert_eq!(f.counts(ALICE, "Inbox").0, 2);
        // Delivery ids are per mailbox: the same id is new to Bob.
        f.create(BOB);
        assert_eq!(f.deliver(BOB, mail(1)), (1, "Inbox".into(), 1, false));
        assert!(f.raw(CF_DEDUPE, &keys::dedupe(BOB, &[1; 32])).is_some());
    }

    #[test]
    fn deliver_keeps_to_the_quota_and_a_repeat_still_answers_when_full() {
        let f = Fixture::new();
        f.create(ALICE);
        let quota = body(1).len() as u64 + body(2).len() as u64;
        f.ok(Op::UpdateAccount {
            target: t(ALICE),
            display_name: None,
            password_hash: None,
            quota_bytes: Some(quota),
        });
        f.deliver(ALICE, mail(1));
        // Exactly up to the quota is allowed.
        f.deliver(ALICE, mail(2));
        assert_eq!(
            f.err(Op::Deliver {
                target: t(ALICE),
                delivery: mail(3)
            }),
            XfsError::QuotaExceeded { used: quota, quota }
        );
        assert_eq!(f.account(ALICE).messages, 2);
        assert_eq!(f.deliver(ALICE, mail(2)), (2, "Inbox".into(), 2, true));
    }

    #[test]
    fn deliver_into_a_named_folder_with_flags() {
        let f = Fixture::new();
        f.create(ALICE);
        let mut d = mail(1);
        d.folder = Some("sent".into());
        d.flags = Flags::SEEN;
        assert_eq!(f.deliver(ALICE, d), (1, "Sent".into(), 1, false));
        assert_eq!(f.counts(ALICE, "Sent"), (1, 0, body(1).len() as u64));
        assert_eq!(f.counts(ALICE, "Inbox"), (0, 0, 0));
        let mut d = mail(2);
        d.folder = Some("Nowhere".into());
        assert_eq!(
            f.err(Op::Deliver {
                target: t(ALICE),
                delivery: d
            }),
            XfsError::NoSuchFolder {
                name: "Nowhere".into()
            }
        );
        assert_eq!(f.account(ALICE).messages, 1);
    }

    #[test]
    fn fetch_answers_the_stored_bytes_exactly_and_marks_read_when_asked() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.deliver(ALICE, mail(7));
        let m = f.fetch(ALICE, 2).unwrap();
        assert_eq!(m.body, body(7));
        assert_eq!(
            (
                m.entry.msg,
                m.entry.folder.as_str(),
                m.entry.uid,
                m.entry.size
            ),
            (2, "Inbox", 2, body(7).len() as u64)
        );
        assert_eq!(m.entry.summary, mail(7).summary);
        assert_eq!(m.entry.internal_date_ms, mail(7).internal_date_ms);
        assert_eq!(m.entry.flags, Flags::NONE);
        assert_eq!(f.counts(ALICE, "Inbox").1, 2);
        let seen = |mark_seen| {
            expect_reply!(
                f.ok(Op::Fetch { target: t(ALICE), msg: 2, mark_seen }),
                Reply::Message(m) => m
            )
        };
        let m = seen(true);
        assert_eq!((m.entry.flags, m.body), (Flags::SEEN, body(7)));
        assert_eq!(f.counts(ALICE, "Inbox").1, 1);
        assert_eq!(seen(false).entry.flags, Flags::SEEN);
        let modseq = f.account(ALICE).modseq;
        seen(true);
        assert_eq!(f.account(ALICE).modseq, modseq);
        assert_eq!(
            f.fetch(ALICE, 9).unwrap_err(),
            XfsError::NoSuchMessage { msg: 9 }
        );
    }

    #[test]
    fn fetch_of_a_frozen_mailbox_is_served_without_marking_read() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.ok(Op::Freeze { target: t(ALICE) });
        let m = expect_reply!(
            f.ok(Op::Fetch { target: t(ALICE), msg: 1, mark_seen: true }),
            Reply::Message(m) => m
        );
        assert_eq!((m.entry.flags, m.body), (Flags::NONE, body(1)));
        assert_eq!(f.counts(ALICE, "Inbox").1, 1);
    }

    #[test]
    fn set_flags_adds_and_removes_with_exact_unread_counts() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.deliver(ALICE, mail(2));
        let add = Flags::SEEN.union(Flags::FLAGGED);
        assert_eq!(flags(&f, vec![1, 2], add, Flags::NONE), Ok(Reply::Done));
        assert_eq!(f.counts(ALICE, "Inbox").1, 0);
        assert_eq!(f.fetch(ALICE, 1).unwrap().entry.flags, add);
        flags(&f, vec![2], Flags::ANSWERED, Flags::SEEN).unwrap();
        assert_eq!(f.counts(ALICE, "Inbox").1, 1);
        assert_eq!(
            f.fetch(ALICE, 2).unwrap().entry.flags,
            Flags::FLAGGED.union(Flags::ANSWERED)
        );
        let c = f.changes(ALICE, 3, 10).changes;
        let kinds: Vec<_> = c.into_iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ChangeKind::Flags { msg: 1, flags: add },
                ChangeKind::Flags { msg: 2, flags: add },
                ChangeKind::Flags {
                    msg: 2,
                    flags: Flags::FLAGGED.union(Flags::ANSWERED)
                },
            ]
        );
        // No change, no write.
        let modseq = f.account(ALICE).modseq;
        flags(&f, vec![1], Flags::SEEN, Flags::NONE).unwrap();
        assert_eq!(f.account(ALICE).modseq, modseq);
    }

    #[test]
    fn set_flags_on_a_missing_message_changes_nothing() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        assert_eq!(
            flags(&f, vec![1, 5], Flags::SEEN, Flags::NONE),
            Err(XfsError::NoSuchMessage { msg: 5 })
        );
        assert_eq!(f.fetch(ALICE, 1).unwrap().entry.flags, Flags::NONE);
        assert_eq!(f.counts(ALICE, "Inbox").1, 1);
    }

    #[test]
    fn move_gives_new_uids_and_moves_the_counts() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        flags(&f, vec![1], Flags::SEEN, Flags::NONE).unwrap();
        let mv = |msgs: Vec<u64>, to: &str| {
            f.exec(Op::Move {
                target: t(ALICE),
                msgs,
                to_folder: to.into(),
            })
        };
        assert_eq!(
            mv(vec![1, 3], "Trash"),
            Ok(Reply::NewUids(vec![(1, 1), (3, 2)]))
        );
        let (b1, b3) = (body(1).len() as u64, body(3).len() as u64);
        assert_eq!(f.counts(ALICE, "Trash"), (2, 1, b1 + b3));
        assert_eq!(f.counts(ALICE, "Inbox"), (1, 1, body(2).len() as u64));
        assert_eq!(f.uids(ALICE, "Trash"), vec![2, 1]);
        let m = f.fetch(ALICE, 3).unwrap();
        assert_eq!(
            (m.entry.folder.as_str(), m.entry.uid, m.body),
            ("Trash", 2, body(3))
        );
        assert_eq!(
            f.raw(CF_INDEX, &keys::index(ALICE, 1, 3)),
            None,
            "the old index entry is gone"
        );
        assert_eq!(
            f.changes(ALICE, f.account(ALICE).modseq - 1, 1).changes[0].kind,
            ChangeKind::Refiled {
                msg: 3,
                from: "Inbox".into(),
                to: "Trash".into(),
                uid: 2
            }
        );
        // Into the folder it is in: its uid stays, nothing changes.
        let modseq = f.account(ALICE).modseq;
        assert_eq!(mv(vec![3], "Trash"), Ok(Reply::NewUids(vec![(3, 2)])));
        assert_eq!(f.account(ALICE).modseq, modseq);
        // Back again: a fresh uid, never a reused one.
        assert_eq!(mv(vec![1], "Inbox"), Ok(Reply::NewUids(vec![(1, 4)])));
        assert_eq!(
            mv(vec![2], "Nowhere"),
            Err(XfsError::NoSuchFolder {
                name: "Nowhere".into()
            })
        );
        assert_eq!(
            mv(vec![2, 8], "Trash"),
            Err(XfsError::NoSuchMessage { msg: 8 })
        );
        assert_eq!(f.fetch(ALICE, 2).unwrap().entry.folder, "Inbox");
    }

    #[test]
    fn delete_expunges_for_good_and_a_retry_counts_nothing() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        let del = |msgs: Vec<u64>| {
            f.exec(Op::Expunge {
                target: t(ALICE),
                msgs,
            })
        };
        assert_eq!(del(vec![1, 3, 9]), Ok(Reply::Count(2)));
        assert_eq!(del(vec![1, 3]), Ok(Reply::Count(0)));
        let b2 = body(2).len() as u64;
        assert_eq!(f.counts(ALICE, "Inbox"), (1, 1, b2));
        let a = f.account(ALICE);
        assert_eq!((a.messages, a.used_bytes), (1, b2));
        assert_eq!(
            f.fetch(ALICE, 1).unwrap_err(),
            XfsError::NoSuchMessage { msg: 1 }
        );
        for cf in [CF_BODY, CF_MSGLOC] {
            assert_eq!(f.raw(cf, &keys::msg(ALICE, 3)), None, "{cf}");
        }
        assert_eq!(
            f.changes(ALICE, 4, 10).changes[1].kind,
            ChangeKind::Expunged {
                msg: 3,
                folder: "Inbox".into()
            }
        );
        // Message ids are never reused.
        assert_eq!(f.deliver(ALICE, mail(4)).0, 4);
    }

    #[test]
    fn an_id_named_twice_acts_once() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        let (b1, b2, b3) = (
            body(1).len() as u64,
            body(2).len() as u64,
            body(3).len() as u64,
        );
        // Marked read three times over: Inbox loses one unread, not three.
        flags(&f, vec![1, 1, 1], Flags::SEEN, Flags::NONE).unwrap();
        assert_eq!(f.counts(ALICE, "Inbox"), (3, 2, b1 + b2 + b3));
        // Moved with repeats: one new uid each, the counts moved once.
        assert_eq!(
            f.exec(Op::Move {
                target: t(ALICE),
                msgs: vec![2, 1, 2, 1],
                to_folder: "Trash".into(),
            }),
            Ok(Reply::NewUids(vec![(2, 1), (1, 2)]))
        );
        assert_eq!(f.counts(ALICE, "Trash"), (2, 1, b1 + b2));
        assert_eq!(f.counts(ALICE, "Inbox"), (1, 1, b3));
        assert_eq!(f.folder(ALICE, "Trash").uidnext, 3);
        // Expunged with repeats: one count, the quota freed once.
        assert_eq!(
            f.exec(Op::Expunge {
                target: t(ALICE),
                msgs: vec![2, 2, 2, 2],
            }),
            Ok(Reply::Count(1))
        );
        let a = f.account(ALICE);
        assert_eq!((a.messages, a.used_bytes), (2, b1 + b3));
        assert_eq!(f.counts(ALICE, "Trash"), (1, 0, b1));
        let mut left = 0;
        for folder in ["Inbox", "Trash"] {
            left += f.counts(ALICE, folder).2;
        }
        assert_eq!(
            left, a.used_bytes,
            "folder sizes add up to the quota's count"
        );
    }

    #[test]
    fn empty_folder_expunges_that_folder_only() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        f.ok(Op::Move {
            target: t(ALICE),
            msgs: vec![1, 2],
            to_folder: "Trash".into(),
        });
        let empty = |folder: &str| {
            f.exec(Op::EmptyFolder {
                target: t(ALICE),
                folder: folder.into(),
            })
        };
        assert_eq!(empty("Trash"), Ok(Reply::Count(2)));
        assert_eq!(empty("Trash"), Ok(Reply::Count(0)));
        assert_eq!(f.counts(ALICE, "Trash"), (0, 0, 0));
        assert_eq!(f.folder(ALICE, "Trash").uidnext, 3);
        assert_eq!(f.counts(ALICE, "Inbox"), (1, 1, body(3).len() as u64));
        let a = f.account(ALICE);
        assert_eq!((a.messages, a.used_bytes), (1, body(3).len() as u64));
        assert_eq!(
            f.fetch(ALICE, 2).unwrap_err(),
            XfsError::NoSuchMessage { msg: 2 }
        );
        assert_eq!(
            empty("Nowhere"),
            Err(XfsError::NoSuchFolder {
                name: "Nowhere".into()
            })
        );
    }
}
