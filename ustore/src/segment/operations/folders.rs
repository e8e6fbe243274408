//! Folder operations: the folder list, a folder's page (newest first, no body read), and
//! create, rename and delete (system folders refuse the last two).

use xfs::{ChangeKind, FolderPage, Reply, XfsError, SYSTEM_FOLDERS};

use crate::keys::{self, CF_FOLDER, CF_INDEX};
use crate::segment::records::{find_folder, folder_infos, EntryRec, FolderRec};
use crate::segment::transaction::Tx;
use crate::segment::{bad, Segment, MAX_FOLDER_NAME, MAX_PAGE};

fn validate_folder_name(name: &str) -> Result<(), XfsError> {
    if name.trim().is_empty() || name.len() > MAX_FOLDER_NAME || name.chars().any(char::is_control)
    {
        return Err(bad(format!("not a valid folder name: {name:?}")));
    }
    Ok(())
}

fn is_system(name: &str) -> bool {
    SYSTEM_FOLDERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

impl Segment {
    pub(in crate::segment) fn list_folders(&self, user: &str) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        Ok(Reply::Folders(folder_infos(&self.folders(user)?)))
    }

    /// Up to `limit` entries of `folder`, newest first, skipping `offset` below `before_uid`
    /// (or from the top): one reverse range scan of the index.
    pub(in crate::segment) fn list_folder(
        &self,
        user: &str,
        folder: &str,
        offset: u32,
        limit: u32,
        before_uid: Option<u32>,
    ) -> Result<Reply, XfsError> {
        self.live_account(user, false)?;
        let folders = self.folders(user)?;
        let (fid, frec) = find_folder(&folders, folder)?;
        let upper = match before_uid {
            Some(b) => keys::index(user, fid, b),
            None => keys::folder(user, fid + 1),
        };
        let mut entries = Vec::new();
        let it = self
            .scan(CF_INDEX, keys::folder(user, fid), upper, true)
            .skip(offset as usize)
            .take(limit.min(MAX_PAGE) as usize);
        for kv in it {
            let (k, v) = kv?;
            let (_, uid) = keys::parse_index(user, &k).ok_or_else(|| XfsError::Corrupt {
                what: "index key".into(),
            })?;
            let e: EntryRec = keys::decode(&v, CF_INDEX)?;
            entries.push(e.into_entry(&frec.name, uid));
        }
        Ok(Reply::Page(FolderPage {
            folder: frec.info(),
            entries,
            folders: folder_infos(&folders),
        }))
    }

    pub(in crate::segment) fn create_folder(
        &self,
        user: &str,
        name: &str,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            tx.create_folder(name)?;
            Ok(Reply::Done)
        })
    }

    pub(in crate::segment) fn rename_folder(
        &self,
        user: &str,
        from: &str,
        to: &str,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            tx.rename_folder(from, to)?;
            Ok(Reply::Done)
        })
    }

    /// Delete a folder and expunge its messages; how many went.
    pub(in crate::segment) fn delete_folder(
        &self,
        user: &str,
        name: String,
    ) -> Result<Reply, XfsError> {
        self.mutate(user, |tx| {
            if is_system(&name) {
                return Err(bad(format!("{name} is a system folder")));
            }
            let fid = tx.folder_id(&name)?;
            let n = tx.expunge_folder(fid)?;
            tx.batch
                .delete_cf(tx.seg.cf(CF_FOLDER), keys::folder(tx.user, fid));
            tx.folders.remove(&fid);
            tx.log(ChangeKind::FolderDeleted { name });
            Ok(Reply::Count(n))
        })
    }
}

