//! mailctl: the operator's tool. `mailctl up` runs and supervises a whole HCU on this machine;
//! the other commands administer users and stores, show every process's state, and run the
//! end-to-end probe, against the endpoints a running `mailctl up` wrote.
//!
//! `cli` is the command line; each command's body lives in the module of its feature, and
//! [`main`] only dispatches.

pub mod backup;
pub mod cli;
pub mod copy;
pub mod demo;
pub mod domains;
pub mod gc;
pub mod layout;
pub mod migrate;
pub mod plan;
pub mod probe;
pub mod queue;
pub mod status;
pub mod stores;
pub mod up;
pub mod users;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use runtime::shutdown::Shutdown;

use cli::{Cli, Cmd};

pub use operator::admin;
pub use runtime::http_client as http;

/// Every command but `up`, against the endpoints of a running HCU.
async fn admin_command(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .endpoints
        .clone()
        .unwrap_or_else(|| cli.data.join("endpoints.json"));
    let hcu = admin::Hcu::new(plan::Endpoints::load(&path)?)?;
    let j = cli.json;
    match cli.cmd {
        Cmd::Up { .. } | Cmd::Certs(_) | Cmd::SessionKey(_) => unreachable!("handled by main"),
        Cmd::User(cmd) => users::run(&hcu, cmd, j).await,
        Cmd::Store(cmd) => stores::run(&hcu, cmd, j).await,
        Cmd::Domain(cmd) => domains::run(&hcu, cmd, j).await,
        Cmd::Dkim(cmd) => domains::dkim(&hcu, cmd, j).await,
        Cmd::Queue(cmd) => queue::run(&hcu, cmd, j).await,
        Cmd::Status => status::run(&hcu, j).await,
        Cmd::Probe { send_to } => probe::run(&hcu, send_to.as_deref(), j).await,
        Cmd::Migrate(args) => migrate::run(&hcu, &cli.data, args, j).await,
        Cmd::Backup { store, to } => backup::run(&hcu, store.as_deref(), &to, j).await,
        Cmd::Restore {
            user,
            from,
            as_of,
            to,
        } => backup::restore::run(&hcu, &user, from, as_of.as_deref(), to.as_deref(), j).await,
        Cmd::GcInactive {
            days,
            apply,
            max_fraction,
        } => {
            let opts = gc::Options {
                days,
                apply,
                max_fraction,
            };
            gc::run(&hcu, &opts, j).await
        }
    }
}

/// `mailctl certs`: identities for processes elsewhere, from the authority in DIR/certs.
fn certs_command(cli: &Cli, cmd: &cli::CertsCmd) -> anyhow::Result<()> {
    let cli::CertsCmd::Issue { role, name, out } = cmd;
    let role = xfs::Role::parse(role).with_context(|| {
        let all: Vec<&str> = xfs::Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("no role {role:?}: one of {}", all.join(", "))
    })?;
    let pki = plan::Pki::open(&cli.data)?;
    let out = out.clone().unwrap_or_else(|| pki.dir.clone());
    let files = pki.issue_into(&out, role, name)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&files)?);
    } else {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Section<'a> {
            internal_tls: &'a xfs::tls::InternalTls,
        }
        print!(
            "{}",
            toml::to_string(&Section {
                internal_tls: &files
            })?
        );
    }
    Ok(())
}

/// `mailctl session-key new`: a fresh signing key and its public half, as config entries.
fn session_key_command(cli: &Cli, cmd: &cli::SessionKeyCmd) -> anyhow::Result<()> {
    let cli::SessionKeyCmd::New { id } = cmd;
    let key = role_config::KeyConfig::generate(id);
    // The id is checked the way the configs check it.
    role_config::keys::signing_keys(id, std::slice::from_ref(&key))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = key.public().map_err(|e| anyhow::anyhow!("{e}"))?;
    if cli.json {
        let v = serde_json::json!({
            "id": id,
            "private-key": key.private_key,
            "public-key": public.public_key,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Login<'a> {
            keys: [&'a role_config::KeyConfig; 1],
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Verifiers<'a> {
            session_keys: [&'a role_config::PublicKeyConfig; 1],
        }
        println!("# login's config (keep it secret; make it current-key when every verifier has the public key):");
        print!("{}", toml::to_string(&Login { keys: [&key] })?);
        println!("\n# every front door's and store's config:");
        print!(
            "{}",
            toml::to_string(&Verifiers {
                session_keys: [&public]
            })?
        );
    }
    Ok(())
}

/// `mailctl up`: the whole HCU, supervised until a signal.
async fn up_command(cli: &Cli, config: &std::path::Path, demo: bool) -> anyhow::Result<()> {
    runtime::logging::init(&runtime::config::LogConfig::default());
    let layout = layout::load(config)?;
    let shutdown = Shutdown::new();
    runtime::shutdown::on_signals(&shutdown);
    let args = up::UpArgs {
        layout,
        data: cli.data.clone(),
        demo,
    };
    up::up(args, shutdown).await
}

/// The `mailctl` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.cmd {
            Cmd::Up { config, demo } => up_command(&cli, config, *demo).await,
            Cmd::Certs(cmd) => certs_command(&cli, cmd),
            Cmd::SessionKey(cmd) => session_key_command(&cli, cmd),
            _ => admin_command(cli).await,
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
