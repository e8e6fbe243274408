//! An authoritative DNS server on loopback, serving zones a test sets up (or failing every
//! query with one response code), over UDP and TCP on one port. It stops when dropped (or,
//! waiting for it, with [`DnsServer::stop`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{Catalog, MessageResponseBuilder, ZoneType};
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

/// The TTL of every record: long enough that nothing expires during a test.
const TTL: u32 = 300;

/// One zone and its records.
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
}

/// `name` as an absolute domain name.
fn name(name: &str) -> Name {
    let mut name = Name::from_utf8(name).expect("a domain name");
    name.set_fqdn(true);
    name
}

impl Zone {
    /// An empty zone for `origin` (its SOA is added when the server starts).
    pub fn new(origin: &str) -> Zone {
        Zone {
            origin: name(origin),
            records: Vec::new(),
        }
    }

    pub fn record(mut self, owner: &str, rdata: RData) -> Zone {
        self.records
            .push(Record::from_rdata(name(owner), TTL, rdata));
        self
    }

    /// An MX record; an `exchange` of `"."` makes a null MX.
    pub fn mx(self, owner: &str, preference: u16, exchange: &str) -> Zone {
        let exchange = if exchange == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.record(owner, RData::MX(MX::new(preference, exchange)))
    }

    pub fn a(self, owner: &str, ip: Ipv4Addr) -> Zone {
        self.record(owner, RData::A(A(ip)))
    }

    pub fn aaaa(self, owner: &str, ip: Ipv6Addr) -> Zone {
        self.record(owner, RData::AAAA(AAAA(ip)))
    }

    /// A TXT record; text past 255 bytes is split into several strings, as DNS needs.
    pub fn txt(self, owner: &str, text: &str) -> Zone {
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.record(owner, RData::TXT(TXT::new(strings)))
    }

    fn authority(self) -> InMemoryAuthority {
        let mut authority = InMemoryAuthority::empty(self.origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            self.origin.prepend_label("ns").expect("ns name"),
            self.origin
                .prepend_label("hostmaster")
                .expect("hostmaster name"),
            1,
            3600,
            600,
            86400,
            60,
        );
        let soa = Record::from_rdata(self.origin.clone(), TTL, RData::SOA(soa));
        assert!(authority.upsert_mut(soa, 1), "SOA of {}", self.origin);
        for record in self.records {
            let shown = record.to_string();
            assert!(authority.upsert_mut(record, 1), "record {shown}");
        }
        authority
    }
}

/// How the server answers.
enum Handler {
    /// From its zones.
    Zones(Catalog),
    /// Every query with this response code and no records.
    Fail(ResponseCode),
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        match self {
            Handler::Zones(catalog) => catalog.handle_request(request, response_handle).await,
            Handler::Fail(code) => {
                let response = MessageResponseBuilder::from_message_request(request)
                    .error_msg(request.header(), *code);
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => {
                        let mut header = Header::response_from_request(request.header());
                        header.set_response_code(ResponseCode::ServFail);
                        header.into()
                    }
                }
            }
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    server: ServerFuture<Handler>,
}

impl DnsServer {
    /// Starts a server answering for `zones` on 127.0.0.1, at a port chosen by the system.
    /// Names outside every zone get REFUSED.
    pub async fn start(zones: Vec<Zone>) -> DnsServer {
        let mut catalog = Catalog::new();
        for zone in zones {
            let origin = LowerName::new(&zone.origin);
            catalog.upsert(origin, vec![Arc::new(zone.authority())]);
        }
        DnsServer::serve(Handler::Zones(catalog)).await
    }

    /// Starts a server that answers every query with `code` (SERVFAIL, say) and no records.
    pub async fn failing(code: ResponseCode) -> DnsServer {
        DnsServer::serve(Handler::Fail(code)).await
    }

    async fn serve(handler: Handler) -> DnsServer {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("local address");
        let mut server = ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10));
        DnsServer { addr, server }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Dropping the server aborts its tasks; cancelling first lets them end on their own.
        self.server.shutdown_token().cancel();
    }
}

/// A UDP socket and a TCP listener on the same loopback port. Another process may hold the TCP
/// side of the port the system picked for UDP, so a few ports are tried.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("local address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
