use super::*;
use crate::k8s::crd::{ConsortiumNodeSpec, Enode, NodePorts, SecretKeyRef};
use k8s_openapi::ByteString;

const NOW: &str = "2026-01-01T00:00:00Z";
/// SEC 2 generator G: the public key of private key 1.
const G: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                 483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

fn settings() -> Settings {
    Settings {
        namespace: "org1".into(),
        config_map: "fedgw-peers".into(),
        gateway_selector: labels(&[("app.kubernetes.io/name", "fedgw")]),
        cluster_domain: "cluster.local".into(),
    }
}

fn cr(name: &str, service: &str) -> ConsortiumNode {
    let mut c = ConsortiumNode::new(
        name,
        ConsortiumNodeSpec {
            node_name: None,
            client: Client::Goquorum,
            service: Some(service.into()),
            pod_selector: None,
            hosts: vec![],
            ports: NodePorts {
                p2p: Some(30303),
                raft: Some(50400),
                tessera: None,
            },
            raft_id: Some(1),
            enode: Some(Enode {
                public_key: Some(G.into()),
                nodekey_secret: None,
            }),
            tessera_public_keys: vec![],
            tessera_tls: false,
            roles: vec![],
            allowed_orgs: vec![],
            rpc: None,
            services: vec![],
            ipfs_peer_id: None,
            raft_learner: false,
        },
    );
    c.metadata.namespace = Some("org1".into());
    c.metadata.generation = Some(1);
    c
}

