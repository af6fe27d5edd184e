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
//!
//! Where each part lives: [`Tunnels`] is only a handle that builds, starts and updates the
//! rest. [`links`]: the link pool, dials, keepers and accept loops; it hands the streams a peer
//! opens to the far end through [`links::Inbound`]. [`near`]: the local listeners and the proxy
//! of each local connection. [`far`]: admission, authorisation, grants and the dial of the
//! node. [`header`]: the stream header, read and refused. [`splice`]: the byte pumps; [`mux`]
//! and [`quic`]: the two transports.

pub mod class;
pub mod far;
mod gate;
pub mod header;
pub mod links;
pub mod mux;
pub mod near;
pub mod quic;
pub mod replicas;
pub mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fedgw_certs::PeerVerifier;
use fedgw_certs::tls::ReloadableIdentity;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::TlsConn;
use crate::membership::{GatewayId, Membership};
use crate::metrics::Metrics;
use far::{DialPolicy, Far, FarSetup, TargetsChange};
use header::Answer;
pub use links::{
    AUTO_QUIC_TIMEOUT, BACKOFF, DIAL_TIMEOUT, DialError, Link, LinkStatus, OpenError, PUBLISH_WAIT,
    PeerGateway, Transport, link_age,
};
use links::{LinkSetup, Links};
use near::{Near, NearSetup};
pub use quic::{IDLE_TIMEOUT, KEEP_ALIVE, QuicError};
use splice::{Proxying, TunnelStream};

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
    /// Over TCP+TLS, give streams of class `consensus` a second connection to each peer of
    /// their own (default: on), so a raft message waits behind none of the bulk bytes the
    /// main connection has in flight. Off: one connection per peer carries every class. See
    /// [`links`] (consensus side links) and docs/DESIGN.md section 8.
    pub consensus_link: bool,
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
            consensus_link: true,
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

/// TLS material for tunnels.
#[derive(Debug, Clone)]
pub struct TunnelTls {
    /// This gateway's identity (renewed in place).
    pub identity: ReloadableIdentity,
    /// Verifies peers (chain, name constraints, revocation).
    pub verifier: Arc<PeerVerifier>,
}

