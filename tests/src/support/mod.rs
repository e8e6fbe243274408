//! What many tests share and no role provides, in one place each:
//!
//! - [`poll`]: waiting until something holds, or a deadline passes ([`poll::eventually`],
//!   [`poll::retry_while`]), and waiting for a child process to exit.
//! - [`mailbox`]: one user's mailbox read at its store (folders, entries, bodies, all of it),
//!   and store calls retried while they fail transiently.
//! - [`mail`]: an SMTP client and an SMTP load, deliveries made straight through XFS, and the
//!   Message-ID and sender's bytes of a stored message.
//! - [`metrics`]: a process's `/metrics`, and the percentile of a sorted sample.
//! - [`command`]: commands run to their end that must succeed.
//! - [`faults`]: fault points for a role's config, set from its start.
//! - [`pki`]: the test authority, each process's certificate, and the harness's own identity.
//! - [`receiver`]: a scripted SMTP receiver, the remote side of outbound mail.
//! - [`dns`]: an authoritative DNS server on loopback with the zones a test sets up (the same
//!   one smtp-out's own tests use).

pub mod command;
#[path = "../../../smtp-out/tests/support/dns.rs"]
pub mod dns;
pub mod mail;
pub mod mailbox;
pub mod metrics;
pub mod pki;
pub mod poll;
pub mod postfix;
pub mod receiver;

pub use command::{run_ok, succeeded};

/// Fault points `(point, delay in ms, failure rate)` as a role's `[faults]` section.
pub fn faults(points: &[(&str, u64, f64)]) -> runtime::config::FaultsConfig {
    points
        .iter()
        .map(|(point, delay_ms, fail_rate)| {
            let spec = runtime::faults::FaultSpec {
                delay_ms: *delay_ms,
                fail_rate: *fail_rate,
            };
            (point.to_string(), spec)
        })
        .collect()
}
pub use mailbox::Mailbox;
pub use poll::{eventually, retry_while};