fn service(name: &str, ip: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn record(site: &str, enode: u8) -> pb::NodeRecord {
    pb::NodeRecord {
        client: pb::ClientKind::Goquorum.into(),
        enode_id: vec![enode; 64],
        p2p_port: 30303,
        raft_port: 50400,
        raft_id: 2,
        site: site.into(),
        ..Default::default()
    }
}

fn remote(org: &str, name: &str, ports: &[(&str, u32)]) -> pb::NodeInfo {
    pb::NodeInfo {
        org: org.into(),
        name: name.into(),
        record: Some(record("dc1", 0xab)),
        dns_name: format!("{name}.{org}.acme.example"),
        local_ip: "0.0.0.0".into(),
        local_ports: ports.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..Default::default()
    }
}

fn gateway(nodes: Vec<pb::NodeInfo>) -> GatewayView {
    GatewayView {
        org: "org1".into(),
        site: "dc1".into(),
        nodes,
        consortium: Default::default(),
    }
}

/// An index whose every watch has listed `nodes` and `services` (no Secrets, no ConfigMap).
fn listed(nodes: Vec<ConsortiumNode>, services: Vec<Service>, gw: GatewayView) -> Index {
    let mut ix = Index::new(settings());
    ix.nodes.event(watcher::Event::Init);
    for n in nodes {
        ix.nodes.event(watcher::Event::InitApply(n));
    }
    ix.nodes.event(watcher::Event::InitDone);
    ix.services.event(watcher::Event::Init);
    for s in services {
        ix.services.event(watcher::Event::InitApply(s));
    }
    ix.services.event(watcher::Event::InitDone);
    ix.secrets.event(watcher::Event::Init);
    ix.secrets.event(watcher::Event::InitDone);
    ix.config_maps.event(watcher::Event::Init);
    ix.config_maps.event(watcher::Event::InitDone);
    ix.set_gateway(gw);
    ix
}

fn plan(ix: &Index) -> Plan {
    ix.plan(NOW).expect("ready")
}

/// Feeds a plan's Kubernetes writes back as the API server would answer them.
fn settle(ix: &mut Index, p: &Plan) {
    for s in &p.apply_services {
        let mut s = s.clone();
        if let Some(spec) = s.spec.as_mut() {
            spec.cluster_ip.get_or_insert_with(|| "10.96.0.9".into());
        }
        ix.services.apply(s);
    }
    for n in &p.delete_services {
        ix.services.delete(n);
    }
    if let Some(cm) = &p.config_map {
        ix.config_maps.apply(cm.clone());
    }
    for (name, status) in &p.statuses {
        let mut c = ix.nodes.get(name).cloned().expect("node");
        c.status = Some(status.clone());
        ix.nodes.apply(c);
    }
}

#[test]
fn nothing_is_planned_before_every_first_list() {
    let mut ix = Index::new(settings());
    assert!(ix.plan(NOW).is_none());
    ix.set_gateway(gateway(vec![]));
    for step in 0..4 {
        assert!(ix.plan(NOW).is_none(), "step {step}");
        match step {
            0 => {
                ix.nodes.event(watcher::Event::Init);
                ix.nodes.event(watcher::Event::InitApply(cr("node1", "q1")));
                assert!(ix.plan(NOW).is_none(), "a list in progress is not a list");
                ix.nodes.event(watcher::Event::InitDone);
            }
            1 => {
                ix.services.event(watcher::Event::Init);
                ix.services.event(watcher::Event::InitDone);
            }
            2 => {
                ix.secrets.event(watcher::Event::Init);
                ix.secrets.event(watcher::Event::InitDone);
            }
            _ => {
                ix.config_maps.event(watcher::Event::Init);
                ix.config_maps.event(watcher::Event::InitDone);
            }
        }
    }
    assert!(ix.plan(NOW).is_some());
    let mut no_gateway = Index::new(settings());
    no_gateway.nodes.event(watcher::Event::InitDone);
    no_gateway.services.event(watcher::Event::InitDone);
    no_gateway.secrets.event(watcher::Event::InitDone);
    no_gateway.config_maps.event(watcher::Event::InitDone);
    assert!(
        no_gateway.plan(NOW).is_none(),
        "the gateway's list is a first list too"
    );
}

#[test]
fn a_local_node_is_registered_with_its_service_address_then_shown_registered() {
    let mut ix = listed(
        vec![cr("node1", "quorum-node1")],
        vec![service("quorum-node1", "10.96.1.1")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("one AddNode: {:?}", p.gateway)
    };
    assert_eq!(spec.name, "node1");
    assert_eq!(spec.host, "10.96.1.1");
    assert_eq!(
        (spec.p2p_port, spec.raft_port, spec.raft_id),
        (30303, 50400, 1)
    );
    assert_eq!(spec.enode_id[..2], [0x79, 0xbe]);
    let status = &p.statuses[0].1;
    assert_eq!(status.state.as_deref(), Some("Pending"));
    assert_eq!(status.conditions[0].reason, "Registering");

    // the gateway now holds it
    let mut held = remote("org1", "node1", &[("p2p", 30303), ("raft", 50400)]);
    held.record = Some(pb::NodeRecord {
        enode_id: spec.enode_id.clone(),
        raft_id: 1,
        ..record("dc1", 0)
    });
    held.local_host = "10.96.1.1".into();
    ix.set_gateway(gateway(vec![held]));
    settle(&mut ix, &p);
    let p = plan(&ix);
    assert!(p.gateway.is_empty(), "{:?}", p.gateway);
    let status = &p.statuses[0].1;
    assert_eq!(status.state.as_deref(), Some("Registered"));
    assert_eq!(status.dns_name.as_deref(), Some("node1.org1.acme.example"));
    assert_eq!(status.conditions[0].status, "True");
    assert!(
        p.config_map.expect("files").data.expect("data")["static-nodes.json"].contains(&format!(
            "enode://{G}@node1.org1.acme.example:30303?discport=0&raftport=50400"
        ))
    );
    let p = plan(&ix);
    settle(&mut ix, &p);
    assert!(plan(&ix).is_empty(), "settled: nothing more to write");
}

#[test]
fn pending_and_invalid_nodes_say_why_and_are_not_registered() {
    let mut missing_svc = cr("a", "nope");
    missing_svc.metadata.name = Some("a".into());
    let mut bad_key = cr("b", "svc");
    bad_key.spec.enode = Some(Enode {
        public_key: Some("xyz".into()),
        nodekey_secret: None,
    });
    let mut from_secret = cr("c", "svc");
    from_secret.spec.enode = Some(Enode {
        public_key: None,
        nodekey_secret: Some(SecretKeyRef {
            name: "c-keys".into(),
            key: None,
        }),
    });
    let mut ix = listed(
        vec![missing_svc, bad_key, from_secret],
        vec![service("svc", "10.96.1.2")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    assert!(p.gateway.is_empty(), "{:?}", p.gateway);
    let reasons: Vec<(&str, &str)> = p
        .statuses
        .iter()
        .map(|(n, s)| (n.as_str(), s.conditions[0].reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("a", "ServiceNotFound"),
            ("b", "InvalidEnode"),
            ("c", "SecretNotFound")
        ]
    );

    // the nodekey arrives: its public key is derived
    ix.secrets.apply(Secret {
        metadata: ObjectMeta {
            name: Some("c-keys".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "nodekey".to_owned(),
            ByteString(format!("{}1\n", "0".repeat(63)).into_bytes()),
        )])),
        ..Default::default()
    });
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    assert_eq!(spec.name, "c");
    assert_eq!(
        nodekey::parse_enode_id(G).expect("G").to_vec(),
        spec.enode_id
    );

    // a refusal is shown and not retried until cleared
    ix.record_failure(
        (**spec).clone(),
        "enode id already registered by org2".into(),
    );
    let p = plan(&ix);
    assert!(p.gateway.is_empty());
    let c = p.statuses.iter().find(|(n, _)| n == "c").expect("c");
    assert_eq!(c.1.conditions[0].reason, "GatewayRefused");
    ix.clear_failures();
    assert_eq!(plan(&ix).gateway.len(), 1);
}

#[test]
fn a_pod_selector_gets_a_service_of_its_own() {
    let mut c = cr("node1", "x");
    c.spec.service = None;
    c.spec.pod_selector = Some(labels(&[("app", "quorum-node1")]));
    let mut ix = listed(vec![c], vec![], gateway(vec![]));
    let p = plan(&ix);
    assert_eq!(p.apply_services.len(), 1);
    let svc = &p.apply_services[0];
    assert_eq!(svc.name_any(), "fedgw-node-node1");
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(
        spec.selector.as_ref().expect("selector")["app"],
        "quorum-node1"
    );
    assert_eq!(spec.ports.as_ref().expect("ports").len(), 2);
    assert!(
        p.gateway.is_empty(),
        "no address before the Service has one"
    );
    settle(&mut ix, &p);
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    assert_eq!(spec.host, "10.96.0.9");
}

#[test]
fn remote_nodes_get_a_service_on_real_ports_and_its_cluster_ip_at_the_gateway() {
    let node = remote("org2", "node1", &[("p2p", 41000), ("raft", 41001)]);
    let mut ix = listed(vec![], vec![], gateway(vec![node.clone()]));
    let p = plan(&ix);
    assert!(p.gateway.is_empty(), "no ClusterIP yet");
    let [svc] = p.apply_services.as_slice() else {
        panic!("{:?}", p.apply_services)
    };
    assert_eq!(svc.name_any(), "fedgw-org2-node1");
    let l = svc.metadata.labels.as_ref().expect("labels");
    assert_eq!(
        (
            l[ORG_LABEL].as_str(),
            l[NODE_LABEL].as_str(),
            l[ROLE_LABEL].as_str()
        ),
        ("org2", "node1", "remote")
    );
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.selector, Some(settings().gateway_selector));
    let ports: Vec<(String, i32, Option<IntOrString>)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.target_port.clone(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("p2p".to_owned(), 30303, Some(IntOrString::Int(41000))),
            ("raft".to_owned(), 50400, Some(IntOrString::Int(41001)))
        ]
    );
    let files = p.config_map.clone().expect("files").data.expect("data");
    assert!(files["static-nodes.json"].contains("@node1.org2.acme.example:30303"));
    assert!(files["permissions_config.toml"].contains("node1.org2.acme.example"));

    settle(&mut ix, &p);
    let p = plan(&ix);
    assert_eq!(
        p.gateway,
        [GatewayCall::SetServiceAddress {
            org: "org2".into(),
            name: "node1".into(),
            ip: "10.96.0.9".into()
        }]
    );
    assert!(
        p.apply_services.is_empty() && p.config_map.is_none(),
        "{p:?}"
    );
    let mut set = node;
    set.service_ip = "10.96.0.9".into();
    ix.set_gateway(gateway(vec![set]));
    assert!(plan(&ix).is_empty());

    // the node leaves the consortium: its Service and its lines go
    ix.set_gateway(gateway(vec![]));
    let p = plan(&ix);
    assert_eq!(p.delete_services, ["fedgw-org2-node1"]);
    assert_eq!(
        p.config_map.expect("files").data.expect("data")["static-nodes.json"],
        "[]\n"
    );
}

