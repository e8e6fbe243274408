//! Least privilege at the stores: which roles may ask for which operations. A store answers
//! anything else `Forbidden` before it looks at the request (`serve` does, from this table), and
//! counts it. The table in ARCHITECTURE.md is this one; `tests/tests/access.rs` tries every cell
//! against a running store.
//!
//! A front door's operations on a mailbox are further bound to a signed-in user: the store checks
//! the session token they carry (the store's own check, after this one).

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
        Login => matches!(
            op,
            Op::Ping | Op::StoreStats | Op::GetAuth { .. } | Op::RecordLogin { .. }
        ),
        Frontdoor => match op {
            // A user's own settings, never the quota an operator sets.
            Op::UpdateAccount { quota_bytes, .. } => quota_bytes.is_none(),
            Op::Ping
            | Op::StoreStats
            | Op::GetAccount { .. }
            | Op::GetAuth { .. }
            | Op::Deliver { .. }
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

/// The roles that may ask for `op`, in [`Role::ALL`]'s order (for the table and errors).
pub fn roles_for(op: &Op) -> Vec<Role> {
    Role::ALL
        .into_iter()
        .filter(|r| permitted(*r, op))
        .collect()
}
