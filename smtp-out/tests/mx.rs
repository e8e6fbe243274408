//! MX resolution against a real DNS server on loopback.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_server::proto::op::ResponseCode;
use smtp_out::mx::{MxConfig, Resolver, RouteError, Target};
use support::dns::{DnsServer, Zone};

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// The zone every test asks about.
fn zone() -> Zone {
    Zone::new("test")
        // MX records in no particular order, two of equal preference.
        .mx("order.test", 20, "mx-b.order.test")
        .mx("order.test", 30, "mx-c.order.test")
        .mx("order.test", 10, "mx-a.order.test")
        .mx("order.test", 20, "mx-b2.order.test")
        .a("mx-a.order.test", v4(1))
        .aaaa("mx-a.order.test", v6(1))
        .a("mx-a.order.test", v4(11))
        .a("mx-b.order.test", v4(2))
        .aaaa("mx-b2.order.test", v6(22))
        .a("mx-c.order.test", v4(3))
        // An MX host without an address is skipped.
        .mx("skip.test", 10, "gone.skip.test")
        .mx("skip.test", 20, "mx.skip.test")
        .a("mx.skip.test", v4(4))
        // No MX host has an address.
        .mx("dangling.test", 10, "gone.dangling.test")
        // No MX records: the domain itself.
        .a("implicit.test", v4(5))
        .aaaa("implicit.test", v6(5))
        // A null MX.
        .mx("null.test", 0, ".")
        // No MX and no address.
        .txt("empty.test", "v=spf1 -all")
        // An internationalized domain, stored as A-labels.
        .mx("xn--bcher-kva.test", 10, "MX.xn--bcher-kva.test")
        .a("mx.xn--bcher-kva.test", v4(7))
        // A smarthost reached through an override.
        .a("relay.test", v4(6))
}

fn config(dns: SocketAddr) -> MxConfig {
    MxConfig {
        name_servers: vec![dns],
        timeout: Duration::from_secs(2),
        attempts: 2,
        port: 2525,
        ..MxConfig::default()
    }
}

fn ips(list: &[IpAddr]) -> Vec<String> {
    list.iter().map(IpAddr::to_string).collect()
}

#[tokio::test]
async fn mx_hosts_come_in_order_of_preference() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let mut middle_orders = HashSet::new();
    for _ in 0..40 {
        let hosts = resolver.route("Order.Test.").await.unwrap();
        let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names[0], "mx-a.order.test");
        assert_eq!(names[3], "mx-c.order.test");
        let mut middle = [names[1].clone(), names[2].clone()];
        middle_orders.insert(middle.clone());
        middle.sort();
        assert_eq!(middle, ["mx-b.order.test", "mx-b2.order.test"]);
        let prefs: Vec<u16> = hosts.iter().map(|h| h.preference).collect();
        assert_eq!(prefs, [10, 20, 20, 30]);
        assert!(hosts.iter().all(|h| h.port == 2525));

        // IPv4 addresses first, then IPv6 ones.
        let mut a = ips(&hosts[0].addrs);
        a[..2].sort();
        assert_eq!(a, ["192.0.2.1", "192.0.2.11", "2001:db8::1"]);
        let b2 = hosts.iter().find(|h| h.name == "mx-b2.order.test").unwrap();
        assert_eq!(
            b2.socket_addrs(),
            ["[2001:db8::16]:2525".parse::<SocketAddr>().unwrap()]
        );
    }
    // Hosts of equal preference come in both orders.
    assert_eq!(middle_orders.len(), 2, "{middle_orders:?}");
    dns.stop().await;
}

#[tokio::test]
async fn mx_hosts_without_addresses_are_left_out() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let hosts = resolver.route("skip.test").await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "mx.skip.test");
    assert_eq!(ips(&hosts[0].addrs), ["192.0.2.4"]);

    let e = resolver.route("dangling.test").await.unwrap_err();
    assert!(matches!(e, RouteError::NoHostAddress { .. }), "{e}");
    assert!(e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn without_mx_records_the_domain_itself_receives() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let hosts = resolver.route("implicit.test").await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "implicit.test");
    assert_eq!(hosts[0].preference, 0);
    assert_eq!(ips(&hosts[0].addrs), ["192.0.2.5", "2001:db8::5"]);

    let e = resolver.route("empty.test").await.unwrap_err();
    assert!(matches!(e, RouteError::NoAddress { .. }), "{e}");
    assert!(e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn internationalized_domains_route_by_their_a_labels() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let hosts = resolver.route("Bücher.test").await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].name, "mx.xn--bcher-kva.test");
    assert_eq!(ips(&hosts[0].addrs), ["192.0.2.7"]);
    dns.stop().await;
}

#[tokio::test]
async fn a_null_mx_is_permanent() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let e = resolver.route("null.test").await.unwrap_err();
    assert_eq!(
        e,
        RouteError::NullMx {
            domain: "null.test".into()
        }
    );
    assert!(e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn a_domain_that_does_not_exist_is_permanent() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    let e = resolver.route("nowhere.test").await.unwrap_err();
    assert_eq!(
        e,
        RouteError::NoSuchDomain {
            domain: "nowhere.test".into()
        }
    );
    assert!(e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn a_refusing_name_server_is_temporary() {
    let dns = DnsServer::start(vec![zone()]).await;
    let resolver = Resolver::new(&config(dns.addr));
    // The server is authoritative for test. only, and refuses everything else.
    let e = resolver.route("example.org").await.unwrap_err();
    assert!(matches!(e, RouteError::Temporary { .. }), "{e}");
    assert!(!e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn a_failing_name_server_is_temporary() {
    let dns = DnsServer::failing(ResponseCode::ServFail).await;
    let resolver = Resolver::new(&config(dns.addr));
    let e = resolver.route("order.test").await.unwrap_err();
    assert!(matches!(e, RouteError::Temporary { .. }), "{e}");
    assert!(!e.is_permanent());
    dns.stop().await;
}

#[tokio::test]
async fn a_silent_name_server_is_temporary_within_the_timeout() {
    // A socket that takes queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = MxConfig {
        name_servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(200),
        attempts: 2,
        ..MxConfig::default()
    };
    let resolver = Resolver::new(&cfg);
    let start = Instant::now();
    let e = resolver.route("order.test").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, RouteError::Temporary { .. }), "{e}");
    assert!(!e.is_permanent());
    // At most timeout × (attempts + 1), and some slack for a loaded machine.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn overrides_route_through_dns_names_and_addresses() {
    let dns = DnsServer::start(vec![zone()]).await;
    let mut cfg = config(dns.addr);
    cfg.overrides.insert(
        "smart.test".into(),
        vec![
            "relay.test:587".parse::<Target>().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ],
    );
    cfg.overrides
        .insert("*".into(), vec!["[::1]:2600".parse().unwrap()]);
    let resolver = Resolver::new(&cfg);
    let hosts = resolver.route("smart.test").await.unwrap();
    let addrs: Vec<SocketAddr> = hosts.iter().flat_map(|h| h.socket_addrs()).collect();
    assert_eq!(
        addrs,
        [
            "192.0.2.6:587".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:2525".parse().unwrap()
        ]
    );
    // Every other domain goes to the smarthost, without an MX lookup.
    let hosts = resolver.route("nowhere.test").await.unwrap();
    assert_eq!(
        hosts[0].socket_addrs(),
        ["[::1]:2600".parse::<SocketAddr>().unwrap()]
    );
    dns.stop().await;
}
