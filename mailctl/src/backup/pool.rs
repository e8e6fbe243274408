//! Where a backup directory keeps what, and the byte-level work on its files.
//!
//! - `files/<identity>/<name>`: the pool of immutable RocksDB files (`*.sst`, `*.blob`) of one
//!   database. RocksDB never reuses a file number inside one database, so identity + name + size
//!   name one content, and a file already in the pool is never copied again.
//! - `backups/<id>/`: a complete backup: its [`MANIFEST`] and, under `<store>/<segment>/`, the
//!   small mutable files (MANIFEST-*, CURRENT, OPTIONS-*, WAL). Written as `backups/<id>.tmp/`
//!   and renamed when complete.
//! - `staging/<id>/`: where the stores write their checkpoints while a backup runs.
//! - `restore/`: where a restore materialises a segment for the store to read.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The name of a backup's manifest inside `backups/<id>/`.
pub const MANIFEST: &str = "manifest.json";

/// Whether a checkpoint's file is immutable (kept in the pool) rather than the backup's own.
pub fn is_pool_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// `DIR/backups`: the complete backups, and the one being written.
pub fn backups_dir(dir: &Path) -> PathBuf {
    dir.join("backups")
}

/// `DIR/backups/<id>.tmp`: a backup while it is written.
pub fn unfinished_dir(dir: &Path, id: &str) -> PathBuf {
    backups_dir(dir).join(format!("{id}.tmp"))
}

/// `DIR/files/<identity>`: the immutable files of one database.
pub fn pool_dir(dir: &Path, identity: &str) -> PathBuf {
    dir.join("files").join(identity)
}

/// `<backup>/<store>/<segment>`: one segment's own (mutable) files inside a backup's directory.
pub fn own_dir(backup: &Path, store: &str, segment: u32) -> PathBuf {
    backup.join(store).join(segment.to_string())
}

/// `DIR/staging/<id>`: the stores' checkpoints for backup `id`.
pub fn staging_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("staging").join(id)
}

/// `DIR/restore`: where restores materialise segments (one subdirectory per run).
pub fn restore_dir(dir: &Path) -> PathBuf {
    dir.join("restore")
}

/// Read `path` to its end, handing every chunk to `sink`; the crc32 and size of the bytes.
fn stream(
    path: &Path,
    mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<(u32, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            return Ok((h.finalize(), n));
        }
        h.update(&buf[..k]);
        sink(&buf[..k])?;
        n += k as u64;
    }
}

/// Copy `from` to `to` (through `to.copying`, fsynced, renamed); the crc32 and size of the bytes.
pub fn copy_with_crc(from: &Path, to: &Path) -> anyhow::Result<(u32, u64)> {
    let tmp = to.with_extension("copying");
    let mut dst = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (crc, n) = stream(from, |chunk| {
        dst.write_all(chunk)
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    dst.sync_all()?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))?;
    Ok((crc, n))
}

/// The crc32 and size of a file.
pub fn file_crc(path: &Path) -> anyhow::Result<(u32, u64)> {
    stream(path, |_| Ok(()))
}

/// Make a directory's entries durable (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_blob_files_go_to_the_pool() {
        assert!(is_pool_file("000012.sst"));
        assert!(is_pool_file("000013.blob"));
        for own in [
            "CURRENT",
            "MANIFEST-000005",
            "OPTIONS-000007",
            "000014.log",
            "sst",
        ] {
            assert!(!is_pool_file(own), "{own}");
        }
    }

    #[test]
    fn every_place_has_its_name() {
        let dir = Path::new("/bk");
        assert_eq!(backups_dir(dir), Path::new("/bk/backups"));
        assert_eq!(
            unfinished_dir(dir, "20261122T000000Z"),
            Path::new("/bk/backups/20261122T000000Z.tmp")
        );
        assert_eq!(pool_dir(dir, "abc"), Path::new("/bk/files/abc"));
        assert_eq!(
            own_dir(&backups_dir(dir).join("20261122T000000Z"), "store-1", 1),
            Path::new("/bk/backups/20261122T000000Z/store-1/1")
        );
        assert_eq!(
            staging_dir(dir, "20261122T000000Z"),
            Path::new("/bk/staging/20261122T000000Z")
        );
        assert_eq!(restore_dir(dir), Path::new("/bk/restore"));
    }

    #[test]
    fn a_copy_has_the_crc_of_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let bytes: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        let copied = copy_with_crc(&a, &b).unwrap();
        assert_eq!(copied, (crc32fast::hash(&bytes), bytes.len() as u64));
        assert_eq!(std::fs::read(&b).unwrap(), bytes);
        assert_eq!(file_crc(&b).unwrap(), copied);
        assert!(!b.with_extension("copying").exists());
        assert!(file_crc(&tmp.path().join("missing")).is_err());
    }
}
