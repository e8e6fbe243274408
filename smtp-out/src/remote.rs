//! Delivery to the rest of the world: one message to the recipients it has at one domain, over
//! SMTP to the domain's mail exchangers in preference order.
//!
//! With a relay (`[relay]`), every message goes to it instead, over TLS only, signed in with
//! AUTH when a user is configured.
//!
//! STARTTLS is used whenever a server offers it. No policy (MTA-STS) is enforced yet, so the
//! certificate is not checked (opportunistic TLS, RFC 7435), and a server whose TLS handshake
//! fails is tried again on a new connection without TLS, as Postfix's `may` level does.
//! Sessions are kept open for a few seconds after a message and reused for the next message to
//! the same domain, so a burst to one domain pays for one connection and one handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::client::{self, Client, Outcome, Timeouts};
use crate::mx::{Host, Resolver};

/// How long an idle session is kept for the next message to its domain.
const IDLE_KEEP: Duration = Duration::from_secs(5);
/// Idle sessions kept per domain.
const IDLE_PER_DOMAIN: usize = 4;

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered(String),
    /// Refused for good (5xx, or a domain that takes no mail).
    Failed(String),
    /// Not this time (4xx, no answer, a lookup that failed for now).
    Deferred(String),
}

/// A session with one server, with or without TLS.
enum Session {
    Plain(Box<Client<TcpStream>>),
    Tls(Box<Client<TlsStream<TcpStream>>>),
}

impl Session {
    async fn send(
        &mut self,
        from: &str,
        rcpts: &[String],
        body: &[u8],
    ) -> Result<client::Sent, client::Error> {
        match self {
            Session::Plain(c) => c.send(from, rcpts, body).await,
            Session::Tls(c) => c.send(from, rcpts, body).await,
        }
    }

    fn is_broken(&self) -> bool {
        match self {
            Session::Plain(c) => c.is_broken(),
            Session::Tls(c) => c.is_broken(),
        }
    }

    async fn quit(self) {
        let _ = match self {
            Session::Plain(c) => c.quit().await,
            Session::Tls(c) => c.quit().await,
        };
    }
}

/// The smarthost every remote message goes through (`[relay]`): TLS is required of it, and
/// with a user the session signs in before its first message.
pub struct Relay {
    /// User name and password, when it asks for AUTH.
    login: Option<(String, String)>,
    /// Verifying when a CA file is configured.
    tls: TlsConnector,
}

impl Relay {
    pub fn from_config(cfg: &role_config::smtp_out::RelayConfig) -> anyhow::Result<Relay> {
        use anyhow::Context as _;
        use rustls_pki_types::pem::PemObject as _;
        let login = if cfg.user.is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&cfg.password_file)
                .with_context(|| format!("relay.password-file {}", cfg.password_file.display()))?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                anyhow::bail!(
                    "relay.password-file {} is empty",
                    cfg.password_file.display()
                );
            }
            Some((cfg.user.clone(), password))
        };
        let tls = if cfg.ca_file.as_os_str().is_empty() {
            client::opportunistic_connector()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&cfg.ca_file)
                .with_context(|| format!("relay.ca-file {}", cfg.ca_file.display()))?;
            for cert in certs {
                let cert =
                    cert.with_context(|| format!("relay.ca-file {}", cfg.ca_file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("relay.ca-file: {e}"))?;
            }
            client::verifying_connector(roots)
        }
        .map_err(|e| anyhow::anyhow!("the relay's TLS client: {e}"))?;
        Ok(Relay { login, tls })
    }
}

/// Sends to remote domains; shared by every delivery task of a worker.
pub struct Remote {
    resolver: Resolver,
    hello: String,
    timeouts: Timeouts,
    connect_timeout: Duration,
    tls: TlsConnector,
    relay: Option<Relay>,
    idle: Mutex<HashMap<String, Vec<(Instant, Session)>>>,
}

