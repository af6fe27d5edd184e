//! One scenario for the whole controller (`run`, as the sidecar runs it) against an API server:
//! the stateful fake (the `controller` module) or a real kube-apiserver (`apiserver`), with
//! a fake gateway on a Unix socket. Register, Service and ConfigMap, a steady state without
//! writes, status transitions, a duplicate name, both targets, delete, restart, and two
//! replicas with a leader kill. Every wait is a bounded poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fedgw_controlplane::k8s::crd::{Client, ConsortiumNode, ConsortiumNodeSpec, Enode, NodePorts};
use fedgw_controlplane::k8s::health::Health;
use fedgw_controlplane::k8s::index::Settings;
use fedgw_controlplane::k8s::leader::LEADER_LABEL;
use fedgw_controlplane::k8s::run::{RunConfig, RunError, run};
use fedgw_proto::v1 as pb;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::fake_gateway::FakeAdmin;

/// Every write the API server saw so far: method and path.
pub type Writes = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// How long any one expected change may take (generous: a loaded machine, a real server).
const BOUND: Duration = Duration::from_secs(30);
/// The Lease duration: renewed, and ticked by followers, every 10 s.
const LEASE_SECONDS: u64 = 30;
/// SEC 2 generator G: the public key of private key 1.
const G: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                 483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

/// A namespace with a fake gateway beside it.
pub struct Site {
    /// A client of the API server.
    pub client: kube::Client,
    /// The namespace the controllers run in.
    pub ns: String,
    writes: Writes,
    /// The gateway every controller of the site talks to.
    pub gateway: FakeAdmin,
    dir: tempfile::TempDir,
    stop_gateway: CancellationToken,
    /// Whether the API server enforces the CRD's validation rules (a real one does).
    pub validates: bool,
}

/// A running controller.
pub struct Controller {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    /// Its probe state.
    pub health: Health,
}

impl Controller {
    /// SIGTERM: stops it and waits (bounded) until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the controller stops")
            .expect("task")
            .expect("run");
    }
}

/// The remote node org2/node1 in the gateway's view, on local ports 41000/41001.
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

fn node(name: &str, node_name: Option<&str>, p2p: u16) -> ConsortiumNode {
    ConsortiumNode::new(
        name,
        ConsortiumNodeSpec {
            node_name: node_name.map(str::to_owned),
            client: Client::Goquorum,
            service: Some("quorum-node1".into()),
            pod_selector: None,
            hosts: vec![],
            ports: NodePorts {
                p2p: Some(p2p),
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
    )
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "ClusterIP", "selector": {"app": name},
                 "ports": [{"name": "p2p", "port": 30303, "protocol": "TCP"}]}
    }))
    .expect("a Service")
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fedgw"}},
        "spec": {"containers": [{"name": "gateway", "image": "fedgw:dev"}]}
    }))
    .expect("a Pod")
}

impl Site {
    /// A site in `ns` of the server `client` reaches; `writes` reports what it was asked to
    /// write.
    pub fn new(client: kube::Client, ns: &str, writes: Writes, validates: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let gateway = FakeAdmin::new(vec![remote_node()]);
        let stop_gateway = CancellationToken::new();
        gateway.serve(&dir.path().join("admin.sock"), stop_gateway.clone());
        Self {
            client,
            ns: ns.to_owned(),
            writes,
            gateway,
            dir,
            stop_gateway,
            validates,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Starts a controller with pod name `identity`.
    pub fn start(&self, identity: &str) -> Controller {
        let health = Health::new(Duration::from_secs(60));
        let cfg = RunConfig {
            settings: Settings {
                namespace: self.ns.clone(),
                config_map: "fedgw-peers".into(),
                gateway_selector: BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "fedgw".into()),
                    (LEADER_LABEL.into(), "true".into()),
                ]),
                cluster_domain: "cluster.local".into(),
            },
            admin_socket: self.dir.path().join("admin.sock"),
            lease: "fedgw-controlplane".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(LEASE_SECONDS),
            poll: Duration::from_secs(1),
            retry: Duration::from_secs(60),
            health: health.clone(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(self.client.clone(), cfg, stop.clone()));
        Controller { stop, task, health }
    }

    /// Writes other than Lease renewals.
    fn writes(&self) -> Vec<(String, String)> {
        (self.writes)()
            .into_iter()
            .filter(|(_, p)| !p.contains("/leases"))
            .collect()
    }

