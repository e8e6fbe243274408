//! The decoders swept, each with valid seed inputs. Frame and record targets take a leading mode
//! byte: the rest is the raw stream, or a payload framed with a correct checksum (so the
//! decoder behind the checksum is reached), or framed with a length that lies.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use smtp_in::mailboxes::{Mailboxes, MessageCopy, Outcome, Recipient, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xfs::{codec, frame};

use crate::Target;

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "xfs-client-frame",
            seeds: || framed_seeds(&xfs_client_frames()),
            run: |i| read_frames::<xfs::ClientFrame>(i),
        },
        Target {
            name: "xfs-server-frame",
            seeds: || framed_seeds(&xfs_server_frames()),
            run: |i| read_frames::<xfs::ServerFrame>(i),
        },
        Target {
            name: "index-client-frame",
            seeds: || framed_seeds(&index_client_frames()),
            run: |i| read_frames::<mserv_client::proto::ClientFrame>(i),
        },
        Target {
            name: "index-server-frame",
            seeds: || framed_seeds(&index_server_frames()),
            run: |i| read_frames::<mserv_client::proto::ServerFrame>(i),
        },
        Target {
            name: "records",
            seeds: record_seeds,
            run: records,
        },
        Target {
            name: "smtp",
            seeds: smtp_seeds,
            run: smtp,
        },
        Target {
            name: "http-form",
            seeds: form_seeds,
            run: http_form,
        },
        Target {
            name: "http-json",
            seeds: json_seeds,
            run: http_json,
        },
        Target {
            name: "session-token",
            seeds: token_seeds,
            run: session_token,
        },
        Target {
            name: "mime",
            seeds: mime_seeds,
            run: mime,
        },
        Target {
            name: "html-sanitizer",
            seeds: html_seeds,
            run: html,
        },
    ]
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the sweep");
}

fn block_on<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

// ---- frames and records ----

