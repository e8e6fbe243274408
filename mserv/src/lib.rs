//! mserv: the replicated member index (user → store, segment, epoch) and its caching client; filled by the mserv issue.
