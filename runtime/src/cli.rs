//! The shared body of every role's `main`: arguments, config, logging, the tokio runtime and signals.
//!
//! A role's `main.rs` is one line:
//! `fn main() -> ExitCode { runtime::cli::main("ustore", ustore::run) }`.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, RoleConfig};
use crate::shutdown::{self, Shutdown};
use crate::{admin, faults, logging, memory, VERSION};

/// Exit status of `--check-config` with a bad config.
const BAD_CONFIG: u8 = 2;
/// How long tasks still tracked by the shutdown tree get once `run` has returned.
const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the runtime waits for blocking threads when it is dropped.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Command-line arguments shared by every service process.
#[derive(Parser, Debug)]
#[command(version = VERSION, about = "A megamail service process.")]
pub struct Args {
    /// TOML config file; without one the defaults are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Load and validate the config, print "config ok" and exit (status 2 if it is bad).
    #[arg(long)]
    pub check_config: bool,
}

/// Run a role as a process, with arguments from `std::env::args_os`.
///
/// Parses [`Args`], loads and validates the config, reads the admin port's operator secret and
/// checks the fault points the role would start with (`--check-config` stops there: "config ok"
/// and 0, or the error and 2), fixes the allocator's mapping threshold
/// ([`memory::map_large_allocations`]), sets up logging from `cfg.log()`, builds a multi-thread
/// tokio runtime, creates the root [`Shutdown`] wired to SIGTERM/SIGINT, and runs
/// `run(cfg, shutdown)` under the admin settings of `cfg.admin()` ([`admin::with_settings`]).
/// Once `run` returns the shutdown is triggered and tracked tasks get a short time to finish.
///
/// A config error or an error from `run` is printed with its chain to stderr and gives
/// `ExitCode::FAILURE`; success gives `ExitCode::SUCCESS`.
pub fn main<C, F, Fut>(role: &'static str, run: F) -> ExitCode
where
    C: RoleConfig,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_with_args(role, std::env::args_os(), run)
}

/// [`main`] with the arguments given (the first is the program name), for tests and wrappers.
pub fn main_with_args<C, F, Fut, I, T>(role: &'static str, args: I, run: F) -> ExitCode
where
    C: RoleConfig,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            // --help and --version land here too, with status 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(BAD_CONFIG));
        }
    };
    let loaded = config::load(args.config.as_deref()).and_then(|cfg: C| {
        let settings = admin::Settings::load(cfg.admin())?;
        // The fault points as the role will check them at start, so `--check-config` sees it.
        let rules = faults::Rules::for_role(role, settings.max_fault_delay_ms());
        let env = std::env::var(faults::ENV_VAR).ok();
        faults::Faults::for_role(rules, cfg.faults(), env.as_deref())
            .map_err(|reason| anyhow::anyhow!("fault points: {reason}"))?;
        Ok((cfg, settings))
    });
    let (cfg, settings) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{role}: {e:#}");
            return if args.check_config {
                ExitCode::from(BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    if args.check_config {
        println!("config ok");
        return ExitCode::SUCCESS;
    }

    memory::map_large_allocations();
    logging::init(cfg.log());
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(role)
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            let result = rt.block_on(admin::with_settings(settings, run_role(role, cfg, run)));
            rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
            result
        });
    match result {
        Ok(()) => {
            tracing::info!(role, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!(role, error = format!("{e:#}"), "failed");
            } else {
                eprintln!("{role}: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run_role<C, F, Fut>(role: &'static str, cfg: C, run: F) -> anyhow::Result<()>
where
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = Shutdown::new();
    shutdown::on_signals(&shutdown);
    tracing::info!(
        role,
        version = VERSION,
        pid = std::process::id(),
        "starting"
    );
    let result = run(cfg, shutdown.clone()).await;
    shutdown.trigger();
    if tokio::time::timeout(TASK_DRAIN_TIMEOUT, shutdown.wait_tasks())
        .await
        .is_err()
    {
        tracing::warn!(role, "tasks still running after the drain timeout");
    }
    result
}