#[test]
fn a_relist_deletes_what_vanished_meanwhile() {
    let owned = |name: &str| {
        let mut s = service(name, "10.96.0.5");
        s.metadata.labels = Some(labels(&[(MANAGED_BY, MANAGED_BY_VALUE)]));
        s
    };
    let mut held = remote("org1", "node1", &[]);
    held.local_host = "10.96.1.1".into();
    let mut ix = listed(
        vec![cr("node1", "quorum-node1")],
        vec![
            service("quorum-node1", "10.96.1.1"),
            owned("fedgw-org2-gone"),
        ],
        gateway(vec![held]),
    );
    // the ConsortiumNode is deleted while the watch is down: the re-list misses it
    ix.nodes.event(watcher::Event::Init);
    assert!(
        ix.nodes.get("node1").is_some(),
        "kept until the re-list completes"
    );
    ix.nodes.event(watcher::Event::InitDone);
    assert!(ix.nodes.get("node1").is_none());
    let p = plan(&ix);
    assert_eq!(p.gateway, [GatewayCall::RemoveNode("node1".into())]);
    assert_eq!(
        p.delete_services,
        ["fedgw-org2-gone"],
        "owned, no longer wanted"
    );
    // a Service nobody owns is never deleted
    assert!(!p.delete_services.contains(&"quorum-node1".to_owned()));
}

