use std::collections::BTreeMap;

use super::*;
use crate::addressing::{AddressMode, Need};
use crate::membership::Node;

fn me() -> GatewayId {
    GatewayId::new("org1", "dc1")
}

fn node(org: &str, name: &str, site: &str, p2p: u32, raft: u32) -> NodeView {
    NodeView {
        org: org.into(),
        name: name.into(),
        seq: 1,
        node: Node::try_from(&pb::NodeRecord {
            client: pb::ClientKind::Goquorum.into(),
            site: site.into(),
            enode_id: vec![0xab; 64],
            p2p_port: p2p,
            raft_port: raft,
            ..Default::default()
        })
        .expect("a valid node record"),
    }
}

fn allocations(nodes: &[&NodeView]) -> Allocations {
    let mut a = Allocations::default();
    let needs: Vec<Need> = nodes
        .iter()
        .map(|n| Need {
            node: n.key().to_string(),
            ports: n.node.ports(),
        })
        .collect();
    assert!(a.sync(&AddressMode::default(), &needs).is_empty());
    a
}

fn site(local: &[(&str, &str)], services: &[(&str, &str)]) -> SiteState {
    SiteState {
        local: local
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        services: services
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.parse().expect("ip")))
            .collect(),
        short_hosts: Default::default(),
        replicas: Default::default(),
    }
}

/// A plan of `nodes`, set one by one, and what that changed.
fn built(inputs: Inputs<'_>, nodes: &[&NodeView]) -> (Plan, Delta) {
    let mut plan = Plan::default();
    let mut delta = Delta::default();
    for n in nodes {
        plan.set_node(n.key(), Some(project_node(inputs, n)), &mut delta);
    }
    (plan, delta)
}

fn addrs(routes: &[Route]) -> Vec<String> {
    routes.iter().map(|r| r.addr.to_string()).collect()
}

#[test]
fn this_sites_node_is_served_at_its_real_host_and_reachable_by_tunnel() {
    let me = me();
    let n = node("org1", "node1", "dc1", 30303, 50400);
    let state = site(&[("node1", "10.0.0.1")], &[]);
    let alloc = Allocations::default();
    let p = project_node(
        Inputs {
            me: &me,
            site: &state,
            alloc: &alloc,
        },
        &n,
    );
    assert_eq!(p.zone.ip, Some("10.0.0.1".parse().expect("ip")));
    assert_eq!(p.zone.alias, None);
    assert_eq!(p.zone.ports["raft"], 50400);
    let target = p.target.expect("a far-end target");
    assert_eq!(target.host, "10.0.0.1");
    assert!(target.replicas.is_empty());
    assert!(p.routes.is_empty(), "no listener for an own node");

    // a node with replicas: DNS names its first address, the far end gets them all
    let mut with_replicas = state.clone();
    with_replicas
        .replicas
        .insert("node1".into(), vec!["10.0.0.2".into(), "tm-b".into()]);
    let p = project_node(
        Inputs {
            me: &me,
            site: &with_replicas,
            alloc: &alloc,
        },
        &n,
    );
    assert_eq!(p.zone.ip, Some("10.0.0.1".parse().expect("ip")));
    let target = p.target.expect("a far-end target");
    assert_eq!(target.hosts(), ["10.0.0.1", "10.0.0.2", "tm-b"]);

    // a host name becomes a CNAME; a node of this org at another site is no target here
    let state = site(&[("node1", "quorum.ns.svc")], &[]);
    let inputs = Inputs {
        me: &me,
        site: &state,
        alloc: &alloc,
    };
    let p = project_node(inputs, &n);
    assert_eq!(
        (p.zone.ip, p.zone.alias.as_deref()),
        (None, Some("quorum.ns.svc"))
    );
    let elsewhere = node("org1", "node1", "dc2", 30303, 0);
    assert!(project_node(inputs, &elsewhere).target.is_none());
    // no registered host: the name only
    let unknown = node("org1", "node9", "dc1", 30303, 0);
    let p = project_node(inputs, &unknown);
    assert_eq!((p.zone.ip, p.target.is_none()), (None, true));
}

#[test]
fn a_remote_node_gets_its_local_address_and_a_route_per_port() {
    let me = me();
    let n = node("org2", "node1", "dc9", 30303, 50400);
    let alloc = allocations(&[&n]);
    let state = SiteState::default();
    let p = project_node(
        Inputs {
            me: &me,
            site: &state,
            alloc: &alloc,
        },
        &n,
    );
    assert_eq!(p.zone.ip, Some("127.77.0.1".parse().expect("ip")));
    assert_eq!(addrs(&p.routes), ["127.77.0.1:30303", "127.77.0.1:50400"]);
    assert!(
        p.routes
            .iter()
            .all(|r| r.site.site == "dc9" && r.site.org == "org2")
    );
    assert!(p.target.is_none());

    // a Service address replaces the local address in DNS, with the real ports; the
    // listeners stay on the local address
    let state = site(&[], &[("org2/node1", "10.96.0.9")]);
    let p = project_node(
        Inputs {
            me: &me,
            site: &state,
            alloc: &alloc,
        },
        &n,
    );
    assert_eq!(p.zone.ip, Some("10.96.0.9".parse().expect("ip")));
    assert_eq!(addrs(&p.routes), ["127.77.0.1:30303", "127.77.0.1:50400"]);

    // no address yet: the name only, no route
    let none = Allocations::default();
    let p = project_node(
        Inputs {
            me: &me,
            site: &SiteState::default(),
            alloc: &none,
        },
        &n,
    );
    assert_eq!((p.zone.ip, p.routes.len()), (None, 0));
}

