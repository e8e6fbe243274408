//! From a layout to processes: each process's name, role, start group and config text, the
//! session keys the login server and front doors share, the operator's secret every admin port
//! asks changes for, and `endpoints.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use role_config::{
    FrontdoorConfig, KeyConfig, LoginConfig, MservConfig, PeerConfig, PublicKeyConfig,
    SegmentConfig, SmtpInConfig, SmtpOutConfig, UstoreConfig,
};
use runtime::config::AdminConfig;
use xfs::tls::issue::Authority;
use xfs::tls::InternalTls;
use xfs::Role;

use crate::layout::{Layout, Listen};
pub use operator::endpoints::{Endpoints, ProcessEndpoint, StoreEndpoint};

/// One process `mailctl up` runs.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    /// Unique: `mserv-1`, `store-1`, `smtp-in`, `login`, `frontdoor-1`, ...
    pub name: String,
    /// The binary: `mserv`, `ustore`, `smtp-in`, `login`, `frontdoor`.
    pub role: &'static str,
    /// Processes start group by group (the index first, then stores, then the rest).
    pub group: u8,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: String,
}

/// The login server's session signing keys, kept in `DATA/secrets/session-keys.toml` (made
/// once, mode 0600). The front doors and stores get only their public halves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SessionKeys {
    pub current_key: String,
    pub keys: Vec<KeyConfig>,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    xfs::tls::issue::write_private(path, text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The keys under `data`, made on first use.
pub fn session_keys(data: &Path) -> anyhow::Result<SessionKeys> {
    let dir = data.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("session-keys.toml");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        match toml::from_str(&text) {
            Ok(keys) => return Ok(keys),
            // The shared secrets of an older layout: login alone signs now, with new keys (the
            // sessions they signed end, as at a rotation).
            Err(_) if text.contains("secret =") => {
                tracing::info!(path = %path.display(), "replacing shared session secrets with signing keys")
            }
            Err(e) => return Err(e).with_context(|| format!("parsing {}", path.display())),
        }
    }
    let keys = SessionKeys {
        current_key: "k1".into(),
        keys: vec![KeyConfig::generate("k1")],
    };
    write_private(&path, &toml::to_string(&keys)?)?;
    Ok(keys)
}

/// The HCU's certificate authority, kept in `DATA/certs` (made there on first use; its key mode
/// 0600), and the identities it issues into the same directory.
pub struct Pki {
    pub dir: PathBuf,
    ca: Authority,
    /// No certificates: every process in plaintext (the layout's `internal-plaintext`).
    pub plaintext: bool,
}

/// The name of the operator's own instance (its certificate: `DATA/certs/mailctl.pem`).
pub const OPERATOR: &str = "mailctl";

impl Pki {
    pub fn open(data: &Path) -> anyhow::Result<Pki> {
        let dir = data.join("certs");
        let ca = Authority::open_or_create(
            &dir,
            &format!(
                "megamail HCU authority {}",
                hex::encode(rand::random::<[u8; 4]>())
            ),
        )
        .map_err(|e| {
            anyhow::anyhow!("the HCU's certificate authority in {}: {e}", dir.display())
        })?;
        Ok(Pki {
            dir,
            ca,
            plaintext: false,
        })
    }

    /// A fresh certificate and key for the instance `name` of `role`, and the config section
    /// naming them.
    pub fn identity(&self, role: Role, name: &str) -> anyhow::Result<InternalTls> {
        if self.plaintext {
            return Ok(InternalTls::plaintext(name));
        }
        self.issue_into(&self.dir, role, name)
    }

    /// The same, written into `dir` with a copy of the trusted authorities (for another host).
    pub fn issue_into(&self, dir: &Path, role: Role, name: &str) -> anyhow::Result<InternalTls> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir != self.dir {
            std::fs::copy(self.dir.join("ca.pem"), dir.join("ca.pem"))
                .with_context(|| format!("copying ca.pem into {}", dir.display()))?;
        }
        self.ca
            .write_identity(dir, role, name)
            .map_err(|e| anyhow::anyhow!("issuing {name}'s certificate: {e}"))
    }
}

