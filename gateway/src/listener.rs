//! The gateway port: one TCP listener, TLS 1.3, protocols told apart by ALPN.
//!
//! The accept loop hands each TCP connection to a tracked task that reads the ClientHello,
//! picks the server config for its ALPN (`fedgw-join/1` → join; `h2` → federation gRPC and
//! `fedgw/1` → TCP+TLS tunnel, both with client auth), completes the handshake under a
//! timeout, and passes the stream to that protocol's server through a bounded channel. A
//! connection offering none of them is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fedgw_certs::PeerIdentity;
use fedgw_certs::tls::{ALPN_H2, ALPN_JOIN, ALPN_TUNNEL};
use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may be in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// What the server knows about a TLS connection, available to gRPC handlers as a request
/// extension (`request.extensions().get::<ConnInfo>()`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer address.
    pub remote: SocketAddr,
    /// The verified client identity (federation connections only).
    pub peer: Option<PeerIdentity>,
    /// 32 bytes exported from the TLS session (label `EXPORTER-fedgw-join-v1`): binds a join
    /// proof to this connection.
    pub channel_binding: [u8; 32],
}

/// Most join connections open at once (they are unauthenticated); further ones are refused.
pub const MAX_JOIN_CONNECTIONS: usize = 64;
/// A join connection is closed after this long, whatever it is doing: a join is one exchange,
/// and a joiner waiting for approvals reconnects for every attempt.
pub const JOIN_CONNECTION_MAX_AGE: Duration = Duration::from_secs(30);

/// A future that resolves, with the reason, when a connection must end.
pub type EndWhen = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A server-side TLS connection with its [`ConnInfo`]. It ends, failing its next read or write,
/// when its org is revoked (federation) or it reaches [`JOIN_CONNECTION_MAX_AGE`] (join); a join
/// connection also holds one of the [`MAX_JOIN_CONNECTIONS`] slots while it lives.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    end: Option<EndWhen>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// What the server knows about the connection.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The TCP socket, the TLS session (handshake done) and what ends the connection, for a
    /// protocol that drives TLS itself (the tunnel's yamux).
    pub fn into_parts(self) -> (TcpStream, rustls::ServerConnection, Option<EndWhen>) {
        let (tcp, tls) = self.stream.into_inner();
        (tcp, tls, self.end)
    }

    fn check_killed(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(reason) = end.as_mut().poll(cx)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                reason,
            ));
        }
        Ok(())
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.check_killed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The server configs and where accepted streams go.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Config for ALPN `fedgw-join/1`.
    pub join_config: Arc<ServerConfig>,
    /// Config for ALPN `h2` (client auth required).
    pub federation_config: Arc<ServerConfig>,
    /// The consortium domain, to read peer identities.
    pub domain: String,
    /// Receives join connections.
    pub join_tx: mpsc::Sender<TlsConn>,
    /// Receives federation connections.
    pub federation_tx: mpsc::Sender<TlsConn>,
    /// Config for ALPN `fedgw/1` (TCP+TLS tunnels, client auth required).
    pub tunnel_config: Arc<ServerConfig>,
    /// Receives tunnel connections.
    pub tunnel_tx: mpsc::Sender<TlsConn>,
    /// Revocation tokens per org, to close a revoked org's live connections.
    pub revocation: crate::membership::Revocation,
    /// Slots for join connections ([`MAX_JOIN_CONNECTIONS`]).
    pub join_slots: Arc<Semaphore>,
}

/// Accepts on `listener` until `shutdown`; handshakes run as tasks on `tracker`.
pub async fn serve(
    listener: TcpListener,
    dispatch: Dispatch,
    metrics: Metrics,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let dispatch = dispatch.clone();
        let metrics = metrics.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, remote, &dispatch)).await {
                Ok(Ok(kind)) => metrics.handshake(kind, "ok"),
                Ok(Err((kind, e))) => {
                    debug!(%remote, error = %e, "gateway handshake failed");
                    metrics.handshake(kind, "failed");
                }
                Err(_) => {
                    debug!(%remote, "gateway handshake timed out");
                    metrics.handshake("unknown", "timeout");
                }
            }
        });
    }
}

type HandshakeError = (&'static str, std::io::Error);

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    d: &Dispatch,
) -> Result<&'static str, HandshakeError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
        .await
        .map_err(|e| ("unknown", e))?;
    let alpn: Vec<Vec<u8>> = start
        .client_hello()
        .alpn()
        .map(|a| a.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let mut slot = None;
    let (kind, config, tx) = if alpn.iter().any(|p| p == ALPN_JOIN) {
        // taken before the handshake completes, so a refused client costs no signature
        slot = Some(
            d.join_slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| ("join", std::io::Error::other("too many join connections")))?,
        );
        ("join", d.join_config.clone(), &d.join_tx)
    } else if alpn.iter().any(|p| p == ALPN_H2) {
        ("federation", d.federation_config.clone(), &d.federation_tx)
    } else if alpn.iter().any(|p| p == ALPN_TUNNEL) {
        ("tunnel", d.tunnel_config.clone(), &d.tunnel_tx)
    } else {
        return Err((
            "unknown",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no supported ALPN protocol",
            ),
        ));
    };
    let stream = start.into_stream(config).await.map_err(|e| (kind, e))?;
    let conn = stream.get_ref().1;
    let peer = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Some(fedgw_certs::peer_identity(leaf, &d.domain).map_err(|e| {
            (
                kind,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?),
        None => None,
    };
    let channel_binding = conn
        .export_keying_material([0u8; 32], fedgw_certs::token::JOIN_EXPORTER_LABEL, None)
        .map_err(|e| (kind, std::io::Error::other(e)))?;
    let end: EndWhen = match &peer {
        Some(p) => {
            let revoked = d.revocation.token(&p.org).cancelled_owned();
            Box::pin(async move {
                revoked.await;
                "peer org revoked"
            })
        }
        None => Box::pin(async {
            tokio::time::sleep(JOIN_CONNECTION_MAX_AGE).await;
            "join connection reached its maximum age"
        }),
    };
    let info = ConnInfo {
        remote,
        peer,
        channel_binding,
    };
    tx.send(TlsConn {
        stream,
        info,
        end: Some(end),
        _slot: slot,
    })
    .await
    .map_err(|_| (kind, std::io::Error::other("server is shutting down")))?;
    Ok(kind)
}
