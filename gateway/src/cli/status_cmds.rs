//! `fedgw status`: the running gateway's peers, tunnels, listeners and stream counters, over
//! its admin socket.

use fedgw_proto::v1 as pb;

use super::admin_conn::connect;
use super::{AdminDirArg, CliError, json};

/// `org/site`, or `org/site/replica` for a site's further gateways.
fn gateway_name(org: &str, site: &str, replica: &str) -> String {
    if replica.is_empty() {
        format!("{org}/{site}")
    } else {
        format!("{org}/{site}/{replica}")
    }
}

/// `fedgw status`.
pub async fn status(dir: AdminDirArg, json: bool) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    let s = admin_call!(admin, status(pb::StatusRequest {}));
    if json {
        let peers: Vec<_> = s
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "org": p.org, "site": p.site, "replica": p.replica,
                    "sibling": p.org == s.org && p.site == s.site,
                    "state": p.state, "direction": p.direction,
                    "last_seen_unix_ms": json::number(p.last_seen_unix_ms),
                    "last_error": json::text(&p.last_error),
                    "connected_since_unix_ms": json::number(p.connected_since_unix_ms),
                    "records_in": p.records_in, "records_out": p.records_out,
                    "advertise": advertised_json(&p.advertise),
                })
            })
            .collect();
        let tunnels: Vec<_> = s
            .tunnels
            .iter()
            .map(|t| {
                serde_json::json!({
                    "org": t.org, "site": t.site, "replica": t.replica, "in_use": t.in_use,
                    "transport": t.transport, "rtt_ms": t.rtt_ms,
                    "path_mtu": t.path_mtu, "lost_packets": t.lost_packets,
                    "quic_failed_at_unix_ms": json::number(t.quic_failed_at_unix_ms),
                    "quic_retry_at_unix_ms": json::number(t.quic_retry_at_unix_ms),
                })
            })
            .collect();
        let v = serde_json::json!({
            "org": s.org, "site": s.site, "replica": s.replica, "digest": s.digest, "records": s.records,
            "rejected_records": s.rejected_records, "equivocations": s.equivocations, "peers": peers,
            "tunnels": tunnels, "listeners": s.listeners, "listener_failures": s.listener_failures,
            "active_streams": s.active_streams, "refused_streams": s.refused_streams,
            "stalled_connections": s.stalled_connections,
            "advertise": advertised_json(&s.advertise),
            "classes": s.classes.iter().map(|c| serde_json::json!({
                "class": c.class, "bytes": c.bytes, "writes": c.writes,
                "wait_sum_us": c.wait_sum_us, "max_wait_us": c.max_wait_us,
            })).collect::<Vec<_>>(),
            "replicas": s.replicas.iter().map(|n| serde_json::json!({
                "node": n.node,
                "replicas": n.replicas.iter().map(|r| serde_json::json!({"host": r.host, "up": r.up})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        outln!("{v}")?;
        return Ok(());
    }
    outln!(
        "gateway {}: {} records, digest {}",
        gateway_name(&s.org, &s.site, &s.replica),
        s.records,
        &s.digest[..16.min(s.digest.len())]
    )?;
    outln!(
        "rejected records: {}, equivocations: {}",
        s.rejected_records,
        s.equivocations
    )?;
    if s.peers.iter().any(|p| p.state == "revoked") {
        outln!(
            "REVOKED: the consortium revoked org {}; its peers refuse this gateway",
            s.org
        )?;
    }
    for a in &s.advertise {
        outln!("advertised as {}", advertised_text(a))?;
    }
    outln!(
        "{:<16} {:<11} {:<9} {:>8} {:>8}  last error",
        "peer",
        "state",
        "direction",
        "in",
        "out"
    )?;
    for p in s.peers {
        outln!(
            "{:<16} {:<11} {:<9} {:>8} {:>8}  {}",
            format!(
                "{}{}",
                gateway_name(&p.org, &p.site, &p.replica),
                if p.org == s.org && p.site == s.site {
                    " (sibling)"
                } else {
                    ""
                }
            ),
            p.state,
            p.direction,
            p.records_in,
            p.records_out,
            if p.last_error.is_empty() {
                "-"
            } else {
                &p.last_error
            }
        )?;
        for a in p.advertise.iter().filter(|a| is_name(&a.endpoint)) {
            outln!("  {}", advertised_text(a))?;
        }
    }
    outln!(
        "\ndata plane: {} local listeners{}, {} proxied connections open",
        s.listeners,
        if s.listener_failures {
            " (some could not be bound; retrying)"
        } else {
            ""
        },
        s.active_streams
    )?;
    for n in &s.replicas {
        let each: Vec<String> = n
            .replicas
            .iter()
            .map(|r| format!("{} {}", r.host, if r.up { "up" } else { "down" }))
            .collect();
        outln!("node {} replicas: {}", n.node, each.join(", "))?;
    }
    outln!(
        "{:<16} {:<9} {:>10} {:>8} {:>8}",
        "tunnel to",
        "transport",
        "rtt",
        "mtu",
        "lost"
    )?;
    for t in &s.tunnels {
        let (rtt, mtu, lost) = if t.transport == "quic" {
            (
                format!("{:.2} ms", t.rtt_ms),
                t.path_mtu.to_string(),
                t.lost_packets.to_string(),
            )
        } else {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        };
        outln!(
            "{:<16} {:<9} {:>10} {:>8} {:>8}{}",
            format!("{}/{}", t.org, t.site),
            t.transport,
            rtt,
            mtu,
            lost,
            quic_retry_note(t, unix_now_ms())
        )?;
    }
    if s.classes.iter().any(|c| c.writes > 0) {
        println!(
            "{:<16} {:>12} {:>10} {:>12} {:>12}",
            "class", "sent", "writes", "mean wait", "max wait"
        );
        for c in &s.classes {
            println!(
                "{:<16} {:>12} {:>10} {:>12} {:>12}",
                c.class,
                human_bytes(c.bytes),
                c.writes,
                format!(
                    "{:.2} ms",
                    c.wait_sum_us as f64 / c.writes.max(1) as f64 / 1e3
                ),
                format!("{:.2} ms", c.max_wait_us as f64 / 1e3),
            );
        }
    }
    for (title, counts) in [
        ("refused streams", &s.refused_streams),
        (
            "connections reset for a stalled reader",
            &s.stalled_connections,
        ),
    ] {
        if !counts.is_empty() {
            outln!("{title}: {}", sorted_counts(counts))?;
        }
    }
    Ok(())
}

/// Why a `tcp` link is not on QUIC, for the end of its row: `  QUIC failed 41 s ago, next try
/// in 19 s`; empty for other links.
fn quic_retry_note(t: &pb::TunnelStatus, now_ms: i64) -> String {
    if t.quic_failed_at_unix_ms == 0 {
        return String::new();
    }
    let failed = now_ms.saturating_sub(t.quic_failed_at_unix_ms).max(0) / 1000;
    let retry = t.quic_retry_at_unix_ms.saturating_sub(now_ms);
    if retry > 0 {
        // rounded up: "in 0 s" would read as now
        format!(
            "  QUIC failed {failed} s ago, next try in {} s",
            retry.saturating_add(999) / 1000
        )
    } else {
        format!("  QUIC failed {failed} s ago, trying again now")
    }
}

/// The wall clock in Unix milliseconds.
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether an endpoint's host is a name (not an IP literal).
fn is_name(endpoint: &str) -> bool {
    crate::net::split_host_port(endpoint)
        .is_some_and(|(host, _)| host.parse::<std::net::IpAddr>().is_err())
}

/// `gw.org2.example:7443 -> 10.0.0.5, fd00::5`, `gw.org2.example:7443 -> not resolved: <why>`,
/// or the endpoint alone for an IP literal.
fn advertised_text(a: &pb::AdvertisedEndpoint) -> String {
    if !is_name(&a.endpoint) {
        return a.endpoint.clone();
    }
    if !a.error.is_empty() {
        return format!("{} -> not resolved: {}", a.endpoint, a.error);
    }
    if a.addresses.is_empty() {
        return format!("{} -> not resolved yet", a.endpoint);
    }
    format!("{} -> {}", a.endpoint, a.addresses.join(", "))
}

fn advertised_json(list: &[pb::AdvertisedEndpoint]) -> serde_json::Value {
    list.iter()
        .map(|a| {
            serde_json::json!({
                "endpoint": a.endpoint, "addresses": a.addresses,
                "resolved_unix_ms": json::number(a.resolved_unix_ms), "error": json::text(&a.error),
            })
        })
        .collect()
}

/// `n` bytes with a binary unit: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn human_bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    for unit in ["KiB", "MiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} GiB")
}

/// `counts` as `key n, key n` in key order: `{"b": 2, "a": 1}` → `a 1, b 2`.
fn sorted_counts(counts: &std::collections::HashMap<String, u64>) -> String {
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort();
    let shown: Vec<String> = sorted.iter().map(|(k, v)| format!("{k} {v}")).collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::{advertised_text, human_bytes, quic_retry_note, sorted_counts};
    use fedgw_proto::v1 as pb;

    #[test]
    fn advertised_names_show_what_they_resolved_to() {
        let a = |endpoint: &str, addresses: &[&str], error: &str| pb::AdvertisedEndpoint {
            endpoint: endpoint.into(),
            addresses: addresses.iter().map(|s| (*s).to_owned()).collect(),
            resolved_unix_ms: 1,
            error: error.into(),
        };
        assert_eq!(
            advertised_text(&a("gw.org2.example:7443", &["10.0.0.5", "fd00::5"], "")),
            "gw.org2.example:7443 -> 10.0.0.5, fd00::5"
        );
        assert_eq!(
            advertised_text(&a("gw.org2.example:7443", &[], "no record")),
            "gw.org2.example:7443 -> not resolved: no record"
        );
        assert_eq!(
            advertised_text(&a("gw.org2.example:7443", &[], "")),
            "gw.org2.example:7443 -> not resolved yet"
        );
        assert_eq!(
            advertised_text(&a("[fd00::5]:7443", &["fd00::5"], "")),
            "[fd00::5]:7443"
        );
    }

    #[test]
    fn a_tcp_link_dialled_after_quic_failed_says_when_quic_is_tried_again() {
        let now = 1_800_000_000_000;
        let link = |failed, retry| pb::TunnelStatus {
            transport: "tcp".into(),
            quic_failed_at_unix_ms: failed,
            quic_retry_at_unix_ms: retry,
            ..Default::default()
        };
        assert_eq!(
            quic_retry_note(&link(now - 41_500, now + 18_200), now),
            "  QUIC failed 41 s ago, next try in 19 s"
        );
        assert_eq!(
            quic_retry_note(&link(now - 60_000, now - 10), now),
            "  QUIC failed 60 s ago, trying again now"
        );
        // the clock stepped back since the failure: no negative ages
        assert_eq!(
            quic_retry_note(&link(now + 500, now + 30_000), now),
            "  QUIC failed 0 s ago, next try in 30 s"
        );
        assert_eq!(quic_retry_note(&link(0, 0), now), "");
    }

    #[test]
    fn byte_counts_take_a_binary_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(100 << 20), "100.0 MiB");
        assert_eq!(human_bytes(5 << 40), "5120.0 GiB");
    }

    #[test]
    fn counts_show_in_key_order() {
        let counts = [("unknown_node", 2), ("bad_header", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(sorted_counts(&counts), "bad_header 3, unknown_node 2");
        assert_eq!(sorted_counts(&Default::default()), "");
    }
}
