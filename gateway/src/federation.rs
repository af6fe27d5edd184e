//! Gateway-to-gateway gRPC over mutual TLS (ALPN `h2`). For now one call, `Hello`, which lets
//! each side confirm who the other is; membership sync builds on the same connections.

use std::sync::Arc;
use std::time::Duration;

use fedgw_certs::{PeerIdentity, RevocationSet};
use fedgw_proto::v1 as pb;
use fedgw_proto::v1::federation_client::FederationClient;
use tonic::{Request, Response, Status};

use tokio_stream::StreamExt as _;

use crate::listener::ConnInfo;
use crate::membership::{GatewayId, Membership, sync};
use crate::metrics::Metrics;
use crate::net::{self, DialError};
use crate::store::audit::{MAX_DIGEST_RECORDS, RecordsDigest};

/// Converts an identity to its wire form.
pub fn identity_msg(id: &PeerIdentity) -> pb::PeerIdentity {
    pb::PeerIdentity {
        org: id.org.clone(),
        dns_name: id.dns_name.clone(),
        spiffe_id: id.spiffe_id.clone().unwrap_or_default(),
    }
}

/// The federation service of one gateway.
#[derive(Debug)]
pub struct FederationService {
    /// This gateway's own identity.
    pub identity: PeerIdentity,
    /// This gateway's site.
    pub site: String,
    /// Revoked orgs (also enforced at handshake; checked again per call for long-lived
    /// connections).
    pub revoked: RevocationSet,
    /// Metrics.
    pub metrics: Metrics,
    /// Membership, for sync streams.
    pub membership: Membership,
}

impl FederationService {
    fn caller(&self, extensions: &tonic::Extensions) -> Result<PeerIdentity, Status> {
        let peer = extensions
            .get::<ConnInfo>()
            .and_then(|i| i.peer.clone())
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        if self.revoked.contains(&peer.org) {
            return Err(Status::permission_denied("org is revoked"));
        }
        Ok(peer)
    }
}

type SyncStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SyncMessage, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<tonic::Streaming<pb::SyncMessage>>,
    ) -> Result<Response<SyncStream>, Status> {
        let caller = self.caller(request.extensions())?;
        let domain = &self.membership.config().domain;
        let peer = GatewayId::from_identity(&caller, domain)
            .ok_or_else(|| Status::permission_denied("caller is not a gateway certificate"))?;
        if self.membership.config().deny.contains(&peer.to_string()) {
            return Err(Status::permission_denied("link refused by configuration"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(sync::QUEUE);
        let cancel = self.membership.revocation().token(&peer.org);
        let m = self.membership.clone();
        let inbound = request.into_inner();
        m.tracker()
            .spawn(sync::run(m.clone(), peer, false, inbound, tx, cancel));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn audit_digest(
        &self,
        request: Request<pb::AuditDigestRequest>,
    ) -> Result<Response<pb::AuditDigestResponse>, Status> {
        self.caller(request.extensions())?;
        let store = self.membership.store().clone();
        let digest = tokio::task::spawn_blocking(move || store.records_digest())
            .await
            .map_err(|e| Status::internal(format!("reading the records failed: {e}")))?
            .map_err(|e| Status::internal(format!("reading the records failed: {e}")))?;
        Ok(Response::new(digest_msg(&digest)))
    }

    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let caller = self.caller(request.extensions())?;
        self.metrics.hello(&caller.org);
        Ok(Response::new(pb::HelloResponse {
            server: Some(identity_msg(&self.identity)),
            caller: Some(identity_msg(&caller)),
            server_site: self.site.clone(),
            server_unix_ms: unix_ms(std::time::SystemTime::now()),
        }))
    }
}

/// The outcome of a Hello: the server as this side verified it, and this side as the server saw
/// it.
#[derive(Debug, Clone)]
pub struct HelloOutcome {
    /// The server's identity, from its verified certificate.
    pub server: PeerIdentity,
    /// What the server says it read from our certificate.
    pub seen_as: pb::PeerIdentity,
    /// The server's site.
    pub server_site: String,
    /// The server's leaf certificate's `notAfter` (`None` if it does not parse).
    pub server_not_after: Option<std::time::SystemTime>,
    /// The server's clock when it answered, Unix milliseconds (0: an older gateway that does
    /// not say).
    pub server_unix_ms: i64,
    /// When the call was sent and its answer arrived, by this host's wall clock.
    pub sent: std::time::SystemTime,
    /// See [`sent`](Self::sent).
    pub answered: std::time::SystemTime,
}

/// Why a Hello failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Dial or handshake failure.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The server's certificate names no identity (cannot happen after verification).
    #[error("server presented no usable identity")]
    NoIdentity,
    /// The call failed.
    #[error("the call failed: {0}")]
    Call(String),
}

/// Dials a peer gateway's federation API over mutual TLS: a client for one call, the server's
/// identity from its leaf, and that leaf's notAfter.
async fn dial_peer(
    endpoint: &str,
    config: Arc<rustls::ClientConfig>,
    domain: &str,
    timeout: Duration,
) -> Result<
    (
        FederationClient<tonic::transport::Channel>,
        PeerIdentity,
        Option<std::time::SystemTime>,
    ),
    HelloError,
> {
    let tls = net::dial_tls(endpoint, config, timeout).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let not_after = leaf.and_then(|leaf| fedgw_certs::pki::not_after(leaf).ok());
    let server = leaf
        .and_then(|leaf| fedgw_certs::peer_identity(leaf, domain).ok())
        .ok_or(HelloError::NoIdentity)?;
    let channel = net::single_use_channel(tls)
        .await
        .map_err(|e| HelloError::Call(e.to_string()))?;
    let client =
        FederationClient::new(channel).max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES);
    Ok((client, server, not_after))
}

