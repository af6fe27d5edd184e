//! The reconciler against a scripted fake API server (a `tower-test` mock service behind a
//! real `kube::Client`): each expected request's method, path and body are asserted, each
//! awaited with a timeout; and against a stateful fake ([`fake_api`]) with the API server's
//! patch semantics, which counts writes over many reconcile periods. The gateway is a fake
//! that records calls and updates its view.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedgw_controlplane::fabric::view::MemberFacts;
use fedgw_controlplane::k8s::crd::{Client, ConsortiumNode, ConsortiumNodeSpec, Enode, NodePorts};
use fedgw_controlplane::k8s::gateway::Gateway;
use fedgw_controlplane::k8s::index::{
    Consortium, FABRIC_PROFILE_FILE, GatewayCall, GatewayView, Index, MANAGED_BY, MANAGED_BY_VALUE,
    Settings,
};
use fedgw_controlplane::k8s::lease::Elector;
use fedgw_controlplane::k8s::reconcile::{Outcome, Reconciler};
use fedgw_proto::v1 as pb;
use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tower_test::mock;

use crate::support::fake_api;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

const WAIT: Duration = Duration::from_secs(5);
/// A stand-in for the consortium root: the profile embeds it as given.
const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----\n";
const G: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                 483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

/// A gateway that applies calls to its own view.
#[derive(Clone, Default)]
struct FakeGateway(Arc<Mutex<(GatewayView, Vec<GatewayCall>)>>);

impl FakeGateway {
    fn new(nodes: Vec<pb::NodeInfo>) -> Self {
        let view = GatewayView {
            org: "org1".into(),
            site: "dc1".into(),
            nodes,
            consortium: Default::default(),
        };
        Self(Arc::new(Mutex::new((view, Vec::new()))))
    }
    fn calls(&self) -> Vec<GatewayCall> {
        self.0.lock().expect("lock").1.clone()
    }
}

impl Gateway for FakeGateway {
    async fn view(&mut self) -> Result<GatewayView, tonic::Status> {
        Ok(self.0.lock().expect("lock").0.clone())
    }
    async fn call(&mut self, call: &GatewayCall) -> Result<(), tonic::Status> {
        let mut g = self.0.lock().expect("lock");
        g.1.push(call.clone());
        match call {
            GatewayCall::AddNode(s) => g.0.nodes.push(pb::NodeInfo {
                org: "org1".into(),
                name: s.name.clone(),
                record: Some(pb::NodeRecord {
                    client: s.client,
                    enode_id: s.enode_id.clone(),
                    p2p_port: s.p2p_port,
                    raft_port: s.raft_port,
                    raft_id: s.raft_id,
                    site: "dc1".into(),
                    ..Default::default()
                }),
                local_host: s.host.clone(),
                local_rpc: s.rpc_url.clone(),
                dns_name: format!("{}.org1.acme.example", s.name),
                replicas: replicas(s),
                ..Default::default()
            }),
            GatewayCall::RemoveNode(n) => g.0.nodes.retain(|x| x.name != *n),
            GatewayCall::SetServiceAddress { org, name, ip } => {
                for n in &mut g.0.nodes {
                    if n.org == *org && n.name == *name {
                        n.service_ip = ip.clone();
                    }
                }
            }
        }
        Ok(())
    }
}

/// A node's addresses as the gateway lists them: none for one address, else every one.
fn replicas(s: &pb::NodeSpec) -> Vec<pb::ReplicaInfo> {
    if s.replica_hosts.is_empty() {
        return vec![];
    }
    std::iter::once(&s.host)
        .chain(&s.replica_hosts)
        .map(|h| pb::ReplicaInfo {
            host: h.clone(),
            up: true,
        })
        .collect()
}

fn settings() -> Settings {
    Settings {
        namespace: "org1".into(),
        config_map: "fedgw-peers".into(),
        gateway_selector: BTreeMap::from([("app.kubernetes.io/name".into(), "fedgw".into())]),
        cluster_domain: "cluster.local".into(),
    }
}

