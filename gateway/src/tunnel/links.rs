//! Tunnel links: one connection ([`Link`]) per pair of sites, the pool of them ([`Links`]),
//! and the tasks that dial, keep up, accept and register them.
//!
//! A link opened by either side carries streams both ways. [`Links::open`] gives the near end
//! a stream over the live link to a site, dialling one (one dial at a time per peer) when there
//! is none; the streams a peer opens go to the far end through [`Inbound`], which serves each
//! in a task of its own. The lower `org/site` keeps a link up (an outbound-only site keeps
//! links to every site that accepts connections); the other side dials on demand.
//!
//! Age: a link takes new streams for [`link_age`] and is closed at twice that, never after the
//! certificate that authenticated it expires; a link the same side dials again supersedes the
//! older one at once.

mod consensus;
mod keeper;
mod link;
pub mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::PeerIdentity;
use fedgw_certs::tls::ReloadableIdentity;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::class::Class;
use super::mux;
use super::splice::TunnelStream;
use crate::listener::TlsConn;
use crate::membership::{GatewayId, Membership};
use crate::metrics::Metrics;
use link::not_after;
pub use link::{Link, link_age};

/// Which transport tunnels use (`[tunnel] transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC only.
    Quic,
    /// TCP+TLS only (UDP blocked).
    Tcp,
    /// QUIC, falling back to TCP+TLS when the QUIC handshake does not complete within 2s.
    // clap shows this doc comment as help: the value, not the constant (AUTO_QUIC_TIMEOUT)
    #[default]
    Auto,
}

/// How long `auto` waits for a QUIC handshake before trying TCP+TLS. After a fallback, QUIC
/// is tried again in the background ([`upgrade`]).
pub const AUTO_QUIC_TIMEOUT: Duration = Duration::from_secs(2);
/// Dial timeout of a tunnel connection (connect plus handshake).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest link age taken as given (a year; the leaf lifetime is capped at 366 days), so a
/// retirement time always fits an `Instant`.
const MAX_RETIRE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Reconnect backoff of kept-up links: first delay and cap.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// Where the streams a link's peer opens go: the far end ([`super::far::Far`]). `serve` must
/// not wait: it hands the stream to a task of its own, so one stream never holds up the
/// link's next.
pub trait Inbound: Send + Sync + std::fmt::Debug {
    /// Serves one stream that a gateway of `caller_org` opened (its verified certificate's
    /// org).
    fn serve(&self, caller_org: String, stream: TunnelStream);
}

/// Keep-alive interval of links to or from a site with more than one replica.
pub const FAST_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A link to or from a site with more than one replica is dead after this long without an
/// answer, so new streams move to another replica within 2 s of a replica's death.
pub const FAST_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What [`Links::new`] needs: this gateway, its transports and TLS clients.
#[derive(Debug)]
pub struct LinkSetup {
    /// This gateway.
    pub me: GatewayId,
    /// The consortium domain, which peer certificates and server names are under.
    pub domain: String,
    /// This site accepts no inbound connections: it keeps links to every site that does.
    pub outbound_only: bool,
    /// `tunnel.transport`.
    pub transport: Transport,
    /// Session settings of TCP+TLS links.
    pub mux: mux::Config,
    /// The QUIC endpoint, if it runs (it serves inbound handshakes unless outbound-only).
    pub quic: Option<quinn::Endpoint>,
    /// Client settings of outbound QUIC links.
    pub quic_client: quinn::ClientConfig,
    /// Client settings of outbound TCP+TLS links.
    pub tls_client: Arc<rustls::ClientConfig>,
    /// `tunnel.consensus_link`: dial and use consensus side links ([`consensus`]).
    pub consensus_link: bool,
    /// This gateway's identity, whose certificate bounds a link's age as the peer's does.
    pub identity: ReloadableIdentity,
    /// Longest time a link takes new streams (the config's `max_link_age`).
    pub max_link_age: Duration,
}

