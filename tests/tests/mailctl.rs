//! `mailctl up` runs a whole HCU (3 mserv, 2 ustore, 2 frontdoor, 1 login, 1 smtp-in,
//! 2 smtp-out) as real processes; the other mailctl commands run against it, as an operator would type them.

use std::net::SocketAddr;
use std::time::Duration;

use megamail_tests::free_addr;
use megamail_tests::support::dns::{DnsServer, Zone};
use megamail_tests::support::eventually;
use megamail_tests::support::mail::smtplib;
use megamail_tests::support::metrics::scrape;
use megamail_tests::up::{self, addr, mailctl, ok, url_addr, Up};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_every_role_and_a_new_user_gets_mail_through_smtp_and_the_api() {
    let up = Up::start().await;
    let e = up.endpoints();
    // Every role answers its health check.
    let rows = up.status();
    let roles: Vec<&str> = rows.iter().map(|r| r["role"].as_str().unwrap()).collect();
    for (role, n) in [
        ("mailctl", 1),
        ("mserv", 3),
        ("ustore", 2),
        ("frontdoor", 2),
        ("login", 1),
        ("smtp-in", 1),
        ("smtp-out", 2),
    ] {
        assert_eq!(roles.iter().filter(|r| **r == role).count(), n, "{role}");
    }
    assert_eq!(
        rows.iter().filter(|r| r["raft_role"] == "leader").count(),
        1,
        "{rows:?}"
    );
    // The human table says the same.
    let table = ok(&mailctl(&up.data, &["status"], None));
    assert!(
        table.contains("frontdoor-2") && table.contains("leader"),
        "{table}"
    );

    // Users: add (password on stdin), show, passwd; bad input is refused clearly.
    ok(&mailctl(
        &up.data,
        &["user", "add", "carol@megamail.test", "--store", "store-2:1"],
        Some("first-password\n"),
    ));
    let again = mailctl(
        &up.data,
        &["user", "add", "carol@megamail.test"],
        Some("x\n"),
    );
    assert!(!again.status.success());
    let foreign = mailctl(
        &up.data,
        &["user", "add", "dave@elsewhere.test"],
        Some("x\n"),
    );
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("domain"));
    let empty = mailctl(&up.data, &["user", "add", "erin@megamail.test"], Some(""));
    assert!(!empty.status.success());
    let show: Value = serde_json::from_slice(
        &mailctl(
            &up.data,
            &["--json", "user", "show", "carol@megamail.test"],
            None,
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        (show["store"].as_str(), show["segment"].as_u64()),
        (Some("store-2"), Some(1))
    );
    ok(&mailctl(
        &up.data,
        &["user", "passwd", "carol@megamail.test"],
        Some("second-password\n"),
    ));

    // Mail in through SMTP ...
    smtplib(
        addr(&e["smtp"]),
        "s.sendmail('a@remote.test',['carol@megamail.test'],b'Subject: via mailctl up\\r\\nMessage-ID: <up@remote.test>\\r\\n\\r\\nhello carol\\r\\n')\ns.quit()\n",
    );

    // ... read through the JSON API after signing in with the new password.
    let login = url_addr(e["login_url"].as_str().unwrap());
    let (status, session) = up::sign_in(login, "carol@megamail.test", "second-password").await;
    assert_eq!(status, 200);
    let session = session.unwrap();
    let a = session
        .get("/api/v1/folders/Inbox/messages?offset=0&limit=10")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&a.body);
    assert_eq!(a.status, 200, "{text}");
    assert!(text.contains("via mailctl up"), "{text}");

    // Sending: the outbound workers deliver to a local user at once; a remote recipient waits
    // in carol's queue (no DNS server answers here) until an operator gives it up.
    let send = serde_json::json!({"to": ["carol@megamail.test", "x@remote.test"],
        "subject": "queued here", "text": "hi"});
    let a = session.post_json("/api/v1/send", &send).await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let entry = eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = ok(&mailctl(
                &up.data,
                &["--json", "queue", "list", "--user", "carol@megamail.test"],
                None,
            ));
            let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
            let remote = rows.iter().find(|r| r["rcpt"] == "x@remote.test").cloned();
            let local = rows
                .iter()
                .find(|r| r["rcpt"] == "carol@megamail.test")
                .cloned();
            match (local, remote) {
                (Some(l), Some(r))
                    if l["state"] == "delivered" && r["attempts"].as_u64() >= Some(1) =>
                {
                    Ok(r)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(entry["state"], "queued", "{entry}");
    let id = entry["id"].as_str().unwrap().to_string();
    let pending = ok(&mailctl(
        &up.data,
        &["queue", "list", "--domain", "remote.test"],
        None,
    ));
    assert!(
        pending.contains(&id) && pending.contains("x@remote.test"),
        "{pending}"
    );
    let retried: Value = serde_json::from_str(&ok(&mailctl(
        &up.data,
        &["--json", "queue", "retry", "--domain", "remote.test"],
        None,
    )))
    .unwrap();
    assert_eq!(retried["made_due"], 1, "{retried}");
    // Tried again at once (not five minutes later), and back in the queue.
    let again = eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = ok(&mailctl(&up.data, &["--json", "queue", "show", &id], None));
            let e: Value = serde_json::from_str(&out).unwrap();
            if e["attempts"].as_u64() >= Some(2) && e["state"] == "queued" {
                Ok(e)
            } else {
                Err(e)
            }
        },
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
    let shown = ok(&mailctl(&up.data, &["queue", "show", &id], None));
    assert!(shown.contains("to        x@remote.test"), "{shown}");
    ok(&mailctl(
        &up.data,
        &["queue", "delete", &id, "--bounce"],
        None,
    ));
    let pending = ok(&mailctl(&up.data, &["queue", "list"], None));
    assert!(!pending.contains(&id), "{pending}");
    assert!(!mailctl(&up.data, &["queue", "delete", &id], None)
        .status
        .success());
    let inbox = eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let a = session
                .get("/api/v1/folders/Inbox/messages?offset=0&limit=10")
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&a.body).to_string();
            if text.contains("Undelivered Mail Returned to Sender") && text.contains("queued here")
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert!(inbox.is_ok(), "{inbox:?}");

    // The probe also sends out when told where: here to a local user, through the workers.
    let probe: Value = serde_json::from_str(&ok(&mailctl(
        &up.data,
        &["--json", "probe", "--send-to", "carol@megamail.test"],
        None,
    )))
    .unwrap();
    assert_eq!(probe["ok"], true, "{probe}");
    assert!(probe["delivered_ms"].as_f64().is_some(), "{probe}");
    assert!(
        probe["delivery_reply"].as_str().unwrap().starts_with("250"),
        "{probe}"
    );

    // Stores: list, drain (new users avoid it), add refuses a store that does not answer.
    ok(&mailctl(&up.data, &["store", "drain", "store-1"], None));
    let list = ok(&mailctl(&up.data, &["store", "list"], None));
    assert!(list.contains("draining"), "{list}");
    for u in ["f1", "f2", "f3"] {
        let out = ok(&mailctl(
            &up.data,
            &["--json", "user", "add", &format!("{u}@megamail.test")],
            Some("pw\n"),
        ));
        assert!(out.contains("store-2"), "{out}");
    }
    let gone = free_addr().to_string();
    let bad = mailctl(&up.data, &["store", "add", "store-9", "--xfs", &gone], None);
    assert!(!bad.status.success());
    ok(&mailctl(
        &up.data,
        &["user", "del", "f3@megamail.test"],
        None,
    ));
    assert!(
        !mailctl(&up.data, &["user", "show", "f3@megamail.test"], None)
            .status
            .success()
    );

    domains_are_hosted_and_keys_rotated_without_a_restart(&up).await;
}

