//! Delivery status notifications (RFC 3464), written by the store straight into the sender's
//! Inbox when a queued recipient fails for good, is given up, or is late.
//!
//! A notice is a `multipart/report; report-type=delivery-status` of three parts: a text for
//! people, the `message/delivery-status` fields (`Reporting-MTA`, `Arrival-Date`, then the
//! recipient's `Final-Recipient`, `Action`, `Status`, `Diagnostic-Code`, `Last-Attempt-Date`),
//! and the original's header block as `text/rfc822-headers`. Its delivery id is derived from
//! the queue entry and the kind of notice, so a report repeated after a lost reply files it
//! once. Everything taken from outside (the remote server's reply, the addresses) is stripped
//! of control characters and bounded before it goes into a header.

use sha2::{Digest, Sha256};
use xfs::{Delivery, Flags, QueueId, Summary};

/// What a notice says of its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notice {
    /// Given up: refused for good, expired, or cancelled with a bounce.
    Failed,
    /// Still trying, but late.
    Delayed,
}

/// One notice to write.
pub(super) struct Report<'a> {
    pub user: &'a str,
    pub id: QueueId,
    pub notice: Notice,
    /// The reporting server's name.
    pub mta: &'a str,
    /// The envelope sender the notice goes to.
    pub sender: &'a str,
    pub rcpt: &'a str,
    /// The last answer of the recipient's side, or why it could not be reached.
    pub reply: &'a str,
    pub queued_ms: u64,
    pub now_ms: u64,
    /// The message as submitted (only its header block is quoted).
    pub original: &'a [u8],
}

/// Longest reply text quoted in a header.
const MAX_REPLY: usize = 900;
/// Longest header block of the original quoted.
const MAX_HEADERS: usize = 64 << 10;

