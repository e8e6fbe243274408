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
        let acc = self.account(user)?;
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

