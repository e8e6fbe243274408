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
        // A checkpoint of an older layout may lack a column family: nothing is in it.
        let Some(handle) = self.db.cf_handle(cf) else {
            return Ok(None);
        };
        self.db.get_cf(handle, key).map_err(db_err)
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
        // A checkpoint of an older layout may lack a column family: nothing is in it.
        self.db
            .cf_handle(cf)
            .map(|h| self.db.iterator_cf_opt(h, ro, mode))
            .into_iter()
            .flatten()
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
        match self.get(CF_ACCOUNT, &keys::account(user))? {
            Some(v) => AccountRec::decode(&v).map(Some),
            None => Ok(None),
        }
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

#[cfg(test)]
mod tests {
    use xfs::{Flags, Op, Reply, SearchQuery, Target, XfsError};

    use crate::keys::{
        self, CF_ACCOUNT, CF_BODY, CF_CHANGES, CF_DEDUPE, CF_FOLDER, CF_INDEX, CF_MSGLOC,
    };
    use crate::metrics;
    use crate::segment::fixture::{body, mail, t, Fixture, ALICE, BOB};

    /// Every operation that reads a live mailbox, on message 1 and folder Work.
    fn reads(target: &Target) -> Vec<Op> {
        let target = || target.clone();
        vec![
            Op::GetAuth { target: target() },
            Op::ListFolders { target: target() },
            Op::ListFolder {
                target: target(),
                folder: "Inbox".into(),
                offset: 0,
                limit: 10,
                before_uid: None,
            },
            Op::Fetch {
                target: target(),
                msg: 1,
                mark_seen: false,
            },
            Op::Search {
                target: target(),
                query: SearchQuery {
                    text: "body".into(),
                    ..Default::default()
                },
            },
            Op::MailboxStats { target: target() },
            Op::Changes {
                target: target(),
                since: 0,
                limit: 10,
            },
        ]
    }

    /// Every operation that changes a live mailbox's mail, folders or account.
    fn writes(target: &Target) -> Vec<Op> {
        let target = || target.clone();
        vec![
            Op::RecordLogin {
                target: target(),
                at_ms: 99,
            },
            Op::EndSession {
                target: target(),
                sid: "s".into(),
                until: u64::MAX,
            },
            Op::UpdateAccount {
                target: target(),
                display_name: Some("X".into()),
                password_hash: None,
                quota_bytes: None,
            },
            Op::Deliver {
                target: target(),
                delivery: mail(2),
            },
            Op::Fetch {
                target: target(),
                msg: 1,
                mark_seen: true,
            },
            Op::SetFlags {
                target: target(),
                msgs: vec![1],
                add: Flags::FLAGGED,
                remove: Flags::NONE,
            },
            Op::Move {
                target: target(),
                msgs: vec![1],
                to_folder: "Work".into(),
            },
            Op::Expunge {
                target: target(),
                msgs: vec![1],
            },
            Op::EmptyFolder {
                target: target(),
                folder: "Inbox".into(),
            },
            Op::CreateFolder {
                target: target(),
                name: "New".into(),
            },
            Op::RenameFolder {
                target: target(),
                from: "Work".into(),
                to: "Jobs".into(),
            },
            Op::DeleteFolder {
                target: target(),
                name: "Work".into(),
            },
        ]
    }

    /// Alice with message 1 in Inbox and a folder Work.
    fn fixture() -> Fixture {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.ok(Op::CreateFolder {
            target: t(ALICE),
            name: "Work".into(),
        });
        f
    }

    #[test]
    fn every_operation_on_an_absent_or_deleted_mailbox_is_no_such_user() {
        let f = fixture();
        f.create(BOB);
        f.ok(Op::SoftDelete { target: t(BOB) });
        for user in ["nobody@example.test", BOB] {
            let target = t(user);
            let more = [
                Op::GetAccount {
                    target: target.clone(),
                },
                Op::DeleteAccount {
                    target: target.clone(),
                },
                Op::Export {
                    target: target.clone(),
                    part: xfs::ExportPart::Records,
                    after: None,
                    max_bytes: 1000,
                    keys_only: false,
                },
                Op::Import {
                    target: target.clone(),
                    records: vec![],
                    delete: vec![],
                    reset_records: false,
                },
                Op::Freeze {
                    target: target.clone(),
                },
                Op::Unfreeze {
                    target: target.clone(),
                },
                Op::MarkMoved {
                    target: target.clone(),
                    to: "other".into(),
                    epoch: 2,
                },
                Op::Purge {
                    target: target.clone(),
                },
                Op::Digest {
                    target: target.clone(),
                },
            ];
            for op in reads(&target)
                .into_iter()
                .chain(writes(&target))
                .chain(more)
            {
                let name = op.name();
                assert_eq!(f.exec(op), Err(XfsError::NoSuchUser), "{name} of {user}");
            }
        }
        for op in [
            Op::SoftDelete {
                target: t("nobody@example.test"),
            },
            Op::Undelete {
                target: t("nobody@example.test"),
            },
            Op::AccountRecord {
                target: t("nobody@example.test"),
            },
            Op::FinishImport {
                target: t("nobody@example.test"),
            },
        ] {
            assert_eq!(f.exec(op), Err(XfsError::NoSuchUser));
        }
        // Bob's data is still there for an undelete.
        assert!(!f.stored_keys(BOB).is_empty());
    }

