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
/// Signed-out sessions an account remembers until their tokens expire. One more ends every
/// session of the account instead (the generation moves on and the list starts again), so the
/// record stays small however often its user signs out.
pub const MAX_ENDED_SESSIONS: usize = 256;

/// The first session generation of a new account: the creation time in microseconds, so an
/// address deleted and created again never starts at a generation an old owner's token holds.
fn first_generation(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1000)
}

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
            session_gen: first_generation(now),
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

    /// Sign-out: refuse the session `sid` until `until` (seconds since the epoch).
    pub(in crate::segment) fn end_session(
        &self,
        user: &str,
        sid: &str,
        until: u64,
    ) -> Result<Reply, XfsError> {
        let now = now_ms() / 1000;
        self.mutate(user, |tx| {
            let ended = &mut tx.acc.ended_sessions;
            ended.retain(|(_, until)| *until > now);
            if until > now && !ended.iter().any(|(s, _)| s == sid) {
                if ended.len() >= MAX_ENDED_SESSIONS {
                    tx.acc.session_gen += 1;
                    ended.clear();
                } else {
                    ended.push((sid.to_string(), until));
                }
            }
            Ok(Reply::Done)
        })
    }

    /// `Ok` when a session of `user` at generation `gen` with id `sid` may act on the mailbox:
    /// the account's generation, and not signed out.
    pub fn check_session(&self, user: &str, gen: u64, sid: &str) -> Result<(), XfsError> {
        let acc = self.account(user)?;
        let refused = |why: &str| {
            Err(XfsError::SessionRefused {
                why: why.to_string(),
            })
        };
        if acc.session_gen != gen {
            return refused(
                "the session ended: the password was changed, or the address is another account",
            );
        }
        let now = now_ms() / 1000;
        if acc
            .ended_sessions
            .iter()
            .any(|(s, until)| s == sid && *until > now)
        {
            return refused("the session was signed out");
        }
        Ok(())
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
                tx.acc.ended_sessions.clear();
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
            let acc = AccountRec::decode(&v)?;
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

#[cfg(test)]
mod tests {
    use xfs::{AccountInfo, FolderInfo, Op, Reply, Target, XfsError, SYSTEM_FOLDERS};

    use super::MAX_ENDED_SESSIONS;
    use crate::keys;
    use crate::segment::fixture::{expect_reply, mail, t, Fixture, ALICE, BOB};
    use crate::segment::now_ms;
    use crate::segment::records::AccountRec;

    #[test]
    fn create_account_answers_the_new_account_with_the_system_folders() {
        let f = Fixture::new();
        let before = now_ms();
        let a = f.create(ALICE);
        let after = now_ms();
        assert!((before..=after).contains(&a.created_ms), "{a:?}");
        assert_eq!(
            a,
            AccountInfo {
                user: ALICE.into(),
                display_name: "Alice A.".into(),
                created_ms: a.created_ms,
                last_login_ms: 0,
                quota_bytes: 0,
                used_bytes: 0,
                messages: 0,
                state: xfs::AccountState::Active,
                session_gen: a.created_ms * 1000,
                epoch: 1,
                modseq: 1,
            }
        );
        assert_eq!(f.account(ALICE), a);
        let folders = f.folders(ALICE);
        let names: Vec<_> = folders.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, SYSTEM_FOLDERS);
        for (i, fi) in folders.iter().enumerate() {
            let uidvalidity = ((a.created_ms / 1000) as u32).wrapping_add(i as u32);
            assert_eq!(
                *fi,
                FolderInfo {
                    name: SYSTEM_FOLDERS[i].into(),
                    uidvalidity,
                    uidnext: 1,
                    total: 0,
                    unread: 0,
                    bytes: 0,
                }
            );
        }
        assert_eq!(
            f.changes(ALICE, 0, 10).changes[0].kind,
            xfs::ChangeKind::AccountCreated
        );
    }

    #[test]
    fn create_account_takes_the_epoch_and_quota_and_refuses_a_second_copy_or_a_bad_id() {
        let f = Fixture::new();
        let op = |user: &str| Op::CreateAccount {
            target: Target::new(user, 0, 9),
            account: xfs::NewAccount {
                password_hash: "h".into(),
                display_name: "B".into(),
                quota_bytes: 1234,
            },
        };
        let b = expect_reply!(f.ok(op(BOB)), Reply::Account(a) => a);
        assert_eq!((b.epoch, b.quota_bytes), (9, 1234));
        assert!(matches!(
            f.err(op(BOB)),
            XfsError::AlreadyExists { what } if what == format!("account {BOB}")
        ));
        for bad in [
            "Bob@example.test",
            "bob",
            "bob @example.test",
            "",
            "a@b\u{7}",
        ] {
            assert!(
                matches!(f.err(op(bad)), XfsError::BadRequest { .. }),
                "{bad:?}"
            );
        }
        let long = format!("{}@example.test", "a".repeat(250));
        assert!(matches!(f.err(op(&long)), XfsError::BadRequest { .. }));
        assert_eq!(f.seg().list_accounts(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn delete_account_removes_every_record_of_that_mailbox_only() {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        f.deliver(ALICE, mail(1));
        f.deliver(BOB, mail(1));
        let bob_keys = f.stored_keys(BOB);
        assert!(f.stored_keys(ALICE).len() > 5);
        assert_eq!(f.ok(Op::DeleteAccount { target: t(ALICE) }), Reply::Done);
        assert_eq!(f.stored_keys(ALICE), vec![]);
        assert_eq!(f.stored_keys(BOB), bob_keys);
        assert_eq!(
            f.err(Op::GetAccount { target: t(ALICE) }),
            XfsError::NoSuchUser
        );
        assert_eq!(
            f.err(Op::DeleteAccount { target: t(ALICE) }),
            XfsError::NoSuchUser
        );
        // The name is free again, and the delivery id is forgotten with the mailbox.
        f.create(ALICE);
        assert_eq!(f.deliver(ALICE, mail(1)), (1, "Inbox".into(), 1, false));
    }

    #[test]
    fn get_auth_answers_what_login_checks() {
        let f = Fixture::new();
        let gen = f.create(ALICE).session_gen;
        assert_eq!(
            f.ok(Op::GetAuth { target: t(ALICE) }),
            Reply::Auth(xfs::AuthRecord {
                password_hash: "$argon2id$hash".into(),
                display_name: "Alice A.".into(),
                session_gen: gen,
                state: xfs::AccountState::Active,
            })
        );
        assert_eq!(f.err(Op::GetAuth { target: t(BOB) }), XfsError::NoSuchUser);
    }

    #[test]
    fn record_login_keeps_the_latest_sign_in() {
        let f = Fixture::new();
        f.create(ALICE);
        let login = |at_ms| Op::RecordLogin {
            target: t(ALICE),
            at_ms,
        };
        assert_eq!(f.ok(login(5_000)), Reply::Done);
        assert_eq!(f.account(ALICE).last_login_ms, 5_000);
        f.ok(login(4_000));
        assert_eq!(f.account(ALICE).last_login_ms, 5_000);
        f.ok(login(6_000));
        let a = f.account(ALICE);
        assert_eq!((a.last_login_ms, a.modseq), (6_000, 1));
        assert_eq!(
            f.err(Op::RecordLogin {
                target: t(BOB),
                at_ms: 1
            }),
            XfsError::NoSuchUser
        );
    }

    #[test]
    fn update_account_changes_only_the_given_fields_and_a_password_bumps_the_generation() {
        let f = Fixture::new();
        let gen = f.create(ALICE).session_gen;
        let update = |d: Option<&str>, p: Option<&str>, q: Option<u64>| Op::UpdateAccount {
            target: t(ALICE),
            display_name: d.map(str::to_string),
            password_hash: p.map(str::to_string),
            quota_bytes: q,
        };
        assert_eq!(f.ok(update(Some("Alice B."), None, None)), Reply::Done);
        let a = f.account(ALICE);
        assert_eq!(
            (
                a.display_name.as_str(),
                a.session_gen,
                a.quota_bytes,
                a.modseq
            ),
            ("Alice B.", gen, 0, 2)
        );
        f.ok(update(None, Some("new-hash"), Some(10_000)));
        let a = f.account(ALICE);
        assert_eq!(
            (
                a.display_name.as_str(),
                a.session_gen,
                a.quota_bytes,
                a.modseq
            ),
            ("Alice B.", gen + 1, 10_000, 3)
        );
        let auth = expect_reply!(f.ok(Op::GetAuth { target: t(ALICE) }), Reply::Auth(a) => a);
        assert_eq!(
            (auth.password_hash.as_str(), auth.session_gen),
            ("new-hash", gen + 1)
        );
        let kinds: Vec<_> = f
            .changes(ALICE, 1, 10)
            .changes
            .into_iter()
            .map(|c| c.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                xfs::ChangeKind::AccountUpdated,
                xfs::ChangeKind::AccountUpdated
            ]
        );
    }

    #[test]
    fn account_record_answers_in_every_state_a_deleted_one_included() {
        let f = Fixture::new();
        f.create(ALICE);
        f.ok(Op::SoftDelete { target: t(ALICE) });
        assert_eq!(
            f.err(Op::GetAccount { target: t(ALICE) }),
            XfsError::NoSuchUser
        );
        let a = expect_reply!(f.ok(Op::AccountRecord { target: t(ALICE) }), Reply::Account(a) => a);
        assert_eq!(
            (a.user.as_str(), a.display_name.as_str()),
            (ALICE, "Alice A.")
        );
        assert!(matches!(a.state, xfs::AccountState::Deleted { .. }));
        assert_eq!(
            f.err(Op::AccountRecord { target: t(BOB) }),
            XfsError::NoSuchUser
        );
    }

    #[test]
    fn list_accounts_pages_in_user_order_with_deleted_ones_and_last_sign_in() {
        let f = Fixture::new();
        let users = ["c@x.test", "a@x.test", "b@x.test", "d@x.test"];
        for u in users {
            f.create(u);
        }
        f.ok(Op::RecordLogin {
            target: t("b@x.test"),
            at_ms: 77,
        });
        f.ok(Op::SoftDelete {
            target: t("c@x.test"),
        });
        let list = |after: Option<&str>, limit| {
            expect_reply!(
                f.ok(Op::ListAccounts { segment: 0, after: after.map(str::to_string), limit }),
                Reply::Accounts(a) => a
            )
        };
        let all = list(None, 100);
        let names: Vec<_> = all.iter().map(|a| a.user.as_str()).collect();
        assert_eq!(names, ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
        assert_eq!((all[0].last_login_ms, all[1].last_login_ms), (0, 77));
        assert_eq!(all[0].state, xfs::AccountState::Active);
        assert!(matches!(all[2].state, xfs::AccountState::Deleted { .. }));
        let p1 = list(None, 2);
        assert_eq!(p1, all[..2]);
        let p2 = list(Some(&p1[1].user), 2);
        assert_eq!(p2, all[2..]);
        assert_eq!(list(Some("d@x.test"), 2), vec![]);
        // A limit of 0 still answers one account.
        assert_eq!(list(None, 0), all[..1]);
        assert!(matches!(
            f.err(Op::ListAccounts {
                segment: 3,
                after: None,
                limit: 1
            }),
            XfsError::BadRequest { .. }
        ));
    }

    #[test]
    fn sessions_end_at_sign_out_at_a_password_change_and_with_the_account() {
        let f = Fixture::new();
        let gen = f.create(ALICE).session_gen;
        let seg = f.seg();
        let later = now_ms() / 1000 + 3600;
        let end = |sid: &str, until| Op::EndSession {
            target: t(ALICE),
            sid: sid.into(),
            until,
        };
        assert_eq!(seg.check_session(ALICE, gen, "s1"), Ok(()));
        assert!(matches!(
            seg.check_session(ALICE, gen - 1, "s1"),
            Err(XfsError::SessionRefused { .. })
        ));
        assert_eq!(f.ok(end("s1", later)), Reply::Done);
        assert_eq!(f.ok(end("s1", later)), Reply::Done, "idempotent");
        assert!(matches!(
            seg.check_session(ALICE, gen, "s1"),
            Err(XfsError::SessionRefused { .. })
        ));
        assert_eq!(seg.check_session(ALICE, gen, "s2"), Ok(()));
        // A sign-out whose token has already expired is not remembered.
        f.ok(end("old", 1));
        assert_eq!(seg.check_session(ALICE, gen, "old"), Ok(()));
        // A password change ends every session, and forgets the list.
        f.ok(Op::UpdateAccount {
            target: t(ALICE),
            display_name: None,
            password_hash: Some("h2".into()),
            quota_bytes: None,
        });
        assert!(seg.check_session(ALICE, gen, "s2").is_err());
        assert_eq!(seg.check_session(ALICE, gen + 1, "s1"), Ok(()));
        // Past the limit of remembered sign-outs, every session ends instead.
        for i in 0..MAX_ENDED_SESSIONS {
            f.ok(end(&format!("x{i}"), later));
        }
        assert!(seg.check_session(ALICE, gen + 1, "x0").is_err());
        assert_eq!(seg.check_session(ALICE, gen + 1, "live"), Ok(()));
        f.ok(end("one-more", later));
        assert!(seg.check_session(ALICE, gen + 1, "live").is_err());
        assert_eq!(seg.check_session(ALICE, gen + 2, "live"), Ok(()));
        // Deleted and created again: the old generation never matches.
        f.ok(Op::DeleteAccount { target: t(ALICE) });
        assert_eq!(
            seg.check_session(ALICE, gen + 2, "live"),
            Err(XfsError::NoSuchUser)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = f.create(ALICE).session_gen;
        assert!(again > gen + 2, "{again} after {gen}");
        assert!(seg.check_session(ALICE, gen + 2, "live").is_err());
    }

    #[test]
    fn an_account_record_of_the_layout_before_sign_outs_still_reads() {
        #[derive(serde::Serialize)]
        struct V1 {
            display_name: String,
            password_hash: String,
            created_ms: u64,
            last_login_ms: u64,
            quota_bytes: u64,
            used_bytes: u64,
            messages: u64,
            state: xfs::AccountState,
            session_gen: u64,
            epoch: u64,
            modseq: u64,
            next_msg: u64,
            next_folder: u32,
        }
        let old = keys::encode(&V1 {
            display_name: "Old".into(),
            password_hash: "h".into(),
            created_ms: 5,
            last_login_ms: 6,
            quota_bytes: 7,
            used_bytes: 8,
            messages: 9,
            state: xfs::AccountState::Active,
            session_gen: 10,
            epoch: 11,
            modseq: 12,
            next_msg: 13,
            next_folder: 14,
        });
        let acc = AccountRec::decode(&old).unwrap();
        assert_eq!(
            (acc.display_name.as_str(), acc.session_gen, acc.next_folder),
            ("Old", 10, 14)
        );
        assert!(acc.ended_sessions.is_empty());
        let current = keys::encode(&acc);
        assert_eq!(AccountRec::decode(&current).unwrap().modseq, 12);
        assert!(AccountRec::decode(&current[..current.len() - 1]).is_err());
    }
}
