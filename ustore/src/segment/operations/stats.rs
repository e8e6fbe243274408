//! What a mailbox and a segment report about themselves: mailbox statistics, the change log,
//! and the segment's statistics and RocksDB tickers (for `StoreStats`).

use xfs::{Change, ChangePage, MailboxStats, Reply, SegmentStats, XfsError};

use crate::keys::{self, prefix_end, CF_ACCOUNT, CF_CHANGES};
use crate::segment::records::folder_infos;
use crate::segment::{dir_bytes, Segment, MAX_PAGE};

impl Segment {
    pub(in crate::segment) fn mailbox_stats(&self, user: &str) -> Result<Reply, XfsError> {
        let acc = self.live_account(user, false)?;
        let folders = self.folders(user)?;
        Ok(Reply::Stats(MailboxStats {
            account: acc.info(user),
            folders: folder_infos(&folders),
        }))
    }

    /// The change log after `since`, at most `limit` entries (and `MAX_PAGE * 10`).
    pub(in crate::segment) fn changes(
        &self,
        user: &str,
        since: u64,
        limit: u32,
    ) -> Result<Reply, XfsError> {
        // A copy that moved out answers `Moved`, as every read does: its log stops where the
        // move began, so a caller following it would miss what came after.
        let acc = self.live_account(user, false)?;
        let mut changes = Vec::new();
        let from = keys::change(user, since.saturating_add(1));
        for kv in self.scan(CF_CHANGES, from, prefix_end(user), false) {
            if changes.len() >= limit.min(MAX_PAGE * 10) as usize {
                break;
            }
            let (_, v) = kv?;
            changes.push(keys::decode::<Change>(&v, CF_CHANGES)?);
        }
        Ok(Reply::Changes(ChangePage {
            changes,
            modseq: acc.modseq,
        }))
    }

    pub fn stats(&self) -> SegmentStats {
        let accounts = self
            .db
            .property_int_value_cf(self.cf(CF_ACCOUNT), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0);
        SegmentStats {
            id: self.id,
            accounts,
            disk_bytes: dir_bytes(&self.path),
        }
    }

    pub fn ticker(&self, t: rocksdb::statistics::Ticker) -> u64 {
        self.opts.get_ticker_count(t)
    }
}

#[cfg(test)]
mod tests {
    use rocksdb::statistics::Ticker;
    use xfs::{ChangeKind, MailboxStats, Op, Reply, SegmentStats, XfsError};

    use crate::segment::fixture::{expect_reply, mail, t, Fixture, ALICE, BOB, MAX_IN_FLIGHT};
    use crate::segment::{dir_bytes, now_ms};

    #[test]
    fn mailbox_stats_is_the_account_and_its_folders() {
        let f = Fixture::new();
        f.create(ALICE);
        f.deliver(ALICE, mail(1));
        f.ok(Op::CreateFolder {
            target: t(ALICE),
            name: "Work".into(),
        });
        assert_eq!(
            f.ok(Op::MailboxStats { target: t(ALICE) }),
            Reply::Stats(MailboxStats {
                account: f.account(ALICE),
                folders: f.folders(ALICE),
            })
        );
        assert_eq!(f.folders(ALICE).len(), 6);
        assert_eq!(
            f.err(Op::MailboxStats { target: t(BOB) }),
            XfsError::NoSuchUser
        );
    }

    #[test]
    fn changes_pages_the_log_after_a_modseq() {
        let f = Fixture::new();
        let before = now_ms();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        let after = now_ms();
        let first = f.changes(ALICE, 0, 2);
        assert_eq!(first.modseq, 4);
        let seqs: Vec<_> = first.changes.iter().map(|c| c.modseq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(first.changes[0].kind, ChangeKind::AccountCreated);
        assert!(first
            .changes
            .iter()
            .all(|c| (before..=after).contains(&c.at_ms)));
        let rest = f.changes(ALICE, 2, 10);
        let kinds: Vec<_> = rest
            .changes
            .into_iter()
            .map(|c| (c.modseq, c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    3,
                    ChangeKind::Added {
                        msg: 2,
                        folder: "Inbox".into(),
                        uid: 2
                    }
                ),
                (
                    4,
                    ChangeKind::Added {
                        msg: 3,
                        folder: "Inbox".into(),
                        uid: 3
                    }
                ),
            ]
        );
        assert_eq!(f.changes(ALICE, 4, 10).changes, vec![]);
        assert_eq!(f.changes(ALICE, 0, 0).changes, vec![]);
        assert_eq!(f.changes(ALICE, u64::MAX, 10).changes, vec![]);
        assert_eq!(
            f.err(Op::Changes {
                target: t(BOB),
                since: 0,
                limit: 1
            }),
            XfsError::NoSuchUser
        );
    }

    #[test]
    fn store_stats_reports_the_segment_and_its_synced_writes() {
        let f = Fixture::new();
        f.create(ALICE);
        f.create(BOB);
        let stats = || expect_reply!(f.ok(Op::StoreStats), Reply::StoreStats(s) => s);
        let s = stats();
        assert_eq!(s.store, "test-store");
        assert_eq!(
            s.segments,
            vec![SegmentStats {
                id: 0,
                accounts: 2,
                disk_bytes: dir_bytes(f.seg().path()),
            }]
        );
        assert!(s.segments[0].disk_bytes > 0);
        assert_eq!(
            (s.in_flight, s.max_in_flight, s.shed_total),
            (0, MAX_IN_FLIGHT as u64, 0)
        );
        assert_eq!(s.wal_syncs, f.seg().ticker(Ticker::WalFileSynced));
        assert!(s.wal_syncs >= 2, "{s:?}");
        // One delivery is one synced batch: one more WAL sync here (the batch counter is the
        // process's, shared with other tests).
        f.deliver(ALICE, mail(1));
        let s2 = stats();
        assert_eq!(s2.wal_syncs, s.wal_syncs + 1);
        assert!(s2.sync_writes > s.sync_writes);
        assert!(s2.bytes_written > s.bytes_written);
    }
}
