//! The data plane (docs/DESIGN.md section 8): tunnels between sites and a local listener per remote
//! node.
//!
//! ```text
//!  client ──TCP──▶ listener on node1.org2's local address (near gateway, org1)
//!                    │ header (org2, node1, p2p)
//!                    ▼
//!               tunnel stream: QUIC (ALPN fedgw/1) or yamux over TCP+TLS (ALPN fedgw/1)
//!                    │
//!                    ▼
//!               far gateway (org2): authorise, dial node1's registered address, splice
//! ```
//!
//! One tunnel connection ([`Link`]) per pair of sites, opened by whichever side needs it first
//! (or kept up by the side with the lower id, and always by an outbound-only site); a
//! connection opened by either side carries streams both ways, so an outbound-only site is
//! reachable over the connections it dials. Each proxied TCP connection is one stream.
//!
//! Revocation: a revoked org's links and proxied connections are cut at once (its revocation
//! token), its nodes leave the view so their listeners close, and its certificates fail every
//! new handshake.

pub mod class;
pub mod far;
mod gate;
pub mod header;
pub mod mux;
pub mod near;
pub mod quic;
pub mod splice;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::tls::ReloadableIdentity;
use fedgw_certs::{PeerIdentity, PeerVerifier};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::listener::TlsConn;
use crate::membership::{GatewayId, Membership};
use crate::metrics::Metrics;
use far::{DialPolicy, Targets};
use header::Answer;
use splice::{End, Ended, TunnelStream};

/// Which transport tunnels use (`[tunnel] transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC only.
    Quic,
    /// TCP+TLS only (UDP blocked).
    Tcp,
    /// QUIC, falling back to TCP+TLS when the QUIC handshake does not complete within
    /// [`AUTO_QUIC_TIMEOUT`].
    #[default]
    Auto,
}

/// `[tunnel]` in `fedgw.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// `quic`, `tcp` or `auto` (default).
    pub transport: Transport,
    /// Allow streams to nodes registered on loopback addresses (single-host labs and tests;
    /// off in production, where a loopback target would reach the gateway host itself).
    pub allow_loopback_targets: bool,
    /// Most proxied connections at once, each direction counted separately.
    pub max_connections: usize,
    /// Most inbound proxied connections (streams whose header is still due included) one
    /// member org may hold at once [default: half of `max_connections`, at least 1], so that
    /// no single member can take every connection the far end serves. Beyond it a stream is
    /// refused as `overloaded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_org: Option<usize>,
    /// Source networks that may connect to the local listeners (this site's nodes), as CIDRs
    /// or single addresses: `["10.0.0.0/8", "fd00::/8", "192.0.2.7"]`. Empty (the default):
    /// any source. A connection from elsewhere is reset before a stream opens and counted in
    /// `fedgw_tunnel_refused_streams_total{reason="source_not_allowed"}`.
    pub allowed_sources: Vec<near::SourceNet>,
    /// Longest time a tunnel link takes new streams, ms [default and maximum: half the leaf
    /// lifetime]. See [`link_age`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_link_ms: Option<u64>,
    /// Longest time, ms, a proxied connection's TCP peer (the node at the far end, the local
    /// client at the near end) may leave tunnel bytes waiting without taking any [default:
    /// 30 000; 0: no limit; otherwise 100 to 3 600 000]. Past it the connection is reset at both ends, which gives back
    /// the stream and link windows its unread bytes held: without a limit, eight streams
    /// whose readers stopped hold a link's whole window (64 MiB) and so every other stream
    /// on it in that direction. A reader that takes anything at all starts the time anew, so
    /// slow readers are not cut. Counted in `fedgw_tunnel_stalled_connections_total{end}`.
    pub stall_timeout_ms: u64,
    /// Priority classes by port, sent first to last: `consensus`, `interactive`, `bulk`.
    /// Keys are a port name or `org/node/port`; built in: `raft` consensus, `p2p` bulk,
    /// anything else interactive. See [`class`].
    pub priority: class::Priorities,
    /// Congestion controller of tunnel links: `bbr` (default) or `cubic`. See
    /// [`quic::Congestion`].
    pub congestion: quic::Congestion,
    /// Longest time, ms, a new local connection to a site whose link is down, reconnecting or
    /// lost before the far end answered is held while the link is redialled [default: 5000;
    /// 0: refused at once; at most 60 000]. A peer gateway that restarts within it costs its
    /// clients a delay, not a reset; clients that redial slowly after a refusal (geth waits
    /// up to 35 s) recover at once. Past it the connection is reset.
    pub connect_hold_ms: u64,
}

/// Default of [`TunnelConfig::stall_timeout_ms`]: longer than a node's own write time-out
/// (GoQuorum, as go-ethereum's p2p server, drops a devp2p peer when writing one message takes
/// 20 s, `frameWriteTimeout`), so a node gives up on a stuck peer before the gateway does.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 30_000;

/// Default of [`TunnelConfig::connect_hold_ms`]: a crashed gateway's supervisor restarts it,
/// and the gateway is ready, well within it.
pub const DEFAULT_CONNECT_HOLD_MS: u64 = 5000;

/// Largest [`TunnelConfig::connect_hold_ms`]: a client held longer has likely given up.
pub const MAX_CONNECT_HOLD_MS: u64 = 60_000;

impl TunnelConfig {
    /// The stall time-out ([`TunnelConfig::stall_timeout_ms`]), `None` when disabled.
    pub fn stall_timeout(&self) -> Option<Duration> {
        (self.stall_timeout_ms > 0).then(|| Duration::from_millis(self.stall_timeout_ms))
    }

    /// The hold time of a new local connection ([`TunnelConfig::connect_hold_ms`]).
    pub fn connect_hold(&self) -> Duration {
        Duration::from_millis(self.connect_hold_ms)
    }
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Auto,
            allow_loopback_targets: false,
            max_connections: 16_384,
            max_connections_per_org: None,
            allowed_sources: Vec::new(),
            max_link_ms: None,
            stall_timeout_ms: DEFAULT_STALL_TIMEOUT_MS,
            priority: class::Priorities::new(),
            congestion: quic::Congestion::default(),
            connect_hold_ms: DEFAULT_CONNECT_HOLD_MS,
        }
    }
}

