//! The session's byte stream: lines with a length limit and a deadline, exact-size chunks (BDAT),
//! SMTP data with dot-unstuffing, and replies batched until the server would wait for input
//! (so pipelined commands get their replies in one write, RFC 2920).
//!
//! Data ends only at `<CRLF>.<CRLF>`: a line is a line only when it ends with CRLF, so a bare
//! `<LF>.<LF>` or `<CR>.<CR>` inside the data is data (SMTP smuggling).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::budget::Reservation;

/// Anything a session can run over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by the client")]
    Eof,
    #[error("timed out waiting for the client")]
    Timeout,
    #[error("the data budget has no room for this message's data")]
    OverBudget,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One line as read: its bytes with the terminator (cut short when over the limit).
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// The line was longer than the limit; `bytes` holds its start only.
    pub too_long: bool,
    /// The line ended with CRLF (not a bare LF).
    pub crlf: bool,
}

/// A message's data as received.
#[derive(Debug, Default)]
pub struct Data {
    pub bytes: Vec<u8>,
    /// More than the size limit came; `bytes` is incomplete and must not be delivered.
    pub too_big: bool,
    /// A line was longer than the line limit; the message must not be delivered.
    pub line_too_long: bool,
}

pub struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
}

impl Conn {
    pub fn new(io: Box<dyn Io>) -> Conn {
        Conn {
            io,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
        }
    }

