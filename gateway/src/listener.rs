//! The gateway port: one TCP listener, TLS 1.3, protocols told apart by ALPN.
//!
//! The accept loop hands each TCP connection to a tracked task that reads the ClientHello,
//! picks the server config for its ALPN (`fedgw-join/1` → join; `h2` → federation gRPC and
//! `fedgw/1` → TCP+TLS tunnel, both with client auth), completes the handshake under a
//! timeout, and passes the stream to that protocol's server through a bounded channel. A
//! connection offering none of them is closed.
//!
//! Before its handshake a connection is anonymous, so what it may hold is bounded per source
//! (one IPv4 address, or one IPv6 /64: what one host can cheaply vary) as well as in total
//! ([`PortLimits`]): a pending-handshake slot, taken at accept, and for `fedgw-join/1` a join
//! slot, held for the connection's life. A source at its cap, or a connection arriving when the
//! port is full, is closed at once, before any TLS work. Part of the pending slots is kept for
//! member gateways known by address (an IP literal their `Gateway` record advertises, or a
//! source that completed a federation or tunnel handshake before); and while more than half the slots are taken, a connection that has sent nothing
//! within [`PortLimits::idle_hello_ms`] is closed.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fedgw_certs::PeerIdentity;
use fedgw_certs::tls::{ALPN_H2, ALPN_JOIN, ALPN_TUNNEL, ALPN_TUNNEL_CONSENSUS};
use rustls::ServerConfig;
use rustls::server::Acceptor;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be in progress at once, by default.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How many handshakes one source may have in progress at once, by default.
pub const MAX_PENDING_PER_SOURCE: usize = 16;
/// Pending-handshake slots kept for known member gateways, by default.
pub const MEMBER_RESERVE: usize = 32;
/// Most join connections one source may hold at once, by default.
pub const MAX_JOIN_PER_SOURCE: usize = 4;
/// Under pressure, how long a connection may stay silent before it is closed, by default (ms).
pub const IDLE_HELLO_MS: u64 = 1000;
/// Most source addresses remembered as member gateways (oldest forgotten first).
pub const MAX_KNOWN_SOURCES: usize = 4096;

/// `[port]` in `fedgw.toml`: what unauthenticated connections to the gateway port may hold.
/// A source is one IPv4 address or one IPv6 /64 (IPv4-mapped IPv6 counts as IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortLimits {
    /// Most TLS handshakes in progress at once [256].
    pub max_pending_handshakes: usize,
    /// Most handshakes in progress from one source [16].
    pub max_pending_per_source: usize,
    /// Of `max_pending_handshakes`, how many only member gateways may take: addresses their
    /// `Gateway` records advertise, and sources that completed a federation or tunnel
    /// handshake before [32].
    pub member_reserve: usize,
    /// Most join connections (`fedgw-join/1`) open at once [64].
    pub max_join_connections: usize,
    /// Most join connections open from one source [4].
    pub max_join_per_source: usize,
    /// While more than half of `max_pending_handshakes` are taken, a connection that has
    /// sent no byte this long after its accept is closed, ms [1000].
    pub idle_hello_ms: u64,
}

impl Default for PortLimits {
    fn default() -> Self {
        Self {
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
            max_pending_per_source: MAX_PENDING_PER_SOURCE,
            member_reserve: MEMBER_RESERVE,
            max_join_connections: MAX_JOIN_CONNECTIONS,
            max_join_per_source: MAX_JOIN_PER_SOURCE,
            idle_hello_ms: IDLE_HELLO_MS,
        }
    }
}

impl PortLimits {
    /// Checks the ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        const MAX: usize = 1 << 16;
        let in_range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("port.{key} must be between {lo} and {hi}"))
            }
        };
        in_range(
            "max_pending_handshakes",
            self.max_pending_handshakes,
            1,
            MAX,
        )?;
        in_range(
            "max_pending_per_source",
            self.max_pending_per_source,
            1,
            self.max_pending_handshakes,
        )?;
        in_range(
            "member_reserve",
            self.member_reserve,
            0,
            self.max_pending_handshakes - 1,
        )?;
        in_range("max_join_connections", self.max_join_connections, 1, MAX)?;
        in_range(
            "max_join_per_source",
            self.max_join_per_source,
            1,
            self.max_join_connections,
        )?;
        if !(10..=HANDSHAKE_TIMEOUT.as_millis() as u64).contains(&self.idle_hello_ms) {
            return Err(format!(
                "port.idle_hello_ms must be between 10 and {}",
                HANDSHAKE_TIMEOUT.as_millis()
            ));
        }
        Ok(())
    }
}

