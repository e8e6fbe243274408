//! One SMTP session (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES,
//! CHUNKING and STARTTLS): the command loop, the envelope, and the hand-off of a complete message
//! to the [`Mailboxes`]. Generic over the stream and the mailboxes, so it runs over TCP with the
//! real stores and, in its tests, over an in-memory pipe with mailboxes in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runtime::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use xfs::{Delivery, Flags};

use crate::budget::Reservation;
use crate::io::{Conn, ReadError};
use crate::mailboxes::{self, Mailboxes, MessageCopy, Recipient, Verdict};
use crate::message::{self, Via};
use crate::{metrics, Ctx};

/// Bad commands a session may send before it is closed.
const MAX_ERRORS: u32 = 20;
/// Messages above this size are parsed for their summary off the async threads.
const PARSE_INLINE_MAX: usize = 256 * 1024;
/// Longest address accepted (RFC 5321 section 4.5.3.1: 64 + 1 + 255).
const MAX_ADDRESS: usize = 320;
/// Copies of a message whose store calls may be in flight at once. Each call holds the message
/// encoded in its request frame, so this bounds those copies however many recipients there are.
pub const COPIES_IN_FLIGHT: usize = 4;
/// The reply when a declared SIZE does not fit the data budget now.
const NO_ROOM: &str = "452 4.3.1 Insufficient system storage, try again later";

/// How the command loop goes on after a command.
enum Flow {
    Continue,
    Close,
    StartTls,
}

/// The envelope of the message being received.
struct Tx<R> {
    /// The reverse path; empty for the null sender (`MAIL FROM:<>`).
    from: String,
    utf8: bool,
    /// The size `MAIL ... SIZE=` declared.
    size: Option<u64>,
    rcpts: Vec<Recipient<R>>,
    /// BDAT chunks so far, once the first came.
    bdat: Option<Chunks>,
}

struct Chunks {
    data: Vec<u8>,
    /// The data budget `data`'s buffer takes.
    held: Reservation,
    too_big: bool,
}

struct Session<M: Mailboxes> {
    ctx: Arc<Ctx<M>>,
    peer: SocketAddr,
    id: String,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    tx: Option<Tx<M::Route>>,
    messages: u32,
    errors: u32,
    /// RCPTs naming a user that does not exist, so far (each waits longer for its reply).
    unknown_rcpts: u32,
    /// The code of the last reply queued (for the per-command metrics).
    last_code: std::sync::atomic::AtomicU16,
}

