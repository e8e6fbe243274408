//! The frames every framed protocol here shares (the stores' XFS, the member index's): a hello
//! each way, then pipelined requests, each with an id, a relative deadline and a trace id, and
//! responses that carry the same id. A protocol names only what differs: its operations, its
//! answer, its server's hello and its version ([`Protocol`]); the client pool (`conn`) and the
//! server side (`serve`) handle the frames once for all of them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tls::Role;

/// What differs between two framed protocols.
pub trait Protocol: Send + Sync + 'static {
    type Op: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    /// A server's answer to one request: its reply or its error.
    type Answer: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static;
    /// What a server says of itself when it accepts a hello.
    type ServerHello: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync;
    /// The version both hellos carry; a peer with another one is refused.
    const VERSION: u32;
    /// What the server is called in errors and logs ("store", "replica").
    const PEER: &'static str;
    /// The role a server of this protocol proves with its certificate.
    const SERVER_ROLE: Role;

    /// The version a server's hello names.
    fn version_of(hello: &Self::ServerHello) -> u32;
    /// An operation's short name, for metrics and logs.
    fn op_name(op: &Self::Op) -> &'static str;
    /// Whether a caller of `role` may ask for `op` at all (the protocol's least-privilege table;
    /// the server's own checks, such as a user's session, come after).
    fn permitted(role: Role, op: &Self::Op) -> bool;
    /// The answer to an operation the caller's role may not ask for.
    fn forbidden(role: Role, op: &Self::Op) -> Self::Answer;
}

/// A client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub version: u32,
    /// The caller's role: over TLS it must be the one its certificate names.
    pub role: Role,
    /// The caller's instance (`frontdoor-1`): over TLS its certificate must name it.
    pub name: String,
}

/// One request. Requests may be pipelined; the response carries the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<Op> {
    pub id: u64,
    /// Milliseconds the caller will still wait when it sends the request (a relative deadline,
    /// so clocks need not agree); 0 for none. A server drops work whose deadline passed before
    /// it started.
    pub deadline_ms: u32,
    /// Request id carried across tiers (front door or smtp-in → store) for the logs.
    pub trace: String,
    /// The signed-in user's session, when the caller acts for one (a front door's operations on
    /// a mailbox): the server checks it itself.
    pub session: Option<SessionToken>,
    pub op: Op,
}

/// A user's session token as a request carries it. Never printed: a log line with a request in
/// it must not hand out the session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken(pub String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// The answer to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<A> {
    pub id: u64,
    pub result: A,
}

/// What a client sends: one hello, then requests.
// Frames live only between the socket and the handler; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame<Op> {
    Hello(ClientHello),
    Request(Request<Op>),
}

/// What a server sends: one hello (or a refusal, and the connection closes), then responses.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame<H, A> {
    Hello(H),
    Refused { reason: String },
    Response(Response<A>),
}

/// A client frame of protocol `P`.
pub type ClientFrameOf<P> = ClientFrame<<P as Protocol>::Op>;
/// A server frame of protocol `P`.
pub type ServerFrameOf<P> = ServerFrame<<P as Protocol>::ServerHello, <P as Protocol>::Answer>;

/// `Ok` when a server's first frame accepts us; otherwise why not.
pub fn accept_hello<P: Protocol>(frame: ServerFrameOf<P>) -> Result<(), String> {
    match frame {
        ServerFrame::Hello(h) if P::version_of(&h) == P::VERSION => Ok(()),
        ServerFrame::Hello(h) => Err(format!(
            "{} speaks protocol version {}",
            P::PEER,
            P::version_of(&h)
        )),
        ServerFrame::Refused { reason } => Err(format!("refused: {reason}")),
        ServerFrame::Response(_) => Err("response before hello".into()),
    }
}

/// The refusal a server sends to a client of another version.
pub fn version_refusal<P: Protocol>(version: u32) -> String {
    format!(
        "protocol version {version} not supported; this {} speaks {}",
        P::PEER,
        P::VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Toy;
    #[derive(Debug, Serialize, Deserialize)]
    struct ToyHello {
        version: u32,
    }
    impl Protocol for Toy {
        type Op = String;
        type Answer = Result<u8, String>;
        type ServerHello = ToyHello;
        const VERSION: u32 = 3;
        const PEER: &'static str = "toy";
        const SERVER_ROLE: Role = Role::Ustore;
        fn version_of(h: &ToyHello) -> u32 {
            h.version
        }
        fn op_name(_: &String) -> &'static str {
            "toy"
        }
        fn permitted(_: Role, _: &String) -> bool {
            true
        }
        fn forbidden(_: Role, _: &String) -> Result<u8, String> {
            Err("forbidden".into())
        }
    }

    #[test]
    fn a_hello_is_accepted_only_at_the_same_version() {
        let hello = |version| ServerFrameOf::<Toy>::Hello(ToyHello { version });
        assert_eq!(accept_hello::<Toy>(hello(3)), Ok(()));
        assert_eq!(
            accept_hello::<Toy>(hello(4)),
            Err("toy speaks protocol version 4".into())
        );
        let refused = ServerFrameOf::<Toy>::Refused {
            reason: "no".into(),
        };
        assert_eq!(accept_hello::<Toy>(refused), Err("refused: no".into()));
        let early = ServerFrameOf::<Toy>::Response(Response {
            id: 1,
            result: Ok(1),
        });
        assert!(accept_hello::<Toy>(early).is_err());
        assert_eq!(
            version_refusal::<Toy>(9),
            "protocol version 9 not supported; this toy speaks 3"
        );
    }
}
