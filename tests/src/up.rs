//! `mailctl up` as a test fixture: a whole HCU (3 mserv, 2 ustore, 2 frontdoor, 1 login, 1
//! smtp-in) supervised by the real `mailctl`, on free loopback ports and a temporary directory,
//! and the other mailctl commands run against it as an operator would type them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::poll::{eventually, wait_exit};
use crate::support::succeeded;
use crate::{bin, bin_dir, ensure_built, free_addr};

/// A running `mailctl up` on a temporary directory with free loopback ports.
pub struct Up {
    child: Option<Child>,
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
}

pub fn layout(dir: &Path) -> PathBuf {
    // Distinct free ports (a port freed by one probe may be handed out again).
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 26 {
        ports.insert(free_addr());
    }
    let mut ports = ports.into_iter();
    let mut next = || ports.next().expect("enough ports");
    use mailctl::layout::{Layout, Listen, StoreLayout, Supervisor, WorkerLayout};
    let mut listen = || Listen {
        listen: next(),
        admin: next(),
    };
    let layout = Layout {
        cluster: "hcu-1".into(),
        domains: vec!["megamail.test".into()],
        hostname: "mx.megamail.test".into(),
        supervisor: Supervisor {
            admin: listen().admin,
            restart_backoff_base_ms: 100,
            restart_backoff_cap_ms: 1000,
            stop_timeout_secs: 10,
        },
        mserv: vec![listen(), listen(), listen()],
        frontdoor: vec![listen(), listen()],
        login: Some(listen()),
        smtp_in: Some(listen()),
        // Two outbound workers; no DNS server answers them, so only local mail goes out.
        smtp_out: vec![
            WorkerLayout {
                admin: listen().admin,
            },
            WorkerLayout {
                admin: listen().admin,
            },
        ],
        resolvers: vec![listen().admin],
        backup_roots: Vec::new(),
        internal_plaintext: false,
        ustore: (1..=2)
            .map(|i| {
                let l = listen();
                StoreLayout {
                    name: format!("store-{i}"),
                    listen: l.listen,
                    admin: l.admin,
                    segments: 2,
                }
            })
            .collect(),
    };
    let text = crate::config_text(&layout);
    let path = dir.join("layout.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn mailctl(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("mailctl"));
    cmd.arg("--data").arg(data).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("mailctl runs");
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The standard output of a `mailctl` run that must have succeeded.
pub fn ok(out: &Output) -> String {
    succeeded(out, "mailctl")
}

impl Up {
    pub async fn start() -> Up {
        Up::start_with_env(&[]).await
    }

    /// [`Up::start`] with extra environment for mailctl and every process it starts (e.g.
    /// `RUST_LOG` or `MEGAMAIL_FAULTS`).
    pub async fn start_with_env(env: &[(&str, &str)]) -> Up {
        ensure_built();
        let tmp = tempfile::tempdir().unwrap();
        let layout = layout(tmp.path());
        let data = tmp.path().join("data");
        let log = std::fs::File::create(tmp.path().join("up.log")).unwrap();
        let child = Command::new(bin("mailctl"))
            .arg("--data")
            .arg(&data)
            .arg("up")
            .arg("--config")
            .arg(&layout)
            .env("MEGAMAIL_BIN_DIR", bin_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut up = Up {
            child: Some(child),
            data,
            _tmp: tmp,
        };
        up.wait_all_ok(Duration::from_secs(120)).await;
        up
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("up.log")).unwrap_or_default()
    }

    pub fn endpoints(&self) -> Value {
        let text = std::fs::read_to_string(self.data.join("endpoints.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn status(&self) -> Vec<Value> {
        let out = mailctl(&self.data, &["--json", "status"], None);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// An operator's handle on this HCU (its index and stores), from its endpoints.
    pub fn hcu(&self) -> operator::admin::Hcu {
        let endpoints = operator::endpoints::Endpoints::load(&self.data.join("endpoints.json"))
            .expect("endpoints.json of a running HCU");
        operator::admin::Hcu::new(endpoints).expect("the operator's certificate")
    }

    pub async fn wait_all_ok(&mut self, timeout: Duration) {
        let all_ok = eventually(timeout, Duration::from_millis(250), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mailctl up exited with {st}:\n{}", self.log());
            }
            let ok = self.data.join("endpoints.json").exists() && {
                let rows = self.status();
                rows.len() == 12 && rows.iter().all(|r| r["state"] == "ok")
            };
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(())
                }
            }
        })
        .await;
        assert!(all_ok.is_ok(), "not all healthy:\n{}", self.log());
    }

    pub fn pid_of(&self, name: &str) -> i32 {
        let rows = self.status();
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        row["pid"].as_i64().expect("pid") as i32
    }

    /// Run `mailctl probe` until it succeeds; how long it took.
    pub async fn probe_until_ok(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let probe = eventually(timeout, Duration::from_millis(200), || async {
            let out = mailctl(&self.data, &["--json", "probe"], None);
            if out.status.success() {
                Ok(())
            } else {
                Err(out)
            }
        })
        .await;
        if let Err(out) = probe {
            panic!(
                "probe still failing after {timeout:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        started.elapsed()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: SIGTERM to our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        match wait_exit(&mut child, Duration::from_secs(60)).unwrap() {
            Some(st) => st,
            None => panic!("mailctl up did not exit after SIGTERM:\n{}", self.log()),
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Its children die with it (PR_SET_PDEATHSIG).
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Add `user` (password `pw`) on `store` segment `segment`, as `mailctl user add --store` does.
pub async fn add_user_on(
    hcu: &operator::admin::Hcu,
    user: &str,
    store: &str,
    segment: u32,
) -> mserv_client::Placement {
    let policy = mserv_client::Policy::Explicit {
        store: store.into(),
        segment,
    };
    hcu.add_user(user, "pw", "", policy, 0)
        .await
        .unwrap_or_else(|e| panic!("adding {user} on {store} segment {segment}: {e:#}"))
}

/// A socket address written as a JSON string.
pub fn addr(v: &Value) -> SocketAddr {
    v.as_str().unwrap().parse().unwrap()
}

/// The address of an `http://host:port` URL.
pub fn url_addr(url: &str) -> SocketAddr {
    mailctl::http::split_url(url)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .0
}

/// A session from login's JSON API: the front door it sends the user to and the
/// `Authorization` header value for it.
pub struct ApiSession {
    pub door: SocketAddr,
    pub auth: String,
}

impl ApiSession {
    /// `GET path` at the session's front door with its `Authorization`.
    pub async fn get(&self, path: &str) -> anyhow::Result<mailctl::http::Answer> {
        self.request("GET", path, &[], b"").await
    }

    /// `POST path` with a JSON body at the session's front door.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<mailctl::http::Answer> {
        let body = body.to_string();
        let json = [("Content-Type", "application/json")];
        self.request("POST", path, &json, body.as_bytes()).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<mailctl::http::Answer> {
        let mut all = vec![("Authorization", self.auth.as_str())];
        all.extend_from_slice(headers);
        let timeout = Duration::from_secs(30);
        mailctl::http::request(self.door, method, path, &all, body, timeout).await
    }
}

/// `POST /api/v1/session` to the login server at `login`: the status, and the session on 200.
pub async fn sign_in(login: SocketAddr, user: &str, password: &str) -> (u16, Option<ApiSession>) {
    request_session(login, user, password, Duration::from_secs(30))
        .await
        .expect("login answers")
}

/// [`sign_in`] within `timeout`, an error instead of a panic when login does not answer or
/// answers what is not a session.
pub async fn request_session(
    login: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Option<ApiSession>)> {
    let body = serde_json::json!({"user": user, "password": password}).to_string();
    let a = mailctl::http::request(
        login,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        timeout,
    )
    .await?;
    if a.status != 200 {
        return Ok((a.status, None));
    }
    let session = a.json()?;
    let field = |name: &str| {
        session[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the session has no {name}"))
    };
    let session = ApiSession {
        door: url_addr(&field("front_door")?),
        auth: format!("Bearer {}", field("token")?),
    };
    Ok((200, Some(session)))
}
