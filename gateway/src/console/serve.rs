//! The console on its own address: an accept loop with a bounded number of connections, TLS
//! (gateway leaf, optional client certificates from this org's CA) on non-loopback addresses,
//! HTTP/1.1 with bounded header read time and connection lifetime.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use fedgw_certs::tls::ReloadableIdentity;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::{ConsoleError, VerifiedClient};

/// Connections the console serves at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest a client may take for its TLS handshake or a request's headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one connection stays open (a polling page reconnects).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Largest request head (request line and headers), bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Wait after a failed accept (out of descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Presents the gateway leaf, following its renewal.
#[derive(Debug)]
struct Leaf(ReloadableIdentity);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// The console's TLS server config: TLS 1.3, the gateway leaf, ALPN `http/1.1`, and with
/// `client_ca` client certificates that chain to it accepted (not required: a bearer token is
/// the other way in).
pub fn tls_config(
    identity: &ReloadableIdentity,
    client_ca: Option<CertificateDer<'static>>,
) -> Result<rustls::ServerConfig, ConsoleError> {
    let provider = fedgw_certs::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConsoleError::Tls)?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(ca)
                .map_err(|e| ConsoleError::ClientCa(e.to_string()))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ConsoleError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Leaf(identity.clone())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` until `shutdown`: over TLS with `tls`, plain HTTP without.
/// A connection whose client certificate was verified carries [`VerifiedClient`] on each of its
/// requests. Connections in flight finish within [`MAX_CONNECTION_AGE`] after shutdown at most
/// (the caller's drain bounds it further).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "console accept failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (router, acceptor, shutdown) = (router.clone(), acceptor.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let served = async {
                match acceptor {
                    None => connection(tcp, router, false, shutdown).await,
                    Some(acceptor) => {
                        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                            .map_err(|_| "TLS handshake timed out".to_owned())?
                            .map_err(|e| format!("TLS handshake failed: {e}"))?;
                        let verified = tls.get_ref().1.peer_certificates().is_some();
                        connection(tls, router, verified, shutdown).await
                    }
                }
            };
            match tokio::time::timeout(MAX_CONNECTION_AGE, served).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => debug!(peer = %peer, error = %e, "console connection failed"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it closes or `shutdown`.
async fn connection<S>(
    io: S,
    router: Router,
    verified: bool,
    shutdown: CancellationToken,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if verified {
                request.extensions_mut().insert(VerifiedClient);
            }
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(|e| e.to_string()),
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map_err(|e| e.to_string())
        }
    }
}