/// The stream a frame target reads: by the mode byte, the rest as it is, the rest as one
/// correctly framed payload, or framed with a length off by the next byte (as a signed number).
fn framed(input: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = input.split_first() else {
        return Vec::new();
    };
    match mode % 4 {
        0 => rest.to_vec(),
        3 => {
            let (&lie, payload) = rest.split_first().unwrap_or((&0, &[]));
            let len = (payload.len() as i64 + i64::from(lie as i8)).clamp(0, u32::MAX as i64);
            let mut out = (len as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&crc32(payload).to_be_bytes());
            out.extend_from_slice(payload);
            out
        }
        _ => {
            let mut out = (rest.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&crc32(rest).to_be_bytes());
            out.extend_from_slice(rest);
            out
        }
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Seeds for a frame target: each value's payload, correctly framed, and as a raw stream.
fn framed_seeds<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut stream = vec![0u8];
    for v in values {
        let payload = codec::encode(v).expect("seed encodes");
        let mut s = vec![1u8];
        s.extend_from_slice(&payload);
        seeds.push(s);
        let mut lying = vec![3u8, 0];
        lying.extend_from_slice(&payload);
        seeds.push(lying);
        stream.extend_from_slice(&frame::encode(v).expect("seed frames"));
    }
    seeds.push(stream);
    seeds
}

/// Read frames of `T` from the stream until the first error or its end. What decodes must
/// encode again, and decode to what encodes the same.
fn read_frames<T: Serialize + DeserializeOwned>(input: &[u8]) {
    let stream = framed(input);
    block_on(async {
        let mut r = stream.as_slice();
        for _ in 0..16 {
            match frame::read_msg::<_, T>(&mut r, 1 << 20).await {
                Ok(Some(v)) => round_trip(&v),
                Ok(None) | Err(_) => break,
            }
        }
    });
}

fn round_trip<T: Serialize + DeserializeOwned>(v: &T) {
    let once = codec::encode(v).expect("a decoded value encodes");
    let again: T = codec::decode(&once).expect("an encoded value decodes");
    assert_eq!(
        codec::encode(&again).expect("encodes"),
        once,
        "decode(encode(x)) encodes differently"
    );
}

fn target() -> xfs::Target {
    xfs::Target::new("alice@megamail.test".to_string(), 3, 7)
}

fn xfs_client_frames() -> Vec<xfs::ClientFrame> {
    let req = |id, op| {
        xfs::ClientFrame::Request(xfs::Request {
            id,
            deadline_ms: 5000,
            trace: format!("t{id}"),
            session: (id % 2 == 0).then(|| xfs::envelope::SessionToken("v2.k1.e30.AAAA".into())),
            op,
        })
    };
    vec![
        xfs::ClientFrame::Hello(xfs::ClientHello {
            version: xfs::PROTOCOL_VERSION,
            role: xfs::Role::Frontdoor,
            name: "fuzz".into(),
        }),
        req(1, xfs::Op::GetAccount { target: target() }),
        req(2, xfs::Op::ListFolders { target: target() }),
        req(
            3,
            xfs::Op::ListFolder {
                target: target(),
                folder: "INBOX".into(),
                offset: 0,
                limit: 50,
                before_uid: Some(9),
            },
        ),
        req(
            4,
            xfs::Op::Deliver {
                target: target(),
                delivery: xfs::Delivery {
                    id: [9; 32],
                    folder: Some("Sent".into()),
                    internal_date_ms: 1_700_000_000_000,
                    flags: xfs::Flags::default(),
                    summary: xfs::Summary {
                        from: "Bob <bob@remote.test>".into(),
                        to: "alice@megamail.test".into(),
                        subject: "Grüße".into(),
                        date: "Tue, 14 Nov 2023 22:13:20 +0000".into(),
                        preview: "hello".into(),
                        attachments: vec!["a.pdf".into()],
                    },
                    body: b"Subject: hi\r\n\r\nbody\r\n".to_vec().into(),
                },
            },
        ),
    ]
}

fn xfs_server_frames() -> Vec<xfs::ServerFrame> {
    let resp = |id, result| xfs::ServerFrame::Response(xfs::Response { id, result });
    vec![
        xfs::ServerFrame::Hello(xfs::ServerHello {
            version: xfs::PROTOCOL_VERSION,
            store: "store-1".into(),
            segments: vec![0, 1, 2],
        }),
        xfs::ServerFrame::Refused {
            reason: "version 9 unknown".into(),
        },
        resp(
            1,
            Ok(xfs::Reply::Delivered {
                msg: 42,
                folder: "INBOX".into(),
                uid: 7,
                duplicate: false,
            }),
        ),
        resp(
            2,
            Err(xfs::XfsError::Moved {
                to: "store-2".into(),
                epoch: 8,
            }),
        ),
        resp(3, Err(xfs::XfsError::Busy { retry_after_ms: 50 })),
        resp(4, Err(xfs::XfsError::QuotaExceeded { used: 10, quota: 5 })),
    ]
}

fn index_client_frames() -> Vec<mserv_client::proto::ClientFrame> {
    use mserv_client::proto::{ClientFrame, Command, Op, Policy, Request};
    let req = |id, op| {
        ClientFrame::Request(Request {
            id,
            deadline_ms: 1000,
            trace: String::new(),
            session: None,
            op,
        })
    };
    vec![
        ClientFrame::Hello(xfs::ClientHello {
            version: mserv_client::proto::PROTOCOL_VERSION,
            role: xfs::Role::Frontdoor,
            name: "fuzz".into(),
        }),
        req(1, Op::Ping),
        req(
            2,
            Op::Lookup {
                user: "alice@megamail.test".into(),
            },
        ),
        req(
            3,
            Op::Write {
                cmd: Command::CreateUser {
                    user: "bob@megamail.test".into(),
                    policy: Policy::LeastLoaded,
                },
                forwarded: false,
            },
        ),
        req(
            4,
            Op::ListStoreUsers {
                store: "store-1".into(),
                after: Some("a".into()),
                limit: 100,
            },
        ),
        req(
            5,
            Op::AddReplica {
                id: 4,
                addr: "127.0.0.1:7204".into(),
                voter: true,
                forwarded: false,
            },
        ),
    ]
}

fn index_server_frames() -> Vec<mserv_client::proto::ServerFrame> {
    use mserv_client::proto::{MservError, Placement, Reply, ServerFrame, ServerHello};
    let resp = |id, result| ServerFrame::Response(xfs::envelope::Response { id, result });
    vec![
        ServerFrame::Hello(ServerHello {
            version: mserv_client::proto::PROTOCOL_VERSION,
            replica: 1,
        }),
        resp(1, Ok(Reply::Pong)),
        resp(
            2,
            Ok(Reply::Placement(Placement {
                store: "store-1".into(),
                segment: 2,
                epoch: 5,
            })),
        ),
        resp(
            3,
            Ok(Reply::Membership {
                voters: vec![(1, "a:1".into()), (2, "b:2".into())],
                learners: vec![],
            }),
        ),
        resp(4, Ok(Reply::Raft(vec![1, 2, 3, 0xff]))),
        resp(
            5,
            Err(MservError::Unavailable {
                why: "no leader".into(),
            }),
        ),
    ]
}

/// Records on disk (`crc32 | bincode`): the mode byte picks the type, and whether the checksum
/// is made right.
fn record_seeds() -> Vec<Vec<u8>> {
    use mserv_client::proto::{Command, Placement, StoreInfo, StoreState};
    let mut seeds = Vec::new();
    let mut push = |kind: u8, payload: Vec<u8>| {
        // Stored without the crc: the target adds a right one (or the raw bytes).
        let mut s = vec![kind * 2 + 1];
        s.extend_from_slice(&payload[4..]);
        seeds.push(s);
        let mut s = vec![kind * 2];
        s.extend_from_slice(&payload);
        seeds.push(s);
    };
    push(
        0,
        codec::encode_record(&Placement {
            store: "store-1".into(),
            segment: 1,
            epoch: 2,
        })
        .unwrap(),
    );
    push(
        1,
        codec::encode_record(&StoreInfo {
            name: "store-1".into(),
            xfs_addr: "127.0.0.1:7301".into(),
            cluster: "hcu-1".into(),
            segments: vec![0, 1, 2, 3],
            state: StoreState::Active,
        })
        .unwrap(),
    );
    push(
        2,
        codec::encode_record(&Command::CreateUsers {
            users: vec!["a@x".into(), "b@x".into()],
        })
        .unwrap(),
    );
    push(
        3,
        codec::encode_record(&xfs::Summary {
            from: "a".into(),
            subject: "s".into(),
            attachments: vec!["f".into()],
            ..Default::default()
        })
        .unwrap(),
    );
    seeds
}

fn records(input: &[u8]) {
    use mserv_client::proto::{Command, Placement, StoreInfo};
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 1 {
        let mut b = crc32(rest).to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    } else {
        rest.to_vec()
    };
    match (mode / 2) % 4 {
        0 => decode_record::<Placement>(&bytes),
        1 => decode_record::<StoreInfo>(&bytes),
        2 => decode_record::<Command>(&bytes),
        _ => decode_record::<xfs::Summary>(&bytes),
    }
}

fn decode_record<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    if let Ok(v) = codec::decode_record::<T>(bytes) {
        round_trip(&v);
    }
}

