//! The admin API: gRPC on a Unix socket in the data dir (`DIR/admin.sock`, mode 0600), used by
//! the CLI while `fedgw run` is up. Access is by filesystem permission on the data dir.
//!
//! The calls by job: `nodes` (register, remove, list nodes and Service addresses),
//! `members` (invites, approvals, revocations), `report` (status), `validators` (QBFT/IBFT
//! validator proposals and approvals); this module serves
//! them and connects clients.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedgw_proto::v1 as pb;
use fedgw_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

mod audit;
mod members;
mod nodes;
mod report;
mod service;
mod validators;

pub use nodes::{MAX_ADD_NODES, node_record, published_tessera_url};
pub use service::AdminService;

/// The largest piece of a `Snapshot` stream (well under the 1 MiB message limit).
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

impl AdminService {
    /// The status report `fedgw status` shows, from what is known now: advertised names are
    /// shown as last resolved, not resolved again (the console asks every 2 s).
    pub fn status_now(&self) -> pb::StatusResponse {
        let mut status = report::status_of(&self.membership, &self.tunnels, &self.metrics);
        status.advertise = self
            .advertise
            .iter()
            .map(|e| report::advertised(e))
            .collect();
        status
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        members::create_invite(self, request).await
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        nodes::add_node(self, request).await
    }

    async fn add_nodes(
        &self,
        request: Request<pb::AddNodesRequest>,
    ) -> Result<Response<pb::AddNodesResponse>, Status> {
        nodes::add_nodes(self, request).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        nodes::remove_node(self, request).await
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        nodes::list_nodes(self, request).await
    }

    async fn chain_status(
        &self,
        request: Request<pb::ChainStatusRequest>,
    ) -> Result<Response<pb::ChainStatusResponse>, Status> {
        nodes::chain_status(self, request).await
    }

    async fn propose_validator(
        &self,
        request: Request<pb::ProposeValidatorRequest>,
    ) -> Result<Response<pb::ProposeValidatorResponse>, Status> {
        validators::propose(self, request).await
    }

    async fn approve_validator(
        &self,
        request: Request<pb::ApproveValidatorRequest>,
    ) -> Result<Response<pb::ApproveValidatorResponse>, Status> {
        validators::approve(self, request).await
    }

    async fn withdraw_validator(
        &self,
        request: Request<pb::WithdrawValidatorRequest>,
    ) -> Result<Response<pb::WithdrawValidatorResponse>, Status> {
        validators::withdraw(self, request).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        audit::list_audit(self, request).await
    }

    async fn publish_cert(
        &self,
        request: Request<pb::PublishCertRequest>,
    ) -> Result<Response<pb::PublishCertResponse>, Status> {
        audit::publish_cert(self, request).await
    }

    async fn list_certs(
        &self,
        request: Request<pb::ListCertsRequest>,
    ) -> Result<Response<pb::ListCertsResponse>, Status> {
        audit::list_certs(self, request).await
    }

    async fn audit_digest(
        &self,
        request: Request<pb::AuditDigestRequest>,
    ) -> Result<Response<pb::AuditDigestResponse>, Status> {
        audit::audit_digest(self, request).await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        members::list_members(self, request).await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        report::status(self, request).await
    }

    type WatchStatusStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::StatusResponse, Status>> + Send + 'static>,
    >;

