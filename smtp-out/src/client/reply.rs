//! Replies as the server sends them: lines read with a length bound, a reply of at most so
//! many lines, each checked before it is used, and the extensions an EHLO reply offers.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest reply line accepted, with its line ending. RFC 5321 allows 512; servers that
/// send longer lines exist, but a line longer than this is not a reply any server means.
pub const MAX_REPLY_LINE: usize = 4096;

/// The most lines one reply may have. An EHLO reply with every extension in use is under 30.
pub const MAX_REPLY_LINES: usize = 100;

/// The read buffer: room for the longest line and then some, so that a reply line is always
/// found whole in it.
const READ_BUF: usize = 2 * MAX_REPLY_LINE;

/// A reply from the server, or one made up here for what could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (RFC 3463) from the start of the text, when there is one of the
    /// code's class.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text of the reply's lines, joined with `\n`, without the code and the enhanced code,
    /// with control characters replaced and any invalid UTF-8 shown as U+FFFD.
    pub text: String,
}

impl Reply {
    /// A reply made up here, for a refusal that happened before the server was asked.
    pub(super) fn local(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: the server waits for more (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: refused for now; the same command may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: refused for good; sending the same again will not succeed.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Parses one reply from its lines, each without its line ending.
    fn parse(lines: &[Vec<u8>]) -> Result<Reply, String> {
        let mut code = None;
        let mut texts = Vec::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            let last = n + 1 == lines.len();
            let (this, more, text) = parse_line(line)?;
            match code {
                None => code = Some(this),
                Some(c) if c != this => {
                    return Err(format!(
                        "a reply's lines have different codes ({c} and {this})"
                    ))
                }
                Some(_) => {}
            }
            if more == last {
                return Err(if last {
                    "a reply's last line is marked as continued".to_string()
                } else {
                    "a reply line is marked as the last but more follow".to_string()
                });
            }
            texts.push(text);
        }
        let code = code.ok_or("an empty reply")?;
        let enhanced = texts.first().and_then(|t| enhanced_code(t, code));
        let texts: Vec<String> = texts
            .iter()
            .map(|t| {
                let t = match enhanced {
                    Some(e) if enhanced_code(t, code) == Some(e) => skip_enhanced(t),
                    _ => t,
                };
                display_text(t)
            })
            .collect();
        Ok(Reply {
            code,
            enhanced,
            text: texts.join("\n"),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some((class, subject, detail)) = self.enhanced {
            write!(f, " {class}.{subject}.{detail}")?;
        }
        for (n, line) in self.text.split('\n').enumerate() {
            if n == 0 {
                if !line.is_empty() {
                    write!(f, " {line}")?;
                }
            } else {
                write!(f, " / {line}")?;
            }
        }
        Ok(())
    }
}

/// A reply line's code, whether more lines follow, and its text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, &[u8]), String> {
    let digits = line.get(..3).unwrap_or(line);
    if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "a reply line does not start with a code: {:?}",
            display_text(&line[..line.len().min(40)])
        ));
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(200..600).contains(&code) {
        return Err(format!("a reply has the code {code}, outside 200 to 599"));
    }
    match line.get(3) {
        None => Ok((code, false, &[])),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(format!(
            "a reply line has neither a space nor a dash after its code: {:?}",
            display_text(&line[..line.len().min(40)])
        )),
    }
}

/// The enhanced status code at the start of `text`, when it is well formed and of the reply
/// code's class (RFC 3463 §2: class.subject.detail, subject and detail of one to three digits).
fn enhanced_code(text: &[u8], code: u16) -> Option<(u8, u16, u16)> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let mut parts = text[..end].split(|&b| b == b'.');
    let number = |part: Option<&[u8]>| -> Option<u16> {
        let part = part?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
    };
    let class = number(parts.next())?;
    let subject = number(parts.next())?;
    let detail = number(parts.next())?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || class != code / 100 {
        return None;
    }
    Some((class as u8, subject, detail))
}

/// `text` without its leading enhanced status code and the space after it.
fn skip_enhanced(text: &[u8]) -> &[u8] {
    match text.iter().position(|&b| b == b' ') {
        Some(p) => &text[p + 1..],
        None => &[],
    }
}

