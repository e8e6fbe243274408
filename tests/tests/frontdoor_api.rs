//! The front door's JSON API end to end over real processes (member index, stores, smtp-in,
//! frontdoor): reading, sending, filing and searching mail; the requests it must refuse; and
//! what still works when the user's store is down.

use std::time::Duration;

use base64::Engine as _;
use megamail_tests::frontdoor::{
    self, claims, download, now_secs, send_in, status_and_text, wait_inbox, FrontDoor,
};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::mail::strip_trace_header;
use serde_json::{json, Value};

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

fn mail(from: &str, to: &str, subject: &str, text: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{}@remote.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

fn mail_with_attachment() -> Vec<u8> {
    b"From: Carol Remote <carol@remote.test>\r\nTo: alice@megamail.test\r\nSubject: Quarterly figures\r\n\
Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <q1@remote.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
The numbers are in the attached sheet; the zebra count doubled.\r\n--b1\r\n\
Content-Type: text/csv; name=\"figures.csv\"\r\nContent-Disposition: attachment; filename=\"figures.csv\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nYSxiCjEsMgo=\r\n--b1--\r\n"
        .to_vec()
}

/// A JSON API POST as `token` (the session in a Bearer header).
async fn post(fd: &FrontDoor, token: &str, path: &str, body: Value) -> reqwest::Response {
    let r = fd.post_json(token, path, &body).await;
    r.unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// The message ids of a listing, in order.
fn ids(page: &Value) -> Vec<u64> {
    let messages = page["messages"].as_array().unwrap();
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

fn folder<'a>(folders: &'a Value, name: &str) -> &'a Value {
    folders["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no folder {name} in {folders}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reads_sends_files_and_searches_mail() {
    let hcu = LocalHcu::start(HcuOpts::default()).await.unwrap();
    hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    hcu.add_user_on(BOB, "store-2", 1).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let (status, body) =
        status_and_text(fd.http.get(fd.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    send_in(&hcu, "carol@remote.test", &[ALICE], &mail_with_attachment())
        .await
        .unwrap();
    wait_inbox(&hcu, ALICE, 1).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();

    // Folders, with counts.
    let folders = fd.json(&alice, "/api/v1/folders").await.unwrap();
    let inbox = folder(&folders, "Inbox");
    assert_eq!(
        (inbox["total"].as_u64(), inbox["unread"].as_u64()),
        (Some(1), Some(1))
    );
    for name in ["Sent", "Drafts", "Junk", "Trash"] {
        folder(&folders, name);
    }

    // A folder page.
    let page = fd
        .json(&alice, "/api/v1/folders/Inbox/messages?offset=0&limit=10")
        .await
        .unwrap();
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    let id = m["id"].as_u64().unwrap();
    assert_eq!(m["subject"], "Quarterly figures");
    assert_eq!(m["from"], "Carol Remote <carol@remote.test>");
    assert_eq!(m["seen"], false);
    assert_eq!(m["attachments"], json!(["figures.csv"]));

    // Reading it: text, attachments; it is seen afterwards.
    let read = fd
        .json(&alice, &format!("/api/v1/messages/{id}"))
        .await
        .unwrap();
    assert!(
        read["text"]
            .as_str()
            .unwrap()
            .contains("zebra count doubled"),
        "{read}"
    );
    assert_eq!(read["html"], Value::Null);
    assert_eq!(read["attachments"][0]["name"], "figures.csv");
    assert_eq!(read["message"]["seen"], true);
    let inbox_after = fd.json(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(folder(&inbox_after, "Inbox")["unread"], 0);

    // The raw bytes are exactly what smtp-in stored.
    let stored = hcu.inbox(ALICE).await.unwrap();
    let r = fd
        .get(&alice, &format!("/api/v1/messages/{id}/raw"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "message/rfc822");
    assert_eq!(r.bytes().await.unwrap().to_vec(), stored[0].1);

    // The attachment, as a download.
    let r = fd
        .get(&alice, &format!("/api/v1/messages/{id}/attachments/0"))
        .await
        .unwrap();
    let cd = download(&r, "the attachment");
    assert!(
        cd.starts_with("attachment; filename=\"figures.csv\""),
        "{cd}"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"a,b\n1,2\n");
    let r = fd
        .get(&alice, &format!("/api/v1/messages/{id}/attachments/5"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Sending to a user on the other store: it arrives, and a copy is filed in Sent.
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = post(
        &fd,
        &alice,
        "/api/v1/send",
        json!({
            "to": [BOB],
            "subject": "Lunch on Friday?",
            "text": "Shall we try the new place?\nAlice",
            "attachments": [{"name": "menu.txt", "content_type": "text/plain",
                             "data_base64": b64.encode("soup\nbread\n")}],
        }),
    )
    .await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert!(sent["sent_copy"].is_u64(), "{sent}");
    assert_eq!(sent["queued"], 1);
    wait_inbox(&hcu, BOB, 1).await.unwrap();
    let bob = fd.token(&hcu, BOB).await.unwrap();
    let bob_inbox = fd
        .json(&bob, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    let got = &bob_inbox["messages"][0];
    assert_eq!(got["subject"], "Lunch on Friday?");
    assert!(got["from"].as_str().unwrap().contains(ALICE), "{got}");
    assert_eq!(got["attachments"], json!(["menu.txt"]));
    let bob_read = fd
        .json(&bob, &format!("/api/v1/messages/{}", got["id"]))
        .await
        .unwrap();
    assert!(bob_read["text"]
        .as_str()
        .unwrap()
        .contains("Shall we try the new place?"));
    let sent_page = fd
        .json(&alice, "/api/v1/folders/Sent/messages")
        .await
        .unwrap();
    let copy = &sent_page["messages"][0];
    assert_eq!(copy["id"], sent["sent_copy"]);
    assert_eq!(copy["subject"], "Lunch on Friday?");
    assert_eq!(copy["seen"], true);
    assert_eq!(copy["to"], BOB);
    // The copy is the message as sent: what bob got is it with the outbound worker's trace line
    // before it.
    let copy_raw = fd
        .get(&alice, &format!("/api/v1/messages/{}/raw", copy["id"]))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let bob_stored = hcu.inbox(BOB).await.unwrap();
    assert_eq!(strip_trace_header(&bob_stored[0].1), copy_raw.as_ref());

    // A reply is threaded and marks the original answered.
    let r = post(
        &fd,
        &bob,
        "/api/v1/send",
        json!({"to": [ALICE], "subject": "Re: Lunch on Friday?", "text": "Yes!",
                    "in_reply_to": got["id"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_inbox(&hcu, ALICE, 2).await.unwrap();
    let reply = hcu.inbox(ALICE).await.unwrap().pop().unwrap().1;
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert!(reply.contains("In-Reply-To: <"), "{reply}");
    let bob_inbox = fd
        .json(&bob, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    assert_eq!(bob_inbox["messages"][0]["answered"], true);

    // Folders: create, move into, flag, search.
    let r = post(&fd, &alice, "/api/v1/folders", json!({"name": "Projects"})).await;
    assert_eq!(r.status(), 200);
    let r = post(&fd, &alice, "/api/v1/folders", json!({"name": "Projects"})).await;
    assert_eq!(r.status(), 409);
    let to_projects = json!({"ids": [id], "folder": "Projects"});
    let r = post(&fd, &alice, "/api/v1/messages/move", to_projects).await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let folders = fd.json(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(folder(&folders, "Projects")["total"], 1);
    assert_eq!(folder(&folders, "Inbox")["total"], 1);
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/flags",
        json!({"ids": [id], "add": ["flagged"], "remove": ["seen"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let projects = fd
        .json(&alice, "/api/v1/folders/Projects/messages")
        .await
        .unwrap();
    assert_eq!(projects["messages"][0]["flagged"], true);
    assert_eq!(projects["messages"][0]["seen"], false);
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/flags",
        json!({"ids": [id], "add": ["sparkly"]}),
    )
    .await;
    assert_eq!(r.status(), 400);

    for (query, found) in [
        ("q=quarterly&in=subject", vec![id]),
        ("q=zebra&in=body", vec![id]),
        ("q=zebra&in=subject", vec![]),
        ("q=carol&in=from", vec![id]),
    ] {
        let hits = fd
            .json(&alice, &format!("/api/v1/search?{query}"))
            .await
            .unwrap();
        assert_eq!(ids(&hits), found, "{query}: {hits}");
    }

    // Delete: to Trash first, then for good.
    let r = post(&fd, &alice, "/api/v1/messages/delete", json!({"ids": [id]})).await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let trash = fd
        .json(&alice, "/api/v1/folders/Trash/messages")
        .await
        .unwrap();
    assert_eq!(trash["messages"][0]["id"], id);
    let r = post(&fd, &alice, "/api/v1/messages/delete", json!({"ids": [id]})).await;
    let (_, body) = status_and_text(r).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["expunged"], 1, "{v}");
    let r = fd
        .get(&alice, &format!("/api/v1/messages/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let folders = fd.json(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(folder(&folders, "Trash")["total"], 0);

    // Rename and delete a folder; system folders refuse.
    let r = post(
        &fd,
        &alice,
        "/api/v1/folders/rename",
        json!({"from": "Projects", "to": "Archive 2026"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let page = fd
        .json(&alice, "/api/v1/folders/Archive%202026/messages")
        .await
        .unwrap();
    assert_eq!(page["folder"]["name"], "Archive 2026");
    for (name, status) in [("Inbox", 400), ("Archive 2026", 200)] {
        let delete = json!({ "name": name });
        let r = post(&fd, &alice, "/api/v1/folders/delete", delete).await;
        assert_eq!(r.status(), status, "deleting {name}");
    }
    let r = fd
        .get(&alice, "/api/v1/folders/Archive%202026/messages")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A cookie session's API writes need the CSRF header; Bearer calls do not.
    let cookie_post = |csrf: Option<String>| {
        let mut req = fd
            .http
            .post(fd.url("/api/v1/folders"))
            .header("cookie", format!("mm_session={alice}"))
            .json(&json!({"name": "Via cookie"}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    assert_eq!(cookie_post(None).await.unwrap().status(), 403);
    assert_eq!(
        cookie_post(Some(fd.csrf(&alice))).await.unwrap().status(),
        200
    );
}

/// Counts and flags of `user`'s Inbox, to show a refused request changed nothing.
async fn inbox_state(fd: &FrontDoor, token: &str) -> Vec<(u64, bool, bool, String)> {
    let page = fd
        .json(token, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["seen"].as_bool().unwrap(),
                m["flagged"].as_bool().unwrap(),
                m["folder"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sessions_csrf_and_other_mailboxes_are_refused() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE, BOB]).await.unwrap();
    megamail_tests::web::set_password(&hcu, ALICE, "old secret words")
        .await
        .unwrap();
    send_in(
        &hcu,
        "x@remote.test",
        &[ALICE],
        &mail("x@remote.test", ALICE, "for alice", "hi"),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let m = mail("x@remote.test", BOB, &format!("bob private {i}"), "secret");
        send_in(&hcu, "x@remote.test", &[BOB], &m).await.unwrap();
    }
    wait_inbox(&hcu, ALICE, 1).await.unwrap();
    wait_inbox(&hcu, BOB, 3).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let bob = fd.token(&hcu, BOB).await.unwrap();
    let before = inbox_state(&fd, &alice).await;
    let alice_id = before[0].0;
    let flag = |id: u64| json!({"ids": [id], "add": ["flagged"]});

    // Tokens that are not good sessions: 401 for the API, 303 to sign-in for pages, and no
    // write goes through.
    let (signed, mac) = alice.rsplit_once('.').unwrap();
    let flipped = if mac.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{flipped}{}", &mac[1..]);
    let expired = fd.keys.issue(&claims(
        ALICE,
        frontdoor::session_gen(&hcu, ALICE).await.unwrap(),
        now_secs() - 5,
    ));
    let gen = frontdoor::session_gen(&hcu, ALICE).await.unwrap();
    let key =
        |id: &str| session::token::SigningKeys::new(id, &[(id.into(), "99".repeat(32))]).unwrap();
    let unknown_key = key("k9").issue(&claims(ALICE, gen, now_secs() + 3600));
    // Whoever holds no private key of login's cannot make a session, even naming login's key.
    let self_made = key(megamail_tests::web::KEY_ID).issue(&claims(ALICE, gen, now_secs() + 3600));
    for (what, bad) in [
        ("wrong signature", forged.as_str()),
        ("expired", expired.as_str()),
        ("unknown key", unknown_key.as_str()),
        ("not signed by login", self_made.as_str()),
        ("garbage", "not-a-token"),
    ] {
        let r = fd.get(bad, "/api/v1/folders").await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let r = post(&fd, bad, "/api/v1/messages/flags", flag(alice_id)).await;
        assert_eq!(r.status(), 401, "{what}");
        let r = fd.page(bad, "/folder/Inbox").await.unwrap();
        assert_eq!(r.status(), 303, "{what}");
        assert_eq!(r.headers()["location"], frontdoor::LOGIN_URL, "{what}");
        let r = fd
            .post_form(
                bad,
                "/messages",
                &[
                    ("csrf", "x"),
                    ("id", &alice_id.to_string()),
                    ("action", "flag"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{what}");
    }
    let r = fd.http.get(fd.url("/api/v1/folders")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no session at all");
    assert_eq!(inbox_state(&fd, &alice).await, before);

    // Form posts without the session's CSRF token: 403 and nothing changed.
    let id = alice_id.to_string();
    let bob_csrf = fd.csrf(&bob);
    for fields in [
        vec![("id", id.as_str()), ("action", "flag"), ("folder", "Inbox")],
        vec![
            ("csrf", "bogus"),
            ("id", id.as_str()),
            ("action", "flag"),
            ("folder", "Inbox"),
        ],
        vec![
            ("csrf", bob_csrf.as_str()),
            ("id", id.as_str()),
            ("action", "delete"),
            ("folder", "Inbox"),
        ],
    ] {
        let r = fd.post_form(&alice, "/messages", &fields).await.unwrap();
        assert_eq!(r.status(), 403, "{fields:?}");
    }
    let r = fd
        .post_form(&alice, "/folders/create", &[("name", "Nope")])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = fd
        .post_form(&alice, "/logout", &[("csrf", "bogus")])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(inbox_state(&fd, &alice).await, before);
    let folders = fd.json(&alice, "/api/v1/folders").await.unwrap();
    assert!(!folders.to_string().contains("Nope"));
    // With the right token the same form works.
    let browser = fd.browser(&alice);
    browser.act(alice_id, "flag", &[]).await;
    assert!(inbox_state(&fd, &alice).await[0].2, "flagged");

    // Another user's message ids do not exist in this mailbox (ids are per mailbox, and the
    // user always comes from the session).
    let bob_msgs = inbox_state(&fd, &bob).await;
    let bob_only = bob_msgs.iter().map(|m| m.0).max().unwrap();
    assert!(bob_only > alice_id);
    for path in [
        format!("/api/v1/messages/{bob_only}"),
        format!("/api/v1/messages/{bob_only}/raw"),
        format!("/api/v1/messages/{bob_only}/attachments/0"),
    ] {
        let (status, body) = status_and_text(fd.get(&alice, &path).await.unwrap()).await;
        assert_eq!(status, 404, "{path}");
        assert!(!body.contains("bob private"), "{body}");
    }
    let r = fd
        .page(&alice, &format!("/message/{bob_only}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let to_trash = json!({"ids": [bob_only], "folder": "Trash"});
    let r = post(&fd, &alice, "/api/v1/messages/move", to_trash).await;
    assert_eq!(r.status(), 404);
    let r = post(&fd, &alice, "/api/v1/messages/flags", flag(bob_only)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(inbox_state(&fd, &bob).await, bob_msgs);

    // A password change (through this front door) ends every session of the account, the
    // browser's own too: only login makes sessions, so it is sent to sign in again.
    let old_session = fd.token(&hcu, ALICE).await.unwrap();
    let change = |current| {
        [
            ("current", current),
            ("new", "new secret words"),
            ("confirm", "new secret words"),
        ]
    };
    let r = browser
        .post("/settings/password", &change("wrong guess"))
        .await;
    assert_eq!(r.status(), 403, "a wrong current password");
    let r = browser
        .post("/settings/password", &change("old secret words"))
        .await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap();
    assert!(to.ends_with("/?password_changed=1"), "{to}");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("mm_session=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );
    for old in [&alice, &old_session] {
        assert_eq!(fd.get(old, "/api/v1/folders").await.unwrap().status(), 401);
        assert_eq!(fd.page(old, "/folder/Inbox").await.unwrap().status(), 303);
        let r = post(
            &fd,
            old,
            "/api/v1/messages/flags",
            json!({"ids": [alice_id], "remove": ["flagged"]}),
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    // A session login issues at the new generation works.
    let fresh = fd.token(&hcu, ALICE).await.unwrap();
    assert!(inbox_state(&fd, &fresh).await[0].2, "still flagged");
    assert_eq!(
        fd.page(&fresh, "/folder/Inbox").await.unwrap().status(),
        200
    );
    let mailbox = hcu.mailbox(ALICE).await.unwrap();
    let op = xfs::ops::GetAuth {
        target: mailbox.target.clone(),
    };
    let auth = mailbox.run(op).await.unwrap();
    assert!(session::password::verify(
        "new secret words",
        &auth.password_hash
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_users_store_down_pages_say_so_and_sending_is_refused_for_now() {
    let hcu = LocalHcu::start(HcuOpts::default()).await.unwrap();
    hcu.add_user_on(ALICE, "store-1", 0).await.unwrap();
    hcu.add_user_on(BOB, "store-2", 0).await.unwrap();
    send_in(
        &hcu,
        "x@remote.test",
        &[ALICE],
        &mail("x@remote.test", ALICE, "before", "hi"),
    )
    .await
    .unwrap();
    wait_inbox(&hcu, ALICE, 1).await.unwrap();
    let fd = FrontDoor::start_with(&hcu, |c| c.store_refresh_secs = 1)
        .await
        .unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let bob = fd.token(&hcu, BOB).await.unwrap();
    for t in [&alice, &bob] {
        let r = fd.page(t, "/folder/Inbox").await.unwrap();
        assert_eq!(r.status(), 200);
    }

    let mut hcu = hcu;
    hcu.store("store-1").proc.kill9();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Pages render, with the notice.
    let (status, body) = status_and_text(fd.page(&alice, "/folder/Inbox").await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("Your mailbox is temporarily unavailable"),
        "{body}"
    );
    assert!(
        body.contains("<form method=\"post\" action=\"/logout\""),
        "{body}"
    );
    let (status, body) = status_and_text(fd.page(&alice, "/compose").await.unwrap()).await;
    assert_eq!(status, 200, "composing needs no store");
    assert!(body.contains("temporarily unavailable"));
    let (status, body) = status_and_text(fd.get(&alice, "/api/v1/folders").await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(body.contains("temporarily unavailable"), "{body}");

    // Sending is one write in the sender's store (the Sent copy and the queue): with the store
    // down it is refused for now, clearly, from the API and from the compose form.
    let r = post(
        &fd,
        &alice,
        "/api/v1/send",
        json!({"to": [BOB], "subject": "sent while down", "text": "still here"}),
    )
    .await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("could not be sent just now"), "{body}");
    let form = [
        ("to", BOB.to_string()),
        ("subject", "form sent while down".to_string()),
        ("text", "hello from the form".to_string()),
    ];
    let r = fd.browser(&alice).compose(&form, None).await;
    assert_eq!(r.status(), 502);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Not sent: the message could not be sent just now"),
        "{page}"
    );
    // Bob's mailbox, on the other store, is served all along.
    for n in 1..=2 {
        let raw = mail("x@remote.test", BOB, &format!("for bob {n}"), "hi");
        send_in(&hcu, "x@remote.test", &[BOB], &raw).await.unwrap();
    }
    wait_inbox(&hcu, BOB, 2).await.unwrap();

    // With the member index down too, cached routes keep bob's mailbox served.
    for id in hcu.mserv.running() {
        hcu.mserv.kill9(id);
    }
    // Past the store registry's refresh age: the stale entry must serve.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = status_and_text(fd.page(&bob, "/folder/Inbox").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("for bob 2"));
    let v = fd
        .json(&bob, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ids_act_once_and_a_delete_in_trash_expunges_only_what_is_there() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE]).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    for n in 1..=3 {
        let raw = mail("carol@remote.test", ALICE, &format!("note {n}"), "hello");
        send_in(&hcu, "carol@remote.test", &[ALICE], &raw)
            .await
            .unwrap();
    }
    wait_inbox(&hcu, ALICE, 3).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let store = hcu.mailbox(ALICE).await.unwrap();
    let account = || async {
        let target = store.target.clone();
        let a = store.run(xfs::ops::GetAccount { target }).await.unwrap();
        let sizes: u64 = store.folders().await.unwrap().iter().map(|f| f.bytes).sum();
        (a.messages, a.used_bytes, sizes)
    };
    let (messages, used, sizes) = account().await;
    assert_eq!((messages, used), (3, sizes));
    let page = fd
        .json(&alice, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    let (a, b, c) = match ids(&page)[..] {
        [c, b, a] => (a, b, c),
        ref other => panic!("{other:?}"),
    };
    let entries = store.entries("Inbox").await.unwrap();
    let size_of = |id: u64| entries.iter().find(|e| e.msg == id).unwrap().size;

    // Flags, moves and deletes with an id named three times act once.
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/flags",
        json!({"ids": [a, a, a], "add": ["seen"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let folders = fd.json(&alice, "/api/v1/folders").await.unwrap();
    assert_eq!(folder(&folders, "Inbox")["unread"], 2);
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/move",
        json!({"ids": [a, a, a], "folder": "Trash"}),
    )
    .await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let moved: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(moved["moved"].as_array().unwrap().len(), 1, "{moved}");
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/delete",
        json!({"ids": [a, a, a], "folder": "Trash"}),
    )
    .await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["expunged"], 1, "{v}");
    let (messages, used, sizes) = account().await;
    assert_eq!((messages, used, sizes), (2, size_of(b) + size_of(c), used));

    // A delete that says Trash names b (in Trash) and c (in the Inbox): b goes for good, c only
    // to Trash.
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/delete",
        json!({"ids": [b], "folder": "Inbox"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(
        &fd,
        &alice,
        "/api/v1/messages/delete",
        json!({"ids": [b, c], "folder": "Trash"}),
    )
    .await;
    let (status, body) = status_and_text(r).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["expunged"].clone(), v["trashed"].clone()),
        (json!(1), json!([c])),
        "{v}"
    );
    let trash = fd
        .json(&alice, "/api/v1/folders/Trash/messages")
        .await
        .unwrap();
    assert_eq!(ids(&trash), vec![c]);
    let (messages, used, sizes) = account().await;
    assert_eq!((messages, used, sizes), (1, size_of(c), used));
}
