//! Binding a role's listeners, and the descriptor limit a server with many connections needs.

use std::net::SocketAddr;

use anyhow::Context as _;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections the kernel may hold for a listener before it accepts them (capped by
/// `net.core.somaxconn`). A burst of clients must not overflow it: a handshake completed by a SYN
/// cookie into a full queue leaves the client waiting on a connection the server never sees.
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, so a restarted process gets its
/// port back at once).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Bind a role's service address (`what` names it in errors: "SMTP", "XFS", ...) and its admin
/// address.
pub async fn bind_pair(
    what: &str,
    service: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<(TcpListener, TcpListener)> {
    let s = listen(service).with_context(|| format!("binding {what} on {service}"))?;
    let a = listen(admin).with_context(|| format!("binding the admin port on {admin}"))?;
    Ok((s, a))
}

/// Raise this process's soft limit on open descriptors to its hard limit (every connection is
/// one; children inherit it).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local, initialized struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The next connection of `listener`, with Nagle off. A failed accept (out of descriptors and the
/// like) is logged and waited out briefly instead of spinning.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stream.set_nodelay(true).ok();
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
