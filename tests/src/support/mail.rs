//! Mail as the tests send it and look for it: an SMTP client for smtp-in, deliveries made
//! straight through XFS, a steady SMTP load that remembers what was accepted, and the headers a
//! test reads back (the Message-ID, the bytes the sender handed over).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use xfs::{Delivery, Flags, Summary};

/// An SMTP client for the smtp-in at `smtp` (plain text, one connection per message).
pub fn mailer(smtp: SocketAddr) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .timeout(Some(Duration::from_secs(60)))
        .build()
}

/// Hand `raw` to the smtp-in at `smtp` for `to`, from `from`.
pub async fn send_raw(smtp: SocketAddr, from: &str, to: &[&str], raw: &[u8]) -> anyhow::Result<()> {
    let rcpts = to
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = Envelope::new(Some(from.parse()?), rcpts)?;
    mailer(smtp).send_raw(&envelope, raw).await?;
    Ok(())
}

/// A delivery straight to a store: `body` under `subject`, its delivery id the sha256 of `key`
/// (the same key is the same delivery, stored once).
pub fn delivery(key: &str, subject: &str, body: Vec<u8>) -> Delivery {
    Delivery {
        id: Sha256::digest(key.as_bytes()).into(),
        folder: None,
        internal_date_ms: 1_700_000_000_000,
        flags: Flags::NONE,
        summary: Summary {
            subject: subject.into(),
            ..Default::default()
        },
        body: body.into(),
    }
}

/// A message of at least `size` bytes: `headers` (each line ending in CRLF), a blank line, then
/// lines of text.
pub fn padded(headers: &str, size: usize) -> Vec<u8> {
    let mut body = format!("{headers}\r\n").into_bytes();
    let words = [
        "mailbox", "store", "segment", "epoch", "freeze", "delta", "index", "the", "a", "of",
        "moves",
    ];
    let mut k = headers.len();
    while body.len() < size {
        for _ in 0..12 {
            body.extend_from_slice(words[k % words.len()].as_bytes());
            body.push(b' ');
            k = k.wrapping_mul(31).wrapping_add(7);
        }
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// The value of the `Message-ID` header (the name in any letter case) among a message's
/// headers, stored or as sent; `None` when there is none.
pub fn message_id(raw: &[u8]) -> Option<String> {
    raw.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let line = String::from_utf8_lossy(l);
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_string())
        })
}

/// The message as its sender handed it over: the stored bytes without the first header (the
/// `Received:` trace header the receiver prepends), folded continuation lines included.
pub fn strip_trace_header(stored: &[u8]) -> &[u8] {
    let mut rest = stored;
    let mut first = true;
    loop {
        let starts_folded = matches!(rest.first(), Some(b' ' | b'\t'));
        if !first && !starts_folded {
            return rest;
        }
        first = false;
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => rest = &rest[i + 1..],
            None => return &[],
        }
    }
}

/// Mail through SMTP to `users` (one after another, spread over them) until `stop`, a message
/// begun at most every `every`; the Message-IDs answered `250`, per user.
pub async fn smtp_load(
    smtp: SocketAddr,
    users: Vec<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> HashMap<String, Vec<String>> {
    let mailer = mailer(smtp);
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let begun = Instant::now();
        n += 1;
        let user = &users[(n * 7919) % users.len()];
        let id = format!("<load-{n}@remote.test>");
        let msg = Message::builder()
            .from("load@remote.test".parse().expect("an address"))
            .to(user.parse().expect("an address"))
            .message_id(Some(id.clone()))
            .subject(format!("load {n}"))
            .body(format!("message {n} of the load\n"))
            .expect("a message");
        if mailer.send(msg).await.is_ok() {
            acked.entry(user.clone()).or_default().push(id);
        }
        tokio::time::sleep_until((begun + every).into()).await;
    }
    acked
}

/// Run Python's smtplib against the smtp-in at `smtp`: `script` with `s` a connected
/// `smtplib.SMTP` (20 s timeout). It must succeed; its standard output.
pub fn smtplib(smtp: SocketAddr, script: &str) -> String {
    let script = format!(
        "import smtplib,sys\ns=smtplib.SMTP(sys.argv[1],int(sys.argv[2]),timeout=20)\n{script}"
    );
    let mut python = std::process::Command::new("python3");
    python
        .args(["-c", &script])
        .arg(smtp.ip().to_string())
        .arg(smtp.port().to_string());
    crate::support::run_ok(&mut python, "python3 smtplib")
}

/// Read one SMTP reply, all its lines (`250-...` continues, `250 ...` ends it): the code (0 when
/// the last line has none) and the whole text.
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_folded_header() {
        let stored = b"Received: from x\r\n\tby y;\r\n  date\r\nFrom: a\r\n\r\nbody\r\n";
        assert_eq!(strip_trace_header(stored), b"From: a\r\n\r\nbody\r\n");
        assert_eq!(strip_trace_header(b"Received: x\r\n"), b"");
    }

    #[test]
    fn the_message_id_is_read_from_the_headers_only() {
        let stored = b"Received: from x\r\n\tby y\r\nMessage-Id: <a@b>\r\n\r\nMessage-ID: <no>\r\n";
        assert_eq!(message_id(stored).as_deref(), Some("<a@b>"));
        assert_eq!(
            message_id(b"message-id:<c@d>\n\nx").as_deref(),
            Some("<c@d>")
        );
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
        assert_eq!(message_id(b""), None);
    }

    #[tokio::test]
    async fn a_reply_is_read_to_its_last_line() {
        let mut r: &[u8] = b"250-mx hello\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n221 bye\r\n";
        let (code, text) = read_reply(&mut r).await.unwrap();
        assert_eq!(code, 250);
        assert_eq!(text, "250-mx hello\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
        assert_eq!(
            read_reply(&mut r).await.unwrap(),
            (221, "221 bye\r\n".into())
        );
        assert!(read_reply(&mut r).await.is_err(), "closed");
    }

    #[test]
    fn padded_mail_has_its_headers_and_size() {
        let m = padded("Subject: s\r\nMessage-ID: <p@x>\r\n", 5000);
        assert!(m.len() >= 5000 && m.len() < 5200, "{}", m.len());
        assert!(m.starts_with(b"Subject: s\r\nMessage-ID: <p@x>\r\n\r\n"));
        assert_eq!(message_id(&m).as_deref(), Some("<p@x>"));
        assert_eq!(padded("Subject: s\r\n", 0), b"Subject: s\r\n\r\n");
        assert_eq!(
            delivery("k", "s", vec![]).id,
            delivery("k", "t", vec![1]).id
        );
    }
}
