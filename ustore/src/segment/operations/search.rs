//! Search: a case-insensitive substring over the index summaries and, when asked, the bodies
//! (each body read is crc-checked: a damaged one fails the search rather than being skipped).

use xfs::{Reply, SearchQuery, XfsError};

use crate::keys::{self, prefix, prefix_end, CF_INDEX};
use crate::segment::records::{find_folder, folder_name_of, EntryRec};
use crate::segment::{bad, Segment, MAX_PAGE};

impl Segment {
    /// The matching entries, newest first, at most `q.limit` (100 when 0, `MAX_PAGE` at most).
    pub(in crate::segment) fn search(
        &self,
        user: &str,
        q: &SearchQuery,
    ) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let needle = q.text.to_lowercase();
        if needle.is_empty() {
            return Err(bad("empty search"));
        }
        let folders = self.folders(user)?;
        let (from, to) = match &q.folder {
            Some(name) => {
                let (fid, _) = find_folder(&folders, name)?;
                (keys::folder(user, fid), keys::folder(user, fid + 1))
            }
            None => (prefix(user), prefix_end(user)),
        };
        let all_fields = !q.in_from && !q.in_subject && !q.in_body;
        let limit = if q.limit == 0 {
            100
        } else {
            q.limit.min(MAX_PAGE)
        } as usize;
        let mut hits = Vec::new();
        for kv in self.scan(CF_INDEX, from, to, false) {
            let (k, v) = kv?;
            let Some((fid, uid)) = keys::parse_index(user, &k) else {
                continue;
            };
            let e: EntryRec = keys::decode(&v, CF_INDEX)?;
            let s = &e.summary;
            let mut hit = ((q.in_from || all_fields) && s.from.to_lowercase().contains(&needle))
                || ((q.in_subject || all_fields) && s.subject.to_lowercase().contains(&needle))
                || (all_fields
                    && (s.to.to_lowercase().contains(&needle)
                        || s.preview.to_lowercase().contains(&needle)));
            if !hit && (q.in_body || all_fields) {
                let body = self.body(user, e.msg, e.body_crc)?;
                hit = String::from_utf8_lossy(&body)
                    .to_lowercase()
                    .contains(&needle);
            }
            if hit {
                hits.push(e.into_entry(&folder_name_of(&folders, fid), uid));
            }
        }
        hits.sort_by_key(|e| std::cmp::Reverse(e.internal_date_ms));
        hits.truncate(limit);
        Ok(Reply::Hits(hits))
    }
}

