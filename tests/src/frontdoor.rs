//! A front door in front of a test HCU: the `frontdoor` process on free loopback ports, session
//! tokens minted the way the login servers mint them (same keys as the front door's config), an
//! HTTP client that does not follow redirects, and mail sent in through smtp-in.

pub use runtime::time::now_secs;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use role_config::FrontdoorConfig;
use session::token::{Claims, SigningKeys};
use xfs::ops;

use crate::hcu::LocalHcu;
use crate::support::eventually;
use crate::{free_addr, Proc};

/// Where a test front door sends browsers without a session (nothing listens there).
pub const LOGIN_URL: &str = "http://127.0.0.1:9/login";

/// The keys tests mint sessions with, as login does (a test front door holds their public
/// half).
pub fn keys() -> SigningKeys {
    crate::web::keys()
}

/// A running front door.
pub struct FrontDoor {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// `http://addr`, no trailing slash.
    pub base: String,
    pub keys: SigningKeys,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl FrontDoor {
    /// Start a front door for `hcu` (its member index, and its smtp-in as the outbound relay),
    /// and wait until it is healthy.
    pub async fn start(hcu: &LocalHcu) -> anyhow::Result<FrontDoor> {
        FrontDoor::start_with(hcu, |_| {}).await
    }

    /// [`FrontDoor::start`] with the test's own settings on top of the harness's.
    pub async fn start_with(
        hcu: &LocalHcu,
        settings: impl FnOnce(&mut FrontdoorConfig),
    ) -> anyhow::Result<FrontDoor> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr();
        let admin = free_addr();
        let mut cfg = FrontdoorConfig {
            internal_tls: crate::support::pki::internal_tls(
                dir.path(),
                xfs::Role::Frontdoor,
                "frontdoor",
            ),
            listen: addr,
            public_url: format!("http://{addr}"),
            login_url: LOGIN_URL.into(),
            mserv: hcu.mserv.addrs(),
            session_keys: crate::web::public_keys(),
            cookie_secure: false,
            session_check_secs: 2,
            store_timeout_ms: 3000,
            admin: crate::admin_config(admin),
            ..Default::default()
        };
        settings(&mut cfg);
        let config = crate::config_text(&cfg);
        let mut proc = Proc::start("frontdoor", "frontdoor", dir.path(), &config, admin)?;
        proc.wait_healthy(Duration::from_secs(60)).await?;
        Ok(FrontDoor {
            proc,
            addr,
            base: format!("http://{addr}"),
            keys: keys(),
            http: client(),
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token for `user` at session generation `gen`, valid for an hour.
    pub fn token_at(&self, user: &str, gen: u64) -> String {
        self.keys.issue(&claims(user, gen, now_secs() + 3600))
    }

    /// A token for `user` at the account's current session generation.
    pub async fn token(&self, hcu: &LocalHcu, user: &str) -> anyhow::Result<String> {
        Ok(self.token_at(user, session_gen(hcu, user).await?))
    }

    /// The CSRF token of the session `token` carries.
    pub fn csrf(&self, token: &str) -> String {
        let c = self
            .keys
            .verifying()
            .verify(token, now_secs())
            .expect("a valid test token");
        c.csrf
    }

    /// A GET with the session in a Bearer header.
    pub async fn get(&self, token: &str, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await?)
    }

    /// A GET with the session in the cookie (as a browser sends it).
    pub async fn page(&self, token: &str, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(path))
            .header("cookie", format!("mm_session={token}"))
            .send()
            .await?)
    }