/// The operator's secret under `data` (`DATA/secrets/operator.secret`, made once, mode 0600):
/// every process's admin port, and the supervisor's, take changes only with it
/// (`Authorization: Bearer <secret>`). The file's path, which each config names.
pub fn operator_secret(data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("operator.secret");
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        write_private(&path, &(hex::encode(secret) + "\n"))?;
    }
    Ok(path)
}

/// The header of every config `mailctl up` writes.
fn written_for(name: &str) -> String {
    format!("Written by `mailctl up` for {name}; edit deploy/local.toml instead.")
}

impl SessionKeys {
    /// The public keys the front doors and stores check sessions with.
    pub fn public(&self) -> anyhow::Result<Vec<PublicKeyConfig>> {
        self.keys
            .iter()
            .map(|k| {
                k.public()
                    .map_err(|e| anyhow::anyhow!("session key {}: {e}", k.id))
            })
            .collect()
    }
}

/// Every process of the layout, with its config; each admin port takes changes with the
/// secret in `operator_secret`.
pub fn processes(
    layout: &Layout,
    data: &Path,
    keys: &SessionKeys,
    pki: &Pki,
    operator_secret: &Path,
) -> anyhow::Result<Vec<ProcSpec>> {
    let mserv: Vec<String> = layout.mserv.iter().map(|m| m.listen.to_string()).collect();
    let admin = |listen| AdminConfig::with_token(listen, operator_secret.to_path_buf());
    let mut out = Vec::new();
    let mut push = |name: String, role, group, l: &Listen, config: String| {
        out.push(ProcSpec {
            name,
            role,
            group,
            listen: l.listen,
            admin: l.admin,
            config,
        });
    };
    let peers: Vec<PeerConfig> = (1..)
        .zip(&layout.mserv)
        .map(|(id, m)| PeerConfig {
            id,
            addr: m.listen.to_string(),
        })
        .collect();
    for (id, m) in (1..).zip(&layout.mserv) {
        let name = format!("mserv-{id}");
        let cfg = MservConfig {
            internal_tls: pki.identity(Role::Mserv, &name)?,
            id,
            listen: m.listen,
            data_dir: data.join(&name),
            peers: peers.clone(),
            bootstrap: true,
            admin: admin(m.admin),
            ..MservConfig::default()
        };
        let text = role_config::to_toml(&cfg, &written_for(&name));
        push(name, "mserv", 0, m, text);
    }
    for s in &layout.ustore {
        let cfg = UstoreConfig {
            internal_tls: pki.identity(Role::Ustore, &s.name)?,
            name: s.name.clone(),
            listen: s.listen,
            segments: (0..s.segments)
                .map(|id| SegmentConfig {
                    id,
                    path: data.join(&s.name).join(format!("seg-{id}")),
                })
                .collect(),
            backup_roots: std::iter::once(data.to_path_buf())
                .chain(layout.backup_roots.iter().cloned())
                .collect(),
            admin: admin(s.admin),
            session_keys: keys.public()?,
            ..UstoreConfig::default()
        };
        let l = Listen {
            listen: s.listen,
            admin: s.admin,
        };
        push(
            s.name.clone(),
            "ustore",
            1,
            &l,
            role_config::to_toml(&cfg, &written_for(&s.name)),
        );
    }
    if let Some(smtp) = &layout.smtp_in {
        let cfg = SmtpInConfig {
            internal_tls: pki.identity(Role::SmtpIn, "smtp-in")?,
            hostname: layout.hostname.clone(),
            listen: smtp.listen,
            mserv: mserv.clone(),
            admin: admin(smtp.admin),
            ..SmtpInConfig::default()
        };
        let text = role_config::to_toml(&cfg, &written_for("smtp-in"));
        push("smtp-in".into(), "smtp-in", 2, smtp, text);
    }
    let resolvers = if layout.resolvers.is_empty() {
        system_resolvers()
    } else {
        layout.resolvers.clone()
    };
    for (i, w) in layout.smtp_out.iter().enumerate() {
        let name = format!("out-{}", i + 1);
        let cfg = SmtpOutConfig {
            internal_tls: pki.identity(Role::SmtpOut, &name)?,
            hostname: layout.hostname.clone(),
            mserv: mserv.clone(),
            resolvers: resolvers.clone(),
            admin: admin(w.admin),
            ..SmtpOutConfig::default()
        };
        let text = role_config::to_toml(&cfg, &written_for(&name));
        let l = Listen {
            listen: w.admin,
            admin: w.admin,
        };
        push(name, "smtp-out", 2, &l, text);
    }
    let login_url = layout
        .login
        .as_ref()
        .map(|l| format!("http://{}", l.listen));
    if let Some(login) = &layout.login {
        let cfg = LoginConfig {
            internal_tls: pki.identity(Role::Login, "login")?,
            listen: login.listen,
            public_url: format!("http://{}", login.listen),
            mserv: mserv.clone(),
            cookie_secure: false,
            current_key: keys.current_key.clone(),
            keys: keys.keys.clone(),
            admin: admin(login.admin),
            ..LoginConfig::default()
        };
        let text = role_config::to_toml(&cfg, &written_for("login"));
        push("login".into(), "login", 2, login, text);
    }
    for (i, f) in layout.frontdoor.iter().enumerate() {
        let name = format!("frontdoor-{}", i + 1);
        let cfg = FrontdoorConfig {
            internal_tls: pki.identity(Role::Frontdoor, &name)?,
            listen: f.listen,
            public_url: format!("http://{}", f.listen),
            login_url: login_url.clone().unwrap_or_default(),
            mserv: mserv.clone(),
            cookie_secure: false,
            session_keys: keys.public()?,
            admin: admin(f.admin),
            ..FrontdoorConfig::default()
        };
        let text = role_config::to_toml(&cfg, &written_for(&name));
        push(name, "frontdoor", 2, f, text);
    }
    Ok(out)
}

