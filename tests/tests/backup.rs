//! `mailctl backup` and `mailctl restore --from` on a whole HCU run by `mailctl up`: a backup
//! taken while SMTP mail keeps arriving, one deleted mailbox brought back byte-exact while the
//! others stay untouched, a second backup that copies only what changed, and a damaged backup
//! file that makes a restore refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mailctl::backup::Manifest;
use megamail_tests::support::mail::mailer;
use megamail_tests::support::Mailbox;
use megamail_tests::up::{add_user_on, addr, mailctl, ok, Up};
use mserv::MservError;
use operator::admin::Hcu;
use serde_json::Value;
use sha2::{Digest, Sha256};
use xfs::{Flags, IndexEntry, Op};

/// Per folder: (uid, flags, sha256 of the stored bytes), newest first.
type Content = BTreeMap<String, Vec<(u32, u32, String)>>;

async fn content(hcu: &Hcu, user: &str) -> Content {
    let mailbox = Mailbox::of(hcu, user).await.unwrap();
    let digests = |messages: Vec<(IndexEntry, Vec<u8>)>| {
        messages
            .iter()
            .map(|(e, body)| (e.uid, e.flags.0, format!("{:x}", Sha256::digest(body))))
            .collect()
    };
    let folders = mailbox.content().await.unwrap().into_iter();
    folders.map(|(name, m)| (name, digests(m))).collect()
}

async fn send(m: &AsyncSmtpTransport<Tokio1Executor>, to: &str, subject: &str) {
    let msg = Message::builder()
        .from("sender@remote.test".parse().unwrap())
        .to(to.parse().unwrap())
        .subject(subject)
        .body(format!("{subject}\nwith a line of text\n"))
        .unwrap();
    m.send(msg).await.unwrap();
}

fn backup(data: &Path, dir: &Path) -> Value {
    let out = mailctl(
        data,
        &["--json", "backup", "--to", dir.to_str().unwrap()],
        None,
    );
    serde_json::from_str(&ok(&out)).unwrap()
}

fn restore(data: &Path, user: &str, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--json",
        "restore",
        "--user",
        user,
        "--from",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mailctl(data, &args, None)
}

