//! Test support: a store of one real segment (RocksDB on a temporary directory), driven through
//! `Store::execute` exactly as the server drives it, and the helpers the segment's tests share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runtime::admission::Admission;
use runtime::faults::Faults;
use xfs::{
    AccountInfo, ChangePage, Delivery, Flags, FolderInfo, FolderPage, Message, MsgId, NewAccount,
    Op, Reply, Summary, Target, XfsError,
};

use super::{Segment, SegmentOptions};
use crate::keys::{self, prefix, prefix_end, ALL_CFS, CF_ACCOUNT};
use crate::store::Store;

pub const ALICE: &str = "alice@example.test";
pub const BOB: &str = "bob@example.test";
/// The in-flight bound the fixture's store is opened with.
pub const MAX_IN_FLIGHT: usize = 64;

/// `user` in segment 0 at epoch 1.
pub fn t(user: &str) -> Target {
    Target::new(user, 0, 1)
}

/// A message numbered `n`: delivery id `[n; 32]`, dated `n` seconds after a fixed instant.
pub fn mail(n: u8) -> Delivery {
    Delivery {
        id: [n; 32],
        folder: None,
        internal_date_ms: 1_700_000_000_000 + u64::from(n) * 1000,
        flags: Flags::NONE,
        summary: Summary {
            from: format!("Sender{n} <sender{n}@remote.test>"),
            to: ALICE.into(),
            subject: format!("Subject {n}"),
            date: String::new(),
            preview: format!("preview {n}"),
            attachments: vec![],
        },
        body: body(n).into(),
    }
}

/// The stored bytes of [`mail`]`(n)`: CRLF lines, and bytes that are not UTF-8.
pub fn body(n: u8) -> Vec<u8> {
    let mut b = format!("From: sender{n}@remote.test\r\nSubject: Subject {n}\r\n\r\nbody {n}\r\n")
        .into_bytes();
    b.extend_from_slice(&[0xff, 0x00, n, b'\r', b'\n']);
    b
}

