//! From a layout to processes: each process's name, role, start group and config text, the
//! session keys the login server and front doors share, and `endpoints.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
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

/// The session signing key shared by the login server and the front doors, kept in
/// `DATA/secrets/session-keys.toml` (made once, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SessionKeys {
    pub current_key: String,
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub secret: String,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The keys under `data`, made on first use.
pub fn session_keys(data: &Path) -> anyhow::Result<SessionKeys> {
    let dir = data.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("session-keys.toml");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return toml::from_str(&text).with_context(|| format!("parsing {}", path.display()));
    }
    let secret: [u8; 32] = rand::random();
    let keys = SessionKeys {
        current_key: "k1".into(),
        keys: vec![KeyEntry {
            id: "k1".into(),
            secret: hex::encode(secret),
        }],
    };
    write_private(&path, &toml::to_string(&keys)?)?;
    Ok(keys)
}

fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn keys_toml(keys: &SessionKeys) -> String {
    let mut s = format!("current-key = \"{}\"\n", keys.current_key);
    for k in &keys.keys {
        s.push_str(&format!(
            "\n[[keys]]\nid = \"{}\"\nsecret = \"{}\"\n",
            k.id, k.secret
        ));
    }
    s
}

fn path_str(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// Every process of the layout, with its config.
pub fn processes(layout: &Layout, data: &Path, keys: &SessionKeys) -> Vec<ProcSpec> {
    let mserv: Vec<String> = layout.mserv.iter().map(|m| m.listen.to_string()).collect();
    let mut out = Vec::new();
    let log = |name: &str| {
        format!("# Written by `mailctl up` for {name}; edit deploy/local.toml instead.\n")
    };
    let mut peers = String::new();
    for (i, m) in layout.mserv.iter().enumerate() {
        peers.push_str(&format!(
            "\n[[peers]]\nid = {}\naddr = \"{}\"\n",
            i + 1,
            m.listen
        ));
    }
    for (i, m) in layout.mserv.iter().enumerate() {
        let name = format!("mserv-{}", i + 1);
        let dir = data.join(&name);
        let config = format!(
            "{}id = {}\nlisten = \"{}\"\ndata-dir = \"{}\"\nbootstrap = true\n{peers}\n[admin]\nlisten = \"{}\"\n",
            log(&name),
            i + 1,
            m.listen,
            path_str(&dir),
            m.admin
        );
        out.push(ProcSpec {
            name,
            role: "mserv",
            group: 0,
            listen: m.listen,
            admin: m.admin,
            config,
        });
    }
    for s in &layout.ustore {
        let mut config = format!(
            "{}name = \"{}\"\nlisten = \"{}\"\n\n[admin]\nlisten = \"{}\"\n",
            log(&s.name),
            s.name,
            s.listen,
            s.admin
        );
        for seg in 0..s.segments {
            let dir = data.join(&s.name).join(format!("seg-{seg}"));
            config.push_str(&format!(
                "\n[[segments]]\nid = {seg}\npath = \"{}\"\n",
                path_str(&dir)
            ));
        }
        out.push(ProcSpec {
            name: s.name.clone(),
            role: "ustore",
            group: 1,
            listen: s.listen,
            admin: s.admin,
            config,
        });
    }
    if let Some(smtp) = &layout.smtp_in {
        let config = format!(
            "{}hostname = \"{}\"\nlisten = \"{}\"\ndomains = {}\nmserv = {}\n\n[admin]\nlisten = \"{}\"\n",
            log("smtp-in"),
            layout.hostname,
            smtp.listen,
            quoted(&layout.domains),
            quoted(&mserv),
            smtp.admin
        );
        out.push(ProcSpec {
            name: "smtp-in".into(),
            role: "smtp-in",
            group: 2,
            listen: smtp.listen,
            admin: smtp.admin,
            config,
        });
    }
    if let Some(login) = &layout.login {
        let config = format!(
            "{}listen = \"{}\"\npublic-url = \"http://{}\"\nmserv = {}\ncookie-secure = false\n{}\n[admin]\nlisten = \"{}\"\n",
            log("login"),
            login.listen,
            login.listen,
            quoted(&mserv),
            keys_toml(keys),
            login.admin
        );
        out.push(ProcSpec {
            name: "login".into(),
            role: "login",
            group: 2,
            listen: login.listen,
            admin: login.admin,
            config,
        });
    }
    for (i, f) in layout.frontdoor.iter().enumerate() {
        let name = format!("frontdoor-{}", i + 1);
        let login_url = layout
            .login
            .as_ref()
            .map(|l| format!("http://{}", l.listen))
            .unwrap_or_default();
        let relay = layout
            .smtp_in
            .as_ref()
            .map(|s| s.listen.to_string())
            .unwrap_or_default();
        let config = format!(
            "{}listen = \"{}\"\npublic-url = \"http://{}\"\nlogin-url = \"{login_url}\"\nmserv = {}\nsmtp-relay = \"{relay}\"\ncookie-secure = false\n{}\n[admin]\nlisten = \"{}\"\n",
            log(&name),
            f.listen,
            f.listen,
            quoted(&mserv),
            keys_toml(keys),
            f.admin
        );
        out.push(ProcSpec {
            name,
            role: "frontdoor",
            group: 2,
            listen: f.listen,
            admin: f.admin,
            config,
        });
    }
    out
}

/// The endpoints of a layout run from `data`.
pub fn endpoints(layout: &Layout, data: &Path, procs: &[ProcSpec]) -> Endpoints {
    Endpoints {
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
        let procs = processes(&layout(), dir.path(), &keys);
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
                "login",
                "frontdoor",
                "frontdoor"
            ]
        );
        for p in &procs {
            let ok = match p.role {
                "mserv" => runtime::config::parse::<mserv::MservConfig>(&p.config).map(|_| ()),
                "ustore" => runtime::config::parse::<ustore::UstoreConfig>(&p.config).map(|_| ()),
                "smtp-in" => runtime::config::parse::<smtp_in::SmtpInConfig>(&p.config).map(|_| ()),
                _ => toml::from_str::<toml::Table>(&p.config)
                    .map(|_| ())
                    .map_err(Into::into),
            };
            assert!(ok.is_ok(), "{}: {:?}\n{}", p.name, ok, p.config);
        }
        // The keys are made once and kept.
        let again = session_keys(dir.path()).unwrap();
        assert_eq!(again.keys[0].secret, keys.keys[0].secret);
        assert_eq!(keys.keys[0].secret.len(), 64);
        let e = endpoints(&layout(), dir.path(), &procs);
        write_endpoints(dir.path(), &e).unwrap();
        assert_eq!(
            Endpoints::load(&dir.path().join("endpoints.json")).unwrap(),
            e
        );
        assert_eq!(e.frontdoor_urls.len(), 2);
    }
}
