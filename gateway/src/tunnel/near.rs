//! The near end ([`Near`]): one TCP listener per remote node port, on the node's local address
//! at this site (IP mode: its own IP and real port; port mode: the shared IP and an allocated
//! port). Each accepted connection becomes one tunnel stream to the node's site, opened over
//! the site's link ([`super::links::Links::open`]): the header and the client's first bytes
//! go out together, the connection is held while the site has no link, and the far end's
//! answer decides whether the splice starts ([`Near`]'s proxy).
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
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::class;
use super::header::{self, Answer, Request};
use super::links::{Link, Links, OpenError};
use super::splice::{self, End, Ended, Proxying, TunnelStream};
use crate::alias::Aliases;
use crate::membership::{GatewayId, Membership};
use crate::metrics::Metrics;

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
            Err(e) => Some(crate::net::with_sources(&e)),
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
    pub fn apply(&self, near: &Near, change: RouteChange) {
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
                    let near = near.clone();
                    near.0.tracker.clone().spawn(accept(near, listener, route));
                }
                Err(e) => {
                    if !failing.contains(&addr) {
                        warn!(%addr, node = %route.request.node, org = %route.request.org, error = %e, "cannot listen for a remote node");
                    }
                    failed.insert(addr, (route, e.to_string()));
                }
            }
        }
        near.0.metrics.tunnel_listeners(active.len());
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

