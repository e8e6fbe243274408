//! Where to deliver mail for a domain (RFC 5321 §5.1): its MX hosts in order of preference,
//! each with its addresses; the domain itself when it has no MX records (the implicit MX); or
//! nowhere, for good, when it has a null MX (RFC 7505) or does not exist.
//!
//! Lookups go only to the name servers in the configuration, over UDP with TCP for truncated
//! answers; the system's resolver configuration and hosts file are not read, so every
//! instance resolves alike. Each lookup has a bounded time, and failing to get an answer is a
//! temporary failure, never a reason to bounce.
//!
//! Configured overrides send a domain's mail to fixed hosts instead (a smarthost, or a test's
//! server), without looking up MX records.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{Name, TokioResolver};
use rand::seq::SliceRandom;

/// The port of MX hosts unless configured otherwise.
pub const SMTP_PORT: u16 = 25;

/// The override key that applies to every domain without an override of its own.
pub const ANY_DOMAIN: &str = "*";

/// How mail is routed.
#[derive(Clone, Debug)]
pub struct MxConfig {
    /// The name servers asked, each over UDP and TCP. With none, every lookup fails
    /// (temporarily) and only overrides and address literals route.
    pub name_servers: Vec<SocketAddr>,
    /// How long one query waits for an answer.
    pub timeout: Duration,
    /// How many times a query is tried before the lookup fails. A lookup gives up after at most
    /// `timeout × (attempts + 1)` in all, so a route takes at most twice that (the MX records,
    /// then the hosts' addresses, all hosts at once).
    pub attempts: usize,
    /// The port MX hosts are reached on.
    pub port: u16,
    /// Fixed hosts for some domains (lowercase, without a final dot), instead of their MX
    /// records; [`ANY_DOMAIN`] for every domain without its own entry (a smarthost).
    pub overrides: HashMap<String, Vec<Target>>,
}

impl Default for MxConfig {
    fn default() -> MxConfig {
        MxConfig {
            name_servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            port: SMTP_PORT,
            overrides: HashMap::new(),
        }
    }
}

/// A host to deliver to, as configured: a name or an IP address, and a port (the configured MX
/// port when none is given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for Target {
    type Err = String;

    /// Parses `host`, `host:port`, `192.0.2.1:2525`, `[2001:db8::1]:2525` or a bare IPv6
    /// address.
    fn from_str(s: &str) -> Result<Target, String> {
        let bad = || format!("{s:?} is not a host, host:port or [IPv6]:port");
        if s.is_empty() {
            return Err(bad());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            let (host, port) = match s.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            };
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']')
            {
                return Err(bad());
            }
            (host, port)
        };
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?),
        };
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }
}

/// One host to try, with every address it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The host's name (the MX exchange, the domain for an implicit MX, or the configured
    /// override), lowercase, in ASCII (internationalized labels as A-labels) and without a
    /// final dot: the name its certificate should have and TLS sends as the server name.
    pub name: String,
    /// The MX preference; 0 for an implicit MX and for overrides, which keep their configured
    /// order.
    pub preference: u16,
    pub port: u16,
    /// IPv4 addresses before IPv6 ones: a sending IPv4 address is the one most receivers know
    /// the reputation of.
    pub addrs: Vec<IpAddr>,
}

impl Host {
    /// Every address with the port, in the order to try.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .map(|&ip| SocketAddr::new(ip, self.port))
            .collect()
    }
}

/// Why a domain has no route. [`RouteError::is_permanent`] tells a domain that cannot receive
/// mail (bounce) from a lookup that failed for now (retry later).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{domain:?} is not a domain name mail can be sent to")]
    InvalidDomain { domain: String },
    #[error("{domain} accepts no mail: it publishes a null MX (RFC 7505)")]
    NullMx { domain: String },
    #[error("{domain} does not exist (NXDOMAIN)")]
    NoSuchDomain { domain: String },
    #[error("{domain} has no MX records and no address")]
    NoAddress { domain: String },
    #[error("none of the mail exchangers of {domain} has an address: {hosts}")]
    NoHostAddress { domain: String, hosts: String },
    #[error("looking up {domain} failed for now: {detail}")]
    Temporary { domain: String, detail: String },
}

impl RouteError {
    /// Whether the domain cannot receive mail, so that retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary { .. })
    }
}

/// Why a name has no addresses, or no records of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// The name exists but has no records of the type asked for.
    NoRecords,
    /// The name does not exist.
    NxDomain,
    /// No answer that says either (timeout, SERVFAIL, refused, network error).
    Temporary(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoRecords => f.write_str("no address records"),
            Failure::NxDomain => f.write_str("no such name"),
            Failure::Temporary(detail) => f.write_str(detail),
        }
    }
}

