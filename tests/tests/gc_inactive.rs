//! `mailctl gc-inactive` on a whole HCU run by `mailctl up`: real sign-ins through the login
//! server mark users active; the dry run lists exactly the others and deletes nothing; the guard
//! refuses a run over the fraction and deletes nothing; `--apply` under it deletes restorably, and
//! `mailctl restore --user U` brings one back with its mail, while a re-created name refuses.

use runtime::time::now_ms;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::{AsyncTransport, Message};
use megamail_tests::support::mail::mailer;
use megamail_tests::support::mailbox::subjects;
use megamail_tests::support::Mailbox;
use megamail_tests::up::{self, addr, mailctl, ok, Up};
use mserv::{MservError, Policy};
use operator::admin::Hcu;
use serde_json::{json, Value};
use xfs::{ops, NewAccount, Op, Target};

const PER_STORE: usize = 100;

/// `--days` for "no sign-in since `since_ms`".
fn days_since(since_ms: u64) -> String {
    format!("{:.9}", (now_ms() - since_ms) as f64 / 86_400_000.0)
}

async fn sign_in(login: std::net::SocketAddr, user: &str) -> u16 {
    up::sign_in(login, user, "pw").await.0
}

fn user(store: usize, i: usize) -> String {
    format!("gc{store}-{i:03}@megamail.test")
}

async fn inbox_subjects(hcu: &Hcu, user: &str) -> Vec<String> {
    let inbox = Mailbox::of(hcu, user).await.unwrap().entries("Inbox").await;
    let inbox = inbox.unwrap();
    subjects(&inbox).into_iter().map(str::to_string).collect()
}

fn gc(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["gc-inactive"];
    all.extend_from_slice(args);
    mailctl(data, &all, None)
}