async fn accept(near: Near, listener: TcpListener, route: Arc<Route>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = route.closed.cancelled() => return,
            () = near.0.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, from)) if !SourceNet::allows(&near.0.allowed_sources, from.ip()) => {
                // per connection, so debug; the count is in the metric and `fedgw status`
                debug!(%from, addr = %route.addr, "local connection from a source outside tunnel.allowed_sources; reset");
                near.0.metrics.tunnel_refused_label(SOURCE_NOT_ALLOWED);
                reset(tcp);
            }
            Ok((tcp, _)) => {
                near.0
                    .metrics
                    .tunnel_connection(&route.request.org, "outbound");
                let n = near.clone();
                let route = route.clone();
                near.0
                    .tracker
                    .spawn(async move { n.proxy(tcp, route).await });
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

/// What [`Near::new`] needs: its limits and how it proxies.
#[derive(Debug)]
pub struct NearSetup {
    /// Permits, priority classes and stall time-out, as at the far end.
    pub proxying: Proxying,
    /// How long a new local connection is held for a link (`tunnel.connect_hold_ms`).
    pub connect_hold: Duration,
    /// Source networks that may connect (`tunnel.allowed_sources`; empty: any).
    pub allowed_sources: Vec<SourceNet>,
    /// IP aliases for the listeners (`[addresses] interface`), if configured.
    pub aliases: Option<Aliases>,
}

/// The near end of this gateway: the local listeners and the connections they proxy. Clones
/// share state.
#[derive(Clone, Debug)]
pub struct Near(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Opens the streams.
    links: Links,
    membership: Membership,
    metrics: Metrics,
    proxying: Proxying,
    connect_hold: Duration,
    allowed_sources: Vec<SourceNet>,
    listeners: Listeners,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Near {
    /// A near end that listens nowhere until the first [`Near::update`]; its streams go over
    /// `links`.
    pub fn new(
        setup: NearSetup,
        links: Links,
        membership: Membership,
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Near {
        Near(Arc::new(Inner {
            links,
            membership,
            metrics,
            proxying: setup.proxying,
            connect_hold: setup.connect_hold,
            allowed_sources: setup.allowed_sources,
            listeners: Listeners::new(setup.aliases),
            tracker,
            shutdown,
        }))
    }

    /// Listens on every route's address and stops listening elsewhere
    /// ([`Listeners::reconcile`]).
    pub fn update(&self, change: RouteChange) {
        self.0.listeners.apply(self, change);
    }

    /// Whether some local listener could not be bound (retried on the next update).
    pub fn listener_failures(&self) -> bool {
        self.0.listeners.has_failures()
    }

    /// Local listener addresses, sorted.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.0.listeners.addresses()
    }
}

/// First and longest wait between the attempts of a connection held for a link
/// ([`NearSetup::connect_hold`]); a link registered meanwhile ends the wait at once.
const HOLD_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

impl Near {
    /// Proxies one accepted local connection to `route` (the near end).
    async fn proxy(&self, mut tcp: tokio::net::TcpStream, route: Arc<Route>) {
        let Ok(permit) = self.0.proxying.connections.clone().try_acquire_owned() else {
            self.0.metrics.tunnel_refused(Answer::Overloaded);
            return;
        };
        let revoked = self.0.membership.revocation().token(&route.request.org);
        let closed = route.closed.clone();
        let mut stop = std::pin::pin!(async {
            tokio::select! {
                () = revoked.cancelled() => {}
                () = self.0.shutdown.cancelled() => {}
                () = closed.cancelled() => {}
            }
        });
        let req = &route.request;
        let class = class::class_of(&self.0.proxying.priority, &req.org, &req.node, &req.port);
        let counters = self.0.metrics.tunnel_counters(&req.org, class);
        // TCP_NODELAY comes from the listener: Linux copies it into every accepted socket
        let Some((mut r, mut w, end)) = self
            .open_answered(&mut tcp, &route, class, &counters, stop.as_mut())
            .await
        else {
            // RST rather than FIN: the client must not mistake a refusal for a clean end
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            return;
        };
        let _active = self.0.metrics.tunnel_stream_guard();
        let stall = self.0.proxying.stall;
        match splice::splice(&mut tcp, &mut r, &mut w, end, &counters, stall, stop).await {
            Ended::Refused(answer) => {
                debug!(node = %route.request.node, reason = answer.label(), "stream refused by the far gateway");
                self.0.metrics.tunnel_refused_by_peer(answer);
            }
            Ended::Failed(e) => {
                debug!(node = %route.request.node, error = %e, "proxied connection failed")
            }
            Ended::Stalled => {
                debug!(node = %route.request.node, "local client read nothing for the stall time-out; connection reset");
                self.0.metrics.tunnel_stalled("near");
            }
            Ended::Done | Ended::Stopped => {}
        }
        drop(permit);
    }

    /// Opens the stream of a local connection and sends its header with what the client has
    /// sent by then (≤ [`header::EARLY_READ`] bytes, in one TLS record or QUIC packet), then
    /// waits for the far end's answer, sending on what else the client sends meanwhile. While
    /// the site has no link it holds the connection ([`Near::open_held`]); while the
    /// client's bytes so far fit in [`header::EARLY_READ`], a link lost before the answer (a
    /// peer gateway that restarted: the new process resets the old link at its first packet,
    /// or a new link from it supersedes the old one) costs a new stream on a new link, with
    /// the same bytes, within the same hold time. `None`: no stream, refused, or stopped; the
    /// caller resets the client.
    async fn open_answered<S: std::future::Future<Output = ()>>(
        &self,
        tcp: &mut tokio::net::TcpStream,
        route: &Route,
        class: class::Class,
        counters: &splice::Counters,
        mut stop: std::pin::Pin<&mut S>,
    ) -> Option<(splice::TunnelRead, splice::TunnelWrite, End<'static>)> {
        let deadline = tokio::time::Instant::now() + self.0.connect_hold;
        let mut first: Option<Vec<u8>> = None;
        loop {
            let (stream, link) = match self
                .open_held(&route.site, class, deadline, stop.as_mut())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.0.metrics.tunnel_open_failed();
                    // per connection, so debug: a down site would flood the log; the count is
                    // in fedgw_tunnel_refused_by_peer_streams_total{reason="no_tunnel"}
                    debug!(node = %route.request.node, org = %route.request.org, error = %e, "no tunnel for a local connection");
                    return None;
                }
            };
            let (mut r, mut w) = stream.split();
            w.set_class(class);
            let first = match &mut first {
                Some(f) => f,
                None => {
                    // read once the stream is open: for a short request, all of it
                    let mut f = Vec::with_capacity(route.header.len() + header::EARLY_READ);
                    f.extend_from_slice(&route.header);
                    match splice::read_queued(tcp, &mut f, header::EARLY_READ) {
                        Ok(n) => {
                            counters.tx.inc_by(n as u64);
                            counters.class.sent(n);
                        }
                        Err(e) => {
                            debug!(error = %e, "local connection failed before its stream opened");
                            w.reset();
                            return None;
                        }
                    }
                    first.insert(f)
                }
            };
            let lost_link = |e: &std::io::Error| {
                let retry = !link.is_alive() && tokio::time::Instant::now() < deadline;
                if retry {
                    debug!(node = %route.request.node, error = %e, "link lost before the far end answered; opening the stream again");
                }
                retry
            };
            if let Err(e) = w.write_all(first).await {
                if lost_link(&e) {
                    continue;
                }
                debug!(error = %e, "tunnel stream failed before the header");
                return None;
            }
            // more bytes from the client go out as they come and are kept, up to the same
            // bound, to be sent again; past it, or at the client's end of stream, the splice
            // takes over (and reads the answer), and a lost link ends the connection
            // `None`: the client ended or sent too much to keep; the splice takes over
            let waited = {
                let mut answer = std::pin::pin!(r.answer());
                loop {
                    tokio::select! {
                        biased;
                        () = stop.as_mut() => return None,
                        answer = &mut answer => break Some(answer),
                        _ = tcp.readable() => {
                            let room = (route.header.len() + header::EARLY_READ).saturating_sub(first.len());
                            let before = first.len();
                            let read = if room == 0 {
                                Ok(0)
                            } else {
                                use bytes::BufMut as _;
                                tcp.try_read_buf(&mut first.limit(room))
                            };
                            match read {
                                Ok(0) => break None,
                                Ok(n) => {
                                    counters.tx.inc_by(n as u64);
                                    counters.class.sent(n);
                                    if let Err(e) = w.write_all(&first[before..]).await {
                                        if lost_link(&e) {
                                            break Some(Err(e));
                                        }
                                        debug!(error = %e, "tunnel stream failed before the answer");
                                        return None;
                                    }
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(e) => {
                                    debug!(error = %e, "local connection failed before the answer");
                                    w.reset();
                                    return None;
                                }
                            }
                        }
                    }
                }
            };
            let Some(answer) = waited else {
                return Some((r, w, End::Near));
            };
            match answer {
                Ok(Answer::Accepted) => return Some((r, w, End::NearAnswered)),
                Ok(refused) => {
                    debug!(node = %route.request.node, reason = refused.label(), "stream refused by the far gateway");
                    self.0.metrics.tunnel_refused_by_peer(refused);
                    w.reset();
                    return None;
                }
                Err(e) if lost_link(&e) => {}
                Err(e) => {
                    debug!(node = %route.request.node, error = %e, "tunnel stream failed before the answer");
                    w.reset();
                    return None;
                }
            }
        }
    }

    /// Opens a stream of `class` to `peer` ([`Links::open_stream`]), retrying while `peer` has no link
    /// until `deadline` ([`NearSetup::connect_hold`]): after a short, growing wait
    /// ([`HOLD_RETRY`]), or at once when any link registers. A revoked org or `stop` ends the
    /// wait.
    async fn open_held<S: std::future::Future<Output = ()>>(
        &self,
        peer: &GatewayId,
        class: class::Class,
        deadline: tokio::time::Instant,
        mut stop: std::pin::Pin<&mut S>,
    ) -> Result<(TunnelStream, Link), OpenError> {
        let mut delay = HOLD_RETRY.0;
        let mut registered = self.0.links.registrations();
        loop {
            registered.mark_unchanged();
            let err = match self.0.links.open_stream(peer, class).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline || self.0.membership.revocation().set().contains(&peer.org) {
                return Err(err);
            }
            debug!(%peer, error = %err, "no link for a local connection yet; holding it");
            let jitter = rand::random_range(0.75..1.25);
            let wake = (now + delay.mul_f64(jitter)).min(deadline);
            tokio::select! {
                biased;
                () = stop.as_mut() => return Err(err),
                _ = registered.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            delay = (delay * 2).min(HOLD_RETRY.1);
        }
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