// ---- SMTP ----

/// Mailboxes in memory: alice and bob exist, everything is stored at once.
struct Fake;

impl Mailboxes for Fake {
    type Route = ();

    async fn domains(&self) -> Option<Arc<BTreeSet<String>>> {
        Some(Arc::new(BTreeSet::from(["megamail.test".to_string()])))
    }

    async fn check(&self, addr: &str, _trace: &str) -> Verdict<()> {
        let user = addr.to_lowercase();
        match user.as_str() {
            "alice@megamail.test" | "bob@megamail.test" | "postmaster@megamail.test" => {
                Verdict::Accepted(Recipient { user, route: () })
            }
            "later@megamail.test" => Verdict::Deferred("451 4.3.0 try later".into()),
            u if u.starts_with('-') => Verdict::BadAddress("leading dash".into()),
            _ => Verdict::NoSuchUser,
        }
    }

    async fn deliver(&self, copies: Vec<MessageCopy<()>>, _trace: &str) -> Vec<Outcome> {
        copies
            .iter()
            .map(|c| {
                assert!(c.delivery.body.starts_with(b"Received: "));
                Outcome::Stored { duplicate: false }
            })
            .collect()
    }
}

static SMTP: LazyLock<Arc<smtp_in::Ctx<Fake>>> = LazyLock::new(|| {
    let cfg = smtp_in::SmtpInConfig {
        max_message_bytes: 64 * 1024,
        max_line_bytes: 1000,
        max_recipients: 5,
        max_data_in_flight_bytes: 1 << 20,
        unknown_rcpt_delay_ms: 0,
        unknown_rcpt_delay_max_ms: 0,
        ..Default::default()
    };
    Arc::new(smtp_in::Ctx::new(cfg, None, Fake))
});

