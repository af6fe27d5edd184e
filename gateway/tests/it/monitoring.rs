//! The monitoring assets in `deploy/monitoring/`: every metric the alert rules and the Grafana
//! dashboard name is served by a running gateway, and `promtool check rules` accepts the rules.
//!
//! A labelled family appears in a scrape only once it has a series (prometheus-client writes
//! nothing for an empty family), and an idle gateway has no tunnel traffic, chain RPC or
//! refusals: those names are taken from the same registry with one sample recorded in each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::procs::{NET, fedgw, s};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// Every `fedgw_…` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fedgw_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The sample names a scrape offers: each `# TYPE` family with the suffixes of its type.
fn served(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

#[test]
fn assets_name_only_metrics_a_gateway_serves() {
    let rules = std::fs::read_to_string(assets().join("alerts.yml")).expect("alerts.yml");
    let dashboard =
        std::fs::read_to_string(assets().join("grafana-dashboard.json")).expect("dashboard");
    // both parse, and the dashboard's queries are what is checked
    let rules_doc: serde_yaml::Value = serde_yaml::from_str(&rules).expect("alerts.yml is YAML");
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 9, "{exprs:?}");
    let rule_exprs: Vec<String> = rules_doc["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect();
    let named: BTreeSet<String> = names_in(&exprs.join("\n"))
        .into_iter()
        .chain(names_in(&rule_exprs.join("\n")))
        .collect();
    for expected in [
        "fedgw_cert_expiry_seconds",
        "fedgw_dns_queries_total",
        "fedgw_tunnel_refused_streams_total",
        "fedgw_revoked_orgs",
        "fedgw_chain_block_height",
    ] {
        assert!(named.contains(expected), "{expected} not used: {named:?}");
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("org1");
    let d = s(&dir);
    let mut args = vec!["init", "--consortium", "acme", "--domain", "acme.test"];
    args.extend(["--org", "org1", "--data-dir", &d]);
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    let gw = fedgw().start(&dir).expect("start");
    let (code, scrape) = fedgw_tests::http_get(&gw.metrics(), "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let mut served = served(&scrape);
    served.extend(self::served(&one_sample_each().encode()));
    let missing: Vec<&String> = named.iter().filter(|n| !served.contains(*n)).collect();
    assert!(missing.is_empty(), "not served: {missing:?}\n{scrape}");
    // the certificate gauge carries one series per certificate
    for cert in ["gateway_leaf", "org_ca", "root_ca"] {
        assert!(
            scrape.contains(&format!("fedgw_cert_expiry_seconds{{cert=\"{cert}\"}}")),
            "{cert}: {scrape}"
        );
    }
}

/// A label value for the families keyed by a module's own type.
#[derive(Clone, Copy)]
struct Sample;

impl fedgw_gateway::metrics::Label for Sample {
    fn label(self) -> &'static str {
        "sample"
    }
}

/// The gateway's metrics with one series in every labelled family.
fn one_sample_each() -> fedgw_gateway::metrics::Metrics {
    let m = fedgw_gateway::metrics::Metrics::new();
    m.dns_tcp_refused(Sample);
    m.dns_query(hickory_proto::op::ResponseCode::NoError);
    m.chain_rpc_call("eth_blockNumber", "ok");
    m.set_chain_block_height("node1", 1);
    m.tunnel_counters("org2", Sample).tx.inc();
    m.tunnel_quic_path(
        &fedgw_gateway::membership::GatewayId::replica("org2", "dc1", "r2"),
        std::time::Duration::from_millis(1),
        1200,
        0,
    );
    m.tunnel_refused(Sample);
    m.tunnel_refused_by_peer(Sample);
    m.tunnel_link("quic", 1);
    m.tunnel_connection("org2", "outbound");
    m
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(assets().join("alerts.yml"))
        .output()
    else {
        println!(
            "skipped: promtool is not installed (scripts/test installs the prometheus package)"
        );
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
