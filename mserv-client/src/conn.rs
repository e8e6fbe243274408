//! The index's side of the one connection layer (`xfs::conn`): its operations, answers, hello and
//! version (`xfs::envelope::Protocol`), so clients, followers forwarding writes and Raft's messages to peers all
//! share `xfs::conn::Pool`.

use xfs::conn::{ConnError, Pool, Pools, Protocol};
use xfs::Role;

use crate::proto::{MservError, Op, Reply, ServerHello, PROTOCOL_VERSION};

/// The member index's protocol.
pub struct Index;

impl Protocol for Index {
    type Op = Op;
    type Answer = Result<Reply, MservError>;
    type ServerHello = ServerHello;
    const VERSION: u32 = PROTOCOL_VERSION;
    const PEER: &'static str = "replica";
    const SERVER_ROLE: Role = Role::Mserv;

    fn version_of(hello: &ServerHello) -> u32 {
        hello.version
    }

    fn op_name(op: &Op) -> &'static str {
        op.name()
    }

    fn permitted(role: Role, op: &Op) -> bool {
        crate::access::permitted(role, op)
    }

    fn forbidden(role: Role, op: &Op) -> Result<Reply, MservError> {
        Err(MservError::Forbidden {
            op: op.name().to_string(),
            role: role.to_string(),
        })
    }
}

/// The connections to one replica.
pub type Endpoint = Pool<Index>;
/// Endpoints by address, made on first use and shared.
pub type Endpoints = Pools<Index>;

/// The caller-facing error: whether the request may have been applied decides between
/// `Unavailable` (it was not) and `OutcomeUnknown`.
pub fn into_mserv(e: ConnError) -> MservError {
    match e {
        ConnError::NotSent { .. } => MservError::Unavailable { why: e.to_string() },
        ConnError::Lost { .. } | ConnError::Timeout { .. } => {
            MservError::OutcomeUnknown { why: e.to_string() }
        }
        ConnError::Protocol { .. } => MservError::Protocol { why: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use xfs::conn::PoolConfig;

    use super::*;

    #[tokio::test]
    async fn an_unreachable_replica_is_not_sent_to_then_backs_off() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let cfg = PoolConfig {
            conns: 1,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            ..Default::default()
        };
        let ep = Endpoint::new(addr, Arc::new(cfg));
        let first = ep
            .call(Op::Ping, "", None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(first, ConnError::NotSent { .. }), "{first}");
        let second = ep
            .call(Op::Ping, "", None, Duration::from_secs(2))
            .await
            .unwrap_err();
        match &second {
            ConnError::NotSent { why, .. } => assert!(why.starts_with("reconnecting in"), "{why}"),
            other => panic!("{other}"),
        }
        assert!(matches!(into_mserv(first), MservError::Unavailable { .. }));
    }
}
