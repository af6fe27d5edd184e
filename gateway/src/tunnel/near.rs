//! The near end: one TCP listener per remote node port, on the node's local address at this
//! site (IP mode: its own IP and real port; port mode: the shared IP and an allocated port).
//! Each accepted connection becomes one tunnel stream to the node's site.
//!
//! [`Listeners::apply`] changes the listener set as the view changes ([`RouteChange`]: the
//! routes added and the addresses withdrawn, never the whole set): new nodes get listeners,
//! removed nodes lose them (and their proxied connections end), the others are left alone. A
//! listener that cannot be bound is retried on the next change (an empty one retries only).
//!
//! With `tunnel.allowed_sources` set, a connection from outside those networks is reset as
//! soon as it is accepted, before any tunnel stream opens ([`SourceNet`]).
//!
//! With IP aliases configured ([`crate::alias`]), each change first puts every listened-on
//! IPv4 address on the site interface and takes the ones no longer listened on off it; an
//! alias that cannot be added makes its binds fail, so it is retried with them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Tunnels;
use super::header::Request;
use crate::alias::Aliases;
use crate::membership::GatewayId;

/// The label of a local connection refused for its source address, in
/// `fedgw_tunnel_refused_streams_total` and `fedgw status`.
pub const SOURCE_NOT_ALLOWED: &str = "source_not_allowed";

/// One entry of `tunnel.allowed_sources`: an IPv4 or IPv6 network in CIDR notation
/// (`10.0.0.0/8`, `fd00::/8`), or a single address (`192.0.2.7`, taken as `/32`; `/128` for
/// IPv6). Host bits after the prefix are ignored: `10.1.2.3/8` is `10.0.0.0/8`.
///
/// In `fedgw.toml` it is a string; anything else is a parse error naming the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNet(ipnet::IpNet);

/// A `tunnel.allowed_sources` entry that is neither a CIDR nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid source network {0:?} (want a CIDR such as 10.0.0.0/8 or fd00::/8, or one address)"
)]
pub struct SourceNetError(String);

impl SourceNet {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as a
    /// dual-stack listener reports IPv4 clients) counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// Whether `ip` may connect under `allowed`: an empty list allows every source.
    pub fn allows(allowed: &[SourceNet], ip: IpAddr) -> bool {
        allowed.is_empty() || allowed.iter().any(|n| n.contains(ip))
    }
}

impl FromStr for SourceNet {
    type Err = SourceNetError;

    fn from_str(s: &str) -> Result<SourceNet, SourceNetError> {
        let s = s.trim();
        let net = match s.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) => ipnet::IpNet::from(
                s.parse::<IpAddr>()
                    .map_err(|_| SourceNetError(s.to_owned()))?,
            ),
        };
        Ok(SourceNet(net.trunc()))
    }
}

impl fmt::Display for SourceNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SourceNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SourceNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SourceNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where connections to one local address go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The local address listened on.
    pub addr: SocketAddr,
    /// The site whose gateway serves the node.
    pub site: GatewayId,
    /// The stream header: org, node, port name.
    pub request: Request,
    /// `request`, encoded.
    pub header: Vec<u8>,
    /// Cancelled when the route is withdrawn: the listener closes and its connections end.
    pub closed: CancellationToken,
}

impl Route {
    /// A route; fails when the names do not fit a header.
    pub fn new(
        addr: SocketAddr,
        site: GatewayId,
        org: &str,
        node: &str,
        port: &str,
    ) -> Result<Route, super::header::HeaderError> {
        let request = Request::new(org, node, port)?;
        Ok(Route {
            addr,
            site,
            header: request.encode(),
            request,
            closed: CancellationToken::new(),
        })
    }

    /// Whether both send connections to the same place (the cancellation token aside).
    pub fn same_as(&self, other: &Route) -> bool {
        self.addr == other.addr && self.site == other.site && self.request == other.request
    }
}

