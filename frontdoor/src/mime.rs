//! Reading stored messages with `mail-parser`: headers, the plain-text and HTML bodies, and the
//! attachments (with safe download names and types); the index summary of a message this front
//! door sends; and short dates for folder pages.

use std::cell::RefCell;
use std::collections::HashMap;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use mail_parser::{MessageParser, MimeHeaders, PartType};
/// The index summary of a message this front door sends (for its copy in Sent): made as
/// smtp-in makes it for received mail.
pub use message::summarize;
use message::{address_list as addr_list, clip, FIELD_CHARS};
/// Attachments listed for one message at most.
const MAX_ATTACHMENTS: usize = 200;

/// One attachment of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its position among the message's attachments (what download links name).
    pub index: usize,
    /// The name the sender gave, or one made up.
    pub name: String,
    /// The declared type, lowercase `type/subtype`.
    pub content_type: String,
    pub content_id: Option<String>,
    pub data: Vec<u8>,
}

/// A stored message, read for display.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub from: String,
    pub to: String,
    pub cc: String,
    pub subject: String,
    pub date: String,
    /// Addresses only (no names), for replies.
    pub from_addrs: Vec<String>,
    pub reply_to_addrs: Vec<String>,
    pub to_addrs: Vec<String>,
    pub cc_addrs: Vec<String>,
    pub message_id: Option<String>,
    pub references: Vec<String>,
    pub text: Option<String>,
    /// The HTML body as sent: never shown before [`crate::sanitize`] cleans it.
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
}

impl Parsed {
    /// Content id → attachment index of the image attachments: what the HTML body may show
    /// inline.
    pub fn inline_images(&self) -> HashMap<String, usize> {
        self.attachments
            .iter()
            .filter(|a| is_inline_image(&a.content_type))
            .filter_map(|a| a.content_id.clone().map(|c| (c, a.index)))
            .collect()
    }

    /// The plain text, or the HTML turned into text.
    pub fn text_or_html(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        self.html.as_deref().map(html_to_text).unwrap_or_default()
    }
}

