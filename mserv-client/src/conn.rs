//! The index's side of the one connection layer (`xfs::conn`): how its frames say hello, carry
//! requests and answer, so clients, followers forwarding writes and Raft's messages to peers all
//! share `xfs::conn::Pool`.

use xfs::conn::{ConnError, Pool, Pools, Protocol};

use crate::proto::{
    ClientFrame, ClientHello, MservError, Op, Reply, Request, ServerFrame, PROTOCOL_VERSION,
};

/// The member index's protocol.
pub struct Index;

/// The index's client frames, as a replica reads them (`xfs::serve`).
impl From<ClientFrame> for xfs::serve::Incoming<Request> {
    fn from(frame: ClientFrame) -> Self {
        match frame {
            ClientFrame::Hello(h) => xfs::serve::Incoming::Hello {
                version: h.version,
                client: h.client,
            },
            ClientFrame::Request(r) => xfs::serve::Incoming::Request(r),
        }
    }
}

impl Protocol for Index {
    type ClientFrame = ClientFrame;
    type ServerFrame = ServerFrame;
    type Op = Op;
    type Answer = Result<Reply, MservError>;
    const PEER: &'static str = "replica";

    fn hello(client: &str) -> ClientFrame {
        ClientFrame::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            client: client.to_string(),
        })
    }

    fn accept_hello(frame: ServerFrame) -> Result<(), String> {
        match frame {
            ServerFrame::Hello(h) if h.version == PROTOCOL_VERSION => Ok(()),
            ServerFrame::Hello(h) => Err(format!("replica speaks protocol version {}", h.version)),
            ServerFrame::Refused { reason } => Err(format!("refused: {reason}")),
            ServerFrame::Response(_) => Err("response before hello".into()),
        }
    }

    fn request(id: u64, deadline_ms: u32, _trace: &str, op: Op) -> ClientFrame {
        ClientFrame::Request(Request {
            id,
            deadline_ms,
            op,
        })
    }

    fn response(frame: ServerFrame) -> Result<(u64, Self::Answer), ServerFrame> {
        match frame {
            ServerFrame::Response(r) => Ok((r.id, r.result)),
            other => Err(other),
        }
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
            .call(Op::Ping, "", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(first, ConnError::NotSent { .. }), "{first}");
        let second = ep
            .call(Op::Ping, "", Duration::from_secs(2))
            .await
            .unwrap_err();
        match &second {
            ConnError::NotSent { why, .. } => assert!(why.starts_with("reconnecting in"), "{why}"),
            other => panic!("{other}"),
        }
        assert!(matches!(into_mserv(first), MservError::Unavailable { .. }));
    }
}
