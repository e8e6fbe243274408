//! An SMTP client session (RFC 5321) over any byte stream: TCP, or TLS over TCP after
//! STARTTLS (RFC 3207).
//!
//! A session reads the greeting, says EHLO (HELO when the server refuses EHLO), and then sends
//! one message after another with [`Client::send`], each to many recipients. It pipelines the
//! envelope when the server offers PIPELINING (RFC 2920), declares the size when it offers SIZE
//! (RFC 1870), and marks 8-bit bodies and non-ASCII addresses (RFC 6152, RFC 6531). What cannot
//! be sent as it is (too big, 8-bit to a 7-bit server, a non-ASCII address to a server without
//! SMTPUTF8) fails before anything is sent, with a reply made up here in the form the server
//! would have used.
//!
//! Every wait has a deadline ([`Timeouts`], RFC 5321 §4.5.3.2), every reply line a length bound
//! and every reply a line bound, and whatever the server sends is checked before it is used: a
//! malformed reply is a protocol error, never a panic. After a timeout, a lost connection or a
//! protocol error the session cannot be trusted to be in step with the server and refuses
//! further use ([`Error::Broken`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::wire;

/// The longest reply line accepted, with its line ending. RFC 5321 allows 512; servers that
/// send longer lines exist, but a line longer than this is not a reply any server means.
pub const MAX_REPLY_LINE: usize = 4096;

/// The most lines one reply may have. An EHLO reply with every extension in use is under 30.
pub const MAX_REPLY_LINES: usize = 100;

/// How much of the message data is written under one data-block deadline.
const DATA_BLOCK: usize = 64 * 1024;

/// The read buffer: room for the longest line and then some, so that a reply line is always
/// found whole in it.
const READ_BUF: usize = 2 * MAX_REPLY_LINE;

/// How long each step may wait for the server. The defaults are the minimums of RFC 5321
/// §4.5.3.2; tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting.
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, RSET and QUIT: writing the command and reading its reply.
    pub command: Duration,
    /// The TLS handshake after STARTTLS.
    pub tls_handshake: Duration,
    /// MAIL FROM (and, when pipelining, the whole envelope's write).
    pub mail: Duration,
    /// Each RCPT TO.
    pub rcpt: Duration,
    /// The reply to DATA.
    pub data: Duration,
    /// Writing each block of the message data.
    pub data_block: Duration,
    /// The reply after the end of the data, which may come only once the server has stored the
    /// message, so it gets the longest time.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let min = |m: u64| Duration::from_secs(m * 60);
        Timeouts {
            greeting: min(5),
            command: min(5),
            tls_handshake: min(2),
            mail: min(5),
            rcpt: min(5),
            data: min(2),
            data_block: min(3),
            data_end: min(10),
        }
    }
}

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
    fn local(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
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

/// What the session was doing when something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    MailFrom,
    RcptTo,
    Data,
    DataBlock,
    DataEnd,
    Rset,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "the greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "the TLS handshake",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataBlock => "the message data",
            Stage::DataEnd => "the end of the data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// Why a session step failed. [`Error::is_permanent`] tells a failure that will not go away
/// (the message should bounce) from one worth retrying later, perhaps at another host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused: a greeting other than 220, a refusal of EHLO and HELO, STARTTLS,
    /// MAIL FROM or RSET, or a 421 at any step (the server is closing the connection, and the
    /// session is unusable after it). Permanent when the reply is 5xx.
    #[error("the server answered {stage} with {reply}")]
    Reply { stage: Stage, reply: Reply },
    /// The message cannot be sent to this server as it is, found before anything was sent;
    /// the reply is made up here in the form a server would use. Always permanent.
    #[error("the message was not sent: {0}")]
    Unsendable(Reply),
    /// The server did not answer, or did not take what was written, in time.
    #[error("timed out at {stage}")]
    Timeout { stage: Stage },
    /// The server closed the connection.
    #[error("the server closed the connection at {stage}")]
    Closed { stage: Stage },
    /// Reading or writing failed.
    #[error("i/o error at {stage}: {source}")]
    Io {
        stage: Stage,
        #[source]
        source: std::io::Error,
    },
    /// The server sent something that is not SMTP.
    #[error("protocol error at {stage}: {detail}")]
    Protocol { stage: Stage, detail: String },
    /// STARTTLS could not be used: not offered, or the handshake failed (including a
    /// certificate the connector does not accept).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The name to say in EHLO is not a domain or address literal this client can send.
    #[error("{0:?} cannot be sent as the EHLO name")]
    BadHelloName(String),
    /// An earlier timeout, lost connection or protocol error left the session out of step with
    /// the server; only a new connection can go on.
    #[error("the connection is unusable after an earlier error")]
    Broken,
}

impl Error {
    /// Whether the failure is for good: a 5xx reply, or a message this server cannot take.
    /// Everything else (4xx, timeouts, lost connections, TLS and protocol failures, and a
    /// misconfigured EHLO name, which is no fault of the message) is worth retrying later.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Reply { reply, .. } => reply.is_permanent(),
            Error::Unsendable(_) => true,
            _ => false,
        }
    }

    /// The reply behind the failure, the server's or a made-up one, for a bounce message.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Error::Reply { reply, .. } | Error::Unsendable(reply) => Some(reply),
            _ => None,
        }
    }

    /// Whether the session can no longer be trusted to be in step with the server.
    fn breaks_session(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Closed { .. }
                | Error::Io { .. }
                | Error::Protocol { .. }
                | Error::Broken
        )
    }
}

/// What became of one recipient at RCPT TO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptStatus {
    /// The server accepted the recipient (its 2xx reply).
    Accepted(Reply),
    /// The server refused the recipient, or the address could not be sent to this server (a
    /// made-up reply).
    Refused(Reply),
}

/// What became of one recipient in the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The server took responsibility for the message for this recipient.
    Delivered(&'a Reply),
    /// The recipient or the message was refused; the reply tells whether for good.
    Failed(&'a Reply),
}

/// The result of one transaction whose envelope the server took (MAIL FROM accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// One status per recipient, in the order given.
    pub rcpts: Vec<RcptStatus>,
    /// The reply that decided the accepted recipients' fate: the reply after the data, or the
    /// refusal of DATA itself. `None` exactly when no recipient was accepted, and then no data
    /// was sent.
    pub data: Option<Reply>,
}