/// Dials `endpoint` with the federation client `config` and calls Hello.
pub async fn hello(
    endpoint: &str,
    config: Arc<rustls::ClientConfig>,
    domain: &str,
    site: &str,
    timeout: Duration,
) -> Result<HelloOutcome, HelloError> {
    let (mut client, server, server_not_after) =
        dial_peer(endpoint, config, domain, timeout).await?;
    let call = client.hello(pb::HelloRequest {
        site: site.to_owned(),
    });
    let sent = std::time::SystemTime::now();
    let resp = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| HelloError::Call("timed out".into()))?
        .map_err(|s| HelloError::Call(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let answered = std::time::SystemTime::now();
    Ok(HelloOutcome {
        server,
        seen_as: resp.caller.unwrap_or_default(),
        server_site: resp.server_site,
        server_not_after,
        server_unix_ms: resp.server_unix_ms,
        sent,
        answered,
    })
}

/// Unix milliseconds of `t` (0 before the epoch, `i64::MAX` past year 292 million).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wire form of a records digest: every record listed unless there are more than
/// [`MAX_DIGEST_RECORDS`].
pub fn digest_msg(d: &RecordsDigest) -> pb::AuditDigestResponse {
    let complete = d.records.len() <= MAX_DIGEST_RECORDS;
    pb::AuditDigestResponse {
        digest: d.digest.to_vec(),
        count: u32::try_from(d.records.len()).unwrap_or(u32::MAX),
        records: if complete {
            d.records
                .iter()
                .map(|(key, h)| pb::RecordHash {
                    key: key.clone(),
                    sha256: h.to_vec(),
                })
                .collect()
        } else {
            vec![]
        },
        complete,
    }
}

/// A records digest as a gateway sent it: the digest, and the records when listed
/// (`None` when the sender had too many to list). Hashes that are not 32 bytes are dropped.
pub fn digest_from_msg(m: &pb::AuditDigestResponse) -> ([u8; 32], Option<RecordsDigest>) {
    let digest = <[u8; 32]>::try_from(m.digest.as_slice()).unwrap_or_default();
    let listed = m.complete.then(|| {
        RecordsDigest::from_hashes(
            m.records
                .iter()
                .filter_map(|r| {
                    Some((
                        r.key.clone(),
                        <[u8; 32]>::try_from(r.sha256.as_slice()).ok()?,
                    ))
                })
                .collect(),
        )
    });
    (digest, listed)
}

/// Dials `endpoint` with the federation client `config` and asks for its records digest.
pub async fn audit_digest(
    endpoint: &str,
    config: Arc<rustls::ClientConfig>,
    domain: &str,
    timeout: Duration,
) -> Result<(PeerIdentity, pb::AuditDigestResponse), HelloError> {
    let (mut client, server, _) = dial_peer(endpoint, config, domain, timeout).await?;
    let resp = tokio::time::timeout(timeout, client.audit_digest(pb::AuditDigestRequest {}))
        .await
        .map_err(|_| HelloError::Call("timed out".into()))?
        .map_err(|s| HelloError::Call(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    Ok((server, resp))
}
