//! Least privilege at the member index: which roles may ask for which operations. A replica
//! answers anything else `Forbidden` (`xfs::serve` does, from this table) and counts it. Only an
//! operator changes the index (users, stores, clusters, domains, membership), so a compromised
//! front door or store cannot point users at another store or login's redirect at another site;
//! only smtp-out (which signs) and operators read the domains' private DKIM keys; only index
//! replicas send Raft's messages, and a follower passes on writes only as a forwarded write.

use xfs::Role;

use crate::proto::Op;

/// Whether a caller of `role` may ask a replica for `op`.
pub fn permitted(role: Role, op: &Op) -> bool {
    match op {
        // Reads every serving role makes to route a user or find a store.
        Op::Ping
        | Op::Lookup { .. }
        | Op::ListStores
        | Op::ListClusters
        | Op::ListDomains
        | Op::Stats => true,
        // Private DKIM keys: only the role that signs, and operators.
        Op::DomainKeys => matches!(role, Role::SmtpOut | Role::Operator),
        Op::Write { forwarded, .. }
        | Op::AddReplica { forwarded, .. }
        | Op::RemoveReplica { forwarded, .. } => {
            role == Role::Operator || (role == Role::Mserv && *forwarded)
        }
        Op::ListStoreUsers { .. } => role == Role::Operator,
        Op::Raft(_) => role == Role::Mserv,
    }
}