/// Every reason a stream or local connection can be refused here, as labelled in
/// `fedgw_tunnel_refused_streams_total` and `fedgw status`: the far end's refusals
/// ([`Answer::label`]) and the near end's own.
pub fn refusal_reasons() -> impl Iterator<Item = &'static str> {
    Answer::ALL
        .iter()
        .filter(|a| **a != Answer::Accepted)
        .map(|a| a.label())
        .chain([near::SOURCE_NOT_ALLOWED])
}

/// How long `auto` waits for a QUIC handshake before trying TCP+TLS.
pub const AUTO_QUIC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `auto` keeps using TCP+TLS for a peer after QUIC failed.
pub const AUTO_QUIC_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Dial timeout of a tunnel connection (connect plus handshake).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive interval of tunnel connections.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A tunnel connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest link age taken as given (a year; the leaf lifetime is capped at 366 days), so a
/// retirement time always fits an `Instant`.
const MAX_RETIRE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Reconnect backoff of kept-up links: first delay and cap.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// One tunnel connection to a peer site.
#[derive(Clone)]
pub enum Link {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A yamux session over TCP+TLS; `closed` fires when the session ends.
    Mux {
        /// Opens streams.
        mux: mux::Mux,
        /// Cancelled when the session is gone.
        closed: CancellationToken,
        /// When the certificate the peer authenticated with expires, if it could be read.
        peer_not_after: Option<SystemTime>,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({})", self.transport())
    }
}

impl Link {
    /// `quic` or `tcp`.
    pub fn transport(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
            Link::Mux { .. } => "tcp",
        }
    }

    /// When the peer's certificate, as presented in the handshake, expires.
    fn peer_not_after(&self) -> Option<SystemTime> {
        match self {
            Link::Quic(c) => c
                .peer_identity()?
                .downcast::<Vec<CertificateDer<'static>>>()
                .ok()
                .and_then(|certs| not_after(certs.first()?)),
            Link::Mux { peer_not_after, .. } => *peer_not_after,
        }
    }

    /// Closes the link and every stream on it.
    fn close(&self, code: u32, reason: &'static str) {
        match self {
            Link::Quic(c) => c.close(quinn::VarInt::from_u32(code), reason.as_bytes()),
            Link::Mux { closed, .. } => closed.cancel(),
        }
    }

    fn is_alive(&self) -> bool {
        match self {
            Link::Quic(c) => c.close_reason().is_none(),
            Link::Mux { closed, .. } => !closed.is_cancelled(),
        }
    }

    async fn open(&self) -> std::io::Result<TunnelStream> {
        match self {
            Link::Quic(c) => {
                let (s, r) = c.open_bi().await.map_err(std::io::Error::other)?;
                Ok(TunnelStream::Quic(s, r))
            }
            Link::Mux { mux, .. } => {
                let (r, w) = mux.open()?;
                Ok(TunnelStream::Mux(r, w))
            }
        }
    }

    async fn closed(&self) {
        match self {
            Link::Quic(c) => {
                c.closed().await;
            }
            Link::Mux { closed, .. } => closed.cancelled().await,
        }
    }
}

/// Why a stream could not be opened to a site.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The site is unknown, or is outbound-only and has no link to us.
    #[error("no route to {0}")]
    NoRoute(GatewayId),
    /// Every dial failed.
    #[error("cannot reach {0}: {1}")]
    Dial(GatewayId, String),
    /// The link failed while opening the stream.
    #[error("opening a stream to {0} failed: {1}")]
    Stream(GatewayId, std::io::Error),
}

/// TLS material for tunnels.
#[derive(Debug, Clone)]
pub struct TunnelTls {
    /// This gateway's identity (renewed in place).
    pub identity: ReloadableIdentity,
    /// Verifies peers (chain, name constraints, revocation).
    pub verifier: Arc<PeerVerifier>,
}