/// The tunnel links of one gateway, by peer site. Clones share them.
#[derive(Clone, Debug)]
pub struct Links(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    me: GatewayId,
    domain: String,
    outbound_only: bool,
    transport: Transport,
    mux: mux::Config,
    membership: Membership,
    metrics: Metrics,
    quic: Option<quinn::Endpoint>,
    quic_client: quinn::ClientConfig,
    /// `quic_client` with fast liveness ([`FAST_KEEP_ALIVE`], [`FAST_IDLE_TIMEOUT`]), for links
    /// to or from a site with more than one replica.
    quic_client_fast: quinn::ClientConfig,
    /// `mux` with fast liveness, for the same links over TCP+TLS.
    mux_fast: mux::Config,
    /// Per peer site: the replica whose link new streams use while it is live.
    chosen: Mutex<HashMap<GatewayId, GatewayId>>,
    /// Per peer site: the replica whose dial failed last; the next dial starts after it.
    last_failed: Mutex<HashMap<GatewayId, GatewayId>>,
    tls_client: Arc<rustls::ClientConfig>,
    /// `tls_client` with ALPN `fedgw-consensus/1`, for consensus side links.
    tls_consensus: Arc<rustls::ClientConfig>,
    /// Consensus side links beside TCP+TLS links ([`consensus`]).
    consensus: consensus::SideLinks,
    /// `tunnel.consensus_link`.
    consensus_link: bool,
    links: Mutex<HashMap<GatewayId, LinkEntry>>,
    /// Every live link by its number, the one in `links` and older ones still carrying
    /// streams, for [`Links::register`] to find the links a new one supersedes.
    all_links: Mutex<HashMap<u64, (GatewayId, LinkEntry)>>,
    /// Counts registered links: connections held for a link wake up on a change.
    link_up: tokio::sync::watch::Sender<u64>,
    /// This gateway's identity, whose certificate bounds a link's age as the peer's does.
    identity: ReloadableIdentity,
    max_link_age: Duration,
    next_link: AtomicU64,
    dial_locks: Mutex<HashMap<GatewayId, DialLock>>,
    /// `auto`: QUIC attempts that failed per peer, for the retries ([`upgrade`]).
    upgrades: upgrade::Upgrades,
    keepers: Mutex<HashMap<GatewayId, CancellationToken>>,
    /// The far end, which serves the streams peers open.
    inbound: Arc<dyn Inbound>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Why a stream could not be opened to a site.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The site is unknown, or is outbound-only and has no link to us.
    #[error("no route to {0}")]
    NoRoute(GatewayId),
    /// Every dial failed.
    #[error("cannot reach {0}: {1}")]
    Dial(GatewayId, Arc<DialFailures>),
    /// The link failed while opening the stream.
    #[error("opening a stream to {0} failed: {1}")]
    Stream(GatewayId, std::io::Error),
}