/// A change of the routes listened on: `removed` addresses are withdrawn first, then every
/// route of `added` is listened on (replacing a different route at its address).
#[derive(Debug, Clone, Default)]
pub struct RouteChange {
    /// Routes to listen on.
    pub added: Vec<Route>,
    /// Addresses to stop listening on.
    pub removed: Vec<SocketAddr>,
}

impl RouteChange {
    /// Whether nothing is added or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The set of local listeners. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    active: Arc<Mutex<BTreeMap<SocketAddr, Arc<Route>>>>,
    /// Routes whose listener could not be bound, with why: retried on the next change.
    failed: Arc<Mutex<BTreeMap<SocketAddr, (Route, String)>>>,
    aliases: Option<Arc<AliasState>>,
}

/// The aliases and the last problem reported, so a lasting failure is logged once.
#[derive(Debug)]
struct AliasState {
    aliases: Aliases,
    last_error: Mutex<Option<String>>,
}

impl Listeners {
    /// An empty set; with `aliases`, listened-on addresses are put on an interface first.
    pub fn new(aliases: Option<Aliases>) -> Listeners {
        Listeners {
            aliases: aliases.map(|aliases| {
                Arc::new(AliasState {
                    aliases,
                    last_error: Mutex::new(None),
                })
            }),
            ..Listeners::default()
        }
    }

    /// Brings the aliases in line with the wanted addresses; logs what changed, and a
    /// failure once until it changes or clears.
    fn sync_aliases<'a>(&self, wanted: impl Iterator<Item = &'a SocketAddr>) {
        let Some(state) = &self.aliases else { return };
        let ips: BTreeSet<Ipv4Addr> = wanted
            .filter_map(|a| match a.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        let problem = match state.aliases.sync(&ips) {
            Ok(outcome) => {
                for ip in &outcome.added {
                    info!(%ip, "IP alias added");
                }
                for ip in &outcome.removed {
                    info!(%ip, "IP alias removed");
                }
                outcome
                    .failed
                    .iter()
                    .map(|(ip, e)| format!("{ip}: {e}"))
                    .reduce(|a, b| format!("{a}; {b}"))
            }
            Err(e) => Some(format!("{e}: {}", crate::net::error_chain(&e))),
        };
        let mut last = state.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if problem != *last {
            match &problem {
                Some(p) => warn!(problem = %p, "IP aliases could not be brought in line; retrying"),
                None if last.is_some() => info!("IP aliases in line again"),
                None => {}
            }
            *last = problem;
        }
    }

    /// Applies `change`, and retries the listeners that could not be bound before. Costs what
    /// the change holds (and, with IP aliases configured, a pass over the listened-on
    /// addresses). Returns without waiting for binds.
    pub fn apply(&self, tunnels: &Tunnels, change: RouteChange) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        for addr in &change.removed {
            if let Some(route) = active.remove(addr) {
                route.closed.cancel();
            }
            failed.remove(addr);
        }
        let mut bind_now: BTreeMap<SocketAddr, Route> = std::mem::take(&mut *failed)
            .into_iter()
            .map(|(addr, (route, _))| (addr, route))
            .collect();
        // a lasting failure is logged once
        let failing: BTreeSet<SocketAddr> = bind_now.keys().copied().collect();
        for route in change.added {
            if let Some(held) = active.get(&route.addr) {
                if held.same_as(&route) {
                    bind_now.remove(&route.addr);
                    continue;
                }
                held.closed.cancel();
                active.remove(&route.addr);
            }
            bind_now.insert(route.addr, route);
        }
        if self.aliases.is_some() {
            self.sync_aliases(active.keys().chain(bind_now.keys()));
        }
        for (addr, route) in bind_now {
            match bind(addr) {
                Ok(listener) => {
                    let route = Arc::new(route);
                    active.insert(addr, route.clone());
                    let tunnels = tunnels.clone();
                    tunnels
                        .0
                        .tracker
                        .clone()
                        .spawn(accept(tunnels, listener, route));
                }
                Err(e) => {
                    if !failing.contains(&addr) {
                        warn!(%addr, node = %route.request.node, org = %route.request.org, error = %e, "cannot listen for a remote node");
                    }
                    failed.insert(addr, (route, e.to_string()));
                }
            }
        }
        tunnels.0.metrics.tunnel_listeners(active.len());
    }

    /// Addresses listened on, sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Whether some listener could not be bound (the caller retries later).
    pub fn has_failures(&self) -> bool {
        !self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// A listener for `addr`. `TCP_NODELAY` is set on it so that every accepted socket has it
/// without a system call of its own (Linux copies the option into accepted sockets).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(tunnels: Tunnels, listener: TcpListener, route: Arc<Route>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = route.closed.cancelled() => return,
            () = tunnels.0.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, from)) if !SourceNet::allows(&tunnels.0.config.allowed_sources, from.ip()) => {
                // per connection, so debug; the count is in the metric and `fedgw status`
                debug!(%from, addr = %route.addr, "local connection from a source outside tunnel.allowed_sources; reset");
                tunnels.0.metrics.tunnel_refused_label(SOURCE_NOT_ALLOWED);
                reset(tcp);
            }
            Ok((tcp, _)) => {
                tunnels
                    .0
                    .metrics
                    .tunnel_connection(&route.request.org, "outbound");
                let t = tunnels.clone();
                let route = route.clone();
                tunnels
                    .0
                    .tracker
                    .spawn(async move { t.proxy(tcp, route).await });
            }
            Err(e) => {
                debug!(addr = %route.addr, error = %e, "accept failed");
                // EMFILE and friends: back off instead of spinning
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = route.closed.cancelled() => return,
                }
            }
        }
    }
}

