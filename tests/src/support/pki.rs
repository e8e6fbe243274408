//! The test HCUs' certificate authority: one per test process, held in memory. Every process the
//! harness starts gets a certificate naming its role and instance, written under its own
//! directory (so it goes when the process's directory does), and the harness's own clients call
//! as an operator with a certificate of the same authority.

use std::path::Path;
use std::sync::OnceLock;

use xfs::tls::issue::Authority;
use xfs::tls::{InternalTls, Tls};
use xfs::{Identity, Role, Transport};

/// The authority of every test HCU in this process.
pub fn authority() -> &'static Authority {
    static CA: OnceLock<Authority> = OnceLock::new();
    CA.get_or_init(|| Authority::create("megamail test authority").expect("a test authority"))
}

/// `[internal-tls]` for the instance `name` of `role`, its files written into `dir/certs`.
pub fn internal_tls(dir: &Path, role: Role, name: &str) -> InternalTls {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("creating a certs directory");
    std::fs::write(certs.join("ca.pem"), authority().cert_pem()).expect("writing ca.pem");
    authority()
        .write_identity(&certs, role, name)
        .expect("issuing a test certificate")
}

/// An identity held in memory, for the harness's own clients (and for tests that call as some
/// other role on purpose).
pub fn identity(role: Role, name: &str) -> Identity {
    let pems = authority()
        .pems(role, name)
        .expect("issuing a test certificate");
    Identity {
        role,
        name: name.to_string(),
        transport: Transport::Tls(Tls::from_pems(&pems, role).expect("a test identity")),
    }
}

/// The harness calling as an operator.
pub fn operator() -> Identity {
    static OPERATOR: OnceLock<Identity> = OnceLock::new();
    OPERATOR
        .get_or_init(|| identity(Role::Operator, "test"))
        .clone()
}

/// A raw connection to the server at `addr`, which must prove it is a `server`, through the TLS
/// handshake as `who`: for tests that speak the frames by hand (an authenticated peer sending
/// garbage is the worst a network can do once TLS is on).
pub async fn raw_tls(
    addr: std::net::SocketAddr,
    who: &Identity,
    server: Role,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let Transport::Tls(tls) = &who.transport else {
        panic!("raw_tls needs a TLS identity");
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    tls.connect(tcp, server).await.expect("the TLS handshake")
}
