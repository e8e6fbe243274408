//! The simulated users and the mail arriving for them: closed-loop web sessions (sign in, folder
//! list, Inbox page, message, sometimes a send) with exponential think times, and an open-loop
//! Poisson stream of SMTP arrivals. Every operation is timed into a shared `Tally`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lettre::address::Envelope;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::mix::{self, SizeModel};

/// The operations measured, in report order.
pub const OPS: &[&str] = &[
    "signin",
    "folders",
    "folder_page",
    "message",
    "send",
    "smtp",
];
/// The operations that are page views on a front door.
pub const PAGE_OPS: &[&str] = &["folders", "folder_page", "message", "send"];

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// SMTP arrivals in flight at once; an arrival past this counts as an error (the HCU is behind).
const SMTP_IN_FLIGHT: usize = 256;

/// One timed operation.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the load started, at the start of the operation.
    pub start: f64,
    pub micros: u32,
    pub ok: bool,
    /// Message bytes sent (SMTP and sends).
    pub bytes: u32,
}

/// Every sample so far, per operation, and the first error of each.
#[derive(Default)]
pub struct Tally {
    pub samples: BTreeMap<&'static str, Vec<Sample>>,
    pub first_error: BTreeMap<&'static str, String>,
}

/// What the load tasks share.
pub struct Ctx {
    pub users: Vec<String>,
    pub password: String,
    pub login_url: String,
    pub smtp: SocketAddr,
    pub http: reqwest::Client,
    pub mailer: AsyncSmtpTransport<Tokio1Executor>,
    pub sizes: SizeModel,
    pub think_ms: f64,
    pub pages_per_session: f64,
    pub send_fraction: f64,
    pub day_night_secs: Option<f64>,
    pub started: Instant,
    pub stop: AtomicBool,
    pub tally: Mutex<Tally>,
}

impl Ctx {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record<T>(&self, op: &'static str, start: f64, bytes: usize, r: &anyhow::Result<T>) {
        let micros = ((self.now() - start) * 1e6).clamp(0.0, u32::MAX as f64) as u32;
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        t.samples.entry(op).or_default().push(Sample {
            start,
            micros,
            ok: r.is_ok(),
            bytes: bytes.min(u32::MAX as usize) as u32,
        });
        if let Err(e) = r {
            t.first_error.entry(op).or_insert_with(|| format!("{e:#}"));
        }
    }

    /// Sleep a think time (longer at night), or less if the run stops meanwhile.
    async fn think(&self, rng: &mut StdRng) {
        let level = mix::level(self.now(), self.day_night_secs);
        let secs = mix::exponential(rng, self.think_ms / 1000.0 / level);
        let until = Instant::now() + Duration::from_secs_f64(secs.min(60.0));
        while !self.stopped() && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }
}

/// An SMTP transport to smtp-in (one connection per message, as most senders do).
pub fn mailer(smtp: SocketAddr) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .timeout(Some(HTTP_TIMEOUT))
        .build()
}

/// Send `body` from `from` to `to` through smtp-in.
pub async fn smtp_send(
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    from: &str,
    to: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let from: Address = from.parse().with_context(|| format!("address {from}"))?;
    let to: Address = to.parse().with_context(|| format!("address {to}"))?;
    let envelope = Envelope::new(Some(from), vec![to]).context("building the envelope")?;
    mailer
        .send_raw(&envelope, body)
        .await
        .context("sending through smtp-in")?;
    Ok(())
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).to_string()
}

/// A signed-in session: its token and the front door the login server chose.
struct Session {
    token: String,
    door: String,
}

