//! The store side of a mailbox move, over real ustore processes: export and checksummed import,
//! bodies copied while mail keeps arriving, freeze, the final delta, identical digests, the
//! commit at the target, `Moved` at the source, and purge.

use std::sync::Arc;

use mailctl::copy::{self, Rate, Side};
use megamail_tests::support::mail::{self, padded};
use megamail_tests::support::Mailbox;
use megamail_tests::{Ustore, UstoreOpts};
use xfs::{
    AccountState, CallError, Delivery, Flags, IndexEntry, NewAccount, Op, RawRecord, Reply, Target,
    XfsError,
};

const USER: &str = "mover@megamail.test";

fn delivery(i: usize, size: usize) -> Delivery {
    let headers = format!("Subject: message {i}\r\nMessage-ID: <{i}@remote.test>\r\n");
    Delivery {
        internal_date_ms: 1_700_000_000_000 + i as u64,
        ..mail::delivery(
            &format!("m{i}"),
            &format!("message {i}"),
            padded(&headers, size),
        )
    }
}

async fn ok(side: &Side, op: Op) -> Reply {
    side.call_op(op.clone())
        .await
        .unwrap_or_else(|e| panic!("{} {op:?}: {e}", side.store))
}

fn err(r: Result<Reply, CallError>) -> XfsError {
    match r {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected a store error, got {other:?}"),
    }
}

/// The store's refusal of `op` at `side` (an answer fails the test).
async fn refused(side: &Side, op: Op) -> XfsError {
    err(side.call_op(op).await)
}

/// Purge `side`'s copy: after it the mailbox is unknown there.
async fn purge(side: &Side) {
    let target = side.target.clone();
    ok(side, Op::Purge { target }).await;
    let target = side.target.clone();
    let gone = refused(side, Op::GetAccount { target }).await;
    assert!(matches!(gone, XfsError::NoSuchUser), "{gone:?}");
}

async fn deliver(side: &Side, i: usize, size: usize) -> u64 {
    match ok(
        side,
        Op::Deliver {
            target: side.target.clone(),
            delivery: delivery(i, size),
        },
    )
    .await
    {
        Reply::Delivered { msg, .. } => msg,
        other => panic!("{other:?}"),
    }
}

