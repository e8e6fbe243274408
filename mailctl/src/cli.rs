//! The command line: every command and option `mailctl` takes, how a `STORE[:SEGMENT]` argument
//! is read, and how an answer is printed (human text, or JSON with `--json`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mserv_client::Policy;

#[derive(Parser, Debug)]
#[command(name = "mailctl", version = runtime::VERSION, about = "Run and administer a megamail HCU.")]
pub struct Cli {
    /// The HCU's data directory (where `mailctl up` keeps data, logs and endpoints.json).
    #[arg(long, global = true, default_value = "data", value_name = "DIR")]
    pub data: PathBuf,
    /// The endpoints file of a running HCU [default: DIR/endpoints.json].
    #[arg(long, global = true, value_name = "FILE")]
    pub endpoints: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Start a whole HCU on this machine and supervise it until Ctrl-C or SIGTERM.
    Up {
        /// The HCU layout.
        #[arg(long, default_value = "deploy/local.toml", value_name = "FILE")]
        config: PathBuf,
        /// Also create a demo account with a few messages and print how to sign in.
        #[arg(long)]
        demo: bool,
    },
    /// Add, delete, show users or set their password.
    #[command(subcommand)]
    User(UserCmd),
    /// Certificates signed by the HCU's authority (DIR/certs), for processes on other machines.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Session signing keys, for rotating the keys login signs sessions with.
    #[command(subcommand)]
    SessionKey(SessionKeyCmd),
    /// Register, drain or list stores.
    #[command(subcommand)]
    Store(StoreCmd),
    /// The mail domains hosted here: mail is accepted for them and their users' mail is signed.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// A hosted domain's DKIM keys: rotate to a new one, activate it once it is published.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// The outbound queue: list, show, retry or delete entries (named USER/ID).
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Every process: up, healthy, overloaded, raft role, load, version.
    Status,
    /// A synthetic end-to-end transaction (SMTP in, seen through a front door), timed.
    Probe {
        /// Also send a message from the probe account to this address (a test receiver the
        /// operator runs, or a local user) and wait until the outbound workers deliver it.
        #[arg(long)]
        send_to: Option<String>,
    },
    /// Move mailboxes between stores online: one user (`--user U --to STORE[:SEGMENT]`) or a
    /// whole store (`--from STORE --all`). A rerun continues what a crash or Ctrl-C left.
    Migrate(MigrateArgs),
    /// Online backup of every segment into DIR while the stores keep serving; a later backup
    /// into the same DIR copies only the files that are new.
    Backup {
        /// Only this store.
        #[arg(long)]
        store: Option<String>,
        /// The backup directory (on the stores' machine).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Bring one user's mailbox back: from a backup (`--from DIR`), or, without it, an account
    /// deleted by `gc-inactive --apply` within its retention period.
    Restore {
        /// The user whose mailbox comes back.
        #[arg(long)]
        user: String,
        /// The backup directory.
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// The newest backup at or before this (a backup id or a UTC time) [default: the newest].
        #[arg(long, value_name = "TIMESTAMP|BACKUP-ID", requires = "from")]
        as_of: Option<String>,
        /// Where to, if the original store no longer takes users [default: the least loaded].
        #[arg(long, value_name = "STORE[:SEGMENT]", requires = "from")]
        to: Option<String>,
    },
    /// List accounts with no sign-in for --days; delete them (restorably) only with --apply,
    /// and never more than --max-fraction of any store in one run.
    GcInactive {
        /// Days without a sign-in (a decimal is allowed).
        #[arg(long)]
        days: f64,
        /// Delete them; without it nothing is deleted.
        #[arg(long)]
        apply: bool,
        /// Largest share of any store's accounts one run may delete.
        #[arg(long, default_value_t = 0.01)]
        max_fraction: f64,
    },
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The user to move (or whose unfinished move to continue).
    #[arg(long, conflicts_with_all = ["from", "all"])]
    pub user: Option<String>,
    /// Where to: a store, optionally with a segment [default for --all: the least loaded].
    #[arg(long, value_name = "STORE[:SEGMENT]")]
    pub to: Option<String>,
    /// Evacuate this store (with --all); drain it first so no new users land there.
    #[arg(long, requires = "all")]
    pub from: Option<String>,
    /// Every user of --from.
    #[arg(long, requires = "from")]
    pub all: bool,
    /// Mailboxes moved at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Copy bandwidth limit for the whole run, in MB/s (0: none).
    #[arg(long, default_value_t = 0.0, value_name = "MB/s")]
    pub rate: f64,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a moved mailbox's old copy is kept before it is purged, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub grace: u64,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// A certificate and key naming one process's role and instance, with the trusted
    /// authorities (`ca.pem`), written into OUT; prints the `[internal-tls]` section to use.
    Issue {
        /// mserv, ustore, frontdoor, login, smtp-in or operator.
        #[arg(long)]
        role: String,
        /// The instance's name (`store-3`): 1 to 63 of a-z, 0-9 and -.
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem, NAME.key and ca.pem [default: DIR/certs].
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionKeyCmd {
    /// A new Ed25519 session key: prints the `[[keys]]` entry for the login servers' configs
    /// (private: only login holds it) and the `[[session-keys]]` entry for every front door's
    /// and store's.
    New {
        /// The key's id, named in every token it signs: 1 to 32 of letters, digits, - and _.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user; the password is read from standard input.
    Add {
        user: String,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Place it on this store (and segment) instead of the least loaded one.
        #[arg(long, value_name = "STORE[:SEGMENT]")]
        store: Option<String>,
        /// Mailbox quota in bytes (0: none).
        #[arg(long, default_value_t = 0)]
        quota: u64,
    },
    /// Delete a user and its mailbox.
    Del { user: String },
    /// Where a user lives, its account and folders.
    Show { user: String },
    /// Set a user's password (read from standard input); ends its sessions.
    Passwd { user: String },
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Register a running store so new users may be placed on it.
    Add {
        name: String,
        /// Its XFS address.
        #[arg(long)]
        xfs: String,
        /// Its segment ids, comma-separated.
        #[arg(long, default_value = "0,1", value_delimiter = ',')]
        segments: Vec<u32>,
        /// Its cluster [default: the HCU's].
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Take no new users on a store (its users stay until they are migrated).
    Drain { name: String },
    /// Stores with their state and user counts.
    List,
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Host a domain (no restart needed); makes its first DKIM key and prints the DNS record.
    Add {
        domain: String,
        /// The key's algorithm: rsa (2048 bits, checked by every verifier) or ed25519.
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// The key's selector [default: mm and the date and time].
        #[arg(long)]
        selector: Option<String>,
    },
    /// Hosted domains with their keys and the records to publish.
    List,
    /// Stop hosting a domain (refused while users have addresses in it).
    Del { domain: String },
}

#[derive(Subcommand, Debug)]
pub enum DkimCmd {
    /// Make a new key for DOMAIN and print its DNS record. The current key keeps signing until
    /// `dkim activate`.
    Rotate {
        domain: String,
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        #[arg(long)]
        selector: Option<String>,
    },
    /// Sign with the new key from now on, once DNS serves its record (checked first, unless
    /// --force). The old key is kept until the next activation, for mail signed before it.
    Activate {
        domain: String,
        /// Activate without checking DNS.
        #[arg(long)]
        force: bool,
        /// DNS servers to check with (IP:PORT) [default: those of /etc/resolv.conf].
        #[arg(long, value_delimiter = ',')]
        resolver: Vec<std::net::SocketAddr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Pending entries of every store, or every entry of one user (finished ones too).
    List {
        #[arg(long)]
        user: Option<String>,
        /// Only recipients in this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// One entry in full.
    Show { id: String },
    /// Make an entry (or every pending entry of `--user`, or to `--domain`) due now.
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        user: Option<String>,
        /// Every pending entry to this domain, whoever sent it (say, once its server is back).
        #[arg(long, conflicts_with_all = ["id", "user"])]
        domain: Option<String>,
    },
    /// Give an entry up; with `--bounce` the sender gets a delivery status report.
    Delete {
        id: String,
        #[arg(long)]
        bounce: bool,
    },
}

/// A `STORE[:SEGMENT]` argument: the store, and the segment if one is given.
pub fn store_spec(spec: &str) -> anyhow::Result<(String, Option<u32>)> {
    Ok(match spec.split_once(':') {
        Some((store, seg)) => (
            store.to_string(),
            Some(
                seg.parse()
                    .with_context(|| format!("`{seg}` is not a segment number"))?,
            ),
        ),
        None => (spec.to_string(), None),
    })
}

/// A `STORE[:SEGMENT]` argument as a placement: that store, segment 0 unless one is given.
pub fn placement(spec: &str) -> anyhow::Result<Policy> {
    let (store, segment) = store_spec(spec)?;
    Ok(Policy::Explicit {
        store,
        segment: segment.unwrap_or(0),
    })
}

/// Print a command's answer: `value` as pretty JSON with `--json`, else the `human` text.
pub fn print(json_out: bool, value: serde_json::Value, human: String) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("{human}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_arguments_name_a_store_and_maybe_a_segment() {
        assert_eq!(store_spec("store-2").unwrap(), ("store-2".into(), None));
        assert_eq!(
            store_spec("store-2:1").unwrap(),
            ("store-2".into(), Some(1))
        );
        let err = store_spec("store-2:x").unwrap_err().to_string();
        assert!(err.contains("`x` is not a segment number"), "{err}");
        assert_eq!(
            placement("store-2").unwrap(),
            Policy::Explicit {
                store: "store-2".into(),
                segment: 0
            }
        );
        assert_eq!(
            placement("store-2:1").unwrap(),
            Policy::Explicit {
                store: "store-2".into(),
                segment: 1
            }
        );
    }

    #[test]
    fn the_command_line_parses() {
        let parse = |line: &str| Cli::try_parse_from(line.split(' '));
        let cli = parse("mailctl --json migrate --from store-1 --all --parallel 8").unwrap();
        assert!(cli.json);
        match cli.cmd {
            Cmd::Migrate(a) => {
                assert_eq!(
                    (a.from.as_deref(), a.all, a.parallel),
                    (Some("store-1"), true, 8)
                )
            }
            other => panic!("{other:?}"),
        }
        match parse("mailctl restore --user u@x.test").unwrap().cmd {
            Cmd::Restore { user, from, .. } => {
                assert_eq!((user.as_str(), from), ("u@x.test", None))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse("mailctl migrate --all").is_err(),
            "--all needs --from"
        );
        assert!(parse("mailctl migrate --parallel 0").is_err());
        assert!(
            parse("mailctl restore --user u --as-of x").is_err(),
            "--as-of needs --from"
        );
    }
}
