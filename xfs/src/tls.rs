//! Who is on the other end of an internal connection: mutual TLS between the roles of an HCU.
//!
//! An HCU has its own certificate authority. Each process holds a certificate that names its role
//! and its instance as DNS names under [`DOMAIN`]: `ustore.hcu` and `store-1.ustore.hcu` for the
//! store `store-1`. Both sides check the other's certificate against the trusted authorities:
//!
//! - a client asks for the server name of the role it means to reach (`ustore.hcu` for a store,
//!   `mserv.hcu` for an index replica), so standard name checking proves the server's role;
//! - a server requires a client certificate, finds the one role it names ([`role_of`]), and
//!   checks the instance name the client claims in its hello against it.
//!
//! The trust file may hold several authorities: while one is replaced, both are trusted. A
//! process reloads its certificate, key and trust file when any of them changes on disk (checked
//! at most once a second, when a connection is made), so rotation needs no restart; a reload that
//! fails keeps what was loaded and says so in the log.
//!
//! [`Transport::Plaintext`] exists to measure what TLS costs and for tests that say so: no
//! handshake, and the role is whatever the client claims. A role's config must ask for it by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// The DNS suffix of every name an HCU certificate carries.
pub const DOMAIN: &str = "hcu";

/// What a process is, as its certificate says: what it may ask of others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Ustore,
    Mserv,
    Frontdoor,
    Login,
    SmtpIn,
    SmtpOut,
    Operator,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Ustore,
        Role::Mserv,
        Role::Frontdoor,
        Role::Login,
        Role::SmtpIn,
        Role::SmtpOut,
        Role::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ustore => "ustore",
            Role::Mserv => "mserv",
            Role::Frontdoor => "frontdoor",
            Role::Login => "login",
            Role::SmtpIn => "smtp-in",
            Role::SmtpOut => "smtp-out",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The name every certificate of this role carries (`ustore.hcu`).
    pub fn dns_name(self) -> String {
        format!("{}.{DOMAIN}", self.as_str())
    }

    /// The name of one instance (`store-1.ustore.hcu`).
    pub fn instance_name(self, name: &str) -> String {
        format!("{name}.{}", self.dns_name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `true` for a name that can be an instance's DNS label: 1 to 63 of `a-z`, `0-9`, `-`, not
/// starting or ending with `-`.
pub fn valid_instance_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Who called, as a server knows it once the hello is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub addr: SocketAddr,
    pub role: Role,
    /// The instance (`store-1`, `frontdoor-2`, `mailctl`).
    pub name: String,
    /// Proven by a certificate; `false` only on a plaintext transport.
    pub proven: bool,
}

/// A role config's `[internal-tls]` section: the files of this process's identity, or
/// `plaintext = true` (no TLS, identities claimed: only to measure TLS's cost, and in tests).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct InternalTls {
    /// This process's instance name (`store-1`): what its hellos claim and its certificate names.
    pub name: String,
    /// The trusted authorities (PEM; several while one is rotated).
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    pub plaintext: bool,
}

impl InternalTls {
    /// The files `issue::Authority::write_identity` writes for `name` in `dir`.
    pub fn files(dir: &Path, name: &str) -> InternalTls {
        InternalTls {
            name: name.to_string(),
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}.key"))),
            plaintext: false,
        }
    }

    pub fn plaintext(name: &str) -> InternalTls {
        InternalTls {
            name: name.to_string(),
            plaintext: true,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !valid_instance_name(&self.name) {
            return Err(format!(
                "internal-tls: name {:?} must be 1 to 63 of a-z, 0-9 and - (this instance's name)",
                self.name
            ));
        }
        let all = self.ca.is_some() && self.cert.is_some() && self.key.is_some();
        let none = self.ca.is_none() && self.cert.is_none() && self.key.is_none();
        match (self.plaintext, all, none) {
            (false, true, _) | (true, _, true) => Ok(()),
            (true, _, false) => Err("internal-tls: plaintext = true takes no ca, cert or key".into()),
            (false, _, _) => Err(
                "internal-tls: set ca, cert and key (or plaintext = true, which trusts every caller)"
                    .into(),
            ),
        }
    }

    /// Who this process is when it calls others, as a `role`.
    pub fn identity(&self, role: Role) -> Result<Identity, String> {
        Ok(Identity {
            role,
            name: self.name.clone(),
            transport: self.transport(role)?,
        })
    }

    /// The transport of a process of `role` (whose certificate must name that role).
    pub fn transport(&self, role: Role) -> Result<Transport, String> {
        self.validate()?;
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => {
                let files = Files {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                };
                Ok(Transport::Tls(Tls::load(files, role)?))
            }
            _ => {
                tracing::warn!(
                    %role,
                    "internal connections in plaintext: every caller is trusted as what it claims"
                );
                Ok(Transport::Plaintext)
            }
        }
    }
}

