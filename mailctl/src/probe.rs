//! `mailctl probe`: the synthetic end-to-end transaction operations run all day (the survey's
//! "hidden page"): a message into a probe account through SMTP, a sign-in, the message seen through
//! a front door's API and read back, then removed. Each step is timed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mserv_client::{MservError, Policy};
use serde_json::{json, Value};

use crate::admin::Hcu;
use crate::cli::print;
use runtime::http_client as http;

/// How long the message may take to show through the front door.
const SEEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the outbound message may take to be delivered.
const SENT_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe account's password, kept in `DATA/secrets/probe-password` (made on first use; the
/// account's password is reset when the file is new).
async fn account(hcu: &Hcu) -> anyhow::Result<(String, String)> {
    let domain = hcu.endpoints.domains.first().context("no domain")?;
    let user = format!("probe@{domain}");
    let dir = hcu.endpoints.data_dir.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("probe-password");
    let (password, new_password) = match std::fs::read_to_string(&path) {
        Ok(p) => (p.trim().to_string(), false),
        Err(_) => {
            let p = hex::encode(rand::random::<[u8; 16]>());
            std::fs::write(&path, &p)?;
            (p, true)
        }
    };
    match hcu.mserv.lookup_uncached(&user).await {
        Err(MservError::NoSuchUser) => {
            hcu.add_user(&user, &password, "Probe", Policy::LeastLoaded, 0)
                .await?;
        }
        Err(e) => return Err(e).context("looking up the probe account"),
        Ok(_) if new_password => hcu.passwd(&user, &password).await?,
        Ok(_) => {}
    }
    Ok((user, password))
}

/// Find, anywhere in `v`, the message whose fields hold `needle`; give its id (the nearest
/// `id`/`msg` field on the way down to the needle).
fn find_id(v: &Value, needle: &str) -> Option<u64> {
    search(v, needle).flatten()
}