/// The machine's DNS servers, from `/etc/resolv.conf` (port 53); loopback's if it names none.
pub fn system_resolvers() -> Vec<std::net::SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found: Vec<std::net::SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        vec![std::net::SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        found
    }
}

/// The endpoints of a layout run from `data`, for an operator holding `operator_tls`.
pub fn endpoints(
    layout: &Layout,
    data: &Path,
    procs: &[ProcSpec],
    operator_tls: InternalTls,
) -> Endpoints {
    Endpoints {
        operator_tls,
        cluster: layout.cluster.clone(),
        domains: layout.domains.clone(),
        data_dir: data.to_path_buf(),
        supervisor_admin: layout.supervisor.admin,
        smtp: layout.smtp_in.as_ref().map(|s| s.listen),
        login_url: layout
            .login
            .as_ref()
            .map(|l| format!("http://{}", l.listen)),
        frontdoor_urls: layout
            .frontdoor
            .iter()
            .map(|f| format!("http://{}", f.listen))
            .collect(),
        mserv: layout.mserv.iter().map(|m| m.listen).collect(),
        ustore: layout
            .ustore
            .iter()
            .map(|s| StoreEndpoint {
                name: s.name.clone(),
                xfs: s.listen,
                segments: (0..s.segments).collect(),
            })
            .collect(),
        processes: procs
            .iter()
            .map(|p| ProcessEndpoint {
                name: p.name.clone(),
                role: p.role.to_string(),
                listen: p.listen,
                admin: p.admin,
            })
            .collect(),
    }
}

/// Write `endpoints.json` atomically.
pub fn write_endpoints(data: &Path, e: &Endpoints) -> anyhow::Result<()> {
    write_private(
        &data.join("endpoints.json"),
        &(serde_json::to_string_pretty(e)? + "\n"),
    )
}