/// The data plane of one gateway: a handle on its links ([`links`]), near end ([`near`]) and
/// far end ([`far`]), which it sets up, starts and updates; it owns no logic of its own.
/// Clones share state.
#[derive(Clone, Debug)]
pub struct Tunnels {
    links: Links,
    near: Near,
    far: Far,
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
    /// Longest time a link takes new streams (the config's `max_link_age`).
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
            .map_err(QuicError::from)?;
        let mut server = quinn::ServerConfig::new(Arc::new(quic_server), setup.keys.token.clone());
        server.transport_config(transport.clone());
        let quic_client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls.clone())
            .map_err(QuicError::from)?;
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
        let proxying = Proxying {
            // one pool for both ends: `max_connections` bounds every proxied connection
            connections: Arc::new(Semaphore::new(config.max_connections)),
            priority: config.priority.clone(),
            stall: config.stall_timeout(),
        };
        let far = Far::new(
            FarSetup {
                proxying: proxying.clone(),
                per_org: config
                    .max_connections_per_org
                    .unwrap_or(config.max_connections / 2)
                    .max(1),
                policy: DialPolicy {
                    own: setup.own,
                    allow_loopback: config.allow_loopback_targets,
                    local: Default::default(),
                },
            },
            membership.clone(),
            metrics.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let links = Links::new(
            LinkSetup {
                me: setup.me,
                domain: setup.domain,
                outbound_only: setup.outbound_only,
                transport: config.transport,
                // streams bounded by `max_connections`, the tunnel keep-alive and idle timeout
                mux: mux::Config {
                    max_streams: config.max_connections,
                    keep_alive: KEEP_ALIVE,
                    idle_timeout: IDLE_TIMEOUT,
                    congestion: config.congestion,
                },
                quic,
                quic_client,
                tls_client: Arc::new(client_tls),
                consensus_link: config.consensus_link,
                identity: setup.tls.identity,
                max_link_age: setup.max_link_age,
            },
            Arc::new(far.clone()),
            membership.clone(),
            metrics.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let near = Near::new(
            NearSetup {
                proxying,
                connect_hold: config.connect_hold(),
                allowed_sources: config.allowed_sources,
                aliases: setup.aliases,
            },
            links.clone(),
            membership,
            metrics,
            tracker,
            shutdown,
        );
        Ok(Tunnels { links, near, far })
    }

    /// Starts accepting QUIC connections and TCP+TLS tunnel connections (`tcp` carries the
    /// connections the gateway port's ALPN dispatch hands over).
    pub fn start(&self, tcp: tokio::sync::mpsc::Receiver<TlsConn>) {
        self.links.start(tcp);
    }

    /// The bound QUIC address, if the endpoint runs.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.links.quic_addr()
    }

    /// Changes what the data plane serves, each part only if given: what the far end serves
    /// (`targets`: all of them, or the nodes that changed), what the near end listens on
    /// (`routes`: added and withdrawn, never the whole set), and the gateways to keep links up
    /// to where this side is the keeper. Called on every view change with what it changed; an
    /// empty call retries listeners that could not be bound. Costs what it is given (a new
    /// route: one bind).
    pub fn update(
        &self,
        targets: Option<TargetsChange>,
        routes: near::RouteChange,
        gateways: Option<Vec<PeerGateway>>,
    ) {
        if let Some(targets) = targets {
            self.far.change_targets(targets);
        }
        if !routes.is_empty() {
            self.far
                .local_changed(&routes.removed, routes.added.iter().map(|r| r.addr));
        }
        self.near.update(routes);
        if let Some(gateways) = gateways {
            self.links.keep_links(gateways);
        }
    }

    /// This site's nodes with replicas: name → each address (its `host` first) and whether
    /// the far end holds it healthy ([`replicas`]).
    pub fn replica_status(&self) -> std::collections::BTreeMap<String, Vec<(String, bool)>> {
        self.far.replica_status()
    }

    /// Number of live tunnel links.
    pub fn link_count(&self) -> usize {
        self.links.link_count()
    }

    /// Every live link, sorted by peer.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.links.links()
    }

    /// Test hook, not for production: while `blocked`, every QUIC dial fails at once, as if
    /// UDP were blocked ([`Links::block_quic_dials`]).
    #[doc(hidden)]
    pub fn block_quic_dials(&self, blocked: bool) {
        self.links.block_quic_dials(blocked);
    }

    /// The live link to `peer`, if any, and its transport.
    pub fn link_transport(&self, peer: &GatewayId) -> Option<&'static str> {
        self.links.link_transport(peer)
    }

    /// Opens a stream to `peer`, over its live link or a new one.
    pub async fn open(&self, peer: &GatewayId) -> Result<TunnelStream, OpenError> {
        self.links.open(peer).await
    }

    /// Opens a stream of `class` to `peer` and returns the link it runs on: a consensus
    /// stream takes the peer's consensus side link when one is up ([`Links::open_stream`]).
    ///
    /// # Errors
    ///
    /// As [`Links::open_stream`].
    pub async fn open_class(
        &self,
        peer: &GatewayId,
        class: class::Class,
    ) -> Result<(TunnelStream, Link), OpenError> {
        self.links.open_stream(peer, class).await
    }

    /// Test hook, not for production: while `blocked`, no consensus side link is dialled
    /// ([`Links::block_consensus_dials`]).
    #[doc(hidden)]
    pub fn block_consensus_dials(&self, blocked: bool) {
        self.links.block_consensus_dials(blocked);
    }

    /// Test hook, not for production: closes the consensus side link to `peer`, as a lost
    /// connection would ([`Links::close_consensus_link`]).
    #[doc(hidden)]
    pub fn close_consensus_link(&self, peer: &GatewayId) {
        self.links.close_consensus_link(peer);
    }

    /// Whether some local listener could not be bound (retried on the next update).
    pub fn listener_failures(&self) -> bool {
        self.near.listener_failures()
    }

    /// Local listener addresses, sorted.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.near.listening()
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// TLS configuration.
    #[error("tunnel TLS setup failed")]
    Tls(#[from] rustls::Error),
    /// QUIC configuration or the QUIC endpoint's socket.
    #[error("QUIC setup failed")]
    Quic(#[from] QuicError),
    /// Socket setup.
    #[error("tunnel socket setup failed")]
    Io(#[source] std::io::Error),
}
