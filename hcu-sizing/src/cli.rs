//! The command line: `plan`, `plot` and `check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::profile::{Capacity, Workload};
use crate::{model, plot, report, Error};

/// Exit code for a bad profile or an impossible combination.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Size an HCU (one ustore and the machines that serve its users) from a workload profile and
/// the capacity of one machine of each role.
#[derive(Parser, Debug)]
#[command(name = "hcu-sizing", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print machines per role, users per HCU, disk per store, cost per user-year and the bottleneck.
    Plan {
        /// Workload profile (TOML).
        #[arg(long)]
        workload: PathBuf,
        /// Capacity profile (TOML).
        #[arg(long)]
        capacity: PathBuf,
        /// Print a JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write an SVG plot of machines per role (whole service) against users.
    Plot {
        /// Workload profile (TOML).
        #[arg(long)]
        workload: PathBuf,
        /// Capacity profile (TOML).
        #[arg(long)]
        capacity: PathBuf,
        /// Where to write the SVG.
        #[arg(long)]
        out: PathBuf,
        /// Right end of the users axis (default: the workload's users).
        #[arg(long)]
        max_users: Option<u64>,
    },
    /// Validate a capacity profile, a workload profile, or both (and then that they fit together).
    Check {
        /// Workload profile (TOML).
        #[arg(long)]
        workload: Option<PathBuf>,
        /// Capacity profile (TOML).
        #[arg(long)]
        capacity: Option<PathBuf>,
    },
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Why a command failed: bad input (exit 2, one line per problem) or output that could not be
/// written (exit 1).
enum Failure {
    BadInput(Vec<String>),
    Output(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::BadInput(e.to_string().lines().map(str::to_string).collect())
    }
}

/// Both profiles, or every problem found in either.
fn both(workload: &Path, capacity: &Path) -> Result<(Workload, Capacity), Failure> {
    match (Workload::load(workload), Capacity::load(capacity)) {
        (Ok(w), Ok(c)) => Ok((w, c)),
        (w, c) => {
            let mut lines = Vec::new();
            for e in [w.err(), c.err()].into_iter().flatten() {
                lines.extend(e.to_string().lines().map(str::to_string));
            }
            Err(Failure::BadInput(lines))
        }
    }
}

/// Names both files in a problem of the two profiles taken together.
fn together(e: Error, workload: &Path, capacity: &Path) -> Failure {
    match e {
        Error::Impossible(msg) => Failure::BadInput(vec![format!(
            "workload profile {} with capacity profile {}: {msg}",
            workload.display(),
            capacity.display()
        )]),
        other => other.into(),
    }
}

fn plan_command(workload: &Path, capacity: &Path, json: bool) -> Result<String, Failure> {
    let (w, c) = both(workload, capacity)?;
    let p = model::plan(&w, &c).map_err(|e| together(e, workload, capacity))?;
    if json {
        serde_json::to_string_pretty(&report::json(&p, &w, &c))
            .map(|s| s + "\n")
            .map_err(|e| Failure::Output(format!("cannot encode the plan as JSON: {e}")))
    } else {
        Ok(report::table(&p, &w, &c))
    }
}

fn plot_command(
    workload: &Path,
    capacity: &Path,
    out: &Path,
    max_users: Option<u64>,
) -> Result<String, Failure> {
    let (w, c) = both(workload, capacity)?;
    let max = max_users.unwrap_or(w.users.round() as u64);
    if max == 0 {
        return Err(Failure::BadInput(vec![
            "--max-users must be > 0".to_string()
        ]));
    }
    let title = format!(
        "Machines per role: {} with {}",
        file_name(workload),
        file_name(capacity)
    );
    let svg = plot::svg(&w, &c, max, &title).map_err(|e| together(e, workload, capacity))?;
    std::fs::write(out, svg)
        .map_err(|e| Failure::Output(format!("cannot write {}: {e}", out.display())))?;
    Ok(format!("wrote {}\n", out.display()))
}

fn check_command(workload: Option<&Path>, capacity: Option<&Path>) -> Result<String, Failure> {
    if workload.is_none() && capacity.is_none() {
        return Err(Failure::BadInput(vec![
            "check needs --workload FILE, --capacity FILE, or both".to_string(),
        ]));
    }
    let mut said = String::new();
    let mut problems = Vec::new();
    let w = workload.map(Workload::load);
    let c = capacity.map(Capacity::load);
    for (kind, path, ok) in [
        ("workload", workload, w.as_ref().map(|r| r.is_ok())),
        ("capacity", capacity, c.as_ref().map(|r| r.is_ok())),
    ] {
        if let (Some(p), Some(true)) = (path, ok) {
            said.push_str(&format!("{kind} profile {}: OK\n", p.display()));
        }
    }
    for e in [
        w.as_ref().and_then(|r| r.as_ref().err()),
        c.as_ref().and_then(|r| r.as_ref().err()),
    ]
    .into_iter()
    .flatten()
    {
        problems.extend(e.to_string().lines().map(str::to_string));
    }
    if let (Some(Ok(w)), Some(Ok(c)), Some(wp), Some(cp)) = (&w, &c, workload, capacity) {
        match model::plan(w, c) {
            Ok(p) => said.push_str(&format!(
                "together: {} users per HCU (limited by {}), {} HCUs, bottleneck {}\n",
                report::thousands(p.users_per_hcu),
                p.limited_by.name(),
                p.hcus,
                p.bottleneck
            )),
            Err(e) => match together(e, wp, cp) {
                Failure::BadInput(lines) => problems.extend(lines),
                other => return Err(other),
            },
        }
    }
    if problems.is_empty() {
        Ok(said)
    } else {
        print!("{said}");
        Err(Failure::BadInput(problems))
    }
}

/// The whole `hcu-sizing` binary: 0 on success, 2 for bad input, 1 when the output cannot be written.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Plan {
            workload,
            capacity,
            json,
        } => plan_command(workload, capacity, *json),
        Command::Plot {
            workload,
            capacity,
            out,
            max_users,
        } => plot_command(workload, capacity, out, *max_users),
        Command::Check { workload, capacity } => {
            check_command(workload.as_deref(), capacity.as_deref())
        }
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(Failure::BadInput(lines)) => {
            for line in lines {
                eprintln!("error: {line}");
            }
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Failure::Output(why)) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}