#[test]
fn other_sites_nodes_are_left_alone_and_names_are_unique() {
    let mut other_site = remote("org1", "node9", &[]);
    other_site.record = Some(record("dc2", 9));
    let mut twin = cr("node1-copy", "quorum-node1");
    twin.spec.node_name = Some("node1".into());
    let ix = listed(
        vec![cr("node1", "quorum-node1"), twin],
        vec![service("quorum-node1", "10.96.1.1")],
        gateway(vec![other_site]),
    );
    let p = plan(&ix);
    assert_eq!(p.gateway.len(), 1, "{:?}", p.gateway);
    assert!(matches!(&p.gateway[0], GatewayCall::AddNode(s) if s.name == "node1"));
    let twin = p
        .statuses
        .iter()
        .find(|(n, _)| n == "node1-copy")
        .expect("twin");
    assert_eq!(twin.1.conditions[0].reason, "NameConflict");
}

#[test]
fn long_service_names_are_cut_to_63_and_stay_unique() {
    let a = service_name(&[&"o".repeat(40), &"n".repeat(40)]);
    let b = service_name(&[&"o".repeat(40), &format!("{}x", "n".repeat(39))]);
    assert!(a.len() <= 63 && b.len() <= 63);
    assert_ne!(a, b);
    assert_eq!(service_name(&["org2", "node1"]), "fedgw-org2-node1");
}

