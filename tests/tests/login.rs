//! The login server end to end: real mserv and store processes, the `login` binary, a stand-in
//! front door, and a plain HTTP client. Every session issued is checked with the same keys the
//! front doors use, and every login recorded is read back from the store.

use runtime::time::now_ms;
use runtime::time::now_secs;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use megamail_tests::hcu::{HcuOpts, LocalHcu, CLUSTER};
use megamail_tests::web::{
    account, add_user_with_password, client, client_from, dead_front_door, keys, set_password,
    Login, LoginOpts, StubFrontDoor,
};
use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";
const PW: &str = "correct horse battery staple";

const OK: &str = "login_attempts_total{result=\"ok\"}";
const BAD_PASSWORD: &str = "login_attempts_total{result=\"bad_password\"}";
const THROTTLED: &str = "login_attempts_total{result=\"throttled\"}";
const UNAVAILABLE: &str = "login_attempts_total{result=\"unavailable\"}";

/// One store, one front door registered for the store's cluster, one login server.
struct Env {
    hcu: LocalHcu,
    fd: StubFrontDoor,
    login: Login,
}

async fn env(opts: LoginOpts) -> Env {
    let hcu = LocalHcu::start(HcuOpts {
        start_smtp: false,
        stores: 1,
        segments_per_store: 1,
        ..Default::default()
    })
    .await
    .expect("starting the HCU");
    let fd = StubFrontDoor::start(200).await.unwrap();
    hcu.client
        .register_cluster(CLUSTER, vec![fd.base.clone()])
        .await
        .unwrap();
    let login = Login::start(&hcu.mserv.addrs(), opts).await.unwrap();
    Env { hcu, fd, login }
}

async fn add(env: &Env, user: &str, password: &str) {
    add_user_with_password(&env.hcu, user, "store-1", 0, password)
        .await
        .unwrap();
}