fn node_cr() -> ConsortiumNode {
    let mut c = ConsortiumNode::new(
        "node1",
        ConsortiumNodeSpec {
            node_name: None,
            client: Client::Goquorum,
            service: Some("quorum-node1".into()),
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
    c
}

fn service(name: &str, ip: &str, owned: bool) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("org1".into()),
            labels: owned.then(|| BTreeMap::from([(MANAGED_BY.into(), MANAGED_BY_VALUE.into())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn remote_node() -> pb::NodeInfo {
    pb::NodeInfo {
        org: "org2".into(),
        name: "node1".into(),
        record: Some(pb::NodeRecord {
            client: pb::ClientKind::Goquorum.into(),
            enode_id: vec![0xab; 64],
            p2p_port: 30303,
            raft_port: 50400,
            site: "dc1".into(),
            ..Default::default()
        }),
        dns_name: "node1.org2.acme.example".into(),
        local_ip: "0.0.0.0".into(),
        local_ports: [("p2p".to_owned(), 41000), ("raft".to_owned(), 41001)].into(),
        ..Default::default()
    }
}

/// An index whose watches all listed the given objects.
fn listed(
    nodes: Vec<ConsortiumNode>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
) -> Index {
    let mut ix = Index::new(settings());
    ix.nodes.event(Event::Init);
    nodes
        .into_iter()
        .for_each(|n| ix.nodes.event(Event::InitApply(n)));
    ix.nodes.event(Event::InitDone);
    ix.services.event(Event::Init);
    services
        .into_iter()
        .for_each(|s| ix.services.event(Event::InitApply(s)));
    ix.services.event(Event::InitDone);
    ix.secrets.event(Event::Init);
    ix.secrets.event(Event::InitDone);
    ix.config_maps.event(Event::Init);
    config_maps
        .into_iter()
        .for_each(|c| ix.config_maps.event(Event::InitApply(c)));
    ix.config_maps.event(Event::InitDone);
    ix
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// Waits (bounded) for the next request, asserts its method and path, and returns its JSON
/// body (Null when empty) with the responder.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
) -> (Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} within {WAIT:?}"))
        .expect("the client is gone");
    assert_eq!(
        (req.method().as_str(), req.uri().path()),
        (method, path),
        "request {}",
        req.uri()
    );
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    (body, send)
}

/// Runs one reconcile in a task; the test answers its requests meanwhile.
fn spawn_reconcile(
    client: kube::Client,
    gateway: FakeGateway,
    mut index: Index,
    leader: bool,
) -> tokio::task::JoinHandle<(Outcome, Index)> {
    tokio::spawn(async move {
        let mut r = Reconciler::new(client, "org1", gateway);
        r.refresh(&mut index).await.expect("gateway");
        let outcome = r.reconcile(&mut index, || leader).await.expect("reconcile");
        (outcome, index)
    })
}

const CM_PATH: &str = "/api/v1/namespaces/org1/configmaps/fedgw-peers";

#[tokio::test]
async fn creating_a_consortium_node_registers_it_and_updates_status() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    let gateway = FakeGateway::new(vec![]);
    let mut cr = node_cr();
    cr.spec.rpc = Some("http://quorum-node1.org1.svc:8545".into());
    let index = listed(
        vec![cr.clone()],
        vec![service("quorum-node1", "10.96.1.1", false)],
        vec![],
    );
    let task = spawn_reconcile(client, gateway.clone(), index, true);

    // registered first, then the files and the status reflect the gateway's view
    let (body, send) = expect(&mut handle, "PATCH", CM_PATH).await;
    assert_eq!(body["kind"], "ConfigMap");
    assert_eq!(body["metadata"]["labels"][MANAGED_BY], MANAGED_BY_VALUE);
    let static_nodes = body["data"]["static-nodes.json"].as_str().expect("file");
    assert!(
        static_nodes.contains(&format!(
            "enode://{G}@node1.org1.acme.example:30303?discport=0&raftport=50400"
        )),
        "{static_nodes}"
    );
    send.send_response(json_response(200, &body));

    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/fedgw.io/v1alpha1/namespaces/org1/consortiumnodes/node1/status",
    )
    .await;
    let status = &body["status"];
    assert_eq!(status["state"], "Registered");
    assert_eq!(status["dnsName"], "node1.org1.acme.example");
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["type"], "Registered");
    assert_eq!(status["conditions"][1]["status"], "True");
    // a merge patch keeps what it leaves out: what the status no longer has is sent as null
    assert!(
        status.get("message").is_some_and(Value::is_null),
        "{status}"
    );
    let mut cr = serde_json::to_value(cr).expect("json");
    cr["status"] = status.clone();
    send.send_response(json_response(200, &cr));

    let (outcome, _) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::Done);
    let calls = gateway.calls();
    let [GatewayCall::AddNode(spec)] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(
        (spec.name.as_str(), spec.host.as_str()),
        ("node1", "10.96.1.1")
    );
    // the resource's RPC endpoint reaches the admin request, in the gateway's normal form
    assert_eq!(spec.rpc_url, "http://quorum-node1.org1.svc:8545/");
}