/// Why one dial of a peer's advertised endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// `transport = "quic"`, but this gateway runs no QUIC endpoint.
    #[error("no QUIC endpoint")]
    NoQuicEndpoint,
    /// The endpoint is not `host:port`, or its host did not resolve.
    #[error("cannot resolve the endpoint")]
    Resolve(#[source] std::io::Error),
    /// The endpoint's host resolved to no address.
    #[error("no address")]
    NoAddress,
    /// quinn could not start a connection to one of the endpoint's addresses.
    #[error("cannot start a QUIC connection to {addr}")]
    QuicConnect {
        /// The address.
        addr: std::net::SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC handshake with one of the endpoint's addresses failed.
    #[error("QUIC handshake with {addr} failed")]
    QuicHandshake {
        /// The address.
        addr: std::net::SocketAddr,
        /// How the connection ended.
        #[source]
        source: quinn::ConnectionError,
    },
    /// QUIC dials are blocked by the test hook ([`Links::block_quic_dials`]).
    #[error("QUIC dials blocked by the test hook")]
    QuicBlocked,
    /// `transport = "quic"`, and the QUIC handshake did not complete within [`DIAL_TIMEOUT`].
    #[error("QUIC handshake timed out")]
    QuicTimeout,
    /// The TCP connect or the TLS handshake failed, or the peer's name is no server name.
    #[error("TCP+TLS dial failed")]
    Tls(#[source] crate::net::DialError),
    /// The endpoint proved another identity than the peer's.
    #[error("the endpoint is not {0}")]
    WrongPeer(GatewayId),
}

/// Every advertised endpoint of a peer that one dial tried, each with why it failed, in the
/// order tried; shown as `endpoint: error: cause; …`.
#[derive(Debug, Default)]
pub struct DialFailures(pub Vec<(String, DialError)>);

impl std::fmt::Display for DialFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (endpoint, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{endpoint}: {error}")?;
            let chain = crate::net::error_chain(error);
            if !chain.is_empty() {
                write!(f, ": {chain}")?;
            }
        }
        Ok(())
    }
}

/// Per peer: one dial at a time, and the end and error of the last failed one, which callers
/// that queued behind it take as their own rather than dialling again.
type DialLock = Arc<tokio::sync::Mutex<Option<(Instant, Arc<DialFailures>)>>>;

/// A registered link: new streams use it until `retire_at`.
#[derive(Debug, Clone)]
struct LinkEntry {
    id: u64,
    link: Link,
    retire_at: Instant,
    /// This side dialled it.
    outbound: bool,
    /// Dialled with fast liveness ([`FAST_IDLE_TIMEOUT`]), or inbound (the dialler chose).
    fast: bool,
}

impl keeper::Kept for LinkEntry {
    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.link.closed()
    }
    fn retire_at(&self) -> tokio::time::Instant {
        self.retire_at.into()
    }
}

/// How long an inbound tunnel link from a site not (yet) in the view waits for the site's
/// `Gateway` record before it is refused: a site that has just started publishes it within a
/// sync round trip.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// A link the same side dials again while this side still holds one it dialled earlier,
/// retiring no sooner than this, is superseded at once ([`Links::register`]). A link that
/// retires sooner may be the one the dialler replaces on its own schedule (its age can
/// differ by the time a handshake takes), and keeps its streams.
const SUPERSEDE_MARGIN: Duration = Duration::from_secs(5);

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
    /// A TCP link this gateway dialled in `auto` because QUIC failed: when it last failed and
    /// when it is tried again ([`upgrade`]).
    pub quic_failed: Option<upgrade::QuicFailed>,
    /// The number of the consensus side link to the peer that new consensus streams take,
    /// if one is up (TCP+TLS links only; [`consensus`]).
    pub consensus_link: Option<u64>,
    /// New streams to the peer's site use this link (its replica is the chosen one).
    pub in_use: bool,
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