    /// Asserts that over three reads of the gateway's view (three reconcile periods) nothing
    /// was written but the Lease.
    pub async fn assert_steady(&self, what: &str) {
        let before = self.writes().len();
        let views = self.gateway.views();
        eventually(&format!("{what}: three reconcile periods"), || async {
            (self.gateway.views() >= views + 3).then_some(())
        })
        .await;
        let writes = self.writes();
        assert_eq!(
            writes[before..],
            [],
            "{what}: a steady state writes nothing"
        );
    }

    async fn node_status(&self, name: &str) -> serde_json::Value {
        let n = self.api::<ConsortiumNode>().get(name).await.expect(name);
        serde_json::to_value(n.status).expect("json")
    }

    async fn holder(&self) -> Option<String> {
        let lease = self
            .api::<Lease>()
            .get_opt("fedgw-controlplane")
            .await
            .expect("lease");
        lease.and_then(|l| l.spec?.holder_identity)
    }

    async fn labelled(&self) -> Vec<String> {
        let pods = self
            .api::<Pod>()
            .list(&Default::default())
            .await
            .expect("pods");
        pods.items
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LEADER_LABEL))
                    .is_some_and(|v| v == "true")
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    /// Stops the fake gateway.
    pub fn close(&self) {
        self.stop_gateway.cancel();
    }
}