/// Serve one connection until QUIT, an error, a timeout or shutdown. `peer` is the client's
/// address as the `Received:` lines name it.
pub async fn serve<S, M>(ctx: Arc<Ctx<M>>, stream: S, peer: SocketAddr, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Mailboxes,
{
    let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let mut s = Session {
        ctx,
        peer,
        id,
        helo: None,
        esmtp: false,
        tls: false,
        tx: None,
        messages: 0,
        errors: 0,
        unknown_rcpts: 0,
        last_code: Default::default(),
    };
    let mut conn = Conn::new(Box::new(stream));
    let greeting = format!("220 {} ESMTP megamail ready", s.ctx.cfg.hostname);
    s.say(&mut conn, &greeting);
    tracing::debug!(session = %s.id, %peer, "session open");
    loop {
        let line = if conn.has_buffered_input() {
            s.read_command(&mut conn).await
        } else {
            tokio::select! {
                r = s.read_command(&mut conn) => r,
                _ = shutdown.triggered() => {
                    s.say(&mut conn, "421 4.3.2 Service shutting down, try again later");
                    break;
                }
            }
        };
        let line = match line {
            Ok(l) => l,
            Err(ReadError::Timeout) => {
                let t = format!("421 4.4.2 {} Error: timeout exceeded", s.ctx.cfg.hostname);
                s.say(&mut conn, &t);
                break;
            }
            Err(_) => break,
        };
        let flow = match line {
            None => Flow::Continue,
            Some(cmd) => {
                let started = std::time::Instant::now();
                let _in_flight = metrics::OPS.begin();
                let flow = s.command(&mut conn, &cmd).await;
                let code = s.last_code.load(std::sync::atomic::Ordering::Relaxed);
                metrics::record_command(&cmd, code, started.elapsed());
                flow
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Close => break,
            Flow::StartTls => match s.start_tls(conn).await {
                Some(c) => conn = c,
                None => return,
            },
        }
        if s.errors >= MAX_ERRORS {
            s.say(
                &mut conn,
                "421 4.7.0 Too many errors, closing the connection",
            );
            break;
        }
    }
    conn.shutdown().await;
    tracing::debug!(session = %s.id, "session closed");
}

/// Split a command line into its verb (upper case) and the rest.
fn split_command(line: &str) -> (String, &str) {
    let line = line.trim_start();
    match line.find(' ') {
        Some(i) => (line[..i].to_ascii_uppercase(), line[i + 1..].trim()),
        None => (line.to_ascii_uppercase(), ""),
    }
}

/// `FROM:<path> PARAMS` / `TO:<path> PARAMS` → (path, params). The keyword is matched without
/// case and may be followed by spaces before the `<`.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, Vec<&'a str>)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = &rest[..end];
    let params = rest[end + 1..].split_ascii_whitespace().collect();
    // A source route (`@a,@b:user@d`) is ignored (RFC 5321 appendix C).
    let path = match (path.starts_with('@'), path.find(':')) {
        (true, Some(i)) => &path[i + 1..],
        _ => path,
    };
    Some((path, params))
}

/// Whether a mailbox is well formed enough to route: `local@domain`, no spaces or controls.
fn valid_mailbox(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && addr.len() <= MAX_ADDRESS
        && !addr
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

impl<M: Mailboxes> Session<M> {
    fn say(&self, conn: &mut Conn, text: &str) {
        let code = text.get(..3).unwrap_or("???");
        metrics::REPLIES.with_label_values(&[code]).inc();
        self.last_code.store(
            code.parse().unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        conn.reply(text);
    }

    /// The next command line, without its terminator; `None` when it was refused (too long, not
    /// UTF-8) and answered already.
    async fn read_command(&mut self, conn: &mut Conn) -> Result<Option<String>, ReadError> {
        let deadline = Instant::now() + Duration::from_secs(self.ctx.cfg.command_timeout_secs);
        let line = conn
            .read_line(self.ctx.cfg.max_line_bytes, deadline)
            .await?;
        if line.too_long {
            self.errors += 1;
            let t = format!(
                "500 5.5.2 Error: line too long (limit {} bytes)",
                self.ctx.cfg.max_line_bytes
            );
            self.say(conn, &t);
            return Ok(None);
        }
        let mut bytes = line.bytes;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            // A bare CR or another control character has no place in a command (RFC 5321
            // §2.3.8), and echoed in a reply or a trace header it could forge lines.
            Ok(s) if s.chars().any(|c| c.is_control() && c != '\t') => {
                self.errors += 1;
                self.say(
                    conn,
                    "500 5.5.2 Error: command contains a control character",
                );
                Ok(None)
            }
            Ok(s) => Ok(Some(s)),
            Err(_) => {
                self.errors += 1;
                self.say(conn, "500 5.5.2 Error: command is not valid UTF-8");
                Ok(None)
            }
        }
    }

    fn refuse(&mut self, conn: &mut Conn, text: &str) -> Flow {
        self.errors += 1;
        self.say(conn, text);
        Flow::Continue
    }

    async fn command(&mut self, conn: &mut Conn, line: &str) -> Flow {
        let (verb, arg) = split_command(line);
        match verb.as_str() {
            "EHLO" | "HELO" => self.hello(conn, &verb, arg),
            "MAIL" => self.mail(conn, arg),
            "RCPT" => self.rcpt(conn, arg).await,
            "DATA" => self.data(conn, arg).await,
            "BDAT" => self.bdat(conn, arg).await,
            "RSET" => {
                self.tx = None;
                self.say(conn, "250 2.0.0 Ok");
                Flow::Continue
            }
            "NOOP" => {
                self.say(conn, "250 2.0.0 Ok");
                Flow::Continue
            }
            "QUIT" => {
                self.say(conn, "221 2.0.0 Bye");
                Flow::Close
            }
            "VRFY" => {
                self.say(
                    conn,
                    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
                );
                Flow::Continue
            }
            "EXPN" => self.refuse(conn, "502 5.5.1 EXPN not available"),
            "HELP" => {
                self.say(
                    conn,
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
                );
                Flow::Continue
            }
            "STARTTLS" => {
                if self.ctx.tls.is_none() {
                    self.refuse(conn, "502 5.5.1 Error: STARTTLS not available")
                } else if self.tls {
                    self.refuse(conn, "503 5.5.1 Error: TLS already active")
                } else if !arg.is_empty() {
                    self.refuse(conn, "501 5.5.4 Syntax: STARTTLS")
                } else {
                    self.say(conn, "220 2.0.0 Ready to start TLS");
                    Flow::StartTls
                }
            }
            "" => self.refuse(conn, "500 5.5.2 Error: empty command"),
            _ => self.refuse(conn, "500 5.5.2 Error: command not recognized"),
        }
    }

    fn hello(&mut self, conn: &mut Conn, verb: &str, arg: &str) -> Flow {
        let name = arg.split_ascii_whitespace().next().unwrap_or("");
        if name.is_empty() {
            return self.refuse(conn, &format!("501 5.5.4 Syntax: {verb} hostname"));
        }
        self.helo = Some(name.to_string());
        self.esmtp = verb == "EHLO";
        self.tx = None;
        let host = &self.ctx.cfg.hostname;
        if !self.esmtp {
            let t = format!("250 {host}");
            self.say(conn, &t);
            return Flow::Continue;
        }
        let mut lines = vec![
            format!("{host} Hello {name} [{}]", self.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.cfg.max_message_bytes),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.ctx.tls.is_some() && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        lines.push("HELP".to_string());
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let t = format!("250{sep}{l}");
            self.say(conn, &t);
        }
        Flow::Continue
    }

    fn mail(&mut self, conn: &mut Conn, arg: &str) -> Flow {
        if self.helo.is_none() {
            return self.refuse(conn, "503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.refuse(conn, "503 5.5.1 Error: nested MAIL command");
        }
        let Some((path, params)) = parse_path(arg, "FROM:") else {
            return self.refuse(conn, "501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let mut utf8 = false;
        let mut size = None;
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.ctx.cfg.max_message_bytes as u64 => {
                        return self.refuse(
                            conn,
                            "552 5.3.4 Message size exceeds fixed maximum message size",
                        );
                    }
                    Ok(n) => size = Some(n),
                    Err(_) => return self.refuse(conn, "501 5.5.4 Bad SIZE parameter"),
                },
                "BODY" => {
                    let v = value.to_ascii_uppercase();
                    if v != "7BIT" && v != "8BITMIME" {
                        return self.refuse(conn, "555 5.5.4 Unsupported BODY type");
                    }
                }
                "SMTPUTF8" if value.is_empty() => utf8 = true,
                _ => {
                    let t = format!("555 5.5.4 Unsupported MAIL parameter {key}");
                    return self.refuse(conn, &t);
                }
            }
        }
        if !path.is_empty() {
            if !valid_mailbox(path) {
                return self.refuse(conn, "501 5.1.7 Bad sender address syntax");
            }
            if !path.is_ascii() && !utf8 {
                return self.refuse(
                    conn,
                    "553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter",
                );
            }
        }
        self.tx = Some(Tx {
            from: path.to_string(),
            utf8,
            size,
            rcpts: Vec::new(),
            bdat: None,
        });
        self.say(conn, "250 2.1.0 Ok");
        Flow::Continue
    }

    fn trace(&self) -> String {
        format!("{}.{}", self.id, self.messages + 1)
    }

    async fn rcpt(&mut self, conn: &mut Conn, arg: &str) -> Flow {
        let Some(tx) = &self.tx else {
            return self.refuse(conn, "503 5.5.1 Error: need MAIL command");
        };
        if tx.bdat.is_some() {
            return self.refuse(conn, "503 5.5.1 Error: RCPT after BDAT");
        }
        let utf8 = tx.utf8;
        let declared = tx.size;
        let count = tx.rcpts.len();
        let Some((path, params)) = parse_path(arg, "TO:") else {
            return self.refuse(conn, "501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if let Some(p) = params.first() {
            let t = format!("555 5.5.4 Unsupported RCPT parameter {p}");
            return self.refuse(conn, &t);
        }
        let Some(domains) = self.ctx.mailboxes.domains().await else {
            metrics::RECIPIENTS.with_label_values(&["deferred"]).inc();
            self.say(
                conn,
                "451 4.3.0 Cannot check recipients now, try again later",
            );
            return Flow::Continue;
        };
        let cfg = &self.ctx.cfg;
        let addr = if path.eq_ignore_ascii_case("postmaster") {
            match domains.first() {
                Some(d) => format!("postmaster@{d}"),
                None => path.to_string(),
            }
        } else {
            path.to_string()
        };
        if !valid_mailbox(&addr) {
            return self.refuse(conn, "501 5.1.3 Bad recipient address syntax");
        }
        if !addr.is_ascii() && !utf8 {
            return self.refuse(
                conn,
                "553 5.6.7 Non-ASCII recipient address needs the SMTPUTF8 parameter",
            );
        }
        let (_, domain) = addr.rsplit_once('@').unwrap_or_default();
        let domain = domain.to_lowercase();
        if !domains.contains(&domain) {
            metrics::RECIPIENTS
                .with_label_values(&["relay_denied"])
                .inc();
            let t = format!("550 5.7.1 <{addr}>: Relay access denied");
            return self.refuse(conn, &t);
        }
        if count >= cfg.max_recipients {
            metrics::RECIPIENTS.with_label_values(&["too_many"]).inc();
            self.say(conn, "452 4.5.3 Error: too many recipients");
            return Flow::Continue;
        }
        if !self.declared_fits(declared) {
            metrics::RECIPIENTS.with_label_values(&["no_room"]).inc();
            self.say(conn, NO_ROOM);
            return Flow::Continue;
        }
        let trace = self.trace();
        let (result, reply) = match self.ctx.mailboxes.check(&addr, &trace).await {
            Verdict::Accepted(r) => {
                let tx = self.tx.as_mut().expect("checked above");
                // The same mailbox named twice gets one copy.
                if !tx.rcpts.iter().any(|x| x.user == r.user) {
                    tx.rcpts.push(r);
                }
                ("accepted", "250 2.1.5 Ok".to_string())
            }
            Verdict::NoSuchUser => {
                // Guessing addresses: an error toward the limit, and a longer wait each time.
                self.errors += 1;
                self.unknown_rcpts += 1;
                tokio::time::sleep(self.unknown_rcpt_delay()).await;
                (
                    "unknown_user",
                    format!("550 5.1.1 <{addr}>: Recipient address rejected: no such user here"),
                )
            }
            Verdict::BadAddress(why) => {
                self.errors += 1;
                (
                    "bad_syntax",
                    format!("501 5.1.3 Bad recipient address syntax: {why}"),
                )
            }
            Verdict::Deferred(reply) => ("deferred", reply),
        };
        metrics::RECIPIENTS.with_label_values(&[result]).inc();
        self.say(conn, &reply);
        Flow::Continue
    }

    /// The pause before the reply to the session's latest unknown recipient.
    fn unknown_rcpt_delay(&self) -> Duration {
        let cfg = &self.ctx.cfg;
        let ms = cfg
            .unknown_rcpt_delay_ms
            .saturating_mul(u64::from(self.unknown_rcpts))
            .min(cfg.unknown_rcpt_delay_max_ms);
        Duration::from_millis(ms)
    }

    /// Whether a message of the declared size (if any) fits the data budget now.
    fn declared_fits(&self, declared: Option<u64>) -> bool {
        let fits = declared.is_none_or(|n| n <= self.ctx.budget.available() as u64);
        if !fits {
            metrics::BUDGET_REFUSED
                .with_label_values(&["declared"])
                .inc();
        }
        fits
    }

    /// The reply and the end of a session whose data the budget has no room for.
    fn over_budget(&mut self, conn: &mut Conn) -> Flow {
        self.tx = None;
        metrics::BUDGET_REFUSED.with_label_values(&["data"]).inc();
        metrics::MESSAGES.with_label_values(&["deferred"]).inc();
        let t = format!(
            "421 4.3.2 {} Error: too much mail in transit, try again later",
            self.ctx.cfg.hostname
        );
        self.say(conn, &t);
        Flow::Close
    }

    async fn data(&mut self, conn: &mut Conn, arg: &str) -> Flow {
        if !arg.is_empty() {
            return self.refuse(conn, "501 5.5.4 Syntax: DATA");
        }
        let Some(tx) = &self.tx else {
            return self.refuse(conn, "503 5.5.1 Error: need MAIL command");
        };
        if tx.bdat.is_some() {
            return self.refuse(conn, "503 5.5.1 Error: DATA after BDAT");
        }
        if tx.rcpts.is_empty() {
            return self.refuse(conn, "554 5.5.1 Error: no valid recipients");
        }
        if !self.declared_fits(tx.size) {
            self.say(conn, NO_ROOM);
            return Flow::Continue;
        }
        self.say(conn, "354 End data with <CR><LF>.<CR><LF>");
        let mut held = self.ctx.budget.reservation();
        let cfg = &self.ctx.cfg;
        let data = match conn
            .read_data(
                cfg.max_message_bytes,
                cfg.max_line_bytes,
                Duration::from_secs(cfg.data_timeout_secs),
                &mut held,
            )
            .await
        {
            Ok(d) => d,
            Err(ReadError::OverBudget) => return self.over_budget(conn),
            Err(ReadError::Timeout) => {
                self.tx = None;
                let t = format!("421 4.4.2 {} Error: timeout exceeded", cfg.hostname);
                self.say(conn, &t);
                return Flow::Close;
            }
            Err(_) => return Flow::Close,
        };
        let tx = self.tx.take().expect("checked above");
        if data.too_big {
            metrics::MESSAGES.with_label_values(&["rejected"]).inc();
            self.say(conn, "552 5.3.4 Error: message too big");
        } else if data.line_too_long {
            metrics::MESSAGES.with_label_values(&["rejected"]).inc();
            let t = format!(
                "554 5.6.0 Error: message has a line longer than {} bytes",
                cfg.max_line_bytes
            );
            self.say(conn, &t);
        } else {
            let reply = self.store(tx, data.bytes, held).await;
            self.say(conn, &reply);
        }
        Flow::Continue
    }

    async fn bdat(&mut self, conn: &mut Conn, arg: &str) -> Flow {
        let mut words = arg.split_ascii_whitespace();
        let size = words.next().and_then(|w| w.parse::<usize>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // The chunk's end cannot be found without its size: the session cannot go on.
            self.say(
                conn,
                "501 5.5.4 Syntax: BDAT size [LAST]; closing the connection",
            );
            return Flow::Close;
        };
        let timeout = Duration::from_secs(self.ctx.cfg.data_timeout_secs);
        let refusal = match &self.tx {
            None => Some("503 5.5.1 Error: need MAIL command"),
            Some(tx) if tx.rcpts.is_empty() => Some("554 5.5.1 Error: no valid recipients"),
            _ => None,
        };
        if let Some(refusal) = refusal {
            // The chunk is read and dropped so the session stays in step (RFC 3030).
            if conn.read_chunk(size, None, timeout).await.is_err() {
                return Flow::Close;
            }
            self.tx = None;
            return self.refuse(conn, refusal);
        }
        let max = self.ctx.cfg.max_message_bytes;
        let budget = &self.ctx.budget;
        let chunks = self
            .tx
            .as_mut()
            .expect("checked above")
            .bdat
            .get_or_insert_with(|| Chunks {
                data: Vec::new(),
                held: budget.reservation(),
                too_big: false,
            });
        let keep = !chunks.too_big && chunks.data.len().saturating_add(size) <= max;
        if !keep && !chunks.too_big {
            chunks.too_big = true;
            chunks.data = Vec::new();
        }
        let into = keep.then_some((&mut chunks.data, &mut chunks.held, max));
        match conn.read_chunk(size, into, timeout).await {
            Ok(()) => {}
            Err(ReadError::OverBudget) => return self.over_budget(conn),
            Err(ReadError::Timeout) => {
                self.tx = None;
                let t = format!(
                    "421 4.4.2 {} Error: timeout exceeded",
                    self.ctx.cfg.hostname
                );
                self.say(conn, &t);
                return Flow::Close;
            }
            Err(_) => return Flow::Close,
        }
        if !last {
            let t = format!("250 2.0.0 {size} octets received");
            self.say(conn, &t);
            return Flow::Continue;
        }
        let mut tx = self.tx.take().expect("checked above");
        let chunks = tx.bdat.take().expect("set above");
        if chunks.too_big {
            metrics::MESSAGES.with_label_values(&["rejected"]).inc();
            self.say(conn, "552 5.3.4 Error: message too big");
        } else {
            let reply = self.store(tx, chunks.data, chunks.held).await;
            self.say(conn, &reply);
        }
        Flow::Continue
    }

    /// Hand every recipient's copy to the mailboxes; the reply is `250` only when all are durable.
    /// The copies share one body, the trace line then the data (`held` covers its buffer, and is
    /// given back once the message is delivered or not).
    async fn store(&mut self, tx: Tx<M::Route>, data: Vec<u8>, mut held: Reservation) -> String {
        let started = std::time::Instant::now();
        let trace = self.trace();
        self.messages += 1;
        let size = data.len();
        metrics::RECEIVED_BYTES.inc_by(size as u64);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let via = Via {
            esmtp: self.esmtp,
            tls: self.tls,
            utf8: tx.utf8,
        };
        // One trace line for every copy: it names the recipient only when there is one (a
        // line per recipient would mean a body per recipient).
        let only = match tx.rcpts.as_slice() {
            [one] => Some(one.user.as_str()),
            _ => None,
        };
        let received = message::received_header(
            &self.helo.clone().unwrap_or_default(),
            self.peer.ip(),
            &self.ctx.cfg.hostname,
            via,
            &trace,
            only,
            now_ms,
        );
        let head = received.len();
        let mut body = data;
        // The trace line goes in front in place (the buffer has room more often than not); a
        // few hundred bytes past the budget are not worth refusing a message for.
        let _ = held.make_room(&mut body, head, usize::MAX);
        body.splice(0..0, received.bytes());
        let body = bytes::Bytes::from(body);
        let data = body.slice(head..);
        let summary = if data.len() <= PARSE_INLINE_MAX {
            message::summarize(&data)
        } else {
            let data = data.clone();
            tokio::task::spawn_blocking(move || message::summarize(&data))
                .await
                .unwrap_or_default()
        };
        let copies: Vec<_> = tx
            .rcpts
            .into_iter()
            .map(|rcpt| MessageCopy {
                delivery: Delivery {
                    id: message::delivery_id(&tx.from, &rcpt.user, &data),
                    folder: None,
                    internal_date_ms: now_ms,
                    flags: Flags::default(),
                    summary: summary.clone(),
                    body: body.clone(),
                },
                rcpt,
            })
            .collect();
        drop((body, data));
        let outcomes = self.ctx.mailboxes.deliver(copies, &trace).await;
        drop(held);
        metrics::DATA_SECONDS.observe(started.elapsed().as_secs_f64());
        match mailboxes::combined_reply(&outcomes) {
            None => {
                metrics::MESSAGES.with_label_values(&["accepted"]).inc();
                tracing::info!(session = %self.id, id = %trace, from = %tx.from,
                    copies = outcomes.len(), bytes = size, "message stored");
                format!("250 2.0.0 Ok: stored as {trace}")
            }
            Some(reply) => {
                metrics::MESSAGES.with_label_values(&["deferred"]).inc();
                tracing::warn!(session = %self.id, id = %trace, %reply, "message deferred");
                reply
            }
        }
    }

    /// Replace the clear connection by TLS. Input the client sent after STARTTLS in the clear is
    /// dropped (it must not be taken as a command inside TLS).
    async fn start_tls(&mut self, mut conn: Conn) -> Option<Conn> {
        let acceptor = self.ctx.tls.clone()?;
        conn.flush().await.ok()?;
        let io = conn.into_io();
        let timeout = Duration::from_secs(self.ctx.cfg.command_timeout_secs);
        match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                self.tls = true;
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                Some(Conn::new(Box::new(stream)))
            }
            Ok(Err(e)) => {
                tracing::info!(session = %self.id, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod dialogue;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_without_case() {
        assert_eq!(
            split_command("mail FROM:<a@b>"),
            ("MAIL".into(), "FROM:<a@b>")
        );
        assert_eq!(split_command("QUIT"), ("QUIT".into(), ""));
        assert_eq!(split_command("  noop  x "), ("NOOP".into(), "x"));
    }

    #[test]
    fn paths_and_parameters() {
        assert_eq!(
            parse_path("FROM:<a@b.test> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b.test", vec!["SIZE=10", "BODY=8BITMIME"]))
        );
        assert_eq!(parse_path("from: <>", "FROM:"), Some(("", vec![])));
        assert_eq!(
            parse_path("TO:<@relay.test,@r2.test:bob@x.test>", "TO:"),
            Some(("bob@x.test", vec![]))
        );
        assert_eq!(parse_path("TO:bob@x.test", "TO:"), None);
        assert_eq!(parse_path("TO:<bob@x.test", "TO:"), None);
        assert_eq!(parse_path("FRM:<a@b>", "FROM:"), None);
        assert_eq!(parse_path("", "FROM:"), None);
    }

    #[test]
    fn multibyte_text_is_cut_only_between_characters() {
        // The keyword's length falls inside `€` (three bytes): no match, no panic.
        assert_eq!(parse_path("a€:<x@y.test>", "TO:"), None);
        assert_eq!(parse_path("FRO€:<x@y.test>", "FROM:"), None);
        assert_eq!(parse_path("Tö:<x@y.test>", "TO:"), None);
        assert_eq!(
            parse_path("TO:<@ü,@€:ёлка@пример.рф> €", "TO:"),
            Some(("ёлка@пример.рф", vec!["€"]))
        );
        assert_eq!(split_command("ÉHLO x"), ("ÉHLO".into(), "x"));
        assert_eq!(split_command("€"), ("€".into(), ""));
        assert_eq!(split_command("ehlo  日本.jp "), ("EHLO".into(), "日本.jp"));
    }

    #[test]
    fn mailboxes() {
        assert!(valid_mailbox("bob@megamail.test"));
        assert!(valid_mailbox("jörg@megamail.test"));
        for bad in ["bob", "@x", "bob@", "b ob@x", "b\x01@x", "a<b@x"] {
            assert!(!valid_mailbox(bad), "{bad}");
        }
        assert!(!valid_mailbox(&format!("{}@x.test", "a".repeat(400))));
    }
}
