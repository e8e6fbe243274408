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

