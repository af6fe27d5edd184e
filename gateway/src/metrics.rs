//! Prometheus metrics and the health endpoints, served on the metrics address (default
//! 127.0.0.1:9464): `/metrics` (OpenMetrics text), `/livez` (200 while the process serves),
//! `/readyz` (200 once every listener is bound, the view holds this org's membership and the zone and
//! data plane reflect the stored view; a latch, cleared for good when a server of the gateway
//! stops before shutdown: see [`Metrics::server_stopped`]).
//!
//! Labels stay low-cardinality: protocol, result, org. Never a socket address or a token id.
//!
//! This module knows no other subsystem: the types it counts by (a tunnel stream's class, a
//! refusal's reason) name themselves through [`Label`], implemented where they are defined.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod process;

/// A value that names itself in a metric label: a tunnel stream's class, a refusal's reason.
/// The module that defines the value implements this, so metrics need not know its type.
pub trait Label: Copy {
    /// The label value: fixed, lowercase, one of a few.
    fn label(self) -> &'static str;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    protocol: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerDirectionLabels {
    peer_org: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    /// The peer site, `org/site`.
    peer: String,
    /// The peer site's replica the link is with; empty for the site's first gateway.
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// A replica of a node: its name and the address registered for the replica (operator-set,
/// at most [`crate::tunnel::replicas::MAX_REPLICAS`] per node, so the cardinality stays that
/// of the nodes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    node: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

/// Upper bounds of the write-wait histogram, seconds: 0.5 ms to 5 s.
const WAIT_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// Per priority class: bytes sent into tunnels and how long writes waited for the link.
#[derive(Clone, Debug)]
struct ClassMetrics {
    bytes: Family<ClassLabels, Counter>,
    wait: Family<ClassLabels, Histogram, fn() -> Histogram>,
    /// The same waits for `fedgw status`, by class label (one entry a class, created at its
    /// first connection).
    waits: Arc<Mutex<BTreeMap<&'static str, Arc<WaitStats>>>>,
}

impl ClassMetrics {
    /// The wait statistics of the class labelled `class`.
    fn waits(&self, class: &'static str) -> Arc<WaitStats> {
        // a poisoned lock only means another thread panicked while inserting: the map is whole
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        waits.entry(class).or_default().clone()
    }
}

/// Write waits of one class: count, sum and longest, µs.
#[derive(Debug, Default)]
struct WaitStats {
    writes: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// One class's series, held by a proxied connection (see [`Metrics::tunnel_counters`]).
#[derive(Clone, Debug)]
pub struct ClassCounters {
    bytes: Counter,
    wait: Histogram,
    waits: Arc<WaitStats>,
}

impl ClassCounters {
    /// Bytes sent into the tunnel with a stream's header (no wait of their own).
    pub fn sent(&self, bytes: usize) {
        self.bytes.inc_by(bytes as u64);
    }

