//! The first calls after a store comes back: on a whole HCU run by `mailctl up`, a user on
//! store-1 signs in, loads a page and gets a mail, so login, the front door and smtp-in all hold
//! pooled connections to store-1. The store is killed with SIGKILL, the supervisor restarts it,
//! and after it is healthy everything idles for 60 s. Then the very first sign-in must be 200
//! (not 503), the very first front-door call 200, and the very first SMTP delivery `250` (not
//! `451`), with the mail in the mailbox: no caller may spend its first call discovering that its
//! pooled connection died with the old process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::{AsyncTransport, Message};
use megamail_tests::http_get;
use megamail_tests::support::eventually;
use megamail_tests::support::mail::mailer;
use megamail_tests::up::{self, addr, mailctl, ok, url_addr, ApiSession, Up};
use serde_json::Value;

const USER: &str = "first-call@megamail.test";
const PASSWORD: &str = "first-call-pw";
const STORE: &str = "store-1";
const IDLE: Duration = Duration::from_secs(60);

async fn api_get(s: &ApiSession, path: &str) -> (u16, Value) {
    let a = s.get(path).await.expect("the front door answers");
    let body = a.json().unwrap_or(Value::Null);
    (a.status, body)
}

fn inbox_total(folders: &Value) -> Option<u64> {
    folders["folders"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == "Inbox")?["total"]
        .as_u64()
}

fn mail(subject: &str) -> Message {
    Message::builder()
        .from("sender@remote.test".parse().unwrap())
        .to(USER.parse().unwrap())
        .subject(subject)
        .body(format!("{subject}\n"))
        .unwrap()
}

/// One SMTP transaction on a fresh connection; the final reply's code.
async fn deliver(smtp: SocketAddr, subject: &str) -> String {
    match mailer(smtp).send(mail(subject)).await {
        Ok(r) => r.code().to_string(),
        Err(e) => format!("refused: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sign_in_page_and_delivery_after_a_store_restart_and_idle_succeed() {
    let up = Up::start().await;
    let e = up.endpoints();
    let login = url_addr(e["login_url"].as_str().unwrap());
    let smtp = addr(&e["smtp"]);
    let store_admin = e["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == STORE)
        .map(|p| addr(&p["admin"]))
        .expect("store-1 in endpoints.json");
    ok(&mailctl(
        &up.data,
        &["user", "add", USER, "--store", &format!("{STORE}:0")],
        Some(&format!("{PASSWORD}\n")),
    ));

    // Warm every caller's pool to store-1: a sign-in (login), a page (the front door), a
    // delivery (smtp-in).
    let (code, session) = up::sign_in(login, USER, PASSWORD).await;
    assert_eq!(code, 200, "sign-in before the restart");
    let session = session.unwrap();
    let (code, folders) = api_get(&session, "/api/v1/folders").await;
    assert_eq!(code, 200, "page before the restart: {folders}");
    assert_eq!(inbox_total(&folders), Some(0), "{folders}");
    assert_eq!(deliver(smtp, "before the restart").await, "250");

    // kill -9 the store; the supervisor brings it back on the same port and data.
    let pid = up.pid_of(STORE);
    let killed = Instant::now();
    // SAFETY: SIGKILL to a process the test's supervisor started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let back = eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let restarted = up
                .status()
                .iter()
                .any(|r| r["name"] == STORE && r["pid"].as_i64().is_some_and(|p| p as i32 != pid));
            match http_get(store_admin, "/healthz").await {
                Ok((200, _)) if restarted => Ok(()),
                _ => Err(()),
            }
        },
    )
    .await;
    assert!(back.is_ok(), "{STORE} not back within 60 s:\n{}", up.log());
    let back = killed.elapsed();
    println!("{STORE} (pid {pid}) killed; restarted and healthy after {back:?}");

    tokio::time::sleep(IDLE).await;
    println!("idle for {IDLE:?}");

    // The first call of each kind after the idle.
    let t = Instant::now();
    let (code, session) = up::sign_in(login, USER, PASSWORD).await;
    let sign_in_took = t.elapsed();
    assert_eq!(code, 200, "the first sign-in after the restart");
    let session = session.unwrap();

    let t = Instant::now();
    let (code, folders) = api_get(&session, "/api/v1/folders").await;
    let page_took = t.elapsed();
    assert_eq!(code, 200, "the first page after the restart: {folders}");
    assert_eq!(inbox_total(&folders), Some(1), "{folders}");

    let t = Instant::now();
    let reply = deliver(smtp, "after the restart").await;
    let smtp_took = t.elapsed();
    assert_eq!(reply, "250", "the first delivery after the restart");
    println!(
        "first calls after the restart and {IDLE:?} idle: sign-in 200 in {sign_in_took:?}, \
         page 200 in {page_took:?}, delivery 250 in {smtp_took:?}"
    );

    // The mail is in the mailbox, next to the one from before.
    let (code, page) = api_get(&session, "/api/v1/folders/Inbox/messages?offset=0&limit=10").await;
    assert_eq!(code, 200, "{page}");
    let mut subjects: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        ["after the restart", "before the restart"],
        "{page}"
    );
}
