//! Key layout and record encoding of a segment.
//!
//! Every key starts with the user id and a NUL byte, so one mailbox is one contiguous key range in
//! every column family (a prefix scan lists it, one `delete_range` removes it, an export streams it).
//! Every stored record is `crc32 (4 bytes, big-endian) | payload`, checked on every read.

use serde::{de::DeserializeOwned, Serialize};
use xfs::XfsError;

/// Column families, by access pattern.
pub const CF_ACCOUNT: &str = "account"; // user → AccountRec
pub const CF_FOLDER: &str = "folder"; // user\0 folder_id → FolderRec
pub const CF_INDEX: &str = "index"; // user\0 folder_id uid → EntryRec (folder pages: one range scan)
pub const CF_MSGLOC: &str = "msgloc"; // user\0 msg → LocRec (where a message id lives now)
pub const CF_BODY: &str = "body"; // user\0 msg → crc | raw bytes (blob files, compressed)
pub const CF_DEDUPE: &str = "dedupe"; // user\0 delivery id → DedupeRec
pub const CF_CHANGES: &str = "changes"; // user\0 modseq → Change (the per-mailbox change log)
pub const CF_QUEUE: &str = "queue"; // user\0 queue id → QueueRec (outbound, still to deliver)
pub const CF_SENDLOG: &str = "sendlog"; // user\0 queue id → QueueRec (outbound, finished)

pub const ALL_CFS: [&str; 9] = [
    CF_ACCOUNT, CF_FOLDER, CF_INDEX, CF_MSGLOC, CF_BODY, CF_DEDUPE, CF_CHANGES, CF_QUEUE,
    CF_SENDLOG,
];

/// `user\0`: the start of a mailbox's range.
pub fn prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// `user\x01`: the exclusive end of a mailbox's range (user ids never hold control bytes).
pub fn prefix_end(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(1);
    k
}

pub fn account(user: &str) -> Vec<u8> {
    user.as_bytes().to_vec()
}

pub fn folder(user: &str, folder_id: u32) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(&folder_id.to_be_bytes());
    k
}

/// The index range of one folder: `[folder(user, id), folder(user, id + 1))`.
pub fn index(user: &str, folder_id: u32, uid: u32) -> Vec<u8> {
    let mut k = folder(user, folder_id);
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

/// Folder id and uid from an index key of `user`.
pub fn parse_index(user: &str, key: &[u8]) -> Option<(u32, u32)> {
    let rest = key.get(user.len() + 1..)?;
    if rest.len() != 8 {
        return None;
    }
    let fid = u32::from_be_bytes(rest[0..4].try_into().ok()?);
    let uid = u32::from_be_bytes(rest[4..8].try_into().ok()?);
    Some((fid, uid))
}

/// Keys of `msgloc` and `body`.
pub fn msg(user: &str, msg: u64) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(&msg.to_be_bytes());
    k
}

pub fn dedupe(user: &str, id: &[u8; 32]) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(id);
    k
}

pub fn change(user: &str, modseq: u64) -> Vec<u8> {
    msg(user, modseq)
}

/// Keys of `queue` and `sendlog`.
pub fn queued(user: &str, id: u64) -> Vec<u8> {
    msg(user, id)
}

/// The user and the id of a `queue` or `sendlog` key.
pub fn parse_queued(key: &[u8]) -> Option<(String, u64)> {
    let nul = key.iter().position(|b| *b == 0)?;
    let id = key.get(nul + 1..)?;
    let id = u64::from_be_bytes(id.try_into().ok()?);
    let user = std::str::from_utf8(&key[..nul]).ok()?;
    Some((user.to_string(), id))
}

/// `crc32 | bincode(record)`, with the one record codec every role shares (`xfs::codec`).
pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    // Our own plain records always encode into memory.
    xfs::codec::encode_record(rec).expect("encoding a record into memory")
}

/// Check the crc and decode (no length inside trusted beyond the record's size); a mismatch is
/// `Corrupt`, never data.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, XfsError> {
    let payload = checked(bytes, what)?;
    xfs::codec::decode(payload).map_err(|e| XfsError::Corrupt {
        what: format!("{what}: {e}"),
    })
}

/// `crc32 | raw bytes` for message bodies (no serialization layer: the bytes are stored as given).
pub fn encode_body(body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    buf.extend_from_slice(body);
    buf
}

/// The payload of a `crc | payload` value after checking its crc; a mismatch is counted.
pub fn checked<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], XfsError> {
    xfs::codec::checked(bytes).map_err(|e| {
        crate::metrics::CORRUPT.with_label_values(&[what]).inc();
        XfsError::Corrupt {
            what: format!("{what}: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_ranges_do_not_overlap() {
        // "al" and "al.x" must not share ranges: the NUL after the user id separates them.
        let a = index("al", 1, 5);
        assert!(a >= prefix("al") && a < prefix_end("al"));
        let b = index("al.x", 1, 5);
        assert!(!(b >= prefix("al") && b < prefix_end("al")));
        assert_eq!(parse_index("al", &a), Some((1, 5)));
    }

    #[test]
    fn index_keys_sort_by_folder_then_uid() {
        assert!(index("u", 1, 2) < index("u", 1, 256));
        assert!(index("u", 1, u32::MAX) < index("u", 2, 0));
        assert!(index("u", 1, 9) >= folder("u", 1) && index("u", 1, 9) < folder("u", 2));
    }

    #[test]
    fn damaged_record_is_corrupt() {
        let mut v = encode(&(1u32, "x".to_string()));
        assert_eq!(decode::<(u32, String)>(&v, "t").unwrap(), (1, "x".into()));
        let n = v.len() - 1;
        v[n] ^= 1;
        assert!(matches!(
            decode::<(u32, String)>(&v, "t"),
            Err(XfsError::Corrupt { .. })
        ));
        let mut b = encode_body(b"hello");
        assert_eq!(checked(&b, "body").unwrap(), b"hello");
        b[5] = b'J';
        assert!(checked(&b, "body").is_err());
        assert!(checked(&[1, 2], "body").is_err());
    }
}