    #[test]
    fn a_moved_out_mailbox_answers_moved_with_the_new_place_to_stale_callers() {
        let f = fixture();
        f.ok(Op::MarkMoved {
            target: t(ALICE),
            to: "store-b".into(),
            epoch: 2,
        });
        let before = f.stored_keys(ALICE);
        // The caller still holds epoch 1: it is told where the mailbox went and at which epoch.
        for op in reads(&t(ALICE)).into_iter().chain(writes(&t(ALICE))) {
            let name = op.name();
            assert_eq!(
                f.exec(op),
                Err(XfsError::Moved {
                    to: "store-b".into(),
                    epoch: 2
                }),
                "{name}"
            );
        }
        assert_eq!(f.stored_keys(ALICE), before);
        // The account itself is still readable, with the state that says so.
        assert_eq!(
            f.account(ALICE).state,
            xfs::AccountState::MovedOut {
                to: "store-b".into(),
                epoch: 2
            }
        );
    }

    #[test]
    fn the_epoch_a_caller_holds_is_not_compared_on_a_live_mailbox() {
        // The fence is the mailbox's state (a copy that left says `Moved`), not the epoch in the
        // request: a caller at any epoch is served by the live copy.
        let f = fixture();
        for epoch in [0, 7] {
            let target = Target::new(ALICE, 0, epoch);
            for op in reads(&target) {
                assert!(f.exec(op).is_ok());
            }
        }
    }

    #[test]
    fn a_frozen_mailbox_serves_reads_and_answers_frozen_to_writes() {
        let f = fixture();
        assert_eq!(f.ok(Op::Freeze { target: t(ALICE) }), Reply::Done);
        let before = f.stored_keys(ALICE);
        let account = f.account(ALICE);
        for op in writes(&t(ALICE)) {
            let name = op.name();
            match f.exec(op) {
                // Fetch with mark_seen is a read that skips the marking.
                Ok(Reply::Message(m)) => assert_eq!((name, m.entry.flags), ("fetch", Flags::NONE)),
                other => assert_eq!(
                    other,
                    Err(XfsError::Frozen {
                        retry_after_ms: 100
                    }),
                    "{name}"
                ),
            }
        }
        for op in reads(&t(ALICE)) {
            let name = op.name();
            assert!(f.exec(op).is_ok(), "{name}");
        }
        assert_eq!(f.stored_keys(ALICE), before);
        assert_eq!(
            f.account(ALICE),
            xfs::AccountInfo {
                state: xfs::AccountState::Frozen,
                ..account
            }
        );
    }

    #[test]
    fn a_mailbox_being_imported_answers_frozen_to_everyone() {
        let f = Fixture::new();
        f.ok(Op::BeginImport {
            target: t(ALICE),
            from: "store-a".into(),
        });
        for op in reads(&t(ALICE)).into_iter().chain(writes(&t(ALICE))) {
            let name = op.name();
            assert_eq!(
                f.exec(op),
                Err(XfsError::Frozen {
                    retry_after_ms: 100
                }),
                "{name}"
            );
        }
    }