/// The gateway's record of local node `name` as `spec` registered it.
fn held(spec: &pb::NodeSpec) -> pb::NodeInfo {
    let mut h = remote("org1", &spec.name, &[]);
    h.record = Some(pb::NodeRecord {
        client: spec.client,
        enode_id: spec.enode_id.clone(),
        p2p_port: spec.p2p_port,
        raft_port: spec.raft_port,
        raft_id: spec.raft_id,
        site: "dc1".into(),
        ..Default::default()
    });
    h.local_host = spec.host.clone();
    h.local_rpc = spec.rpc_url.clone();
    h
}

fn cond<'a>(s: &'a ConsortiumNodeStatus, type_: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
}

#[test]
fn status_moves_whole_between_states_with_conditions_and_generation() {
    // Pending: waiting for the Service
    let mut ix = listed(vec![cr("node1", "quorum-node1")], vec![], gateway(vec![]));
    let p = plan(&ix);
    let s = &p.statuses[0].1;
    assert_eq!(s.state.as_deref(), Some("Pending"));
    assert_eq!(
        s.message.as_deref(),
        Some(r#"waiting for Service "quorum-node1""#)
    );
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(
        (
            cond(s, READY).status.as_str(),
            cond(s, READY).reason.as_str()
        ),
        ("False", "ServiceNotFound")
    );
    assert_eq!(cond(s, REGISTERED).status, "False");
    assert_eq!(cond(s, READY).observed_generation, Some(1));
    settle(&mut ix, &p);
    assert!(plan(&ix).statuses.is_empty(), "written once");

    // the Service appears: registered; the old message is gone
    ix.services.apply(service("quorum-node1", "10.96.1.1"));
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    ix.set_gateway(gateway(vec![held(spec)]));
    let later = "2026-01-01T00:05:00Z";
    let p = ix.plan(later).expect("ready");
    let s = &p.statuses[0].1;
    assert_eq!(s.state.as_deref(), Some("Registered"));
    assert_eq!(s.message, None);
    assert_eq!(s.dns_name.as_deref(), Some("node1.org1.acme.example"));
    for t in [READY, REGISTERED] {
        assert_eq!(cond(s, t).status, "True");
        assert_eq!(cond(s, t).last_transition_time, later, "{t} changed");
    }
    settle(&mut ix, &p);
    assert!(plan(&ix).is_empty(), "settled");

    // the spec turns invalid (a new generation): Error; the DNS name goes, the gateway
    // still publishes the old record
    let mut c = ix.nodes.get("node1").cloned().expect("node1");
    c.spec.ports = NodePorts::default();
    c.metadata.generation = Some(2);
    ix.nodes.apply(c);
    let even_later = "2026-01-01T00:09:00Z";
    let p = ix.plan(even_later).expect("ready");
    let s = &p.statuses[0].1;
    assert_eq!(s.state.as_deref(), Some("Error"));
    assert_eq!(s.dns_name, None);
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(cond(s, READY).reason, "InvalidPorts");
    assert_eq!(cond(s, READY).last_transition_time, even_later);
    assert_eq!(cond(s, REGISTERED).status, "True");
    assert_eq!(
        cond(s, REGISTERED).last_transition_time,
        later,
        "Registered did not change"
    );
    settle(&mut ix, &p);
    assert!(plan(&ix).statuses.is_empty());
}

#[test]
fn a_registered_node_keeps_its_name_against_a_later_resource() {
    let mut ix = listed(
        vec![cr("node1", "quorum-node1")],
        vec![service("quorum-node1", "10.96.1.1")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    ix.set_gateway(gateway(vec![held(spec)]));
    let p = plan(&ix);
    settle(&mut ix, &p);
    assert!(plan(&ix).is_empty());

    // "dup" sorts first and is newer... and older: registration decides, not age or name
    let mut dup = cr("dup", "quorum-dup");
    dup.spec.node_name = Some("node1".into());
    dup.spec.ports.p2p = Some(30304);
    dup.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1).expect("time"),
    ));
    ix.nodes.apply(dup);
    ix.services.apply(service("quorum-dup", "10.96.1.2"));
    let p = plan(&ix);
    assert!(
        p.gateway.is_empty(),
        "node1 is not re-registered: {:?}",
        p.gateway
    );
    let [(name, s)] = p.statuses.as_slice() else {
        panic!("{:?}", p.statuses)
    };
    assert_eq!(name, "dup");
    assert_eq!(s.state.as_deref(), Some("Error"));
    assert_eq!(cond(s, READY).reason, "NameConflict");
    assert_eq!(cond(s, REGISTERED).status, "False");
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("\"node1\""))
    );

    // of two unregistered resources, the older keeps the name
    let mut young = cr("a-young", "q");
    young.spec.node_name = Some("n".into());
    young.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(200).expect("time"),
    ));
    let mut old = cr("z-old", "q");
    old.spec.node_name = Some("n".into());
    old.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(100).expect("time"),
    ));
    let ix = listed(
        vec![young, old],
        vec![service("q", "10.96.1.3")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    let young = p
        .statuses
        .iter()
        .find(|(n, _)| n == "a-young")
        .expect("young");
    assert_eq!(cond(&young.1, READY).reason, "NameConflict");
    assert!(matches!(&p.gateway[..], [GatewayCall::AddNode(s)] if s.name == "n"));
}

#[test]
fn both_service_and_pod_selector_is_an_error() {
    let mut c = cr("node1", "quorum-node1");
    c.spec.pod_selector = Some(labels(&[("app", "quorum-node1")]));
    let ix = listed(
        vec![c],
        vec![service("quorum-node1", "10.96.1.1")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    assert!(p.gateway.is_empty() && p.apply_services.is_empty(), "{p:?}");
    let s = &p.statuses[0].1;
    assert_eq!(s.state.as_deref(), Some("Error"));
    assert_eq!(cond(s, READY).reason, "InvalidTarget");
    assert_eq!(
        s.message.as_deref(),
        Some("set service or podSelector, not both")
    );
}

#[test]
fn a_headless_service_is_named_under_the_cluster_domain() {
    let mut headless = service("quorum-node4", "None");
    headless.metadata.name = Some("quorum-node4".into());
    let ix = listed(
        vec![cr("node4", "quorum-node4")],
        vec![headless.clone()],
        gateway(vec![]),
    );
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    assert_eq!(spec.host, "quorum-node4.org1.svc.cluster.local");

    let mut other = settings();
    other.cluster_domain = "corp.internal.".into();
    let mut ix = listed(
        vec![cr("node4", "quorum-node4")],
        vec![headless],
        gateway(vec![]),
    );
    ix.settings = other;
    let p = plan(&ix);
    assert!(
        matches!(&p.gateway[..], [GatewayCall::AddNode(s)] if s.host == "quorum-node4.org1.svc.corp.internal"),
        "{:?}",
        p.gateway
    );
}

#[test]
fn the_rpc_endpoint_goes_to_the_gateway_checked_and_in_normal_form() {
    let mut bad = cr("bad", "svc");
    bad.spec.rpc = Some("https://quorum-node1:8545".into());
    let mut good = cr("good", "svc");
    good.spec.rpc = Some("http://Quorum-Node1:8545".into());
    let mut ix = listed(
        vec![bad, good],
        vec![service("svc", "10.96.1.2")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    let reasons: Vec<(&str, &str)> = p
        .statuses
        .iter()
        .map(|(n, s)| (n.as_str(), s.conditions[0].reason.as_str()))
        .collect();
    assert_eq!(reasons, [("bad", "InvalidRpc"), ("good", "Registering")]);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("one AddNode: {:?}", p.gateway)
    };
    assert_eq!(spec.rpc_url, "http://quorum-node1:8545/");
    // the gateway holds it with that endpoint: nothing more to send
    ix.set_gateway(gateway(vec![held(spec)]));
    settle(&mut ix, &p);
    assert!(plan(&ix).gateway.is_empty());
    // a changed endpoint registers the node again
    let mut moved = cr("good", "svc");
    moved.spec.rpc = Some("http://quorum-node1:8546".into());
    ix.nodes.apply(moved);
    let p = plan(&ix);
    assert!(
        matches!(p.gateway.as_slice(), [GatewayCall::AddNode(s)] if s.rpc_url == "http://quorum-node1:8546/"),
        "{:?}",
        p.gateway
    );
}

#[test]
fn a_fabric_peers_named_services_reach_its_service_ports_and_its_node_spec() {
    let mut c = cr("peer0", "x");
    c.spec.client = Client::FabricPeer;
    c.spec.enode = None;
    c.spec.ports = NodePorts::default();
    c.spec.raft_id = None;
    c.spec.service = None;
    c.spec.pod_selector = Some(labels(&[("app", "peer0")]));
    c.spec.services = vec![
        crate::k8s::crd::NamedPort {
            name: "peer".into(),
            port: 7051,
        },
        crate::k8s::crd::NamedPort {
            name: "operations".into(),
            port: 9443,
        },
    ];
    let mut ix = listed(vec![c], vec![], gateway(vec![]));
    let p = plan(&ix);
    let svc = p.apply_services[0].spec.as_ref().expect("spec");
    let ports: Vec<(Option<String>, i32)> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("peer".into()), 7051),
            (Some("operations".into()), 9443)
        ]
    );
    settle(&mut ix, &p);
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("{:?}", p.gateway)
    };
    assert_eq!(spec.client, i32::from(pb::ClientKind::FabricPeer));
    let services: Vec<(&str, u32)> = spec
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.port))
        .collect();
    assert_eq!(services, [("peer", 7051), ("operations", 9443)]);
}