impl Remote {
    pub fn new(
        resolver: Resolver,
        hello: String,
        timeouts: Timeouts,
        connect_timeout: Duration,
        relay: Option<Relay>,
    ) -> anyhow::Result<Remote> {
        Ok(Remote {
            resolver,
            hello,
            timeouts,
            connect_timeout,
            tls: client::opportunistic_connector()
                .map_err(|e| anyhow::anyhow!("the TLS client: {e}"))?,
            relay,
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// Send `body` from `from` to `rcpts`, all at `domain`: one verdict per recipient, in order.
    pub async fn send(
        &self,
        domain: &str,
        from: &str,
        rcpts: &[String],
        body: &[u8],
    ) -> Vec<Verdict> {
        let all = |v: Verdict| vec![v; rcpts.len()];
        // A session kept from the last message to this domain goes first.
        while let Some(mut session) = self.take_idle(domain) {
            match session.send(from, rcpts, body).await {
                Ok(sent) => {
                    self.keep(domain, session);
                    return verdicts(&sent);
                }
                // A kept session that fails before the data is simply stale: open a new one.
                Err(e) if !e.is_permanent() => continue,
                Err(e) => return all(Verdict::Failed(reason(&e))),
            }
        }
        let hosts = match self.resolver.route(domain).await {
            Ok(h) => h,
            Err(e) if e.is_permanent() => return all(Verdict::Failed(format!("5.1.2 {e}"))),
            Err(e) => return all(Verdict::Deferred(format!("4.4.3 {e}"))),
        };
        let mut last = format!("4.4.1 no mail exchanger of {domain} could be reached");
        for host in &hosts {
            for addr in host.socket_addrs() {
                let mut session = match self.open(host, addr).await {
                    Ok(s) => s,
                    Err(why) => {
                        tracing::debug!(%domain, %addr, %why, "mail exchanger not usable");
                        last = why;
                        continue;
                    }
                };
                match session.send(from, rcpts, body).await {
                    Ok(sent) => {
                        self.keep(domain, session);
                        return verdicts(&sent);
                    }
                    Err(e) if e.is_permanent() => return all(Verdict::Failed(reason(&e))),
                    Err(e) => {
                        tracing::debug!(%domain, %addr, error = %e, "delivery attempt failed");
                        last = reason(&e);
                    }
                }
            }
        }
        all(Verdict::Deferred(last))
    }

    /// A session with `host` at `addr`: with TLS when offered, without it when the handshake
    /// fails.
    async fn open(&self, host: &Host, addr: SocketAddr) -> Result<Session, String> {
        let plain = self.connect(addr).await?;
        if let Some(relay) = &self.relay {
            return self.open_relay(relay, host, addr, plain).await;
        }
        if !plain.extensions().starttls {
            return Ok(Session::Plain(Box::new(plain)));
        }
        let name = ServerName::try_from(host.name.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        match plain.starttls(&self.tls, name).await {
            Ok(tls) => Ok(Session::Tls(Box::new(tls))),
            Err(e) => {
                tracing::info!(host = %host.name, %addr, error = %e,
                    "STARTTLS failed; trying again without TLS");
                Ok(Session::Plain(Box::new(self.connect(addr).await?)))
            }
        }
    }

    /// A session with the relay: TLS or nothing, then AUTH when configured. Every failure is
    /// temporary (a relay that refuses our password today is a configuration to fix, not a
    /// reason to bounce the mail).
    async fn open_relay(
        &self,
        relay: &Relay,
        host: &Host,
        addr: SocketAddr,
        plain: Client<TcpStream>,
    ) -> Result<Session, String> {
        if !plain.extensions().starttls {
            return Err(format!(
                "4.7.10 the relay {addr} does not offer STARTTLS, which it must"
            ));
        }
        let name = ServerName::try_from(host.name.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let mut tls = plain
            .starttls(&relay.tls, name)
            .await
            .map_err(|e| format!("4.7.10 TLS with the relay {addr}: {e}"))?;
        if let Some((user, password)) = &relay.login {
            tls.auth(user, password).await.map_err(|e| {
                tracing::warn!(%addr, %user, error = %e, "the relay refused to sign us in");
                format!("4.7.0 signing in to the relay {addr} as {user}: {e}")
            })?;
        }
        Ok(Session::Tls(Box::new(tls)))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Client<TcpStream>, String> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Err(_) => return Err(format!("4.4.1 connecting to {addr} timed out")),
                Ok(Err(e)) => return Err(format!("4.4.1 connecting to {addr}: {e}")),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        Client::connect(stream, &self.hello, self.timeouts)
            .await
            .map_err(|e| format!("{} (at {addr})", reason(&e)))
    }

    fn take_idle(&self, domain: &str) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(domain)?;
        while let Some((at, s)) = list.pop() {
            if at.elapsed() < IDLE_KEEP && !s.is_broken() {
                return Some(s);
            }
        }
        None
    }

    fn keep(&self, domain: &str, session: Session) {
        if session.is_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(domain.to_string()).or_default();
        list.retain(|(at, _)| at.elapsed() < IDLE_KEEP);
        if list.len() < IDLE_PER_DOMAIN {
            list.push((Instant::now(), session));
        }
    }

    /// Close the sessions idle longer than they are kept (called now and then).
    pub async fn close_idle(&self) {
        let stale: Vec<Session> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (old, fresh): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(at, _)| at.elapsed() >= IDLE_KEEP);
                *list = fresh;
                out.extend(old.into_iter().map(|(_, s)| s));
            }
            idle.retain(|_, l| !l.is_empty());
            out
        };
        for s in stale {
            s.quit().await;
        }
    }
}

/// One verdict per recipient from a transaction's result.
fn verdicts(sent: &client::Sent) -> Vec<Verdict> {
    sent.outcomes()
        .map(|o| match o {
            Outcome::Delivered(r) => Verdict::Delivered(r.to_string()),
            Outcome::Failed(r) if r.is_permanent() => Verdict::Failed(r.to_string()),
            Outcome::Failed(r) => Verdict::Deferred(r.to_string()),
        })
        .collect()
}

/// How an error reads in a report: the server's reply when there is one.
fn reason(e: &client::Error) -> String {
    match e.reply() {
        Some(r) => r.to_string(),
        None if e.is_permanent() => format!("5.0.0 {e}"),
        None => format!("4.4.2 {e}"),
    }
}