    /// Queue a reply; it is sent before the server next waits for input, or on [`Conn::flush`].
    pub fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// Whether the client has sent bytes the server has not read yet.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end
    }

    /// Give up the stream (for the TLS handshake). Input already buffered is dropped: after
    /// STARTTLS nothing sent in the clear may be taken as a command.
    pub fn into_io(self) -> Box<dyn Io> {
        self.io
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// Read more input, flushing queued replies first (the client may be waiting for them).
    async fn fill(&mut self, deadline: Instant) -> Result<(), ReadError> {
        if !self.out.is_empty() {
            tokio::time::timeout_at(deadline, self.flush())
                .await
                .map_err(|_| ReadError::Timeout)??;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = tokio::time::timeout_at(deadline, self.io.read(&mut self.buf[self.end..]))
            .await
            .map_err(|_| ReadError::Timeout)??;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// Read one line ending with LF (the terminator is part of it). A line over `limit` bytes is
    /// consumed to its end but kept only in part, and marked `too_long`.
    pub async fn read_line(&mut self, limit: usize, deadline: Instant) -> Result<Line, ReadError> {
        let mut line = Vec::new();
        let mut too_long = false;
        let mut last_two = [0u8; 2];
        loop {
            let avail = &self.buf[self.start..self.end];
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            let piece = &avail[..take];
            if !piece.is_empty() {
                if piece.len() >= 2 {
                    last_two = [piece[piece.len() - 2], piece[piece.len() - 1]];
                } else {
                    last_two = [last_two[1], piece[0]];
                }
                let room = limit.saturating_sub(line.len());
                if piece.len() > room {
                    too_long = true;
                }
                line.extend_from_slice(&piece[..piece.len().min(room)]);
            }
            self.start += take;
            if done {
                return Ok(Line {
                    bytes: line,
                    too_long,
                    crlf: last_two == *b"\r\n",
                });
            }
            self.fill(deadline).await?;
        }
    }

    /// Read SMTP data after `354`: lines up to `<CRLF>.<CRLF>`, dot-unstuffed. Past `max_bytes`
    /// or a line over `max_line` the rest is read and dropped, so the session stays in step.
    /// `timeout` bounds each wait for more input. The buffer grows only inside `held`; when the
    /// budget has no room the read stops at once with [`ReadError::OverBudget`] (the rest of
    /// the data is still on the wire, so the session must close).
    pub async fn read_data(
        &mut self,
        max_bytes: usize,
        max_line: usize,
        timeout: Duration,
        held: &mut Reservation,
    ) -> Result<Data, ReadError> {
        let mut data = Data::default();
        // The data starts right after the CRLF of the DATA command.
        let mut at_line_start = true;
        loop {
            let line = self.read_line(max_line, Instant::now() + timeout).await?;
            if at_line_start && line.bytes == b".\r\n" {
                return Ok(data);
            }
            if line.too_long {
                data.line_too_long = true;
            }
            let content = if at_line_start && line.bytes.first() == Some(&b'.') {
                &line.bytes[1..]
            } else {
                &line.bytes[..]
            };
            if !data.too_big && !data.line_too_long {
                if data.bytes.len() + content.len() > max_bytes {
                    data.too_big = true;
                    data.bytes = Vec::new();
                } else if held.make_room(&mut data.bytes, content.len(), max_bytes) {
                    data.bytes.extend_from_slice(content);
                } else {
                    return Err(ReadError::OverBudget);
                }
            }
            at_line_start = line.crlf;
        }
    }

    /// Read exactly `n` bytes (a BDAT chunk) and append them to `into`'s buffer, or drop them
    /// when `into` is `None`. The buffer grows only inside its reservation, as the bytes come
    /// (a declared size claims nothing), up to its limit; when the budget has no room the read
    /// stops with [`ReadError::OverBudget`]. `timeout` bounds each wait for more input.
    pub async fn read_chunk(
        &mut self,
        mut n: usize,
        mut into: Option<(&mut Vec<u8>, &mut Reservation, usize)>,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        while n > 0 {
            if self.start == self.end {
                self.fill(Instant::now() + timeout).await?;
            }
            let take = n.min(self.end - self.start);
            if let Some((buf, held, max)) = into.as_mut() {
                if !held.make_room(buf, take, *max) {
                    return Err(ReadError::OverBudget);
                }
                buf.extend_from_slice(&self.buf[self.start..self.start + take]);
            }
            self.start += take;
            n -= take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn_with(input: &[u8]) -> Conn {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut client = client;
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        // Keep the client half alive inside the task so the server end sees the bytes then EOF.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        Conn::new(Box::new(server))
    }

    fn plenty() -> Reservation {
        crate::budget::Budget::new(1 << 30).reservation()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn lines_and_their_terminators() {
        let mut c = conn_with(b"EHLO a\r\nNOOP\nxyz").await;
        let l = c.read_line(100, later()).await.unwrap();
        assert_eq!(
            (l.bytes.as_slice(), l.crlf, l.too_long),
            (&b"EHLO a\r\n"[..], true, false)
        );
        let l = c.read_line(100, later()).await.unwrap();
        assert_eq!((l.bytes.as_slice(), l.crlf), (&b"NOOP\n"[..], false));
        assert!(matches!(
            c.read_line(100, later()).await,
            Err(ReadError::Eof)
        ));
    }

    #[tokio::test]
    async fn a_long_line_is_consumed_and_marked() {
        let mut input = vec![b'a'; 5000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut c = conn_with(&input).await;
        let l = c.read_line(100, later()).await.unwrap();
        assert!(l.too_long && l.crlf);
        assert_eq!(l.bytes.len(), 100);
        let l = c.read_line(100, later()).await.unwrap();
        assert_eq!(l.bytes, b"NOOP\r\n");
    }

    #[tokio::test]
    async fn data_is_unstuffed_and_ends_only_at_crlf_dot_crlf() {
        let mut c = conn_with(b"a\r\n..b\r\nc\n.\nd\r.\re\r\n.\n\r\n.x\r\n.\r\nNOOP\r\n").await;
        let d = c
            .read_data(1 << 20, 1000, Duration::from_secs(5), &mut plenty())
            .await
            .unwrap();
        assert_eq!(d.bytes, b"a\r\n.b\r\nc\n.\nd\r.\re\r\n\n\r\nx\r\n");
        assert!(!d.too_big && !d.line_too_long);
        let l = c.read_line(100, later()).await.unwrap();
        assert_eq!(l.bytes, b"NOOP\r\n");
    }

    #[tokio::test]
    async fn too_much_data_is_read_to_its_end_and_dropped() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(&[b'x'; 98]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let mut c = conn_with(&input).await;
        let d = c
            .read_data(5000, 1000, Duration::from_secs(5), &mut plenty())
            .await
            .unwrap();
        assert!(d.too_big && d.bytes.is_empty());
        assert_eq!(c.read_line(100, later()).await.unwrap().bytes, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn data_past_the_budget_stops_the_read() {
        let budget = crate::budget::Budget::new(10_000);
        let mut other = budget.reservation();
        assert!(other.grow_to(4_000));
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(&[b'x'; 98]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let mut c = conn_with(&input).await;
        let mut held = budget.reservation();
        let r = c
            .read_data(1 << 20, 1000, Duration::from_secs(5), &mut held)
            .await;
        assert!(matches!(r, Err(ReadError::OverBudget)), "{r:?}");
        assert!(held.held() <= 6_000 && budget.used() <= 10_000);
        drop(held);
        assert_eq!(budget.used(), 4_000);
        // With room, the same data is read whole.
        drop(other);
        let mut c = conn_with(&input).await;
        let mut held = budget.reservation();
        let d = c
            .read_data(1 << 20, 1000, Duration::from_secs(5), &mut held)
            .await
            .unwrap();
        assert_eq!(d.bytes.len(), 10_000);
        assert!(held.held() >= d.bytes.capacity());
    }

    #[tokio::test]
    async fn chunks_are_exact() {
        let mut c = conn_with(b"0123456789BDAT").await;
        let mut v = Vec::new();
        let mut held = plenty();
        let t = Duration::from_secs(5);
        c.read_chunk(4, Some((&mut v, &mut held, 100)), t)
            .await
            .unwrap();
        c.read_chunk(3, None, t).await.unwrap();
        c.read_chunk(3, Some((&mut v, &mut held, 100)), t)
            .await
            .unwrap();
        assert_eq!(v, b"0123789");
        assert!(held.held() >= v.capacity());
        assert!(c.has_buffered_input());
    }
}