impl Links {
    /// The link pool; nothing runs until [`Links::start`]. Inbound streams go to `inbound`.
    pub fn new(
        setup: LinkSetup,
        inbound: Arc<dyn Inbound>,
        membership: Membership,
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Links {
        let mut tls_consensus = (*setup.tls_client).clone();
        tls_consensus.alpn_protocols = vec![fedgw_certs::tls::ALPN_TUNNEL_CONSENSUS.to_vec()];
        let mut quic_client_fast = setup.quic_client.clone();
        let mut fast = crate::tunnel::quic::transport_config(setup.mux.congestion);
        fast.keep_alive_interval(Some(FAST_KEEP_ALIVE));
        fast.max_idle_timeout(quinn::IdleTimeout::try_from(FAST_IDLE_TIMEOUT).ok());
        quic_client_fast.transport_config(Arc::new(fast));
        let mux_fast = mux::Config {
            keep_alive: FAST_KEEP_ALIVE,
            idle_timeout: FAST_IDLE_TIMEOUT,
            ..setup.mux.clone()
        };
        Links(Arc::new(Inner {
            quic_client_fast,
            mux_fast,
            chosen: Mutex::new(HashMap::new()),
            last_failed: Mutex::new(HashMap::new()),
            me: setup.me,
            domain: setup.domain,
            outbound_only: setup.outbound_only,
            transport: setup.transport,
            mux: setup.mux,
            membership,
            metrics,
            quic: setup.quic,
            quic_client: setup.quic_client,
            tls_client: setup.tls_client,
            tls_consensus: Arc::new(tls_consensus),
            consensus: consensus::SideLinks::default(),
            consensus_link: setup.consensus_link,
            links: Mutex::new(HashMap::new()),
            all_links: Mutex::new(HashMap::new()),
            link_up: tokio::sync::watch::Sender::new(0),
            identity: setup.identity,
            max_link_age: setup.max_link_age,
            next_link: AtomicU64::new(1),
            dial_locks: Mutex::new(HashMap::new()),
            upgrades: upgrade::Upgrades::default(),
            keepers: Mutex::new(HashMap::new()),
            inbound,
            tracker,
            shutdown,
        }))
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
    pub fn quic_addr(&self) -> Option<std::net::SocketAddr> {
        self.0.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Counts link registrations: it changes whenever a link registers, so a connection held
    /// for a link can wait for one.
    pub fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.link_up.subscribe()
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
        // the chosen replica of each site with a live link, as new streams would find it
        let sites: std::collections::BTreeSet<GatewayId> = self
            .0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(GatewayId::site_id)
            .collect();
        let in_use: Vec<GatewayId> = sites
            .iter()
            .filter_map(|s| self.site_link(s).map(|(id, _)| id))
            .collect();
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
                quic_failed: self.quic_failed(peer, e),
                consensus_link: self.consensus_link_id(peer),
                in_use: in_use.contains(peer),
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// The live link to `peer`, if any, and its transport.
    pub fn link_transport(&self, peer: &GatewayId) -> Option<&'static str> {
        self.site_link(peer).map(|(_, e)| e.link.transport())
    }

    fn peer_gateway(&self, peer: &GatewayId) -> Option<PeerGateway> {
        self.0.membership.read(|v| {
            v.gateways()
                .into_iter()
                .find(|(id, _)| id == peer)
                .map(|(id, g)| PeerGateway {
                    id,
                    advertise: g.advertise,
                    outbound_only: g.outbound_only,
                })
        })
    }

    /// The link new streams to `peer` use: alive and not retired.
    fn live_link(&self, peer: &GatewayId) -> Option<LinkEntry> {
        self.registered_link(peer, false)
    }

    /// The link new streams to `peer`'s site use, with the replica it is with: the chosen
    /// replica's while it is live and not retired, else the first live one by replica (which
    /// becomes the chosen one at once). `None` when no replica of the site has a live link.
    fn site_link(&self, peer: &GatewayId) -> Option<(GatewayId, LinkEntry)> {
        let fast = self.fast_liveness(peer);
        let links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen = self.0.chosen.lock().unwrap_or_else(|e| e.into_inner());
        let site = peer.site_id();
        let usable =
            |e: &&LinkEntry| e.link.is_alive() && Instant::now() < e.retire_at && (e.fast || !fast);
        if let Some(c) = chosen.get(&site)
            && let Some(e) = links.get(c).filter(usable)
        {
            return Some((c.clone(), e.clone()));
        }
        let (id, e) = links
            .iter()
            .filter(|(id, e)| id.same_site(peer) && usable(e))
            .min_by(|a, b| a.0.cmp(b.0))?;
        if chosen.insert(site, id.clone()).is_some() {
            info!(peer = %id, "new streams to the site use another replica's link");
        }
        Some((id.clone(), e.clone()))
    }

    /// A registered link to any replica of `peer`'s site that is alive, retired ones too.
    fn site_registered_link(&self, peer: &GatewayId) -> Option<(GatewayId, LinkEntry)> {
        self.0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, e)| id.same_site(peer) && e.link.is_alive())
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(id, e)| (id.clone(), e.clone()))
    }

    /// Whether links with `peer` use fast liveness: its site or this one has more than one
    /// replica, so a replica that dies is left within [`FAST_IDLE_TIMEOUT`].
    fn fast_liveness(&self, peer: &GatewayId) -> bool {
        self.0
            .membership
            .read(|v| v.replica_count(peer) > 1 || v.replica_count(&self.0.me) > 1)
    }

    /// Dials a replica of `peer`'s site that accepts connections, starting after the one whose
    /// dial failed last, and makes the first that answers the chosen one.
    async fn dial_site(&self, peer: &GatewayId) -> Result<(GatewayId, LinkEntry), OpenError> {
        let mut replicas: Vec<GatewayId> = self.0.membership.read(|v| {
            v.replicas_of(peer)
                .into_iter()
                .filter(|(_, g)| !g.outbound_only)
                .map(|(id, _)| id)
                .collect()
        });
        if replicas.is_empty() {
            // a peer not in the view yet: dial it as named (the dial refuses it)
            replicas.push(peer.clone());
        }
        let site = peer.site_id();
        let after = self
            .0
            .last_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&site)
            .cloned();
        if let Some(i) = after.and_then(|a| replicas.iter().position(|r| *r == a)) {
            replicas.rotate_left(i + 1);
        }
        let mut last = OpenError::NoRoute(peer.clone());
        for replica in replicas {
            match self.dial(&replica).await {
                Ok(entry) => {
                    self.0
                        .chosen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(site, replica.clone());
                    return Ok((replica, entry));
                }
                Err(e) => {
                    self.0
                        .last_failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(site.clone(), replica);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The registered link to `peer` if it is alive; a retired one only with `retired_too`.
    /// A link dialled with slow liveness counts as retired once `peer`'s site or this one has
    /// more than one replica, so the keeper dials a fast one that supersedes it.
    fn registered_link(&self, peer: &GatewayId, retired_too: bool) -> Option<LinkEntry> {
        let fast = self.fast_liveness(peer);
        self.0
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .filter(|e| {
                e.link.is_alive()
                    && (retired_too || (Instant::now() < e.retire_at && (e.fast || !fast)))
            })
            .cloned()
    }

    /// Opens a stream of class interactive to `peer`, over its live link or a new one.
    pub async fn open(&self, peer: &GatewayId) -> Result<TunnelStream, OpenError> {
        self.open_stream(peer, Class::Interactive)
            .await
            .map(|(s, _)| s)
    }

    /// Opens a stream of `class` to `peer`'s site over a live link to one of its replicas
    /// ([`Self::site_link`]) or a new one, and returns the link the stream runs on. A
    /// consensus stream takes the replica's consensus side link instead when the live link is
    /// TCP+TLS and a side link is up ([`consensus`]).
    ///
    /// # Errors
    ///
    /// No route to the peer, every dial failed, or the link failed twice while opening.
    pub async fn open_stream(
        &self,
        peer: &GatewayId,
        class: Class,
    ) -> Result<(TunnelStream, Link), OpenError> {
        let requested = peer;
        for attempt in 0..2 {
            let (peer, LinkEntry { id, link, .. }) = match self.site_link(requested) {
                Some(l) => l,
                // boxed: a dial's state is large, and every proxied connection's task would
                // carry room for it
                None => match Box::pin(self.dial_site(requested)).await {
                    Ok(entry) => entry,
                    // a site this side cannot dial (outbound-only) replaces a retired link
                    // itself, on its own schedule; until then the old link still serves
                    Err(e) => self.site_registered_link(requested).ok_or(e)?,
                },
            };
            let peer = &peer;
            if class == Class::Consensus
                && self.0.consensus_link
                && matches!(link, Link::Mux { .. })
                && let Some(side) = self.consensus_link(peer)
            {
                match side.open().await {
                    Ok(s) => return Ok((s, side)),
                    // the main link serves while the keeper dials the side link again
                    Err(e) => {
                        debug!(%peer, error = %e, "consensus side link failed; using the main link")
                    }
                }
            }
            match link.open().await {
                Ok(s) => return Ok((s, link)),
                Err(e) if attempt == 0 => {
                    debug!(%peer, error = %e, "stream open failed; redialling");
                    self.drop_link(peer, id);
                }
                Err(e) => return Err(OpenError::Stream(peer.clone(), e)),
            }
        }
        Err(OpenError::NoRoute(requested.clone()))
    }

    fn drop_link(&self, peer: &GatewayId, id: u64) {
        let mut links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(peer).is_some_and(|e| e.id == id) {
            links.remove(peer);
        }
    }

    /// `peer`'s dial lock: one dial at a time per peer.
    fn dial_lock(&self, peer: &GatewayId) -> DialLock {
        self.0
            .dial_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.clone())
            .or_default()
            .clone()
    }

    /// Dials `peer` (one dial at a time per peer) and registers the link. A caller that
    /// queued behind a dial that failed gets that dial's error without dialling again, so a
    /// burst of connections held for a down site costs one dial per attempt, not one each.
    async fn dial(&self, peer: &GatewayId) -> Result<LinkEntry, OpenError> {
        let lock = self.dial_lock(peer);
        let asked = Instant::now();
        let mut last_failure = lock.lock().await;
        if let Some(l) = self.live_link(peer) {
            return Ok(l);
        }
        if let Some((at, failures)) = &*last_failure
            && *at > asked
        {
            return Err(OpenError::Dial(peer.clone(), failures.clone()));
        }
        let gw = self
            .peer_gateway(peer)
            .filter(|g| {
                !g.outbound_only && !self.0.membership.revocation().set().contains(&g.id.org)
            })
            .ok_or_else(|| OpenError::NoRoute(peer.clone()))?;
        let mut failures = DialFailures::default();
        for endpoint in &gw.advertise {
            match self.dial_endpoint(peer, endpoint).await {
                Ok(link) => {
                    *last_failure = None;
                    let entry = self.register(peer.clone(), link, "outbound");
                    self.upgrade_later(peer, &entry);
                    if self.0.consensus_link && matches!(entry.link, Link::Mux { .. }) {
                        self.keep_consensus(
                            peer.clone(),
                            entry.id,
                            entry.link.clone(),
                            endpoint.clone(),
                        );
                    }
                    return Ok(entry);
                }
                Err(e) => failures.0.push((endpoint.clone(), e)),
            }
        }
        let failures = Arc::new(failures);
        *last_failure = Some((Instant::now(), failures.clone()));
        Err(OpenError::Dial(peer.clone(), failures))
    }

    async fn dial_endpoint(&self, peer: &GatewayId, endpoint: &str) -> Result<Link, DialError> {
        let use_quic = match self.0.transport {
            Transport::Tcp => false,
            Transport::Quic => true,
            Transport::Auto => self.0.upgrades.due(peer, tokio::time::Instant::now()),
        };
        if !(use_quic && self.0.quic.is_some()) {
            return self.dial_tcp(peer, endpoint, false).await;
        }
        let timeout = match self.0.transport {
            Transport::Auto => AUTO_QUIC_TIMEOUT,
            _ => DIAL_TIMEOUT,
        };
        match tokio::time::timeout(timeout, self.dial_quic(peer, endpoint)).await {
            Ok(Ok(link)) => return Ok(link),
            Ok(Err(e)) if self.0.transport == Transport::Quic => return Err(e),
            Err(_) if self.0.transport == Transport::Quic => {
                return Err(DialError::QuicTimeout);
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "QUIC dial failed; trying TCP+TLS"),
            Err(_) => debug!(%peer, "QUIC dial timed out; trying TCP+TLS"),
        }
        let link = self.dial_tcp(peer, endpoint, false).await?;
        // only now is UDP the problem: when TCP+TLS fails too, the peer is down (restarting),
        // and its next link should be QUIC again
        self.0.upgrades.failed_now(peer);
        Ok(link)
    }

    async fn dial_quic(&self, peer: &GatewayId, endpoint: &str) -> Result<Link, DialError> {
        let quic = self.0.quic.as_ref().ok_or(DialError::NoQuicEndpoint)?;
        self.0.upgrades.check_blocked()?;
        // the peer proves the identity the view expects, whatever name or address it is at
        let name = peer.server_name(&self.0.domain);
        let name = name.as_str();
        let addrs = crate::net::resolve(endpoint)
            .await
            .map_err(DialError::Resolve)?;
        let mut last = DialError::NoAddress;
        for addr in addrs {
            let client = if self.fast_liveness(peer) {
                self.0.quic_client_fast.clone()
            } else {
                self.0.quic_client.clone()
            };
            let connecting = match quic.connect_with(client, addr, name) {
                Ok(c) => c,
                Err(e) => {
                    last = DialError::QuicConnect { addr, source: e };
                    continue;
                }
            };
            match connecting.await {
                Ok(conn) => {
                    let id = self.identity_of(conn.peer_identity());
                    if id.as_ref() != Some(peer) {
                        conn.close(quinn::VarInt::from_u32(1), b"unexpected peer");
                        return Err(DialError::WrongPeer(peer.clone()));
                    }
                    return Ok(Link::Quic(conn));
                }
                Err(e) => last = DialError::QuicHandshake { addr, source: e },
            }
        }
        Err(last)
    }

    /// Dials a TCP+TLS link to `peer` at `endpoint`, which must prove the peer's identity; a
    /// consensus side link ([`consensus`]) with `consensus`.
    async fn dial_tcp(
        &self,
        peer: &GatewayId,
        endpoint: &str,
        consensus: bool,
    ) -> Result<Link, DialError> {
        let name = crate::net::dns_server_name(&peer.server_name(&self.0.domain))
            .map_err(DialError::Tls)?;
        let client = if consensus {
            self.0.tls_consensus.clone()
        } else {
            self.0.tls_client.clone()
        };
        let tls = crate::net::dial_tls_as(endpoint, name, client, DIAL_TIMEOUT)
            .await
            .map_err(DialError::Tls)?;
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
            return Err(DialError::WrongPeer(peer.clone()));
        }
        let (tcp, tls) = tls.into_inner();
        let config = if self.fast_liveness(peer) {
            &self.0.mux_fast
        } else {
            &self.0.mux
        };
        let (mux, driver) = mux::session(tcp, tls.into(), mux::Role::Client, config, None);
        Ok(self.run_mux(peer.clone(), mux, driver, peer_not_after, consensus))
    }

    /// The gateway an inbound link speaks for, if it may carry tunnels: another site than this
    /// one, and one its org has published (a `Gateway` record in the view), waiting up to
    /// [`PUBLISH_WAIT`] for the record of a site that has just started. The certificate
    /// verifier already required a gateway leaf; this refuses a site that does not exist.
    async fn inbound_peer(&self, id: Option<GatewayId>) -> Option<GatewayId> {
        let id = id?;
        // siblings keep no links: nodes at a site are reached directly
        if id.same_site(&self.0.me) {
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
    /// streams rather than left to its idle timeout. A QUIC link instead drains the peer's
    /// TCP+TLS links, whoever dialled them ([`upgrade::drains`]): `auto` moved back to QUIC.
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
            fast: !outbound || self.fast_liveness(&peer),
        };
        let (draining, superseded): (Vec<LinkEntry>, Vec<LinkEntry>) = {
            let mut all = self.0.all_links.lock().unwrap_or_else(|e| e.into_inner());
            let keep_until = Instant::now() + SUPERSEDE_MARGIN;
            let older = all
                .values()
                .filter(|(p, e)| {
                    *p == peer
                        && (upgrade::drains(&link, &e.link)
                            || (e.outbound == outbound && e.retire_at > keep_until))
                })
                .map(|(_, e)| e.clone());
            let older = older.partition(|e| upgrade::drains(&link, &e.link));
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
        for old in draining {
            self.drain(&peer, old.id, old.link);
        }
        if let Some(old) = replaced
            && old.link.is_alive()
            && !superseded.iter().any(|s| s.id == old.id)
            && !upgrade::drains(&link, &old.link)
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
                    Ok((send, recv)) => self.0.inbound.serve(peer.org.clone(), TunnelStream::Quic(send, recv)),
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
        consensus: bool,
    ) -> Link {
        let closed = CancellationToken::new();
        let this = self.clone();
        let done = closed.clone();
        self.0.tracker.spawn(async move {
            loop {
                tokio::select! {
                    s = driver.accept() => match s {
                        Ok((r, w)) => this.0.inbound.serve(peer.org.clone(), TunnelStream::Mux(r, w)),
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
            consensus,
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
                let consensus =
                    tls.alpn_protocol() == Some(fedgw_certs::tls::ALPN_TUNNEL_CONSENSUS);
                let (mux, driver) =
                    mux::session(tcp, tls.into(), mux::Role::Server, &this.0.mux, end);
                let link = this.run_mux(peer.clone(), mux, driver, peer_not_after, consensus);
                if consensus {
                    this.register_consensus(peer, link, "inbound");
                } else {
                    this.register(peer, link, "inbound");
                }
            });
        }
    }

    /// Keeps a link up to every gateway this side is responsible for: an outbound-only site
    /// keeps links to every site that accepts connections; otherwise the side with the lower
    /// `org/site` keeps the link (the other one dials on demand only), to every replica of the
    /// other site. Siblings (replicas of this site) have no links: nodes at a site are reached
    /// directly.
    pub fn keep_links(&self, gateways: Vec<PeerGateway>) {
        let me = self.0.me.site_id().to_string();
        let want: BTreeMap<GatewayId, PeerGateway> = gateways
            .into_iter()
            .filter(|g| !g.id.same_site(&self.0.me) && !g.outbound_only)
            .filter(|g| self.0.outbound_only || me < g.id.site_id().to_string())
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

    /// Resolves when `entry`, `peer`'s link dialled with slow liveness, should give way to a
    /// fast one: `peer`'s site or this one now has more than one replica.
    async fn wants_fast(&self, peer: &GatewayId, entry: &LinkEntry) {
        if entry.fast {
            return std::future::pending().await;
        }
        let mut changed = self.0.membership.subscribe();
        loop {
            changed.mark_unchanged();
            if self.fast_liveness(peer) {
                return;
            }
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Keeps a link up to `peer` until `stop` (the schedule: [`keeper`]).
    async fn keep(&self, peer: GatewayId, stop: CancellationToken) {
        keeper::keep(
            || self.dial(&peer),
            || self.0.membership.revocation().set().contains(&peer.org),
            &stop,
            BACKOFF,
            |e| debug!(%peer, error = %e, "keeping a tunnel up: dial failed"),
            // a QUIC link took over from a TCP+TLS one, which drains
            |entry: &LinkEntry| {
                let (id, entry) = (entry.id, entry.clone());
                let peer = &peer;
                async move {
                    tokio::select! {
                        () = self.replaced(peer, id) => {}
                        () = self.wants_fast(peer, &entry) => {}
                    }
                }
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests;