#[test]
fn a_node_too_long_for_a_header_gets_no_route_and_says_why() {
    let me = me();
    let n = node("org2", &"n".repeat(300), "dc9", 30303, 0);
    let alloc = allocations(&[&n]);
    let p = project_node(
        Inputs {
            me: &me,
            site: &SiteState::default(),
            alloc: &alloc,
        },
        &n,
    );
    assert!(p.routes.is_empty());
    assert_eq!(p.bad_routes.len(), 1);
}

/// The routes and zone entries a plan holds, as text, to compare plans.
fn served(plan: &Plan) -> (Vec<String>, Vec<String>, Targets) {
    let zone = plan
        .node_ids()
        .map(|id| format!("{:?}", plan.node(id).map(|p| &p.zone)))
        .collect();
    let mut routes: Vec<String> = plan
        .routes()
        .map(|r| format!("{} {:?}", r.addr, r.request))
        .collect();
    routes.sort();
    (zone, routes, plan.targets("org1"))
}

#[test]
fn one_change_yields_just_its_delta_and_applying_deltas_equals_a_rebuild() {
    let me = me();
    let own = node("org1", "tm1", "dc1", 30303, 0);
    let remote: Vec<NodeView> = (1..=5)
        .map(|i| node("org2", &format!("node{i}"), "dc9", 30303, 50400))
        .collect();
    let mut all: Vec<&NodeView> = remote.iter().collect();
    all.push(&own);
    let alloc = allocations(&remote.iter().collect::<Vec<_>>());
    let state = site(&[("tm1", "10.0.0.1")], &[]);
    let inputs = Inputs {
        me: &me,
        site: &state,
        alloc: &alloc,
    };

    let (mut plan, delta) = built(inputs, &all);
    assert_eq!(delta.zone.len(), 6);
    assert_eq!(delta.routes.added.len(), 10);
    assert!(delta.targets);

    // the same node again changes nothing
    let mut delta = Delta::default();
    let n = &remote[2];
    plan.set_node(n.key(), Some(project_node(inputs, n)), &mut delta);
    assert!(delta.is_empty(), "{delta:?}");

    // a remote node leaves: its name and its two listeners go, nothing else
    let mut delta = Delta::default();
    plan.set_node(remote[2].key(), None, &mut delta);
    assert_eq!(delta.zone.len(), 1);
    assert!(delta.zone[0].1.is_none());
    assert_eq!(
        delta.routes.removed,
        [
            "127.77.0.3:30303".parse::<SocketAddr>().expect("addr"),
            "127.77.0.3:50400".parse().expect("addr")
        ]
    );
    assert!(delta.routes.added.is_empty() && !delta.targets);

    // a remote node drops its raft port: one listener goes, one stays
    let mut changed = remote[0].clone();
    changed.node.raft_port = None;
    let mut alloc2 = alloc.clone();
    alloc2.update(
        &AddressMode::default(),
        &[Need {
            node: "org2/node1".into(),
            ports: changed.node.ports(),
        }],
        &["org2/node3".into()],
    );
    let inputs2 = Inputs {
        me: &me,
        site: &state,
        alloc: &alloc2,
    };
    let mut delta = Delta::default();
    plan.set_node(
        changed.key(),
        Some(project_node(inputs2, &changed)),
        &mut delta,
    );
    assert_eq!(
        delta.routes.removed,
        ["127.77.0.1:50400".parse::<SocketAddr>().expect("addr")]
    );
    assert!(delta.routes.added.is_empty());

    // this site's node leaves: the targets change
    let mut delta = Delta::default();
    plan.set_node(own.key(), None, &mut delta);
    assert!(delta.targets);
    assert!(plan.targets("org1").nodes.is_empty());

    // the plan built from scratch from the same inputs serves the same
    let mut rebuilt = Plan::default();
    let mut ignored = Delta::default();
    for n in [&changed, &remote[1], &remote[3], &remote[4]] {
        rebuilt.set_node(n.key(), Some(project_node(inputs2, n)), &mut ignored);
    }
    assert_eq!(served(&plan), served(&rebuilt));
}

