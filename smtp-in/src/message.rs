//! What is made of a received message: its index summary (parsed with `mail-parser`; the stored
//! bytes stay as received), the `Received:` trace line prepended to each copy, and the delivery id
//! that makes a sender's retry safe.

use mail_parser::{Address, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};
use xfs::Summary;

/// Characters of body text kept as the preview.
const PREVIEW_CHARS: usize = 200;
/// Longest header text kept in a summary field.
const FIELD_CHARS: usize = 500;

fn clip(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    s.trim().to_string()
}

fn addr_text(a: Option<&Address>) -> String {
    let Some(a) = a else { return String::new() };
    let list: Vec<String> = match a {
        Address::List(l) => l.iter().collect::<Vec<_>>(),
        Address::Group(g) => g.iter().flat_map(|g| g.addresses.iter()).collect(),
    }
    .into_iter()
    .map(|addr| match (addr.name(), addr.address()) {
        (Some(n), Some(e)) => format!("{n} <{e}>"),
        (None, Some(e)) => e.to_string(),
        (Some(n), None) => n.to_string(),
        (None, None) => String::new(),
    })
    .filter(|s| !s.is_empty())
    .collect();
    clip(&list.join(", "), FIELD_CHARS)
}

/// The index summary of a message. Never fails: what cannot be parsed stays empty.
pub fn summarize(data: &[u8]) -> Summary {
    let Some(msg) = MessageParser::default().parse(data) else {
        return Summary::default();
    };
    let preview = msg
        .body_text(0)
        .map(|t| {
            let words: Vec<&str> = t.split_whitespace().collect();
            clip(&words.join(" "), PREVIEW_CHARS)
        })
        .unwrap_or_default();
    Summary {
        from: addr_text(msg.from()),
        to: addr_text(msg.to()),
        subject: clip(msg.subject().unwrap_or(""), FIELD_CHARS),
        date: clip(msg.header_raw("Date").unwrap_or(""), FIELD_CHARS),
        preview,
        attachments: msg
            .attachments()
            .filter_map(|p| p.attachment_name())
            .map(|n| clip(n, FIELD_CHARS))
            .take(100)
            .collect(),
    }
}

/// The delivery id of one copy: a hash of the envelope, the recipient and the data as received
/// (before the trace line, which differs between attempts), so the same message sent again to
/// the same recipient is stored once.
pub fn delivery_id(mail_from: &str, rcpt: &str, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"megamail delivery v1\0");
    h.update(mail_from.as_bytes());
    h.update([0]);
    h.update(rcpt.as_bytes());
    h.update([0]);
    h.update(data);
    h.finalize().into()
}

/// How the message came in, for the `with` clause (RFC 3848, RFC 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub esmtp: bool,
    pub tls: bool,
    pub utf8: bool,
}

impl Via {
    fn protocol(self) -> String {
        let mut p = String::new();
        if self.utf8 {
            p.push_str("UTF8SMTP");
        } else if self.esmtp {
            p.push_str("ESMTP");
        } else {
            p.push_str("SMTP");
        }
        if self.tls {
            p.push('S');
        }
        p
    }
}

/// The trace line prepended to one copy (RFC 5321 section 4.4), folded over three lines.
pub fn received_header(
    helo: &str,
    peer_ip: std::net::IpAddr,
    hostname: &str,
    via: Via,
    id: &str,
    rcpt: &str,
    now_ms: u64,
) -> String {
    let helo: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect();
    let date = mail_parser::DateTime::from_timestamp((now_ms / 1000) as i64).to_rfc822();
    format!(
        "Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (megamail smtp-in) with {} id {id}\r\n\tfor <{rcpt}>; {date}\r\n",
        via.protocol()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_of_a_multipart_message() {
        let raw = b"From: Ann Example <ann@remote.test>\r\nTo: bob@megamail.test, Carol <carol@megamail.test>\r\nSubject: =?UTF-8?Q?caf=C3=A9?= plans\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nHello   Bob,\r\nsee the file.\r\n--b1\r\nContent-Type: application/pdf; name=\"plan.pdf\"\r\nContent-Disposition: attachment; filename=\"plan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n";
        let s = summarize(raw);
        assert_eq!(s.from, "Ann Example <ann@remote.test>");
        assert_eq!(s.to, "bob@megamail.test, Carol <carol@megamail.test>");
        assert_eq!(s.subject, "café plans");
        assert_eq!(s.date, "Sun, 22 Nov 2026 10:00:00 +0000");
        assert_eq!(s.preview, "Hello Bob, see the file.");
        assert_eq!(s.attachments, vec!["plan.pdf".to_string()]);
    }

    #[test]
    fn garbage_gives_an_empty_summary_or_what_little_parses_never_a_panic() {
        for raw in [&b""[..], b"\x00\xff\xfe", b"Subject:", b"\r\n\r\n\r\n"] {
            assert_eq!(summarize(raw), Summary::default(), "{raw:?}");
        }
        // A hostile address is kept as text, not taken apart.
        assert_eq!(
            summarize(b"From: <<<@>>>\r\n\r\nx"),
            Summary {
                from: ">> <<<@>".into(),
                preview: "x".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn long_fields_are_cut_between_characters_not_inside_one() {
        // Two- and four-byte characters: a cut by bytes would split one (and panic).
        let subject = "я".repeat(FIELD_CHARS + 7);
        let body = "🎉".repeat(PREVIEW_CHARS + 3);
        let name = format!("{}.pdf", "報".repeat(FIELD_CHARS));
        let raw = format!(
            "From: {subject} <a@remote.test>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
{body}\r\n--b\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"{name}\"\r\n\r\nx\r\n--b--\r\n"
        );
        let s = summarize(raw.as_bytes());
        assert_eq!(s.subject, "я".repeat(FIELD_CHARS));
        assert_eq!(s.from, "я".repeat(FIELD_CHARS));
        assert_eq!(s.preview, "🎉".repeat(PREVIEW_CHARS));
        assert_eq!(s.attachments, vec!["報".repeat(FIELD_CHARS)]);
    }

    #[test]
    fn ids_differ_by_envelope_recipient_and_data() {
        let a = delivery_id("a@x", "b@y", b"data");
        assert_eq!(a, delivery_id("a@x", "b@y", b"data"));
        assert_ne!(a, delivery_id("a@x", "c@y", b"data"));
        assert_ne!(a, delivery_id("", "b@y", b"data"));
        assert_ne!(a, delivery_id("a@x", "b@y", b"datb"));
        // The separator keeps field boundaries apart.
        assert_ne!(delivery_id("ab", "c", b""), delivery_id("a", "bc", b""));
    }

    #[test]
    fn the_trace_line_is_folded_and_names_the_protocol() {
        let via = Via {
            esmtp: true,
            tls: true,
            utf8: false,
        };
        let h = received_header(
            "client.remote.test\r\nX-Injected: 1",
            "127.0.0.1".parse().unwrap(),
            "mx.megamail.test",
            via,
            "abc.1",
            "bob@megamail.test",
            1_795_000_000_000,
        );
        assert!(h.starts_with("Received: from client.remote.testX-Injected:1 ([127.0.0.1])\r\n\tby mx.megamail.test"), "{h}");
        assert!(
            h.contains("with ESMTPS id abc.1\r\n\tfor <bob@megamail.test>; "),
            "{h}"
        );
        assert!(h.ends_with("\r\n") && h.matches("\r\n").count() == 3, "{h}");
    }
}