#[test]
fn hosts_register_the_nodes_replicas_and_settle_once_the_gateway_lists_them() {
    let mut c = cr("tm1", "unused");
    c.spec.service = None;
    c.spec.hosts = vec!["tm1-0.tm1.org1.svc".into(), "tm1-1.tm1.org1.svc".into()];
    let mut ix = listed(vec![c], vec![], gateway(vec![]));
    let p = plan(&ix);
    let [GatewayCall::AddNode(spec)] = p.gateway.as_slice() else {
        panic!("one AddNode: {:?}", p.gateway)
    };
    assert_eq!(spec.host, "tm1-0.tm1.org1.svc");
    assert_eq!(spec.replica_hosts, ["tm1-1.tm1.org1.svc"]);
    assert!(p.apply_services.is_empty(), "no Service for hosts");

    // the gateway lists the node with both addresses: nothing more to send
    let mut held = remote("org1", "tm1", &[("p2p", 30303), ("raft", 50400)]);
    held.record = Some(pb::NodeRecord {
        enode_id: spec.enode_id.clone(),
        raft_id: 1,
        ..record("dc1", 0)
    });
    held.local_host = spec.host.clone();
    held.replicas = ["tm1-0.tm1.org1.svc", "tm1-1.tm1.org1.svc"]
        .iter()
        .map(|h| pb::ReplicaInfo {
            host: (*h).into(),
            up: false,
        })
        .collect();
    let mut one_address = held.clone();
    ix.set_gateway(gateway(vec![held]));
    settle(&mut ix, &p);
    let p = plan(&ix);
    assert!(p.gateway.is_empty(), "{:?}", p.gateway);
    assert_eq!(p.statuses[0].1.state.as_deref(), Some("Registered"));

    // a record without the replica is sent again
    one_address.replicas.clear();
    ix.set_gateway(gateway(vec![one_address]));
    let p = plan(&ix);
    assert!(
        matches!(&p.gateway[..], [GatewayCall::AddNode(s)] if s.replica_hosts.len() == 1),
        "{:?}",
        p.gateway
    );
}