#[test]
fn members_and_gateways_count_as_changes_only_when_they_change() {
    let mut plan = Plan::default();
    let mut delta = Delta::default();
    plan.set_members(["org1".to_owned(), "org2".to_owned()].into(), &mut delta);
    assert!(delta.targets);
    let gw = GatewayEntry {
        id: GatewayId::new("org2", "dc9"),
        record: pb::GatewayRecord {
            advertise: vec!["192.0.2.7:7443".into()],
            outbound_only: false,
            raft_adder: false,
            replica_index: 0,
        },
    };
    plan.set_gateways(vec![gw.clone()], &mut delta);
    assert!(delta.gateways);
    assert_eq!(
        plan.zone_gateways()[0].ip,
        Some("192.0.2.7".parse().expect("ip"))
    );
    assert_eq!(plan.peers()[0].advertise, ["192.0.2.7:7443"]);

    let mut delta = Delta::default();
    plan.set_members(["org1".to_owned(), "org2".to_owned()].into(), &mut delta);
    plan.set_gateways(vec![gw], &mut delta);
    assert!(delta.is_empty());
    let members: BTreeMap<_, _> = plan
        .targets("org1")
        .members
        .into_iter()
        .map(|m| (m, ()))
        .collect();
    assert_eq!(members.len(), 2);
}

/// A change of one of this site's nodes hands the far end that node's target only; a change
/// of the members (or the first pass) hands it every target.
#[test]
fn the_far_end_gets_the_changed_targets_only_unless_the_members_change() {
    let me = me();
    let nodes: Vec<NodeView> = (1..=3)
        .map(|i| node("org1", &format!("n{i}"), "dc1", 30303, 0))
        .collect();
    let hosts: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("n{i}"), format!("10.0.0.{i}")))
        .collect();
    let local: Vec<(&str, &str)> = hosts
        .iter()
        .map(|(n, h)| (n.as_str(), h.as_str()))
        .collect();
    let state = site(&local, &[]);
    let alloc = Allocations::default();
    let inputs = Inputs {
        me: &me,
        site: &state,
        alloc: &alloc,
    };
    let (mut plan, mut delta) = built(inputs, &[&nodes[0], &nodes[1]]);
    match plan.targets_change("org1", &mut delta, true) {
        Some(TargetsChange::All(t)) => assert_eq!(t.nodes.len(), 2),
        other => panic!("{other:?}"),
    }

    let mut delta = Delta::default();
    plan.set_node(
        nodes[2].key(),
        Some(project_node(inputs, &nodes[2])),
        &mut delta,
    );
    plan.set_node(nodes[0].key(), None, &mut delta);
    match plan.targets_change("org1", &mut delta, false) {
        Some(TargetsChange::Nodes(changed)) => {
            let names: Vec<(&str, bool)> = changed
                .iter()
                .map(|(n, t)| (n.as_str(), t.is_some()))
                .collect();
            assert_eq!(names, [("n3", true), ("n1", false)]);
        }
        other => panic!("{other:?}"),
    }

    let mut delta = Delta::default();
    plan.set_members(["org1".to_owned()].into(), &mut delta);
    match plan.targets_change("org1", &mut delta, false) {
        Some(TargetsChange::All(t)) => {
            assert_eq!(t.nodes.keys().collect::<Vec<_>>(), ["n2", "n3"]);
            assert_eq!(t.members.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    let mut delta = Delta::default();
    assert!(plan.targets_change("org1", &mut delta, false).is_none());
}

/// A node with named services and no chain ports (an IPFS node here, a Fabric peer at org1).
fn service_node(org: &str, name: &str, services: &[(&str, u32)]) -> NodeView {
    NodeView {
        org: org.into(),
        name: name.into(),
        seq: 1,
        node: Node::try_from(&pb::NodeRecord {
            client: pb::ClientKind::Ipfs.into(),
            site: "dc1".into(),
            services: services
                .iter()
                .map(|(n, p)| pb::NamedService {
                    name: (*n).into(),
                    port: *p,
                })
                .collect(),
            allowed_orgs: vec!["org3".into()],
            ..Default::default()
        })
        .expect("a valid node record"),
    }
}

#[test]
fn named_services_get_routes_srv_ports_and_targets_like_chain_ports() {
    let me = me();
    let remote = service_node("org2", "ipfs0", &[("cluster", 9096), ("swarm", 4001)]);
    let alloc = allocations(&[&remote]);
    let state = site(&[("peer0", "10.0.0.7")], &[]);
    let inputs = Inputs {
        me: &me,
        site: &state,
        alloc: &alloc,
    };
    let p = project_node(inputs, &remote);
    assert_eq!(addrs(&p.routes), ["127.77.0.1:9096", "127.77.0.1:4001"]);
    let names: Vec<&str> = p.routes.iter().map(|r| r.request.port.as_str()).collect();
    assert_eq!(names, ["cluster", "swarm"]);
    assert!(p.bad_routes.is_empty());
    assert_eq!(
        p.zone.ports,
        BTreeMap::from([("cluster".to_owned(), 9096), ("swarm".to_owned(), 4001)])
    );

    // this site's own Fabric peer: a far-end target with its service port and its policy
    let own = service_node("org1", "peer0", &[("peer", 7051), ("operations", 9443)]);
    let target = project_node(inputs, &own).target.expect("a far-end target");
    assert_eq!(target.ports["peer"], 7051);
    assert_eq!(target.ports["operations"], 9443);
    assert_eq!(target.allowed_orgs, ["org3"]);
}
