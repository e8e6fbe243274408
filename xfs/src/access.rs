//! Least privilege at the stores: which roles may ask for which operations. A store answers
//! anything else `Forbidden` before it looks at the request (`serve` does, from this table), and
//! counts it. The table in ARCHITECTURE.md is this one; `tests/tests/access.rs` tries every cell
//! against a running store.
//!
//! A front door's operations on a mailbox are further bound to a signed-in user: each carries
//! the user's session token and the store checks it itself, after this table ([`needs_session`]).
//! Ending a session needs that session from any caller but an operator.

use crate::proto::Op;
use crate::tls::Role;

/// Whether a caller of `role` may ask a store for `op`.
pub fn permitted(role: Role, op: &Op) -> bool {
    use Role::*;
    match role {
        // Operators run everything: accounts, moves, backups, restores.
        Operator => true,
        // Stores and index replicas never call a store.
        Ustore | Mserv => false,
        SmtpIn => matches!(
            op,
            Op::Ping | Op::StoreStats | Op::GetAccount { .. } | Op::Deliver { .. }
        ),
        // Outbound workers lease, deliver locally and report; they read no mailbox.
        SmtpOut => matches!(
            op,
            Op::Ping
                | Op::StoreStats
                | Op::GetAccount { .. }
                | Op::Deliver { .. }
                | Op::LeaseQueue { .. }
                | Op::ReportQueue { .. }
        ),
        Login => matches!(
            op,
            Op::Ping
                | Op::StoreStats
                | Op::GetAuth { .. }
                | Op::RecordLogin { .. }
                | Op::EndSession { .. }
        ),
        Frontdoor => match op {
            // A user's own settings, never the quota an operator sets.
            Op::UpdateAccount { quota_bytes, .. } => quota_bytes.is_none(),
            Op::Ping
            | Op::StoreStats
            | Op::GetAccount { .. }
            | Op::GetAuth { .. }
            | Op::EndSession { .. }
            | Op::Deliver { .. }
            | Op::Submit { .. }
            | Op::MailboxQueue { .. }
            | Op::ListFolders { .. }
            | Op::ListFolder { .. }
            | Op::Fetch { .. }
            | Op::SetFlags { .. }
            | Op::Move { .. }
            | Op::Expunge { .. }
            | Op::EmptyFolder { .. }
            | Op::CreateFolder { .. }
            | Op::RenameFolder { .. }
            | Op::DeleteFolder { .. }
            | Op::Search { .. }
            | Op::MailboxStats { .. }
            | Op::Changes { .. } => true,
            _ => false,
        },
    }
}

/// Whether a caller of `role` asking for `op` must carry a session of the mailbox's user: every
/// front-door operation on a mailbox, and any caller's `EndSession` but an operator's.
pub fn needs_session(role: Role, op: &Op) -> bool {
    match (role, op) {
        (Role::Operator, _) => false,
        (_, Op::EndSession { .. }) => true,
        (Role::Frontdoor, op) => op.target().is_some(),
        _ => false,
    }
}

/// The roles that may ask for `op`, in [`Role::ALL`]'s order (for the table and errors).
pub fn roles_for(op: &Op) -> Vec<Role> {
    Role::ALL
        .into_iter()
        .filter(|r| permitted(*r, op))
        .collect()
}