/// Closes `tcp` with a reset rather than a FIN, so the client sees its connection refused
/// instead of an answer that ended early.
fn reset(tcp: tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "cannot set SO_LINGER to reset a refused connection; closing it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<SourceNet> {
        list.iter()
            .map(|s| s.parse().expect("valid source network"))
            .collect()
    }

    #[test]
    fn source_networks_parse_cidrs_and_single_addresses() {
        let parsed = nets(&[
            "10.0.0.0/8",
            " 192.0.2.7 ",
            "fd00::/8",
            "10.1.2.3/16",
            "::1",
        ]);
        let shown: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "fd00::/8",
                "10.1.0.0/16",
                "::1/128"
            ]
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/8,10.1.0.0/16",
        ] {
            let err = bad.parse::<SourceNet>().expect_err(bad);
            assert!(err.to_string().contains("want a CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_source_is_allowed_when_the_list_is_empty_or_a_network_holds_it() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(SourceNet::allows(&[], ip("203.0.113.9")));
        let allowed = nets(&["10.0.0.0/8", "192.0.2.7", "fd00::/8"]);
        for yes in ["10.255.0.1", "192.0.2.7", "fd12::5", "::ffff:10.1.2.3"] {
            assert!(SourceNet::allows(&allowed, ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.1",
            "192.0.2.8",
            "fe80::1",
            "::ffff:192.0.2.8",
            "127.0.0.1",
        ] {
            assert!(!SourceNet::allows(&allowed, ip(no)), "{no}");
        }
    }

    #[test]
    fn source_networks_round_trip_through_toml() {
        let cfg: super::super::TunnelConfig =
            toml::from_str(r#"allowed_sources = ["10.0.0.0/8", "192.0.2.7"]"#).expect("parse");
        assert_eq!(cfg.allowed_sources, nets(&["10.0.0.0/8", "192.0.2.7/32"]));
        let text = toml::to_string(&cfg).expect("serialize");
        assert!(
            text.contains(r#"allowed_sources = ["10.0.0.0/8", "192.0.2.7/32"]"#),
            "{text}"
        );
        let err =
            toml::from_str::<super::super::TunnelConfig>(r#"allowed_sources = ["10.0.0.0/99"]"#)
                .expect_err("a bad CIDR is refused");
        assert!(err.to_string().contains("10.0.0.0/99"), "{err}");
    }

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = client.expect("connect");
        let (tcp, _) = accepted.expect("accept");
        assert!(
            tcp.nodelay().expect("getsockopt"),
            "TCP_NODELAY on the accepted socket"
        );
    }
}
