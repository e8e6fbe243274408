//! A scripted SMTP receiver on a loopback address: the remote side of outbound tests. It speaks
//! enough ESMTP for a real client (EHLO with PIPELINING, SIZE and 8BITMIME; MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT), answers RCPT from a script per recipient (a queue of replies, then `250`),
//! and keeps every message it took with the bytes exactly as they came. A receiver started
//! with [`Receiver::hanging`] accepts connections and never says a word. It stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One message the receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The data as it came on the wire, up to (not including) the final `.` line.
    pub wire: Vec<u8>,
    /// The message: the data with its dot-stuffing undone.
    pub message: Vec<u8>,
}

#[derive(Default)]
struct State {
    got: Vec<Received>,
    /// Replies to RCPT for a recipient, used up in order; `250` once it is empty.
    rcpt_replies: HashMap<String, VecDeque<String>>,
    connections: usize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// A receiver at `addr` (a loopback address and a fixed port: every mail exchanger of a test
    /// listens on the port the worker is configured with).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Receiver> {
        Receiver::serve(addr, false).await
    }

    /// One that accepts connections and never answers.
    pub async fn hanging(addr: SocketAddr) -> std::io::Result<Receiver> {
        Receiver::serve(addr, true).await
    }

    async fn serve(addr: SocketAddr, hang: bool) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                st.lock().unwrap().connections += 1;
                let st = st.clone();
                tokio::spawn(async move {
                    if hang {
                        let mut stream = stream;
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                        return;
                    }
                    let _ = session(stream, st).await;
                });
            }
        });
        Ok(Receiver { addr, state, task })
    }

    /// Answer RCPT for `rcpt` with `replies` in turn (each a whole reply line without CRLF,
    /// `451 4.7.1 try later`), then with `250`.
    pub fn script(&self, rcpt: &str, replies: &[&str]) {
        self.state.lock().unwrap().rcpt_replies.insert(
            rcpt.to_lowercase(),
            replies.iter().map(|r| r.to_string()).collect(),
        );
    }

    /// Every message taken so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

/// The address inside `<...>` of a MAIL or RCPT argument.
fn path_of(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(arg.len());
    arg[start..end].to_lowercase()
}

async fn session(stream: tokio::net::TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"220 receiver.test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                "250-receiver.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760".into()
            }
            "HELO" => "250 receiver.test".into(),
            "MAIL" => {
                from = path_of(&text);
                rcpts.clear();
                "250 2.1.0 Ok".into()
            }
            "RCPT" => {
                let rcpt = path_of(&text);
                let scripted = st
                    .lock()
                    .unwrap()
                    .rcpt_replies
                    .get_mut(&rcpt)
                    .and_then(|q| q.pop_front());
                match scripted {
                    Some(r) => r,
                    None => {
                        rcpts.push(rcpt);
                        "250 2.1.5 Ok".into()
                    }
                }
            }
            "DATA" if rcpts.is_empty() => "554 5.5.1 Error: no valid recipients".into(),
            "DATA" => {
                wr.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut wire = Vec::new();
                loop {
                    line.clear();
                    if rd.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    wire.extend_from_slice(&line);
                }
                let mut message = Vec::with_capacity(wire.len());
                for l in wire.split_inclusive(|b| *b == b'\n') {
                    message.extend_from_slice(l.strip_prefix(b".").unwrap_or(l));
                }
                st.lock().unwrap().got.push(Received {
                    from: from.clone(),
                    rcpts: std::mem::take(&mut rcpts),
                    wire,
                    message,
                });
                "250 2.0.0 Ok: queued".into()
            }
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 Ok".into()
            }
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => {
                wr.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Error: command not recognized".into(),
        };
        wr.write_all(reply.as_bytes()).await?;
        wr.write_all(b"\r\n").await?;
    }
}
