//! What the index keeps of a message, made one way wherever a message enters a mailbox
//! (received by smtp-in, sent from webmail): its summary, parsed with `mail-parser` while the
//! stored bytes stay as they came, and the address and text helpers behind it. Text is cut
//! between characters, never inside one, and control characters never reach a summary.

use mail_parser::{Address, MessageParser, MimeHeaders};
use xfs::Summary;

/// Characters of body text kept as the preview.
pub const PREVIEW_CHARS: usize = 200;
/// Longest header text kept in a summary field.
pub const FIELD_CHARS: usize = 500;

/// At most `max` characters of `s`, control characters made spaces, trimmed.
pub fn clip(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    s.trim().to_string()
}

/// An address header as display text (`Name <a@b>, c@d`, groups flattened, at most
/// `4 × FIELD_CHARS` characters) and the addresses in it that have an `@`.
pub fn address_list(a: Option<&Address>) -> (String, Vec<String>) {
    let Some(a) = a else {
        return (String::new(), Vec::new());
    };
    let all: Vec<_> = match a {
        Address::List(l) => l.iter().collect(),
        Address::Group(g) => g.iter().flat_map(|g| g.addresses.iter()).collect(),
    };
    let text: Vec<String> = all
        .iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (None, Some(e)) => e.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    let addrs = all
        .iter()
        .filter_map(|a| a.address())
        .map(|e| clip(e, FIELD_CHARS))
        .filter(|e| e.contains('@'))
        .collect();
    (clip(&text.join(", "), FIELD_CHARS * 4), addrs)
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
        from: clip(&address_list(msg.from()).0, FIELD_CHARS),
        to: clip(&address_list(msg.to()).0, FIELD_CHARS),
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
    fn clipping_counts_characters() {
        assert_eq!(clip(&"Привет ".repeat(100), 10), "Привет При");
        assert_eq!(clip("🎉🎉🎉", 2), "🎉🎉");
        assert_eq!(clip(" a\u{0}b\r\n", 10), "a b");
    }
}
