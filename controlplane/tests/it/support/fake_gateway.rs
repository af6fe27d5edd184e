//! A fake gateway admin API on a Unix socket (the controller's `AdminGateway` talks to it as
//! to `fedgw run`): org `org1`, site `dc1` of consortium `acme` (`acme.example`) with members
//! org1 and org2, a view of nodes that `AddNode`, `RemoveNode` and
//! `SetServiceAddress` change, `WatchStatus` with one message now and one per change. Calls
//! are counted.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fedgw_proto::v1 as pb;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    nodes: Vec<pb::NodeInfo>,
    /// Names of the mutating calls, in order.
    calls: Vec<String>,
    /// `ListNodes` calls: one per read of the view (a reconcile period).
    views: usize,
}

/// The fake admin service; clones share state.
#[derive(Clone)]
pub struct FakeAdmin {
    state: Arc<Mutex<State>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl FakeAdmin {
    /// A gateway whose view holds `nodes`.
    pub fn new(nodes: Vec<pb::NodeInfo>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                nodes,
                ..Default::default()
            })),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Serves on a new socket at `path` until `shutdown`.
    pub fn serve(&self, path: &Path, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).expect("bind the admin socket");
        let svc = pb::admin_server::AdminServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
        })
    }

    /// The mutating calls so far (`AddNode node1`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().expect("lock").calls.clone()
    }

    /// How often the view was read (`ListNodes`).
    pub fn views(&self) -> usize {
        self.state.lock().expect("lock").views
    }

    /// The view now.
    pub fn nodes(&self) -> Vec<pb::NodeInfo> {
        self.state.lock().expect("lock").nodes.clone()
    }

    fn status(&self) -> pb::StatusResponse {
        pb::StatusResponse {
            org: "org1".into(),
            site: "dc1".into(),
            ..Default::default()
        }
    }

    fn change(&self, call: String, f: impl FnOnce(&mut Vec<pb::NodeInfo>)) {
        {
            let mut s = self.state.lock().expect("lock");
            s.calls.push(call);
            f(&mut s.nodes);
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The consortium root the fake reports (not a real certificate: the controller only copies
/// it into the Fabric connection profile).
pub const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----\n";

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for FakeAdmin {
    async fn create_invite(
        &self,
        _: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        unimplemented()
    }

    async fn add_nodes(
        &self,
        _: Request<pb::AddNodesRequest>,
    ) -> Result<Response<pb::AddNodesResponse>, Status> {
        unimplemented()
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let spec = request
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("no node"))?;
        let info = pb::NodeInfo {
            org: "org1".into(),
            name: spec.name.clone(),
            record: Some(pb::NodeRecord {
                client: spec.client,
                enode_id: spec.enode_id.clone(),
                p2p_port: spec.p2p_port,
                raft_port: spec.raft_port,
                raft_id: spec.raft_id,
                tessera_keys: spec.tessera_keys.clone(),
                tessera_url: spec.tessera_url.clone(),
                roles: spec.roles.clone(),
                allowed_orgs: spec.allowed_orgs.clone(),
                site: "dc1".into(),
                services: spec.services.clone(),
                ipfs_peer_id: spec.ipfs_peer_id.clone(),
                tls_cert_der: spec.tls_cert_der.clone(),
                raft_learner: spec.raft_learner,
            }),
            local_host: spec.host.clone(),
            local_rpc: spec.rpc_url.clone(),
            dns_name: format!("{}.org1.acme.example", spec.name),
            // as the gateway lists a node with replicas: every address, the first one first
            replicas: if spec.replica_hosts.is_empty() {
                vec![]
            } else {
                std::iter::once(&spec.host)
                    .chain(&spec.replica_hosts)
                    .map(|h| pb::ReplicaInfo {
                        host: h.clone(),
                        up: true,
                    })
                    .collect()
            },
            ..Default::default()
        };
        let out = info.clone();
        self.change(format!("AddNode {}", spec.name), |nodes| {
            nodes.retain(|n| !(n.org == "org1" && n.name == spec.name));
            nodes.push(info);
        });
        Ok(Response::new(out))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let name = request.into_inner().name;
        self.change(format!("RemoveNode {name}"), |nodes| {
            nodes.retain(|n| !(n.org == "org1" && n.name == name));
        });
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let mut s = self.state.lock().expect("lock");
        s.views += 1;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: s.nodes.clone(),
        }))
    }

    async fn list_members(
        &self,
        _: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let member = |org: &str| pb::MemberInfo {
            org: org.into(),
            status: "active".into(),
            ..Default::default()
        };
        Ok(Response::new(pb::ListMembersResponse {
            members: vec![member("org1"), member("org2")],
            consortium: "acme".into(),
            domain: "acme.example".into(),
            root_cert_pem: ROOT_PEM.into(),
            ..Default::default()
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    type WatchStatusStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::StatusResponse, Status>> + Send + 'static>,
    >;

    async fn watch_status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let me = self.clone();
        let mut rx = self.changed.subscribe();
        rx.mark_changed();
        let stream = async_stream(move |tx| async move {
            while rx.changed().await.is_ok() {
                if tx.send(Ok(me.status())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn approve(
        &self,
        _: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        unimplemented()
    }

    async fn revoke(
        &self,
        _: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        unimplemented()
    }

    async fn set_service_address(
        &self,
        request: Request<pb::SetServiceAddressRequest>,
    ) -> Result<Response<pb::SetServiceAddressResponse>, Status> {
        let r = request.into_inner();
        self.change(format!("SetServiceAddress {}/{}", r.org, r.name), |nodes| {
            for n in nodes.iter_mut() {
                if n.org == r.org && n.name == r.name {
                    n.service_ip = r.ip.clone();
                }
            }
        });
        Ok(Response::new(pb::SetServiceAddressResponse {}))
    }

    async fn chain_status(
        &self,
        _: Request<pb::ChainStatusRequest>,
    ) -> Result<Response<pb::ChainStatusResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send + 'static>,
    >;

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        unimplemented()
    }

    async fn list_audit(
        &self,
        _: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        unimplemented()
    }

    async fn publish_cert(
        &self,
        _: Request<pb::PublishCertRequest>,
    ) -> Result<Response<pb::PublishCertResponse>, Status> {
        unimplemented()
    }

    async fn list_certs(
        &self,
        _: Request<pb::ListCertsRequest>,
    ) -> Result<Response<pb::ListCertsResponse>, Status> {
        unimplemented()
    }

    async fn audit_digest(
        &self,
        _: Request<pb::AuditDigestRequest>,
    ) -> Result<Response<pb::AuditDigestResponse>, Status> {
        unimplemented()
    }

    async fn propose_validator(
        &self,
        _: Request<pb::ProposeValidatorRequest>,
    ) -> Result<Response<pb::ProposeValidatorResponse>, Status> {
        unimplemented()
    }

    async fn approve_validator(
        &self,
        _: Request<pb::ApproveValidatorRequest>,
    ) -> Result<Response<pb::ApproveValidatorResponse>, Status> {
        unimplemented()
    }

    async fn withdraw_validator(
        &self,
        _: Request<pb::WithdrawValidatorRequest>,
    ) -> Result<Response<pb::WithdrawValidatorResponse>, Status> {
        unimplemented()
    }
}

/// A stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(
    f: F,
) -> std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::StatusResponse, Status>> + Send + 'static>,
>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::StatusResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