/// `mailctl --json gc-inactive ARGS`, which must succeed: its report.
fn gc_json(data: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["--json", "gc-inactive"];
    all.extend_from_slice(args);
    let out = ok(&mailctl(data, &all, None));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_lists_refuses_over_the_fraction_deletes_restorably_and_restores() {
    let up = Up::start().await;
    let hcu = Arc::new(up.hcu());
    let e = up.endpoints();
    let login = up::url_addr(e["login_url"].as_str().unwrap());

    // PER_STORE users on each store, over both segments, with one password hash.
    let started = Instant::now();
    let hash = session::password::hash("pw").unwrap();
    let mut all = Vec::new();
    for store in 1..=2 {
        for i in 0..PER_STORE {
            all.push((store, user(store, i)));
        }
    }
    let tasks = all.iter().cloned().map(|(store, u)| {
        let (hcu, hash) = (hcu.clone(), hash.clone());
        tokio::spawn(async move {
            let policy = Policy::Explicit {
                store: format!("store-{store}"),
                segment: (u.len() % 2) as u32,
            };
            let p = hcu.mserv.create_user(&u, policy).await.unwrap();
            let op = Op::CreateAccount {
                target: Target::new(&u, p.segment, p.epoch),
                account: NewAccount {
                    password_hash: hash,
                    display_name: String::new(),
                    quota_bytes: 0,
                },
            };
            let addr = hcu.store_addr(&p.store).await.unwrap();
            hcu.xfs.pool(&addr).call(op).await.unwrap();
        })
    });
    for t in tasks.collect::<Vec<_>>() {
        t.await.unwrap();
    }
    println!("{} users created in {:?}", all.len(), started.elapsed());
    let (idle1, idle2) = (user(1, 7), user(2, 42));
    let mailer = mailer(addr(&e["smtp"]));
    let mail = |to: &str, subject: &str| {
        Message::builder()
            .from("friend@remote.test".parse().unwrap())
            .to(to.parse().unwrap())
            .subject(subject)
            .body("kept across a deletion\n".to_string())
            .unwrap()
    };
    // Mail is not a sign-in: idle1 gets some and stays inactive.
    mailer
        .send(mail(&idle1, "a letter for idle1"))
        .await
        .unwrap();

    // Everyone but one user per store signs in, for real, after this instant.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let sign_ins = all
        .iter()
        .filter(|(_, u)| *u != idle1 && *u != idle2)
        .map(|(_, u)| {
            let (u, sem) = (u.clone(), sem.clone());
            tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                (sign_in(login, &u).await, u)
            })
        })
        .collect::<Vec<_>>();
    for t in sign_ins {
        let (status, u) = t.await.unwrap();
        assert_eq!(status, 200, "sign-in of {u}");
    }
    println!("{} sign-ins in {:?}", all.len() - 2, started.elapsed());
    let idle: BTreeSet<String> = [idle1.clone(), idle2.clone()].into();

    // Dry run: exactly the idle ones, nothing deleted.
    let v = gc_json(&up.data, &["--days", &days_since(since)]);
    let listed: BTreeSet<String> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, idle, "{v}");
    assert_eq!(v["deleted"], 0);
    let human = ok(&gc(&up.data, &["--days", &days_since(since)]));
    assert!(
        human.contains("dry run: nothing deleted") && human.contains(&idle1),
        "{human}"
    );
    for u in &idle {
        hcu.mserv.lookup_uncached(u).await.unwrap();
    }

    // Over a stricter fraction: refused, non-zero, nothing deleted.
    let refused = gc(
        &up.data,
        &[
            "--days",
            &days_since(since),
            "--apply",
            "--max-fraction",
            "0.005",
        ],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    for needle in [
        "refusing",
        "store-1",
        "1 of 100",
        "1.0%",
        "0.5%",
        "Nothing was deleted",
        "sign-ins",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in: {err}");
    }
    for u in &idle {
        let mailbox = Mailbox::of(&hcu, u).await.unwrap();
        let op = ops::GetAccount {
            target: mailbox.target.clone(),
        };
        assert!(mailbox.run(op).await.is_ok(), "{u}");
    }

    // Under the fraction: deleted, restorably.
    let v = gc_json(&up.data, &["--days", &days_since(since), "--apply"]);
    assert_eq!(v["deleted"], 2, "{v}");
    for u in &idle {
        assert!(matches!(
            hcu.mserv.lookup_uncached(u).await,
            Err(MservError::NoSuchUser)
        ));
        assert_eq!(sign_in(login, u).await, 401, "{u}");
        let refused = mailer.send(mail(u, "too late")).await.unwrap_err();
        assert!(refused.to_string().contains("5.1.1"), "{refused}");
    }
    // Everyone else is untouched.
    assert_eq!(sign_in(login, &user(1, 8)).await, 200);
    assert_eq!(sign_in(login, &user(2, 43)).await, 200);

    // Restore brings one back with its mail; it signs in again.
    let out = ok(&mailctl(&up.data, &["restore", "--user", &idle1], None));
    assert!(out.contains("undeleted"), "{out}");
    assert_eq!(sign_in(login, &idle1).await, 200);
    assert_eq!(
        inbox_subjects(&hcu, &idle1).await,
        vec!["a letter for idle1".to_string()]
    );

    // A run stopped between its two steps (the store marked the account deleted, the index
    // still places it): the user is already gone for callers, and the next run finishes it.
    let half = user(2, 50);
    {
        let mailbox = Mailbox::of(&hcu, &half).await.unwrap();
        let op = ops::SoftDelete {
            target: mailbox.target.clone(),
        };
        mailbox.run(op).await.unwrap();
    }
    assert_eq!(sign_in(login, &half).await, 401);
    let v = gc_json(&up.data, &["--days", &days_since(since), "--apply"]);
    assert_eq!(
        (v["deleted"].clone(), v["finished"][0].clone()),
        (json!(0), json!(half)),
        "{v}"
    );
    assert!(matches!(
        hcu.mserv.lookup_uncached(&half).await,
        Err(MservError::NoSuchUser)
    ));
    ok(&mailctl(&up.data, &["restore", "--user", &half], None));
    assert_eq!(sign_in(login, &half).await, 200);

    // A name given to a new user meanwhile: restore refuses, clearly.
    ok(&mailctl(
        &up.data,
        &["user", "add", &idle2],
        Some("new-pw\n"),
    ));
    let again = mailctl(&up.data, &["restore", "--user", &idle2], None);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is live") && err.contains("re-created"),
        "{err}"
    );
}
