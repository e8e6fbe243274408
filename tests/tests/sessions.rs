//! Sessions bound to the stores: a front door's operations on a mailbox carry the user's
//! session, and the store itself checks it (login's signature, the mailbox's own user, the
//! account's generation, sign-outs), so a front door holding no signing key reaches only the
//! mailboxes of users who signed in, and only until they sign out. Sign-out is recorded at the
//! store until the token would have expired; a re-created address refuses its old owner's
//! tokens; a session the front door cannot confirm is answered 503, never served.

use std::sync::Arc;
use std::time::Duration;

use megamail_tests::frontdoor::{self, claims, now_secs, FrontDoor};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::metrics::metric;
use megamail_tests::support::pki;
use megamail_tests::web::KEY_ID;
use xfs::{ops, CallError, NewAccount, Op, Role, StorePool, XfsError};

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

fn refused(got: &Result<impl std::fmt::Debug, CallError>) -> bool {
    matches!(got, Err(CallError::Remote(XfsError::SessionRefused { .. })))
}

/// A store called with a front door's certificate: what a compromised front door can do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_door_reaches_a_mailbox_only_with_its_users_live_session() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    let store = hcu.store_names()[0].clone();
    hcu.add_user_on(ALICE, &store, 0).await.unwrap();
    hcu.add_user_on(BOB, &store, 0).await.unwrap();
    let alice = hcu.mailbox(ALICE).await.unwrap();
    let gen = frontdoor::session_gen(&hcu, ALICE).await.unwrap();
    let door = StorePool::new(
        alice.pool.addr(),
        Arc::new(xfs::ClientConfig {
            identity: pki::identity(Role::Frontdoor, "frontdoor-1"),
            ..Default::default()
        }),
    );
    let t = Duration::from_secs(5);
    let folders = || ops::ListFolders {
        target: alice.target.clone(),
    };
    let keys = frontdoor::keys();
    let alice_claims = claims(ALICE, gen, now_secs() + 3600);
    let alice_token = keys.issue(&alice_claims);
    let bob_gen = frontdoor::session_gen(&hcu, BOB).await.unwrap();
    let bob_token = keys.issue(&claims(BOB, bob_gen, now_secs() + 3600));
    let self_made = session::token::SigningKeys::new(KEY_ID, &[(KEY_ID.into(), "77".repeat(32))])
        .unwrap()
        .issue(&alice_claims);
    let old_gen = keys.issue(&claims(ALICE, gen - 1, now_secs() + 3600));

    for (what, session) in [
        ("no session", None),
        ("another user's session", Some(bob_token.as_str())),
        ("a token not signed by login", Some(self_made.as_str())),
        ("an older generation", Some(old_gen.as_str())),
        ("garbage", Some("v2.x.y.z")),
    ] {
        let got = door.run_as(folders(), session, "", t).await;
        assert!(refused(&got), "{what}: {got:?}");
    }
    // Reads and writes alike: a write with Bob's session into Alice's mailbox changes nothing.
    let create = ops::CreateFolder {
        target: alice.target.clone(),
        name: "Planted".into(),
    };
    let got = door.run_as(create, Some(&bob_token), "", t).await;
    assert!(refused(&got), "{got:?}");
    let names: Vec<String> = door
        .run_as(folders(), Some(&alice_token), "", t)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(!names.contains(&"Planted".to_string()), "{names:?}");

    // Only a session's own token ends it.
    let end = |sid: &str| ops::EndSession {
        target: alice.target.clone(),
        sid: sid.to_string(),
        until: alice_claims.exp,
    };
    let other = claims(ALICE, gen, now_secs() + 3600);
    let other_token = keys.issue(&other);
    let got = door
        .run_as(end(&other.sid), Some(&alice_token), "", t)
        .await;
    assert!(refused(&got), "ending another session: {got:?}");
    door.run_as(end(&alice_claims.sid), Some(&alice_token), "", t)
        .await
        .unwrap();
    let got = door.run_as(folders(), Some(&alice_token), "", t).await;
    assert!(refused(&got), "a signed-out session: {got:?}");
    door.run_as(folders(), Some(&other_token), "", t)
        .await
        .expect("another session of the same user goes on");
    // Signing out again is harmless.
    door.run_as(end(&alice_claims.sid), Some(&alice_token), "", t)
        .await
        .unwrap();

    // Deleted and created again at the same address: the old owner's sessions are refused.
    hcu.call(
        &store,
        Op::DeleteAccount {
            target: alice.target.clone(),
        },
    )
    .await
    .unwrap();
    hcu.call(
        &store,
        Op::CreateAccount {
            target: alice.target.clone(),
            account: NewAccount {
                password_hash: "x".into(),
                display_name: "New Alice".into(),
                quota_bytes: 0,
            },
        },
    )
    .await
    .unwrap();
    let got = door.run_as(folders(), Some(&other_token), "", t).await;
    assert!(refused(&got), "an old owner's session: {got:?}");
    let new_gen = frontdoor::session_gen(&hcu, ALICE).await.unwrap();
    assert_ne!(new_gen, gen);
    let new_token = keys.issue(&claims(ALICE, new_gen, now_secs() + 3600));
    door.run_as(folders(), Some(&new_token), "", t)
        .await
        .unwrap();

    // Every check is counted.
    let hcu_store = &hcu.stores[0];
    let admin = hcu_store.proc.admin;
    let count = |o: &str| {
        let name = format!("ustore_sessions_total{{outcome=\"{o}\"}}");
        async move { metric(admin, &name).await.unwrap() }
    };
    assert!(count("missing").await >= 1.0);
    assert!(count("other_user").await >= 3.0);
    assert!(count("bad_token").await >= 2.0);
    assert!(count("ended").await >= 3.0);
    assert!(count("ok").await >= 3.0);
}

