//! hcu-sizing: the HCU capacity model — from a workload and the capacity of one machine per role,
//! how many users an HCU takes, how many machines each role needs, the disk, the cost per
//! user-year and the bottleneck.
//!
//! # The model
//!
//! An HCU (the survey's HotMail Capitalization Unit) has exactly one ustore. Users per HCU is the
//! largest whole number of users one ustore can take under *all* its constraints, at peak
//! (peak = daily mean × `peak_to_mean`; sessions are already a peak figure):
//!
//! - page I/O: `sessions_per_hcu × page_views_per_session_hour / 3600 <= page_views_per_s`, where
//!   `sessions_per_hcu = peak_sessions × users_per_hcu / users`;
//! - deliveries: `users_per_hcu × messages_per_user_day / 86400 × peak_to_mean <= deliveries_per_s`;
//! - disk: `users_per_hcu × stored_bytes_per_user × disk_bytes_per_stored_byte <= disk_bytes`;
//! - backup (when both backup keys are given):
//!   `users_per_hcu × stored_bytes_per_user <= backup_bytes_per_s × backup_window_hours × 3600`.
//!
//! An HCU never holds more users than the service has. Each constraint is taken alone (each
//! capacity is the store's limit for that kind of work), so a store near two limits at once is
//! sized optimistically. The constraint with the highest utilisation is the store's limiting
//! resource.
//!
//! The other roles are sized for that many users at peak, each `max(1, ceil(load / capacity))`:
//! front doors for page views/s; login servers for sign-ins/s
//! (`sessions_per_hcu / (session_minutes × 60)`); smtp-in for deliveries/s; mserv for lookups/s
//! (`page views/s × lookups_per_page_view + deliveries/s × lookups_per_message + sign-ins/s`, one
//! uncached lookup per sign-in), and at least `min_machines`. The whole service is the full HCUs
//! plus a last HCU sized for the users left over.
//!
//! Utilisation is load / (machines × capacity); the ustore's is that of its binding constraint.
//! The bottleneck is the role with the highest utilisation (the ustore on a tie), named with its
//! constraint, e.g. `ustore (page I/O)`.
//!
//! Cost per user-year of a full HCU =
//! `(Σ machines × price per machine-year + disk GB on the store × disk_per_gb_year) / users_per_hcu`,
//! where the disk counted is what the mail occupies on disk
//! (`users × stored_bytes_per_user × disk_bytes_per_stored_byte`).
//!
//! `retention_days` does not enter the arithmetic: `users` counts every account the service
//! holds, including those inactive for up to `retention_days` and not yet deleted, and
//! `stored_bytes_per_user` is the mean over all of them, so the retention period is already inside
//! those two figures. A longer retention is entered as more users and more stored bytes. It is
//! validated (a positive number) and shown.
//!
//! `[measured]` figures from a load run are shown and never used.

use std::fmt;

pub mod cli;
pub mod model;
pub mod plot;
pub mod profile;
pub mod report;

pub use model::{plan, Plan};
pub use profile::{Capacity, Workload};

/// What the caller must act on: a bad profile or an impossible combination (both are bad input).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A profile that cannot be read, is not TOML, or breaks a rule; one line per problem.
    #[error("{}", ProfileProblems { kind, file, problems })]
    Profile {
        kind: &'static str,
        file: String,
        problems: Vec<String>,
    },
    /// Valid profiles that together describe no HCU (one ustore cannot hold a single user).
    #[error("{0}")]
    Impossible(String),
}

struct ProfileProblems<'a> {
    kind: &'a str,
    file: &'a str,
    problems: &'a [String],
}

impl fmt::Display for ProfileProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{} profile {}: {p}", self.kind, self.file)?;
        }
        Ok(())
    }
}