/// Polls `f` every 50 ms until it gives a value, for at most [`BOUND`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole scenario.
pub async fn lifecycle(site: &Site) {
    let pp = PostParams::default();
    for id in ["gw-a", "gw-b"] {
        site.api::<Pod>().create(&pp, &pod(id)).await.expect("pod");
    }
    let a = site.start("gw-a");

    // register: the node's Service, then the resource
    let services = site.api::<Service>();
    services
        .create(&pp, &service("quorum-node1"))
        .await
        .expect("service");
    let nodes = site.api::<ConsortiumNode>();
    nodes
        .create(&pp, &node("node1", None, 30303))
        .await
        .expect("node1");
    let status = eventually("node1 registered", || async {
        let s = site.node_status("node1").await;
        (s["state"] == "Registered").then_some(s)
    })
    .await;
    assert_eq!(status["dnsName"], "node1.org1.acme.example");
    assert!(status.get("message").is_none(), "{status}");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["type"], "Registered");
    assert!(site.gateway.calls().contains(&"AddNode node1".to_owned()));

    // the remote node's Service, its ClusterIP at the gateway, the rendered files
    let remote = eventually("the remote node's Service", || async {
        services.get_opt("fedgw-org2-node1").await.expect("get")
    })
    .await;
    let spec = remote.spec.expect("spec");
    let ports: Vec<(i32, Option<String>)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port, p.name.clone()))
        .collect();
    assert_eq!(
        ports,
        [(30303, Some("p2p".into())), (50400, Some("raft".into()))]
    );
    assert_eq!(
        spec.selector.expect("selector")[LEADER_LABEL],
        "true",
        "it selects the leader's pod"
    );
    eventually("the ClusterIP at the gateway", || async {
        site.gateway
            .nodes()
            .iter()
            .any(|n| n.org == "org2" && !n.service_ip.is_empty())
            .then_some(())
    })
    .await;
    let files = eventually("the rendered files", || async {
        let cm: Option<ConfigMap> = site
            .api::<ConfigMap>()
            .get_opt("fedgw-peers")
            .await
            .expect("get");
        cm.and_then(|c| c.data)
            .and_then(|d| d.get("static-nodes.json").cloned())
            .filter(|f| f.contains("node1.org1.acme.example"))
    })
    .await;
    assert!(files.contains("node1.org2.acme.example"), "{files}");
    eventually("gw-a leads", || async {
        (site.holder().await.as_deref() == Some("gw-a") && site.labelled().await == ["gw-a"])
            .then_some(())
    })
    .await;
    site.assert_steady("registered").await;

    // status transitions: the Service goes (Pending, no DNS name), and comes back
    services
        .delete("quorum-node1", &DeleteParams::default())
        .await
        .expect("delete service");
    let status = eventually("node1 pending", || async {
        let s = site.node_status("node1").await;
        (s["state"] == "Pending").then_some(s)
    })
    .await;
    assert_eq!(status["message"], r#"waiting for Service "quorum-node1""#);
    assert!(status.get("dnsName").is_none(), "{status}");
    assert_eq!(status["conditions"][0]["reason"], "ServiceNotFound");
    site.assert_steady("pending").await;
    services
        .create(&pp, &service("quorum-node1"))
        .await
        .expect("service");
    let status = eventually("node1 registered again", || async {
        let s = site.node_status("node1").await;
        (s["state"] == "Registered").then_some(s)
    })
    .await;
    assert!(status.get("message").is_none(), "{status}");

    // a duplicate name: the registered resource keeps it
    nodes
        .create(&pp, &node("dup", Some("node1"), 30399))
        .await
        .expect("dup");
    let status = eventually("dup refused", || async {
        let s = site.node_status("dup").await;
        (s["state"] == "Error").then_some(s)
    })
    .await;
    assert_eq!(status["conditions"][0]["reason"], "NameConflict");
    assert_eq!(site.node_status("node1").await["state"], "Registered");
    let held = site.gateway.nodes();
    let node1 = held
        .iter()
        .find(|n| n.org == "org1" && n.name == "node1")
        .expect("node1 at the gateway");
    assert_eq!(node1.record.as_ref().map(|r| r.p2p_port), Some(30303));
    site.assert_steady("a name conflict").await;

    // both a Service and a pod selector
    let mut both = node("both", None, 30303);
    both.spec.pod_selector = Some(BTreeMap::from([("app".into(), "x".into())]));
    match nodes.create(&pp, &both).await {
        Err(kube::Error::Api(s)) if site.validates => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("not both"), "{s:?}");
        }
        Ok(_) if !site.validates => {
            let status = eventually("both refused", || async {
                let s = site.node_status("both").await;
                (s["state"] == "Error").then_some(s)
            })
            .await;
            assert_eq!(status["conditions"][0]["reason"], "InvalidTarget");
            nodes
                .delete("both", &DeleteParams::default())
                .await
                .expect("delete both");
        }
        other => panic!("both targets: {other:?}"),
    }

    // delete: the conflicting resource first, then the node
    nodes
        .delete("dup", &DeleteParams::default())
        .await
        .expect("delete dup");
    site.assert_steady("dup deleted").await;
    nodes
        .delete("node1", &DeleteParams::default())
        .await
        .expect("delete node1");
    eventually("node1 removed at the gateway", || async {
        (!site
            .gateway
            .nodes()
            .iter()
            .any(|n| n.org == "org1" && n.name == "node1"))
        .then_some(())
    })
    .await;
    assert!(
        site.gateway
            .calls()
            .contains(&"RemoveNode node1".to_owned())
    );
    let files = eventually("node1 gone from the files", || async {
        let cm: Option<ConfigMap> = site
            .api::<ConfigMap>()
            .get_opt("fedgw-peers")
            .await
            .expect("get");
        cm.and_then(|c| c.data)
            .and_then(|d| d.get("static-nodes.json").cloned())
            .filter(|f| !f.contains("node1.org1.acme.example"))
    })
    .await;
    assert!(files.contains("node1.org2.acme.example"));

    // restart: a new controller over the same state finds nothing to change
    nodes
        .create(&pp, &node("node1", None, 30303))
        .await
        .expect("node1");
    eventually("node1 registered before the restart", || async {
        (site.node_status("node1").await["state"] == "Registered").then_some(())
    })
    .await;
    site.assert_steady("before the restart").await;
    a.stop().await;
    assert_eq!(site.holder().await, None, "released on shutdown");
    let before = site.writes().len();
    let a = site.start("gw-a");
    eventually("the restarted controller is ready", || async {
        a.health.ready().then_some(())
    })
    .await;
    site.assert_steady("after the restart").await;
    let rewrites: Vec<_> = site.writes()[before..]
        .iter()
        .filter(|(_, p)| !p.contains("/pods/"))
        .cloned()
        .collect();
    assert_eq!(rewrites, [], "a restart rewrites nothing");

    // two replicas, and the leader killed: the other leads within 5 s (the Lease lasts 30 s)
    let b = site.start("gw-b");
    eventually("gw-b is ready", || async { b.health.ready().then_some(()) }).await;
    eventually("gw-a leads", || async {
        (site.holder().await.as_deref() == Some("gw-a")).then_some(())
    })
    .await;
    let killed = tokio::time::Instant::now();
    a.stop().await;
    eventually("gw-b takes over", || async {
        (site.holder().await.as_deref() == Some("gw-b") && site.labelled().await == ["gw-b"])
            .then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "hand-over took {took:?}");
    site.assert_steady("after the hand-over").await;
    b.stop().await;
    site.close();
}
