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

#[cfg(test)]
mod tests {
    use xfs::{IndexEntry, Op, Reply, SearchQuery, XfsError};

    use crate::segment::fixture::{mail, t, Fixture, ALICE};

    fn search(f: &Fixture, q: SearchQuery) -> Result<Vec<IndexEntry>, XfsError> {
        f.exec(Op::Search {
            target: t(ALICE),
            query: q,
        })
        .map(|r| match r {
            Reply::Hits(h) => h,
            r => panic!("search answered {r:?}"),
        })
    }

    fn msgs(hits: &[IndexEntry]) -> Vec<u64> {
        hits.iter().map(|e| e.msg).collect()
    }

    fn q(text: &str) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            ..Default::default()
        }
    }

    fn fixture() -> Fixture {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=3 {
            f.deliver(ALICE, mail(n));
        }
        let mut d = mail(4);
        d.summary.subject = "quarterly figures".into();
        d.summary.preview = String::new();
        d.body = b"Subject: quarterly figures\r\n\r\nthe NEEDLE is in the body\r\n"
            .to_vec()
            .into();
        d.internal_date_ms = 1;
        f.deliver(ALICE, d);
        f
    }

    #[test]
    fn search_matches_each_field_it_is_asked_for_case_insensitively() {
        let f = fixture();
        let subject = SearchQuery {
            in_subject: true,
            ..q("SUBJECT 2")
        };
        assert_eq!(msgs(&search(&f, subject).unwrap()), vec![2]);
        let from = SearchQuery {
            in_from: true,
            ..q("sender3@")
        };
        assert_eq!(msgs(&search(&f, from).unwrap()), vec![3]);
        let in_body = SearchQuery {
            in_body: true,
            ..q("needle")
        };
        assert_eq!(msgs(&search(&f, in_body).unwrap()), vec![4]);
        // Asked for the subject only, a word in the body is not found.
        let subject_only = SearchQuery {
            in_subject: true,
            ..q("needle")
        };
        assert_eq!(search(&f, subject_only).unwrap(), vec![]);
        // No field named: every summary field and the body.
        assert_eq!(msgs(&search(&f, q("needle")).unwrap()), vec![4]);
        assert_eq!(msgs(&search(&f, q("Preview 1")).unwrap()), vec![1]);
        assert_eq!(
            msgs(&search(&f, q("alice@example")).unwrap()),
            vec![3, 2, 1, 4]
        );
        assert_eq!(search(&f, q("nothing like this")).unwrap(), vec![]);
    }

    #[test]
    fn search_answers_newest_first_within_the_limit_and_the_folder() {
        let f = fixture();
        f.ok(Op::Move {
            target: t(ALICE),
            msgs: vec![1],
            to_folder: "Trash".into(),
        });
        let subject = || SearchQuery {
            in_subject: true,
            ..q("subject")
        };
        // All fields would also find message 4, whose body has the word.
        assert_eq!(msgs(&search(&f, q("subject")).unwrap()), vec![3, 2, 1, 4]);
        let hits = search(&f, subject()).unwrap();
        assert_eq!(msgs(&hits), vec![3, 2, 1]);
        let trashed = &hits[2];
        assert_eq!((trashed.folder.as_str(), trashed.uid), ("Trash", 1));
        assert_eq!(*trashed, f.page(ALICE, "Trash", 0, 1, None).entries[0]);
        let limited = SearchQuery {
            limit: 2,
            ..subject()
        };
        assert_eq!(msgs(&search(&f, limited).unwrap()), vec![3, 2]);
        let in_trash = SearchQuery {
            folder: Some("Trash".into()),
            ..subject()
        };
        assert_eq!(msgs(&search(&f, in_trash).unwrap()), vec![1]);
        let nowhere = SearchQuery {
            folder: Some("Nowhere".into()),
            ..q("subject")
        };
        assert_eq!(
            search(&f, nowhere),
            Err(XfsError::NoSuchFolder {
                name: "Nowhere".into()
            })
        );
        assert_eq!(
            search(&f, q("")),
            Err(XfsError::BadRequest {
                why: "empty search".into()
            })
        );
    }

    #[test]
    fn search_without_a_limit_answers_at_most_one_hundred() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=101 {
            f.deliver(ALICE, mail(n));
        }
        let hits = search(&f, q("alice")).unwrap();
        assert_eq!(hits.len(), 100);
        assert_eq!((hits[0].msg, hits[99].msg), (101, 2));
    }
}