/// Sign-out through a front door ends the session at the store: a copy of the token is worth
/// nothing afterwards, through any front door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session_everywhere_and_an_unconfirmed_one_is_503() {
    let mut hcu = LocalHcu::start(HcuOpts::default()).await.unwrap();
    hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let other_fd = FrontDoor::start(&hcu).await.unwrap();
    let token = fd.token(&hcu, ALICE).await.unwrap();
    let second = fd.token(&hcu, ALICE).await.unwrap();
    for door in [&fd, &other_fd] {
        assert_eq!(
            door.get(&token, "/api/v1/folders").await.unwrap().status(),
            200
        );
    }
    let browser = fd.browser(&token);
    let r = browser.post("/logout", &[]).await;
    assert_eq!(r.status(), 303);
    for door in [&fd, &other_fd] {
        let r = door.get(&token, "/api/v1/folders").await.unwrap();
        assert_eq!(r.status(), 401, "a signed-out token as a Bearer header");
        let r = door.page(&token, "/folder/Inbox").await.unwrap();
        assert_eq!(r.status(), 303, "a signed-out cookie");
    }
    assert_eq!(
        fd.get(&second, "/api/v1/folders").await.unwrap().status(),
        200
    );

    // The store down: a session confirmed a moment ago is still served (its pages say the
    // mailbox is unavailable); one never confirmed is answered 503, not served.
    let never_seen = fd.token(&hcu, ALICE).await.unwrap();
    hcu.store("store-1").proc.kill9();
    let r = fd.page(&second, "/folder/Inbox").await.unwrap();
    assert_eq!(r.status(), 503, "the page says the mailbox is unavailable");
    let text = r.text().await.unwrap();
    assert!(text.contains("unavailable"), "{text}");
    let r = fd.get(&never_seen, "/api/v1/folders").await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be confirmed"),
        "{body}"
    );
    let r = fd.page(&never_seen, "/folder/Inbox").await.unwrap();
    assert_eq!(r.status(), 503);
    let unconfirmed = metric(
        fd.proc.admin,
        "frontdoor_auth_total{result=\"unconfirmed\"}",
    )
    .await
    .unwrap();
    assert!(unconfirmed >= 2.0, "{unconfirmed}");
}