    async fn watch_status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let m = self.membership.clone();
        let (tunnels, metrics) = (self.tunnels.clone(), self.metrics.clone());
        let advertise = self.advertise.clone();
        let mut changed = m.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let tracker = m.tracker().clone();
        tracker.spawn(async move {
            loop {
                let mut status = report::status_of(&m, &tunnels, &metrics);
                status.advertise = advertise.iter().map(|e| report::advertised(e)).collect();
                if tx.send(Ok(status)).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    c = changed.changed() => if c.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        members::approve(self, request).await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        members::revoke(self, request).await
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send + 'static>,
    >;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.store.clone();
        let document = tokio::task::spawn_blocking(move || {
            let snapshot = store.snapshot()?;
            Ok::<_, crate::store::StoreError>(
                serde_json::to_vec(&snapshot).expect("a snapshot serialises: maps of strings"),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(|e| Status::internal(format!("reading the store failed: {e}")))?;
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = document
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|c| Ok(pb::SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn set_service_address(
        &self,
        request: Request<pb::SetServiceAddressRequest>,
    ) -> Result<Response<pb::SetServiceAddressResponse>, Status> {
        nodes::set_service_address(self, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    service: Arc<AdminService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let listening = &listener;
    let accepting = accept(
        move || async move { listening.accept().await.map(|(conn, _)| conn) },
        tx,
        shutdown.clone(),
    );
    let server = tonic::transport::Server::builder()
        .add_service(
            pb::admin_server::AdminServer::from_arc(service)
                .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
            shutdown.cancelled_owned(),
        );
    // the accept loop ends on shutdown, and the server then finishes the calls in flight
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served,
        () = accepting => {}
    }
    server.await
}

/// How long the admin socket's accept loop waits after a failed accept (`EMFILE` when the
/// process is out of file descriptors): retrying at once would spin a core, and a
/// connection closing meanwhile frees a descriptor.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts admin connections with `accept_one` (the listener's `accept`) and hands them to the
/// server; a failed accept is logged and retried after [`ACCEPT_BACKOFF`].
async fn accept<C, A, F>(
    mut accept_one: A,
    tx: tokio::sync::mpsc::Sender<C>,
    shutdown: CancellationToken,
) where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<C>>,
{
    loop {
        let accepted = tokio::select! {
            a = accept_one() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(conn) => {
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Longest a connection to the admin socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the admin socket at `path`.
pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    connect_with(path, None).await
}

/// Connects to the admin socket at `path` for the CLI: connecting and every call fail after
/// `timeout` (a call with tonic's `Cancelled`, "Timeout expired"), so a gateway that is
/// overloaded or stuck gets a clear error rather than a command that hangs.
pub async fn connect_cli(
    path: &Path,
    timeout: Duration,
) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    connect_with(path, Some(timeout)).await
}

async fn connect_with(
    path: &Path,
    call_timeout: Option<Duration>,
) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    let path = path.to_owned();
    let mut endpoint = Endpoint::from_static("http://admin.fedgw.invalid")
        .connect_timeout(call_timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT)));
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(AdminClient::new(channel).max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    /// Out of file descriptors, every accept fails at once: the loop retries every
    /// [`super::ACCEPT_BACKOFF`] rather than spinning, and hands on the connection that comes
    /// when a descriptor is free again. The fake accept stops the loop after 1,000 attempts, so
    /// a loop without back-off fails the count instead of hanging the test.
    #[tokio::test(start_paused = true)]
    async fn the_accept_loop_backs_off_while_accepts_fail() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        let attempts = Arc::new(AtomicUsize::new(0));
        let fail_until = Arc::new(AtomicUsize::new(usize::MAX));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let accept_one = {
            let (attempts, fail_until, shutdown) =
                (attempts.clone(), fail_until.clone(), shutdown.clone());
            move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= 1000 {
                    shutdown.cancel();
                }
                let result = if n < fail_until.load(Ordering::SeqCst) {
                    Err(std::io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    Ok(n)
                };
                async move { result }
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let looping = tokio::spawn(super::accept(accept_one, tx, shutdown.clone()));

        let window = Duration::from_secs(1);
        tokio::time::sleep(window).await;
        let tried = attempts.load(Ordering::SeqCst);
        let most = (window.as_millis() / super::ACCEPT_BACKOFF.as_millis()) as usize + 1;
        assert!(
            (most - 1..=most).contains(&tried),
            "{tried} accepts in {window:?}; at most {most} with back-off"
        );

        fail_until.store(tried + 1, Ordering::SeqCst);
        let conn = tokio::time::timeout(window, rx.recv()).await;
        assert_eq!(conn, Ok(Some(tried + 1)), "the next accept succeeds");
        // the server is gone and shutdown asked: the loop ends whatever it was waiting for
        drop(rx);
        shutdown.cancel();
        let ended = tokio::time::timeout(window, looping).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the accept loop ends: {ended:?}"
        );
    }
}