#[tokio::test]
async fn a_remote_node_appearing_creates_its_service_and_config_map_entry() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    let gateway = FakeGateway::new(vec![remote_node()]);
    let task = spawn_reconcile(
        client,
        gateway.clone(),
        listed(vec![], vec![], vec![]),
        true,
    );

    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/api/v1/namespaces/org1/services/fedgw-org2-node1",
    )
    .await;
    assert_eq!(body["kind"], "Service");
    assert_eq!(body["metadata"]["labels"]["fedgw.io/org"], "org2");
    assert_eq!(body["metadata"]["labels"]["fedgw.io/role"], "remote");
    assert_eq!(body["spec"]["selector"]["app.kubernetes.io/name"], "fedgw");
    assert_eq!(
        body["spec"]["ports"],
        json!([
            {"name": "p2p", "port": 30303, "targetPort": 41000, "protocol": "TCP"},
            {"name": "raft", "port": 50400, "targetPort": 41001, "protocol": "TCP"},
        ])
    );
    let mut created = body.clone();
    created["spec"]["clusterIP"] = json!("10.96.0.7");
    send.send_response(json_response(201, &created));

    let (body, send) = expect(&mut handle, "PATCH", CM_PATH).await;
    let files = &body["data"];
    assert!(
        files["static-nodes.json"]
            .as_str()
            .is_some_and(|f| f.contains("@node1.org2.acme.example:30303")),
        "{files}"
    );
    assert!(
        files["tessera-peers.json"].is_string() && files["permissions_config.toml"].is_string()
    );
    send.send_response(json_response(200, &body));

    let (outcome, _) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        gateway.calls(),
        [GatewayCall::SetServiceAddress {
            org: "org2".into(),
            name: "node1".into(),
            ip: "10.96.0.7".into()
        }],
        "the gateway learns the ClusterIP"
    );
}

#[tokio::test]
async fn a_node_with_hosts_is_registered_with_every_address_and_no_service() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    let gateway = FakeGateway::new(vec![]);
    let mut cr = node_cr();
    cr.spec.service = None;
    cr.spec.hosts = vec![
        "quorum-0.quorum.org1.svc.cluster.local".into(),
        "quorum-1.quorum.org1.svc.cluster.local".into(),
    ];
    let task = spawn_reconcile(
        client,
        gateway.clone(),
        listed(vec![cr.clone()], vec![], vec![]),
        true,
    );
    // no Service: the files, then the status
    let (body, send) = expect(&mut handle, "PATCH", CM_PATH).await;
    send.send_response(json_response(200, &body));
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/fedgw.io/v1alpha1/namespaces/org1/consortiumnodes/node1/status",
    )
    .await;
    assert_eq!(body["status"]["state"], "Registered", "{body}");
    let mut cr = serde_json::to_value(cr).expect("json");
    cr["status"] = body["status"].clone();
    send.send_response(json_response(200, &cr));
    let (outcome, _) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::Done, "one AddNode settles it");
    let calls = gateway.calls();
    let [GatewayCall::AddNode(spec)] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert_eq!(spec.host, "quorum-0.quorum.org1.svc.cluster.local");
    assert_eq!(
        spec.replica_hosts,
        ["quorum-1.quorum.org1.svc.cluster.local"]
    );
}