/// What a DNS error says about the name.
fn classify(e: &ProtoError) -> Failure {
    match e.kind() {
        ProtoErrorKind::NoRecordsFound(no) => match no.response_code {
            ResponseCode::NoError => Failure::NoRecords,
            ResponseCode::NXDomain => Failure::NxDomain,
            code => Failure::Temporary(format!("the name server answered {code}")),
        },
        ProtoErrorKind::Timeout => Failure::Temporary("no answer from the name servers".into()),
        _ => Failure::Temporary(e.to_string()),
    }
}

/// A host that may receive the mail, before its addresses are known.
struct Candidate {
    host: String,
    preference: u16,
    port: u16,
    /// The name to look up; `None` when `host` is an IP address.
    lookup: Option<Name>,
}

/// Finds where to deliver mail for a domain.
#[derive(Clone)]
pub struct Resolver {
    dns: TokioResolver,
    port: u16,
    overrides: HashMap<String, Vec<Target>>,
    /// The most one lookup may take, whatever the DNS library does.
    limit: Duration,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("port", &self.port)
            .field("overrides", &self.overrides)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking the name servers in `cfg`; nothing is sent until the first lookup.
    pub fn new(cfg: &MxConfig) -> Resolver {
        let mut servers = Vec::with_capacity(2 * cfg.name_servers.len());
        for &addr in &cfg.name_servers {
            servers.push(NameServerConfig::new(addr, ProtocolConfig::Udp));
            servers.push(NameServerConfig::new(addr, ProtocolConfig::Tcp));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout;
        // The library counts retries after the first try.
        opts.attempts = cfg.attempts.saturating_sub(1);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = true;
        opts.try_tcp_on_error = true;
        opts.cache_size = 1024;
        let dns = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        let tries = u32::try_from(cfg.attempts.max(1)).unwrap_or(u32::MAX);
        Resolver {
            dns,
            port: cfg.port,
            overrides: cfg
                .overrides
                .iter()
                .map(|(domain, targets)| (normalize(domain), targets.clone()))
                .collect(),
            limit: cfg.timeout.saturating_mul(tries.saturating_add(1)),
        }
    }

    /// The hosts to try for `domain`, in order: an override's hosts; else its MX hosts by
    /// preference, hosts of equal preference in random order so that load spreads as the
    /// domain meant (RFC 5321 §5.1); else, with no MX records, the domain itself. An address
    /// literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) routes to that address.
    ///
    /// Hosts without addresses are left out. The result is never empty: no host at all is an
    /// error, permanent when DNS said so (null MX, NXDOMAIN, no addresses), temporary when DNS
    /// did not answer.
    pub async fn route(&self, domain: &str) -> Result<Vec<Host>, RouteError> {
        let key = normalize(domain);
        let invalid = || RouteError::InvalidDomain {
            domain: domain.to_string(),
        };
        if key.is_empty() {
            return Err(invalid());
        }
        if let Some(literal) = key.strip_prefix('[') {
            let ip = literal
                .strip_suffix(']')
                .map(|inner| inner.strip_prefix("ipv6:").unwrap_or(inner))
                .and_then(|inner| inner.parse::<IpAddr>().ok())
                .ok_or_else(invalid)?;
            return Ok(vec![Host {
                name: key.clone(),
                preference: 0,
                port: self.port,
                addrs: vec![ip],
            }]);
        }
        if let Some(targets) = self
            .overrides
            .get(&key)
            .or_else(|| self.overrides.get(ANY_DOMAIN))
        {
            return self.route_override(&key, targets).await;
        }
        let mut name = Name::from_utf8(&key).map_err(|_| invalid())?;
        name.set_fqdn(true);

        let mx = match self.capped(self.dns.mx_lookup(name.clone())).await {
            Ok(mx) => mx
                .iter()
                .map(|r| (r.preference(), r.exchange().clone()))
                .collect::<Vec<_>>(),
            Err(Failure::NoRecords) => Vec::new(),
            Err(Failure::NxDomain) => return Err(RouteError::NoSuchDomain { domain: key }),
            Err(Failure::Temporary(detail)) => {
                return Err(RouteError::Temporary {
                    domain: key,
                    detail: format!("MX lookup: {detail}"),
                })
            }
        };
        if mx.is_empty() {
            let host = host_name(&name);
            return match self.addresses(name).await {
                Ok(addrs) => Ok(vec![Host {
                    name: host,
                    preference: 0,
                    port: self.port,
                    addrs,
                }]),
                Err(Failure::Temporary(detail)) => Err(RouteError::Temporary {
                    domain: key,
                    detail: format!("address lookup: {detail}"),
                }),
                Err(Failure::NoRecords | Failure::NxDomain) => {
                    Err(RouteError::NoAddress { domain: key })
                }
            };
        }
        // A null MX is an MX whose exchange is the root; an exchange of "." names no host
        // whatever its preference, so a domain with nothing else accepts no mail.
        let mut exchanges: Vec<(u16, Name)> = Vec::with_capacity(mx.len());
        for (preference, exchange) in mx {
            if !exchange.is_root() && !exchanges.iter().any(|(_, e)| *e == exchange) {
                exchanges.push((preference, exchange));
            }
        }
        if exchanges.is_empty() {
            return Err(RouteError::NullMx { domain: key });
        }
        exchanges.shuffle(&mut rand::rng());
        exchanges.sort_by_key(|(preference, _)| *preference);
        let hosts = exchanges
            .into_iter()
            .map(|(preference, exchange)| Candidate {
                host: host_name(&exchange),
                preference,
                port: self.port,
                lookup: Some(exchange),
            })
            .collect();
        self.resolve_hosts(&key, hosts).await
    }

    /// The hosts of an override, in their configured order.
    async fn route_override(
        &self,
        domain: &str,
        targets: &[Target],
    ) -> Result<Vec<Host>, RouteError> {
        let mut hosts = Vec::with_capacity(targets.len());
        for target in targets {
            let port = target.port.unwrap_or(self.port);
            let name = if target.host.parse::<IpAddr>().is_ok() {
                None
            } else {
                let mut name =
                    Name::from_utf8(&target.host).map_err(|_| RouteError::InvalidDomain {
                        domain: target.host.clone(),
                    })?;
                name.set_fqdn(true);
                Some(name)
            };
            hosts.push(Candidate {
                host: name.as_ref().map_or_else(|| target.host.clone(), host_name),
                preference: 0,
                port,
                lookup: name,
            });
        }
        self.resolve_hosts(domain, hosts).await
    }

    /// Looks up the addresses of every host at once (an IP address needs no lookup), and keeps
    /// the hosts that have some, in the order given.
    async fn resolve_hosts(
        &self,
        domain: &str,
        hosts: Vec<Candidate>,
    ) -> Result<Vec<Host>, RouteError> {
        let mut lookups = tokio::task::JoinSet::new();
        for (index, candidate) in hosts.iter().enumerate() {
            if let Some(name) = candidate.lookup.clone() {
                let this = self.clone();
                lookups.spawn(async move { (index, this.addresses(name).await) });
            }
        }
        let mut found: Vec<Option<Result<Vec<IpAddr>, Failure>>> = vec![None; hosts.len()];
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((index, result)) => found[index] = Some(result),
                Err(e) => {
                    return Err(RouteError::Temporary {
                        domain: domain.to_string(),
                        detail: format!("address lookup stopped: {e}"),
                    })
                }
            }
        }
        let mut routed = Vec::with_capacity(hosts.len());
        let mut failures = Vec::new();
        let mut temporary = false;
        for (candidate, result) in hosts.into_iter().zip(found) {
            let Candidate {
                host,
                preference,
                port,
                ..
            } = candidate;
            let result = match (result, host.parse::<IpAddr>()) {
                (Some(result), _) => result,
                (None, Ok(ip)) => Ok(vec![ip]),
                (None, Err(_)) => Err(Failure::Temporary("not looked up".into())),
            };
            match result {
                Ok(addrs) => routed.push(Host {
                    name: host,
                    preference,
                    port,
                    addrs,
                }),
                Err(failure) => {
                    tracing::debug!(domain, host, %failure, "mail exchanger has no address");
                    temporary |= matches!(failure, Failure::Temporary(_));
                    failures.push(format!("{host}: {failure}"));
                }
            }
        }
        if !routed.is_empty() {
            return Ok(routed);
        }
        let hosts = failures.join("; ");
        Err(if temporary {
            RouteError::Temporary {
                domain: domain.to_string(),
                detail: format!("address lookup: {hosts}"),
            }
        } else {
            RouteError::NoHostAddress {
                domain: domain.to_string(),
                hosts,
            }
        })
    }

    /// The IPv4 and IPv6 addresses of `name`, both looked up at once. Some addresses are an
    /// answer even when the other lookup failed.
    async fn addresses(&self, name: Name) -> Result<Vec<IpAddr>, Failure> {
        let (v4, v6) = tokio::join!(
            self.capped(self.dns.ipv4_lookup(name.clone())),
            self.capped(self.dns.ipv6_lookup(name)),
        );
        let mut addrs = Vec::new();
        if let Ok(v4) = &v4 {
            addrs.extend(v4.iter().map(|a| IpAddr::V4(a.0)));
        }
        if let Ok(v6) = &v6 {
            addrs.extend(v6.iter().map(|a| IpAddr::V6(a.0)));
        }
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        match (v4.err(), v6.err()) {
            (Some(t @ Failure::Temporary(_)), _) | (_, Some(t @ Failure::Temporary(_))) => Err(t),
            (Some(Failure::NxDomain), _) | (_, Some(Failure::NxDomain)) => Err(Failure::NxDomain),
            _ => Err(Failure::NoRecords),
        }
    }

    /// The TXT records at `name`, each as its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2);
    /// none when the name has none or does not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let mut n = Name::from_utf8(normalize(name)).map_err(|e| format!("{name}: {e}"))?;
        n.set_fqdn(true);
        match self.capped(self.dns.txt_lookup(n)).await {
            Ok(found) => Ok(found
                .iter()
                .map(|txt| {
                    let bytes: Vec<u8> = txt
                        .txt_data()
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .collect()),
            Err(Failure::NoRecords | Failure::NxDomain) => Ok(Vec::new()),
            Err(Failure::Temporary(detail)) => Err(format!("TXT lookup of {name}: {detail}")),
        }
    }

    /// Runs one lookup within the resolver's limit.
    async fn capped<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, ProtoError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.limit, lookup).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure::Temporary(format!(
                "no answer from the name servers within {:?}",
                self.limit
            ))),
        }
    }
}