fn pool_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for id in std::fs::read_dir(dir.join("files")).unwrap().flatten() {
        for f in std::fs::read_dir(id.path()).unwrap().flatten() {
            out.insert(format!(
                "{}/{}",
                id.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out
}

fn manifest(dir: &Path, id: &str) -> Manifest {
    let text = std::fs::read_to_string(dir.join("backups").join(id).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_one_mailbox_and_the_next_backup_is_incremental() {
    let up = Up::start().await;
    let hcu = up.hcu();
    let e = up.endpoints();
    let users: Vec<String> = (0..4).map(|i| format!("bk{i}@megamail.test")).collect();
    for (i, u) in users.iter().enumerate() {
        add_user_on(&hcu, u, &format!("store-{}", i % 2 + 1), (i / 2) as u32).await;
    }
    let m = mailer(addr(&e["smtp"]));
    for u in &users {
        for k in 0..5 {
            send(&m, u, &format!("before the backup {k} for {u}")).await;
        }
    }
    // The victim also has a folder of its own and flags, which must come back.
    let victim = users[0].clone();
    {
        let mailbox = Mailbox::of(&hcu, &victim).await.unwrap();
        let t = mailbox.target.clone();
        let name = "Kept".to_string();
        let create = Op::CreateFolder {
            target: t.clone(),
            name: name.clone(),
        };
        mailbox.call(create).await.unwrap();
        let file = Op::Move {
            target: t.clone(),
            msgs: vec![1, 2],
            to_folder: name,
        };
        mailbox.call(file).await.unwrap();
        let op = Op::SetFlags {
            target: t,
            msgs: vec![3],
            add: Flags::FLAGGED.union(Flags::SEEN),
            remove: Flags::NONE,
        };
        mailbox.call(op).await.unwrap();
    }

    // SMTP load to the users of store-2 while the backup runs (store-1's segment 1 then sees no
    // write until the second backup, which must copy nothing of it).
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let targets: Vec<String> = vec![users[1].clone(), users[3].clone()];
        let m = mailer(addr(&e["smtp"]));
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                let to = &targets[n % targets.len()];
                let msg = Message::builder()
                    .from("load@remote.test".parse().unwrap())
                    .to(to.parse().unwrap())
                    .subject(format!("load {n}"))
                    .body(format!("message {n} during the backup\n"))
                    .unwrap();
                match m.send(msg).await {
                    Ok(_) => sent.fetch_add(1, Ordering::SeqCst),
                    Err(err) => {
                        eprintln!("load: {err}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Under the data directory: the stores write checkpoints only under their backup roots.
    let dir = up.data.join("bk");
    let (data, d2) = (up.data.clone(), dir.clone());
    let started = Instant::now();
    let first = tokio::task::spawn_blocking(move || backup(&data, &d2))
        .await
        .unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!(
        "first backup {} in {took:?}: {} files ({} bytes) copied, {} reused; load: {sent} sent, {failed} failed",
        first["id"], first["files_copied"], first["bytes_copied"], first["files_reused"]
    );
    assert!(sent > 0, "the load sent nothing");
    assert_eq!(failed, 0, "the load saw errors during the backup");
    assert!(first["files_copied"].as_u64().unwrap() > 0);
    assert_eq!(first["segments"].as_array().unwrap().len(), 4);
    assert!(took < Duration::from_secs(120), "{took:?}");
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(
        pool_files(&dir).len() as u64,
        first["files_copied"].as_u64().unwrap()
    );

    let mut before = BTreeMap::new();
    for u in &users {
        before.insert(u.clone(), content(&hcu, u).await);
    }
    assert_eq!(before[&victim]["Kept"].len(), 2);

    // Delete the victim, then bring it back from the backup.
    ok(&mailctl(&up.data, &["user", "del", &victim], None));
    assert!(matches!(
        hcu.mserv.lookup_uncached(&victim).await,
        Err(MservError::NoSuchUser)
    ));
    let started = Instant::now();
    let out: Value = serde_json::from_str(&ok(&restore(&up.data, &victim, &dir, &[]))).unwrap();
    println!("restore of {victim}: {out} in {:?}", started.elapsed());
    assert_eq!(out["backup"], first_id.as_str());
    assert_eq!(out["store"], "store-1");
    for u in &users {
        assert_eq!(
            content(&hcu, u).await,
            before[u],
            "{u} differs after the restore"
        );
    }
    // A live user is refused, clearly.
    let again = restore(&up.data, &victim, &dir, &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("is live") && err.contains("user del"), "{err}");
    // The restored mailbox takes mail again.
    send(&m, &victim, "after the restore").await;
    assert_eq!(
        content(&hcu, &victim).await["Inbox"].len(),
        before[&victim]["Inbox"].len() + 1
    );

    // A second backup copies only new files and reuses the rest.
    let pool_before = pool_files(&dir);
    let second = backup(&up.data, &dir);
    println!(
        "second backup {}: {} files ({} bytes) copied, {} files ({} bytes) reused",
        second["id"],
        second["files_copied"],
        second["bytes_copied"],
        second["files_reused"],
        second["bytes_reused"]
    );
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_ne!(second_id, first_id);
    assert!(second["files_reused"].as_u64().unwrap() > 0, "{second}");
    assert!(
        second["files_copied"].as_u64().unwrap() < first["files_copied"].as_u64().unwrap(),
        "{second}"
    );
    let quiet = second["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["store"] == "store-1" && r["segment"] == 1)
        .unwrap();
    assert_eq!(quiet["files_copied"], 0, "{second}");
    assert!(quiet["files_reused"].as_u64().unwrap() > 0, "{second}");
    let pool_after = pool_files(&dir);
    assert!(pool_after.is_superset(&pool_before));
    assert_eq!(
        (pool_after.len() - pool_before.len()) as u64,
        second["files_copied"].as_u64().unwrap()
    );

    // A restore from the second backup.
    let other = users[3].clone();
    let before_other = content(&hcu, &other).await;
    ok(&mailctl(&up.data, &["user", "del", &other], None));
    let out: Value = serde_json::from_str(&ok(&restore(&up.data, &other, &dir, &[]))).unwrap();
    assert_eq!(out["backup"], second_id.as_str());
    assert_eq!(content(&hcu, &other).await, before_other);

    // A damaged file that only the second backup holds: the restore refuses and changes
    // nothing; the first backup still serves with --as-of.
    let m2 = manifest(&dir, &second_id);
    let m1 = manifest(&dir, &first_id);
    let old: BTreeSet<(String, String)> = m1
        .segments
        .iter()
        .flat_map(|s| {
            s.pool_files
                .iter()
                .map(move |f| (s.identity.clone(), f.name.clone()))
        })
        .collect();
    let seg = m2
        .segments
        .iter()
        .find(|s| s.store == "store-1" && s.segment == 0)
        .unwrap();
    let fresh = seg
        .pool_files
        .iter()
        .find(|f| !old.contains(&(seg.identity.clone(), f.name.clone())))
        .expect("the second backup copied a file of the victim's segment");
    let path = dir.join("files").join(&seg.identity).join(&fresh.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let before_all: Vec<Content> = {
        let mut v = Vec::new();
        for u in &users[1..] {
            v.push(content(&hcu, u).await);
        }
        v
    };
    ok(&mailctl(&up.data, &["user", "del", &victim], None));
    let bad = restore(&up.data, &victim, &dir, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("crc mismatch"), "{err}");
    assert!(matches!(
        hcu.mserv.lookup_uncached(&victim).await,
        Err(MservError::NoSuchUser)
    ));
    for (u, b) in users[1..].iter().zip(&before_all) {
        assert_eq!(
            &content(&hcu, u).await,
            b,
            "{u} changed by a refused restore"
        );
    }
    let out: Value = serde_json::from_str(&ok(&restore(
        &up.data,
        &victim,
        &dir,
        &["--as-of", &first_id],
    )))
    .unwrap();
    assert_eq!(out["backup"], first_id.as_str());
    assert_eq!(content(&hcu, &victim).await, before[&victim]);
}