#[tokio::test]
async fn a_remote_fabric_peer_puts_a_connection_profile_into_the_config_map() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    let peer = pb::NodeInfo {
        org: "org2".into(),
        name: "peer0".into(),
        record: Some(pb::NodeRecord {
            client: pb::ClientKind::FabricPeer.into(),
            services: vec![pb::NamedService {
                name: "peer".into(),
                port: 7051,
            }],
            site: "dc1".into(),
            ..Default::default()
        }),
        dns_name: "peer0.org2.acme.example".into(),
        local_ports: [("peer".to_owned(), 41002)].into(),
        ..Default::default()
    };
    let gateway = FakeGateway::new(vec![peer]);
    gateway.0.lock().expect("lock").0.consortium = Consortium {
        name: "acme".into(),
        domain: "acme.example".into(),
        root_cert_pem: ROOT_PEM.into(),
        members: ["org1", "org2"]
            .iter()
            .map(|o| MemberFacts {
                org: (*o).into(),
                msp_id: None,
            })
            .collect(),
    };
    let task = spawn_reconcile(
        client,
        gateway.clone(),
        listed(vec![], vec![], vec![]),
        true,
    );

    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/api/v1/namespaces/org1/services/fedgw-org2-peer0",
    )
    .await;
    assert_eq!(
        body["spec"]["ports"],
        json!([{"name": "peer", "port": 7051, "targetPort": 41002, "protocol": "TCP"}])
    );
    let mut created = body.clone();
    created["spec"]["clusterIP"] = json!("10.96.0.8");
    send.send_response(json_response(201, &created));

    let (body, send) = expect(&mut handle, "PATCH", CM_PATH).await;
    let text = body["data"][FABRIC_PROFILE_FILE]
        .as_str()
        .unwrap_or_else(|| panic!("no {FABRIC_PROFILE_FILE}: {body}"));
    let profile: Value = serde_json::from_str(text).expect("the profile is JSON");
    assert_eq!(profile["name"], "acme");
    assert_eq!(profile["client"]["organization"], "org1");
    assert_eq!(profile["organizations"]["org2"]["mspid"], "Org2MSP");
    let node = &profile["peers"]["peer0.org2.acme.example"];
    assert_eq!(node["url"], "grpcs://peer0.org2.acme.example:7051");
    assert_eq!(node["tlsCACerts"]["pem"], ROOT_PEM);
    assert_eq!(
        node["grpcOptions"]["ssl-target-name-override"],
        "peer0.org2.acme.example"
    );
    send.send_response(json_response(200, &body));

    let (outcome, _) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::Done);
}

#[tokio::test]
async fn a_remote_node_removed_deletes_its_service_and_entry() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    // settled with the node: its Service exists and the files name it
    let mut node = remote_node();
    node.service_ip = "10.96.0.7".into();
    let mut settled = listed(vec![], vec![], vec![]);
    settled.set_gateway(GatewayView {
        org: "org1".into(),
        site: "dc1".into(),
        nodes: vec![node],
        ..Default::default()
    });
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("fedgw-peers".into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.into(),
                MANAGED_BY_VALUE.into(),
            )])),
            ..Default::default()
        },
        data: Some(settled.rendered()),
        ..Default::default()
    };
    let index = listed(
        vec![],
        vec![service("fedgw-org2-node1", "10.96.0.7", true)],
        vec![cm],
    );
    let gateway = FakeGateway::new(vec![]);
    let task = spawn_reconcile(client, gateway.clone(), index, true);

    let (_, send) = expect(
        &mut handle,
        "DELETE",
        "/api/v1/namespaces/org1/services/fedgw-org2-node1",
    )
    .await;
    send.send_response(json_response(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
    ));
    let (body, send) = expect(&mut handle, "PATCH", CM_PATH).await;
    assert_eq!(body["data"]["static-nodes.json"], "[]\n");
    send.send_response(json_response(200, &body));

    let (outcome, index) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::Done);
    assert!(index.services.get("fedgw-org2-node1").is_none());
    assert!(gateway.calls().is_empty());
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/org1/leases";