/// The notice as a delivery into the Inbox.
pub(super) fn compose(r: &Report<'_>) -> Delivery {
    let mta = clean(r.mta, 253);
    let rcpt = clean(r.rcpt, 254);
    let sender = clean(r.sender, 254);
    let reply = clean(r.reply, MAX_REPLY);
    let mut h = Sha256::new();
    for part in [b"dsn".as_slice(), r.user.as_bytes(), &r.id.to_be_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update([r.notice as u8]);
    let id: [u8; 32] = h.finalize().into();
    let boundary = format!("=_report_{}", hex::encode(&id[..12]));
    let (subject, action, status, human) = match r.notice {
        Notice::Failed => (
            "Undelivered Mail Returned to Sender",
            "failed",
            status_of(&reply, '5'),
            format!(
                "Your message could not be delivered to {rcpt}, and it will not be tried \
                 again.\r\n\r\nThe reason: {reply}\r\n"
            ),
        ),
        Notice::Delayed => (
            "Delayed Mail (still being retried)",
            "delayed",
            status_of(&reply, '4'),
            format!(
                "Your message has not been delivered to {rcpt} yet. It will be tried again; \
                 you do not need to send it again.\r\n\r\nThe reason so far: {reply}\r\n"
            ),
        ),
    };
    let date = runtime::time::rfc5322_date(r.now_ms);
    let from = format!("Mail Delivery System <MAILER-DAEMON@{mta}>");
    let mut m = String::with_capacity(2048);
    m.push_str(&format!("From: {from}\r\n"));
    m.push_str(&format!("To: <{sender}>\r\n"));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!(
        "Message-ID: <dsn.{}@{mta}>\r\n",
        hex::encode(&id[..16])
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a delivery status notification in MIME format.\r\n");
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    m.push_str(&human);
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    m.push_str(&format!("Reporting-MTA: dns; {mta}\r\n"));
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        runtime::time::rfc5322_date(r.queued_ms)
    ));
    m.push_str("\r\n");
    m.push_str(&format!("Final-Recipient: rfc822; {rcpt}\r\n"));
    m.push_str(&format!("Action: {action}\r\n"));
    m.push_str(&format!("Status: {status}\r\n"));
    if starts_with_reply_code(&reply) {
        m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
    }
    m.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
    let mut body = m.into_bytes();
    body.extend_from_slice(header_block(r.original));
    if !body.ends_with(b"\n") {
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let first_line = human.lines().next().unwrap_or_default();
    Delivery {
        id,
        folder: None,
        internal_date_ms: r.now_ms,
        flags: Flags::NONE,
        summary: Summary {
            from,
            to: sender,
            subject: subject.to_string(),
            date,
            preview: first_line.chars().take(200).collect(),
            attachments: Vec::new(),
        },
        body: body.into(),
    }
}

/// `text` with control characters as spaces, at most `max` bytes (cut on a character).
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

fn starts_with_reply_code(reply: &str) -> bool {
    let b = reply.as_bytes();
    b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && matches!(b[0], b'4' | b'5')
}

/// The enhanced status code (RFC 3463) in `reply` (`550 5.1.1 ...` or `5.1.2 ...`), or the
/// class's generic one.
fn status_of(reply: &str, class: char) -> String {
    let found = reply.split_whitespace().take(2).find(|w| {
        let mut parts = w.split('.');
        let ok = |p: Option<&str>, max: usize| {
            p.is_some_and(|p| {
                !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
            })
        };
        w.starts_with(['2', '4', '5'])
            && ok(parts.next(), 1)
            && ok(parts.next(), 3)
            && ok(parts.next(), 3)
            && parts.next().is_none()
    });
    match found {
        // A failure after temporary errors (its lifetime ran out) keeps their 4.x.x, as
        // Postfix reports it.
        Some(code) if code.starts_with(['4', '5']) => code.to_string(),
        _ => format!("{class}.0.0"),
    }
}

/// The original's header block, with its last line break, at most [`MAX_HEADERS`] bytes cut
/// after a whole line.
fn header_block(msg: &[u8]) -> &[u8] {
    let end = msg
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 1)
        .into_iter()
        .chain(msg.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2))
        .min()
        .unwrap_or(msg.len());
    let block = &msg[..end];
    if block.len() <= MAX_HEADERS {
        return block;
    }
    let cut = &block[..MAX_HEADERS];
    match cut.iter().rposition(|b| *b == b'\n') {
        Some(i) => &cut[..=i],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(notice: Notice, reply: &'static str) -> Delivery {
        compose(&Report {
            user: "alice@example.test",
            id: 7,
            notice,
            mta: "out-1.example.test",
            sender: "alice@example.test",
            rcpt: "bob@remote.example",
            reply,
            queued_ms: 1_796_180_000_000,
            now_ms: 1_796_180_645_000,
            original: b"From: alice@example.test\r\nSubject: Hi\r\n\r\nsecret body\r\n",
        })
    }

    #[test]
    fn a_failure_notice_is_a_delivery_status_report_with_the_original_headers_only() {
        let d = report(
            Notice::Failed,
            "550 5.1.1 <bob@remote.example>: no such user",
        );
        let text = String::from_utf8(d.body.to_vec()).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Reporting-MTA: dns; out-1.example.test\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.example\r\n"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.example>"));
        assert!(text.contains("Subject: Hi\r\n"));
        assert!(!text.contains("secret body"));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.lines().all(|l| !l.contains('\r') || l.ends_with('\r')));
        assert_eq!(d.folder, None);
        assert_eq!(d.summary.subject, "Undelivered Mail Returned to Sender");
        // The same entry and kind make the same id: a repeated report files one notice.
        assert_eq!(d.id, report(Notice::Failed, "other").id);
        assert_ne!(d.id, report(Notice::Delayed, "other").id);
    }

    #[test]
    fn a_delay_notice_says_delayed_and_a_reason_without_a_code_gets_the_class_code() {
        let d = report(Notice::Delayed, "connection refused by mx.remote.example");
        let text = String::from_utf8(d.body.to_vec()).unwrap();
        assert!(text.contains("Action: delayed\r\nStatus: 4.0.0\r\n"));
        assert!(!text.contains("Diagnostic-Code"));
        assert!(text.contains("The reason so far: connection refused"));
    }

    #[test]
    fn hostile_replies_cannot_add_headers_and_long_ones_are_cut_on_a_character() {
        let evil = "550 5.7.1 no\r\nBcc: everyone@example.test\r\n";
        let d = report(Notice::Failed, evil);
        let text = String::from_utf8(d.body.to_vec()).unwrap();
        assert!(!text.contains("\r\nBcc:"));
        let long = "ж".repeat(2000);
        assert_eq!(clean(&long, MAX_REPLY).len(), MAX_REPLY);
        assert_eq!(clean("ab\u{0}c", 10), "ab c");
        assert_eq!(status_of("4.4.7 given up after 5 days", '5'), "4.4.7");
        assert_eq!(status_of("250 2.0.0 odd", '5'), "5.0.0");
        assert_eq!(status_of("5.1.2 null MX", '5'), "5.1.2");
        assert_eq!(status_of("550 5.1.1x", '5'), "5.0.0");
    }

    #[test]
    fn the_quoted_header_block_stops_at_the_blank_line_and_is_bounded() {
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\n\r\nbody\n\nx"), b"A: 1\r\n");
        assert_eq!(header_block(b"A: 1"), b"A: 1");
        let big = "X-Long: y\r\n".repeat(10_000);
        let block = header_block(big.as_bytes());
        assert!(block.len() <= MAX_HEADERS && block.ends_with(b"\r\n"));
    }
}
