//! Dialling helpers shared by the join and federation clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The endpoint is not `host:port` with a usable host.
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    /// TCP connect failed or timed out.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed; `source` wraps the rustls error when there is one.
    #[error("TLS handshake with {endpoint} failed")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// The IO error from tokio-rustls.
        #[source]
        source: std::io::Error,
    },
}

impl DialError {
    /// The rustls error behind a handshake failure, if any.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            DialError::Handshake { source, .. } => source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            _ => None,
        }
    }
}

/// The TLS server name for an endpoint's host: an IP address or a DNS name.
pub fn server_name(endpoint: &str) -> Result<ServerName<'static>, DialError> {
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .ok_or_else(|| DialError::Endpoint(endpoint.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| DialError::Endpoint(endpoint.to_owned()))
}

/// Connects to `endpoint` (`host:port`) and completes a TLS handshake with `config`, both within
/// `timeout`.
pub async fn dial_tls(
    endpoint: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, DialError> {
    let name = server_name(endpoint)?;
    let connect_err = |source| DialError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    let handshake_err = |source| DialError::Handshake {
        endpoint: endpoint.to_owned(),
        source,
    };
    tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| handshake_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(handshake_err)
}

/// Wraps an established connection in a tonic channel that uses it and never reconnects.
pub async fn single_use_channel<IO>(io: IO) -> Result<Channel, tonic::transport::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(TokioIo::new(io))));
    Endpoint::from_static("http://fedgw.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let conn = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move { conn.ok_or_else(|| std::io::Error::other("connection already used")) }
        }))
        .await
}

/// The messages of an error's sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