/// Text from the server made safe to show and log: invalid UTF-8 becomes U+FFFD and control
/// characters become spaces, so a reply cannot forge log lines.
fn display_text(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The extensions a server offers in its EHLO reply (none after HELO).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920): the envelope may go in one write.
    pub pipelining: bool,
    /// SIZE (RFC 1870), with the largest message accepted; `Some(0)` when the server offers
    /// SIZE without a limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// AUTH (RFC 4954): the SASL mechanisms offered, upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    /// The extensions in an EHLO reply: every line after the first names one, keywords in any
    /// case. Unknown keywords are ignored, and so is a SIZE whose limit is not a number.
    pub fn parse(ehlo: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in ehlo.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "AUTH" => ext
                    .auth
                    .extend(words.by_ref().map(|m| m.to_ascii_uppercase())),
                "SIZE" => match words.next().map(str::parse::<u64>) {
                    None => ext.size = Some(0),
                    Some(Ok(n)) => ext.size = Some(n),
                    Some(Err(_)) => {}
                },
                _ => {}
            }
        }
        ext
    }

    /// The largest message the server accepts, when it says.
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

/// What reading one line failed on.
#[derive(Debug)]
pub(super) enum ReadFail {
    Closed,
    Io(std::io::Error),
    Protocol(String),
}