/// Who a connection counts against: one IPv4 address, or one IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 included).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    /// Its source holds its share already.
    #[error("too many connections from this source")]
    Source,
    /// Every slot open to it is taken.
    #[error("no free slot")]
    Full,
}

impl SlotRefusal {
    fn label(self) -> &'static str {
        match self {
            SlotRefusal::Source => "source_limit",
            SlotRefusal::Full => "port_full",
        }
    }
}

/// Slots bounded in total and per [`Source`], with a reserve only privileged sources may take.
/// A slot is given back when its [`Slot`] is dropped.
#[derive(Debug)]
pub struct SourceSlots {
    total: usize,
    per_source: usize,
    reserve: usize,
    state: Mutex<SlotState>,
    /// True while more than half the slots are taken.
    pressure: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct SlotState {
    taken: usize,
    by_source: HashMap<Source, usize>,
}

/// One taken slot of a [`SourceSlots`].
#[derive(Debug)]
pub struct Slot {
    slots: Arc<SourceSlots>,
    source: Source,
}

impl SourceSlots {
    /// `total` slots, at most `per_source` per source, the last `reserve` of them only for
    /// privileged sources.
    pub fn new(total: usize, per_source: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_source,
            reserve,
            state: Mutex::new(SlotState::default()),
            pressure: watch::Sender::new(false),
        })
    }

    /// Takes a slot for `source`; `privileged` sources may use the reserve.
    pub fn try_take(
        self: &Arc<Self>,
        source: Source,
        privileged: bool,
    ) -> Result<Slot, SlotRefusal> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = st.by_source.get(&source).copied().unwrap_or(0);
        if held >= self.per_source {
            return Err(SlotRefusal::Source);
        }
        let open = if privileged {
            self.total
        } else {
            self.total - self.reserve.min(self.total)
        };
        if st.taken >= open {
            return Err(SlotRefusal::Full);
        }
        st.taken += 1;
        st.by_source.insert(source, held + 1);
        let pressure = st.taken * 2 > self.total;
        drop(st);
        self.pressure
            .send_if_modified(|p| std::mem::replace(p, pressure) != pressure);
        Ok(Slot {
            slots: self.clone(),
            source,
        })
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).taken
    }

    /// Sees whether more than half the slots are taken.
    pub fn pressure(&self) -> watch::Receiver<bool> {
        self.pressure.subscribe()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
        st.taken = st.taken.saturating_sub(1);
        if let Some(n) = st.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                st.by_source.remove(&self.source);
            }
        }
        let pressure = st.taken * 2 > self.slots.total;
        drop(st);
        self.slots
            .pressure
            .send_if_modified(|p| std::mem::replace(p, pressure) != pressure);
    }
}

/// Member gateways' addresses: the IP literals their published `Gateway` records advertise,
/// and sources that completed a federation or tunnel handshake, bounded to
/// [`MAX_KNOWN_SOURCES`] (the oldest is forgotten first).
#[derive(Debug, Default)]
struct KnownSources {
    inner: Mutex<(HashSet<Source>, std::collections::VecDeque<Source>)>,
    advertised: Mutex<HashSet<Source>>,
}

impl KnownSources {
    fn contains(&self, s: Source) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains(&s)
            || self
                .advertised
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&s)
    }

    fn set_advertised(&self, sources: HashSet<Source>) {
        *self.advertised.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    fn learn(&self, s: Source) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *g;
        if set.insert(s) {
            order.push_back(s);
            if order.len() > MAX_KNOWN_SOURCES
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }
}

/// What the server knows about a TLS connection, available to gRPC handlers as a request
/// extension (`request.extensions().get::<ConnInfo>()`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer address.
    pub remote: SocketAddr,
    /// The verified client identity (federation connections only).
    pub peer: Option<PeerIdentity>,
    /// 32 bytes exported from the TLS session (label `EXPORTER-fedgw-join-v1`): binds a join
    /// proof to this connection.
    pub channel_binding: [u8; 32],
}

/// Most join connections open at once (they are unauthenticated), by default; further ones are
/// refused.
pub const MAX_JOIN_CONNECTIONS: usize = 64;
/// A join connection is closed after this long, whatever it is doing: a join is one exchange,
/// and a joiner waiting for approvals reconnects for every attempt.
pub const JOIN_CONNECTION_MAX_AGE: Duration = Duration::from_secs(30);