/// How a process makes and takes internal connections.
#[derive(Clone)]
pub enum Transport {
    /// Mutual TLS: every peer's role is proven by its certificate.
    Tls(Arc<Tls>),
    /// No TLS; a caller is what it claims.
    Plaintext,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tls(t) => write!(f, "Tls({})", t.role),
            Transport::Plaintext => f.write_str("Plaintext"),
        }
    }
}

/// Who a process is when it calls others: its role, its instance, and how it connects.
#[derive(Debug, Clone)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub transport: Transport,
}

impl Identity {
    /// A caller that claims `role` over plaintext (tests, and measuring TLS's cost).
    pub fn plaintext(role: Role, name: impl Into<String>) -> Identity {
        Identity {
            role,
            name: name.into(),
            transport: Transport::Plaintext,
        }
    }

    /// An operator tool's identity: the certificate `name` in `certs` (as `mailctl certs issue
    /// --role operator --name NAME --out DIR` writes it), or plaintext without a directory.
    pub fn operator(certs: Option<&Path>, name: &str) -> Result<Identity, String> {
        match certs {
            Some(dir) => InternalTls::files(dir, name).identity(Role::Operator),
            None => Ok(Identity::plaintext(Role::Operator, name)),
        }
    }
}

/// The read half of a connection, TLS or not.
pub type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
/// The write half of a connection, TLS or not.
pub type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// A plain TCP connection's halves (owned, no lock between them).
pub fn split_tcp(tcp: TcpStream) -> (Reader, Writer) {
    let (r, w) = tcp.into_split();
    (Box::new(r), Box::new(w))
}

/// A TLS connection's halves.
pub fn split_tls<S>(s: S) -> (Reader, Writer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

/// Paths of one identity.
#[derive(Debug, Clone)]
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// What the files looked like when loaded: a change in any means reload.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &Files) -> Stamp {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The PEM texts of one identity.
#[derive(Clone)]
pub struct Pems {
    /// One or more trusted authorities.
    pub ca: String,
    pub cert: String,
    pub key: String,
}

struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

struct State {
    loaded: Arc<Loaded>,
    stamp: Stamp,
    checked: Instant,
}

/// One process's TLS identity and trust, reloaded when its files change.
pub struct Tls {
    role: Role,
    files: Option<Files>,
    state: Mutex<State>,
}

/// How often the files are looked at, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(certs)
}

/// The one role a certificate names (`<role>.hcu`), or why there is none.
pub fn role_of(cert: &CertificateDer<'_>) -> Result<Role, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("certificate: {e:?}"))?;
    let roles: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| names(&ee, &r.dns_name()))
        .collect();
    match roles.as_slice() {
        [one] => Ok(*one),
        [] => Err("the certificate names no role".into()),
        _ => Err("the certificate names more than one role".into()),
    }
}

/// Whether a certificate carries the instance name `name` of `role`.
pub fn names_instance(cert: &CertificateDer<'_>, role: Role, name: &str) -> bool {
    valid_instance_name(name)
        && webpki::EndEntityCert::try_from(cert)
            .is_ok_and(|ee| names(&ee, &role.instance_name(name)))
}

fn names(ee: &webpki::EndEntityCert<'_>, dns: &str) -> bool {
    ServerName::try_from(dns.to_string())
        .is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
}