    /// A form POST with the session cookie; `fields` as given (include `csrf` to pass the check).
    pub async fn post_form(
        &self,
        token: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        Ok(self
            .http
            .post(self.url(path))
            .header("cookie", format!("mm_session={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?)
    }

    /// A JSON API POST with the session in a Bearer header.
    pub async fn post_json(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await?)
    }

    /// A JSON GET that must answer 200.
    pub async fn json(&self, token: &str, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self.get(token, path).await?;
        let status = r.status();
        let text = r.text().await?;
        if status != 200 {
            bail!("GET {path} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {path}: {text}"))
    }
}

/// A page's status and text.
pub async fn status_and_text(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// A signed-in browser at a front door: its session cookie and its CSRF token, which it adds to
/// every form it posts, as the pages' own forms do.
pub struct Browser<'a> {
    pub fd: &'a FrontDoor,
    pub token: String,
    pub csrf: String,
}

impl FrontDoor {
    /// A browser holding the session `token`.
    pub fn browser(&self, token: &str) -> Browser<'_> {
        Browser {
            fd: self,
            token: token.to_string(),
            csrf: self.csrf(token),
        }
    }
}

impl Browser<'_> {
    /// A page (the session in the cookie): its status and text.
    pub async fn page(&self, path: &str) -> (u16, String) {
        let r = self.fd.page(&self.token, path).await;
        status_and_text(r.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    /// A form POST with the CSRF token and `fields`.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        let r = self.fd.post_form(&self.token, path, &all).await;
        r.unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// A form POST that must be answered with a redirect (post/redirect/get): where to.
    pub async fn post_redirect(&self, path: &str, fields: &[(&str, &str)]) -> String {
        let r = self.post(path, fields).await;
        location(&r, &format!("POST {path} {fields:?}"))
    }

    /// `action` on message `id` from the Inbox's page (`POST /messages`), with `extra` fields:
    /// where it redirects.
    pub async fn act(&self, id: u64, action: &str, extra: &[(&str, &str)]) -> String {
        let id = id.to_string();
        let mut fields = vec![("id", id.as_str()), ("folder", "Inbox"), ("action", action)];
        fields.extend_from_slice(extra);
        self.post_redirect("/messages", &fields).await
    }

    /// The compose form sent (multipart, as a browser sends it), with one attachment if given.
    pub async fn compose(
        &self,
        fields: &[(&str, String)],
        file: Option<(&str, &[u8])>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().text("csrf", self.csrf.clone());
        for (k, v) in fields {
            form = form.text(k.to_string(), v.clone());
        }
        if let Some((name, data)) = file {
            let part = reqwest::multipart::Part::bytes(data.to_vec())
                .file_name(name.to_string())
                .mime_str("text/plain")
                .expect("a MIME type");
            form = form.part("attachments", part);
        }
        self.fd
            .http
            .post(self.fd.url("/compose"))
            .header("cookie", format!("mm_session={}", self.token))
            .multipart(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /compose: {e}"))
    }
}

/// A download the browser must save, never show: 200 as `application/octet-stream`. Its
/// `Content-Disposition`.
pub fn download(r: &reqwest::Response, what: &str) -> String {
    assert_eq!(r.status(), 200, "{what}");
    let kind = &r.headers()["content-type"];
    assert_eq!(kind, "application/octet-stream", "{what}");
    let disposition = r.headers()["content-disposition"].to_str();
    disposition.expect("an ASCII header").to_string()
}

/// Where a redirect (303) sends the browser; anything else fails the test, naming `what`.
pub fn location(r: &reqwest::Response, what: &str) -> String {
    assert_eq!(r.status(), 303, "{what}: not a redirect");
    let to = r.headers()["location"].to_str().expect("an ASCII location");
    to.to_string()
}

impl Drop for FrontDoor {
    /// A failing test shows the end of the front door's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- frontdoor log tail:\n{}", self.proc.log_tail());
        }
    }
}

/// Claims for `user` at generation `gen`, expiring at `exp`.
pub fn claims(user: &str, gen: u64, exp: u64) -> Claims {
    Claims {
        exp,
        ..Claims::new(user, gen, now_secs(), 0)
    }
}

/// An HTTP client that does not follow redirects (connections kept for reuse).
pub fn client() -> reqwest::Client {
    crate::web::no_redirects().build().expect("an HTTP client")
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The account's session generation, read from its store.
pub async fn session_gen(hcu: &LocalHcu, user: &str) -> anyhow::Result<u64> {
    let mailbox = hcu.mailbox(user).await?;
    let auth = mailbox
        .run(ops::GetAuth {
            target: mailbox.target.clone(),
        })
        .await?;
    Ok(auth.session_gen)
}

/// Hand `raw` to smtp-in for `to`, from `from`.
pub async fn send_in(hcu: &LocalHcu, from: &str, to: &[&str], raw: &[u8]) -> anyhow::Result<()> {
    crate::support::mail::send_raw(hcu.smtp_addr, from, to, raw).await
}

/// Wait until `user`'s Inbox holds `n` messages.
pub async fn wait_inbox(hcu: &LocalHcu, user: &str, n: u64) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            match hcu.inbox_count(user).await {
                Ok(have) if have >= n => Ok(()),
                Ok(have) => Err(anyhow::anyhow!(
                    "{user}'s Inbox holds {have} messages, not {n}"
                )),
                Err(e) => Err(e),
            }
        },
    )
    .await
}