#[tokio::test]
async fn losing_the_lease_stops_writes() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "org1");
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "org1");
    let mut elector = Elector::new(api, "fedgw-controlplane", "gw-0", Duration::from_secs(15));

    // no Lease yet: this replica creates it and leads
    let tick = tokio::spawn(async move {
        let r = elector.tick().await.map_err(|e| e.to_string());
        (r, elector)
    });
    let lease_path = format!("{LEASES}/fedgw-controlplane");
    let (_, send) = expect(&mut handle, "GET", &lease_path).await;
    send.send_response(json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
    ));
    let (body, send) = expect(&mut handle, "POST", LEASES).await;
    assert_eq!(body["spec"]["holderIdentity"], "gw-0");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    let mut held = body.clone();
    held["metadata"]["resourceVersion"] = json!("1");
    send.send_response(json_response(201, &held));
    let (r, mut elector) = tokio::time::timeout(WAIT, tick)
        .await
        .expect("tick")
        .expect("task");
    assert_eq!(r, Ok(true));
    assert!(elector.is_leader());

    // another replica took it over (say we missed renewals): we follow
    let tick = tokio::spawn(async move {
        let r = elector.tick().await.map_err(|e| e.to_string());
        (r, elector)
    });
    let (_, send) = expect(&mut handle, "GET", &lease_path).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut taken = held.clone();
    taken["spec"]["holderIdentity"] = json!("gw-1");
    taken["spec"]["renewTime"] = json!(now);
    taken["metadata"]["resourceVersion"] = json!("2");
    send.send_response(json_response(200, &taken));
    let (r, elector) = tokio::time::timeout(WAIT, tick)
        .await
        .expect("tick")
        .expect("task");
    assert_eq!(r, Ok(false));
    assert!(!elector.is_leader());

    // a remote node appears: a leader would create its Service; this replica writes nothing
    let gateway = FakeGateway::new(vec![remote_node()]);
    let task = spawn_reconcile(
        client,
        gateway.clone(),
        listed(vec![], vec![], vec![]),
        elector.is_leader(),
    );
    let (outcome, _) = tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("task");
    assert_eq!(outcome, Outcome::NotLeader);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "no request after the Lease was lost"
    );
    assert!(gateway.calls().is_empty());
}

fn pod(name: &str, leader: bool) -> Value {
    let mut labels = json!({ "app.kubernetes.io/name": "fedgw" });
    if leader {
        labels["fedgw.io/leader"] = json!("true");
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "org1", "labels": labels } })
}

#[tokio::test]
async fn the_leader_labels_its_own_pod_only_and_a_former_leader_unlabels_itself() {
    use fedgw_controlplane::k8s::leader::{LEADER_LABEL, mark};
    use k8s_openapi::api::core::v1::Pod;
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let pods: kube::Api<Pod> = kube::Api::namespaced(kube::Client::new(svc, "org1"), "org1");

    // the new leader: the old leader's pod still carries the label, its own does not
    let server = async {
        let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/org1/pods").await;
        send.send_response(json_response(
            200,
            &json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("gw-b", true)] }),
        ));
        let (body, send) = expect(&mut handle, "PATCH", "/api/v1/namespaces/org1/pods/gw-b").await;
        assert_eq!(body["metadata"]["labels"][LEADER_LABEL], Value::Null);
        send.send_response(json_response(200, &pod("gw-b", false)));
        let (body, send) = expect(&mut handle, "PATCH", "/api/v1/namespaces/org1/pods/gw-a").await;
        assert_eq!(body["metadata"]["labels"][LEADER_LABEL], "true");
        send.send_response(json_response(200, &pod("gw-a", true)));
    };
    let (r, ()) = tokio::join!(mark(&pods, "gw-a", true), server);
    r.expect("mark as leader");

    // still the leader, already labelled alone: one list, no write
    let server = async {
        let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/org1/pods").await;
        send.send_response(json_response(
            200,
            &json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("gw-a", true)] }),
        ));
    };
    let (r, ()) = tokio::join!(mark(&pods, "gw-a", true), server);
    r.expect("steady leader");

    // the Lease lost: the label comes off its own pod
    let server = async {
        let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/org1/pods/gw-a").await;
        send.send_response(json_response(200, &pod("gw-a", true)));
        let (body, send) = expect(&mut handle, "PATCH", "/api/v1/namespaces/org1/pods/gw-a").await;
        assert_eq!(body["metadata"]["labels"][LEADER_LABEL], Value::Null);
        send.send_response(json_response(200, &pod("gw-a", false)));
    };
    let (r, ()) = tokio::join!(mark(&pods, "gw-a", false), server);
    r.expect("step down");
    // nothing else was asked
    assert!(
        tokio::time::timeout(Duration::from_millis(50), handle.next_request())
            .await
            .is_err(),
        "no further request"
    );
}

