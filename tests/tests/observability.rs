//! What operators see of a whole HCU (`mailctl up`): every process's `/metrics` has its role's
//! metric families after a little traffic, and one front-door request's id can be followed from
//! the answer's header into the front door's log and the log of the store that served it.

use std::collections::BTreeMap;
use std::time::Duration;

use megamail_tests::support::eventually;
use megamail_tests::support::mail::smtplib;
use megamail_tests::support::metrics::{metric, sample, scrape};
use megamail_tests::up::{self, addr, mailctl, ok, url_addr, Up};
use serde_json::Value;

const CAROL: &str = "carol@megamail.test";

/// Families every process of a role exports (histograms by their `_bucket` series).
fn always(role: &str) -> &'static [&'static str] {
    match role {
        "ustore" => &[
            "ustore_requests_total",
            "ustore_request_seconds_bucket",
            "ustore_in_flight",
            "ustore_shed_total",
            "ustore_sync_writes_total",
            "ustore_bytes_written_total",
            "ustore_wal_syncs_total",
            "ustore_block_cache_hits_total",
            "ustore_block_cache_misses_total",
            "ustore_block_cache_hit_ratio",
            "ustore_page_reads_bucket",
            "ustore_page_blocks_bucket",
        ],
        "mserv" => &[
            "mserv_requests_total",
            "mserv_request_seconds_bucket",
            "mserv_in_flight",
            "mserv_shed_total",
        ],
        "smtp-in" => &[
            "smtp_requests_total",
            "smtp_request_seconds_bucket",
            "smtp_in_flight",
            "smtp_shed_total",
            "smtp_sessions_total",
            "smtp_messages_total",
            "smtp_received_bytes_total",
            "smtp_replies_total",
        ],
        "frontdoor" => &[
            "frontdoor_http_requests_total",
            "frontdoor_http_request_seconds_bucket",
            "frontdoor_http_in_flight",
            "frontdoor_http_shed_total",
        ],
        "login" => &[
            "login_http_requests_total",
            "login_http_request_seconds_bucket",
            "login_http_in_flight",
            "login_http_shed_total",
            "login_attempts_total",
        ],
        _ => &[],
    }
}

/// Families that appear once a process of the role has counted one (errors are only exported
/// after the first): at least one process of the role must have them after the test's traffic.
fn somewhere(role: &str) -> &'static [&'static str] {
    match role {
        "ustore" => &["ustore_errors_total"],
        "mserv" => &["mserv_errors_total"],
        "smtp-in" => &["smtp_errors_total"],
        "frontdoor" => &["frontdoor_http_errors_total", "frontdoor_store_calls_total"],
        "login" => &["login_http_errors_total"],
        _ => &[],
    }
}