/// A DNS name as a host name: ASCII, lowercase, without the final dot.
fn host_name(name: &Name) -> String {
    let mut host = name.to_ascii().to_ascii_lowercase();
    if host.ends_with('.') {
        host.pop();
    }
    host
}

/// A domain as compared and shown: trimmed, lowercase, without a final dot.
fn normalize(domain: &str) -> String {
    let domain = domain.trim();
    domain.strip_suffix('.').unwrap_or(domain).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = |host: &str, port: Option<u16>| Target {
            host: host.to_string(),
            port,
        };
        assert_eq!(
            "relay.example:587".parse(),
            Ok(t("relay.example", Some(587)))
        );
        assert_eq!("relay.example".parse(), Ok(t("relay.example", None)));
        assert_eq!("192.0.2.1:2525".parse(), Ok(t("192.0.2.1", Some(2525))));
        assert_eq!(
            "[2001:db8::1]:2525".parse(),
            Ok(t("2001:db8::1", Some(2525)))
        );
        assert_eq!("[2001:db8::1]".parse(), Ok(t("2001:db8::1", None)));
        assert_eq!("2001:db8::1".parse(), Ok(t("2001:db8::1", None)));
        for bad in [
            "", "relay:", "relay:0", "relay:x", ":25", "[::1", "[x]:25", "[::1]25", "a b:25",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domains_normalize() {
        assert_eq!(normalize(" Example.COM. "), "example.com");
        assert_eq!(normalize("example.com"), "example.com");
    }

    #[test]
    fn only_temporary_errors_are_retried() {
        let d = || "example.com".to_string();
        assert!(RouteError::NullMx { domain: d() }.is_permanent());
        assert!(RouteError::NoSuchDomain { domain: d() }.is_permanent());
        assert!(RouteError::NoAddress { domain: d() }.is_permanent());
        assert!(!RouteError::Temporary {
            domain: d(),
            detail: String::new()
        }
        .is_permanent());
    }

    #[tokio::test]
    async fn literals_and_overrides_need_no_dns() {
        let mut cfg = MxConfig {
            port: 2525,
            ..MxConfig::default()
        };
        cfg.overrides.insert(
            "Relay.Test".to_string(),
            vec!["127.0.0.1:2600".parse().unwrap(), "[::1]".parse().unwrap()],
        );
        let r = Resolver::new(&cfg);
        let hosts = r.route("relay.test.").await.unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0].socket_addrs(),
            vec!["127.0.0.1:2600".parse().unwrap()]
        );
        assert_eq!(hosts[1].socket_addrs(), vec!["[::1]:2525".parse().unwrap()]);

        let hosts = r.route("[192.0.2.7]").await.unwrap();
        assert_eq!(
            hosts[0].socket_addrs(),
            vec!["192.0.2.7:2525".parse().unwrap()]
        );
        let hosts = r.route("[IPv6:2001:db8::7]").await.unwrap();
        assert_eq!(
            hosts[0].addrs,
            vec!["2001:db8::7".parse::<IpAddr>().unwrap()]
        );
        for bad in ["[192.0.2]", "[nonsense]", "", "."] {
            let e = r.route(bad).await.unwrap_err();
            assert!(matches!(e, RouteError::InvalidDomain { .. }), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn without_name_servers_lookups_fail_for_now() {
        let r = Resolver::new(&MxConfig::default());
        let e = r.route("example.com").await.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
    }
}