/// The stream and what has been read from it but not yet used.
pub(super) struct Conn<S> {
    pub(super) io: S,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    pub(super) fn new(io: S) -> Conn<S> {
        Conn {
            io,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Whether the server has sent anything not yet read as a reply.
    pub(super) fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// One line, without its line ending (CRLF, or a bare LF from a lax server).
    async fn read_line(&mut self) -> Result<Vec<u8>, ReadFail> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(p) = pending.iter().position(|&b| b == b'\n') {
                if p + 1 > MAX_REPLY_LINE {
                    return Err(ReadFail::Protocol(format!(
                        "a reply line is longer than {MAX_REPLY_LINE} bytes"
                    )));
                }
                let mut line = pending[..p].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start += p + 1;
                return Ok(line);
            }
            if pending.len() >= MAX_REPLY_LINE {
                return Err(ReadFail::Protocol(format!(
                    "a reply line is longer than {MAX_REPLY_LINE} bytes"
                )));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self
                .io
                .read(&mut self.buf[self.end..])
                .await
                .map_err(ReadFail::Io)?;
            if n == 0 {
                return Err(ReadFail::Closed);
            }
            self.end += n;
        }
    }

    /// One whole reply, of one line or many.
    pub(super) async fn read_reply(&mut self) -> Result<Reply, ReadFail> {
        let mut lines = Vec::new();
        loop {
            if lines.len() == MAX_REPLY_LINES {
                return Err(ReadFail::Protocol(format!(
                    "a reply has more than {MAX_REPLY_LINES} lines"
                )));
            }
            let line = self.read_line().await?;
            // A line is the last when nothing or a space follows its code; anything malformed
            // ends the reply here and is reported by the parser.
            let last = line.get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        Reply::parse(&lines).map_err(ReadFail::Protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads one reply from `bytes` followed by the end of the stream.
    async fn read_one(bytes: &[u8]) -> Result<Reply, ReadFail> {
        let (mut server, client) = tokio::io::duplex(bytes.len() + 1);
        server.write_all(bytes).await.expect("write");
        drop(server);
        let mut conn = Conn::new(client);
        conn.read_reply().await
    }

    #[tokio::test]
    async fn replies_parse() {
        let r = read_one(b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, Some((2, 0, 0)));
        assert_eq!(r.text, "first\nsecond\nthird");
        assert_eq!(r.to_string(), "250 2.0.0 first / second / third");
        assert!(r.is_positive() && !r.is_permanent());

        let r = read_one(b"550 5.1.1 <x@mx.test>: no such user\r\n")
            .await
            .unwrap();
        assert_eq!(r.enhanced, Some((5, 1, 1)));
        assert_eq!(r.text, "<x@mx.test>: no such user");
        assert!(r.is_permanent());

        // An enhanced code of another class than the reply code is just text.
        let r = read_one(b"451 5.1.1 odd\r\n").await.unwrap();
        assert_eq!((r.enhanced, r.text.as_str()), (None, "5.1.1 odd"));
        assert!(r.is_transient());
        let r = read_one(b"250 2.0.0.1 odd\r\n").await.unwrap();
        assert_eq!(r.enhanced, None);
        let r = read_one(b"250 2.1000.0 odd\r\n").await.unwrap();
        assert_eq!(r.enhanced, None);

        let r = read_one(b"250\r\n").await.unwrap();
        assert_eq!((r.code, r.text.as_str()), (250, ""));
        assert_eq!(r.to_string(), "250");
        // A lax server's bare LF ends a line too.
        let r = read_one(b"354 go ahead\n").await.unwrap();
        assert!(r.is_intermediate());
    }

    #[tokio::test]
    async fn reply_text_is_safe_to_show() {
        let r = read_one(b"550 caf\xc3 \xe9t\xc3\xa9 \x1b[31mred\r\n")
            .await
            .unwrap();
        assert_eq!(r.text, "caf\u{FFFD} \u{FFFD}t\u{e9}  [31mred");
        // An error about a malformed line quotes its start without splitting a character.
        let line = format!("{}\r\n", "é".repeat(100));
        let e = read_one(line.as_bytes()).await.unwrap_err();
        assert!(matches!(e, ReadFail::Protocol(_)), "{e:?}");
    }

    #[tokio::test]
    async fn malformed_replies_are_protocol_errors() {
        let long = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        let endless = "x".repeat(3 * MAX_REPLY_LINE);
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES) + "250 x\r\n";
        let cases: Vec<&[u8]> = vec![
            long.as_bytes(),
            endless.as_bytes(),
            many.as_bytes(),
            b"250-a\r\n251 b\r\n",
            b"25x ok\r\n",
            b"250_ok\r\n",
            b"hello\r\n",
            b"\r\n",
            b"199 x\r\n",
            b"600 x\r\n",
        ];
        for bytes in cases {
            let e = read_one(bytes).await.unwrap_err();
            assert!(
                matches!(e, ReadFail::Protocol(_)),
                "{:?}: {e:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(20)])
            );
        }
        // A line of exactly the limit is fine.
        let exact = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE - 6));
        assert!(read_one(exact.as_bytes()).await.is_ok());
        let exact = "250-x\r\n".repeat(MAX_REPLY_LINES - 1) + "250 x\r\n";
        assert!(read_one(exact.as_bytes()).await.is_ok());
        // The end of the stream in the middle of a reply is a closed connection.
        let e = read_one(b"250-a\r\n").await.unwrap_err();
        assert!(matches!(e, ReadFail::Closed), "{e:?}");
    }

    #[test]
    fn extensions_parse() {
        let reply = |text: &str| Reply {
            code: 250,
            enhanced: None,
            text: text.to_string(),
        };
        let ext = Extensions::parse(&reply(
            "mx.test greets you\npipelining\nSize 35882577\n8BITMIME\nSMTPUTF8\nSTARTTLS\nENHANCEDSTATUSCODES\nAUTH PLAIN LOGIN\nX-UNKNOWN",
        ));
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                size: Some(35882577),
                eight_bit_mime: true,
                smtputf8: true,
                starttls: true,
                enhanced_status_codes: true,
                auth: vec!["PLAIN".into(), "LOGIN".into()],
            }
        );
        assert_eq!(ext.size_limit(), Some(35882577));
        // The greeting line names no extension, whatever it says.
        assert_eq!(
            Extensions::parse(&reply("PIPELINING")),
            Extensions::default()
        );
        let ext = Extensions::parse(&reply("mx.test\nSIZE"));
        assert_eq!((ext.size, ext.size_limit()), (Some(0), None));
        let ext = Extensions::parse(&reply("mx.test\nSIZE 0"));
        assert_eq!((ext.size, ext.size_limit()), (Some(0), None));
        assert_eq!(Extensions::parse(&reply("mx.test\nSIZE lots")).size, None);
    }
}
