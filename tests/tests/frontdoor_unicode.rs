//! Text from the wire is Unicode: mail whose subject, sender name and attachment names are in
//! Russian, Chinese, Japanese, Arabic or emoji (encoded words, RFC 2231 parameters or raw UTF-8)
//! arrives through smtp-in and is shown whole by every page and API answer that shows it: the
//! folder page, the message view, Reply and Forward (with their prefixes), the JSON list and
//! message, the raw bytes, and the attachment downloads with their RFC 6266 `filename*`.

use base64::Engine as _;
use megamail_tests::frontdoor::{download, location, send_in, wait_inbox, Browser, FrontDoor};
use megamail_tests::hcu::{HcuOpts, LocalHcu};
use megamail_tests::support::mail::strip_trace_header;
use serde_json::Value;

const ALICE: &str = "alice@megamail.test";
const BOB: &str = "bob@megamail.test";

/// How a header's non-ASCII text is put on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// RFC 2047 encoded words (and RFC 2231 for file names).
    Encoded,
    /// Raw UTF-8 (RFC 6532).
    Utf8,
}

struct Case {
    subject: &'static str,
    name: &'static str,
    from: &'static str,
    file: &'static str,
    body: &'static str,
    wire: Wire,
}

const CASES: [Case; 7] = [
    Case {
        subject: "Привет, отчёт за квартал",
        name: "Иван Петров",
        from: "ivan@remote.test",
        file: "отчёт.pdf",
        body: "Добрый день! Посмотрите, пожалуйста, отчёт.",
        wire: Wire::Encoded,
    },
    Case {
        subject: "会议记录：第三季度",
        name: "王小明",
        from: "wang@remote.test",
        file: "会议记录.txt",
        body: "请查看附件中的会议记录。",
        wire: Wire::Utf8,
    },
    Case {
        subject: "お知らせ：メンテナンスのご案内",
        name: "山田太郎",
        from: "yamada@remote.test",
        file: "資料.pdf",
        body: "メンテナンスは明日の午前に行います。",
        wire: Wire::Encoded,
    },
    Case {
        subject: "مرحبا بالعالم",
        name: "محمد علي",
        from: "mohammed@remote.test",
        file: "تقرير.txt",
        body: "مرحبا، التقرير مرفق.",
        wire: Wire::Utf8,
    },
    Case {
        subject: "🎉🎈 Party time",
        name: "Party 🎉 Bot",
        from: "party@remote.test",
        file: "🎂 cake.txt",
        body: "Bring cake 🎂 and balloons 🎈.",
        wire: Wire::Encoded,
    },
    // A multibyte character right where a `Re:` or `Fwd:` prefix would end.
    Case {
        subject: "ab日",
        name: "Борис",
        from: BOB,
        file: "ab日.txt",
        body: "короткое письмо",
        wire: Wire::Utf8,
    },
    // Already a reply: the prefix is not added twice (and the rest is Cyrillic).
    Case {
        subject: "RE: Встреча",
        name: "Ольга",
        from: "olga@remote.test",
        file: "повестка.txt",
        body: "Да, встретимся в пятницу.",
        wire: Wire::Encoded,
    },
];