/// Every folder with its entries (uid, flags, subject) and every body, in order.
async fn content(side: &Side) -> Vec<(String, Vec<(u32, Flags, String, Vec<u8>)>)> {
    let content = Mailbox::from(side).content().await.unwrap();
    let entry = |(e, body): (IndexEntry, Vec<u8>)| (e.uid, e.flags, e.summary.subject, body);
    let folder = |messages: Vec<_>| messages.into_iter().map(entry).collect();
    content.into_iter().map(|(f, m)| (f, folder(m))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_moves_between_stores_byte_for_byte() {
    let a = Ustore::start(UstoreOpts {
        name: "store-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let b = Ustore::start(UstoreOpts {
        name: "store-b".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let src = Side {
        store: "store-a".into(),
        pool: Arc::new(a.pool()),
        target: Target::new(USER, 0, 1),
    };
    let dst = Side {
        store: "store-b".into(),
        pool: Arc::new(b.pool()),
        target: Target::new(USER, 1, 1),
    };
    ok(
        &src,
        Op::CreateAccount {
            target: src.target.clone(),
            account: NewAccount {
                password_hash: "hash".into(),
                display_name: "Mover".into(),
                quota_bytes: 0,
            },
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(deliver(&src, i, if i == 7 { 3 << 20 } else { 2000 }).await);
    }
    ok(
        &src,
        Op::CreateFolder {
            target: src.target.clone(),
            name: "Projects".into(),
        },
    )
    .await;
    ok(
        &src,
        Op::Move {
            target: src.target.clone(),
            msgs: ids[0..5].to_vec(),
            to_folder: "Projects".into(),
        },
    )
    .await;
    ok(
        &src,
        Op::SetFlags {
            target: src.target.clone(),
            msgs: ids[5..10].to_vec(),
            add: Flags::FLAGGED,
            remove: Flags::NONE,
        },
    )
    .await;

    // The target refuses an import before it is begun, and a live mailbox is never purged.
    assert!(matches!(
        refused(
            &dst,
            Op::Import {
                target: dst.target.clone(),
                records: vec![],
                delete: vec![],
                reset_records: false
            }
        )
        .await,
        XfsError::NoSuchUser
    ));
    assert!(matches!(
        refused(
            &src,
            Op::Purge {
                target: src.target.clone()
            }
        )
        .await,
        XfsError::BadRequest { .. }
    ));
    // Beginning again is harmless (a rerun does it).
    for _ in 0..2 {
        let target = dst.target.clone();
        let from = "store-a".into();
        ok(&dst, Op::BeginImport { target, from }).await;
    }

    // Bulk copy of bodies while mail keeps arriving and flags keep changing.
    let rate = Rate::new(0);
    let bulk = copy::copy_bodies(&src, &dst, None, &rate, &|_| {})
        .await
        .unwrap();
    let (cursor, bytes) = (bulk.cursor, bulk.bytes);
    assert!(bytes > 3 << 20, "{bytes}");
    for i in 40..50 {
        ids.push(deliver(&src, i, 1500).await);
    }
    ok(
        &src,
        Op::Expunge {
            target: src.target.clone(),
            msgs: vec![ids[12], ids[45]],
        },
    )
    .await;
    ok(
        &src,
        Op::SetFlags {
            target: src.target.clone(),
            msgs: vec![ids[20]],
            add: Flags::SEEN,
            remove: Flags::NONE,
        },
    )
    .await;

    // The importing copy is not live: every caller is told to wait.
    assert!(matches!(
        refused(
            &dst,
            Op::ListFolders {
                target: dst.target.clone()
            }
        )
        .await,
        XfsError::Frozen { .. }
    ));

    // Freeze: writes wait, reads are served.
    ok(
        &src,
        Op::Freeze {
            target: src.target.clone(),
        },
    )
    .await;
    assert!(matches!(
        refused(
            &src,
            Op::Deliver {
                target: src.target.clone(),
                delivery: delivery(99, 100)
            }
        )
        .await,
        XfsError::Frozen { .. }
    ));
    ok(
        &src,
        Op::ListFolders {
            target: src.target.clone(),
        },
    )
    .await;

    // The final delta: new bodies from the cursor, every record, expunged bodies dropped.
    let more = copy::copy_bodies(&src, &dst, cursor, &rate, &|_| {})
        .await
        .unwrap()
        .bytes;
    assert!(more > 0);
    copy::copy_records(&src, &dst).await.unwrap();
    // Message 12 was copied, then expunged; message 45 came and went between the two passes.
    assert_eq!(copy::drop_expunged_bodies(&src, &dst).await.unwrap(), 1);
    let d = copy::verify(&src, &dst).await.unwrap();
    assert_eq!(d.messages, 48);

    // Commit at the target, redirect at the source.
    let moved = Target::new(USER, 1, 2);
    for _ in 0..2 {
        let target = moved.clone();
        ok(&dst, Op::FinishImport { target }).await;
    }
    ok(
        &src,
        Op::MarkMoved {
            target: src.target.clone(),
            to: "store-b".into(),
            epoch: 2,
        },
    )
    .await;
    match refused(
        &src,
        Op::ListFolders {
            target: src.target.clone(),
        },
    )
    .await
    {
        XfsError::Moved { to, epoch } => assert_eq!((to.as_str(), epoch), ("store-b", 2)),
        other => panic!("{other:?}"),
    }
    let dst = Side {
        target: moved,
        ..dst
    };
    // The digests matched; the content reads back complete at the target.
    let got = content(&dst).await;
    let projects = got.iter().find(|(n, _)| n == "Projects").unwrap();
    assert_eq!(projects.1.len(), 5);
    let inbox = got.iter().find(|(n, _)| n == "Inbox").unwrap();
    assert_eq!(inbox.1.len(), 43);
    let flagged = inbox
        .1
        .iter()
        .filter(|e| e.1.contains(Flags::FLAGGED))
        .count();
    assert_eq!(flagged, 5);
    let big = inbox.1.iter().find(|e| e.2 == "message 7").unwrap();
    assert_eq!(big.3, delivery(7, 3 << 20).body);
    assert!(inbox
        .1
        .iter()
        .all(|e| e.2 != "message 12" && e.2 != "message 45"));
    // New mail goes on at the target with the next uids; a repeated delivery is still deduplicated.
    match ok(
        &dst,
        Op::Deliver {
            target: dst.target.clone(),
            delivery: delivery(3, 2000),
        },
    )
    .await
    {
        Reply::Delivered { duplicate, .. } => assert!(duplicate, "the delivery id was forgotten"),
        other => panic!("{other:?}"),
    }
    let account = match ok(
        &dst,
        Op::GetAccount {
            target: dst.target.clone(),
        },
    )
    .await
    {
        Reply::Account(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (account.state, account.epoch, account.display_name.as_str()),
        (AccountState::Active, 2, "Mover")
    );

    // Grace over: the source copy goes.
    purge(&src).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_import_is_refused_and_changes_nothing() {
    let b = Ustore::start(UstoreOpts::default()).await.unwrap();
    let dst = Side {
        store: "store-1".into(),
        pool: Arc::new(b.pool()),
        target: Target::new(USER, 0, 1),
    };
    ok(
        &dst,
        Op::BeginImport {
            target: dst.target.clone(),
            from: "elsewhere".into(),
        },
    )
    .await;
    let mut key = USER.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&1u64.to_be_bytes());
    let mut value = crc32fast::hash(b"body").to_be_bytes().to_vec();
    value.extend_from_slice(b"body");
    let good = RawRecord {
        cf: "body".into(),
        key: key.clone(),
        value: value.clone(),
    };
    let mut damaged = good.clone();
    damaged.value[5] ^= 1;
    let outside = RawRecord {
        cf: "body".into(),
        key: b"other@megamail.test\0\0\0\0\0\0\0\0\x01".to_vec(),
        value,
    };
    let unknown = RawRecord {
        cf: "nope".into(),
        ..good.clone()
    };
    for (bad, what) in [(damaged, "crc"), (outside, "outside"), (unknown, "cf")] {
        let r = dst
            .call_op(Op::Import {
                target: dst.target.clone(),
                records: vec![good.clone(), bad],
                delete: vec![],
                reset_records: false,
            })
            .await;
        assert!(
            matches!(
                err(r),
                XfsError::Corrupt { .. } | XfsError::BadRequest { .. }
            ),
            "{what}"
        );
    }
    // Nothing of the refused batches was written.
    let keys = match ok(
        &dst,
        Op::Export {
            target: dst.target.clone(),
            part: xfs::ExportPart::Bodies,
            after: None,
            max_bytes: 1 << 20,
            keys_only: true,
        },
    )
    .await
    {
        Reply::Export(c) => c.records,
        other => panic!("{other:?}"),
    };
    assert!(keys.is_empty(), "{keys:?}");
    // An abandoned import is purged.
    purge(&dst).await;
}
