use fedgw_proto::v1 as pb;

use super::*;

fn member(org: &str, status: &str, sites: &[(&str, bool)]) -> pb::MemberInfo {
    pb::MemberInfo {
        org: org.into(),
        status: status.into(),
        admitted_unix: if status == "active" { 1_700_000_000 } else { 0 },
        gateways: sites
            .iter()
            .map(|(site, outbound_only)| pb::GatewayInfo {
                site: (*site).into(),
                advertise: vec![format!("gw.{org}.test:7443")],
                outbound_only: *outbound_only,
                replica: String::new(),
                replica_index: 0,
            })
            .collect(),
        approved_by: vec![],
        fabric_msp_id: String::new(),
    }
}

/// org1/dc1 (here), org2/dc1, org3/dc1 and org3/nat (outbound only), org4 revoked, org5
/// pending with one vote; a QUIC link to org2, a sync stream only to org3/dc1.
fn sample() -> (pb::StatusResponse, pb::ListMembersResponse) {
    let members = pb::ListMembersResponse {
        members: vec![
            member("org1", "active", &[("dc1", false)]),
            member("org2", "active", &[("dc1", false)]),
            member("org3", "active", &[("dc1", false), ("nat", true)]),
            member("org4", "revoked", &[]),
        ],
        pending: vec![pb::MemberInfo {
            approved_by: vec!["org1".into()],
            ..member("org5", "pending", &[])
        }],
        consensus: "raft".into(),
    };
    let peer = |org: &str, site: &str, state: &str| pb::PeerStatus {
        org: org.into(),
        site: site.into(),
        state: state.into(),
        ..Default::default()
    };
    let status = pb::StatusResponse {
        org: "org1".into(),
        site: "dc1".into(),
        digest: "ab".into(),
        records: 9,
        peers: vec![
            peer("org2", "dc1", "connected"),
            peer("org3", "dc1", "connected"),
            peer("org3", "nat", "backoff"),
        ],
        tunnels: vec![pb::TunnelStatus {
            org: "org2".into(),
            site: "dc1".into(),
            transport: "quic".into(),
            rtt_ms: 1.25,
            ..Default::default()
        }],
        ..Default::default()
    };
    (status, members)
}

#[test]
fn the_topology_has_one_link_per_pair_of_active_sites_with_its_state_here() {
    let (status, members) = sample();
    let t = topology(&status, &members);
    let pairs: Vec<(&str, &str, LinkState)> = t
        .links
        .iter()
        .map(|l| (l.a.as_str(), l.b.as_str(), l.state))
        .collect();
    assert_eq!(
        pairs,
        [
            ("org1/dc1", "org2/dc1", LinkState::Up),
            ("org1/dc1", "org3/dc1", LinkState::Idle),
            ("org1/dc1", "org3/nat", LinkState::Down),
            ("org2/dc1", "org3/dc1", LinkState::Unknown),
            ("org2/dc1", "org3/nat", LinkState::Unknown),
            ("org3/dc1", "org3/nat", LinkState::Unknown),
        ]
    );
    assert_eq!(t.links[0].transport.as_deref(), Some("quic"));
    assert_eq!(t.links[0].rtt_ms, Some(1.25));
    assert_eq!(t.links[1].transport, None);
    assert_eq!(t.links[1].sync.as_deref(), Some("connected"));
    assert_eq!(t.links[3].sync, None);
    assert!(t.orgs[0].sites[0].here);
    assert!(t.orgs[2].sites[1].outbound_only);
    assert_eq!(t.orgs[3].status, "revoked");
    // unset values are null in the JSON
    let json = serde_json::to_value(&t).expect("json");
    assert_eq!(json["links"][1]["rtt_ms"], serde_json::Value::Null);
    assert_eq!(json["links"][1]["state"], "idle");
}

#[test]
fn two_outbound_only_sites_have_no_link() {
    let (status, mut members) = sample();
    members.members[1].gateways[0].outbound_only = true;
    members.members[2].gateways.remove(0);
    let t = topology(&status, &members);
    let l = t
        .links
        .iter()
        .find(|l| l.a == "org2/dc1" && l.b == "org3/nat")
        .expect("link");
    assert_eq!(l.state, LinkState::None);
}

#[test]
fn members_split_active_pending_and_revoked() {
    let (_, list) = sample();
    let m = members(&list);
    assert_eq!(
        m.members.iter().map(|m| m.org.as_str()).collect::<Vec<_>>(),
        ["org1", "org2", "org3"]
    );
    assert_eq!(m.members[0].admitted_unix, Some(1_700_000_000));
    assert_eq!(m.pending.len(), 1);
    assert_eq!(m.pending[0].votes, ["org1"]);
    assert_eq!(m.revoked, ["org4"]);
    assert_eq!(m.consensus, "raft");
}

fn node(org: &str, name: &str, site: &str, local_ip: &str) -> pb::NodeInfo {
    pb::NodeInfo {
        org: org.into(),
        name: name.into(),
        dns_name: format!("{name}.{org}.acme.test"),
        local_ip: local_ip.into(),
        local_ports: [("p2p".to_owned(), 30303)].into_iter().collect(),
        record: Some(pb::NodeRecord {
            client: pb::ClientKind::Besu.into(),
            p2p_port: 30303,
            site: site.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn nodes_show_reachability_from_this_site() {
    let (status, _) = sample();
    let list = pb::ListNodesResponse {
        nodes: vec![
            node("org3", "n3", "nat", "127.77.0.3"),
            node("org2", "n2", "dc1", "127.77.0.2"),
            node("org3", "n4", "dc1", "127.77.0.4"),
            node("org2", "n5", "dc1", ""),
            node("org1", "n1", "dc1", "10.0.0.1"),
        ],
    };
    let n = nodes(&list, &status);
    let got: Vec<(&str, Reachability)> = n
        .nodes
        .iter()
        .map(|r| (r.name.as_str(), r.reachability))
        .collect();
    assert_eq!(
        got,
        [
            ("n1", Reachability::Local),
            ("n2", Reachability::Up),
            ("n5", Reachability::NoAddress),
            ("n3", Reachability::Down),
            ("n4", Reachability::OnDemand),
        ]
    );
    let json = serde_json::to_value(&n).expect("json");
    assert_eq!(json["nodes"][0]["client"], "besu");
    assert_eq!(json["nodes"][2]["local_address"], serde_json::Value::Null);
    assert_eq!(json["nodes"][1]["reachability"], "up");
    assert_eq!(json["nodes"][4]["reachability"], "on_demand");
}