fn search(v: &Value, needle: &str) -> Option<Option<u64>> {
    match v {
        Value::Object(m) => {
            let own = ["id", "msg", "msg_id"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_u64));
            m.values()
                .find_map(|x| search(x, needle))
                .map(|found| found.or(own))
        }
        Value::Array(a) => a.iter().find_map(|x| search(x, needle)),
        Value::String(s) if s == needle => Some(None),
        _ => None,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Run `mailctl probe`: the transaction once, its timings printed; `Err` names the failed step.
pub async fn run(hcu: &Hcu, send_to: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    match transaction_with(hcu, send_to).await {
        Ok(v) => {
            let mut human = format!(
                "probe OK via {}: smtp {} ms, sign-in {} ms, seen {} ms after sending, read {} ms; total {} ms",
                v["front_door"].as_str().unwrap_or(""),
                v["smtp_ms"],
                v["login_ms"],
                v["seen_ms"],
                v["read_ms"],
                v["total_ms"]
            );
            if let Some(to) = send_to {
                human.push_str(&format!(
                    "\nsent to {to}: delivered {} ms after sending ({})",
                    v["delivered_ms"],
                    v["delivery_reply"].as_str().unwrap_or("")
                ));
            }
            print(json_out, v, human);
            Ok(())
        }
        Err(e) => {
            if json_out {
                println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
            }
            Err(e.context("probe failed"))
        }
    }
}

/// Run the probe once; the timings in milliseconds as JSON, or the step that failed.
pub async fn transaction(hcu: &Hcu) -> anyhow::Result<Value> {
    transaction_with(hcu, None).await
}

/// [`transaction`], and with `send_to` a message out through the outbound workers, timed
/// from the API's send to the queue's `delivered`.
pub async fn transaction_with(hcu: &Hcu, send_to: Option<&str>) -> anyhow::Result<Value> {
    let e = &hcu.endpoints;
    let smtp = e.smtp.context("this HCU has no smtp-in")?;
    let login_url = e
        .login_url
        .clone()
        .context("this HCU has no login server")?;
    let (user, password) = account(hcu).await?;
    let tag = format!("probe {}", hex::encode(rand::random::<[u8; 8]>()));
    let total = Instant::now();

    let t = Instant::now();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .timeout(Some(HTTP_TIMEOUT))
        .build();
    let msg = Message::builder()
        .from("probe-sender@example.test".parse()?)
        .to(user.parse()?)
        .subject(&tag)
        .body(format!("{tag}\n"))?;
    mailer.send(msg).await.context("step smtp: sending")?;
    let smtp_ms = t.elapsed();
    let sent_at = Instant::now();

    let t = Instant::now();
    let (login_addr, _) = http::split_url(&login_url)?;
    let body = json!({"user": user, "password": password}).to_string();
    let a = http::request(
        login_addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        HTTP_TIMEOUT,
    )
    .await
    .context("step login")?;
    if a.status != 200 {
        bail!(
            "step login: answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    let session = a.json()?;
    let token = session["token"]
        .as_str()
        .context("step login: no token in the answer")?
        .to_string();
    let door = session["front_door"]
        .as_str()
        .context("step login: no front door in the answer")?
        .to_string();
    let login_ms = t.elapsed();
    let (door_addr, base) = http::split_url(&door)?;
    let base = base.trim_end_matches('/').to_string();
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];

    let id = loop {
        let a = http::request(
            door_addr,
            "GET",
            &format!("{base}/api/v1/folders/Inbox/messages?offset=0&limit=50"),
            &headers,
            b"",
            HTTP_TIMEOUT,
        )
        .await
        .context("step list")?;
        if a.status != 200 {
            bail!(
                "step list: answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        if let Some(id) = find_id(&a.json()?, &tag) {
            break id;
        }
        if sent_at.elapsed() > SEEN_TIMEOUT {
            bail!("step list: the message did not show within {SEEN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen_ms = sent_at.elapsed();

    let t = Instant::now();
    let a = http::request(
        door_addr,
        "GET",
        &format!("{base}/api/v1/messages/{id}/raw"),
        &headers,
        b"",
        HTTP_TIMEOUT,
    )
    .await
    .context("step read")?;
    if a.status != 200 || !String::from_utf8_lossy(&a.body).contains(&tag) {
        bail!("step read: answered {} without the message", a.status);
    }
    let read_ms = t.elapsed();
    let total_ms = total.elapsed();

    // Clean up: to Trash, then out of Trash; a failure here is reported, not fatal.
    let del = json!({"ids": [id]}).to_string();
    let mut cleanup = "ok".to_string();
    for _ in 0..2 {
        let r = http::request(
            door_addr,
            "POST",
            &format!("{base}/api/v1/messages/delete"),
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            del.as_bytes(),
            HTTP_TIMEOUT,
        )
        .await;
        if let Ok(a) = &r {
            if a.status >= 400 {
                cleanup = format!("delete answered {}", a.status);
            }
        }
    }
    let mut out = json!({
        "ok": true,
        "user": user,
        "front_door": door,
        "smtp_ms": ms(smtp_ms),
        "login_ms": ms(login_ms),
        "seen_ms": ms(seen_ms),
        "read_ms": ms(read_ms),
        "total_ms": ms(total_ms),
        "cleanup": cleanup,
    });
    if let Some(to) = send_to {
        let (delivered, reply) = send_out(door_addr, &base, &auth, to, &tag).await?;
        out["delivered_ms"] = json!(ms(delivered));
        out["delivery_reply"] = json!(reply);
    }
    Ok(out)
}

/// Send a message to `to` through the front door's API and wait for its delivery state to be
/// `delivered`: how long that took, and the receiving server's last reply.
async fn send_out(
    door: std::net::SocketAddr,
    base: &str,
    auth: &str,
    to: &str,
    tag: &str,
) -> anyhow::Result<(Duration, String)> {
    let headers = [
        ("Authorization", auth),
        ("Content-Type", "application/json"),
    ];
    let body = json!({"to": [to], "subject": format!("{tag} out"), "text": format!("{tag}\n")});
    let t = Instant::now();
    let a = http::request(
        door,
        "POST",
        &format!("{base}/api/v1/send"),
        &headers,
        body.to_string().as_bytes(),
        HTTP_TIMEOUT,
    )
    .await
    .context("step send")?;
    if a.status != 200 {
        bail!(
            "step send: answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    let copy = a.json()?["sent_copy"]
        .as_u64()
        .context("step send: no sent copy in the answer")?;
    loop {
        let a = http::request(
            door,
            "GET",
            &format!("{base}/api/v1/messages/{copy}?mark_seen=false"),
            &headers[..1],
            b"",
            HTTP_TIMEOUT,
        )
        .await
        .context("step delivered")?;
        let v = a.json()?;
        let d = &v["delivery"][0];
        match d["state"].as_str() {
            Some("delivered") => {
                return Ok((
                    t.elapsed(),
                    d["last_reply"].as_str().unwrap_or("").to_string(),
                ))
            }
            Some("failed") => bail!(
                "step delivered: {to} failed: {}",
                d["last_reply"].as_str().unwrap_or("")
            ),
            _ if t.elapsed() > SENT_TIMEOUT => bail!(
                "step delivered: not delivered within {SENT_TIMEOUT:?} ({})",
                d["state"].as_str().unwrap_or("state unknown")
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_next_to_the_tag() {
        let v = json!({"messages": [
            {"id": 7, "subject": "other"},
            {"entry": {"id": 9, "summary": {"subject": "probe x"}}},
        ]});
        assert_eq!(find_id(&v, "probe x"), Some(9));
        let v =
            json!({"messages": [{"id": 7, "subject": "other"}, {"id": 9, "subject": "probe x"}]});
        assert_eq!(find_id(&v, "probe x"), Some(9));
        assert_eq!(find_id(&json!([]), "probe x"), None);
    }
}