/// `POST /api/v1/session`; the status, headers and JSON body.
async fn json_sign_in(
    http: &reqwest::Client,
    login: &Login,
    user: &str,
    password: &str,
) -> (StatusCode, HeaderMap, Value) {
    let res = http
        .post(login.url("/api/v1/session"))
        .json(&json!({ "user": user, "password": password }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The value of `name` among the `Set-Cookie` headers, with its attributes.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// A cookie's value from its `Set-Cookie` line.
fn cookie_value(line: &str) -> String {
    line.split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap()
}

/// `GET /`: the CSRF cookie and the form's hidden field.
async fn form_csrf(http: &reqwest::Client, login: &Login) -> (String, String) {
    let res = http.get(login.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = cookie_value(&set_cookie(res.headers(), "mm_login_csrf").expect("csrf cookie"));
    let body = res.text().await.unwrap();
    let field = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_string();
    (cookie, field)
}

/// The sign-in form's fields.
fn creds<'a>(user: &'a str, password: &'a str, csrf: &'a str) -> [(&'static str, &'a str); 3] {
    [("user", user), ("password", password), ("csrf", csrf)]
}

/// Send `head` (request line and headers, announcing a large body) and the first `sent` bytes
/// of the body, then read the status the server answers with before the rest arrives.
async fn status_of_oversized(login: &Login, head: &str, sent: usize) -> u16 {
    let mut s = tokio::net::TcpStream::connect(login.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// `POST /login` with the given CSRF cookie (if any) and fields.
async fn form_sign_in(
    http: &reqwest::Client,
    login: &Login,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http.post(login.url("/login")).form(fields);
    if let Some(c) = cookie {
        req = req.header("Cookie", format!("mm_login_csrf={c}"));
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_sign_in_issues_a_verified_session_and_records_the_login() {
    let env = env(LoginOpts::default()).await;
    add(&env, ALICE, PW).await;
    let http = client();
    let gen = account(&env.hcu, ALICE).await.unwrap().session_gen;

    let before = now_ms();
    let (status, _, body) = json_sign_in(&http, &env.login, "Alice@MegaMail.TEST", PW).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], ALICE);
    assert_eq!(body["front_door"], env.fd.base.as_str());
    let token = body["token"].as_str().unwrap();
    let claims = keys()
        .verifying()
        .verify(token, now_secs())
        .expect("the token verifies");
    assert_eq!(claims.user, ALICE);
    assert_eq!(claims.gen, gen);
    assert_eq!(claims.exp, body["expires"].as_u64().unwrap());
    assert!(claims.exp >= now_secs() + 3500 && claims.exp <= now_secs() + 3600);
    let acc = account(&env.hcu, ALICE).await.unwrap();
    assert!(
        acc.last_login_ms >= before && acc.last_login_ms <= now_ms(),
        "last login {} not recorded (signed in at {before})",
        acc.last_login_ms
    );
    assert_eq!(env.login.metric(OK).await.unwrap(), 1.0);

    // A bare local part is not completed with a default domain.
    let (status, _, body) = json_sign_in(&http, &env.login, "alice", PW).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A password change bumps the generation: the old password fails, the new one's session
    // carries the new generation (so front doors refuse sessions of the old one).
    set_password(&env.hcu, ALICE, "a whole new password")
        .await
        .unwrap();
    let new_gen = account(&env.hcu, ALICE).await.unwrap().session_gen;
    assert!(new_gen > gen);
    let (status, _, _) = json_sign_in(&http, &env.login, ALICE, PW).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = json_sign_in(&http, &env.login, ALICE, "a whole new password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = keys()
        .verifying()
        .verify(body["token"].as_str().unwrap(), now_secs())
        .unwrap();
    assert_eq!(claims.gen, new_gen);
    assert_eq!(env.login.metric(OK).await.unwrap(), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_sign_in_redirects_to_the_front_door_with_the_session_cookie() {
    let env = env(LoginOpts::default()).await;
    add(&env, ALICE, PW).await;
    let http = client();

    // The page: readable HTML with the security headers and a CSRF pair.
    let res = http.get(env.login.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains(&format!("form-action 'self' {}", env.fd.base)),
        "the redirect to the front door must be allowed: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    let csrf_line = set_cookie(&h, "mm_login_csrf").unwrap();
    assert!(csrf_line.contains("HttpOnly") && csrf_line.contains("SameSite=Strict"));
    let page = res.text().await.unwrap();
    assert!(
        page.contains("<form method=\"post\" action=\"/login\""),
        "{page}"
    );
    assert!(page.contains("name=\"user\"") && page.contains("name=\"password\""));
    assert!(!page.contains("<script"), "no scripts needed");
    let css = http
        .get(env.login.url("/static/login.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(css.headers()[CONTENT_TYPE], "text/css; charset=utf-8");

    // Without the CSRF cookie, or with a field that does not match it: refused.
    let (cookie, field) = form_csrf(&http, &env.login).await;
    let (other_cookie, other_field) = form_csrf(&http, &env.login).await;
    assert_ne!(field, other_field);
    let good = creds(ALICE, PW, &field);
    let res = form_sign_in(&http, &env.login, None, &good).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = form_sign_in(&http, &env.login, Some(&other_cookie), &good).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = form_sign_in(
        &http,
        &env.login,
        Some(&cookie),
        &creds(ALICE, PW, "forged"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.login.metric(OK).await.unwrap(), 0.0);

    // With both: 303 to the front door, and the session cookie.
    let res = form_sign_in(&http, &env.login, Some(&cookie), &good).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        res.headers()[LOCATION],
        format!("{}/", env.fd.base).as_str()
    );
    let line = set_cookie(res.headers(), "mm_session").expect("a session cookie");
    let token = cookie_value(&line);
    assert_eq!(
        line,
        format!("mm_session={token}; Path=/; HttpOnly; SameSite=Lax; Secure")
    );
    let claims = keys().verifying().verify(&token, now_secs()).unwrap();
    assert_eq!(claims.user, ALICE);

    // Logout clears the cookie, but only with the session's CSRF value (what the front doors'
    // forms carry) and no foreign Origin: a page elsewhere cannot sign the user out.
    let session = format!("mm_session={token}");
    let csrf = claims.csrf.clone();
    let logout = |csrf: &str, origin: Option<&str>| {
        let mut req = http
            .post(env.login.url("/logout"))
            .header("cookie", session.clone())
            .form(&[("csrf", csrf)]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    for (csrf, origin) in [
        ("", Some("https://attacker.example")),
        ("", None),
        ("bogus", None),
        (csrf.as_str(), Some("https://attacker.example")),
        (csrf.as_str(), Some("null")),
    ] {
        let res = logout(csrf, origin).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{csrf:?} {origin:?}");
        assert_eq!(set_cookie(res.headers(), "mm_session"), None);
    }
    let res = http
        .get(env.login.url("/logout"))
        .header("cookie", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Without a session there is nothing to end: nothing is changed, whoever asks.
    let res = http.post(env.login.url("/logout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(set_cookie(res.headers(), "mm_session"), None);
    // What a front door may do with the session, asked of the store itself.
    let mailbox = env.hcu.mailbox(ALICE).await.unwrap();
    let door = xfs::StorePool::new(
        mailbox.pool.addr(),
        std::sync::Arc::new(xfs::ClientConfig {
            identity: megamail_tests::support::pki::identity(xfs::Role::Frontdoor, "frontdoor-1"),
            ..Default::default()
        }),
    );
    let folders = || xfs::ops::ListFolders {
        target: mailbox.target.clone(),
    };
    let timeout = std::time::Duration::from_secs(5);
    door.run_as(folders(), Some(&token), "", timeout)
        .await
        .expect("the session works before the sign-out");
    let res = logout(&csrf, Some(&env.fd.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // Ended at the store: a copy of the token opens nothing, through any front door.
    let got = door.run_as(folders(), Some(&token), "", timeout).await;
    assert!(
        matches!(
            got,
            Err(xfs::CallError::Remote(xfs::XfsError::SessionRefused { .. }))
        ),
        "a signed-out session: {got:?}"
    );
    assert_eq!(res.headers()[LOCATION], "/?signed_out=1");
    let line = set_cookie(res.headers(), "mm_session").unwrap();
    assert!(
        line.starts_with("mm_session=;") && line.contains("Max-Age=0"),
        "{line}"
    );
    assert_eq!(
        env.login
            .metric("login_logouts_refused_total")
            .await
            .unwrap(),
        5.0
    );
    let res = http
        .get(env.login.url("/?signed_out=1"))
        .send()
        .await
        .unwrap();
    assert!(res.text().await.unwrap().contains("You have signed out."));

    // The main port answers /healthz as front doors do.
    let res = http.get(env.login.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "ok");

    // With cookie-secure off (plain-HTTP development), the cookie has no Secure attribute.
    let plain = Login::start(
        &env.hcu.mserv.addrs(),
        LoginOpts {
            cookie_secure: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (cookie, field) = form_csrf(&http, &plain).await;
    let res = form_sign_in(&http, &plain, Some(&cookie), &creds(ALICE, PW, &field)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let line = set_cookie(res.headers(), "mm_session").unwrap();
    assert!(line.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
    let env = env(LoginOpts::default()).await;
    add(&env, ALICE, PW).await;
    let http = client();

    let (s1, h1, b1) = json_sign_in(&http, &env.login, ALICE, "wrong").await;
    let (s2, h2, b2) = json_sign_in(&http, &env.login, "nobody@megamail.test", "wrong").await;
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!(b1, json!({ "error": "wrong address or password" }));
    let names = |h: &HeaderMap| {
        let mut v: Vec<String> = h
            .keys()
            .filter(|k| *k != "date")
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&h1), names(&h2));

    let (cookie, field) = form_csrf(&http, &env.login).await;
    let r1 = form_sign_in(
        &http,
        &env.login,
        Some(&cookie),
        &creds(ALICE, "wrong", &field),
    )
    .await;
    let r2 = form_sign_in(
        &http,
        &env.login,
        Some(&cookie),
        &creds("nobody@megamail.test", "wrong", &field),
    )
    .await;
    assert_eq!(r1.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r2.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(names(r1.headers()), names(r2.headers()));
    let p1 = r1.text().await.unwrap().replace(ALICE, "");
    let p2 = r2.text().await.unwrap().replace("nobody@megamail.test", "");
    assert!(p1.contains("Wrong address or password."), "{p1}");
    assert_eq!(p1, p2);
    assert_eq!(env.login.metric(BAD_PASSWORD).await.unwrap(), 4.0);
    assert_eq!(env.login.metric(OK).await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_throttled_per_user_and_per_client_address() {
    let env = env(LoginOpts {
        max_failures_per_user: 3,
        max_failures_per_client: 5,
        ..Default::default()
    })
    .await;
    for u in [ALICE, BOB, "carol@megamail.test"] {
        add(&env, u, PW).await;
    }
    let from = |last: u8| client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));

    // Per user: three failures, then 429 even with the right password, from any address.
    let a = from(2);
    for _ in 0..3 {
        let (status, _, _) = json_sign_in(&a, &env.login, ALICE, "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, body) = json_sign_in(&a, &env.login, ALICE, PW).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    let (status, _, _) = json_sign_in(&from(3), &env.login, ALICE, PW).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (cookie, field) = form_csrf(&a, &env.login).await;
    let res = form_sign_in(&a, &env.login, Some(&cookie), &creds(ALICE, PW, &field)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(RETRY_AFTER));
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Too many failed sign-ins"));
    // Another user from the same address is not affected.
    let (status, _, _) = json_sign_in(&a, &env.login, BOB, PW).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.login.metric(THROTTLED).await.unwrap(), 3.0);

    // A success clears the user's count.
    let c = from(4);
    let carol = "carol@megamail.test";
    for _ in 0..2 {
        assert_eq!(
            json_sign_in(&c, &env.login, carol, "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        json_sign_in(&c, &env.login, carol, PW).await.0,
        StatusCode::OK
    );
    for _ in 0..3 {
        assert_eq!(
            json_sign_in(&c, &env.login, carol, "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        json_sign_in(&c, &env.login, carol, PW).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Per client address: five failures over different users, then 429 for anyone from there.
    let d = from(5);
    for i in 0..5 {
        let user = format!("guess{i}@megamail.test");
        assert_eq!(
            json_sign_in(&d, &env.login, &user, "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        json_sign_in(&d, &env.login, BOB, PW).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        json_sign_in(&from(6), &env.login, BOB, PW).await.0,
        StatusCode::OK
    );
}

/// `POST /api/v1/session` with `X-Forwarded-For: xff`; the status.
async fn sign_in_via(
    http: &reqwest::Client,
    login: &Login,
    xff: &str,
    user: &str,
    pw: &str,
) -> StatusCode {
    let res = http
        .post(login.url("/api/v1/session"))
        .header("x-forwarded-for", xff)
        .json(&json!({ "user": user, "password": pw }))
        .send()
        .await
        .unwrap();
    res.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client_and_nothing_else() {
    let env = env(LoginOpts {
        max_failures_per_client: 2,
        trusted_proxies: vec!["127.0.0.7".into(), "10.0.0.0/8".into()],
        ..Default::default()
    })
    .await;
    add(&env, BOB, PW).await;
    let from = |last: u8| client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));

    // Through the proxy: one bad client is locked out, the others behind the same proxy are not.
    let proxy = from(7);
    for i in 0..2 {
        let user = format!("guess{i}@megamail.test");
        let status =
            sign_in_via(&proxy, &env.login, "198.51.100.1, 10.1.2.3", &user, "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let locked = sign_in_via(&proxy, &env.login, "198.51.100.1", BOB, PW).await;
    assert_eq!(locked, StatusCode::TOO_MANY_REQUESTS);
    let other = sign_in_via(&proxy, &env.login, "198.51.100.2", BOB, PW).await;
    assert_eq!(other, StatusCode::OK);
    // The bad client cannot get out of it by putting another address in front.
    let spoof = sign_in_via(&proxy, &env.login, "192.0.2.9, 198.51.100.1", BOB, PW).await;
    assert_eq!(spoof, StatusCode::TOO_MANY_REQUESTS);

    // A peer that is not a trusted proxy: its header is ignored and its own address counts, so
    // inventing a new address per guess does not escape the limit.
    let direct = from(8);
    for (i, fake) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let user = format!("other{i}@megamail.test");
        let status = sign_in_via(&direct, &env.login, fake, &user, "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = sign_in_via(&direct, &env.login, "203.0.113.3", BOB, PW).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = json_sign_in(&from(9), &env.login, BOB, PW).await;
    assert_eq!(status, StatusCode::OK);
}

/// Poll `check` until it gives a value, failing the test after 10 s with `what`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "still not {what} after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_front_doors_are_skipped_and_none_healthy_is_503() {
    // What login knows of the front doors is trusted briefly here, so changes show soon.
    let env = env(LoginOpts {
        front_doors: role_config::login::FrontDoorsConfig {
            registry_cache_ms: 200,
            health_cache_ms: 200,
        },
        ..Default::default()
    })
    .await;
    add(&env, ALICE, PW).await;
    let http = client();
    let down = StubFrontDoor::start(503).await.unwrap();
    let slow = StubFrontDoor::start(200).await.unwrap();
    slow.set_delay(Duration::from_secs(2));
    env.hcu
        .client
        .register_cluster(
            CLUSTER,
            vec![
                dead_front_door(),
                down.base.clone(),
                env.fd.base.clone(),
                slow.base.clone(),
            ],
        )
        .await
        .unwrap();
    // The sign-in page's form-action names every registered front door once the new registry
    // is in use.
    until("the new cluster registry in use", || async {
        let res = http.get(env.login.url("/")).send().await.unwrap();
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        csp.contains(&down.base).then_some(())
    })
    .await;
    for _ in 0..6 {
        let (status, _, body) = json_sign_in(&http, &env.login, ALICE, PW).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["front_door"], env.fd.base.as_str());
    }

    // The last healthy one goes down: 503 with a clear answer, once the verdict cache expires.
    env.fd.set_status(503);
    let (headers, body) = until("503 with the healthy front door down", || async {
        let (status, headers, body) = json_sign_in(&http, &env.login, ALICE, PW).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((headers, body))
    })
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("front door"),
        "{body}"
    );
    assert!(headers.contains_key(RETRY_AFTER));
    let before = env.login.metric(UNAVAILABLE).await.unwrap();
    let (status, _, _) = json_sign_in(&http, &env.login, ALICE, PW).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (cookie, field) = form_csrf(&http, &env.login).await;
    let res = form_sign_in(&http, &env.login, Some(&cookie), &creds(ALICE, PW, &field)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(res.headers(), "mm_session").is_none());
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("webmail is temporarily unavailable"));
    assert_eq!(env.login.metric(UNAVAILABLE).await.unwrap(), before + 2.0);

    // And back.
    env.fd.set_status(200);
    let body = until("a sign-in with the front door back", || async {
        let (status, _, body) = json_sign_in(&http, &env.login, ALICE, PW).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["front_door"], env.fd.base.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_or_index_down_is_503_never_401() {
    let mut env = env(LoginOpts {
        max_failures_per_user: 2,
        ..Default::default()
    })
    .await;
    add(&env, ALICE, PW).await;
    add(&env, BOB, PW).await;
    let http = client();
    assert_eq!(
        json_sign_in(&http, &env.login, ALICE, PW).await.0,
        StatusCode::OK
    );

    env.hcu.stores[0].proc.kill9();
    for password in [PW, "wrong", "wrong", "wrong"] {
        let (status, headers, body) = json_sign_in(&http, &env.login, ALICE, password).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.contains_key(RETRY_AFTER));
    }
    let (cookie, field) = form_csrf(&http, &env.login).await;
    let res = form_sign_in(&http, &env.login, Some(&cookie), &creds(ALICE, PW, &field)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("temporarily unavailable"));
    assert_eq!(env.login.metric(UNAVAILABLE).await.unwrap(), 5.0);

    // Attempts without a verdict are not failures: once the store is back, the right password
    // works although more attempts than the per-user limit were made meanwhile.
    env.hcu.stores[0].proc.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = json_sign_in(&http, &env.login, ALICE, PW).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The index down: a user whose route is not cached cannot be checked.
    let ids: Vec<_> = env.hcu.mserv.replicas.keys().copied().collect();
    for id in ids {
        env.hcu.mserv.kill9(id);
    }
    for password in [PW, "wrong"] {
        let (status, _, body) = json_sign_in(&http, &env.login, BOB, password).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let (status, _, body) = json_sign_in(&http, &env.login, "nobody@megamail.test", "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(env.login.metric(BAD_PASSWORD).await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_4xx_and_never_a_crash() {
    let mut env = env(LoginOpts {
        max_failures_per_client: 1000,
        max_failures_per_user: 1000,
        ..Default::default()
    })
    .await;
    add(&env, ALICE, PW).await;
    let http = client();
    let api = env.login.url("/api/v1/session");
    let post_json = |body: Vec<u8>| {
        http.post(&api)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };

    // A body far over the limit is refused once the limit is passed, not read to its end.
    let head = |path: &str, ctype: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: login\r\nContent-Type: {ctype}\r\n\
             Content-Length: 104857600\r\nCookie: mm_login_csrf=abc\r\n\r\n"
        )
    };
    let status = status_of_oversized(
        &env.login,
        &head("/api/v1/session", "application/json"),
        64 << 10,
    )
    .await;
    assert_eq!(status, 413);
    for (body, want) in [
        (b"{".to_vec(), StatusCode::BAD_REQUEST),
        (b"[1, 2]".to_vec(), StatusCode::UNPROCESSABLE_ENTITY),
        (
            b"{\"user\": 5, \"password\": \"x\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            b"{\"user\": \"a@b.test\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            b"{\"user\": \"\xff\xfe@megamail.test\", \"password\": \"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (b"".to_vec(), StatusCode::BAD_REQUEST),
    ] {
        let res = post_json(body.clone()).await.unwrap();
        assert_eq!(res.status(), want, "{}", String::from_utf8_lossy(&body));
        let v: Value = res.json().await.unwrap();
        assert!(v["error"].is_string(), "{v}");
    }
    let res = http
        .post(&api)
        .body("user=a&password=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Very long values: refused without hashing anything large.
    let long_user = format!("{}@megamail.test", "a".repeat(10_000));
    let (status, _, _) = json_sign_in(&http, &env.login, &long_user, PW).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = json_sign_in(&http, &env.login, ALICE, &"p".repeat(12_000)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = json_sign_in(&http, &env.login, "a\u{0}b@megamail.test", PW).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The form: far too large, not UTF-8, very long, missing fields.
    let (cookie, field) = form_csrf(&http, &env.login).await;
    let post_form = |body: Vec<u8>| {
        http.post(env.login.url("/login"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("Cookie", format!("mm_login_csrf={cookie}"))
            .body(body)
            .send()
    };
    let status = status_of_oversized(
        &env.login,
        &head("/login", "application/x-www-form-urlencoded"),
        64 << 10,
    )
    .await;
    assert_eq!(status, 413);
    let mut raw = format!("csrf={field}&password=x&user=").into_bytes();
    raw.extend_from_slice(b"\xff\xfe%FF@megamail.test");
    let res = post_form(raw).await.unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
    let res = post_form(format!("csrf={field}&password=x&user={long_user}").into_bytes())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        res.text().await.unwrap().len() < 8_000,
        "the page does not echo it all"
    );
    let res = post_form(b"%%%&&&===".to_vec()).await.unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
    let res = post_form(format!("csrf={field}&user=<script>@x.test&password=x").into_bytes())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(!res.text().await.unwrap().contains("<script>"));

    // Unknown paths and methods, and a request that is not HTTP.
    let res = http.get(env.login.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = http.get(env.login.url("/login")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let mut s = tokio::net::TcpStream::connect(env.login.addr)
        .await
        .unwrap();
    s.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    // Still up and serving.
    assert!(env.login.proc.is_running());
    let (status, _, body) = json_sign_in(&http, &env.login, ALICE, PW).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