/// The answer smtp-in gives `RCPT TO:<rcpt>`, through Python's smtplib.
fn rcpt_code(smtp: SocketAddr, rcpt: &str) -> u16 {
    smtplib(
        smtp,
        &format!("s.ehlo()\ns.mail('a@remote.test')\nprint(s.rcpt('{rcpt}')[0])\ns.quit()\n"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// `mailctl domain` and `mailctl dkim` change what the running roles do: smtp-in takes mail for
/// a newly hosted domain (and stops when it goes), a key is activated only once DNS serves it.
async fn domains_are_hosted_and_keys_rotated_without_a_restart(up: &Up) {
    let e = up.endpoints();
    let smtp = addr(&e["smtp"]);
    assert_eq!(rcpt_code(smtp, "dave@newdom.test"), 550);
    let added: Value = serde_json::from_str(&ok(&mailctl(
        &up.data,
        &[
            "--json",
            "domain",
            "add",
            "NewDom.test",
            "--selector",
            "first",
        ],
        None,
    )))
    .unwrap();
    assert_eq!(added["domain"], "newdom.test", "{added}");
    assert_eq!(added["dkim"]["state"], "active", "{added}");
    assert!(
        added["dkim"]["txt"]
            .as_str()
            .unwrap()
            .starts_with("v=DKIM1; k=rsa; p="),
        "{added}"
    );
    let again = mailctl(&up.data, &["domain", "add", "newdom.test"], None);
    assert!(!again.status.success());
    ok(&mailctl(
        &up.data,
        &["user", "add", "dave@newdom.test"],
        Some("pw\n"),
    ));
    // smtp-in learns of the domain from the index, without a restart.
    let code = eventually(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            match rcpt_code(smtp, "dave@newdom.test") {
                250 => Ok(250),
                c => Err(c),
            }
        },
    )
    .await;
    assert_eq!(code, Ok(250));

    // A rotation: the new key waits until DNS serves it.
    let rotated: Value = serde_json::from_str(&ok(&mailctl(
        &up.data,
        &[
            "--json",
            "dkim",
            "rotate",
            "newdom.test",
            "--algorithm",
            "ed25519",
            "--selector",
            "second",
        ],
        None,
    )))
    .unwrap();
    assert_eq!(rotated["pending"]["state"], "pending", "{rotated}");
    let name = rotated["pending"]["name"].as_str().unwrap().to_string();
    assert_eq!(name, "second._domainkey.newdom.test");
    let txt = rotated["pending"]["txt"].as_str().unwrap().to_string();
    assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
    let empty = DnsServer::start(vec![Zone::new("newdom.test")]).await;
    let unpublished = mailctl(
        &up.data,
        &[
            "dkim",
            "activate",
            "newdom.test",
            "--resolver",
            &empty.addr.to_string(),
        ],
        None,
    );
    assert!(!unpublished.status.success());
    let why = String::from_utf8_lossy(&unpublished.stderr);
    assert!(why.contains("does not serve the new key"), "{why}");
    empty.stop().await;
    let dns = DnsServer::start(vec![Zone::new("newdom.test").txt(&name, &txt)]).await;
    ok(&mailctl(
        &up.data,
        &[
            "dkim",
            "activate",
            "newdom.test",
            "--resolver",
            &dns.addr.to_string(),
        ],
        None,
    ));
    dns.stop().await;
    let list: Vec<Value> =
        serde_json::from_str(&ok(&mailctl(&up.data, &["--json", "domain", "list"], None))).unwrap();
    let d = list.iter().find(|d| d["domain"] == "newdom.test").unwrap();
    let states: Vec<(&str, &str)> = d["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap(),
                k["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(states.contains(&("first", "retired")), "{d}");
    assert!(states.contains(&("second", "active")), "{d}");
    // Nothing to activate now.
    assert!(!mailctl(
        &up.data,
        &["dkim", "activate", "newdom.test", "--force"],
        None
    )
    .status
    .success());

    // A domain with users stays; without them it goes, and smtp-in refuses its mail again.
    let busy = mailctl(&up.data, &["domain", "del", "newdom.test"], None);
    assert!(!busy.status.success());
    ok(&mailctl(
        &up.data,
        &["user", "del", "dave@newdom.test"],
        None,
    ));
    ok(&mailctl(&up.data, &["domain", "del", "newdom.test"], None));
    let code = eventually(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            match rcpt_code(smtp, "dave@newdom.test") {
                550 => Ok(550),
                c => Err(c),
            }
        },
    )
    .await;
    assert_eq!(code, Ok(550));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_killed_with_9_is_restarted_and_the_probe_passes_again() {
    let mut up = Up::start().await;
    let first = up.probe_until_ok(Duration::from_secs(30)).await;
    println!("first probe ok after {first:?}");
    for name in [
        "mserv-1",
        "store-1",
        "store-2",
        "smtp-in",
        "out-1",
        "login",
        "frontdoor-1",
        "frontdoor-2",
    ] {
        let pid = up.pid_of(name);
        // SAFETY: SIGKILL to a process the test's supervisor started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let t = up.probe_until_ok(Duration::from_secs(60)).await;
        println!("{name} (pid {pid}) killed: probe ok again after {t:?}");
        up.wait_all_ok(Duration::from_secs(60)).await;
        assert_ne!(up.pid_of(name), pid, "{name} was not restarted");
    }
    let metrics = scrape(addr(&up.endpoints()["supervisor_admin"]))
        .await
        .unwrap();
    assert!(
        metrics.contains("mailctl_restarts_total{name=\"smtp-in\",role=\"smtp-in\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_child_and_frees_every_port() {
    let mut up = Up::start().await;
    let e = up.endpoints();
    let pids: Vec<i32> = up
        .status()
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert_eq!(pids.len(), 12);
    let st = up.terminate();
    assert!(st.success(), "{st}:\n{}", up.log());
    for pid in pids {
        // SAFETY: signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "pid {pid} still running");
    }
    let mut addrs: Vec<SocketAddr> = vec![addr(&e["supervisor_admin"])];
    for p in e["processes"].as_array().unwrap() {
        addrs.push(addr(&p["listen"]));
        addrs.push(addr(&p["admin"]));
    }
    for a in addrs {
        assert!(
            std::net::TcpListener::bind(a).is_ok(),
            "{a} still taken after mailctl up stopped"
        );
    }
}
