//! A backup's `manifest.json`: every segment it holds (store, segment, database identity) and each
//! file with its size and crc32; and the complete backups of a directory, read back.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::pool;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentBackup {
    pub store: String,
    pub segment: u32,
    /// The database's IDENTITY: the pool directory of its immutable files.
    pub identity: String,
    /// Immutable files, kept in `files/<identity>/`.
    pub pool_files: Vec<FileEntry>,
    /// Small mutable files, kept in this backup's `<store>/<segment>/`.
    pub own_files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub created_ms: u64,
    pub version: String,
    pub segments: Vec<SegmentBackup>,
}

impl Manifest {
    /// Every name the manifest joins to a path must stay inside the backup directory: a damaged
    /// or altered manifest must not make a restore read (or link) files elsewhere.
    fn check_names(&self) -> anyhow::Result<()> {
        let plain = |name: &str| {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
        };
        let mut names = vec![self.id.as_str()];
        for s in &self.segments {
            names.extend([s.store.as_str(), s.identity.as_str()]);
            names.extend(
                s.pool_files
                    .iter()
                    .chain(&s.own_files)
                    .map(|f| f.name.as_str()),
            );
        }
        match names.into_iter().find(|n| !plain(n)) {
            Some(bad) => bail!(
                "the manifest of backup {} names {bad:?}, which is not a plain file name",
                self.id
            ),
            None => Ok(()),
        }
    }
}

/// The complete backups under `dir`, oldest first.
pub fn list_backups(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let root = pool::backups_dir(dir);
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            continue;
        }
        let path = e.path().join(pool::MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        m.check_names()
            .with_context(|| format!("checking {}", path.display()))?;
        out.push(m);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn file(name: &str) -> FileEntry {
        FileEntry {
            name: name.into(),
            size: 1,
            crc32: 0,
        }
    }

    /// A manifest of one segment (store-1 segment 0, identity `abc`) with these two files.
    pub(crate) fn one_segment(id: &str, pool_file: FileEntry, own_file: FileEntry) -> Manifest {
        Manifest {
            id: id.into(),
            created_ms: 0,
            version: "0".into(),
            segments: vec![SegmentBackup {
                store: "store-1".into(),
                segment: 0,
                identity: "abc".into(),
                pool_files: vec![pool_file],
                own_files: vec![own_file],
            }],
        }
    }

    fn manifest(id: &str, own: &str) -> Manifest {
        one_segment(id, file("000012.sst"), file(own))
    }

    #[test]
    fn a_manifest_naming_paths_outside_the_backup_is_refused() {
        let manifest = |name: &str| manifest("20261122T000000Z", name);
        assert!(manifest("CURRENT").check_names().is_ok());
        for bad in ["../../etc/passwd", "a/b", "..", ""] {
            let err = manifest(bad).check_names().unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad}: {err}");
        }
    }

    fn write(dir: &Path, name: &str, m: &Manifest) {
        let at = pool::backups_dir(dir).join(name);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join(pool::MANIFEST), serde_json::to_vec(m).unwrap()).unwrap();
    }

    #[test]
    fn complete_backups_are_listed_oldest_first_and_unfinished_ones_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            list_backups(tmp.path()).unwrap().is_empty(),
            "no backups/ yet"
        );
        for id in ["20261122T100000Z", "20261121T100000Z"] {
            write(tmp.path(), id, &manifest(id, "CURRENT"));
        }
        // A backup still being written has no manifest yet, or half of one: never read.
        let unfinished = pool::backups_dir(tmp.path()).join("20261123T100000Z.tmp");
        std::fs::create_dir_all(&unfinished).unwrap();
        std::fs::write(unfinished.join(pool::MANIFEST), b"{\"id\":").unwrap();
        let ids: Vec<String> = list_backups(tmp.path())
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["20261121T100000Z", "20261122T100000Z"]);
        let m = &list_backups(tmp.path()).unwrap()[0];
        assert_eq!(m.segments[0].pool_files, vec![file("000012.sst")]);

        // A complete backup whose manifest is damaged or names a path outside is an error.
        write(tmp.path(), "20261124T100000Z", &manifest("x", "../CURRENT"));
        let err = format!("{:#}", list_backups(tmp.path()).unwrap_err());
        assert!(err.contains("not a plain file name"), "{err}");
        std::fs::write(
            pool::backups_dir(tmp.path())
                .join("20261124T100000Z")
                .join(pool::MANIFEST),
            b"not json",
        )
        .unwrap();
        let err = format!("{:#}", list_backups(tmp.path()).unwrap_err());
        assert!(err.contains("parsing"), "{err}");
    }
}