impl Sent {
    /// What became of the recipient at `index`.
    pub fn outcome(&self, index: usize) -> Option<Outcome<'_>> {
        Some(match (self.rcpts.get(index)?, &self.data) {
            (RcptStatus::Refused(r), _) => Outcome::Failed(r),
            (RcptStatus::Accepted(_), Some(d)) if d.is_positive() => Outcome::Delivered(d),
            (RcptStatus::Accepted(_), Some(d)) => Outcome::Failed(d),
            // Not made by a session: data is always set when a recipient was accepted.
            (RcptStatus::Accepted(r), None) => Outcome::Failed(r),
        })
    }

    /// What became of every recipient, in the order given.
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome<'_>> {
        (0..self.rcpts.len()).filter_map(|i| self.outcome(i))
    }
}

/// Whether a session may start a transaction as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No transaction is open.
    Ready,
    /// The server may hold an unfinished transaction; RSET comes first.
    NeedsReset,
    /// Out of step with the server.
    Broken,
}

/// What reading one line failed on.
enum ReadFail {
    Closed,
    Io(std::io::Error),
    Protocol(String),
}

/// The stream and what has been read from it but not yet used.
struct Conn<S> {
    io: S,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Conn<S> {
        Conn {
            io,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Whether the server has sent anything not yet read as a reply.
    fn has_buffered(&self) -> bool {
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
    async fn read_reply(&mut self) -> Result<Reply, ReadFail> {
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

/// An SMTP session with one server, ready for transactions.
pub struct Client<S> {
    conn: Conn<S>,
    name: String,
    timeouts: Timeouts,
    greeting: Reply,
    hello: Reply,
    extensions: Extensions,
    state: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// Opens a session on `stream`: reads the greeting and says EHLO `name` (HELO if the
    /// server refuses EHLO with 5xx). `name` is this host's domain name, or an address literal
    /// such as `[192.0.2.1]`.
    ///
    /// A greeting other than 220 is the server's answer for the whole connection and comes
    /// back as [`Error::Reply`]; the caller closes the connection.
    pub async fn connect(stream: S, name: &str, timeouts: Timeouts) -> Result<Client<S>, Error> {
        if name.is_empty()
            || name.len() > 255
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
        {
            return Err(Error::BadHelloName(name.to_string()));
        }
        let mut conn = Conn::new(stream);
        let greeting = read_reply(&mut conn, timeouts.greeting, Stage::Greeting).await?;
        if greeting.code != 220 {
            return Err(Error::Reply {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        let mut client = Client {
            conn,
            name: name.to_string(),
            timeouts,
            hello: greeting.clone(),
            greeting,
            extensions: Extensions::default(),
            state: State::Ready,
        };
        client.hello().await?;
        Ok(client)
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The server's reply to the last EHLO (or HELO).
    pub fn hello_reply(&self) -> &Reply {
        &self.hello
    }

    /// The extensions the server offered in its last EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Whether an earlier error left the session unusable.
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// EHLO, falling back to HELO on a 5xx refusal (RFC 5321 §3.2), and the extensions offered.
    async fn hello(&mut self) -> Result<(), Error> {
        let line = format!("EHLO {}\r\n", self.name);
        let reply = self
            .command(line.as_bytes(), self.timeouts.command, Stage::Ehlo)
            .await?;
        if reply.is_positive() {
            self.extensions = Extensions::parse(&reply);
            self.hello = reply;
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(Error::Reply {
                stage: Stage::Ehlo,
                reply,
            });
        }
        let line = format!("HELO {}\r\n", self.name);
        let reply = self
            .command(line.as_bytes(), self.timeouts.command, Stage::Helo)
            .await?;
        if !reply.is_positive() {
            return Err(Error::Reply {
                stage: Stage::Helo,
                reply,
            });
        }
        self.extensions = Extensions::default();
        self.hello = reply;
        Ok(())
    }

    /// Upgrades the session to TLS (RFC 3207): STARTTLS, the handshake with `connector` for
    /// `server_name`, and EHLO again, whose extensions replace those offered in the clear.
    ///
    /// The connector decides what certificate is good enough: [`verifying_connector`] where a
    /// policy (MTA-STS, or a configured smarthost) requires a valid certificate, and
    /// [`opportunistic_connector`] otherwise.
    ///
    /// Anything the server sent after its 220 to STARTTLS and before the handshake is refused
    /// as a protocol error: it would otherwise be read as if it came over TLS (response
    /// injection).
    pub async fn starttls(
        mut self,
        connector: &TlsConnector,
        server_name: ServerName<'static>,
    ) -> Result<Client<TlsStream<S>>, Error> {
        self.usable()?;
        if !self.extensions.starttls {
            return Err(Error::Tls("the server does not offer STARTTLS".to_string()));
        }
        let reply = self
            .command(b"STARTTLS\r\n", self.timeouts.command, Stage::StartTls)
            .await?;
        if reply.code != 220 {
            return Err(Error::Reply {
                stage: Stage::StartTls,
                reply,
            });
        }
        if self.conn.has_buffered() {
            return Err(Error::Protocol {
                stage: Stage::StartTls,
                detail: "the server sent more after its reply to STARTTLS, before TLS began"
                    .to_string(),
            });
        }
        let handshake = connector.connect(server_name, self.conn.io);
        let tls = match tokio::time::timeout(self.timeouts.tls_handshake, handshake).await {
            Err(_) => {
                return Err(Error::Timeout {
                    stage: Stage::TlsHandshake,
                })
            }
            Ok(Err(e)) => return Err(Error::Tls(e.to_string())),
            Ok(Ok(tls)) => tls,
        };
        let mut client = Client {
            conn: Conn::new(tls),
            name: self.name,
            timeouts: self.timeouts,
            greeting: self.greeting,
            hello: self.hello,
            extensions: Extensions::default(),
            state: State::Ready,
        };
        client.hello().await?;
        Ok(client)
    }

    /// Sends one message from `from` (empty for the null reverse-path of a bounce) to `rcpts`.
    ///
    /// Before anything is sent, the message is checked against what the server offered, and
    /// fails permanently with [`Error::Unsendable`] when:
    /// - it is larger than the server's SIZE (552 5.3.4);
    /// - its body has 8-bit bytes and the server does not offer 8BITMIME (554 5.6.3, conversion
    ///   required): RFC 6152 §3 leaves the client the choice between converting the message
    ///   to 7 bits and returning it as undeliverable, and converting would break its DKIM
    ///   signatures;
    /// - the sender address is not ASCII and the server does not offer SMTPUTF8 (553 5.6.7,
    ///   RFC 6531 §3.2).
    ///
    /// A recipient whose address is not ASCII when the server does not offer SMTPUTF8, or that
    /// cannot be written in a command at all, is refused here with a made-up reply and the rest
    /// go ahead.
    ///
    /// With PIPELINING, MAIL FROM, every RCPT TO and DATA go in one write and the replies are
    /// read after (RFC 2920); without it each command waits for its reply. When no recipient is
    /// accepted no data is sent; if a pipelined DATA got 354 anyway, the data is ended at once
    /// with a lone `.`, so the server stores nothing and the session stays in step.
    ///
    /// `Ok` carries what became of each recipient. `Err` means the whole message failed: MAIL
    /// FROM refused, the checks above, a 421, or a lost or broken session (temporary; the message may
    /// or may not have been taken if the connection was lost after the data). A session whose
    /// transaction did not end cleanly sends RSET before the next one.
    pub async fn send(&mut self, from: &str, rcpts: &[String], body: &[u8]) -> Result<Sent, Error> {
        self.usable()?;
        if !sendable_address(from) {
            return Err(Error::Unsendable(Reply::local(
                553,
                (5, 1, 7),
                "the sender address has characters that cannot be sent in SMTP",
            )));
        }
        let payload = wire::data_bytes(body);
        let size = wire::declared_size(&payload);
        let ext = &self.extensions;
        if let Some(limit) = ext.size_limit() {
            if size > limit {
                return Err(Error::Unsendable(Reply::local(
                    552,
                    (5, 3, 4),
                    format!(
                        "the message is {size} bytes, more than the {limit} the server accepts"
                    ),
                )));
            }
        }
        let eight_bit = wire::has_8bit(body);
        if eight_bit && !ext.eight_bit_mime {
            return Err(Error::Unsendable(Reply::local(
                554,
                (5, 6, 3),
                "conversion required: the message has 8-bit data and the server does not offer 8BITMIME",
            )));
        }
        if !from.is_ascii() && !ext.smtputf8 {
            return Err(Error::Unsendable(Reply::local(
                553,
                (5, 6, 7),
                "the sender address is not ASCII and the server does not offer SMTPUTF8",
            )));
        }

        // Recipients refused here keep their place; the rest are asked for.
        let mut status: Vec<Option<RcptStatus>> = rcpts
            .iter()
            .map(|r| {
                if r.is_empty() || !sendable_address(r) {
                    Some(RcptStatus::Refused(Reply::local(
                        553,
                        (5, 1, 3),
                        "the recipient address has characters that cannot be sent in SMTP",
                    )))
                } else if !r.is_ascii() && !ext.smtputf8 {
                    Some(RcptStatus::Refused(Reply::local(
                        553,
                        (5, 6, 7),
                        "the recipient address is not ASCII and the server does not offer SMTPUTF8",
                    )))
                } else {
                    None
                }
            })
            .collect();
        let asked: Vec<usize> = (0..rcpts.len()).filter(|&i| status[i].is_none()).collect();
        if asked.is_empty() {
            return Ok(Sent {
                rcpts: status.into_iter().flatten().collect(),
                data: None,
            });
        }
        let utf8 = !from.is_ascii() || asked.iter().any(|&i| !rcpts[i].is_ascii());

        let mut mail = format!("MAIL FROM:<{from}>");
        if ext.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = asked
            .iter()
            .map(|&i| format!("RCPT TO:<{}>\r\n", rcpts[i]))
            .collect();

        if self.state == State::NeedsReset {
            self.reset().await?;
        }
        let data_reply = if self.extensions.pipelining {
            let mut batch = mail.into_bytes();
            for line in &rcpt_lines {
                batch.extend_from_slice(line.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch, self.timeouts.mail, Stage::MailFrom)
                .await?;
            self.state = State::NeedsReset;
            let mail = self.reply(self.timeouts.mail, Stage::MailFrom).await?;
            for &i in &asked {
                let reply = self.reply(self.timeouts.rcpt, Stage::RcptTo).await?;
                status[i] = Some(rcpt_status(reply));
            }
            let data = self.reply(self.timeouts.data, Stage::Data).await?;
            let accepted = mail.is_positive() && any_accepted(&status);
            if !accepted && data.is_intermediate() {
                self.end_empty_data().await?;
            }
            if !mail.is_positive() {
                return Err(Error::Reply {
                    stage: Stage::MailFrom,
                    reply: mail,
                });
            }
            accepted.then_some(data)
        } else {
            let mail = self
                .command(mail.as_bytes(), self.timeouts.mail, Stage::MailFrom)
                .await?;
            if !mail.is_positive() {
                return Err(Error::Reply {
                    stage: Stage::MailFrom,
                    reply: mail,
                });
            }
            self.state = State::NeedsReset;
            for (&i, line) in asked.iter().zip(&rcpt_lines) {
                let reply = self
                    .command(line.as_bytes(), self.timeouts.rcpt, Stage::RcptTo)
                    .await?;
                status[i] = Some(rcpt_status(reply));
            }
            if !any_accepted(&status) {
                None
            } else {
                Some(
                    self.command(b"DATA\r\n", self.timeouts.data, Stage::Data)
                        .await?,
                )
            }
        };
        let rcpts: Vec<RcptStatus> = status.into_iter().flatten().collect();
        let data = match data_reply {
            None => None,
            Some(reply) if !reply.is_intermediate() => Some(reply),
            Some(_) => Some(self.send_data(&payload).await?),
        };
        Ok(Sent { rcpts, data })
    }

    /// Ends any transaction the server holds (RSET), so the connection can carry the next
    /// message.
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.usable()?;
        let reply = self
            .command(b"RSET\r\n", self.timeouts.command, Stage::Rset)
            .await?;
        if !reply.is_positive() {
            return Err(Error::Reply {
                stage: Stage::Rset,
                reply,
            });
        }
        self.state = State::Ready;
        Ok(())
    }

    /// Ends the session politely: QUIT, its reply (whatever it says), and the stream shut down.
    pub async fn quit(mut self) -> Result<(), Error> {
        self.usable()?;
        self.command(b"QUIT\r\n", self.timeouts.command, Stage::Quit)
            .await?;
        // The server closes its side after replying; how our side's close goes does not matter.
        let _ = tokio::time::timeout(self.timeouts.command, self.conn.io.shutdown()).await;
        Ok(())
    }

    /// Fails at once when the session is out of step with the server.
    fn usable(&self) -> Result<(), Error> {
        if self.state == State::Broken {
            Err(Error::Broken)
        } else {
            Ok(())
        }
    }

    /// Marks the session broken when `e` leaves it out of step, and passes `e` on.
    fn fail(&mut self, e: Error) -> Error {
        if e.breaks_session() {
            self.state = State::Broken;
        }
        e
    }

    /// Writes `bytes` in full within `limit`.
    async fn write(&mut self, bytes: &[u8], limit: Duration, stage: Stage) -> Result<(), Error> {
        let io = &mut self.conn.io;
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        let result = match tokio::time::timeout(limit, write).await {
            Err(_) => Err(Error::Timeout { stage }),
            Ok(Err(e)) => Err(io_error(e, stage)),
            Ok(Ok(())) => Ok(()),
        };
        result.map_err(|e| self.fail(e))
    }

    /// Reads one reply within `limit`. A 421 is the server closing the connection (RFC 5321
    /// §3.8), whatever the command: it fails the step, and the session with it.
    async fn reply(&mut self, limit: Duration, stage: Stage) -> Result<Reply, Error> {
        let reply = read_reply(&mut self.conn, limit, stage)
            .await
            .map_err(|e| self.fail(e))?;
        if reply.code == 421 {
            self.state = State::Broken;
            return Err(Error::Reply { stage, reply });
        }
        Ok(reply)
    }

    /// Writes one command and reads its reply, each within `limit`.
    async fn command(
        &mut self,
        line: &[u8],
        limit: Duration,
        stage: Stage,
    ) -> Result<Reply, Error> {
        self.write(line, limit, stage).await?;
        self.reply(limit, stage).await
    }

    /// Writes the data payload, block by block, and reads the reply after it.
    async fn send_data(&mut self, payload: &[u8]) -> Result<Reply, Error> {
        for block in payload.chunks(DATA_BLOCK) {
            self.write(block, self.timeouts.data_block, Stage::DataBlock)
                .await?;
        }
        let reply = self.reply(self.timeouts.data_end, Stage::DataEnd).await?;
        // The end of the data ends the transaction; a refusal leaves it to RSET to be sure.
        self.state = if reply.is_positive() {
            State::Ready
        } else {
            State::NeedsReset
        };
        Ok(reply)
    }

    /// Ends data the server is waiting for although no recipient was accepted: a lone `.`, and
    /// its reply, which can only be a refusal since there is no one to deliver to.
    async fn end_empty_data(&mut self) -> Result<(), Error> {
        self.write(b".\r\n", self.timeouts.data_block, Stage::DataBlock)
            .await?;
        self.reply(self.timeouts.data_end, Stage::DataEnd).await?;
        Ok(())
    }
}

/// Reads one reply within `limit`, with the failure in terms of `stage`.
async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    limit: Duration,
    stage: Stage,
) -> Result<Reply, Error> {
    match tokio::time::timeout(limit, conn.read_reply()).await {
        Err(_) => Err(Error::Timeout { stage }),
        Ok(Err(ReadFail::Closed)) => Err(Error::Closed { stage }),
        Ok(Err(ReadFail::Io(e))) => Err(io_error(e, stage)),
        Ok(Err(ReadFail::Protocol(detail))) => Err(Error::Protocol { stage, detail }),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// An i/o error, a closed connection told apart from the others.
fn io_error(e: std::io::Error, stage: Stage) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => Error::Closed { stage },
        _ => Error::Io { stage, source: e },
    }
}

fn rcpt_status(reply: Reply) -> RcptStatus {
    if reply.is_positive() {
        RcptStatus::Accepted(reply)
    } else {
        RcptStatus::Refused(reply)
    }
}

fn any_accepted(status: &[Option<RcptStatus>]) -> bool {
    status
        .iter()
        .any(|s| matches!(s, Some(RcptStatus::Accepted(_))))
}

/// Whether `address` can go between the angle brackets of MAIL FROM or RCPT TO: no control
/// characters (a CR or LF would end the command and start another) and no angle brackets.
fn sendable_address(address: &str) -> bool {
    !address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
}

/// The ring provider, named rather than taken from the process default so that the choice does
/// not depend on what else is linked in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A connector that accepts only certificates that chain to `roots` and name the server, for
/// hosts whose policy requires TLS with a valid certificate (MTA-STS in enforce mode, a
/// configured smarthost).
pub fn verifying_connector(roots: RootCertStore) -> Result<TlsConnector, rustls::Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connector that accepts any certificate, for opportunistic TLS (RFC 7435) when no MTA-STS
/// policy applies: most MX hosts have certificates that would not verify (self-signed, or not
/// naming the MX), and sending in the clear instead would be worse, so encryption is used
/// without authentication. It protects against passive eavesdropping only. The handshake's
/// signatures are still checked against the certificate's key.
pub fn opportunistic_connector() -> Result<TlsConnector, rustls::Error> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts every server certificate, for opportunistic TLS only.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::ServerConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsAcceptor;

    /// The server end of a test connection, driven by the test's script.
    struct Peer<S> {
        io: BufReader<S>,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
        fn new(io: S) -> Peer<S> {
            Peer {
                io: BufReader::new(io),
            }
        }

        /// The next line from the client, which must end with CRLF, without it.
        async fn line(&mut self) -> String {
            let mut line = Vec::new();
            self.io.read_until(b'\n', &mut line).await.expect("read");
            assert!(line.ends_with(b"\r\n"), "not a CRLF line: {line:?}");
            line.truncate(line.len() - 2);
            String::from_utf8(line).expect("UTF-8 line")
        }

        async fn expect(&mut self, want: &str) {
            assert_eq!(self.line().await, want);
        }

        /// Sends each of the `\n`-separated lines with CRLF, all in one write.
        async fn say(&mut self, lines: &str) {
            let mut out = String::new();
            for line in lines.split('\n') {
                out.push_str(line);
                out.push_str("\r\n");
            }
            self.raw(out.as_bytes()).await;
        }

        async fn raw(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.expect("write");
            self.io.flush().await.expect("flush");
        }

        /// The message data as sent, up to and without the terminating `.<CRLF>`.
        async fn data(&mut self) -> Vec<u8> {
            let mut data = Vec::new();
            loop {
                let mut line = Vec::new();
                let n = self.io.read_until(b'\n', &mut line).await.expect("read");
                assert!(n > 0, "the data ended without its terminator");
                if line == b".\r\n" {
                    return data;
                }
                data.extend_from_slice(&line);
            }
        }

        /// Whatever arrives in one read: everything written at once, when it fits.
        async fn chunk(&mut self) -> Vec<u8> {
            let buf = self.io.fill_buf().await.expect("read").to_vec();
            self.io.consume(buf.len());
            buf
        }

        /// Asserts that the client sends nothing for a while: it is waiting for a reply.
        async fn quiet(&mut self) {
            let wait = tokio::time::timeout(Duration::from_secs(1), self.io.fill_buf()).await;
            assert!(wait.is_err(), "the client sent more before the reply");
        }

        /// Asserts that the client closed the connection without sending anything more.
        async fn closed(&mut self) {
            let mut rest = Vec::new();
            self.io.read_to_end(&mut rest).await.expect("read");
            assert_eq!(String::from_utf8_lossy(&rest), "");
        }

        /// The greeting, EHLO and the given EHLO reply.
        async fn open(&mut self, ehlo: &str) {
            self.say("220 mx.test ESMTP").await;
            self.expect("EHLO client.test").await;
            self.say(ehlo).await;
        }

        async fn quit(&mut self) {
            self.expect("QUIT").await;
            self.say("221 2.0.0 bye").await;
        }
    }

    fn pair() -> (DuplexStream, Peer<DuplexStream>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (client, Peer::new(server))
    }

    fn serve<F>(script: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(script)
    }

    async fn connect(io: DuplexStream) -> Client<DuplexStream> {
        Client::connect(io, "client.test", Timeouts::default())
            .await
            .expect("connect")
    }

    fn to(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const FULL: &str = "250-mx.test\n250-PIPELINING\n250-SIZE 10000\n250-8BITMIME\n250-SMTPUTF8\n250 ENHANCEDSTATUSCODES";
    const PLAIN: &str = "250-mx.test\n250 SIZE";

    /// Reads one reply from `bytes` followed by the end of the stream.
    async fn read_one(bytes: &[u8]) -> Result<Reply, Error> {
        let (mut server, client) = tokio::io::duplex(bytes.len() + 1);
        server.write_all(bytes).await.expect("write");
        drop(server);
        let mut conn = Conn::new(client);
        read_reply(&mut conn, Duration::from_secs(5), Stage::Ehlo).await
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
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
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
                matches!(e, Error::Protocol { .. }),
                "{:?}: {e}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(20)])
            );
            assert!(!e.is_permanent());
            assert!(e.breaks_session());
        }
        // A line of exactly the limit is fine.
        let exact = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE - 6));
        assert!(read_one(exact.as_bytes()).await.is_ok());
        let exact = "250-x\r\n".repeat(MAX_REPLY_LINES - 1) + "250 x\r\n";
        assert!(read_one(exact.as_bytes()).await.is_ok());
        // The end of the stream in the middle of a reply is a closed connection.
        let e = read_one(b"250-a\r\n").await.unwrap_err();
        assert!(matches!(e, Error::Closed { .. }), "{e}");
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

    #[tokio::test]
    async fn greeting_and_ehlo() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.say("220-mx.test ESMTP\n220 welcome").await;
            p.expect("EHLO client.test").await;
            p.say("250-mx.test greets client.test\n250-PIPELINING\n250-SIZE 35882577\n250-8BITMIME\n250-SMTPUTF8\n250-STARTTLS\n250 ENHANCEDSTATUSCODES").await;
            p.quit().await;
        });
        let c = connect(io).await;
        assert_eq!(c.greeting().text, "mx.test ESMTP\nwelcome");
        assert_eq!(
            c.hello_reply().text.lines().next(),
            Some("mx.test greets client.test")
        );
        let ext = c.extensions();
        assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8 && ext.starttls);
        assert!(ext.enhanced_status_codes);
        assert_eq!(ext.size_limit(), Some(35882577));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_greeting_other_than_220_answers_for_the_connection() {
        for (greeting, permanent) in [
            ("554 5.3.2 no service here", true),
            ("421 4.3.2 busy", false),
        ] {
            let (io, mut p) = pair();
            let server = serve(async move {
                p.say(greeting).await;
                p.closed().await;
            });
            let e = Client::connect(io, "client.test", Timeouts::default())
                .await
                .err()
                .expect("refused");
            assert!(
                matches!(
                    e,
                    Error::Reply {
                        stage: Stage::Greeting,
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(e.is_permanent(), permanent, "{e}");
            assert_eq!(e.reply().map(|r| r.code), greeting[..3].parse().ok());
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_over_long_greeting_is_a_protocol_error() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.raw(format!("220 {}\r\n", "x".repeat(10_000)).as_bytes())
                .await;
            p.closed().await;
        });
        let e = Client::connect(io, "client.test", Timeouts::default())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                Error::Protocol {
                    stage: Stage::Greeting,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_permanent());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_hello_name_is_refused_before_connecting() {
        for name in ["", "client.test\r\nMAIL FROM:<x>", "two words"] {
            let (io, _p) = pair();
            let e = Client::connect(io, name, Timeouts::default())
                .await
                .err()
                .expect("refused");
            assert!(matches!(e, Error::BadHelloName(_)), "{e}");
            assert!(!e.is_permanent());
        }
    }

    #[tokio::test]
    async fn helo_when_ehlo_is_refused() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("502 5.5.1 command unrecognized").await;
            p.expect("HELO client.test").await;
            p.say("250 mx.test").await;
            // No extensions: one command at a time, no parameters.
            p.expect("MAIL FROM:<a@client.test>").await;
            p.say("250 ok").await;
            p.expect("RCPT TO:<b@mx.test>").await;
            p.say("250 ok").await;
            p.expect("DATA").await;
            p.say("354 go ahead").await;
            assert_eq!(p.data().await, b"hi\r\n");
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        assert_eq!(c.extensions(), &Extensions::default());
        assert_eq!(c.hello_reply().text, "mx.test");
        let sent = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap();
        assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_temporary_ehlo_refusal_does_not_fall_back() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("421 4.7.0 too many connections").await;
            p.closed().await;
        });
        let e = Client::connect(io, "client.test", Timeouts::default())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                Error::Reply {
                    stage: Stage::Ehlo,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_permanent());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn pipelining_sends_the_envelope_in_one_write() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            // Everything up to DATA is there before any reply is sent.
            let batch = p.chunk().await;
            assert_eq!(
                String::from_utf8_lossy(&batch),
                "MAIL FROM:<a@client.test> SIZE=25\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n"
            );
            p.say("250 2.1.0 ok\n250 2.1.5 ok\n250 2.1.5 ok\n354 go ahead")
                .await;
            assert_eq!(p.data().await, b"..hidden\r\n..\r\nrest\r\nend\r\n");
            p.say("250 2.0.0 queued as 1").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send(
                "a@client.test",
                &to(&["b@mx.test", "c@mx.test"]),
                b".hidden\n.\nrest\r\nend",
            )
            .await
            .unwrap();
        assert_eq!(
            sent.data.as_ref().map(|r| r.text.as_str()),
            Some("queued as 1")
        );
        assert!(sent.outcomes().all(|o| matches!(o, Outcome::Delivered(_))));
        assert_eq!(sent.outcomes().count(), 2);
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_pipelining_each_command_waits_for_its_reply() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(PLAIN).await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            p.quiet().await;
            p.say("250 ok").await;
            p.expect("RCPT TO:<b@mx.test>").await;
            p.quiet().await;
            p.say("250 ok").await;
            p.expect("RCPT TO:<c@mx.test>").await;
            p.quiet().await;
            p.say("550 5.1.1 no such user").await;
            p.expect("DATA").await;
            p.quiet().await;
            p.say("354 go ahead").await;
            assert_eq!(p.data().await, b"hi\r\n");
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send("a@client.test", &to(&["b@mx.test", "c@mx.test"]), b"hi\n")
            .await
            .unwrap();
        assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
        assert!(matches!(sent.outcome(1), Some(Outcome::Failed(r)) if r.code == 550));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn one_recipient_refused_the_others_delivered() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            for rcpt in ["b", "x", "c"] {
                p.expect(&format!("RCPT TO:<{rcpt}@mx.test>")).await;
            }
            p.expect("DATA").await;
            p.say("250 2.1.0 ok\n250 2.1.5 ok\n550-5.1.1 no such user\n550 5.1.1 here\n250 2.1.5 ok\n354 go ahead")
                .await;
            assert_eq!(p.data().await, b"hi\r\n");
            p.say("250 2.0.0 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send(
                "a@client.test",
                &to(&["b@mx.test", "x@mx.test", "c@mx.test"]),
                b"hi",
            )
            .await
            .unwrap();
        assert!(matches!(sent.rcpts[0], RcptStatus::Accepted(_)));
        let RcptStatus::Refused(refusal) = &sent.rcpts[1] else {
            panic!("x@mx.test was accepted: {sent:?}");
        };
        assert_eq!(refusal.code, 550);
        assert_eq!(refusal.enhanced, Some((5, 1, 1)));
        assert_eq!(refusal.text, "no such user\nhere");
        assert!(refusal.is_permanent());
        let outcomes: Vec<bool> = sent
            .outcomes()
            .map(|o| matches!(o, Outcome::Delivered(_)))
            .collect();
        assert_eq!(outcomes, [true, false, true]);
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn all_refused_with_pipelining_sends_no_data() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok\n550 5.1.1 no\n450 4.2.1 later\n554 5.5.1 no valid recipients")
                .await;
            // The session goes on: RSET, then the next message.
            p.expect("RSET").await;
            p.say("250 ok").await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            p.expect("RCPT TO:<c@mx.test>").await;
            p.expect("DATA").await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            assert_eq!(p.data().await, b"hi\r\n");
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send("a@client.test", &to(&["b@mx.test", "x@mx.test"]), b"hi")
            .await
            .unwrap();
        assert_eq!(sent.data, None);
        let codes: Vec<u16> = sent
            .outcomes()
            .map(|o| match o {
                Outcome::Failed(r) => r.code,
                Outcome::Delivered(_) => 0,
            })
            .collect();
        assert_eq!(codes, [550, 450]);
        let sent = c
            .send("a@client.test", &to(&["c@mx.test"]), b"hi")
            .await
            .unwrap();
        assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn all_refused_but_data_accepted_ends_the_data_at_once() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok\n550 5.1.1 no\n354 go ahead anyway").await;
            // Nothing but the end of the data.
            p.expect(".").await;
            p.say("554 5.5.1 no valid recipients").await;
            p.expect("RSET").await;
            p.say("250 ok").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send("a@client.test", &to(&["b@mx.test"]), b"secret")
            .await
            .unwrap();
        assert_eq!(sent.data, None);
        assert!(matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.code == 550));
        c.reset().await.unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn all_refused_without_pipelining_sends_no_data() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(PLAIN).await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            p.say("250 ok").await;
            p.expect("RCPT TO:<b@mx.test>").await;
            p.say("550 5.1.1 no").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let sent = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap();
        assert_eq!(sent.data, None);
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_sender_fails_the_message_and_keeps_the_session() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("550 5.7.1 sender refused\n503 5.5.1 no sender\n503 5.5.1 no recipients")
                .await;
            p.expect("RSET").await;
            p.say("250 ok").await;
            p.chunk().await;
            p.say("451 4.3.0 try later\n503 no sender\n503 no recipients")
                .await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Reply {
                    stage: Stage::MailFrom,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "the server answered MAIL FROM with 550 5.7.1 sender refused"
        );
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(!c.is_broken());
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_server_closing_mid_envelope_fails_the_message_for_now() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok\n421 4.3.2 shutting down").await;
        });
        let mut c = connect(io).await;
        let e = c
            .send("a@client.test", &to(&["b@mx.test", "c@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Reply { stage: Stage::RcptTo, reply } if reply.code == 421),
            "{e}"
        );
        assert!(!e.is_permanent());
        assert!(c.is_broken());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_sender_without_pipelining_needs_no_reset() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(PLAIN).await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            p.say("451 4.3.0 try later").await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4").await;
            p.say("550 5.7.1 no").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        for _ in 0..2 {
            let e = c
                .send("a@client.test", &to(&["b@mx.test"]), b"hi")
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Reply {
                        stage: Stage::MailFrom,
                        ..
                    }
                ),
                "{e}"
            );
        }
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_after_the_data_fails_the_accepted_recipients() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok\n250 ok\n550 5.1.1 no\n354 go ahead").await;
            p.data().await;
            p.say("451 4.3.0 storage trouble").await;
            p.expect("RSET").await;
            p.say("250 ok").await;
            p.chunk().await;
            p.say("250 ok\n250 ok\n554 5.7.1 not today").await;
            p.expect("RSET").await;
            p.say("250 ok").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let rcpts = to(&["b@mx.test", "x@mx.test"]);
        let sent = c.send("a@client.test", &rcpts, b"hi").await.unwrap();
        let Some(Outcome::Failed(r)) = sent.outcome(0) else {
            panic!("delivered: {sent:?}");
        };
        assert!(r.is_transient() && r.code == 451);
        assert!(matches!(sent.outcome(1), Some(Outcome::Failed(r)) if r.code == 550));
        // A refused DATA decides for the accepted recipients the same way.
        let sent = c.send("a@client.test", &rcpts[..1], b"hi").await.unwrap();
        assert!(matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.code == 554));
        c.reset().await.unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn too_big_for_the_server_is_refused_without_sending() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250-PIPELINING\n250 SIZE 100").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let body = vec![b'x'; 200];
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), &body)
            .await
            .unwrap_err();
        let Error::Unsendable(reply) = &e else {
            panic!("{e}");
        };
        assert_eq!((reply.code, reply.enhanced), (552, Some((5, 3, 4))));
        assert!(e.is_permanent());
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn eight_bit_bodies_need_8bitmime() {
        let body = "Subject: Grüße\r\n\r\nschön\r\n".as_bytes();
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250-PIPELINING\n250 8BITMIME").await;
            p.expect("MAIL FROM:<a@client.test> BODY=8BITMIME").await;
            p.expect("RCPT TO:<b@mx.test>").await;
            p.expect("DATA").await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            assert_eq!(p.data().await, body);
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        c.send("a@client.test", &to(&["b@mx.test"]), body)
            .await
            .unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();

        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250 PIPELINING").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), body)
            .await
            .unwrap_err();
        let Error::Unsendable(reply) = &e else {
            panic!("{e}");
        };
        assert_eq!((reply.code, reply.enhanced), (554, Some((5, 6, 3))));
        assert!(reply.text.contains("conversion required"), "{reply}");
        assert!(e.is_permanent());
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn non_ascii_addresses_need_smtputf8() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.expect("MAIL FROM:<a@client.test> SIZE=4 SMTPUTF8").await;
            p.expect("RCPT TO:<jürgen@mx.test>").await;
            p.expect("DATA").await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            p.data().await;
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        c.send("a@client.test", &to(&["jürgen@mx.test"]), b"hi")
            .await
            .unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();

        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250-PIPELINING\n250 8BITMIME").await;
            // Only the ASCII recipient is asked for, and without SMTPUTF8.
            p.expect("MAIL FROM:<a@client.test>").await;
            p.expect("RCPT TO:<b@mx.test>").await;
            p.expect("DATA").await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            p.data().await;
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let e = c
            .send("jörg@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        let Error::Unsendable(reply) = &e else {
            panic!("{e}");
        };
        assert_eq!((reply.code, reply.enhanced), (553, Some((5, 6, 7))));
        let sent = c
            .send(
                "a@client.test",
                &to(&["jürgen@mx.test", "b@mx.test"]),
                b"hi",
            )
            .await
            .unwrap();
        assert!(
            matches!(sent.outcome(0), Some(Outcome::Failed(r)) if r.enhanced == Some((5, 6, 7)))
        );
        assert!(matches!(sent.outcome(1), Some(Outcome::Delivered(_))));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn addresses_cannot_inject_commands() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        let e = c
            .send(
                "a@client.test>\r\nRCPT TO:<x@evil.test",
                &to(&["b@mx.test"]),
                b"hi",
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unsendable(_)), "{e}");
        let sent = c
            .send(
                "a@client.test",
                &to(&["b@mx.test>\r\nDATA", "", "<c@mx.test>"]),
                b"hi",
            )
            .await
            .unwrap();
        assert!(sent
            .outcomes()
            .all(|o| matches!(o, Outcome::Failed(r) if r.code == 553)));
        assert_eq!(sent.data, None);
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn two_messages_on_one_connection() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            for n in 1..=2 {
                let batch = p.chunk().await;
                assert!(batch.ends_with(b"DATA\r\n"), "{batch:?}");
                p.say("250 ok\n250 ok\n354 go ahead").await;
                assert_eq!(p.data().await, format!("message {n}\r\n").as_bytes());
                p.say(&format!("250 queued as {n}")).await;
                if n == 1 {
                    p.expect("RSET").await;
                    p.say("250 2.0.0 flushed").await;
                }
            }
            p.quit().await;
        });
        let mut c = connect(io).await;
        for n in 1..=2 {
            let body = format!("message {n}");
            let sent = c
                .send("", &to(&["b@mx.test"]), body.as_bytes())
                .await
                .unwrap();
            assert_eq!(sent.data.unwrap().text, format!("queued as {n}"));
            if n == 1 {
                c.reset().await.unwrap();
            }
        }
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_large_message_goes_in_blocks() {
        let body: Vec<u8> = (0..5 * DATA_BLOCK).map(|i| b"abcdefgh\n"[i % 9]).collect();
        let want = wire::data_bytes(&body);
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL.replace("SIZE 10000", "SIZE").as_str()).await;
            p.chunk().await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            let data = p.data().await;
            assert_eq!(data.len() + 3, want.len());
            assert!(want.starts_with(&data));
            p.say("250 queued").await;
            p.quit().await;
        });
        let mut c = connect(io).await;
        c.send("a@client.test", &to(&["b@mx.test"]), &body)
            .await
            .unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let timeouts = Timeouts {
            command: Duration::from_secs(30),
            data_end: Duration::from_secs(60),
            ..Timeouts::default()
        };

        // No reply to EHLO.
        let (io, mut p) = pair();
        let (done, wait) = oneshot::channel::<()>();
        let server = serve(async move {
            p.say("220 mx.test").await;
            p.expect("EHLO client.test").await;
            let _ = wait.await;
        });
        let start = tokio::time::Instant::now();
        let e = Client::connect(io, "client.test", timeouts)
            .await
            .err()
            .expect("timeout");
        assert!(matches!(e, Error::Timeout { stage: Stage::Ehlo }), "{e}");
        assert!(!e.is_permanent());
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(31));
        done.send(()).unwrap();
        server.await.unwrap();

        // No reply after the data; the session is unusable after.
        let (io, mut p) = pair();
        let (done, wait) = oneshot::channel::<()>();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok\n250 ok\n354 go ahead").await;
            p.data().await;
            let _ = wait.await;
        });
        let mut c = Client::connect(io, "client.test", timeouts).await.unwrap();
        let start = tokio::time::Instant::now();
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Timeout {
                    stage: Stage::DataEnd
                }
            ),
            "{e}"
        );
        assert!(start.elapsed() >= Duration::from_secs(60));
        assert!(c.is_broken());
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Broken), "{e}");
        assert!(matches!(c.reset().await, Err(Error::Broken)));
        done.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_is_temporary() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.chunk().await;
            p.say("250 ok").await;
        });
        let mut c = connect(io).await;
        let e = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Closed {
                    stage: Stage::RcptTo
                }
            ),
            "{e}"
        );
        assert!(!e.is_permanent());
        assert!(c.is_broken());
        server.await.unwrap();
    }

    /// A test certificate authority and a certificate it issued for `name`.
    struct Pki {
        ca: CertificateDer<'static>,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn pki(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test authority");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn acceptor(pki: &Pki) -> TlsAcceptor {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        roots
    }

    fn mx_test() -> ServerName<'static> {
        ServerName::try_from("mx.test").unwrap()
    }

    /// A server that offers STARTTLS and, over TLS, different extensions, and takes one message
    /// there; or, when the handshake fails, sees it fail.
    fn tls_server(p: Peer<DuplexStream>, pki: &Pki, handshake_ok: bool) -> JoinHandle<()> {
        let acceptor = acceptor(pki);
        let mut p = p;
        serve(async move {
            p.open("250-mx.test\n250-STARTTLS\n250 SIZE 1000").await;
            p.expect("STARTTLS").await;
            p.say("220 2.0.0 ready").await;
            let accepted = acceptor.accept(p.io.into_inner()).await;
            if !handshake_ok {
                assert!(accepted.is_err());
                return;
            }
            let mut p = Peer::new(accepted.expect("handshake"));
            p.expect("EHLO client.test").await;
            p.say("250-mx.test\n250-PIPELINING\n250 SIZE 5000").await;
            assert_eq!(
                String::from_utf8_lossy(&p.chunk().await),
                "MAIL FROM:<a@client.test> SIZE=4\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n"
            );
            p.say("250 ok\n250 ok\n354 go ahead").await;
            assert_eq!(p.data().await, b"hi\r\n");
            p.say("250 queued").await;
            p.quit().await;
        })
    }

    #[tokio::test]
    async fn starttls_with_a_trusted_certificate() {
        let pki = pki("mx.test");
        let (io, p) = pair();
        let server = tls_server(p, &pki, true);
        let c = connect(io).await;
        assert!(c.extensions().starttls);
        assert!(!c.extensions().pipelining);
        let connector = verifying_connector(roots(&pki.ca)).unwrap();
        let mut c = c.starttls(&connector, mx_test()).await.unwrap();
        // The extensions are those offered over TLS.
        assert!(!c.extensions().starttls);
        assert!(c.extensions().pipelining);
        assert_eq!(c.extensions().size, Some(5000));
        assert_eq!(c.greeting().text, "mx.test ESMTP");
        let sent = c
            .send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap();
        assert!(matches!(sent.outcome(0), Some(Outcome::Delivered(_))));
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn starttls_refuses_an_unknown_authority() {
        let pki = pki("mx.test");
        let other = self::pki("mx.test");
        let (io, p) = pair();
        let server = tls_server(p, &pki, false);
        let c = connect(io).await;
        let connector = verifying_connector(roots(&other.ca)).unwrap();
        let e = c
            .starttls(&connector, mx_test())
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, Error::Tls(_)), "{e}");
        assert!(!e.is_permanent());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn starttls_refuses_a_certificate_for_another_name() {
        let pki = pki("other.test");
        let (io, p) = pair();
        let server = tls_server(p, &pki, false);
        let c = connect(io).await;
        let connector = verifying_connector(roots(&pki.ca)).unwrap();
        let e = c
            .starttls(&connector, mx_test())
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, Error::Tls(_)), "{e}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn opportunistic_tls_accepts_any_certificate() {
        let pki = pki("other.test");
        let (io, p) = pair();
        let server = tls_server(p, &pki, true);
        let c = connect(io).await;
        let connector = opportunistic_connector().unwrap();
        let mut c = c.starttls(&connector, mx_test()).await.unwrap();
        assert!(c.extensions().pipelining);
        c.send("a@client.test", &to(&["b@mx.test"]), b"hi")
            .await
            .unwrap();
        c.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn starttls_not_offered_or_refused() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open(FULL).await;
            p.closed().await;
        });
        let c = connect(io).await;
        let connector = opportunistic_connector().unwrap();
        let e = c
            .starttls(&connector, mx_test())
            .await
            .err()
            .expect("not offered");
        assert!(matches!(e, Error::Tls(_)), "{e}");
        server.await.unwrap();

        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250 STARTTLS").await;
            p.expect("STARTTLS").await;
            p.say("454 4.7.0 TLS not available").await;
            p.closed().await;
        });
        let c = connect(io).await;
        let e = c
            .starttls(&connector, mx_test())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                Error::Reply {
                    stage: Stage::StartTls,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_permanent());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn starttls_refuses_injected_replies() {
        let (io, mut p) = pair();
        let server = serve(async move {
            p.open("250-mx.test\n250 STARTTLS").await;
            p.expect("STARTTLS").await;
            p.say("220 ready\n250 injected").await;
            p.closed().await;
        });
        let c = connect(io).await;
        let connector = opportunistic_connector().unwrap();
        let e = c
            .starttls(&connector, mx_test())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                Error::Protocol {
                    stage: Stage::StartTls,
                    ..
                }
            ),
            "{e}"
        );
        server.await.unwrap();
    }
}