/// The data plane of one gateway. Clones share state.
#[derive(Clone, Debug)]
pub struct Tunnels(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    me: GatewayId,
    domain: String,
    outbound_only: bool,
    config: TunnelConfig,
    membership: Membership,
    metrics: Metrics,
    quic: Option<quinn::Endpoint>,
    quic_client: quinn::ClientConfig,
    tls_client: Arc<rustls::ClientConfig>,
    links: Mutex<HashMap<GatewayId, LinkEntry>>,
    /// Every live link by its number, the one in `links` and older ones still carrying
    /// streams, for [`Tunnels::register`] to find the links a new one supersedes.
    all_links: Mutex<HashMap<u64, (GatewayId, LinkEntry)>>,
    /// Counts registered links: connections held for a link wake up on a change.
    link_up: tokio::sync::watch::Sender<u64>,
    /// This gateway's identity, whose certificate bounds a link's age as the peer's does.
    identity: ReloadableIdentity,
    max_link_age: Duration,
    next_link: AtomicU64,
    dial_locks: Mutex<HashMap<GatewayId, DialLock>>,
    quic_failed: Mutex<HashMap<GatewayId, Instant>>,
    keepers: Mutex<HashMap<GatewayId, CancellationToken>>,
    targets: RwLock<Arc<Targets>>,
    /// Every authorisation the far end granted (caller org, node, port name → the address
    /// it allowed), with a token that [`Tunnels::update`] cancels once the targets withdraw
    /// it: the node is gone, its port moved, or its access policy leaves the caller out. The
    /// lock is taken after `targets`'.
    grants: Mutex<HashMap<GrantKey, Grant>>,
    policy: RwLock<Arc<DialPolicy>>,
    connections: Arc<Semaphore>,
    /// Per caller org, its share of `connections` ([`TunnelConfig::max_connections_per_org`]).
    org_connections: Mutex<HashMap<String, Arc<Semaphore>>>,
    listeners: near::Listeners,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Per peer: one dial at a time, and the end and error of the last failed one, which callers
/// that queued behind it take as their own rather than dialling again.
type DialLock = Arc<tokio::sync::Mutex<Option<(Instant, String)>>>;

/// Caller org, node name, port name.
type GrantKey = (String, String, String);

/// The host and port a far-end authorisation allowed, and the token its streams stop on.
#[derive(Debug)]
struct Grant {
    dial: (String, u16),
    withdrawn: CancellationToken,
}

/// A registered link: new streams use it until `retire_at`.
#[derive(Debug, Clone)]
struct LinkEntry {
    id: u64,
    link: Link,
    retire_at: Instant,
    /// This side dialled it.
    outbound: bool,
}

/// How long an inbound tunnel link from a site not (yet) in the view waits for the site's
/// `Gateway` record before it is refused: a site that has just started publishes it within a
/// sync round trip.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// A link the same side dials again while this side still holds one it dialled earlier,
/// retiring no sooner than this, is superseded at once ([`Tunnels::register`]). A link that
/// retires sooner may be the one the dialler replaces on its own schedule (its age can
/// differ by the time a handshake takes), and keeps its streams.
const SUPERSEDE_MARGIN: Duration = Duration::from_secs(5);

/// First and longest wait between the attempts of a connection held for a link
/// ([`TunnelConfig::connect_hold_ms`]); a link registered meanwhile ends the wait at once.
const HOLD_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

/// How long a link authenticated by a certificate valid until `peer_not_after` takes new
/// streams: `max` (half the leaf lifetime, or `tunnel.max_link_ms`), or half the certificate's
/// remaining validity at `now` if that is shorter. The link is closed, with whatever streams it
/// still carries, at twice this age: never after the certificate expires, so no link outlives
/// the certificate that authenticated it (docs/DESIGN.md section 4), and a proxied connection
/// started just before the link retired still has the same time again to finish.
pub fn link_age(max: Duration, now: SystemTime, peer_not_after: Option<SystemTime>) -> Duration {
    match peer_not_after {
        Some(t) => max.min(t.duration_since(now).unwrap_or_default() / 2),
        None => max,
    }
}

/// The `notAfter` of a DER certificate; `None` if it does not parse.
fn not_after(cert: &[u8]) -> Option<SystemTime> {
    fedgw_certs::pki::not_after(cert).ok()
}

/// What [`Tunnels::new`] needs.
#[derive(Debug)]
pub struct TunnelSetup {
    /// This gateway.
    pub me: GatewayId,
    /// The consortium domain.
    pub domain: String,
    /// This site accepts no inbound connections.
    pub outbound_only: bool,
    /// `[tunnel]`.
    pub config: TunnelConfig,
    /// TLS material.
    pub tls: TunnelTls,
    /// The UDP socket of the QUIC endpoint (the gateway port number); `None` with
    /// `transport = "tcp"`.
    pub udp: Option<std::net::UdpSocket>,
    /// The gateway's own listening sockets, never dialled for a stream.
    pub own: Vec<SocketAddr>,
    /// IP aliases for the near-end listeners (`[addresses] interface`), if configured.
    pub aliases: Option<crate::alias::Aliases>,
    /// Longest time a link takes new streams ([`crate::config::Config::max_link_age`]).
    pub max_link_age: Duration,
    /// The QUIC endpoint's secrets that outlive the process ([`quic::RestartKeys::derive`]).
    pub keys: quic::RestartKeys,
}

impl Tunnels {
    /// Sets up the QUIC endpoint (when `setup.udp` is given) and the client configs. Nothing
    /// runs until [`Tunnels::start`].
    pub fn new(
        setup: TunnelSetup,
        membership: Membership,
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Tunnels, TunnelError> {
        let provider = fedgw_certs::tls::provider();
        let server_tls = fedgw_certs::tls::tunnel_server_config(
            &setup.tls.identity,
            setup.tls.verifier.clone(),
            provider.clone(),
        )?;
        let client_tls = fedgw_certs::tls::tunnel_client_config(
            &setup.tls.identity,
            setup.tls.verifier.clone(),
            provider,
        )?;
        let transport = Arc::new(quic::transport_config(setup.config.congestion));
        let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| TunnelError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::new(Arc::new(quic_server), setup.keys.token.clone());
        server.transport_config(transport.clone());
        let quic_client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls.clone())
            .map_err(|e| TunnelError::Quic(e.to_string()))?;
        let mut quic_client = quinn::ClientConfig::new(Arc::new(quic_client_tls));
        quic_client.transport_config(transport);
        let quic = match setup.udp {
            Some(udp) => {
                // an outbound-only site answers no handshakes
                let server = (!setup.outbound_only).then_some(server);
                Some(quic::endpoint(udp, server, &setup.keys)?)
            }
            None => None,
        };
        let config = setup.config;
        let listeners = near::Listeners::new(setup.aliases);
        Ok(Tunnels(Arc::new(Inner {
            me: setup.me,
            domain: setup.domain,
            outbound_only: setup.outbound_only,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            org_connections: Mutex::new(HashMap::new()),
            policy: RwLock::new(Arc::new(DialPolicy {
                own: setup.own,
                allow_loopback: config.allow_loopback_targets,
                local: Default::default(),
            })),
            config,
            membership,
            metrics,
            quic,
            quic_client,
            tls_client: Arc::new(client_tls),
            links: Mutex::new(HashMap::new()),
            all_links: Mutex::new(HashMap::new()),
            link_up: tokio::sync::watch::Sender::new(0),
            identity: setup.tls.identity,
            max_link_age: setup.max_link_age,
            next_link: AtomicU64::new(1),
            dial_locks: Mutex::new(HashMap::new()),
            quic_failed: Mutex::new(HashMap::new()),
            keepers: Mutex::new(HashMap::new()),
            targets: RwLock::new(Arc::new(Targets::default())),
            grants: Mutex::new(HashMap::new()),
            listeners,
            tracker,
            shutdown,
        })))
    }

    /// Starts accepting QUIC connections and TCP+TLS tunnel connections (`tcp` carries the
    /// connections the gateway port's ALPN dispatch hands over).
    pub fn start(&self, tcp: tokio::sync::mpsc::Receiver<TlsConn>) {
        if let Some(endpoint) = self.0.quic.clone() {
            self.0.tracker.spawn(self.clone().accept_quic(endpoint));
        }
        self.0.tracker.spawn(self.clone().accept_tcp(tcp));
    }

    /// The bound QUIC address, if the endpoint runs.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.0.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Changes what the data plane serves, each part only if given: what the far end serves
    /// (`targets`), what the near end listens on (`routes`: added and withdrawn, never the whole
    /// set), and the gateways to keep links up to where this side is the keeper. Called on
    /// every view change with what it changed; an empty call retries listeners that could not
    /// be bound. Costs what it is given (a new route: one bind), apart from a copy of the
    /// set of listened-on addresses when routes change.
    pub fn update(
        &self,
        targets: Option<Targets>,
        routes: near::RouteChange,
        gateways: Option<Vec<PeerGateway>>,
    ) {
        if let Some(targets) = targets {
            let mut current = self.0.targets.write().unwrap_or_else(|e| e.into_inner());
            // streams whose authorisation the new targets withdraw end now, like a revoked
            // org's: a far end does not rely on the near end to close them
            let mut grants = self.0.grants.lock().unwrap_or_else(|e| e.into_inner());
            grants.retain(|(caller, node, port), grant| {
                let req = header::Request {
                    org: targets.org.clone(),
                    node: node.clone(),
                    port: port.clone(),
                };
                let kept = targets
                    .authorise(caller, &req)
                    .is_ok_and(|d| d == grant.dial);
                if !kept {
                    grant.withdrawn.cancel();
                }
                kept
            });
            *current = Arc::new(targets);
        }
        // a stream must never be sent into one of this gateway's own listeners
        if !routes.is_empty() {
            let mut policy = self.0.policy.write().unwrap_or_else(|e| e.into_inner());
            let mut next = DialPolicy::clone(&policy);
            for addr in &routes.removed {
                next.local.remove(addr);
            }
            next.local.extend(routes.added.iter().map(|r| r.addr));
            *policy = Arc::new(next);
        }
        self.0.listeners.apply(self, routes);
        if let Some(gateways) = gateways {
            self.keep_links(gateways);
        }
    }

    /// Number of live tunnel links.
    pub fn link_count(&self) -> usize {
        self.0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| e.link.is_alive())
            .count()
    }

    /// Every live link, sorted by peer.
    pub fn links(&self) -> Vec<LinkStatus> {
        let links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = links
            .iter()
            .filter(|(_, e)| e.link.is_alive())
            .map(|(peer, e)| LinkStatus {
                peer: peer.clone(),
                id: e.id,
                retired: Instant::now() >= e.retire_at,
                transport: e.link.transport(),
                quic: match &e.link {
                    Link::Quic(c) => Some(c.stats().path),
                    Link::Mux { .. } => None,
                },
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// The live link to `peer`, if any, and its transport.
    pub fn link_transport(&self, peer: &GatewayId) -> Option<&'static str> {
        self.live_link(peer).map(|e| e.link.transport())
    }

    /// Whether some local listener could not be bound (retried on the next update).
    pub fn listener_failures(&self) -> bool {
        self.0.listeners.has_failures()
    }

    /// Local listener addresses, sorted.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.0.listeners.addresses()
    }

    fn peer_gateway(&self, peer: &GatewayId) -> Option<PeerGateway> {
        self.0.membership.read(|v| {
            v.gateways()
                .into_iter()
                .find(|(o, s, _)| *o == peer.org && *s == peer.site)
                .map(|(org, site, g)| PeerGateway {
                    id: GatewayId { org, site },
                    advertise: g.advertise,
                    outbound_only: g.outbound_only,
                })
        })
    }

    /// The link new streams to `peer` use: alive and not retired.
    fn live_link(&self, peer: &GatewayId) -> Option<LinkEntry> {
        self.registered_link(peer, false)
    }

    /// The registered link to `peer` if it is alive; a retired one only with `retired_too`.
    fn registered_link(&self, peer: &GatewayId, retired_too: bool) -> Option<LinkEntry> {
        self.0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .filter(|e| e.link.is_alive() && (retired_too || Instant::now() < e.retire_at))
            .cloned()
    }

    /// Opens a stream to `peer`, over its live link or a new one.
    pub async fn open(&self, peer: &GatewayId) -> Result<TunnelStream, OpenError> {
        self.open_stream(peer).await.map(|(s, _)| s)
    }

    /// [`Tunnels::open`], and the link the stream runs on.
    async fn open_stream(&self, peer: &GatewayId) -> Result<(TunnelStream, Link), OpenError> {
        for attempt in 0..2 {
            let LinkEntry { id, link, .. } = match self.live_link(peer) {
                Some(l) => l,
                // boxed: a dial's state is large, and every proxied connection's task would
                // carry room for it
                None => match Box::pin(self.dial(peer)).await {
                    Ok(entry) => entry,
                    // a site this side cannot dial (outbound-only) replaces a retired link
                    // itself, on its own schedule; until then the old link still serves
                    Err(e) => self.registered_link(peer, true).ok_or(e)?,
                },
            };
            match link.open().await {
                Ok(s) => return Ok((s, link)),
                Err(e) if attempt == 0 => {
                    debug!(%peer, error = %e, "stream open failed; redialling");
                    self.drop_link(peer, id);
                }
                Err(e) => return Err(OpenError::Stream(peer.clone(), e)),
            }
        }
        Err(OpenError::NoRoute(peer.clone()))
    }

    fn drop_link(&self, peer: &GatewayId, id: u64) {
        let mut links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(peer).is_some_and(|e| e.id == id) {
            links.remove(peer);
        }
    }

    /// Dials `peer` (one dial at a time per peer) and registers the link. A caller that
    /// queued behind a dial that failed gets that dial's error without dialling again, so a
    /// burst of connections held for a down site costs one dial per attempt, not one each.
    async fn dial(&self, peer: &GatewayId) -> Result<LinkEntry, OpenError> {
        let lock = self
            .0
            .dial_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.clone())
            .or_default()
            .clone();
        let asked = Instant::now();
        let mut last_failure = lock.lock().await;
        if let Some(l) = self.live_link(peer) {
            return Ok(l);
        }
        if let Some((at, error)) = &*last_failure
            && *at > asked
        {
            return Err(OpenError::Dial(peer.clone(), error.clone()));
        }
        let gw = self
            .peer_gateway(peer)
            .filter(|g| {
                !g.outbound_only && !self.0.membership.revocation().set().contains(&g.id.org)
            })
            .ok_or_else(|| OpenError::NoRoute(peer.clone()))?;
        let mut errors = vec![];
        for endpoint in &gw.advertise {
            match self.dial_endpoint(peer, endpoint).await {
                Ok(link) => {
                    *last_failure = None;
                    return Ok(self.register(peer.clone(), link, "outbound"));
                }
                Err(e) => errors.push(format!("{endpoint}: {e}")),
            }
        }
        let error = errors.join("; ");
        *last_failure = Some((Instant::now(), error.clone()));
        Err(OpenError::Dial(peer.clone(), error))
    }

    async fn dial_endpoint(&self, peer: &GatewayId, endpoint: &str) -> Result<Link, String> {
        let use_quic = match self.0.config.transport {
            Transport::Tcp => false,
            Transport::Quic => true,
            Transport::Auto => {
                let failed = self.0.quic_failed.lock().unwrap_or_else(|e| e.into_inner());
                failed
                    .get(peer)
                    .is_none_or(|t| t.elapsed() >= AUTO_QUIC_RETRY_AFTER)
            }
        };
        if !(use_quic && self.0.quic.is_some()) {
            return self.dial_tcp(peer, endpoint).await;
        }
        let timeout = match self.0.config.transport {
            Transport::Auto => AUTO_QUIC_TIMEOUT,
            _ => DIAL_TIMEOUT,
        };
        match tokio::time::timeout(timeout, self.dial_quic(peer, endpoint)).await {
            Ok(Ok(link)) => return Ok(link),
            Ok(Err(e)) if self.0.config.transport == Transport::Quic => return Err(e),
            Err(_) if self.0.config.transport == Transport::Quic => {
                return Err("QUIC handshake timed out".into());
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "QUIC dial failed; trying TCP+TLS"),
            Err(_) => debug!(%peer, "QUIC dial timed out; trying TCP+TLS"),
        }
        let link = self.dial_tcp(peer, endpoint).await?;
        // only now is UDP the problem: when TCP+TLS fails too, the peer is down (restarting),
        // and its next link should be QUIC again
        self.0
            .quic_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.clone(), Instant::now());
        Ok(link)
    }

    async fn dial_quic(&self, peer: &GatewayId, endpoint: &str) -> Result<Link, String> {
        let quic = self.0.quic.as_ref().ok_or("no QUIC endpoint")?;
        // the peer proves the identity the view expects, whatever name or address it is at
        let name = peer.server_name(&self.0.domain);
        let name = name.as_str();
        let addrs = crate::net::resolve(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let mut last = String::from("no address");
        for addr in addrs {
            let connecting = match quic.connect_with(self.0.quic_client.clone(), addr, name) {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match connecting.await {
                Ok(conn) => {
                    let id = self.identity_of(conn.peer_identity());
                    if id.as_ref() != Some(peer) {
                        conn.close(quinn::VarInt::from_u32(1), b"unexpected peer");
                        return Err(format!("{endpoint} is not {peer}"));
                    }
                    return Ok(Link::Quic(conn));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    async fn dial_tcp(&self, peer: &GatewayId, endpoint: &str) -> Result<Link, String> {
        let name = crate::net::dns_server_name(&peer.server_name(&self.0.domain))
            .map_err(|e| e.to_string())?;
        let tls = crate::net::dial_tls_as(endpoint, name, self.0.tls_client.clone(), DIAL_TIMEOUT)
            .await
            .map_err(|e| format!("{e}: {}", crate::net::error_chain(&e)))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let peer_not_after = leaf.as_deref().and_then(not_after);
        let id = leaf.and_then(|l| {
            fedgw_certs::peer_identity(&l, &self.0.domain)
                .ok()
                .and_then(|p| GatewayId::from_identity(&p, &self.0.domain))
        });
        if id.as_ref() != Some(peer) {
            return Err(format!("{endpoint} is not {peer}"));
        }
        let (tcp, tls) = tls.into_inner();
        let (mux, driver) =
            mux::session(tcp, tls.into(), mux::Role::Client, &self.mux_config(), None);
        Ok(self.run_mux(peer.clone(), mux, driver, peer_not_after))
    }

    /// Session settings of TCP+TLS links: streams bounded by `max_connections`, the tunnel
    /// keep-alive and idle timeout.
    fn mux_config(&self) -> mux::Config {
        mux::Config {
            max_streams: self.0.config.max_connections,
            keep_alive: KEEP_ALIVE,
            idle_timeout: IDLE_TIMEOUT,
            congestion: self.0.config.congestion,
        }
    }

    /// The gateway an inbound link speaks for, if it may carry tunnels: another site than this
    /// one, and one its org has published (a `Gateway` record in the view), waiting up to
    /// [`PUBLISH_WAIT`] for the record of a site that has just started. The certificate
    /// verifier already required a gateway leaf; this refuses a site that does not exist.
    async fn inbound_peer(&self, id: Option<GatewayId>) -> Option<GatewayId> {
        let id = id?;
        if id == self.0.me {
            return None;
        }
        let mut changed = self.0.membership.subscribe();
        let published = async {
            loop {
                if self.peer_gateway(&id).is_some() {
                    return true;
                }
                if changed.changed().await.is_err() {
                    return false;
                }
            }
        };
        if let Ok(true) = tokio::time::timeout(PUBLISH_WAIT, published).await {
            return Some(id);
        }
        debug!(peer = %id, "tunnel from a site its org has not published refused");
        None
    }

    fn identity_of(&self, any: Option<Box<dyn std::any::Any>>) -> Option<GatewayId> {
        let certs = any?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        let id: PeerIdentity = fedgw_certs::peer_identity(certs.first()?, &self.0.domain).ok()?;
        GatewayId::from_identity(&id, &self.0.domain)
    }

    /// Registers a link and starts serving the streams its peer opens. New streams use it for
    /// [`link_age`] (of the earlier-expiring of the two certificates, so both ends agree); it
    /// is closed at twice that age, or, when the peer is a site this side cannot dial, when the
    /// peer's certificate expires (new streams keep using it after its age until the peer
    /// replaces it).
    ///
    /// A link dialled by the same side as an older one this side still holds (and would not
    /// retire within [`SUPERSEDE_MARGIN`]) supersedes it: the dialler does not dial while it
    /// has a usable link, so it restarted or lost the old one, which is closed at once with its
    /// streams rather than left to its idle timeout.
    fn register(&self, peer: GatewayId, link: Link, direction: &'static str) -> LinkEntry {
        let id = self.0.next_link.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let peer_not_after = link.peer_not_after();
        let own_not_after = self
            .0
            .identity
            .current()
            .cert
            .first()
            .and_then(|c| not_after(c));
        let earlier = match (peer_not_after, own_not_after) {
            (Some(p), Some(o)) => Some(p.min(o)),
            (p, o) => p.or(o),
        };
        let age = link_age(self.0.max_link_age, now, earlier);
        // a site this side cannot dial (outbound-only) replaces its links on its own schedule,
        // so its link is kept, retired or not, until its certificate expires
        let dialable = self.peer_gateway(&peer).is_some_and(|g| !g.outbound_only);
        let end_of_life = match peer_not_after {
            Some(t) if !dialable => t.duration_since(now).unwrap_or_default(),
            _ => age.saturating_mul(2),
        };
        let outbound = direction == "outbound";
        let entry = LinkEntry {
            id,
            link: link.clone(),
            retire_at: Instant::now() + age.min(MAX_RETIRE),
            outbound,
        };
        let superseded: Vec<LinkEntry> = {
            let mut all = self.0.all_links.lock().unwrap_or_else(|e| e.into_inner());
            let keep_until = Instant::now() + SUPERSEDE_MARGIN;
            let older = all
                .values()
                .filter(|(p, e)| *p == peer && e.outbound == outbound && e.retire_at > keep_until)
                .map(|(_, e)| e.clone())
                .collect();
            all.insert(id, (peer.clone(), entry.clone()));
            older
        };
        let replaced = self
            .0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.clone(), entry.clone());
        info!(%peer, transport = link.transport(), direction, new_streams_for = ?age, "tunnel up");
        self.0.metrics.tunnel_link(link.transport(), 1);
        for old in &superseded {
            info!(%peer, transport = old.link.transport(), link = old.id, "tunnel superseded by a new link from the same dialler; closing it");
            old.link.close(4, "superseded");
        }
        if let Some(old) = replaced
            && old.link.is_alive()
            && !superseded.iter().any(|s| s.id == old.id)
        {
            // both sides dialled at once, or the old link retired: it keeps its streams until
            // they end or it reaches its own end of life
            debug!(%peer, "a second link to the same site; new streams use the newer one");
        }
        self.0.link_up.send_modify(|n| *n += 1);
        let this = self.clone();
        let revoked = self.0.membership.revocation().token(&peer.org);
        self.0.tracker.spawn(async move {
            let end_of_life = tokio::time::sleep(end_of_life);
            let serve = async {
                match &link {
                    Link::Quic(conn) => this.serve_quic(&peer, conn, revoked).await,
                    Link::Mux { closed, .. } => {
                        tokio::select! {
                            () = closed.cancelled() => {}
                            () = revoked.cancelled() => closed.cancel(),
                            () = this.0.shutdown.cancelled() => closed.cancel(),
                        }
                    }
                }
            };
            tokio::select! {
                () = serve => {}
                () = end_of_life => {
                    info!(%peer, transport = link.transport(), "tunnel reached its maximum age; closing it");
                    link.close(3, "maximum age");
                }
            }
            this.0.metrics.tunnel_link(link.transport(), -1);
            this.0
                .all_links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let mut links = this.0.links.lock().unwrap_or_else(|e| e.into_inner());
            if links.get(&peer).is_some_and(|e| e.id == id) {
                links.remove(&peer);
            }
            info!(%peer, transport = link.transport(), "tunnel down");
        });
        entry
    }

    async fn serve_quic(
        &self,
        peer: &GatewayId,
        conn: &quinn::Connection,
        revoked: CancellationToken,
    ) {
        let mut path = tokio::time::interval(Duration::from_secs(1));
        let mut lost = 0;
        loop {
            tokio::select! {
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => self.spawn_far(peer.org.clone(), TunnelStream::Quic(send, recv)),
                    Err(e) => {
                        debug!(%peer, error = %e, "QUIC link closed");
                        return;
                    }
                },
                _ = path.tick() => {
                    let stats = conn.stats().path;
                    self.0.metrics.tunnel_quic_path(
                        peer,
                        stats.rtt,
                        stats.current_mtu,
                        stats.lost_packets.saturating_sub(lost),
                    );
                    lost = stats.lost_packets;
                }
                () = revoked.cancelled() => {
                    conn.close(quinn::VarInt::from_u32(2), b"revoked");
                    return;
                }
                () = self.0.shutdown.cancelled() => {
                    conn.close(quinn::VarInt::from_u32(0), b"shutdown");
                    return;
                }
            }
        }
    }

    /// Drives a yamux session in a task: inbound streams go to the far end; the returned link
    /// opens outbound ones.
    fn run_mux(
        &self,
        peer: GatewayId,
        mux: mux::Mux,
        mut driver: mux::Driver,
        peer_not_after: Option<SystemTime>,
    ) -> Link {
        let closed = CancellationToken::new();
        let this = self.clone();
        let done = closed.clone();
        self.0.tracker.spawn(async move {
            loop {
                tokio::select! {
                    s = driver.accept() => match s {
                        Ok((r, w)) => this.spawn_far(peer.org.clone(), TunnelStream::Mux(r, w)),
                        Err(e) => {
                            debug!(%peer, error = %e, "yamux session ended");
                            break;
                        }
                    },
                    () = done.cancelled() => break,
                }
            }
            done.cancel();
        });
        Link::Mux {
            mux,
            closed,
            peer_not_after,
        }
    }

    async fn accept_quic(self, endpoint: quinn::Endpoint) {
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
                () = self.0.shutdown.cancelled() => {
                    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
                    return;
                }
            };
            let this = self.clone();
            self.0.tracker.spawn(async move {
                let conn = match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        debug!(error = %e, "QUIC handshake failed");
                        this.0.metrics.handshake("tunnel-quic", "failed");
                        return;
                    }
                    Err(_) => {
                        this.0.metrics.handshake("tunnel-quic", "timeout");
                        return;
                    }
                };
                this.0.metrics.handshake("tunnel-quic", "ok");
                match this
                    .inbound_peer(this.identity_of(conn.peer_identity()))
                    .await
                {
                    Some(peer) => {
                        this.register(peer, Link::Quic(conn), "inbound");
                    }
                    None => conn.close(quinn::VarInt::from_u32(1), b"no gateway identity"),
                }
            });
        }
    }

    async fn accept_tcp(self, mut conns: tokio::sync::mpsc::Receiver<TlsConn>) {
        loop {
            let conn = tokio::select! {
                c = conns.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                () = self.0.shutdown.cancelled() => return,
            };
            let id = conn
                .info()
                .peer
                .as_ref()
                .and_then(|p| GatewayId::from_identity(p, &self.0.domain));
            let this = self.clone();
            self.0.tracker.spawn(async move {
                let peer = tokio::select! {
                    p = this.inbound_peer(id) => p,
                    () = this.0.shutdown.cancelled() => return,
                };
                let Some(peer) = peer else {
                    debug!("tunnel connection without a published gateway identity dropped");
                    return;
                };
                let (tcp, tls, end) = conn.into_parts();
                let peer_not_after = tls
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| not_after(c));
                let (mux, driver) =
                    mux::session(tcp, tls.into(), mux::Role::Server, &this.mux_config(), end);
                let link = this.run_mux(peer.clone(), mux, driver, peer_not_after);
                this.register(peer, link, "inbound");
            });
        }
    }

    /// Serves one inbound stream from `caller_org` (the far end).
    fn spawn_far(&self, caller_org: String, stream: TunnelStream) {
        let this = self.clone();
        // split here: a value captured by the task stays in its state for its whole life
        let (mut r, mut w) = stream.split();
        self.0.tracker.spawn(async move {
            let permits = this
                .org_connections(&caller_org)
                .try_acquire_owned()
                .ok()
                .zip(this.0.connections.clone().try_acquire_owned().ok());
            let Some(permits) = permits else {
                this.0.metrics.tunnel_refused(Answer::Overloaded);
                splice::refuse(&mut w, Answer::Overloaded).await;
                return;
            };
            let header =
                tokio::time::timeout(far::HEADER_TIMEOUT, splice::read_request(&mut r)).await;
            let (req, mut early) = match header {
                Ok(Ok(h)) => h,
                Ok(Err(answer)) => return this.refuse(&mut w, answer).await,
                Err(_) => return this.refuse(&mut w, Answer::BadHeader).await,
            };
            // taken before the targets are read: a revocation that lands from here on cancels
            // it, whatever the copy of the targets below still says
            let revoked = this.0.membership.revocation().token(&caller_org);
            let (host, port, withdrawn) = match this.authorise(&caller_org, &req) {
                Ok(t) => t,
                Err(answer) => return this.refuse(&mut w, answer).await,
            };
            let policy = this
                .0
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            // the dial may take seconds (name resolution, several addresses): a revocation or
            // shutdown meanwhile abandons it before the node sees the caller's bytes
            let dialled = tokio::select! {
                biased;
                () = revoked.cancelled() => Err(Answer::NotMember),
                () = this.0.shutdown.cancelled() => return,
                dialled = far::dial(&host, port, &policy, &early) => dialled,
            };
            let (mut tcp, sent) = match dialled {
                Ok(dialled) => dialled,
                Err(answer) => return this.refuse(&mut w, answer).await,
            };
            early.drain(..sent);
            // the buffer held up to 16 KiB; an idle connection keeps none of it
            early.shrink_to_fit();
            this.0.metrics.tunnel_connection(&caller_org, "inbound");
            let class = class::class_of(&this.0.config.priority, &req.org, &req.node, &req.port);
            w.set_class(class);
            let counters = this.0.metrics.tunnel_counters(&caller_org, class);
            counters.rx.inc_by(sent as u64);
            let _active = this.0.metrics.tunnel_stream_guard();
            let stop = std::pin::pin!(async {
                tokio::select! {
                    () = revoked.cancelled() => {}
                    () = withdrawn.cancelled() => {}
                    () = this.0.shutdown.cancelled() => {}
                }
            });
            // bytes that came with the header and the dial did not send go first; the answer
            // goes with the node's first bytes
            let stall = this.0.config.stall_timeout();
            let ended = splice::splice(
                &mut tcp,
                &mut r,
                &mut w,
                End::Far(&early),
                &counters,
                stall,
                stop,
            )
            .await;
            drop(permits);
            match ended {
                Ended::Failed(e) => {
                    debug!(node = %req.node, error = %e, "proxied connection failed")
                }
                Ended::Stalled => {
                    debug!(node = %req.node, "node read nothing for the stall time-out; connection reset");
                    this.0.metrics.tunnel_stalled("far");
                }
                Ended::Done | Ended::Stopped | Ended::Refused(_) => {}
            }
        });
    }

    /// `caller`'s share of the far end's connections (created on its first stream).
    fn org_connections(&self, caller: &str) -> Arc<Semaphore> {
        let config = &self.0.config;
        let share = config
            .max_connections_per_org
            .unwrap_or(config.max_connections / 2)
            .max(1);
        let mut shares = self
            .0
            .org_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shares
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(share)))
            .clone()
    }

    /// Authorises `req` from `caller` against the current targets: the host and port to dial
    /// and a token cancelled once a later change of the targets withdraws the authorisation.
    fn authorise(
        &self,
        caller: &str,
        req: &header::Request,
    ) -> Result<(String, u16, CancellationToken), Answer> {
        let targets = self.0.targets.read().unwrap_or_else(|e| e.into_inner());
        let dial = targets.authorise(caller, req)?;
        let mut grants = self.0.grants.lock().unwrap_or_else(|e| e.into_inner());
        let key = (caller.to_owned(), req.node.clone(), req.port.clone());
        let grant = grants.entry(key).or_insert_with(|| Grant {
            dial: dial.clone(),
            withdrawn: CancellationToken::new(),
        });
        let withdrawn = grant.withdrawn.child_token();
        Ok((dial.0, dial.1, withdrawn))
    }

    async fn refuse(&self, w: &mut splice::TunnelWrite, answer: Answer) {
        self.0.metrics.tunnel_refused(answer);
        splice::refuse(w, answer).await;
    }

    /// Keeps a link up to every gateway this side is responsible for: an outbound-only site
    /// keeps links to every site that accepts connections; otherwise the side with the lower
    /// `org/site` keeps the link (the other one dials on demand only).
    fn keep_links(&self, gateways: Vec<PeerGateway>) {
        let want: BTreeMap<GatewayId, PeerGateway> = gateways
            .into_iter()
            .filter(|g| g.id != self.0.me && !g.outbound_only)
            .filter(|g| self.0.outbound_only || self.0.me.to_string() < g.id.to_string())
            .map(|g| (g.id.clone(), g))
            .collect();
        let mut keepers = self.0.keepers.lock().unwrap_or_else(|e| e.into_inner());
        keepers.retain(|id, token| {
            let keep = want.contains_key(id);
            if !keep {
                token.cancel();
            }
            keep
        });
        for id in want.into_keys() {
            if keepers.contains_key(&id) {
                continue;
            }
            let token = self.0.shutdown.child_token();
            keepers.insert(id.clone(), token.clone());
            let this = self.clone();
            self.0
                .tracker
                .spawn(async move { this.keep(id, token).await });
        }
    }

    async fn keep(&self, peer: GatewayId, stop: CancellationToken) {
        let mut delay = BACKOFF.0;
        loop {
            if self.0.membership.revocation().set().contains(&peer.org) {
                return;
            }
            let link = tokio::select! {
                l = self.dial(&peer) => l,
                () = stop.cancelled() => return,
            };
            match link {
                Ok(entry) => {
                    delay = BACKOFF.0;
                    tokio::select! {
                        () = entry.link.closed() => {}
                        // a retired link keeps its streams; new ones need a new link now
                        () = tokio::time::sleep_until(entry.retire_at.into()) => continue,
                        () = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    debug!(%peer, error = %e, "keeping a tunnel up: dial failed");
                    delay = (delay * 2).min(BACKOFF.1);
                }
            }
            let jitter = rand::random_range(0.75..1.25);
            tokio::select! {
                () = tokio::time::sleep(delay.mul_f64(jitter)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Proxies one accepted local connection to `route` (the near end).
    async fn proxy(&self, mut tcp: tokio::net::TcpStream, route: Arc<near::Route>) {
        let Ok(permit) = self.0.connections.clone().try_acquire_owned() else {
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
        let class = class::class_of(&self.0.config.priority, &req.org, &req.node, &req.port);
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
        let stall = self.0.config.stall_timeout();
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
    /// sent by then (≤ [`splice::EARLY_READ`] bytes, in one TLS record or QUIC packet), then
    /// waits for the far end's answer, sending on what else the client sends meanwhile. While
    /// the site has no link it holds the connection ([`Tunnels::open_held`]); while the
    /// client's bytes so far fit in [`splice::EARLY_READ`], a link lost before the answer (a
    /// peer gateway that restarted: the new process resets the old link at its first packet,
    /// or a new link from it supersedes the old one) costs a new stream on a new link, with
    /// the same bytes, within the same hold time. `None`: no stream, refused, or stopped; the
    /// caller resets the client.
    async fn open_answered<S: std::future::Future<Output = ()>>(
        &self,
        tcp: &mut tokio::net::TcpStream,
        route: &near::Route,
        class: class::Class,
        counters: &splice::Counters,
        mut stop: std::pin::Pin<&mut S>,
    ) -> Option<(splice::TunnelRead, splice::TunnelWrite, End<'static>)> {
        let deadline = tokio::time::Instant::now() + self.0.config.connect_hold();
        let mut first: Option<Vec<u8>> = None;
        loop {
            let (stream, link) = match self.open_held(&route.site, deadline, stop.as_mut()).await {
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
                    let mut f = Vec::with_capacity(route.header.len() + splice::EARLY_READ);
                    f.extend_from_slice(&route.header);
                    match splice::read_queued(tcp, &mut f, splice::EARLY_READ) {
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
                            let room = (route.header.len() + splice::EARLY_READ).saturating_sub(first.len());
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

    /// Opens a stream to `peer` ([`Tunnels::open_stream`]), retrying while `peer` has no link
    /// until `deadline` ([`TunnelConfig::connect_hold_ms`]): after a short, growing wait
    /// ([`HOLD_RETRY`]), or at once when any link registers. A revoked org or `stop` ends the
    /// wait.
    async fn open_held<S: std::future::Future<Output = ()>>(
        &self,
        peer: &GatewayId,
        deadline: tokio::time::Instant,
        mut stop: std::pin::Pin<&mut S>,
    ) -> Result<(TunnelStream, Link), OpenError> {
        let mut delay = HOLD_RETRY.0;
        let mut registered = self.0.link_up.subscribe();
        loop {
            registered.mark_unchanged();
            let err = match self.open_stream(peer).await {
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

/// One live link, as `fedgw status` shows it.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// The peer site.
    pub peer: GatewayId,
    /// The link's number at this gateway, new for every connection.
    pub id: u64,
    /// Past its [`link_age`]: carrying the streams it has, none new.
    pub retired: bool,
    /// `"quic"` or `"tcp"`.
    pub transport: &'static str,
    /// QUIC path statistics (smoothed RTT, path MTU in UDP payload bytes, packets lost);
    /// `None` for TCP links.
    pub quic: Option<quinn::PathStats>,
}

/// A peer gateway as the view announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGateway {
    /// `org/site`.
    pub id: GatewayId,
    /// Its advertised endpoints.
    pub advertise: Vec<String>,
    /// It accepts no connections.
    pub outbound_only: bool,
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TLS configuration.
    #[error("tunnel TLS setup failed")]
    Tls(#[from] rustls::Error),
    /// QUIC configuration.
    #[error("QUIC setup failed: {0}")]
    Quic(String),
    /// Socket setup.
    #[error("tunnel socket setup failed")]
    Io(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_takes_new_streams_for_the_shorter_of_its_maximum_and_half_the_peer_certificate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        // no certificate date: the configured maximum
        assert_eq!(link_age(12 * hour, now, None), 12 * hour);
        // a fresh 24 h leaf: the maximum (half the leaf lifetime) is the shorter
        assert_eq!(link_age(12 * hour, now, Some(now + 24 * hour)), 12 * hour);
        // a leaf with 10 h left: 5 h, so the link closes (at twice that) when the leaf expires
        assert_eq!(link_age(12 * hour, now, Some(now + 10 * hour)), 5 * hour);
        // an expired leaf: retired and closed at once
        assert_eq!(link_age(12 * hour, now, Some(now - hour)), Duration::ZERO);
    }

    #[test]
    fn the_peer_certificate_expiry_is_read_from_its_der() {
        let now = SystemTime::now();
        let root = fedgw_certs::pki::CertificateAuthority::new_root("acme", "acme.test", now)
            .expect("root");
        let leaf = root
            .issue_node_leaf(
                &["n1.acme.test".to_owned()],
                "acme",
                "test",
                Duration::from_secs(600),
                now,
            )
            .expect("leaf");
        let read = not_after(&leaf.chain[0]).expect("notAfter");
        let off = read
            .duration_since(leaf.not_after)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(1),
            "{read:?} vs {:?}",
            leaf.not_after
        );
        assert_eq!(not_after(b"not a certificate"), None);
    }
}