/// Parse stored bytes for display. Never fails: what cannot be parsed stays empty.
pub fn parse(raw: &[u8]) -> Parsed {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Parsed {
            text: Some(String::from_utf8_lossy(raw).into_owned()),
            ..Default::default()
        };
    };
    let (from, from_addrs) = addr_list(msg.from());
    let (to, to_addrs) = addr_list(msg.to());
    let (cc, cc_addrs) = addr_list(msg.cc());
    let (_, reply_to_addrs) = addr_list(msg.reply_to());
    let text: Vec<String> = msg
        .text_bodies()
        .filter_map(|p| match &p.body {
            PartType::Text(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    let html: Vec<String> = msg
        .html_bodies()
        .filter_map(|p| match &p.body {
            PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
        .collect();
    let attachments = msg
        .attachments()
        .take(MAX_ATTACHMENTS)
        .enumerate()
        .map(|(index, part)| {
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| {
                    if part.is_message() {
                        "message/rfc822".into()
                    } else {
                        "application/octet-stream".into()
                    }
                })
                .to_ascii_lowercase();
            let name = part
                .attachment_name()
                .map(|n| clip(n, 200))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| default_name(index, &content_type));
            let content_id = part.content_id().map(|c| {
                c.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            });
            Attachment {
                index,
                name,
                content_type,
                content_id,
                data: part.contents().to_vec(),
            }
        })
        .collect();
    let references = msg
        .references()
        .as_text_list()
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .or_else(|| msg.references().as_text().map(|s| vec![s.to_string()]))
        .unwrap_or_default();
    Parsed {
        from,
        to,
        cc,
        subject: clip(msg.subject().unwrap_or(""), FIELD_CHARS),
        date: clip(msg.header_raw("Date").unwrap_or(""), FIELD_CHARS),
        from_addrs,
        reply_to_addrs,
        to_addrs,
        cc_addrs,
        message_id: msg.message_id().map(|s| s.to_string()),
        references,
        text: (!text.is_empty()).then(|| text.join("\n\n")),
        html: (!html.is_empty()).then(|| html.join("\n<hr>\n")),
        attachments,
    }
}

fn default_name(index: usize, content_type: &str) -> String {
    let ext = match content_type {
        "message/rfc822" => "eml",
        "text/plain" => "txt",
        "text/html" => "html",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "application/pdf" => "pdf",
        _ => "bin",
    };
    format!("attachment-{}.{ext}", index + 1)
}

/// A plain rendering of HTML (for replies and previews): the text as the HTML tokenizer reads
/// it (every character reference decoded by html5ever, so nothing here knows an entity), a line
/// break where a block ends, nothing of scripts, styles or titles, trailing blanks dropped.
pub fn html_to_text(html: &str) -> String {
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(TextSink::default(), TokenizerOpts::default());
    // The sink never asks to run a script, so one feed reads everything.
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let text = tokenizer.sink.text.into_inner().replace('\u{a0}', " ");
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects the text of HTML for [`html_to_text`].
#[derive(Default)]
struct TextSink {
    text: RefCell<String>,
    /// Inside an element whose content is not text to show: the end tag that closes it.
    skipping: RefCell<Option<String>>,
}

impl TokenSink for TextSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                let mut skipping = self.skipping.borrow_mut();
                if let Some(end) = skipping.as_deref() {
                    if tag.kind == TagKind::EndTag && name == end {
                        *skipping = None;
                    }
                    return TokenSinkResult::Continue;
                }
                if tag.kind == TagKind::StartTag {
                    if matches!(name, "script" | "style" | "title") {
                        *skipping = Some(name.to_string());
                    }
                    if name == "br" {
                        self.text.borrow_mut().push('\n');
                    }
                    // Content the HTML parser reads as raw text, as a tree builder would.
                    return match name {
                        "script" => TokenSinkResult::RawData(RawKind::ScriptData),
                        "style" | "xmp" | "iframe" | "noembed" | "noframes" => {
                            TokenSinkResult::RawData(RawKind::Rawtext)
                        }
                        "title" | "textarea" => TokenSinkResult::RawData(RawKind::Rcdata),
                        "plaintext" => TokenSinkResult::Plaintext,
                        _ => TokenSinkResult::Continue,
                    };
                }
                if matches!(
                    name,
                    "p" | "pre"
                        | "div"
                        | "tr"
                        | "li"
                        | "h1"
                        | "h2"
                        | "h3"
                        | "h4"
                        | "h5"
                        | "h6"
                        | "blockquote"
                ) {
                    self.text.borrow_mut().push('\n');
                }
            }
            Token::CharacterTokens(t) if self.skipping.borrow().is_none() => {
                self.text.borrow_mut().push_str(&t)
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

/// Types served as themselves when downloaded; anything else is `application/octet-stream`.
/// Never HTML, SVG, XML or scripts: those run in the browser.
const SAFE_TYPES: [&str; 9] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "application/zip",
    "audio/mpeg",
    "video/mp4",
];

/// The type an attachment is served with.
pub fn safe_content_type(declared: &str) -> &'static str {
    let declared = declared.trim().to_ascii_lowercase();
    SAFE_TYPES
        .iter()
        .find(|t| **t == declared)
        .copied()
        .unwrap_or("application/octet-stream")
}

/// Whether an attachment may be shown inline as an image (in the sanitized HTML body).
pub fn is_inline_image(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

/// A download name that is safe in a header and on any file system: no path separators,
/// quotes or control characters, not hidden, not empty.
pub fn safe_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '"' | '\'' | ';' | ':' | '*' | '?' | '<' | '>' | '|' | '%' => '_',
            c => c,
        })
        .take(150)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_string();
    if cleaned.is_empty() {
        "attachment".into()
    } else {
        cleaned
    }
}

