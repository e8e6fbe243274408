//! Set up an HCU for a benchmark, and count what it stored.
//!
//!   hcu-setup --mserv ADDR [--store NAME=ADDR]... [--users N --domain D --prefix P] [--count]
//!
//! Registers every `--store` with the member index (active, in `--cluster`, segments
//! `0..--segments`), then places users `P0@D .. P{N-1}@D` (least-loaded) and creates their
//! accounts on their stores. With `--count` it creates nothing and prints the total number of
//! Inbox messages over those users instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use mserv::{Policy, StoreInfo, StoreState};
use xfs::{CallError, NewAccount, Op, Reply, StorePool, Target, XfsError, INBOX};

#[derive(Parser)]
struct Args {
    /// Call as the operator certificate `NAME.pem` in this directory (`mailctl certs issue
    /// --role operator`); without it, plaintext.
    #[arg(long, value_name = "DIR")]
    certs: Option<std::path::PathBuf>,
    /// A member index replica (repeat for several).
    #[arg(long, required = true)]
    mserv: Vec<String>,
    /// A store to register, as NAME=XFS_ADDR (repeat for several).
    #[arg(long)]
    store: Vec<String>,
    #[arg(long, default_value_t = 2)]
    segments: u32,
    #[arg(long, default_value = "hcu-1")]
    cluster: String,
    #[arg(long, default_value_t = 0)]
    users: usize,
    #[arg(long, default_value = "megamail.test")]
    domain: String,
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Print the number of Inbox messages over the users instead of creating them.
    #[arg(long)]
    count: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = xfs::Identity::operator(args.certs.as_deref(), "bench")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = mserv::Client::new(
        args.mserv.clone(),
        mserv::ClientConfig {
            identity: identity.clone(),
            cache_ttl: Duration::ZERO,
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    for s in &args.store {
        let (name, addr) = s.split_once('=').context("--store takes NAME=ADDR")?;
        client
            .register_store(StoreInfo {
                name: name.into(),
                xfs_addr: addr.into(),
                cluster: args.cluster.clone(),
                segments: (0..args.segments).collect(),
                state: StoreState::Active,
            })
            .await
            .with_context(|| format!("registering {name}"))?;
    }
    let cfg = Arc::new(xfs::ClientConfig {
        identity,
        ..Default::default()
    });
    let pools: HashMap<String, StorePool> = client
        .list_stores()
        .await?
        .into_iter()
        .map(|s| {
            let pool = StorePool::new(s.info.xfs_addr.clone(), cfg.clone());
            (s.info.name, pool)
        })
        .collect();
    let pool = |store: &str| pools.get(store).context("placement on an unknown store");
    let mut total = 0u64;
    for i in 0..args.users {
        let user = format!("{}{i}@{}", args.prefix, args.domain);
        if args.count {
            let p = client.lookup(&user).await?;
            let op = Op::ListFolder {
                target: Target::new(&user, p.segment, p.epoch),
                folder: INBOX.into(),
                offset: 0,
                limit: 0,
                before_uid: None,
            };
            match pool(&p.store)?.call(op).await? {
                Reply::Page(page) => total += u64::from(page.folder.total),
                other => bail!("list_folder answered {other:?}"),
            }
        } else {
            let p = client.create_user(&user, Policy::LeastLoaded).await?;
            let op = Op::CreateAccount {
                target: Target::new(&user, p.segment, p.epoch),
                account: NewAccount {
                    password_hash: "x".into(),
                    display_name: user.clone(),
                    quota_bytes: 0,
                },
            };
            match pool(&p.store)?.call(op).await {
                Ok(_) | Err(CallError::Remote(XfsError::AlreadyExists { .. })) => {}
                Err(e) => return Err(e).with_context(|| format!("creating {user}")),
            }
        }
    }
    if args.count {
        println!("{total}");
    }
    Ok(())
}
