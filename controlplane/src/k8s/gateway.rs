//! The gateway's admin API as the controller uses it: gRPC over the Unix socket the gateway
//! creates in its data dir (shared with the sidecar through a volume).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedgw_proto::v1 as pb;
use fedgw_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::index::{Consortium, GatewayCall, GatewayView};

/// What the controller needs from a gateway. Implemented over gRPC by [`AdminGateway`], and by
/// fakes in tests.
pub trait Gateway {
    /// `Status`, `ListNodes` and `ListMembers`: who the gateway is, every node in its view and
    /// the consortium's name, domain, root and members.
    fn view(&mut self) -> impl Future<Output = Result<GatewayView, tonic::Status>> + Send;
    /// Makes one call.
    fn call(
        &mut self,
        call: &GatewayCall,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

/// The admin API client over a Unix socket.
#[derive(Debug, Clone)]
pub struct AdminGateway {
    client: AdminClient<Channel>,
}

impl AdminGateway {
    /// A client for the socket at `path`. The channel connects lazily (and reconnects), so
    /// the gateway need not be up yet; each call fails until it is.
    pub fn lazy(path: &Path) -> Self {
        let path: PathBuf = path.to_owned();
        let channel = Endpoint::from_static("http://admin.fedgw.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }));
        Self {
            client: AdminClient::new(channel)
                .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES),
        }
    }

    /// The `WatchStatus` stream: one message now and one per view change.
    pub async fn watch(&mut self) -> Result<tonic::Streaming<pb::StatusResponse>, tonic::Status> {
        Ok(self
            .client
            .watch_status(pb::StatusRequest {})
            .await?
            .into_inner())
    }
}

impl Gateway for AdminGateway {
    async fn view(&mut self) -> Result<GatewayView, tonic::Status> {
        let status = self.client.status(pb::StatusRequest {}).await?.into_inner();
        let nodes = self
            .client
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let members = self
            .client
            .list_members(pb::ListMembersRequest {})
            .await?
            .into_inner();
        Ok(GatewayView {
            org: status.org,
            site: status.site,
            nodes,
            consortium: Consortium::from_members(&members),
        })
    }

    async fn call(&mut self, call: &GatewayCall) -> Result<(), tonic::Status> {
        match call {
            GatewayCall::AddNode(spec) => {
                self.client
                    .add_node(pb::AddNodeRequest {
                        node: Some((**spec).clone()),
                    })
                    .await?;
            }
            GatewayCall::RemoveNode(name) => {
                let r = self
                    .client
                    .remove_node(pb::RemoveNodeRequest { name: name.clone() })
                    .await;
                match r {
                    Ok(_) => {}
                    // already gone: what we wanted
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s),
                }
            }
            GatewayCall::SetServiceAddress { org, name, ip } => {
                self.client
                    .set_service_address(pb::SetServiceAddressRequest {
                        org: org.clone(),
                        name: name.clone(),
                        ip: ip.clone(),
                    })
                    .await?;
            }
        }
        Ok(())
    }
}