const NODES: &str = "/apis/fedgw.io/v1alpha1/namespaces/org1/consortiumnodes";
const SERVICES: &str = "/api/v1/namespaces/org1/services";
const CONFIG_MAPS: &str = "/api/v1/namespaces/org1/configmaps";
const SECRETS: &str = "/api/v1/namespaces/org1/secrets";

/// What the watches deliver: every object the server holds now, as a re-list.
fn relist(api: &fake_api::FakeApi, index: &mut Index) {
    fn feed<K: kube::Resource + serde::de::DeserializeOwned>(
        cache: &mut fedgw_controlplane::k8s::index::Cache<K>,
        objects: Vec<Value>,
    ) {
        cache.event(Event::Init);
        for o in objects {
            cache.event(Event::InitApply(
                serde_json::from_value(o).expect("an object"),
            ));
        }
        cache.event(Event::InitDone);
    }
    feed(&mut index.nodes, api.list(NODES));
    feed(&mut index.services, api.list(SERVICES));
    feed(&mut index.secrets, api.list(SECRETS));
    feed(
        &mut index.config_maps,
        api.list(CONFIG_MAPS)
            .into_iter()
            .filter(|c| c["metadata"]["name"] == "fedgw-peers")
            .collect(),
    );
}

/// One reconcile period as `run` has it: the gateway's view read, a reconcile, then the
/// watches' events.
async fn period(
    api: &fake_api::FakeApi,
    r: &mut Reconciler<FakeGateway>,
    index: &mut Index,
) -> Outcome {
    r.refresh(index).await.expect("gateway");
    let outcome = tokio::time::timeout(WAIT, r.reconcile(index, || true))
        .await
        .expect("a bounded reconcile")
        .expect("reconcile");
    relist(api, index);
    outcome
}

fn seed_object<T: serde::Serialize>(api: &fake_api::FakeApi, collection: &str, obj: &T) {
    api.seed(collection, serde_json::to_value(obj).expect("json"));
}

#[tokio::test]
async fn a_steady_state_writes_nothing_and_statuses_hold_no_stale_fields() {
    let api = fake_api::FakeApi::new();
    // node1 waits for its Service first; validator2 gets a Service of its own
    seed_object(&api, NODES, &node_cr());
    let mut selected = node_cr();
    selected.metadata.name = Some("validator2".into());
    selected.spec.service = None;
    selected.spec.pod_selector = Some(BTreeMap::from([("app".into(), "besu".into())]));
    seed_object(&api, NODES, &selected);

    let gateway = FakeGateway::new(vec![remote_node()]);
    let mut r = Reconciler::new(api.client("org1"), "org1", gateway.clone());
    let mut index = Index::new(settings());
    relist(&api, &mut index);

    period(&api, &mut r, &mut index).await;
    let node1 = api.get(NODES, "node1").expect("node1");
    assert_eq!(node1["status"]["state"], "Pending");
    assert_eq!(
        node1["status"]["message"],
        r#"waiting for Service "quorum-node1""#
    );

    // the Service appears (created by the node's own chart)
    seed_object(&api, SERVICES, &service("quorum-node1", "10.96.1.1", false));
    relist(&api, &mut index);
    for _ in 0..3 {
        period(&api, &mut r, &mut index).await;
    }
    for name in ["node1", "validator2"] {
        let status = &api.get(NODES, name).expect(name)["status"];
        assert_eq!(status["state"], "Registered", "{name}: {status}");
        assert!(
            status.get("message").is_none(),
            "{name}: no stale message: {status}"
        );
        assert_eq!(status["observedGeneration"], 1);
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Ready", "Registered"]);
    }
    assert!(api.get(SERVICES, "fedgw-org2-node1").is_some());
    assert!(api.get(SERVICES, "fedgw-node-validator2").is_some());

    // steady: several more periods write nothing
    let settled = api.writes().len();
    for _ in 0..5 {
        assert_eq!(period(&api, &mut r, &mut index).await, Outcome::Done);
    }
    assert_eq!(api.writes()[settled..], [], "no write in a steady state");
    let calls = gateway.calls().len();
    period(&api, &mut r, &mut index).await;
    assert_eq!(gateway.calls().len(), calls, "nor a gateway call");

    // the node's Service goes away: Pending with its message, and no DNS name left over
    let before = api.writes().len();
    api.delete(SERVICES, "quorum-node1");
    relist(&api, &mut index);
    period(&api, &mut r, &mut index).await;
    let status = &api.get(NODES, "node1").expect("node1")["status"];
    assert_eq!(status["state"], "Pending", "{status}");
    assert!(
        status.get("dnsName").is_none(),
        "no stale dnsName: {status}"
    );
    let status_writes = api.writes()[before..]
        .iter()
        .filter(|(_, p)| p.ends_with("/node1/status"))
        .count();
    assert_eq!(status_writes, 1, "one status write per change");
    let settled = api.writes().len();
    for _ in 0..3 {
        period(&api, &mut r, &mut index).await;
    }
    assert_eq!(api.writes().len(), settled);
}

