//! `mailctl migrate`: online mailbox moves between stores.
//!
//! One move: (1) bulk copy of the bodies while the user keeps working; (2) catch-up (every other
//! record, and the bodies that arrived meanwhile); (3) freeze at the source: writes answer
//! `Frozen`, reads are served; (4) the final delta, then the two copies' digests must match;
//! (5) compare-and-set of the placement in the member index: the commit point; (6) the target
//! copy goes live and the source answers `Moved`; (7) after the grace period the source copy is
//! purged.
//!
//! Each move's state is kept in `DATA/migrations/<user>.json`, written before every step, so a
//! rerun after a crash or Ctrl-C continues: before the commit it copies again (every step is
//! idempotent); after it (the index names the target at the next epoch) it finishes steps 6-7.
//! A mailbox is never lost and never live in two places: the source stays live until the index
//! names the target, and the target is `Importing` (callers wait) until then.
//!
//! - `targets`: who moves where (a checked target, a store's users spread over the others).
//! - `steps`: one move, step by step ([`move_user`]), and the purge after the grace period.
//! - `jobs`: each move's kept state. `progress`: the progress bar of a run.
//! - `command`: `mailctl migrate` itself (the plan, parallel moves, the report, the purge).

mod command;
mod jobs;
mod progress;
mod steps;
mod targets;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xfs::ExportCursor;

use crate::admin::Hcu;
use crate::copy::Rate;

pub use command::run;
pub use jobs::pending_jobs;
pub use progress::Progress;
pub use steps::{move_user, purge_due};
pub use targets::{check_target, mailbox_bytes, spread, users_of};

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Copying; the source is live.
    Copying,
    /// The source is frozen for the final delta.
    Frozen,
    /// The index names the target; the target and source may still need steps 6-7.
    Committed,
    /// The source answers `Moved`; its copy waits for the grace period.
    Moved,
}

/// The state of one move, kept across runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub user: String,
    pub from_store: String,
    pub from_segment: u32,
    /// The placement epoch when the move began; the commit makes it `epoch + 1`.
    pub epoch: u64,
    pub to_store: String,
    pub to_segment: u32,
    pub step: Step,
    pub cursor: Option<ExportCursor>,
    /// When the source copy may be purged (ms since the epoch), once moved.
    pub purge_after_ms: u64,
}

/// How a move ended.
#[derive(Debug, Clone)]
pub struct Done {
    pub user: String,
    pub from: String,
    pub to: String,
    pub bytes: u64,
    /// How long the source was frozen, if the freeze happened in this run.
    pub freeze: Option<Duration>,
    pub note: &'static str,
}

impl Job {
    /// `store:segment` the mailbox moves from.
    pub fn source(&self) -> String {
        format!("{}:{}", self.from_store, self.from_segment)
    }

    /// `store:segment` the mailbox moves to.
    pub fn target(&self) -> String {
        format!("{}:{}", self.to_store, self.to_segment)
    }
}

impl Done {
    /// A move that changed nothing (nothing to do, or a dry run).
    pub fn unchanged(user: String, from: String, to: String, note: &'static str) -> Done {
        Done {
            user,
            from,
            to,
            bytes: 0,
            freeze: None,
            note,
        }
    }
}

/// What a run was asked for.
pub struct Options {
    pub parallel: usize,
    pub rate_bytes_per_s: u64,
    pub dry_run: bool,
    pub grace: Duration,
}

/// Fault injection for tests: with `MAILCTL_CRASH_AT=<point>` in the environment the process
/// aborts at that point, as a kill -9 would stop it.
fn crash_point(point: &str) {
    if std::env::var("MAILCTL_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("mailctl: crashing at {point} (MAILCTL_CRASH_AT)");
        std::process::abort();
    }
}

/// The points [`crash_point`] knows, in the order a move passes them.
pub const CRASH_POINTS: [&str; 10] = [
    "begun",
    "copied",
    "caught-up",
    "frozen",
    "final-bodies",
    "verified",
    "committed",
    "live",
    "redirected",
    "purging",
];

/// A destination: a store, and a segment or the least loaded one.
pub type Dest = (String, Option<u32>);

/// What every move of a run shares.
pub struct Run<'a> {
    pub hcu: &'a Hcu,
    pub data: &'a Path,
    pub opts: &'a Options,
    pub rate: &'a Rate,
    pub progress: &'a Progress,
    /// Set on Ctrl-C: moves not yet frozen stop; frozen ones finish.
    pub stop: &'a AtomicBool,
}