/// `text` as RFC 2047 encoded words of a few characters each (whole characters per word),
/// folded onto continuation lines.
fn encoded_words(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(6)
        .map(|c| {
            let s: String = c.iter().collect();
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The attachment's content.
fn file_data(c: &Case) -> String {
    format!("contents of {}\n", c.file)
}

fn mail(c: &Case, n: usize) -> Vec<u8> {
    let (subject, name, disposition) = match c.wire {
        Wire::Encoded => (
            encoded_words(c.subject),
            encoded_words(c.name),
            format!(
                "Content-Type: application/octet-stream; name=\"{}\"\r\n\
                 Content-Disposition: attachment; filename*=UTF-8''{}",
                encoded_words(c.file).replace("\r\n ", ""),
                pct(c.file)
            ),
        ),
        Wire::Utf8 => (
            c.subject.to_string(),
            format!("\"{}\"", c.name),
            format!(
                "Content-Type: application/octet-stream; name=\"{0}\"\r\n\
                 Content-Disposition: attachment; filename=\"{0}\"",
                c.file
            ),
        ),
    };
    format!(
        "From: {name} <{from}>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <unicode-{n}@remote.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {body}\r\n--b\r\n{disposition}\r\nContent-Transfer-Encoding: base64\r\n\r\n{data}\r\n--b--\r\n",
        from = c.from,
        body = c.body,
        data = base64::engine::general_purpose::STANDARD.encode(file_data(c)),
    )
    .into_bytes()
}

/// The prefix Reply gives a subject, as `compose::reply_subject` does.
fn expected_reply(subject: &str) -> String {
    if subject.to_ascii_lowercase().starts_with("re:") {
        subject.to_string()
    } else {
        format!("Re: {subject}")
    }
}

/// A front door for `hcu`, Alice's session at it, and the JSON listing of her Inbox.
async fn inbox_listing(hcu: &LocalHcu) -> (FrontDoor, String, Value) {
    let fd = FrontDoor::start(hcu).await.unwrap();
    let alice = fd.token(hcu, ALICE).await.unwrap();
    let list = fd.json(&alice, "/api/v1/folders/Inbox/messages").await;
    (fd, alice, list.unwrap())
}

/// A page's status and text; the body must be UTF-8 with no replacement characters (nothing cut
/// inside a character anywhere on the way).
async fn page_text(browser: &Browser<'_>, path: &str) -> (u16, String) {
    let (status, text) = browser.page(path).await;
    assert!(
        !text.contains('\u{FFFD}'),
        "a replacement character in {path}:\n{text}"
    );
    (status, text)
}

/// The compose form for `kind` (`reply` or `forward`) of message `id`, which must be there with
/// `subject` in its subject field.
async fn compose_form(browser: &Browser<'_>, kind: &str, id: u64, subject: &str) -> String {
    let (status, form) = page_text(browser, &format!("/compose?{kind}={id}")).await;
    assert_eq!(status, 200, "{kind} of {subject}");
    let field = format!("name=\"subject\" value=\"{subject}\"");
    assert!(form.contains(&field), "{kind} with {subject}:\n{form}");
    form
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_mail_shows_whole_on_every_page() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE, BOB]).await.unwrap();
    let mut sent = Vec::new();
    for (n, c) in CASES.iter().enumerate() {
        let raw = mail(c, n);
        // The SMTP client ends the data with `CRLF . CRLF` after the bytes it is given: handed
        // the message without its last line break, the server receives exactly `raw`.
        let data = raw.strip_suffix(b"\r\n").unwrap_or(&raw);
        send_in(&hcu, c.from, &[ALICE], data).await.unwrap();
        sent.push(raw);
    }
    wait_inbox(&hcu, ALICE, CASES.len() as u64).await.unwrap();
    let stored = hcu.inbox(ALICE).await.unwrap();
    let (fd, alice, list) = inbox_listing(&hcu).await;
    let browser = fd.browser(&alice);
    let listed = list["messages"].as_array().unwrap();
    assert_eq!(listed.len(), CASES.len());

    let (status, folder) = page_text(&browser, "/folder/Inbox").await;
    assert_eq!(status, 200);

    for (n, c) in CASES.iter().enumerate() {
        let what = c.subject;
        // The JSON list: the summary smtp-in made, whole.
        let m: &Value = listed
            .iter()
            .find(|m| m["subject"] == c.subject)
            .unwrap_or_else(|| panic!("{what} not listed in {list}"));
        let id = m["id"].as_u64().unwrap();
        assert_eq!(m["from"], format!("{} <{}>", c.name, c.from), "{what}");
        assert_eq!(m["attachments"][0], c.file, "{what}");
        assert_eq!(m["preview"], c.body, "{what}");

        // The folder page: subject and sender's name as text, the full sender in the title.
        assert!(
            folder.contains(&format!("<span class=\"subj\">{}</span>", c.subject)),
            "{what} in the folder page:\n{folder}"
        );
        assert!(
            folder.contains(&format!("{}</a></td>", c.name)),
            "{} in the folder page",
            c.name
        );
        assert!(
            folder.contains(&format!("title=\"{} &lt;{}&gt;\"", c.name, c.from)),
            "{what}"
        );

        // The message view.
        let (status, view) = page_text(&browser, &format!("/message/{id}")).await;
        assert_eq!(status, 200, "{what}");
        assert!(
            view.contains(&format!("<title>{} · megamail</title>", c.subject)),
            "{what}"
        );
        assert!(
            view.contains(&format!("<h1>{}</h1>", c.subject)),
            "{what}:\n{view}"
        );
        assert!(
            view.contains(&format!("<dd>{} &lt;{}&gt;</dd>", c.name, c.from)),
            "{what}:\n{view}"
        );
        assert!(view.contains(c.body), "{what}");
        assert!(
            view.contains(&format!("/message/{id}/attachment/0\">{}</a>", c.file)),
            "{what}:\n{view}"
        );

        // Reply: the prefix once, the original quoted.
        let reply = compose_form(&browser, "reply", id, &expected_reply(c.subject)).await;
        assert!(reply.contains(&format!("&gt; {}", c.body)), "{what}");
        assert!(
            reply.contains(&format!("{} &lt;{}&gt; wrote:", c.name, c.from)),
            "{what}"
        );

        // Forward: the prefix, the original's headers and its attachment offered.
        let forward = compose_form(&browser, "forward", id, &format!("Fwd: {}", c.subject)).await;
        assert!(
            forward.contains(&format!("Subject: {}", c.subject)),
            "{what}"
        );
        assert!(
            forward.contains(&format!("name=\"keep\" value=\"0\" checked> {} ", c.file)),
            "{what}:\n{forward}"
        );

        // The JSON message.
        let v = fd
            .json(&alice, &format!("/api/v1/messages/{id}"))
            .await
            .unwrap();
        assert_eq!(v["headers"]["subject"], c.subject, "{what}");
        assert_eq!(
            v["headers"]["from"],
            format!("{} <{}>", c.name, c.from),
            "{what}"
        );
        assert_eq!(v["attachments"][0]["name"], c.file, "{what}");
        assert_eq!(v["text"].as_str().map(str::trim), Some(c.body), "{what}");

        // The raw bytes: exactly what was stored, which is what was sent after the trace line.
        let r = fd
            .get(&alice, &format!("/api/v1/messages/{id}/raw"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let raw = r.bytes().await.unwrap().to_vec();
        let (_, body) = stored
            .iter()
            .find(|(e, _)| e.msg == id)
            .expect("the stored copy");
        assert_eq!(&raw, body, "{what}");
        assert_eq!(strip_trace_header(&raw), &sent[n][..], "{what}");

        // The attachment, from the page and from the API: the bytes, and its name in
        // `filename*` (RFC 6266 / 5987) with an ASCII fallback.
        for path in [
            format!("/message/{id}/attachment/0"),
            format!("/api/v1/messages/{id}/attachments/0"),
        ] {
            let r = fd.page(&alice, &path).await.unwrap();
            let cd = download(&r, &path);
            let (fallback, star) = cd
                .strip_prefix("attachment; filename=\"")
                .and_then(|rest| rest.split_once("\"; filename*=UTF-8''"))
                .unwrap_or_else(|| panic!("{cd}"));
            assert!(fallback.is_ascii() && !fallback.contains('"'), "{cd}");
            assert_eq!(fallback.chars().count(), c.file.chars().count(), "{cd}");
            assert_eq!(String::from_utf8(pct_decode(star)).unwrap(), c.file, "{cd}");
            assert_eq!(r.text().await.unwrap(), file_data(c), "{path}");
        }
    }

    // A reply sent from the form arrives with its subject whole.
    let ab = CASES.iter().position(|c| c.subject == "ab日").unwrap();
    let ab_id = listed.iter().find(|m| m["subject"] == "ab日").unwrap()["id"].clone();
    let form = [
        ("to", CASES[ab].from.to_string()),
        ("subject", expected_reply(CASES[ab].subject)),
        ("text", "Ответ: получено 👍".to_string()),
        ("answered", ab_id.to_string()),
    ];
    let r = browser.compose(&form, None).await;
    assert_eq!(location(&r, "the reply"), "/folder/Inbox?n=sent");
    wait_inbox(&hcu, BOB, 1).await.unwrap();
    let got = hcu.inbox(BOB).await.unwrap();
    assert_eq!(got[0].0.summary.subject, "Re: ab日");
    assert_eq!(got[0].0.summary.preview, "Ответ: получено 👍");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_unicode_subject_is_cut_on_characters() {
    let hcu = LocalHcu::start(HcuOpts::one_store()).await.unwrap();
    hcu.add_users(&[ALICE]).await.unwrap();
    // 650 characters, 1,300 bytes and more: every cut falls among multibyte characters.
    let subject = "Длинная тема письма 日本語 🎉 ".repeat(25);
    let raw = format!(
        "From: {} <long@remote.test>\r\nTo: {ALICE}\r\nSubject: {}\r\n\r\n{}\r\n",
        encoded_words(&"Очень длинное имя отправителя ".repeat(30)),
        encoded_words(&subject),
        "текст ".repeat(100)
    );
    send_in(&hcu, "long@remote.test", &[ALICE], raw.as_bytes())
        .await
        .unwrap();
    wait_inbox(&hcu, ALICE, 1).await.unwrap();
    let (fd, alice, list) = inbox_listing(&hcu).await;
    let browser = fd.browser(&alice);
    let m = &list["messages"][0];
    let id = m["id"].as_u64().unwrap();
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>().trim().to_string();
    let shown = cut(&subject, 500);
    assert_eq!(m["subject"], shown.as_str());
    assert_eq!(m["preview"], cut(&"текст ".repeat(100), 200).as_str());
    let (status, view) = page_text(&browser, &format!("/message/{id}")).await;
    assert_eq!(status, 200);
    assert!(view.contains(&format!("<h1>{shown}</h1>")), "{view}");
    for path in [
        format!("/compose?reply={id}"),
        format!("/compose?forward={id}"),
    ] {
        let (status, page) = page_text(&browser, &path).await;
        assert_eq!(status, 200, "{path}");
        assert!(page.contains(&shown), "{path}");
    }
}
