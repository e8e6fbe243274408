//! The one small HTTP/1.1 client every process and tool uses for admin ports, health probes and
//! loopback APIs: one request per connection, `Connection: close`, the answer read to its end
//! (at most [`MAX_ANSWER`] bytes) within a time limit.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read; a longer one is an error.
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// An answer: status, headers (names lowercased), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "answer {} is not JSON: {}",
                self.status,
                String::from_utf8_lossy(self.body.get(..200).unwrap_or(&self.body))
            )
        })
    }
}

/// Split `http://host:port/path` into the address and the path.
pub fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}`: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .parse()
        .with_context(|| format!("`{url}`: the host must be an IP address and port"))?;
    Ok((addr, path.to_string()))
}

/// Send one request and read the whole answer within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Answer> {
    request_to(
        &addr.to_string(),
        &addr.to_string(),
        method,
        path,
        headers,
        body,
        timeout,
    )
    .await
}

/// [`request`] to `connect` (`host:port`, a name or an address) with `host` as the `Host`.
pub async fn request_to(
    connect: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Answer> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(connect)
            .await
            .with_context(|| format!("connecting to {connect}"))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut raw = Vec::new();
        (&mut s).take(MAX_ANSWER + 1).read_to_end(&mut raw).await?;
        if raw.len() as u64 > MAX_ANSWER {
            bail!("the answer from {connect} is over {MAX_ANSWER} bytes");
        }
        parse(&raw)
    })
    .await
    .with_context(|| format!("no answer from {connect} within {timeout:?}"))?
}

/// A GET with no headers of our own.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Answer> {
    request(addr, "GET", path, &[], b"", timeout).await
}

fn parse(raw: &[u8]) -> anyhow::Result<Answer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..i]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        b = &b[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_plain_and_chunked() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(a.header("content-type"), Some("text/plain"));
        let c = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((c.status, c.body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse(b"garbage").is_err());
    }

    #[test]
    fn urls() {
        let (a, p) = split_url("http://127.0.0.1:8080/api/v1/session").unwrap();
        assert_eq!((a.port(), p.as_str()), (8080, "/api/v1/session"));
        assert_eq!(split_url("http://127.0.0.1:8081").unwrap().1, "/");
        assert!(split_url("https://x").is_err());
    }
}