async fn sign_in(ctx: &Ctx, user: &str) -> anyhow::Result<Session> {
    let r = ctx
        .http
        .post(format!("{}/api/v1/session", ctx.login_url))
        .json(&json!({"user": user, "password": ctx.password}))
        .send()
        .await
        .context("login")?;
    let status = r.status();
    let body = r.bytes().await.context("reading the login answer")?;
    if status != 200 {
        bail!("login answered {status}: {}", excerpt(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("login answer")?;
    Ok(Session {
        token: v["token"].as_str().context("no token")?.to_string(),
        door: v["front_door"]
            .as_str()
            .context("no front door")?
            .trim_end_matches('/')
            .to_string(),
    })
}

/// GET a page of the webmail with the session cookie; its body.
async fn page(ctx: &Ctx, s: &Session, path: &str) -> anyhow::Result<String> {
    let r = ctx
        .http
        .get(format!("{}{path}", s.door))
        .header("Cookie", format!("mm_session={}", s.token))
        .send()
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = r.status();
    let body = r.bytes().await.with_context(|| format!("reading {path}"))?;
    if status != 200 {
        bail!("GET {path} answered {status}: {}", excerpt(&body));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The message ids a folder page links to.
pub fn message_ids(html: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = html
        .split("href=\"/message/")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    ids.dedup();
    ids
}

async fn send(ctx: &Ctx, s: &Session, to: &str, rng: &mut StdRng) -> anyhow::Result<usize> {
    // Mail written in a browser: text only, of the same size law but without attachments.
    let size = ctx.sizes.draw(rng).min(ctx.sizes.attach_over);
    let text = mix::text(rng, size);
    let body = json!({"to": [to], "subject": mix::subject(rng), "text": text});
    let r = ctx
        .http
        .post(format!("{}/api/v1/send", s.door))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .context("POST /api/v1/send")?;
    let status = r.status();
    let answer = r.bytes().await.context("reading the send answer")?;
    if status != 200 {
        bail!("send answered {status}: {}", excerpt(&answer));
    }
    Ok(text.len())
}

/// One simulated user after another, until the run stops.
pub async fn session_loop(ctx: Arc<Ctx>, index: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut user = index % ctx.users.len();
    // Spread the first sign-ins over the first think time.
    ctx.think(&mut rng).await;
    while !ctx.stopped() {
        let t = ctx.now();
        let r = sign_in(&ctx, &ctx.users[user]).await;
        ctx.record("signin", t, 0, &r);
        let Ok(s) = r else {
            ctx.think(&mut rng).await;
            continue;
        };
        let mut pages = 1.0 + mix::exponential(&mut rng, ctx.pages_per_session);
        let mut ids = Vec::new();
        let mut next = "folder_page";
        while pages > 0.0 && !ctx.stopped() {
            let t = ctx.now();
            match next {
                "folders" => {
                    let r = page(&ctx, &s, "/folders").await;
                    ctx.record("folders", t, 0, &r);
                }
                "message" if !ids.is_empty() => {
                    let id = ids[rng.random_range(0..ids.len())];
                    let r = page(&ctx, &s, &format!("/message/{id}")).await;
                    ctx.record("message", t, 0, &r);
                }
                "send" if ctx.users.len() > 1 => {
                    let mut to = rng.random_range(0..ctx.users.len() - 1);
                    if to >= user {
                        to += 1;
                    }
                    let r = send(&ctx, &s, &ctx.users[to], &mut rng).await;
                    let bytes = r.as_ref().copied().unwrap_or(0);
                    ctx.record("send", t, bytes, &r);
                }
                _ => {
                    let r = page(&ctx, &s, "/folder/Inbox").await;
                    if let Ok(html) = &r {
                        ids = message_ids(html);
                    }
                    ctx.record("folder_page", t, 0, &r);
                }
            }
            pages -= 1.0;
            let x: f64 = rng.random();
            next = if x < ctx.send_fraction {
                "send"
            } else if x < ctx.send_fraction + 0.1 {
                "folders"
            } else if x < 0.55 {
                "folder_page"
            } else {
                "message"
            };
            ctx.think(&mut rng).await;
        }
        // The session ends; another user signs in on this seat.
        user = rng.random_range(0..ctx.users.len());
    }
}

/// Mail from outside: an open-loop Poisson process at `rate` messages/s (at the peak), each to a
/// random simulated user, until the run stops.
pub async fn smtp_loop(ctx: Arc<Ctx>, rate: f64, seed: u64) {
    if rate <= 0.0 {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5347_5450);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(SMTP_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = Instant::now();
    let mut n = 0u64;
    loop {
        next += Duration::from_secs_f64(mix::exponential(&mut rng, 1.0 / rate));
        tokio::time::sleep_until(next.into()).await;
        if ctx.stopped() {
            break;
        }
        // Thinning: at night a share of the peak's arrivals does not happen.
        if rng.random::<f64>() > mix::level(ctx.now(), ctx.day_night_secs) {
            continue;
        }
        n += 1;
        let to = ctx.users[rng.random_range(0..ctx.users.len())].clone();
        let from = format!("sender{}@remote.test", n % 997);
        let size = ctx.sizes.draw(&mut rng);
        let body = mix::message(&mut rng, &from, &to, size, &ctx.sizes);
        let t = ctx.now();
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let r: anyhow::Result<()> = Err(anyhow::anyhow!(
                "{SMTP_IN_FLIGHT} messages already in flight: the HCU is behind the arrival rate"
            ));
            ctx.record("smtp", t, 0, &r);
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let r = smtp_send(&ctx.mailer, &from, &to, &body).await;
            ctx.record("smtp", t, body.len(), &r);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_message_links() {
        let html = r#"<a href="/folder/Inbox">x</a><a href="/message/12">a</a><a href="/message/12">b</a>
            <a href="/message/7">c</a><a href="/message/x">d</a>"#;
        assert_eq!(message_ids(html), vec![12, 7]);
        assert!(message_ids("<p>empty</p>").is_empty());
    }
}