#[tokio::test]
async fn a_new_resource_never_takes_a_registered_name() {
    let api = fake_api::FakeApi::new();
    seed_object(&api, NODES, &node_cr());
    seed_object(&api, SERVICES, &service("quorum-node1", "10.96.1.1", false));
    let gateway = FakeGateway::new(vec![]);
    let mut r = Reconciler::new(api.client("org1"), "org1", gateway.clone());
    let mut index = Index::new(settings());
    relist(&api, &mut index);
    for _ in 0..2 {
        period(&api, &mut r, &mut index).await;
    }
    assert_eq!(
        api.get(NODES, "node1").expect("node1")["status"]["state"],
        "Registered"
    );

    // "dup" sorts before "node1" and names the same node with other ports
    let mut dup = node_cr();
    dup.metadata.name = Some("dup".into());
    dup.spec.node_name = Some("node1".into());
    dup.spec.ports.p2p = Some(30399);
    seed_object(&api, NODES, &dup);
    relist(&api, &mut index);
    let calls = gateway.calls().len();
    for _ in 0..2 {
        period(&api, &mut r, &mut index).await;
    }
    assert_eq!(gateway.calls().len(), calls, "node1 is left as registered");
    let status = &api.get(NODES, "dup").expect("dup")["status"];
    assert_eq!(status["state"], "Error");
    assert_eq!(status["conditions"][0]["reason"], "NameConflict");
    assert_eq!(
        api.get(NODES, "node1").expect("node1")["status"]["state"],
        "Registered"
    );

    // the controller restarts: a fresh index decides the same from the stored statuses
    let mut index = Index::new(settings());
    relist(&api, &mut index);
    let writes = api.writes().len();
    period(&api, &mut r, &mut index).await;
    assert_eq!(
        api.writes().len(),
        writes,
        "nothing to change after a restart"
    );
}

#[tokio::test]
async fn the_fake_api_server_keeps_what_a_merge_patch_leaves_out_and_removes_nulls() {
    let api = fake_api::FakeApi::new();
    let mut cr = node_cr();
    cr.status = Some(fedgw_controlplane::k8s::crd::ConsortiumNodeStatus {
        state: Some("Pending".into()),
        message: Some("waiting".into()),
        ..Default::default()
    });
    seed_object(&api, NODES, &cr);
    let nodes: kube::Api<ConsortiumNode> = kube::Api::namespaced(api.client("org1"), "org1");
    let pp = kube::api::PatchParams::default();

    // RFC 7386: an absent field stays
    let patch = json!({"status": {"state": "Registered"}});
    let patched = nodes
        .patch_status("node1", &pp, &kube::api::Patch::Merge(&patch))
        .await
        .expect("patch");
    let status = patched.status.expect("status");
    assert_eq!(status.message.as_deref(), Some("waiting"), "kept");
    // null removes it
    let patch = json!({"status": {"message": null}});
    let patched = nodes
        .patch_status("node1", &pp, &kube::api::Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(patched.status.expect("status").message, None, "removed");
    // the spec is not the status subresource's to change, and the generation stays
    let patch = json!({"spec": {"raftId": 9}, "status": {"state": "Error"}});
    let patched = nodes
        .patch_status("node1", &pp, &kube::api::Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(patched.spec.raft_id, Some(1));
    assert_eq!(patched.metadata.generation, Some(1));
    assert_eq!(api.writes().len(), 3, "every write counted");
}