fn smtp_seeds() -> Vec<Vec<u8>> {
    let msg =
        "From: a@remote.test\r\nTo: alice@megamail.test\r\nSubject: hi\r\n\r\nbody\r\n..dot\r\n";
    [
        format!("EHLO client.test\r\nMAIL FROM:<a@remote.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<alice@megamail.test>\r\nRCPT TO:<nobody@megamail.test>\r\nDATA\r\n{msg}.\r\nQUIT\r\n"),
        "HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 10\r\n0123456789BDAT 4 LAST\r\nabcdRSET\r\nQUIT\r\n".to_string(),
        "EHLO x\r\nMAIL FROM:<jörg@remote.test> SMTPUTF8\r\nRCPT TO:<@r1,@r2:bob@megamail.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\nSubject: ü\r\n\r\n\n.\n\r.\r\r\n.\r\nNOOP\r\nVRFY x\r\nHELP\r\nSTARTTLS\r\nQUIT\r\n".to_string(),
        "EHLO x\r\nMAIL FROM:<a@b.test> SIZE=99999999999\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<later@megamail.test>\r\nRCPT TO:<-x@megamail.test>\r\nDATA\r\nBDAT 3\r\nabc".to_string(),
        "ehlo x\r\nmail from:<a@b.test>\r\nrcpt to:<alice@megamail.test>\r\nbdat 5\r\nhellobdat 0 last\r\nquit\r\n".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// One whole session over an in-memory pipe: the input is what the client sends, then it
/// closes its side; the session must end, never panic, and give back its data budget.
fn smtp(input: &[u8]) {
    let ctx = SMTP.clone();
    let session_ctx = ctx.clone();
    block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "192.0.2.1:25000".parse().expect("an address");
        let shutdown = runtime::shutdown::Shutdown::new();
        let (mut rd, mut wr) = tokio::io::split(client);
        let session = smtp_in::session::serve(session_ctx, server, peer, shutdown);
        let write = async move {
            // The session may close first; what it did not read is dropped.
            let _ = wr.write_all(input).await;
            let _ = wr.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let ((), (), out) = tokio::join!(session, write, read);
        assert!(out.starts_with(b"220 "), "no greeting");
        assert!(out.ends_with(b"\r\n"), "a reply cut short");
    });
    assert_eq!(
        ctx.budget.used(),
        0,
        "a session kept part of the data budget"
    );
}

// ---- HTTP forms, JSON, tokens ----

fn form_seeds() -> Vec<Vec<u8>> {
    [
        "\x00user=alice%40megamail.test&password=p%C3%A4ss+word&csrf=abc",
        "\x01to=bob%40x.test&cc=&subject=Hi%20there&text=line1%0D%0Aline2&id=5&id=6",
        "\x02offset=50&limit=25&folder=INBOX&before=9",
        "\x03folder=Sent&id=12345&images=1",
        "\x04q=needle&in=subject,from&offset=0&limit=20",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn http_form(input: &[u8]) {
    use frontdoor::api::{MessageParams, PageParams, SearchParams};
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    match mode % 5 {
        0 => {
            let _ = serde_urlencoded::from_bytes::<login::web::LoginForm>(body);
        }
        1 => {
            let f = frontdoor::form::FormData::parse(body);
            let _ = (f.get("to"), f.all("id").count());
        }
        2 => {
            let _ = serde_urlencoded::from_bytes::<PageParams>(body);
        }
        3 => {
            let _ = serde_urlencoded::from_bytes::<MessageParams>(body);
        }
        _ => {
            let _ = serde_urlencoded::from_bytes::<SearchParams>(body);
            // The search's field list, as the handler reads it.
            let text = String::from_utf8_lossy(body);
            let _ = frontdoor::api::search_fields(Some(&text));
        }
    }
}

fn json_seeds() -> Vec<Vec<u8>> {
    [
        "\x00{\"user\":\"alice@megamail.test\",\"password\":\"s\\u00e9cret\"}",
        "\x01{\"name\":\"Projects/2024\"}",
        "\x02{\"from\":\"Old\",\"to\":\"New\"}",
        "\x03{\"ids\":[1,2,18446744073709551615],\"folder\":\"Trash\"}",
        "\x04{\"ids\":[7],\"add\":[\"seen\",\"flagged\"],\"remove\":[\"answered\"]}",
        "\x05{\"ids\":[3,4],\"folder\":null}",
        "\x06{\"to\":[\"b@x.test\"],\"cc\":[],\"bcc\":[],\"subject\":\"hi\",\"text\":\"yo\",\"attachments\":[{\"name\":\"a.txt\",\"content_type\":\"text/plain\",\"data_base64\":\"aGk=\"}],\"in_reply_to\":5}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn http_json(input: &[u8]) {
    use frontdoor::api::{DeleteBody, FlagsBody, MoveBody, NameBody, RenameBody, SendBody};
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    match mode % 7 {
        0 => {
            let _ = serde_json::from_slice::<login::web::SessionRequest>(body);
        }
        1 => {
            let _ = serde_json::from_slice::<NameBody>(body);
        }
        2 => {
            let _ = serde_json::from_slice::<RenameBody>(body);
        }
        3 => {
            let _ = serde_json::from_slice::<MoveBody>(body);
        }
        4 => {
            let _ = serde_json::from_slice::<FlagsBody>(body);
        }
        5 => {
            let _ = serde_json::from_slice::<DeleteBody>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<SendBody>(body);
        }
    }
}

static KEYS: LazyLock<session::token::SigningKeys> = LazyLock::new(|| {
    session::token::SigningKeys::new(
        "k1",
        &[
            ("k1".to_string(), "11".repeat(32)),
            ("old".to_string(), "22".repeat(32)),
        ],
    )
    .expect("test keys")
});
static VERIFYING: LazyLock<session::token::VerifyingKeys> = LazyLock::new(|| KEYS.verifying());

const NOW: u64 = 1_800_000_000;

fn token_seeds() -> Vec<Vec<u8>> {
    let claims = session::token::Claims::new("alice@megamail.test", 3, NOW - 10, 3600);
    let token = KEYS.issue(&claims);
    let csrf = KEYS.derive("login-csrf", &claims.sid);
    vec![
        format!("\x00{token}").into_bytes(),
        format!("\x01mm_session={token}; theme=dark").into_bytes(),
        format!("\x01other=1;mm_session=\"{token}\"").into_bytes(),
        format!("\x02Bearer {token}").into_bytes(),
        format!("\x03{csrf}").into_bytes(),
    ]
}

fn session_token(input: &[u8]) {
    use axum::http::{header, HeaderMap, HeaderValue};
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        0 => {
            let _ = VERIFYING.verify(&text, NOW);
        }
        3 => {
            let _ = KEYS.check_derived("login-csrf", "sid", &text);
        }
        m => {
            let Ok(v) = HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut h = HeaderMap::new();
            h.insert(
                if m == 1 {
                    header::COOKIE
                } else {
                    header::AUTHORIZATION
                },
                v,
            );
            if let Some((token, _via)) = frontdoor::auth::token_of(&h) {
                let _ = VERIFYING.verify(&token, NOW);
            }
        }
    }
}

// ---- MIME and HTML ----

fn mime_seeds() -> Vec<Vec<u8>> {
    [
        "From: =?UTF-8?B?2LPYp9ix2Kk=?= <sara@remote.test>\r\nTo: Алиса <alice@megamail.test>, bob@x\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHall=C3=B6 =\r\nwelt\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''%E5%A0%B1.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n",
        "Subject: alt\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n--x\r\nContent-Type: text/html\r\n\r\n<p>Hi <img src=\"cid:i1\"><script>x</script></p>\r\n--x\r\nContent-Type: image/png\r\nContent-ID: <i1>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--x--\r\n",
        "Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: c@d\r\n\r\ninner body\r\n",
        "Subject: plain\r\n\r\nno mime at all\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn mime(input: &[u8]) {
    let _ = message::summarize(input);
    let p = frontdoor::mime::parse(input);
    let _ = (p.inline_images(), p.text_or_html());
    for a in &p.attachments {
        let _ = frontdoor::mime::safe_filename(&a.name);
        let _ = frontdoor::mime::content_disposition(&a.name);
        let _ = frontdoor::mime::safe_content_type(&a.content_type);
    }
    if let Some(h) = &p.html {
        let _ = frontdoor::sanitize::clean(h, 1, &p.inline_images(), false);
    }
}

fn html_seeds() -> Vec<Vec<u8>> {
    [
        "<p>Hello <b>world</b><img src=\"https://t.example/p.gif\"><img src=\"cid:logo\"></p>",
        "<a href=\"javascript:alert(1)\" onclick=\"x()\">x</a><script>alert(1)</script><style>p{}</style>",
        "<table background=\"http://x\"><tr><td style=\"color:red\">c</td></tr></table><form action=\"/x\"><input name=a></form>",
        "<svg><foreignObject><img src=x onerror=alert(1)></foreignObject></svg><!-- c --><![CDATA[x]]>",
        "<img srcset=\"a.png 1x, https://x/b.png 2x\"><a href=\"mailto:a@b\">m</a><base href=\"http://evil\">",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn html(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let inline = HashMap::from([("logo".to_string(), 0usize)]);
    let remote = input.first().is_some_and(|b| b & 1 == 1);
    let _ = frontdoor::sanitize::clean(&text, 7, &inline, remote);
    let _ = frontdoor::mime::html_to_text(&text);
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    /// The mutations reach the decoder behind the checksum: some mutated frames decode, some
    /// fail to decode, some fail their checksum or length.
    #[test]
    fn mutated_frames_reach_the_decoder() {
        let seeds = framed_seeds(&xfs_client_frames());
        let mut rng = StdRng::seed_from_u64(3);
        let (mut ok, mut undecodable, mut other) = (0, 0, 0);
        for i in 0..3000 {
            let input = crate::mutate(&mut rng, &seeds[i % seeds.len()], &seeds);
            let stream = framed(&input);
            let r = block_on(async {
                frame::read_msg::<_, xfs::ClientFrame>(&mut stream.as_slice(), 1 << 20).await
            });
            match r {
                Ok(Some(_)) => ok += 1,
                Err(xfs::FrameError::Decode(_)) => undecodable += 1,
                _ => other += 1,
            }
        }
        assert!(
            ok > 100 && undecodable > 100 && other > 100,
            "{ok} {undecodable} {other}"
        );
    }
}
