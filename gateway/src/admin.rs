//! The admin API: gRPC on a Unix socket in the data dir (`DIR/admin.sock`, mode 0600), used by
//! the CLI while `fedgw run` is up. Access is by filesystem permission on the data dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fedgw_proto::v1 as pb;
use fedgw_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::join::server::{InviteError, InviteSpec, create_invite};
use crate::store::Store;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    /// The store.
    pub store: Arc<Store>,
    /// The gateway config.
    pub config: Config,
    /// The consortium root certificate, DER.
    pub root_cert: Vec<u8>,
    /// The advertised endpoints with the bound port filled in.
    pub advertise: Vec<String>,
}

fn status(e: InviteError) -> Status {
    match e {
        InviteError::NotRootHolder => Status::failed_precondition(e.to_string()),
        InviteError::Name(_) | InviteError::Range(_) | InviteError::Endpoint(_) => {
            Status::invalid_argument(e.to_string())
        }
        InviteError::AlreadyMember(_) => Status::already_exists(e.to_string()),
        InviteError::Store(_) | InviteError::Pki(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        let req = request.into_inner();
        let (store, config, root_cert) = (
            self.store.clone(),
            self.config.clone(),
            self.root_cert.clone(),
        );
        let endpoint = self.advertise.first().cloned().unwrap_or_default();
        let (token, expires_unix) = tokio::task::spawn_blocking(move || {
            create_invite(
                &store,
                &config,
                &root_cert,
                &endpoint,
                &InviteSpec {
                    org: req.org,
                    ttl: Duration::from_secs(req.ttl_secs),
                    uses: req.uses,
                },
                SystemTime::now(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        Ok(Response::new(pb::CreateInviteResponse {
            token: token.to_text().to_string(),
            token_id: token.id.clone(),
            expires_unix: i64::try_from(expires_unix).unwrap_or(i64::MAX),
        }))
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    service: Arc<AdminService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(
            pb::admin_server::AdminServer::from_arc(service)
                .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
}

/// Connects to the admin socket at `path`.
pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://admin.fedgw.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(AdminClient::new(channel).max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES))
}