/// The metric families with at least one sample in a `/metrics` text.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Wait until `path`'s text has a line with `needle` (log lines are written as they happen).
async fn wait_for_log(path: &std::path::Path, needle: &str) -> String {
    let found = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            match text.lines().find(|l| l.contains(needle)) {
                Some(line) => Ok(line.to_string()),
                None => Err(text),
            }
        },
    )
    .await;
    found.unwrap_or_else(|text| {
        panic!(
            "{needle} not in {}; its end:\n{}",
            path.display(),
            &text[text.floor_char_boundary(text.len().saturating_sub(3000))..]
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_exports_its_metrics_and_a_request_id_crosses_the_tiers() {
    // The store logs each request with its trace at debug under `ustore::request`.
    let up = Up::start_with_env(&[("RUST_LOG", "info,ustore::request=debug")]).await;
    let e = up.endpoints();
    ok(&mailctl(
        &up.data,
        &["user", "add", CAROL],
        Some("carol-password\n"),
    ));
    let show: Value = serde_json::from_str(&ok(&mailctl(
        &up.data,
        &["--json", "user", "show", CAROL],
        None,
    )))
    .unwrap();
    let store = show["store"].as_str().unwrap().to_string();

    // Traffic: the synthetic transaction through every tier, then a few refusals.
    up.probe_until_ok(Duration::from_secs(60)).await;
    let replies = smtplib(
        addr(&e["smtp"]),
        "s.ehlo()\nprint(s.mail('a@remote.test')[0], s.rcpt('nobody@megamail.test')[0])\n\
         s.rset()\ns.sendmail('a@remote.test',['carol@megamail.test'],b'Subject: hi\\r\\n\\r\\nhello\\r\\n')\n\
         s.quit()\n",
    );
    assert_eq!(replies.trim(), "250 550");
    let login = url_addr(e["login_url"].as_str().unwrap());
    let (status, _) = up::sign_in(login, "carol@megamail.test", "wrong").await;
    assert_eq!(status, 401);
    let (status, session) = up::sign_in(login, "carol@megamail.test", "carol-password").await;
    assert_eq!(status, 200);
    let session = session.unwrap();
    let a = session.get("/api/v1/messages/999999").await.unwrap();
    assert_eq!(a.status, 404);
    let up::ApiSession { door, auth } = session;
    let door_url = format!("http://{door}");

    // One request with the caller's id: in the answer, the front door's log and the store's.
    let id = format!("obs-{:016x}", rand::random::<u64>());
    let client = reqwest::Client::new();
    let r = client
        .get(format!(
            "{}/api/v1/folders/Inbox/messages",
            door_url.trim_end_matches('/')
        ))
        .header("Authorization", &auth)
        .header("X-Request-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], id.as_str());
    let processes = e["processes"].as_array().unwrap();
    let door_name = processes
        .iter()
        .find(|p| p["role"] == "frontdoor" && addr(&p["listen"]) == door)
        .map(|p| p["name"].as_str().unwrap().to_string())
        .expect("the front door is in endpoints.json");
    let logs = up.data.join("logs");
    let line = wait_for_log(&logs.join(format!("{door_name}.log")), &id).await;
    println!("{door_name}: {line}");
    assert!(
        line.contains("request_id") && line.contains("status=200"),
        "{line}"
    );
    assert!(line.contains("/api/v1/folders/Inbox/messages"), "{line}");
    let line = wait_for_log(&logs.join(format!("{store}.log")), &id).await;
    println!("{store}: {line}");
    assert!(line.contains("trace") && line.contains(CAROL), "{line}");
    // A request id that is not sane is replaced, never echoed.
    let r = client
        .get(format!("{}/healthz", door_url.trim_end_matches('/')))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let given = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!given.is_empty() && !given.contains(' '), "{given}");

    // A sign-in's id: in login's answer and log, and in the log of the store that checked it.
    let id = format!("obs-login-{:016x}", rand::random::<u64>());
    let r = client
        .post(format!("http://{login}/api/v1/session"))
        .header("X-Request-Id", &id)
        .json(&serde_json::json!({"user": CAROL, "password": "carol-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], id.as_str());
    let line = wait_for_log(&logs.join("login.log"), &id).await;
    assert!(
        line.contains("signed in") || line.contains("status=200"),
        "{line}"
    );
    let line = wait_for_log(&logs.join(format!("{store}.log")), &id).await;
    assert!(line.contains(CAROL), "{line}");

    // Every process's /metrics has its role's families.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in processes {
        let (name, role) = (p["name"].as_str().unwrap(), p["role"].as_str().unwrap());
        let text = scrape(addr(&p["admin"])).await.unwrap();
        let have = families(&text);
        for family in always(role) {
            assert!(
                have.iter().any(|f| f == family),
                "{name} ({role}) has no {family}"
            );
        }
        seen.entry(role.to_string()).or_default().extend(have);
        if role == "ustore" {
            let v = |s: &str| sample(&text, s).unwrap_or(-1.0);
            println!(
                "{name}: sync writes {}, WAL syncs {}, bytes written {}, block cache hit ratio {:.2}, \
                 folder pages {}",
                v("ustore_sync_writes_total"),
                v("ustore_wal_syncs_total"),
                v("ustore_bytes_written_total"),
                v("ustore_block_cache_hit_ratio"),
                v("ustore_page_reads_count"),
            );
        }
    }
    for role in ["ustore", "mserv", "smtp-in", "frontdoor", "login"] {
        let have = &seen[role];
        for family in somewhere(role) {
            assert!(have.iter().any(|f| f == family), "no {role} has {family}");
        }
    }
    let store_admin = processes
        .iter()
        .find(|p| p["name"] == store.as_str())
        .map(|p| addr(&p["admin"]))
        .unwrap();
    let pages = metric(store_admin, "ustore_page_reads_count")
        .await
        .unwrap();
    assert!(pages >= 1.0, "no folder page counted on {store}");
}