pub struct Fixture {
    pub store: Store,
    pub faults: Arc<Faults>,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let faults = Arc::new(Faults::new());
        let seg_dir = dir.path().join("seg0");
        let store = Store::open(
            "test-store",
            &[(0, seg_dir.as_path())],
            &SegmentOptions::default(),
            Admission::new(MAX_IN_FLIGHT),
            faults.clone(),
        )
        .expect("opening the store");
        Fixture { store, faults, dir }
    }

    /// A path inside the fixture's temporary directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn seg(&self) -> &Segment {
        self.store.segment(0).expect("segment 0")
    }

    /// What the server does with a request: `Store::execute`.
    pub fn exec(&self, op: Op) -> Result<Reply, XfsError> {
        self.store.execute(op)
    }

    #[track_caller]
    pub fn ok(&self, op: Op) -> Reply {
        let name = op.name();
        match self.exec(op) {
            Ok(r) => r,
            Err(e) => panic!("{name} failed: {e:?}"),
        }
    }

    #[track_caller]
    pub fn err(&self, op: Op) -> XfsError {
        let name = op.name();
        match self.exec(op) {
            Ok(r) => panic!("{name} answered {r:?}, expected an error"),
            Err(e) => e,
        }
    }

    /// Create `user` at epoch 1 (no quota) and return what the store answered.
    #[track_caller]
    pub fn create(&self, user: &str) -> AccountInfo {
        match self.ok(Op::CreateAccount {
            target: t(user),
            account: NewAccount {
                password_hash: "$argon2id$hash".into(),
                display_name: "Alice A.".into(),
                quota_bytes: 0,
            },
        }) {
            Reply::Account(a) => a,
            r => panic!("create_account answered {r:?}"),
        }
    }

    /// Deliver `d` to `user`: `(msg, folder, uid, duplicate)`.
    #[track_caller]
    pub fn deliver(&self, user: &str, d: Delivery) -> (MsgId, String, u32, bool) {
        match self.ok(Op::Deliver {
            target: t(user),
            delivery: d,
        }) {
            Reply::Delivered {
                msg,
                folder,
                uid,
                duplicate,
            } => (msg, folder, uid, duplicate),
            r => panic!("deliver answered {r:?}"),
        }
    }

    #[track_caller]
    pub fn account(&self, user: &str) -> AccountInfo {
        match self.ok(Op::GetAccount { target: t(user) }) {
            Reply::Account(a) => a,
            r => panic!("get_account answered {r:?}"),
        }
    }

    #[track_caller]
    pub fn folders(&self, user: &str) -> Vec<FolderInfo> {
        match self.ok(Op::ListFolders { target: t(user) }) {
            Reply::Folders(f) => f,
            r => panic!("list_folders answered {r:?}"),
        }
    }

    /// The folder called `name` from `ListFolders`.
    #[track_caller]
    pub fn folder(&self, user: &str, name: &str) -> FolderInfo {
        let all = self.folders(user);
        match all.iter().find(|f| f.name == name) {
            Some(f) => f.clone(),
            None => panic!("no folder {name} in {all:?}"),
        }
    }

    /// `(total, unread, bytes)` of a folder.
    #[track_caller]
    pub fn counts(&self, user: &str, name: &str) -> (u32, u32, u64) {
        let f = self.folder(user, name);
        (f.total, f.unread, f.bytes)
    }

    #[track_caller]
    pub fn page(
        &self,
        user: &str,
        folder: &str,
        offset: u32,
        limit: u32,
        before_uid: Option<u32>,
    ) -> FolderPage {
        match self.ok(Op::ListFolder {
            target: t(user),
            folder: folder.into(),
            offset,
            limit,
            before_uid,
        }) {
            Reply::Page(p) => p,
            r => panic!("list_folder answered {r:?}"),
        }
    }

    /// The uids of a whole folder, newest first.
    #[track_caller]
    pub fn uids(&self, user: &str, folder: &str) -> Vec<u32> {
        self.page(user, folder, 0, 1000, None)
            .entries
            .iter()
            .map(|e| e.uid)
            .collect()
    }

    /// Fetch without marking read.
    pub fn fetch(&self, user: &str, msg: MsgId) -> Result<Message, XfsError> {
        self.exec(Op::Fetch {
            target: t(user),
            msg,
            mark_seen: false,
        })
        .map(|r| match r {
            Reply::Message(m) => m,
            r => panic!("fetch answered {r:?}"),
        })
    }

    #[track_caller]
    pub fn changes(&self, user: &str, since: u64, limit: u32) -> ChangePage {
        match self.ok(Op::Changes {
            target: t(user),
            since,
            limit,
        }) {
            Reply::Changes(c) => c,
            r => panic!("changes answered {r:?}"),
        }
    }

    /// The keys `user` holds in every column family, as `(cf, key)`.
    pub fn stored_keys(&self, user: &str) -> Vec<(&'static str, Vec<u8>)> {
        let seg = self.seg();
        let mut out = Vec::new();
        if self.raw(CF_ACCOUNT, &keys::account(user)).is_some() {
            out.push((CF_ACCOUNT, keys::account(user)));
        }
        for cf in ALL_CFS.iter().filter(|c| **c != CF_ACCOUNT) {
            for kv in seg.scan(cf, prefix(user), prefix_end(user), false) {
                let (k, _) = kv.expect("scanning");
                out.push((*cf, k.into_vec()));
            }
        }
        out
    }

    /// A stored value as RocksDB holds it, read directly.
    pub fn raw(&self, cf: &str, key: &[u8]) -> Option<Vec<u8>> {
        let seg = self.seg();
        seg.db.get_cf(seg.cf(cf), key).expect("reading RocksDB")
    }

    /// Flip byte `at` of a stored value directly in RocksDB (its crc left as it was).
    #[track_caller]
    pub fn flip_byte(&self, cf: &str, key: &[u8], at: usize) {
        let seg = self.seg();
        let mut v = self.raw(cf, key).expect("the value to damage exists");
        v[at] ^= 0x01;
        seg.db.put_cf(seg.cf(cf), key, v).expect("writing RocksDB");
    }
}

/// Unwrap `$reply` as the variant `$pat`, yielding `$out`.
macro_rules! expect_reply {
    ($reply:expr, $pat:pat => $out:expr) => {
        match $reply {
            $pat => $out,
            r => panic!("unexpected reply {r:?}"),
        }
    };
}
pub(crate) use expect_reply;
