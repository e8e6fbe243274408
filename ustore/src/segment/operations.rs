//! `Segment::execute`: the dispatch of every mailbox operation to a function of its own. The
//! mailbox's own operations live in the submodules (accounts, messages, folders, search,
//! statistics); moves, soft deletes and restores in `migrate`, `softdelete` and `restore`.

use std::path::Path;

use xfs::{Op, Reply, XfsError};

use super::migrate::Moving;
use super::{bad, validate_user, Segment};
use crate::metrics;

pub(super) mod account;
mod folders;
mod messages;
mod queue;
mod search;
mod stats;

impl Segment {
    /// Run one operation. Blocking: call from a blocking thread.
    pub fn execute(&self, op: Op) -> Result<Reply, XfsError> {
        if let Some(t) = op.target() {
            validate_user(&t.user)?;
        }
        match op {
            Op::CreateAccount { target, account } => self.create_account(&target, account),
            Op::DeleteAccount { target } => self.delete_account(&target.user),
            Op::GetAccount { target } => self.get_account(&target.user),
            Op::GetAuth { target } => self.get_auth(&target.user),
            Op::RecordLogin { target, at_ms } => self.record_login(&target.user, at_ms),
            Op::EndSession { target, sid, until } => self.end_session(&target.user, &sid, until),
            Op::UpdateAccount {
                target,
                display_name,
                password_hash,
                quota_bytes,
            } => self.update_account(&target.user, display_name, password_hash, quota_bytes),
            Op::AccountRecord { target } => self.account_record(&target.user),
            Op::Deliver { target, delivery } => self.deliver(&target.user, delivery),
            Op::Submit { target, submission } => self.submit(&target.user, submission),
            Op::ReportQueue {
                target,
                id,
                token,
                mta,
                outcome,
            } => self.report_queue(&target.user, id, token, &mta, outcome),
            Op::MailboxQueue {
                target,
                after,
                limit,
            } => self.mailbox_queue(&target.user, after, limit),
            Op::RetryQueue { target, id } => self.retry_queue(&target.user, id),
            Op::CancelQueued { target, id, bounce } => {
                self.cancel_queued(&target.user, id, bounce, "postmaster")
            }
            Op::ListFolders { target } => self.list_folders(&target.user),
            Op::ListFolder {
                target,
                folder,
                offset,
                limit,
                before_uid,
            } => metrics::count_page_reads(|| {
                self.list_folder(&target.user, &folder, offset, limit, before_uid)
            }),
            Op::Fetch {
                target,
                msg,
                mark_seen,
            } => self.fetch(&target.user, msg, mark_seen),
            Op::SetFlags {
                target,
                msgs,
                add,
                remove,
            } => self.set_flags(&target.user, msgs, add, remove),
            Op::Move {
                target,
                msgs,
                to_folder,
            } => self.move_msgs(&target.user, msgs, &to_folder),
            Op::Expunge { target, msgs } => self.delete_msgs(&target.user, msgs),
            Op::EmptyFolder { target, folder } => self.empty_folder(&target.user, &folder),
            Op::CreateFolder { target, name } => self.create_folder(&target.user, &name),
            Op::RenameFolder { target, from, to } => self.rename_folder(&target.user, &from, &to),
            Op::DeleteFolder { target, name } => self.delete_folder(&target.user, name),
            Op::Search { target, query } => self.search(&target.user, &query),
            Op::MailboxStats { target } => self.mailbox_stats(&target.user),
            Op::Changes {
                target,
                since,
                limit,
            } => self.changes(&target.user, since, limit),
            Op::Export {
                target,
                part,
                after,
                max_bytes,
                keys_only,
            } => self.export(&target.user, part, after, max_bytes, keys_only),
            Op::BeginImport { target, from } => self.begin_import(&target, &from),
            Op::Import {
                target,
                records,
                delete,
                reset_records,
            } => self.import(&target.user, records, delete, reset_records),
            Op::FinishImport { target } => self.finish_import(&target),
            Op::Freeze { target } => self.set_moving_state(&target.user, Moving::Freeze),
            Op::Unfreeze { target } => self.set_moving_state(&target.user, Moving::Unfreeze),
            Op::MarkMoved { target, to, epoch } => {
                self.set_moving_state(&target.user, Moving::MarkMoved { to, epoch })
            }
            Op::Purge { target } => self.purge(&target.user),
            Op::Digest { target } => self.digest(&target.user),
            Op::SoftDelete { target } => self.soft_delete(&target.user),
            Op::Undelete { target } => self.undelete(&target),
            Op::RestoreMailbox { target, dir } => self.restore_mailbox(&target, Path::new(&dir)),
            Op::Ping
            | Op::StoreStats
            | Op::Checkpoint { .. }
            | Op::ListAccounts { .. }
            | Op::LeaseQueue { .. }
            | Op::ListQueue { .. }
            | Op::BackupAccount { .. } => Err(bad("not a mailbox operation")),
        }
    }
}

#[cfg(test)]
mod tests {
    use xfs::{Op, Reply, Target, XfsError};

    use crate::segment::fixture::{t, Fixture, ALICE};

    #[test]
    fn the_store_answers_ping_and_a_segment_refuses_what_is_not_about_a_mailbox() {
        let f = Fixture::new();
        assert_eq!(f.ok(Op::Ping), Reply::Pong);
        let not_mailbox = [
            Op::Ping,
            Op::StoreStats,
            Op::Checkpoint {
                segment: 0,
                dir: f.path("cp").display().to_string(),
            },
            Op::ListAccounts {
                segment: 0,
                after: None,
                limit: 10,
            },
            Op::BackupAccount {
                dir: f.path("cp").display().to_string(),
                user: ALICE.into(),
            },
        ];
        for op in not_mailbox {
            let name = op.name();
            assert_eq!(
                f.seg().execute(op),
                Err(XfsError::BadRequest {
                    why: "not a mailbox operation".into()
                }),
                "{name}"
            );
        }
        assert!(!f.path("cp").exists());
    }

    #[test]
    fn a_bad_user_id_or_an_unknown_segment_is_refused_before_any_work() {
        let f = Fixture::new();
        f.create(ALICE);
        assert_eq!(
            f.err(Op::GetAccount {
                target: t("Alice@example.test")
            }),
            XfsError::BadRequest {
                why: "not a valid user id: \"Alice@example.test\"".into()
            }
        );
        assert_eq!(
            f.err(Op::GetAccount {
                target: Target::new(ALICE, 7, 1)
            }),
            XfsError::BadRequest {
                why: "segment 7 is not served by store test-store".into()
            }
        );
        assert_eq!(
            f.err(Op::SoftDelete {
                target: t("no-at-sign")
            }),
            XfsError::BadRequest {
                why: "not a valid user id: \"no-at-sign\"".into()
            }
        );
        assert_eq!(f.account(ALICE).state, xfs::AccountState::Active);
    }
}
