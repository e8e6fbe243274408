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

mod reply;
mod tls;

use std::fmt;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::wire;
use reply::{Conn, ReadFail};

pub use reply::{Extensions, Reply, MAX_REPLY_LINE, MAX_REPLY_LINES};
pub use tls::{opportunistic_connector, verifying_connector};

/// How much of the message data is written under one data-block deadline.
const DATA_BLOCK: usize = 64 * 1024;

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

/// What the session was doing when something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    Auth,
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
            Stage::Auth => "AUTH",
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

    /// Signs in to the server (RFC 4954) as `user` with `password`: AUTH PLAIN when offered,
    /// else AUTH LOGIN. Call it only over TLS (the password goes as base64, readable to anyone
    /// on the path); the caller, who knows whether the session is encrypted, checks that.
    ///
    /// A refusal is [`Error::Reply`] at [`Stage::Auth`]; a server that offers neither
    /// mechanism, or answers out of the exchange, is [`Error::Protocol`]. The password never
    /// appears in an error.
    pub async fn auth(&mut self, user: &str, password: &str) -> Result<(), Error> {
        use base64::Engine as _;
        self.usable()?;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let offered = |m: &str| self.extensions.auth.iter().any(|a| a == m);
        let limit = self.timeouts.command;
        let reply = if offered("PLAIN") {
            let token = b64(format!("\0{user}\0{password}").as_bytes());
            self.command(
                format!("AUTH PLAIN {token}\r\n").as_bytes(),
                limit,
                Stage::Auth,
            )
            .await?
        } else if offered("LOGIN") {
            let mut reply = self.command(b"AUTH LOGIN\r\n", limit, Stage::Auth).await?;
            for answer in [user, password] {
                if reply.code != 334 {
                    break;
                }
                let line = format!("{}\r\n", b64(answer.as_bytes()));
                reply = self.command(line.as_bytes(), limit, Stage::Auth).await?;
            }
            reply
        } else {
            return Err(Error::Protocol {
                stage: Stage::Auth,
                detail: format!(
                    "the server offers no mechanism this client has (PLAIN, LOGIN): {:?}",
                    self.extensions.auth
                ),
            });
        };
        match reply.code {
            235 => Ok(()),
            // A challenge where a result was due: the exchange is out of step.
            334 => {
                let e = Error::Protocol {
                    stage: Stage::Auth,
                    detail: "the server asked for more than a user name and a password".into(),
                };
                Err(self.fail(e))
            }
            _ => Err(Error::Reply {
                stage: Stage::Auth,
                reply,
            }),
        }
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

#[cfg(test)]
mod tests;