#[test]
fn hosts_beside_a_service_or_pod_selector_is_an_error() {
    let mut with_service = cr("a", "quorum-node1");
    with_service.spec.hosts = vec!["10.0.0.1".into()];
    let mut with_selector = cr("b", "unused");
    with_selector.spec.service = None;
    with_selector.spec.pod_selector = Some(labels(&[("app", "b")]));
    with_selector.spec.hosts = vec!["10.0.0.2".into()];
    let mut too_many = cr("c", "unused");
    too_many.spec.service = None;
    too_many.spec.hosts = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
    let ix = listed(
        vec![with_service, with_selector, too_many],
        vec![service("quorum-node1", "10.96.1.1")],
        gateway(vec![]),
    );
    let p = plan(&ix);
    assert!(p.gateway.is_empty() && p.apply_services.is_empty(), "{p:?}");
    let messages: Vec<(&str, &str)> = p
        .statuses
        .iter()
        .map(|(n, s)| (n.as_str(), s.message.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(
        messages,
        [
            ("a", "hosts replace service and podSelector: set only one"),
            ("b", "hosts replace service and podSelector: set only one"),
            ("c", "hosts lists 9 addresses; at most 8"),
        ]
    );
    assert!(
        p.statuses
            .iter()
            .all(|(_, s)| cond(s, READY).reason == "InvalidTarget")
    );
}

fn fabric_node(org: &str, name: &str, client: pb::ClientKind, port: (&str, u32)) -> pb::NodeInfo {
    pb::NodeInfo {
        record: Some(pb::NodeRecord {
            client: client.into(),
            services: vec![pb::NamedService {
                name: port.0.into(),
                port: port.1,
            }],
            site: "dc1".into(),
            ..Default::default()
        }),
        ..remote(org, name, &[(port.0, 41000)])
    }
}

#[test]
fn the_config_map_holds_the_fabric_profile_while_the_view_has_fabric_nodes() {
    let consortium = Consortium {
        name: "acme".into(),
        domain: "acme.example".into(),
        root_cert_pem: "ROOT PEM\n".into(),
        members: ["org1", "org2", "org3"]
            .iter()
            .map(|o| MemberFacts {
                org: (*o).into(),
                msp_id: (*o == "org2").then(|| "BankMSP".into()),
            })
            .collect(),
    };
    let view = |nodes| GatewayView {
        consortium: consortium.clone(),
        ..gateway(nodes)
    };
    // no Fabric node: no profile
    let ix = listed(vec![], vec![], view(vec![remote("org2", "node1", &[])]));
    assert!(!ix.rendered().contains_key(FABRIC_PROFILE_FILE));

    let nodes = vec![
        remote("org2", "node1", &[]),
        fabric_node("org2", "peer0", pb::ClientKind::FabricPeer, ("peer", 9051)),
        fabric_node(
            "org3",
            "orderer0",
            pb::ClientKind::FabricOrderer,
            ("orderer", 7050),
        ),
    ];
    let ix = listed(vec![], vec![], view(nodes));
    let files = ix.rendered();
    let profile: serde_json::Value =
        serde_json::from_str(&files[FABRIC_PROFILE_FILE]).expect("json");
    assert_eq!(profile["name"], "acme");
    assert_eq!(profile["client"]["organization"], "org1");
    assert_eq!(profile["organizations"]["org2"]["mspid"], "BankMSP");
    assert_eq!(
        profile["organizations"]["org2"]["peers"],
        serde_json::json!(["peer0.org2.acme.example"])
    );
    let peer = &profile["peers"]["peer0.org2.acme.example"];
    assert_eq!(peer["url"], "grpcs://peer0.org2.acme.example:9051");
    assert_eq!(peer["tlsCACerts"]["pem"], "ROOT PEM\n");
    assert_eq!(
        profile["orderers"]["orderer0.org3.acme.example"]["url"],
        "grpcs://orderer0.org3.acme.example:7050"
    );
    assert!(
        profile["organizations"].get("org1").is_none(),
        "org1 has no Fabric nodes"
    );
    // the other files are as before
    assert!(files.contains_key("static-nodes.json"));
}