    /// A write of `bytes` into the tunnel that took `waited` until the link took it.
    pub fn wrote(&self, bytes: usize, waited: std::time::Duration) {
        self.bytes.inc_by(bytes as u64);
        self.wait.observe(waited.as_secs_f64());
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let w = &self.waits;
        w.writes.fetch_add(1, Ordering::Relaxed);
        w.sum_us.fetch_add(us, Ordering::Relaxed);
        w.max_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// One class's totals, for `fedgw status`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClassTotals {
    /// Bytes sent into tunnels.
    pub bytes: u64,
    /// Writes into tunnels.
    pub writes: u64,
    /// Their total wait for the link, µs.
    pub wait_sum_us: u64,
    /// The longest wait, µs.
    pub max_wait_us: u64,
}

/// Byte counters of one proxied connection: `tx` counts bytes sent into the tunnel, `rx` bytes
/// received from it.
#[derive(Debug, Clone)]
pub struct TunnelCounters {
    /// Sent into the tunnel.
    pub tx: Counter,
    /// Received from the tunnel.
    pub rx: Counter,
    /// The stream's priority class: bytes sent and how long writes waited.
    pub class: ClassCounters,
}

/// Data-plane series.
#[derive(Clone, Debug, Default)]
struct TunnelMetrics {
    bytes: Family<PeerDirectionLabels, Counter>,
    connections: Family<PeerDirectionLabels, Counter>,
    active_streams: Gauge,
    rtt: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    path_mtu: Family<PeerLabels, Gauge>,
    lost_packets: Family<PeerLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    refused_by_peer: Family<ReasonLabels, Counter>,
    stalled: Family<EndLabels, Counter>,
    links: Family<TransportLabels, Gauge>,
    listeners: Gauge,
}

/// Decrements the active-stream gauge when dropped.
#[derive(Debug)]
pub struct ActiveStream(Gauge);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The gateway's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    tunnel: TunnelMetrics,
    classes: ClassMetrics,
    registry: Arc<Registry>,
    handshakes: Family<HandshakeLabels, Counter>,
    joins: Family<ResultLabels, Counter>,
    hellos: Family<OrgLabels, Counter>,
    leaf_not_after: Gauge,
    records_rejected: Family<ResultLabels, Counter>,
    dns_tcp_refused: Family<ReasonLabels, Counter>,
    sync_peers: Gauge,
    site_allocation_conflicts: Counter,
    servers_stopped: Family<ServerLabels, Counter>,
    chain_rpc_calls: Family<RpcLabels, Counter>,
    chain_block_height: Family<NodeLabels, Gauge>,
    cert_expiry: Family<CertLabels, Gauge>,
    dns_queries: Family<RcodeLabels, Counter>,
    revoked_orgs: Gauge,
    replica_up: Family<ReplicaLabels, Gauge>,
    replica_dial_failures: Family<ReplicaLabels, Counter>,
    ready: Arc<AtomicBool>,
    /// Set when a server stopped before shutdown; readiness stays cleared.
    stopped: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("fedgw");
        registry.register(
            "build",
            "The fedgw build: `version` is the crate version (always 1)",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "gateway_handshakes",
            "TLS handshakes on the gateway port, by ALPN protocol and result",
            handshakes.clone(),
        );
        let joins = Family::<ResultLabels, Counter>::default();
        registry.register(
            "join_requests",
            "Join requests received, by result (admitted or the refusal reason)",
            joins.clone(),
        );
        let hellos = Family::<OrgLabels, Counter>::default();
        registry.register(
            "federation_hellos",
            "Federation Hello calls served, by caller org",
            hellos.clone(),
        );
        let leaf_not_after = Gauge::default();
        registry.register(
            "gateway_leaf_not_after_seconds",
            "Expiry of the current gateway leaf certificate, Unix seconds",
            leaf_not_after.clone(),
        );
        let records_rejected = Family::<ResultLabels, Counter>::default();
        registry.register(
            "records_rejected",
            "Membership records refused at ingress, by reason",
            records_rejected.clone(),
        );
        let dns_tcp_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dns_tcp_refused_connections",
            "DNS TCP connections closed on accept, by reason (per_source: dns_tcp_max_per_source reached; total: dns_tcp_max_connections reached)",
            dns_tcp_refused.clone(),
        );
        let sync_peers = Gauge::default();
        registry.register(
            "sync_peers",
            "Gateways with a live membership sync stream",
            sync_peers.clone(),
        );
        let site_allocation_conflicts = Counter::default();
        registry.register(
            "site_allocation_conflicts",
            "Local addresses two replicas of this site allocated differently (on both sides of a partition), resolved for the lower replica name",
            site_allocation_conflicts.clone(),
        );
        let servers_stopped = Family::<ServerLabels, Counter>::default();
        registry.register(
            "servers_stopped",
            "Servers of the gateway (dns, dns_tcp, admin, metrics, join, federation) that stopped before shutdown; any makes /readyz fail",
            servers_stopped.clone(),
        );
        let chain_rpc_calls = Family::<RpcLabels, Counter>::default();
        registry.register(
            "chain_rpc_calls",
            "Calls to this site's chain nodes' RPC endpoints (JSON-RPC, Tessera ADMIN), by method and result (ok, or the failure: connect, timeout, http, status, too_large, garbage, remote, result)",
            chain_rpc_calls.clone(),
        );
        let chain_block_height = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "chain_block_height",
            "Chain height each local node with an RPC endpoint last reported (eth_blockNumber), by node name",
            chain_block_height.clone(),
        );
        let replica_up = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "node_replica_up",
            "This site's nodes with several addresses: 1 while the far end holds the replica healthy, 0 from a failed connect until a background check answers",
            replica_up.clone(),
        );
        let replica_dial_failures = Family::<ReplicaLabels, Counter>::default();
        registry.register(
            "node_replica_dial_failures",
            "Connects to a replica of this site's node that failed (the stream tried the next replica)",
            replica_dial_failures.clone(),
        );
        let tunnel = TunnelMetrics::default();
        registry.register(
            "tunnel_bytes",
            "Bytes of proxied connections, by peer org and direction (tx: into the tunnel)",
            tunnel.bytes.clone(),
        );
        registry.register(
            "tunnel_connections",
            "Proxied connections, by peer org and direction (outbound: a local client dialled a remote node; inbound: a peer reached a node of this site)",
            tunnel.connections.clone(),
        );
        registry.register(
            "tunnel_active_streams",
            "Proxied connections open now",
            tunnel.active_streams.clone(),
        );
        registry.register(
            "tunnel_rtt_seconds",
            "Smoothed round-trip time of the QUIC tunnel to each peer site (org/site)",
            tunnel.rtt.clone(),
        );
        registry.register(
            "tunnel_path_mtu_bytes",
            "Largest UDP payload path MTU discovery has confirmed on the QUIC tunnel to each peer site (1200 to 8952)",
            tunnel.path_mtu.clone(),
        );
        registry.register(
            "tunnel_lost_packets",
            "Packets the QUIC tunnel to each peer site declared lost",
            tunnel.lost_packets.clone(),
        );
        registry.register(
            "tunnel_refused_streams",
            "Tunnel streams this gateway refused, by reason (source_not_allowed: a local connection from outside tunnel.allowed_sources)",
            tunnel.refused.clone(),
        );
        registry.register(
            "tunnel_refused_by_peer_streams",
            "Tunnel streams a peer gateway refused, by reason (no_tunnel: no link could be opened)",
            tunnel.refused_by_peer.clone(),
        );
        registry.register(
            "tunnel_stalled_connections",
            "Proxied connections reset because their TCP peer (end=far: the node, end=near: the local client) took no bytes for tunnel.stall_timeout_ms",
            tunnel.stalled.clone(),
        );
        registry.register(
            "tunnel_links",
            "Live tunnel connections to peer sites, by transport",
            tunnel.links.clone(),
        );
        registry.register(
            "tunnel_listeners",
            "Local listeners for remote nodes' ports",
            tunnel.listeners.clone(),
        );
        let cert_expiry = Family::<CertLabels, Gauge>::default();
        registry.register(
            "cert_expiry_seconds",
            "Expiry (notAfter) of this gateway's certificates, Unix seconds, by cert (gateway_leaf, org_ca, root_ca)",
            cert_expiry.clone(),
        );
        let dns_queries = Family::<RcodeLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "DNS queries answered (UDP and TCP), by response code (noerror, nxdomain, refused: rate limit or not this zone, formerr, notimp, servfail, other)",
            dns_queries.clone(),
        );
        let revoked_orgs = Gauge::default();
        registry.register(
            "revoked_orgs",
            "Orgs the consortium has revoked, as this gateway's view holds them",
            revoked_orgs.clone(),
        );
        let classes = ClassMetrics {
            bytes: Family::default(),
            wait: Family::new_with_constructor(wait_histogram),
            waits: Arc::default(),
        };
        registry.register(
            "tunnel_class_bytes",
            "Bytes sent into tunnels, by priority class (consensus, interactive, bulk)",
            classes.bytes.clone(),
        );
        registry.register(
            "tunnel_write_wait_seconds",
            "How long writes into tunnels waited until the link took their bytes (turns in the TCP+TLS session's queue, flow-control windows; over QUIC only quinn's send buffer), by priority class",
            classes.wait.clone(),
        );
        Self {
            tunnel,
            classes,
            registry: Arc::new(root),
            records_rejected,
            dns_tcp_refused,
            sync_peers,
            handshakes,
            joins,
            hellos,
            leaf_not_after,
            servers_stopped,
            chain_rpc_calls,
            chain_block_height,
            cert_expiry,
            dns_queries,
            revoked_orgs,
            site_allocation_conflicts,
            replica_up,
            replica_dial_failures,
            ready: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts a DNS TCP connection closed on accept.
    pub fn dns_tcp_refused(&self, why: impl Label) {
        self.dns_tcp_refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
    }

    /// DNS TCP connections closed on accept for `why` so far.
    pub fn dns_tcp_refused_total(&self, why: impl Label) -> u64 {
        self.dns_tcp_refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .get()
    }

    /// Counts a handshake.
    pub fn handshake(&self, protocol: &'static str, result: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { protocol, result })
            .inc();
    }

    /// Handshakes counted so far for `protocol` and `result`.
    pub fn handshakes_total(&self, protocol: &'static str, result: &'static str) -> u64 {
        self.handshakes
            .get_or_create(&HandshakeLabels { protocol, result })
            .get()
    }

    /// Counts a join request outcome.
    pub fn join(&self, result: &'static str) {
        self.joins.get_or_create(&ResultLabels { result }).inc();
    }

    /// How many join requests reached the join service, whatever their outcome.
    pub fn join_requests_total(&self) -> u64 {
        let mut total = 0;
        for r in JOIN_RESULTS {
            total += self.joins.get_or_create(&ResultLabels { result: r }).get();
        }
        total
    }

    /// Counts a federation Hello from `org`.
    pub fn hello(&self, org: &str) {
        self.hellos
            .get_or_create(&OrgLabels {
                org: org.to_owned(),
            })
            .inc();
    }

    /// Counts a refused membership record.
    pub fn record_rejected(&self, reason: &'static str) {
        self.records_rejected
            .get_or_create(&ResultLabels { result: reason })
            .inc();
    }

    /// Counts one JSON-RPC call to a local chain node.
    pub fn chain_rpc_call(&self, method: &'static str, result: &'static str) {
        self.chain_rpc_calls
            .get_or_create(&RpcLabels { method, result })
            .inc();
    }

    /// JSON-RPC calls counted so far for `method` with `result`.
    pub fn chain_rpc_calls_total(&self, method: &'static str, result: &'static str) -> u64 {
        self.chain_rpc_calls
            .get_or_create(&RpcLabels { method, result })
            .get()
    }

    /// Records the chain height local node `node` reported.
    pub fn set_chain_block_height(&self, node: &str, height: u64) {
        self.chain_block_height
            .get_or_create(&NodeLabels {
                node: node.to_owned(),
            })
            .set(i64::try_from(height).unwrap_or(i64::MAX));
    }

    /// Sets whether the replica `replica` (its registered host) of `node` is held healthy.
    pub fn set_replica_up(&self, node: &str, replica: &str, up: bool) {
        self.replica_up
            .get_or_create(&ReplicaLabels {
                node: node.to_owned(),
                replica: replica.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts a failed connect to the replica `replica` of `node`.
    pub fn replica_dial_failed(&self, node: &str, replica: &str) {
        self.replica_dial_failures
            .get_or_create(&ReplicaLabels {
                node: node.to_owned(),
                replica: replica.to_owned(),
            })
            .inc();
    }

    /// Counts `n` allocation conflicts between replicas of this site
    /// (`fedgw_site_allocation_conflicts_total`).
    pub fn count_site_allocation_conflicts(&self, n: usize) {
        self.site_allocation_conflicts
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Sets the number of live sync streams.
    pub fn set_peers(&self, n: usize) {
        self.sync_peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records the current leaf's expiry (also as `cert_expiry_seconds{cert="gateway_leaf"}`).
    pub fn set_leaf_not_after(&self, unix: u64) {
        self.leaf_not_after
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
        self.set_cert_not_after("gateway_leaf", unix);
    }

    /// Records the expiry of certificate `cert` (`gateway_leaf`, `org_ca`, `root_ca`), Unix
    /// seconds.
    pub fn set_cert_not_after(&self, cert: &'static str, unix: u64) {
        self.cert_expiry
            .get_or_create(&CertLabels { cert })
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    /// Sets the number of revoked orgs.
    pub fn set_revoked_orgs(&self, n: usize) {
        self.revoked_orgs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a DNS query answered with `rcode`.
    pub fn dns_query(&self, rcode: hickory_proto::op::ResponseCode) {
        use hickory_proto::op::ResponseCode as R;
        let rcode = match rcode {
            R::NoError => "noerror",
            R::NXDomain => "nxdomain",
            R::Refused => "refused",
            R::FormErr => "formerr",
            R::NotImp => "notimp",
            R::ServFail => "servfail",
            _ => "other",
        };
        self.dns_queries.get_or_create(&RcodeLabels { rcode }).inc();
    }

    /// DNS queries counted with response code label `rcode` (tests).
    pub fn dns_queries_total(&self, rcode: &'static str) -> u64 {
        self.dns_queries.get_or_create(&RcodeLabels { rcode }).get()
    }

    /// Byte counters for a proxied connection with `peer_org` whose stream is of `class`.
    pub fn tunnel_counters(&self, peer_org: &str, class: impl Label) -> TunnelCounters {
        let c = |direction| {
            self.tunnel
                .bytes
                .get_or_create(&PeerDirectionLabels {
                    peer_org: peer_org.to_owned(),
                    direction,
                })
                .clone()
        };
        let labels = ClassLabels {
            class: class.label(),
        };
        TunnelCounters {
            tx: c("tx"),
            rx: c("rx"),
            class: ClassCounters {
                bytes: self.classes.bytes.get_or_create(&labels).clone(),
                wait: self.classes.wait.get_or_create(&labels).clone(),
                waits: self.classes.waits(labels.class),
            },
        }
    }

    /// What `class`'s writes into tunnels amount to so far.
    pub fn tunnel_class_totals(&self, class: impl Label) -> ClassTotals {
        let labels = ClassLabels {
            class: class.label(),
        };
        let w = self.classes.waits(labels.class);
        ClassTotals {
            bytes: self.classes.bytes.get_or_create(&labels).get(),
            writes: w.writes.load(Ordering::Relaxed),
            wait_sum_us: w.sum_us.load(Ordering::Relaxed),
            max_wait_us: w.max_us.load(Ordering::Relaxed),
        }
    }

    /// Counts a proxied connection (`outbound` or `inbound`).
    pub fn tunnel_connection(&self, peer_org: &str, direction: &'static str) {
        self.tunnel
            .connections
            .get_or_create(&PeerDirectionLabels {
                peer_org: peer_org.to_owned(),
                direction,
            })
            .inc();
    }

    /// Proxied connections with `peer_org` so far, in `direction`.
    pub fn tunnel_connections_total(&self, peer_org: &str, direction: &'static str) -> u64 {
        self.tunnel
            .connections
            .get_or_create(&PeerDirectionLabels {
                peer_org: peer_org.to_owned(),
                direction,
            })
            .get()
    }

    /// Marks a proxied connection active until the guard drops.
    pub fn tunnel_stream_guard(&self) -> ActiveStream {
        self.tunnel.active_streams.inc();
        ActiveStream(self.tunnel.active_streams.clone())
    }

    /// Proxied connections open now.
    pub fn tunnel_active_streams(&self) -> i64 {
        self.tunnel.active_streams.get()
    }

    /// Records the path of the QUIC link to `peer` (labels `peer="org/site"` and `replica`,
    /// empty for a site's first gateway): smoothed RTT, path MTU (UDP payload bytes) and the
    /// packets declared lost since the last call.
    pub fn tunnel_quic_path(
        &self,
        peer: &fedgw_certs::ids::GatewayId,
        rtt: std::time::Duration,
        path_mtu: u16,
        newly_lost: u64,
    ) {
        let labels = PeerLabels {
            peer: peer.site_id().to_string(),
            replica: peer.replica.clone(),
        };
        self.tunnel
            .rtt
            .get_or_create(&labels)
            .set(rtt.as_secs_f64());
        self.tunnel
            .path_mtu
            .get_or_create(&labels)
            .set(i64::from(path_mtu));
        self.tunnel
            .lost_packets
            .get_or_create(&labels)
            .inc_by(newly_lost);
    }

    /// Counts a proxied connection reset for a stalled reader at `end` (`near` or `far`).
    pub fn tunnel_stalled(&self, end: &'static str) {
        self.tunnel.stalled.get_or_create(&EndLabels { end }).inc();
    }

    /// Proxied connections reset so far for a stalled reader at `end`.
    pub fn tunnel_stalled_total(&self, end: &'static str) -> u64 {
        self.tunnel.stalled.get_or_create(&EndLabels { end }).get()
    }

    /// Counts a stream this gateway refused.
    pub fn tunnel_refused(&self, answer: impl Label) {
        self.tunnel_refused_label(answer.label());
    }

    /// Counts a stream or local connection this gateway refused for `reason`, a tunnel
    /// answer's label or a near-end reason such as `source_not_allowed`.
    pub fn tunnel_refused_label(&self, reason: &'static str) {
        self.tunnel
            .refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Streams this gateway refused for `answer`.
    pub fn tunnel_refused_total(&self, answer: impl Label) -> u64 {
        self.tunnel_refused_label_total(answer.label())
    }

    /// Streams and local connections this gateway refused for `reason`.
    pub fn tunnel_refused_label_total(&self, reason: &'static str) -> u64 {
        self.tunnel
            .refused
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// Counts a stream a peer refused.
    pub fn tunnel_refused_by_peer(&self, answer: impl Label) {
        self.tunnel
            .refused_by_peer
            .get_or_create(&ReasonLabels {
                reason: answer.label(),
            })
            .inc();
    }

    /// Counts a local connection for which no tunnel could be opened.
    pub fn tunnel_open_failed(&self) {
        self.tunnel
            .refused_by_peer
            .get_or_create(&ReasonLabels {
                reason: "no_tunnel",
            })
            .inc();
    }

    /// Adds `delta` to the live links of `transport`.
    pub fn tunnel_link(&self, transport: &'static str, delta: i64) {
        self.tunnel
            .links
            .get_or_create(&TransportLabels { transport })
            .inc_by(delta);
    }

    /// Live links of `transport` (`quic` or `tcp`), those draining or retired included.
    pub fn tunnel_links(&self, transport: &'static str) -> i64 {
        self.tunnel
            .links
            .get_or_create(&TransportLabels { transport })
            .get()
    }

    /// Sets the number of local listeners.
    pub fn tunnel_listeners(&self, n: usize) {
        self.tunnel
            .listeners
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Marks the gateway ready (irreversible, but see [`Metrics::server_stopped`]).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Counts a server of the gateway (`what`: `dns`, `admin`, `federation`, ...) that stopped
    /// before shutdown, and clears readiness for good: the process lives on but no longer
    /// serves what it was started for, and an orchestrator should replace it.
    pub fn server_stopped(&self, what: &'static str) {
        self.servers_stopped
            .get_or_create(&ServerLabels { server: what })
            .inc();
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200: marked ready and no server stopped.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire)
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Every `result` label value `join` is called with.
pub const JOIN_RESULTS: [&str; 10] = [
    "admitted",
    "pending",
    "unknown_token",
    "bad_proof",
    "expired",
    "used",
    "wrong_org",
    "already_member",
    "bad_request",
    "rate_limited",
];

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Metrics>) -> StatusCode {
    if m.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, metrics, None, shutdown).await
}

/// As [`serve`], with `extra` routes (the web console) served beside them.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    extra: Option<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let app = match extra {
        Some(extra) => app.merge(extra),
        None => app,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