/// A future that resolves, with the reason, when a connection must end.
pub type EndWhen = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A server-side TLS connection with its [`ConnInfo`]. It ends, failing its next read or write,
/// when its org is revoked (federation) or it reaches [`JOIN_CONNECTION_MAX_AGE`] (join); a join
/// connection also holds one of the join slots ([`PortLimits::max_join_connections`]) while it
/// lives.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    end: Option<EndWhen>,
    _slot: Option<Slot>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// What the server knows about the connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The TCP socket, the TLS session (handshake done) and what ends the connection, for a
    /// protocol that drives TLS itself (the tunnel's yamux).
    pub fn into_parts(self) -> (TcpStream, rustls::ServerConnection, Option<EndWhen>) {
        let (tcp, tls) = self.stream.into_inner();
        (tcp, tls, self.end)
    }

    fn check_killed(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(reason) = end.as_mut().poll(cx)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                reason,
            ));
        }
        Ok(())
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The server configs and where accepted streams go.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Config for ALPN `fedgw-join/1`.
    pub join_config: Arc<ServerConfig>,
    /// Config for ALPN `h2` (client auth required).
    pub federation_config: Arc<ServerConfig>,
    /// The consortium domain, to read peer identities.
    pub domain: String,
    /// Receives join connections.
    pub join_tx: mpsc::Sender<TlsConn>,
    /// Receives federation connections.
    pub federation_tx: mpsc::Sender<TlsConn>,
    /// Config for ALPN `fedgw/1` and `fedgw-consensus/1` (TCP+TLS tunnels and their
    /// consensus side links, client auth required).
    pub tunnel_config: Arc<ServerConfig>,
    /// Receives tunnel connections.
    pub tunnel_tx: mpsc::Sender<TlsConn>,
    /// Revocation tokens per org, to close a revoked org's live connections.
    pub revocation: crate::membership::Revocation,
    /// What unauthenticated connections may hold.
    pub limits: PortLimits,
    /// The view, for member gateways' advertised addresses (the reserve).
    pub membership: crate::membership::Membership,
}

/// The sources named by IP literal in gateways' advertised `host:port` endpoints (names are
/// not resolved: a member reached by name becomes known at its first handshake).
pub fn advertised_sources<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> HashSet<Source> {
    endpoints
        .into_iter()
        .filter_map(crate::net::split_host_port)
        .filter_map(|(host, _)| host.parse::<IpAddr>().ok())
        .map(Source::from)
        .collect()
}