    fn corrupt(r: Result<Reply, XfsError>) -> String {
        match r {
            Err(XfsError::Corrupt { what }) => what,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    fn fetch(msg: u64) -> Op {
        Op::Fetch {
            target: t(ALICE),
            msg,
            mark_seen: false,
        }
    }

    fn body_search() -> Op {
        Op::Search {
            target: t(ALICE),
            query: SearchQuery {
                text: "nothing matches this".into(),
                in_body: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_damaged_body_is_corrupt_and_never_served() {
        let f = fixture();
        f.deliver(ALICE, mail(2));
        let counted = || metrics::CORRUPT.with_label_values(&[CF_BODY]).get();
        let before = counted();
        f.seg().damage_body(ALICE, 2).unwrap();
        // Only the last byte changed, the crc kept.
        let stored = f.raw(CF_BODY, &keys::msg(ALICE, 2)).unwrap();
        let mut expected = keys::encode_body(&body(2));
        *expected.last_mut().unwrap() ^= 0x20;
        assert_eq!(stored, expected);
        let what = corrupt(f.exec(fetch(2)));
        assert!(what.starts_with("body: checksum mismatch: "), "{what}");
        corrupt(f.exec(Op::Fetch {
            target: t(ALICE),
            msg: 2,
            mark_seen: true,
        }));
        corrupt(f.exec(body_search()));
        assert!(counted() >= before + 3);
        // The page reads no body; the healthy message is served.
        assert_eq!(f.uids(ALICE, "Inbox"), vec![2, 1]);
        assert_eq!(f.fetch(ALICE, 1).unwrap().body, body(1));
        assert_eq!(
            f.fetch(ALICE, 2).map(|_| ()),
            Err(XfsError::Corrupt { what })
        );
        assert_eq!(f.counts(ALICE, "Inbox").1, 2, "nothing was marked read");
        assert_eq!(
            f.seg().damage_body(ALICE, 9),
            Err(XfsError::NoSuchMessage { msg: 9 })
        );
    }

    #[test]
    fn a_body_that_does_not_match_its_index_entry_is_corrupt() {
        let f = fixture();
        // A well-formed body (its own crc right) that is not the one the index describes.
        let seg = f.seg();
        seg.db
            .put_cf(
                seg.cf(CF_BODY),
                keys::msg(ALICE, 1),
                keys::encode_body(b"other"),
            )
            .unwrap();
        let before = metrics::CORRUPT.with_label_values(&["body-index"]).get();
        assert_eq!(
            corrupt(f.exec(fetch(1))),
            "message 1: body does not match its index checksum"
        );
        assert!(metrics::CORRUPT.with_label_values(&["body-index"]).get() > before);
    }

    #[test]
    fn a_damaged_record_is_corrupt_and_never_served() {
        let f = fixture();
        f.deliver(ALICE, mail(2));
        // Index entry of message 1: pages, fetches and searches that meet it fail.
        f.flip_byte(CF_INDEX, &keys::index(ALICE, 1, 1), 6);
        corrupt(f.exec(fetch(1)));
        corrupt(f.exec(Op::ListFolder {
            target: t(ALICE),
            folder: "Inbox".into(),
            offset: 0,
            limit: 10,
            before_uid: None,
        }));
        corrupt(f.exec(body_search()));
        corrupt(f.exec(Op::SetFlags {
            target: t(ALICE),
            msgs: vec![1],
            add: Flags::SEEN,
            remove: Flags::NONE,
        }));
        corrupt(f.exec(Op::Digest { target: t(ALICE) }));
        // A page above it is still served.
        assert_eq!(f.page(ALICE, "Inbox", 0, 1, None).entries[0].msg, 2);
        assert_eq!(f.fetch(ALICE, 2).unwrap().body, body(2));

        // Location of message 2.
        f.flip_byte(CF_MSGLOC, &keys::msg(ALICE, 2), 4);
        corrupt(f.exec(fetch(2)));
        // Folder records: every folder list.
        f.flip_byte(CF_FOLDER, &keys::folder(ALICE, 16), 5);
        corrupt(f.exec(Op::ListFolders { target: t(ALICE) }));
        corrupt(f.exec(Op::MailboxStats { target: t(ALICE) }));
        // A change-log entry.
        f.flip_byte(CF_CHANGES, &keys::change(ALICE, 1), 4);
        corrupt(f.exec(Op::Changes {
            target: t(ALICE),
            since: 0,
            limit: 10,
        }));
    }

    #[test]
    fn a_damaged_account_or_delivery_record_is_corrupt_and_nothing_is_written() {
        let f = fixture();
        f.create(BOB);
        f.deliver(BOB, mail(1));
        // Bob's delivery id: a repeat is refused rather than stored twice.
        f.flip_byte(CF_DEDUPE, &keys::dedupe(BOB, &[1; 32]), 5);
        let before = f.stored_keys(BOB);
        corrupt(f.exec(Op::Deliver {
            target: t(BOB),
            delivery: mail(1),
        }));
        assert_eq!(f.stored_keys(BOB), before);
        // Alice's account record.
        f.flip_byte(CF_ACCOUNT, &keys::account(ALICE), 8);
        let raw = f.raw(CF_ACCOUNT, &keys::account(ALICE));
        for op in [
            Op::GetAccount { target: t(ALICE) },
            Op::GetAuth { target: t(ALICE) },
            Op::Deliver {
                target: t(ALICE),
                delivery: mail(3),
            },
            Op::AccountRecord { target: t(ALICE) },
            Op::ListAccounts {
                segment: 0,
                after: None,
                limit: 10,
            },
        ] {
            corrupt(f.exec(op));
        }
        assert_eq!(f.raw(CF_ACCOUNT, &keys::account(ALICE)), raw);
        assert_eq!(f.raw(CF_BODY, &keys::msg(ALICE, 2)), None);
        // A value too short to hold its crc.
        let seg = f.seg();
        seg.db
            .put_cf(seg.cf(CF_ACCOUNT), keys::account(BOB), [1, 2])
            .unwrap();
        assert_eq!(
            corrupt(f.exec(Op::GetAccount { target: t(BOB) })),
            "account: record of 2 bytes is shorter than its checksum"
        );
    }
}