fn build(pems: &Pems, role: Role) -> Result<Loaded, String> {
    let mut roots = RootCertStore::empty();
    for ca in certs(&pems.ca, "trusted authorities")? {
        roots
            .add(ca)
            .map_err(|e| format!("trusted authorities: {e}"))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&pems.cert, "certificate")?;
    let own = role_of(&chain[0])?;
    if own != role {
        return Err(format!(
            "the certificate is a {own}'s, and this process is a {role}"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pems.key.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("certificate and key: {e}"))?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

fn read(files: &Files) -> Result<Pems, String> {
    let text = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok(Pems {
        ca: text(&files.ca)?,
        cert: text(&files.cert)?,
        key: text(&files.key)?,
    })
}

impl Tls {
    /// The identity in these files, for a process of `role`.
    fn load(files: Files, role: Role) -> Result<Arc<Tls>, String> {
        let stamp = stamp(&files);
        let loaded = build(&read(&files)?, role)?;
        Ok(Arc::new(Tls {
            role,
            files: Some(files),
            state: Mutex::new(State {
                loaded: Arc::new(loaded),
                stamp,
                checked: Instant::now(),
            }),
        }))
    }

    /// An identity held in memory (never reloaded).
    pub fn from_pems(pems: &Pems, role: Role) -> Result<Arc<Tls>, String> {
        let loaded = build(pems, role)?;
        Ok(Arc::new(Tls {
            role,
            files: None,
            state: Mutex::new(State {
                loaded: Arc::new(loaded),
                stamp: Vec::new(),
                checked: Instant::now(),
            }),
        }))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// What to use for a new connection: reloaded first if the files changed.
    fn current(&self) -> Arc<Loaded> {
        let mut st = lock(&self.state);
        if let Some(files) = &self.files {
            if st.checked.elapsed() >= RELOAD_CHECK {
                st.checked = Instant::now();
                let now = stamp(files);
                if now != st.stamp {
                    match read(files).and_then(|p| build(&p, self.role)) {
                        Ok(loaded) => {
                            tracing::info!(cert = %files.cert.display(), "TLS identity reloaded");
                            st.loaded = Arc::new(loaded);
                            st.stamp = now;
                        }
                        Err(e) => {
                            // Half-written files are the usual cause: try again next time.
                            tracing::warn!(error = %e, "TLS identity not reloaded, keeping the one loaded");
                        }
                    }
                }
            }
        }
        st.loaded.clone()
    }

    /// Reload now if the files changed (what the next connection would do after a second).
    pub fn check_reload(&self) {
        lock(&self.state).checked = Instant::now() - RELOAD_CHECK;
        self.current();
    }

    /// The server side of a handshake; the role the client's certificate names.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<TcpStream>,
            Role,
            CertificateDer<'static>,
        ),
        String,
    > {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server.clone());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| "no TLS handshake in time".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or_else(|| "no client certificate".to_string())?;
        let role = role_of(&cert)?;
        Ok((stream, role, cert))
    }

    /// The client side of a handshake with a server that must be a `server`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        server: Role,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let connector = tokio_rustls::TlsConnector::from(self.current().client.clone());
        let name = ServerName::try_from(server.dns_name()).map_err(|e| e.to_string())?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| "no TLS handshake in time".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}

/// Making an authority and the identities it signs (`mailctl up`, `mailctl certs issue`, tests).
#[cfg(any(test, feature = "issue"))]
pub mod issue {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// How long an issued certificate is valid.
    pub const LEAF_DAYS: i64 = 825;
    /// How long an authority is valid.
    pub const CA_DAYS: i64 = 3650;

    /// A certificate authority: its certificate, key and name.
    pub struct Authority {
        name: String,
        key: KeyPair,
        cert_pem: String,
    }

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn validity(p: &mut CertificateParams, days: i64) {
        let now = time::OffsetDateTime::now_utc();
        // An hour back, for clocks that differ a little between machines.
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
    }

    impl Authority {
        /// A new authority called `name` (its certificate's common name).
        pub fn create(name: &str) -> Result<Authority, String> {
            let key = KeyPair::generate().map_err(err)?;
            let mut p = ca_params(name);
            validity(&mut p, CA_DAYS);
            let cert_pem = p.self_signed(&key).map_err(err)?.pem();
            Ok(Authority {
                name: name.to_string(),
                key,
                cert_pem,
            })
        }

        pub fn cert_pem(&self) -> &str {
            &self.cert_pem
        }

        /// A certificate and key for the instance `name` of `role`.
        pub fn issue(&self, role: Role, name: &str) -> Result<(String, String), String> {
            if !valid_instance_name(name) {
                return Err(format!(
                    "{name:?} cannot name an instance: use 1 to 63 of a-z, 0-9 and -"
                ));
            }
            let key = KeyPair::generate().map_err(err)?;
            let mut p = CertificateParams::new(vec![role.dns_name(), role.instance_name(name)])
                .map_err(err)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, role.instance_name(name));
            p.distinguished_name = dn;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut p, LEAF_DAYS);
            let issuer = Issuer::new(ca_params(&self.name), &self.key);
            let cert = p.signed_by(&key, &issuer).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        }

        /// An identity in memory, trusting this authority.
        pub fn pems(&self, role: Role, name: &str) -> Result<Pems, String> {
            let (cert, key) = self.issue(role, name)?;
            Ok(Pems {
                ca: self.cert_pem.clone(),
                cert,
                key,
            })
        }

        /// The authority kept in `dir` (`authority.pem`, `authority.key`, `authority.name`).
        pub fn load(dir: &Path) -> Result<Authority, String> {
            let text =
                |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"));
            let key = KeyPair::from_pem(&text("authority.key")?).map_err(err)?;
            Ok(Authority {
                name: text("authority.name")?.trim().to_string(),
                key,
                cert_pem: text("authority.pem")?,
            })
        }

        /// Keep this authority in `dir` (its key readable by the owner only), and make it the
        /// trusted one (`ca.pem`) unless a trust file is there already.
        pub fn save(&self, dir: &Path) -> Result<(), String> {
            std::fs::create_dir_all(dir).map_err(err)?;
            write_private(&dir.join("authority.key"), &self.key.serialize_pem())?;
            write_file(&dir.join("authority.name"), &self.name)?;
            write_file(&dir.join("authority.pem"), &self.cert_pem)?;
            if !dir.join("ca.pem").exists() {
                write_file(&dir.join("ca.pem"), &self.cert_pem)?;
            }
            Ok(())
        }

        /// The authority in `dir`, made there first if there is none.
        pub fn open_or_create(dir: &Path, name: &str) -> Result<Authority, String> {
            if dir.join("authority.key").exists() {
                return Authority::load(dir);
            }
            let ca = Authority::create(name)?;
            ca.save(dir)?;
            Ok(ca)
        }

        /// Write `name`'s certificate and key into `dir` (beside its `ca.pem`, which must be
        /// there), replacing any before; the config section that names them.
        pub fn write_identity(
            &self,
            dir: &Path,
            role: Role,
            name: &str,
        ) -> Result<InternalTls, String> {
            let (cert, key) = self.issue(role, name)?;
            let files = InternalTls::files(dir, name);
            if let (Some(c), Some(k)) = (&files.cert, &files.key) {
                // The key first: a reload that sees the new certificate finds its key.
                write_private(k, &key)?;
                write_file(c, &cert)?;
            }
            Ok(files)
        }
    }

    fn write_file(path: &Path, text: &str) -> Result<(), String> {
        write_mode(path, text, 0o644)
    }

    /// Write a file only its owner can read (keys, secrets, configs holding them), whole.
    pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
        write_mode(path, text, 0o600)
    }

    /// Written whole and renamed into place, so a reader never sees half a file; the temporary
    /// name is this process's own, so processes writing the same file do not collide.
    fn write_mode(path: &Path, text: &str, mode: u32) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::issue::Authority;
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A handshake between a client of `client` and a server of `server`: the role the server
    /// saw, or the first side's error.
    async fn handshake(client: &Tls, server: &Tls, expect: Role) -> Result<Role, String> {
        let (c, s) = pair().await;
        let (cr, sr) = tokio::join!(client.connect(c, expect), server.accept(s));
        cr?;
        sr.map(|(_, role, _)| role)
    }

    #[test]
    fn roles_and_names() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::SmtpIn.instance_name("smtp-in"), "smtp-in.smtp-in.hcu");
        assert!(valid_instance_name("store-1"));
        for bad in ["", "-a", "a-", "A", "a.b", "a b", &"x".repeat(64)] {
            assert!(!valid_instance_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_config_names_all_three_files_or_plaintext() {
        assert!(InternalTls::default().validate().is_err());
        assert!(InternalTls::plaintext("fd-1").validate().is_ok());
        assert!(InternalTls::plaintext("Fd 1").validate().is_err());
        let files = InternalTls::files(Path::new("certs"), "store-1");
        assert!(files.validate().is_ok());
        let half = InternalTls {
            key: None,
            ..files.clone()
        };
        assert!(half.validate().is_err());
        let both = InternalTls {
            plaintext: true,
            ..files
        };
        assert!(both.validate().is_err());
    }

    #[tokio::test]
    async fn mutual_tls_proves_both_roles() {
        let ca = Authority::create("test authority").unwrap();
        let store =
            Tls::from_pems(&ca.pems(Role::Ustore, "store-1").unwrap(), Role::Ustore).unwrap();
        let door =
            Tls::from_pems(&ca.pems(Role::Frontdoor, "fd-1").unwrap(), Role::Frontdoor).unwrap();
        assert_eq!(
            handshake(&door, &store, Role::Ustore).await,
            Ok(Role::Frontdoor)
        );
        // A client that means to reach an index replica does not accept a store.
        assert!(handshake(&door, &store, Role::Mserv).await.is_err());
        // A certificate names its instance and no other.
        let pems = ca.pems(Role::Frontdoor, "fd-1").unwrap();
        let der = certs(&pems.cert, "c").unwrap().remove(0);
        assert!(names_instance(&der, Role::Frontdoor, "fd-1"));
        assert!(!names_instance(&der, Role::Frontdoor, "fd-2"));
        assert!(!names_instance(&der, Role::Operator, "fd-1"));
        // A process refuses a certificate of another role than its own.
        assert!(Tls::from_pems(&pems, Role::Operator).is_err());
    }

    #[tokio::test]
    async fn another_authority_or_no_certificate_is_refused_at_the_handshake() {
        let ca = Authority::create("ours").unwrap();
        let other = Authority::create("theirs").unwrap();
        let store =
            Tls::from_pems(&ca.pems(Role::Ustore, "store-1").unwrap(), Role::Ustore).unwrap();
        let stranger =
            Tls::from_pems(&other.pems(Role::Operator, "x").unwrap(), Role::Operator).unwrap();
        assert!(handshake(&stranger, &store, Role::Ustore).await.is_err());
        // No TLS at all: the server gives up on the handshake.
        let (mut c, s) = pair().await;
        let server = tokio::spawn(async move { store.accept(s).await.map(|_| ()) });
        tokio::io::AsyncWriteExt::write_all(&mut c, b"\x00\x00\x00\x13hello")
            .await
            .unwrap();
        drop(c);
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn two_authorities_are_trusted_while_one_is_rotated_and_files_reload() {
        let dir = tempfile::tempdir().unwrap();
        let old = Authority::create("old").unwrap();
        let new = Authority::create("new").unwrap();
        old.save(dir.path()).unwrap();
        let cfg = old
            .write_identity(dir.path(), Role::Ustore, "store-1")
            .unwrap();
        let Transport::Tls(store) = cfg.transport(Role::Ustore).unwrap() else {
            panic!("plaintext")
        };
        let client_of = |ca: &Authority, trust: &str| {
            let mut pems = ca.pems(Role::Operator, "mailctl").unwrap();
            pems.ca = trust.to_string();
            Tls::from_pems(&pems, Role::Operator).unwrap()
        };
        let (old_pem, new_pem) = (old.cert_pem().to_string(), new.cert_pem().to_string());
        assert!(handshake(&client_of(&old, &old_pem), &store, Role::Ustore)
            .await
            .is_ok());
        assert!(handshake(&client_of(&new, &new_pem), &store, Role::Ustore)
            .await
            .is_err());
        // Everyone trusts both; then the store moves to a certificate of the new authority,
        // without a restart.
        let both = format!("{old_pem}{new_pem}");
        std::fs::write(dir.path().join("ca.pem"), &both).unwrap();
        new.write_identity(dir.path(), Role::Ustore, "store-1")
            .unwrap();
        store.check_reload();
        assert!(handshake(&client_of(&new, &both), &store, Role::Ustore)
            .await
            .is_ok());
        assert!(handshake(&client_of(&old, &both), &store, Role::Ustore)
            .await
            .is_ok());
        // The old authority retired: its certificates are refused.
        std::fs::write(dir.path().join("ca.pem"), &new_pem).unwrap();
        store.check_reload();
        assert!(handshake(&client_of(&old, &both), &store, Role::Ustore)
            .await
            .is_err());
        assert!(handshake(&client_of(&new, &new_pem), &store, Role::Ustore)
            .await
            .is_ok());
        // A broken file keeps what was loaded.
        std::fs::write(dir.path().join("store-1.pem"), "not a certificate").unwrap();
        store.check_reload();
        assert!(handshake(&client_of(&new, &new_pem), &store, Role::Ustore)
            .await
            .is_ok());
    }
}