/// Keeps `gate`'s advertised sources in step with the view until `shutdown`.
async fn keep_advertised(
    membership: crate::membership::Membership,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) {
    let mut changed = membership.subscribe();
    loop {
        let sources = membership.read(|v| {
            let gateways = v.gateways();
            advertised_sources(
                gateways
                    .iter()
                    .flat_map(|(_, g)| g.advertise.iter().map(String::as_str)),
            )
        });
        gate.known.set_advertised(sources);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

/// The per-source state of one gateway port.
struct Gate {
    pending: Arc<SourceSlots>,
    join: Arc<SourceSlots>,
    known: KnownSources,
    idle_hello: Duration,
}

/// Accepts on `listener` until `shutdown`; handshakes run as tasks on `tracker`. A connection
/// that gets no pending slot ([`PortLimits`]) is closed at once.
pub async fn serve(
    listener: TcpListener,
    dispatch: Dispatch,
    metrics: Metrics,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let limits = &dispatch.limits;
    let gate = Arc::new(Gate {
        pending: SourceSlots::new(
            limits.max_pending_handshakes,
            limits.max_pending_per_source,
            limits.member_reserve,
        ),
        join: SourceSlots::new(limits.max_join_connections, limits.max_join_per_source, 0),
        known: KnownSources::default(),
        idle_hello: Duration::from_millis(limits.idle_hello_ms),
    });
    tracker.spawn(keep_advertised(
        dispatch.membership.clone(),
        gate.clone(),
        shutdown.clone(),
    ));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = Source::from(remote.ip());
        let permit = match gate.pending.try_take(source, gate.known.contains(source)) {
            Ok(p) => p,
            Err(refusal) => {
                // dropped unread: a reset or FIN, no TLS work, no task
                metrics.handshake("unknown", refusal.label());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let dispatch = dispatch.clone();
        let metrics = metrics.clone();
        let gate = gate.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
            if !first_bytes(&tcp, gate.pending.pressure(), gate.idle_hello).await {
                debug!(%remote, "silent connection closed under pressure");
                metrics.handshake("unknown", "idle");
                return;
            }
            let shake = handshake(tcp, remote, source, &dispatch, &gate);
            match tokio::time::timeout_at(deadline, shake).await {
                Ok(Ok(kind)) => metrics.handshake(kind, "ok"),
                Ok(Err((kind, e))) => {
                    debug!(%remote, error = %e, "gateway handshake failed");
                    metrics.handshake(kind, "failed");
                }
                Err(_) => {
                    debug!(%remote, "gateway handshake timed out");
                    metrics.handshake("unknown", "timeout");
                }
            }
        });
    }
}

/// Waits until `tcp` has something to read (or is closed); `false` when the port came under
/// pressure and the peer has sent nothing `idle` after this call (the accept). Bounded by the
/// handshake timeout either way.
async fn first_bytes(tcp: &TcpStream, mut pressure: watch::Receiver<bool>, idle: Duration) -> bool {
    let give_up = tokio::time::Instant::now() + idle;
    let idle_close = async {
        let _ = pressure.wait_for(|p| *p).await;
        tokio::time::sleep_until(give_up).await;
    };
    let mut byte = [0u8; 1];
    tokio::select! {
        // bytes that arrived win over a deadline that passed at the same time
        biased;
        // a peek, not readiness alone, which may be spurious; it also ends on EOF or an
        // error, and the handshake then fails on its own
        _ = tcp.peek(&mut byte) => true,
        () = idle_close => false,
        () = tokio::time::sleep(HANDSHAKE_TIMEOUT) => true,
    }
}

type HandshakeError = (&'static str, std::io::Error);

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    source: Source,
    d: &Dispatch,
    gate: &Gate,
) -> Result<&'static str, HandshakeError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
        .await
        .map_err(|e| ("unknown", e))?;
    let alpn: Vec<Vec<u8>> = start
        .client_hello()
        .alpn()
        .map(|a| a.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let mut slot = None;
    let (kind, config, tx) = if alpn.iter().any(|p| p == ALPN_JOIN) {
        // taken before the handshake completes, so a refused client costs no signature
        slot = Some(gate.join.try_take(source, false).map_err(|e| {
            (
                "join",
                std::io::Error::other(format!("join connection: {e}")),
            )
        })?);
        ("join", d.join_config.clone(), &d.join_tx)
    } else if alpn.iter().any(|p| p == ALPN_H2) {
        ("federation", d.federation_config.clone(), &d.federation_tx)
    } else if alpn
        .iter()
        .any(|p| p == ALPN_TUNNEL || p == ALPN_TUNNEL_CONSENSUS)
    {
        ("tunnel", d.tunnel_config.clone(), &d.tunnel_tx)
    } else {
        return Err((
            "unknown",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no supported ALPN protocol",
            ),
        ));
    };
    let stream = start.into_stream(config).await.map_err(|e| (kind, e))?;
    let conn = stream.get_ref().1;
    let peer = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Some(fedgw_certs::peer_identity(leaf, &d.domain).map_err(|e| {
            (
                kind,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?),
        None => None,
    };
    let channel_binding = conn
        .export_keying_material([0u8; 32], fedgw_certs::token::JOIN_EXPORTER_LABEL, None)
        .map_err(|e| (kind, std::io::Error::other(e)))?;
    let end: EndWhen = match &peer {
        Some(p) => {
            // a member gateway: its address may use the reserve from now on
            gate.known.learn(source);
            let revoked = d.revocation.token(&p.org).cancelled_owned();
            Box::pin(async move {
                revoked.await;
                "peer org revoked"
            })
        }
        None => Box::pin(async {
            tokio::time::sleep(JOIN_CONNECTION_MAX_AGE).await;
            "join connection reached its maximum age"
        }),
    };
    let info = ConnInfo {
        remote,
        peer,
        channel_binding,
    };
    tx.send(TlsConn {
        stream,
        info,
        end: Some(end),
        _slot: slot,
    })
    .await
    .map_err(|_| (kind, std::io::Error::other("server is shutting down")))?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Source {
        Source::from(s.parse::<IpAddr>().expect("ip"))
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(v4("192.0.2.1"), Source::V4([192, 0, 2, 1]));
        assert_ne!(v4("192.0.2.1"), v4("192.0.2.2"));
        assert_eq!(
            v4("::ffff:192.0.2.1"),
            v4("192.0.2.1"),
            "IPv4-mapped is IPv4"
        );
        assert_eq!(
            v4("2001:db8:1:2::1"),
            v4("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
    }

    #[test]
    fn advertised_ip_literals_are_known_sources() {
        let got = advertised_sources([
            "192.0.2.7:7443",
            "[2001:db8:1:2::9]:7443",
            "gw.org2.example.com:7443",
            "not an endpoint",
        ]);
        let want: HashSet<Source> = [v4("192.0.2.7"), v4("2001:db8:1:2::1")].into();
        assert_eq!(got, want);
        let known = KnownSources::default();
        known.set_advertised(got);
        assert!(known.contains(v4("192.0.2.7")));
        assert!(!known.contains(v4("192.0.2.8")));
        known.learn(v4("192.0.2.8"));
        assert!(known.contains(v4("192.0.2.8")));
    }

    #[test]
    fn slots_are_capped_per_source_and_in_total_with_a_reserve() {
        let slots = SourceSlots::new(8, 3, 2);
        let (a, b, c, d) = (
            v4("10.0.0.1"),
            v4("10.0.0.2"),
            v4("10.0.0.3"),
            v4("10.0.0.4"),
        );
        let mut held: Vec<Slot> = (0..3)
            .map(|_| slots.try_take(a, false).expect("a"))
            .collect();
        assert_eq!(slots.try_take(a, false).err(), Some(SlotRefusal::Source));
        assert_eq!(slots.try_take(a, true).err(), Some(SlotRefusal::Source));
        held.extend((0..3).map(|_| slots.try_take(b, false).expect("b")));
        // 6 of 8 taken: the last 2 are the reserve
        assert_eq!(slots.try_take(c, false).err(), Some(SlotRefusal::Full));
        held.push(slots.try_take(d, true).expect("privileged d"));
        held.push(slots.try_take(d, true).expect("privileged d"));
        assert_eq!(slots.try_take(d, true).err(), Some(SlotRefusal::Full));
        assert_eq!(slots.taken(), 8);
        // dropping a slot gives it back to its source and to the total
        held.swap_remove(0);
        assert_eq!(slots.taken(), 7);
        held.push(slots.try_take(a, true).expect("a again"));
        drop(held);
        assert_eq!(slots.taken(), 0);
        assert!(slots.state.lock().expect("lock").by_source.is_empty());
    }

    #[test]
    fn pressure_is_more_than_half_the_slots_taken() {
        let slots = SourceSlots::new(4, 4, 0);
        let pressure = slots.pressure();
        let s = v4("10.0.0.1");
        let first = slots.try_take(s, false).expect("1");
        let second = slots.try_take(s, false).expect("2");
        assert!(!*pressure.borrow());
        let third = slots.try_take(s, false).expect("3");
        assert!(*pressure.borrow());
        drop(third);
        assert!(!*pressure.borrow());
        drop((first, second));
    }

    #[tokio::test]
    async fn silent_connections_close_only_under_pressure() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let idle = Duration::from_millis(50);
        // under pressure: given up after `idle`
        let (_busy_tx, busy) = watch::channel(true);
        let start = tokio::time::Instant::now();
        assert!(!first_bytes(&server, busy, idle).await);
        assert!(start.elapsed() >= idle);
        // no pressure: still waiting well past `idle`, until a byte arrives
        let (calm_tx, calm) = watch::channel(false);
        let wait = first_bytes(&server, calm.clone(), idle);
        assert!(tokio::time::timeout(idle * 4, wait).await.is_err());
        client.write_all(&[0x16]).await.expect("write");
        assert!(first_bytes(&server, calm, idle).await);
        // a byte sent, pressure does not close it
        calm_tx.send_replace(true);
        assert!(first_bytes(&server, calm_tx.subscribe(), Duration::ZERO).await);
    }

    #[test]
    fn port_limits_are_validated() {
        assert_eq!(PortLimits::default().validate(), Ok(()));
        let bad = [
            PortLimits {
                max_pending_handshakes: 0,
                ..Default::default()
            },
            PortLimits {
                max_pending_per_source: 0,
                ..Default::default()
            },
            PortLimits {
                member_reserve: MAX_PENDING_HANDSHAKES,
                ..Default::default()
            },
            PortLimits {
                max_join_per_source: MAX_JOIN_CONNECTIONS + 1,
                ..Default::default()
            },
            PortLimits {
                idle_hello_ms: 0,
                ..Default::default()
            },
        ];
        for limits in bad {
            let err = limits.validate().expect_err("invalid");
            assert!(err.starts_with("port."), "{err}");
        }
    }
}