/// Write one process's config under `DATA/conf/` (mode 0600: it may hold the session keys).
pub fn write_config(data: &Path, p: &ProcSpec) -> anyhow::Result<PathBuf> {
    let dir = data.join("conf");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.toml", p.name));
    write_private(&path, &p.config)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        runtime::config::parse(include_str!("../../deploy/local.toml")).unwrap()
    }

    #[test]
    fn every_generated_config_parses_as_its_role_does() {
        let dir = tempfile::tempdir().unwrap();
        let keys = session_keys(dir.path()).unwrap();
        let pki = Pki::open(dir.path()).unwrap();
        let secret = operator_secret(dir.path()).unwrap();
        let procs = processes(&layout(), dir.path(), &keys, &pki, &secret).unwrap();
        let roles: Vec<&str> = procs.iter().map(|p| p.role).collect();
        assert_eq!(
            roles,
            [
                "mserv",
                "mserv",
                "mserv",
                "ustore",
                "ustore",
                "smtp-in",
                "smtp-out",
                "smtp-out",
                "login",
                "frontdoor",
                "frontdoor"
            ]
        );
        for p in &procs {
            use runtime::config::parse;
            let ok = match p.role {
                "mserv" => parse::<MservConfig>(&p.config).map(|_| ()),
                "ustore" => parse::<UstoreConfig>(&p.config).map(|_| ()),
                "smtp-in" => parse::<SmtpInConfig>(&p.config).map(|_| ()),
                "smtp-out" => parse::<SmtpOutConfig>(&p.config).map(|_| ()),
                "login" => parse::<LoginConfig>(&p.config).map(|_| ()),
                "frontdoor" => parse::<FrontdoorConfig>(&p.config).map(|_| ()),
                other => panic!("no config type for {other}"),
            };
            assert!(ok.is_ok(), "{}: {:?}\n{}", p.name, ok, p.config);
            let token_file = format!("token-file = {:?}", secret.to_str().unwrap());
            assert!(p.config.contains(&token_file), "{}:\n{}", p.name, p.config);
        }
        // One random secret, made once, readable by its owner only.
        use std::os::unix::fs::PermissionsExt as _;
        let text = std::fs::read_to_string(&secret).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(operator_secret(dir.path()).unwrap(), secret);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), text);
        let settings = runtime::admin::Settings::load(&AdminConfig::with_token(
            "127.0.0.1:0".parse().unwrap(),
            secret.clone(),
        ));
        assert!(settings.is_ok());
        // The keys are made once and kept.
        let again = session_keys(dir.path()).unwrap();
        assert_eq!(again.keys[0].private_key, keys.keys[0].private_key);
        assert_eq!(keys.keys[0].private_key.len(), 64);
        // Only login's config holds the private key; the others hold the public one.
        let public = keys.public().unwrap()[0].public_key.clone();
        for p in &procs {
            let private = p.config.contains(&keys.keys[0].private_key);
            assert_eq!(private, p.role == "login", "{}", p.name);
            let checks = matches!(p.role, "ustore" | "frontdoor");
            assert_eq!(p.config.contains(&public), checks, "{}", p.name);
        }
        // Shared secrets of the older layout give way to signing keys.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("secrets")).unwrap();
        std::fs::write(
            old.path().join("secrets/session-keys.toml"),
            "current-key = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret = \"ab\"\n",
        )
        .unwrap();
        assert_eq!(
            session_keys(old.path()).unwrap().keys[0].private_key.len(),
            64
        );
        let operator = pki.identity(Role::Operator, OPERATOR).unwrap();
        let e = endpoints(&layout(), dir.path(), &procs, operator);
        write_endpoints(dir.path(), &e).unwrap();
        assert_eq!(
            Endpoints::load(&dir.path().join("endpoints.json")).unwrap(),
            e
        );
        assert_eq!(e.frontdoor_urls.len(), 2);
    }
}
