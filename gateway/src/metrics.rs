//! Prometheus metrics and the health endpoints, served on the metrics address (default
//! 127.0.0.1:9464): `/metrics` (OpenMetrics text), `/livez` (200 while the process serves),
//! `/readyz` (200 once every listener is bound; a latch).
//!
//! Labels stay low-cardinality: protocol, result, org. Never a socket address or a token id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// The gateway's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    handshakes: Family<HandshakeLabels, Counter>,
    joins: Family<ResultLabels, Counter>,
    hellos: Family<OrgLabels, Counter>,
    leaf_not_after: Gauge,
    records_rejected: Family<ResultLabels, Counter>,
    sync_peers: Gauge,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fedgw");
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
        let sync_peers = Gauge::default();
        registry.register(
            "sync_peers",
            "Gateways with a live membership sync stream",
            sync_peers.clone(),
        );
        Self {
            registry: Arc::new(registry),
            records_rejected,
            sync_peers,
            handshakes,
            joins,
            hellos,
            leaf_not_after,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts a handshake.
    pub fn handshake(&self, protocol: &'static str, result: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { protocol, result })
            .inc();
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

    /// Sets the number of live sync peers.
    pub fn set_peers(&self, n: usize) {
        self.sync_peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records the current leaf's expiry.
    pub fn set_leaf_not_after(&self, unix: u64) {
        self.leaf_not_after
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    /// Marks the gateway ready (irreversible).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
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
    if m.ready.load(Ordering::Acquire) {
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
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
