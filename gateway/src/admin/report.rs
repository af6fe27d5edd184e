//! The admin status report: membership peers, tunnels, listeners and stream counters, and the
//! addresses this gateway's advertised names resolve to.

use std::time::{Duration, SystemTime};

use fedgw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::service::AdminService;
use crate::membership::Membership;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bound on resolving this gateway's own advertised names for a status report.
const OWN_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// An advertised endpoint with the addresses its host last resolved to
/// ([`crate::net::last_resolution`]); an IP literal is its own address.
pub(super) fn advertised(endpoint: &str) -> pb::AdvertisedEndpoint {
    let mut out = pb::AdvertisedEndpoint {
        endpoint: endpoint.to_owned(),
        ..Default::default()
    };
    let Some((host, _)) = crate::net::split_host_port(endpoint) else {
        return out;
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        out.addresses = vec![ip.to_string()];
    } else if let Some(r) = crate::net::last_resolution(host) {
        out.addresses = r.addrs.iter().map(|ip| ip.to_string()).collect();
        out.resolved_unix_ms = r.at_unix_ms;
        out.error = r.error;
    }
    out
}

/// The status report of a gateway; its own `advertise` is left to the caller, which holds it.
pub(super) fn status_of(
    m: &Membership,
    tunnels: &crate::tunnel::Tunnels,
    metrics: &crate::metrics::Metrics,
) -> pb::StatusResponse {
    let (digest, records) = m.read(|v| (hex(&v.digest()), v.len() as u64));
    // each peer's endpoints: from the view, or from the bootstrap list for a peer not in it yet
    let mut endpoints: std::collections::HashMap<crate::membership::GatewayId, Vec<String>> =
        m.dial_targets().into_iter().collect();
    endpoints.extend(
        m.read(|v| v.gateways())
            .into_iter()
            .map(|(id, g)| (id, g.advertise)),
    );
    let peers = m
        .peer_reports()
        .into_iter()
        .map(|p| pb::PeerStatus {
            advertise: endpoints
                .get(&p.id)
                .map(|e| e.iter().map(|e| advertised(e)).collect())
                .unwrap_or_default(),
            org: p.id.org,
            site: p.id.site,
            replica: p.id.replica,
            state: p.state.to_owned(),
            direction: p.direction.to_owned(),
            last_seen_unix_ms: p.last_seen_ms,
            connected_since_unix_ms: p.since_ms,
            last_error: p.last_error,
            records_in: p.records_in,
            records_out: p.records_out,
        })
        .collect();
    pb::StatusResponse {
        org: m.me().org.clone(),
        site: m.me().site.clone(),
        replica: m.me().replica.clone(),
        digest,
        records,
        peers,
        rejected_records: m.rejected_total(),
        equivocations: m.equivocations_total(),
        tunnels: tunnels
            .links()
            .into_iter()
            .map(|l| pb::TunnelStatus {
                in_use: l.in_use,
                org: l.peer.org,
                site: l.peer.site,
                replica: l.peer.replica,
                transport: l.transport.to_owned(),
                rtt_ms: l.quic.map_or(0.0, |p| p.rtt.as_secs_f64() * 1000.0),
                path_mtu: l.quic.map_or(0, |p| u32::from(p.current_mtu)),
                lost_packets: l.quic.map_or(0, |p| p.lost_packets),
                quic_failed_at_unix_ms: l.quic_failed.map_or(0, |f| unix_ms(f.at)),
                quic_retry_at_unix_ms: l.quic_failed.map_or(0, |f| unix_ms(f.retry_at)),
            })
            .collect(),
        listeners: u32::try_from(tunnels.listening().len()).unwrap_or(u32::MAX),
        listener_failures: tunnels.listener_failures(),
        active_streams: u64::try_from(metrics.tunnel_active_streams()).unwrap_or(0),
        refused_streams: crate::tunnel::refusal_reasons()
            .map(|label| (label.to_owned(), metrics.tunnel_refused_label_total(label)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        stalled_connections: ["near", "far"]
            .into_iter()
            .map(|end| (end.to_owned(), metrics.tunnel_stalled_total(end)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        classes: crate::tunnel::class::Class::ALL
            .into_iter()
            .map(|class| {
                let t = metrics.tunnel_class_totals(class);
                pb::ClassStatus {
                    class: class.label().to_owned(),
                    bytes: t.bytes,
                    writes: t.writes,
                    wait_sum_us: t.wait_sum_us,
                    max_wait_us: t.max_wait_us,
                }
            })
            .collect(),
        advertise: vec![],
        replicas: tunnels
            .replica_status()
            .into_iter()
            .map(|(node, hosts)| pb::NodeReplicas {
                node,
                replicas: hosts
                    .into_iter()
                    .map(|(host, up)| pb::ReplicaInfo { host, up })
                    .collect(),
            })
            .collect(),
    }
}

/// `t` as Unix milliseconds (0 before 1970).
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `Status`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn status(
    svc: &AdminService,
    _request: Request<pb::StatusRequest>,
) -> Result<Response<pb::StatusResponse>, Status> {
    // this gateway never dials its own names: resolve them now, as a peer would
    let own = async {
        for endpoint in &svc.advertise {
            let _ = crate::net::resolve(endpoint).await;
        }
    };
    let _ = tokio::time::timeout(OWN_RESOLVE_TIMEOUT, own).await;
    let mut status = status_of(&svc.membership, &svc.tunnels, &svc.metrics);
    status.advertise = svc.advertise.iter().map(|e| advertised(e)).collect();
    Ok(Response::new(status))
}