impl Tx<'_> {
    fn create_folder(&mut self, name: &str) -> Result<(), XfsError> {
        validate_folder_name(name)?;
        if find_folder(&self.folders, name).is_ok() {
            return Err(XfsError::AlreadyExists {
                what: format!("folder {name}"),
            });
        }
        let fid = self.acc.next_folder;
        self.acc.next_folder += 1;
        self.folders
            .insert(fid, FolderRec::new(name, self.now, fid));
        self.log(ChangeKind::FolderCreated { name: name.into() });
        Ok(())
    }

    fn rename_folder(&mut self, from: &str, to: &str) -> Result<(), XfsError> {
        if is_system(from) {
            return Err(bad(format!("{from} is a system folder")));
        }
        validate_folder_name(to)?;
        let fid = self.folder_id(from)?;
        if is_system(to) {
            return Err(bad(format!("{to} is a system folder")));
        }
        if let Ok((other, _)) = find_folder(&self.folders, to) {
            if other != fid {
                return Err(XfsError::AlreadyExists {
                    what: format!("folder {to}"),
                });
            }
        }
        self.folder_mut(fid)?.name = to.to_string();
        self.log(ChangeKind::FolderRenamed {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use xfs::{ChangeKind, Op, Reply, XfsError};

    use crate::keys::{self, CF_FOLDER};
    use crate::segment::fixture::{body, mail, t, Fixture, ALICE};
    use crate::segment::MAX_FOLDER_NAME;

    fn create(f: &Fixture, name: &str) -> Result<Reply, XfsError> {
        f.exec(Op::CreateFolder {
            target: t(ALICE),
            name: name.into(),
        })
    }

    fn rename(f: &Fixture, from: &str, to: &str) -> Result<Reply, XfsError> {
        f.exec(Op::RenameFolder {
            target: t(ALICE),
            from: from.into(),
            to: to.into(),
        })
    }

    fn delete(f: &Fixture, name: &str) -> Result<Reply, XfsError> {
        f.exec(Op::DeleteFolder {
            target: t(ALICE),
            name: name.into(),
        })
    }

    fn names(f: &Fixture) -> Vec<String> {
        f.folders(ALICE).into_iter().map(|f| f.name).collect()
    }

    #[test]
    fn list_folder_pages_newest_first_with_the_totals() {
        let f = Fixture::new();
        f.create(ALICE);
        for n in 1..=5 {
            f.deliver(ALICE, mail(n));
        }
        let uids = |offset, limit, before| -> Vec<u32> {
            f.page(ALICE, "Inbox", offset, limit, before)
                .entries
                .iter()
                .map(|e| e.uid)
                .collect()
        };
        assert_eq!(uids(0, 2, None), vec![5, 4]);
        assert_eq!(uids(2, 2, None), vec![3, 2]);
        assert_eq!(uids(4, 2, None), vec![1]);
        assert_eq!(uids(5, 2, None), Vec::<u32>::new());
        assert_eq!(uids(0, 2, Some(3)), vec![2, 1]);
        assert_eq!(uids(1, 10, Some(5)), vec![3, 2, 1]);
        assert_eq!(uids(0, 0, None), Vec::<u32>::new());
        let p = f.page(ALICE, "inbox", 0, 1, None);
        let total: u64 = (1..=5).map(|n| body(n).len() as u64).sum();
        assert_eq!(
            (
                p.folder.name.as_str(),
                p.folder.total,
                p.folder.unread,
                p.folder.bytes
            ),
            ("Inbox", 5, 5, total)
        );
        assert_eq!(p.folders, f.folders(ALICE));
        let e = &p.entries[0];
        assert_eq!(
            (e.msg, e.folder.as_str(), e.uid, e.size, &e.summary),
            (5, "Inbox", 5, body(5).len() as u64, &mail(5).summary)
        );
        assert_eq!(
            f.err(Op::ListFolder {
                target: t(ALICE),
                folder: "Nowhere".into(),
                offset: 0,
                limit: 10,
                before_uid: None
            }),
            XfsError::NoSuchFolder {
                name: "Nowhere".into()
            }
        );
    }

    #[test]
    fn list_folders_gives_system_folders_first_then_the_users_by_name() {
        let f = Fixture::new();
        f.create(ALICE);
        for name in ["zeta", "Alpha", "beta"] {
            assert_eq!(create(&f, name), Ok(Reply::Done));
        }
        assert_eq!(
            names(&f),
            ["Inbox", "Sent", "Drafts", "Junk", "Trash", "Alpha", "beta", "zeta"]
        );
        let z = f.folder(ALICE, "zeta");
        assert_eq!((z.uidnext, z.total, z.unread, z.bytes), (1, 0, 0, 0));
    }

    #[test]
    fn create_folder_refuses_duplicates_and_bad_names() {
        let f = Fixture::new();
        f.create(ALICE);
        create(&f, "Work").unwrap();
        assert_eq!(
            create(&f, "work"),
            Err(XfsError::AlreadyExists {
                what: "folder work".into()
            })
        );
        assert!(matches!(
            create(&f, "INBOX"),
            Err(XfsError::AlreadyExists { .. })
        ));
        let longest = "x".repeat(MAX_FOLDER_NAME);
        assert_eq!(create(&f, &longest), Ok(Reply::Done));
        for bad in ["", "   ", "a\nb", &"y".repeat(MAX_FOLDER_NAME + 1)] {
            assert!(
                matches!(create(&f, bad), Err(XfsError::BadRequest { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(f.folders(ALICE).len(), 7);
        let modseq = f.account(ALICE).modseq;
        assert_eq!(
            f.changes(ALICE, modseq - 1, 1).changes[0].kind,
            ChangeKind::FolderCreated { name: longest }
        );
    }

    #[test]
    fn rename_folder_keeps_its_messages_and_refuses_system_folders_and_clashes() {
        let f = Fixture::new();
        f.create(ALICE);
        create(&f, "Work").unwrap();
        create(&f, "Play").unwrap();
        let mut d = mail(1);
        d.folder = Some("Work".into());
        f.deliver(ALICE, d);
        assert_eq!(rename(&f, "Work", "Jobs"), Ok(Reply::Done));
        assert_eq!(f.uids(ALICE, "Jobs"), vec![1]);
        assert_eq!(f.fetch(ALICE, 1).unwrap().entry.folder, "Jobs");
        assert_eq!(
            f.page(ALICE, "Jobs", 0, 1, None).folder.total,
            1,
            "the counts stay with the folder"
        );
        assert!(matches!(
            f.exec(Op::ListFolder {
                target: t(ALICE),
                folder: "Work".into(),
                offset: 0,
                limit: 1,
                before_uid: None
            }),
            Err(XfsError::NoSuchFolder { .. })
        ));
        // Only the case changes: allowed.
        assert_eq!(rename(&f, "Jobs", "JOBS"), Ok(Reply::Done));
        for (from, to) in [("Inbox", "Mail"), ("trash", "Bin"), ("JOBS", "Sent")] {
            assert!(
                matches!(rename(&f, from, to), Err(XfsError::BadRequest { .. })),
                "{from} → {to}"
            );
        }
        assert!(matches!(
            rename(&f, "JOBS", ""),
            Err(XfsError::BadRequest { .. })
        ));
        assert_eq!(
            rename(&f, "JOBS", "play"),
            Err(XfsError::AlreadyExists {
                what: "folder play".into()
            })
        );
        assert_eq!(
            rename(&f, "Gone", "New"),
            Err(XfsError::NoSuchFolder {
                name: "Gone".into()
            })
        );
        assert_eq!(
            names(&f),
            ["Inbox", "Sent", "Drafts", "Junk", "Trash", "JOBS", "Play"]
        );
        let modseq = f.account(ALICE).modseq;
        assert_eq!(
            f.changes(ALICE, modseq - 1, 1).changes[0].kind,
            ChangeKind::FolderRenamed {
                from: "Jobs".into(),
                to: "JOBS".into()
            }
        );
    }

    #[test]
    fn delete_folder_expunges_its_messages_and_system_folders_refuse() {
        let f = Fixture::new();
        f.create(ALICE);
        create(&f, "Work").unwrap();
        for n in 1..=2 {
            let mut d = mail(n);
            d.folder = Some("Work".into());
            f.deliver(ALICE, d);
        }
        f.deliver(ALICE, mail(3));
        for system in ["Inbox", "inbox", "Sent", "Drafts", "Junk", "Trash"] {
            assert_eq!(
                delete(&f, system),
                Err(XfsError::BadRequest {
                    why: format!("{system} is a system folder")
                })
            );
        }
        assert_eq!(
            delete(&f, "Nowhere"),
            Err(XfsError::NoSuchFolder {
                name: "Nowhere".into()
            })
        );
        assert_eq!(delete(&f, "Work"), Ok(Reply::Count(2)));
        assert_eq!(names(&f), ["Inbox", "Sent", "Drafts", "Junk", "Trash"]);
        assert_eq!(f.raw(CF_FOLDER, &keys::folder(ALICE, 16)), None);
        let a = f.account(ALICE);
        assert_eq!((a.messages, a.used_bytes), (1, body(3).len() as u64));
        assert_eq!(
            f.fetch(ALICE, 1).unwrap_err(),
            XfsError::NoSuchMessage { msg: 1 }
        );
        assert_eq!(
            f.changes(ALICE, a.modseq - 1, 1).changes[0].kind,
            ChangeKind::FolderDeleted {
                name: "Work".into()
            }
        );
        // A new folder of the same name is a new folder: a new id, empty.
        create(&f, "Work").unwrap();
        assert!(f.raw(CF_FOLDER, &keys::folder(ALICE, 17)).is_some());
        assert_eq!(f.counts(ALICE, "Work"), (0, 0, 0));
    }
}
