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
    CF_INDEX, CF_MSGLOC, CF_QUEUE, CF_SENDLOG,
};

/// The column families of the `Records` part after the account, in export order.
const RECORD_CFS: [&str; 7] = [
    CF_FOLDER, CF_INDEX, CF_MSGLOC, CF_DEDUPE, CF_CHANGES, CF_QUEUE, CF_SENDLOG,
];
/// What a digest covers, in order. Bodies are covered by their index entries' crc32 (each body's
/// own crc is checked when it is imported), so a digest reads no body: it is cheap enough to run
/// while a mailbox is frozen.
const DIGEST_CFS: [&str; 6] = [
    CF_FOLDER, CF_INDEX, CF_MSGLOC, CF_CHANGES, CF_QUEUE, CF_SENDLOG,
];
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
        match self.stored_account(user)? {
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
                let mut a = AccountRec::decode(&r.value)?;
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

#[cfg(test)]
mod tests {
    use xfs::{
        AccountState, ExportChunk, ExportPart, Flags, MailboxDigest, Op, RawRecord, Reply, Target,
        XfsError,
    };

    use crate::keys::{self, CF_ACCOUNT, CF_BODY, CF_FOLDER, CF_INDEX};
    use crate::segment::fixture::{body, expect_reply, mail, t, Fixture, ALICE, BOB};

    /// The target of a move: epoch 2.
    fn t2(user: &str) -> Target {
        Target::new(user, 0, 2)
    }

    fn export(
        f: &Fixture,
        part: ExportPart,
        after: Option<(String, Vec<u8>)>,
        max: u32,
    ) -> ExportChunk {
        expect_reply!(
            f.ok(Op::Export { target: t(ALICE), part, after, max_bytes: max, keys_only: false }),
            Reply::Export(c) => c
        )
    }

    /// Every record of one part, chunk by chunk of about `max` bytes.
    fn export_all(f: &Fixture, part: ExportPart, max: u32) -> Vec<Vec<RawRecord>> {
        let mut chunks = Vec::new();
        let mut after = None;
        loop {
            let c = export(f, part, after, max);
            chunks.push(c.records);
            match c.next {
                Some(n) => after = Some(n),
                None => return chunks,
            }
        }
    }

    fn import(f: &Fixture, records: Vec<RawRecord>) -> Result<Reply, XfsError> {
        f.exec(Op::Import {
            target: t2(ALICE),
            records,
            delete: vec![],
            reset_records: false,
        })
    }

    fn digest(f: &Fixture) -> MailboxDigest {
        expect_reply!(f.ok(Op::Digest { target: t(ALICE) }), Reply::Digest(d) => d)
    }

    /// Alice with three messages (one read, one in Work) and Bob beside her.
    fn source() -> Fixture {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        f.deliver(BOB, mail(9));
        f.ok(Op::CreateFolder {
            target: t(ALICE),
            name: "Work".into(),
        });
        f.ok(Op::Move {
            target: t(ALICE),
            msgs: vec![3],
            to_folder: "Work".into(),
        });
        f.ok(Op::SetFlags {
            target: t(ALICE),
            msgs: vec![1],
            add: Flags::SEEN,
            remove: Flags::NONE,
        });
        f
    }

    #[test]
    fn export_streams_the_records_then_the_bodies_as_stored() {
        let f = source();
        let all = export(&f, ExportPart::Records, None, 32 << 20);
        assert_eq!((all.next, all.modseq), (None, f.account(ALICE).modseq));
        let cfs: Vec<&str> = all.records.iter().map(|r| r.cf.as_str()).collect();
        let count = |cf: &str| cfs.iter().filter(|c| **c == cf).count();
        assert_eq!(cfs[0], CF_ACCOUNT);
        assert_eq!(
            (
                count("account"),
                count("folder"),
                count("index"),
                count("msgloc"),
                count("dedupe")
            ),
            (1, 6, 3, 3, 3)
        );
        assert_eq!(count("changes") as u64, f.account(ALICE).modseq);
        let mut order = cfs.clone();
        order.dedup();
        assert_eq!(
            order,
            ["account", "folder", "index", "msgloc", "dedupe", "changes"]
        );
        // Values exactly as stored, crc included; nothing of Bob's.
        for r in &all.records {
            assert_eq!(f.raw(&r.cf, &r.key).as_ref(), Some(&r.value), "{r:?}");
            assert!(r.key.starts_with(ALICE.as_bytes()));
        }
        let bodies = export(&f, ExportPart::Bodies, None, 32 << 20);
        assert_eq!(bodies.next, None);
        let expected: Vec<RawRecord> = (1..=3)
            .map(|n| RawRecord {
                cf: CF_BODY.into(),
                key: keys::msg(ALICE, n),
                value: keys::encode_body(&body(n as u8)),
            })
            .collect();
        assert_eq!(bodies.records, expected);
        let keys_only = expect_reply!(
            f.ok(Op::Export { target: t(ALICE), part: ExportPart::Bodies, after: None, max_bytes: 1000, keys_only: true }),
            Reply::Export(c) => c
        );
        let stripped: Vec<_> = expected
            .into_iter()
            .map(|r| RawRecord { value: vec![], ..r })
            .collect();
        assert_eq!(keys_only.records, stripped);
    }

    #[test]
    fn export_in_small_chunks_resumes_by_cursor_and_loses_nothing() {
        let f = source();
        for part in [ExportPart::Records, ExportPart::Bodies] {
            let whole = export(&f, part, None, 32 << 20).records;
            let chunks = export_all(&f, part, 1);
            assert!(chunks.iter().all(|c| c.len() == 1), "{chunks:?}");
            assert_eq!(chunks.concat(), whole);
        }
        assert_eq!(
            f.err(Op::Export {
                target: t(ALICE),
                part: ExportPart::Bodies,
                after: Some(("index".into(), vec![])),
                max_bytes: 10,
                keys_only: false
            }),
            XfsError::BadRequest {
                why: "cursor names \"index\", not part of this export".into()
            }
        );
    }

    #[test]
    fn a_mailbox_moves_through_import_digest_freeze_finish_mark_moved_and_purge() {
        let src = source();
        let dst = Fixture::new();
        let begin = Op::BeginImport {
            target: t2(ALICE),
            from: "store-a".into(),
        };
        assert_eq!(dst.ok(begin.clone()), Reply::Done);
        assert_eq!(dst.ok(begin.clone()), Reply::Done);
        let rec =
            expect_reply!(dst.ok(Op::AccountRecord { target: t(ALICE) }), Reply::Account(a) => a);
        assert_eq!(
            (rec.state, rec.epoch, rec.messages),
            (
                AccountState::Importing {
                    from: "store-a".into()
                },
                2,
                0
            )
        );
        // Bulk copy of the bodies while the user works, then the records.
        for chunk in export_all(&src, ExportPart::Bodies, 100) {
            let n = chunk.len() as u64;
            assert_eq!(import(&dst, chunk), Ok(Reply::Count(n)));
        }
        // Bodies alone are not the mailbox: the digest covers every other record.
        assert_ne!(digest(&dst), digest(&src));
        for chunk in export_all(&src, ExportPart::Records, 200) {
            let n = chunk.len() as u64;
            assert_eq!(import(&dst, chunk), Ok(Reply::Count(n)));
        }
        // Identical copies.
        let d = digest(&src);
        assert_eq!(digest(&dst), d);
        let bytes: u64 = (1..=3).map(|n| body(n).len() as u64).sum();
        let modseq = src.account(ALICE).modseq;
        assert_eq!(
            (d.messages, d.folders, d.body_bytes, d.records),
            (3, 6, bytes, 6 + 3 + 3 + modseq)
        );
        // Still arriving: the copy is frozen to everyone, and its account stays Importing.
        assert_eq!(
            dst.err(Op::GetAuth { target: t2(ALICE) }),
            XfsError::Frozen {
                retry_after_ms: 100
            }
        );
        let rec =
            expect_reply!(dst.ok(Op::AccountRecord { target: t(ALICE) }), Reply::Account(a) => a);
        assert_eq!(
            rec.state,
            AccountState::Importing {
                from: "store-a".into()
            }
        );
        assert_eq!(rec.messages, 3);

        // A change at the source shows in its digest.
        src.deliver(ALICE, mail(4));
        assert_ne!(digest(&src), d);
        assert_eq!(src.ok(Op::Freeze { target: t(ALICE) }), Reply::Done);
        assert_eq!(src.ok(Op::Freeze { target: t(ALICE) }), Reply::Done);
        assert_eq!(
            src.err(Op::Deliver {
                target: t(ALICE),
                delivery: mail(5)
            }),
            XfsError::Frozen {
                retry_after_ms: 100
            }
        );
        // The final delta: every non-body record replaced, the new body copied.
        let records = export_all(&src, ExportPart::Records, 32 << 20).concat();
        assert_eq!(
            dst.ok(Op::Import {
                target: t2(ALICE),
                records,
                delete: vec![],
                reset_records: true,
            }),
            Reply::Count(1 + 6 + 4 + 4 + 4 + src.account(ALICE).modseq)
        );
        let new_body = export_all(&src, ExportPart::Bodies, 32 << 20)
            .concat()
            .into_iter()
            .filter(|r| r.key == keys::msg(ALICE, 4))
            .collect();
        import(&dst, new_body).unwrap();
        assert_eq!(digest(&dst), digest(&src));

        // The commit at the target: live at the new epoch, every message byte for byte.
        assert_eq!(dst.ok(Op::FinishImport { target: t2(ALICE) }), Reply::Done);
        assert_eq!(dst.ok(Op::FinishImport { target: t2(ALICE) }), Reply::Done);
        let live = dst.account(ALICE);
        let old = src.account(ALICE);
        assert_eq!(
            live,
            xfs::AccountInfo {
                state: AccountState::Active,
                epoch: 2,
                ..old
            }
        );
        for n in 1..=4 {
            let (a, b) = (src.fetch(ALICE, n).unwrap(), dst.fetch(ALICE, n).unwrap());
            assert_eq!((a, b.body.clone()), (b, body(n as u8)));
        }
        assert_eq!(dst.folders(ALICE), src.folders(ALICE));
        // A retried commit carrying an older epoch is refused, not applied.
        assert!(matches!(
            dst.err(Op::FinishImport { target: t(ALICE) }),
            XfsError::BadRequest { .. }
        ));
        assert_eq!(dst.account(ALICE).epoch, 2);

        // The source points callers at the new place, then goes.
        let mark = |to: &str, epoch| Op::MarkMoved {
            target: t(ALICE),
            to: to.into(),
            epoch,
        };
        assert_eq!(src.ok(mark("store-b", 2)), Reply::Done);
        assert_eq!(src.ok(mark("store-b", 2)), Reply::Done);
        assert!(matches!(
            src.err(mark("store-c", 3)),
            XfsError::BadRequest { .. }
        ));
        assert_eq!(
            src.err(Op::GetAuth { target: t(ALICE) }),
            XfsError::Moved {
                to: "store-b".into(),
                epoch: 2
            }
        );
        assert!(matches!(
            src.err(Op::Unfreeze { target: t(ALICE) }),
            XfsError::BadRequest { .. }
        ));
        assert_eq!(src.ok(Op::Purge { target: t(ALICE) }), Reply::Done);
        assert_eq!(src.stored_keys(ALICE), vec![]);
        assert_eq!(
            src.err(Op::GetAccount { target: t(ALICE) }),
            XfsError::NoSuchUser
        );
        // Bob never moved.
        assert_eq!(src.fetch(BOB, 1).unwrap().body, body(9));
    }

    #[test]
    fn unfreeze_makes_a_frozen_mailbox_writable_again() {
        let f = source();
        f.ok(Op::Freeze { target: t(ALICE) });
        assert_eq!(f.account(ALICE).state, AccountState::Frozen);
        assert_eq!(f.ok(Op::Unfreeze { target: t(ALICE) }), Reply::Done);
        assert_eq!(f.ok(Op::Unfreeze { target: t(ALICE) }), Reply::Done);
        assert_eq!(f.account(ALICE).state, AccountState::Active);
        assert!(!f.deliver(ALICE, mail(4)).3);
        // A frozen mailbox may also be marked moved directly.
        f.ok(Op::Freeze { target: t(ALICE) });
        f.ok(Op::MarkMoved {
            target: t(ALICE),
            to: "store-b".into(),
            epoch: 5,
        });
        assert!(matches!(
            f.err(Op::Freeze { target: t(ALICE) }),
            XfsError::BadRequest { .. }
        ));
    }

    #[test]
    fn begin_import_refuses_a_mailbox_that_is_already_here() {
        let f = source();
        assert_eq!(
            f.err(Op::BeginImport {
                target: t2(ALICE),
                from: "store-a".into()
            }),
            XfsError::AlreadyExists {
                what: format!("mailbox {ALICE} (Active)")
            }
        );
        assert_eq!(f.account(ALICE).epoch, 1);
    }

    #[test]
    fn import_checks_every_record_and_writes_nothing_when_one_is_wrong() {
        let src = source();
        let dst = Fixture::new();
        dst.create(BOB);
        dst.ok(Op::BeginImport {
            target: t2(ALICE),
            from: "store-a".into(),
        });
        let records = export(&src, ExportPart::Records, None, 32 << 20).records;
        let good = records[1].clone();
        let before = dst.stored_keys(ALICE);
        let bad_cases: [(RawRecord, XfsError); 3] = [
            (
                RawRecord {
                    key: keys::folder(BOB, 1),
                    ..good.clone()
                },
                XfsError::BadRequest {
                    why: format!("a folder key outside mailbox {ALICE}"),
                },
            ),
            (
                RawRecord {
                    key: ALICE.as_bytes().to_vec(),
                    ..good.clone()
                },
                XfsError::BadRequest {
                    why: format!("a folder key outside mailbox {ALICE}"),
                },
            ),
            (
                RawRecord {
                    cf: "nonsense".into(),
                    ..good.clone()
                },
                XfsError::BadRequest {
                    why: "no column family \"nonsense\"".into(),
                },
            ),
        ];
        for (bad, err) in bad_cases {
            assert_eq!(import(&dst, vec![good.clone(), bad]), Err(err));
        }
        let mut damaged = good.clone();
        damaged.value[5] ^= 1;
        assert!(matches!(
            import(&dst, vec![good.clone(), damaged]),
            Err(XfsError::Corrupt { .. })
        ));
        assert_eq!(dst.stored_keys(ALICE), before);
        assert_eq!(
            dst.exec(Op::Import {
                target: t2(ALICE),
                records: vec![],
                delete: vec![(CF_ACCOUNT.into(), keys::account(ALICE))],
                reset_records: false,
            }),
            Err(XfsError::BadRequest {
                why: "the account record cannot be deleted by an import".into()
            })
        );
        // Good records go in; an imported account record keeps the copy Importing.
        assert_eq!(
            import(&dst, records.clone()),
            Ok(Reply::Count(records.len() as u64))
        );
        let rec =
            expect_reply!(dst.ok(Op::AccountRecord { target: t(ALICE) }), Reply::Account(a) => a);
        assert_eq!(
            rec.state,
            AccountState::Importing {
                from: "store-a".into()
            }
        );
        // A delete removes one record; a reset removes every non-body record first.
        let index_key = keys::index(ALICE, 1, 1);
        dst.ok(Op::Import {
            target: t2(ALICE),
            records: vec![],
            delete: vec![(CF_INDEX.into(), index_key.clone())],
            reset_records: false,
        });
        assert_eq!(dst.raw(CF_INDEX, &index_key), None);
        assert!(dst.raw(CF_FOLDER, &keys::folder(ALICE, 1)).is_some());
        dst.ok(Op::Import {
            target: t2(ALICE),
            records: vec![],
            delete: vec![],
            reset_records: true,
        });
        let left: Vec<_> = dst
            .stored_keys(ALICE)
            .into_iter()
            .map(|(cf, _)| cf)
            .collect();
        assert_eq!(left, vec![CF_ACCOUNT]);
        // Only into a copy being imported.
        assert_eq!(
            dst.exec(Op::Import {
                target: t(BOB),
                records: vec![],
                delete: vec![],
                reset_records: false,
            }),
            Err(XfsError::BadRequest {
                why: format!("mailbox {BOB} is Active, not being imported")
            })
        );
    }

    #[test]
    fn purge_removes_only_a_moved_out_or_abandoned_copy() {
        let f = source();
        for state in ["Active", "Frozen"] {
            if state == "Frozen" {
                f.ok(Op::Freeze { target: t(ALICE) });
            }
            assert_eq!(
                f.err(Op::Purge { target: t(ALICE) }),
                XfsError::BadRequest {
                    why: format!(
                        "mailbox {ALICE} is {state}: only a moved-out or abandoned copy is purged"
                    )
                }
            );
        }
        assert!(f.fetch(ALICE, 1).is_ok());
        // An import abandoned half-way.
        let dst = Fixture::new();
        dst.ok(Op::BeginImport {
            target: t2(ALICE),
            from: "store-a".into(),
        });
        import(&dst, export(&f, ExportPart::Bodies, None, 32 << 20).records).unwrap();
        assert_eq!(dst.ok(Op::Purge { target: t2(ALICE) }), Reply::Done);
        assert_eq!(dst.stored_keys(ALICE), vec![]);
    }
}