/// A `Content-Disposition: attachment` value with an ASCII fallback name and the UTF-8 name.
pub fn content_disposition(name: &str) -> String {
    let safe = safe_filename(name);
    let ascii: String = safe
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(&safe, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// A short date for a folder page: the time today, the day this year, else the full date (UTC).
pub fn short_date(ms: u64, now_ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = mail_parser::DateTime::from_timestamp((ms / 1000) as i64);
    let now = mail_parser::DateTime::from_timestamp((now_ms / 1000) as i64);
    if (d.year, d.month, d.day) == (now.year, now.month, now.day) {
        format!("{:02}:{:02}", d.hour, d.minute)
    } else if d.year == now.year {
        let m = MONTHS[(d.month as usize).clamp(1, 12) - 1];
        format!("{m} {}", d.day)
    } else {
        format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
    }
}

/// A size for people: `812 B`, `14 KB`, `3.2 MB`.
pub fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{} KB", bytes.div_ceil(1024))
    } else {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Ann Example <ann@remote.test>\r\nTo: bob@megamail.test\r\nCc: Carol <carol@megamail.test>\r\nSubject: plans\r\nMessage-ID: <m1@remote.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain\r\n\r\nHello Bob\r\n--b2\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>Bob</b></p>\r\n--b2--\r\n--b1\r\nContent-Type: application/pdf; name=\"../../etc/plan.pdf\"\r\nContent-Disposition: attachment; filename=\"../../etc/plan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b1--\r\n";

    #[test]
    fn a_multipart_message_reads_whole() {
        let p = parse(MIXED);
        assert_eq!(p.from, "Ann Example <ann@remote.test>");
        assert_eq!(p.from_addrs, vec!["ann@remote.test".to_string()]);
        assert_eq!(p.cc_addrs, vec!["carol@megamail.test".to_string()]);
        assert_eq!(p.subject, "plans");
        assert_eq!(p.message_id.as_deref(), Some("m1@remote.test"));
        assert_eq!(p.text.as_deref().map(str::trim), Some("Hello Bob"));
        assert!(p.html.as_deref().unwrap().contains("<b>Bob</b>"));
        assert_eq!(p.attachments.len(), 1);
        let a = &p.attachments[0];
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(a.data, b"%PDF-");
        assert_eq!(safe_filename(&a.name), "plan.pdf");
    }

    #[test]
    fn html_becomes_text_with_its_characters_decoded() {
        let html = "<html><head><title>t</title><style>p{x:y}</style></head><body>\
            <p>Hello&nbsp;<b>Bob</b> &amp; &lt;Ann&gt; &quot;q&quot; &#39;s&#39;</p>\
            <div>caf&eacute; &#x65E5;&#26412; Привет 🎉<br>next</div>\
            <script>if (a < b) { document.write('<p>no</p>') }</script>\
            <p>5 &lt; 6 &amp;&amp; 7 &gt; 2</p>&amp;lt; stays one level</body></html>";
        assert_eq!(
            html_to_text(html),
            "Hello Bob & <Ann> \"q\" 's'\ncafé 日本 Привет 🎉\nnext\n5 < 6 && 7 > 2\n&lt; stays one level"
        );
        assert_eq!(html_to_text(""), "");
        assert_eq!(html_to_text("ab日"), "ab日");
    }

    #[test]
    fn a_plain_message_has_no_html() {
        let p = parse(b"Subject: hi\r\n\r\njust text\r\n");
        assert!(p.html.is_none());
        assert_eq!(p.text.as_deref().map(str::trim), Some("just text"));
    }

    #[test]
    fn downloads_never_get_an_active_type_or_a_bad_name() {
        assert_eq!(safe_content_type("text/html"), "application/octet-stream");
        assert_eq!(
            safe_content_type("image/svg+xml"),
            "application/octet-stream"
        );
        assert_eq!(safe_content_type("IMAGE/PNG"), "image/png");
        assert_eq!(safe_filename("..\\x/.bashrc"), "bashrc");
        assert_eq!(safe_filename("a\"b\r\nc.txt"), "a_bc.txt");
        assert_eq!(safe_filename(""), "attachment");
        let cd = content_disposition("résumé \"x\".pdf");
        assert!(
            cd.starts_with("attachment; filename=\"r_sum_ _x_.pdf\""),
            "{cd}"
        );
        assert!(cd.contains("filename*=UTF-8''r%C3%A9sum%C3%A9"), "{cd}");
    }

    #[test]
    fn names_and_summaries_in_any_script_keep_whole_characters() {
        for s in crate::text::tests::WORLD {
            let safe = safe_filename(&format!("dir/{s}.pdf"));
            assert_eq!(safe, format!("{s}.pdf").replace('?', "_"));
            let cd = content_disposition(&format!("{s}.pdf"));
            let encoded =
                percent_encoding::utf8_percent_encode(&safe, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            assert!(
                cd.ends_with(&format!("; filename*=UTF-8''{encoded}")),
                "{cd}"
            );
            assert!(cd.is_ascii(), "{cd}");
        }
        // Long names and fields are cut on characters.
        let long: String = "日本語".repeat(100);
        assert_eq!(safe_filename(&long).chars().count(), 150);
        let raw = format!(
            "From: =?UTF-8?B?0JjQstCw0L0=?= <ivan@remote.test>\r\nSubject: =?UTF-8?B?5pel5pys6Kqe?=\r\n\r\n{}\r\n",
            "ё".repeat(500)
        );
        let s = summarize(raw.as_bytes());
        assert_eq!(s.subject, "日本語");
        assert_eq!(s.from, "Иван <ivan@remote.test>");
        assert_eq!(s.preview, "ё".repeat(message::PREVIEW_CHARS));
    }

    #[test]
    fn dates_and_sizes_read_naturally() {
        let day = 86_400_000;
        let t = 1_795_000_000_000; // 2026-11-18 ...
        assert_eq!(short_date(t, t + 1000).len(), 5);
        assert_eq!(short_date(t, t + 2 * day), "Nov 18");
        assert_eq!(short_date(t, t + 400 * day), "2026-11-18");
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(2048), "2 KB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MB");
    }

    #[test]
    fn a_summary_of_a_sent_message() {
        let s = summarize(MIXED);
        assert_eq!(s.subject, "plans");
        assert_eq!(s.preview, "Hello Bob");
        assert_eq!(s.attachments.len(), 1);
    }
}
