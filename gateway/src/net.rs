//! Dialling helpers shared by the join and federation clients, and the resolver every dial of
//! a host name goes through ([`resolve`]). A name is resolved again at each dial, so a changed
//! DNS record is followed; the last answer for each name is kept for `fedgw status`
//! ([`last_resolution`]).

use std::collections::BTreeMap;
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

/// A DNS server name (`gw-<site>.<org>.<domain>`).
pub fn dns_server_name(name: &str) -> Result<ServerName<'static>, DialError> {
    ServerName::try_from(name.to_owned()).map_err(|_| DialError::Endpoint(name.to_owned()))
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
/// `timeout`, verifying the server as the endpoint's host.
pub async fn dial_tls(
    endpoint: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, DialError> {
    let name = server_name(endpoint)?;
    dial_tls_as(endpoint, name, config, timeout).await
}

/// [`dial_tls`], verifying the server as `name` whatever host `endpoint` names: a member
/// gateway dialled by host name or address proves the identity the membership view expects
/// ([`fedgw_certs::ids::GatewayId::server_name`]).
pub async fn dial_tls_as(
    endpoint: &str,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, DialError> {
    let connect_err = |source| DialError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    let tcp = tokio::time::timeout(timeout, connect_any(endpoint))
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

/// Splits `host:port` (IPv6 hosts in brackets) into its host and port.
pub fn split_host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn resolver() -> std::io::Result<&'static hickory_resolver::TokioResolver> {
    static RESOLVER: std::sync::OnceLock<Option<hickory_resolver::TokioResolver>> =
        std::sync::OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            hickory_resolver::Resolver::builder_tokio()
                .and_then(|b| b.build())
                .map_err(|e| tracing::warn!(error = %e, "no DNS resolver configuration"))
                .ok()
        })
        .as_ref()
        .ok_or_else(|| std::io::Error::other("no DNS resolver configuration (/etc/resolv.conf)"))
}

/// Resolves `host:port` to socket addresses: an IP literal as it is, `localhost` to the
/// loopback addresses, any other name with hickory's resolver (configured from
/// `/etc/resolv.conf` and `/etc/hosts`). Never calls getaddrinfo, so it works in a statically
/// linked binary in a `FROM scratch` container.
pub async fn resolve(endpoint: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let (host, port) = split_host_port(endpoint).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid endpoint {endpoint:?}"),
        )
    })?;
    resolve_host(host, port).await
}

/// [`resolve`] for a host and port given apart (an IPv6 host without brackets). The answer
/// for a name (not an IP literal) is remembered ([`last_resolution`]).
pub async fn resolve_host(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = if host.eq_ignore_ascii_case("localhost") {
        Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ])
    } else {
        lookup_ips(host).await
    };
    remember(host, &ips);
    Ok(ips?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

async fn lookup_ips(host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    let lookup = resolver()?
        .lookup_ip(host)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
    let ips: Vec<std::net::IpAddr> = lookup.iter().collect();
    if ips.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    Ok(ips)
}

/// The last answer [`resolve`] got for a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// When, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The addresses, in the resolver's order (empty when it failed).
    pub addrs: Vec<std::net::IpAddr>,
    /// Why it failed, empty when it did not.
    pub error: String,
}

/// Most names whose last resolution is kept; past it, the oldest answer is forgotten. Far more
/// than the gateways of a consortium, each with its few advertised names.
pub const MAX_REMEMBERED: usize = 1024;

/// Last resolution per lowercase host name.
static RESOLVED: Mutex<BTreeMap<String, Resolution>> = Mutex::new(BTreeMap::new());

fn remember(host: &str, answer: &std::io::Result<Vec<std::net::IpAddr>>) {
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let resolution = match answer {
        Ok(addrs) => Resolution {
            at_unix_ms,
            addrs: addrs.clone(),
            error: String::new(),
        },
        Err(e) => Resolution {
            at_unix_ms,
            addrs: vec![],
            error: e.to_string(),
        },
    };
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    let key = host.to_ascii_lowercase();
    if !resolved.contains_key(&key) && resolved.len() >= MAX_REMEMBERED {
        let oldest = resolved
            .iter()
            .min_by_key(|(_, r)| r.at_unix_ms)
            .map(|(name, _)| name.clone());
        if let Some(oldest) = oldest {
            resolved.remove(&oldest);
        }
    }
    resolved.insert(key, resolution);
}

/// The last answer the resolver gave for `host` (any case) at a dial or [`resolve`], if it
/// was asked since start. IP literals are never resolved and have none.
pub fn last_resolution(host: &str) -> Option<Resolution> {
    RESOLVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&host.to_ascii_lowercase())
        .cloned()
}

/// Connects to the first address of `endpoint` (see [`resolve`]) that accepts.
pub async fn connect_any(endpoint: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in resolve(endpoint).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
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

/// `e`'s message and its sources', joined with ": " (no trailing ": " when it has none).
pub fn with_sources(e: &dyn std::error::Error) -> String {
    match error_chain(e) {
        sources if sources.is_empty() => e.to_string(),
        sources => format!("{e}: {sources}"),
    }
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

/// Whether `e` or one of its sources is the `certificate_revoked` TLS alert from the other end:
/// the peer refused this gateway's certificate because the consortium revoked its org (the
/// peer's verifier refuses a revoked org with that alert, `fedgw_certs::PeerVerifier`). TLS
/// errors travel inside `std::io::Error`s, whose `source` skips the wrapped error itself, so
/// those are opened too. At most 32 levels are looked at.
pub fn revoked_by_peer(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription::CertificateRevoked;
    let mut cur = Some(e);
    for _ in 0..32 {
        let Some(err) = cur else { break };
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(CertificateRevoked)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return true;
            }
        }
        cur = inner.or_else(|| err.source());
    }
    false
}

/// A byte stream that notes when a read fails with the peer's `certificate_revoked` alert
/// ([`revoked_by_peer`]). Under TLS 1.3 a server's verdict on the client's certificate comes
/// after the client's handshake, as the first read; a gRPC channel over the stream turns that
/// read error into a generic transport error, so the dialer keeps this flag to tell why.
#[derive(Debug)]
pub struct WatchRevoked<IO> {
    io: IO,
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

impl<IO> WatchRevoked<IO> {
    /// Wraps `io`; the flag turns true at the first read that failed with the alert.
    pub fn new(io: IO) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            Self {
                io,
                revoked: revoked.clone(),
            },
            revoked,
        )
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WatchRevoked<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &polled
            && revoked_by_peer(e)
        {
            self.revoked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WatchRevoked<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Checks a node's address (`--host`, or a replica's shared registration) as a dial target:
/// an IP or a DNS name. Errors: one line naming the host.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || fedgw_certs::token::validate_endpoint(&format!("{host}:1")).is_err() {
        return Err(format!("invalid node host {host:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_revoked_alert_is_found_inside_io_errors() {
        let alert = |a| rustls::Error::AlertReceived(a);
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            alert(rustls::AlertDescription::CertificateRevoked),
        );
        assert!(revoked_by_peer(&wrapped));
        assert!(revoked_by_peer(&alert(
            rustls::AlertDescription::CertificateRevoked
        )));
        // one level further down, as hyper and tonic wrap it
        let outer = anyhow::Error::new(wrapped).context("transport error");
        assert!(revoked_by_peer(outer.as_ref()));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            alert(rustls::AlertDescription::BadCertificate),
        );
        assert!(!revoked_by_peer(&other));
        assert!(!revoked_by_peer(&std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )));
    }

    /// A name's answer is remembered (under any case) with the time it came; an IP literal is
    /// not resolved, so nothing is remembered for it.
    #[tokio::test]
    async fn the_last_answer_for_a_name_is_remembered() {
        let addrs = resolve("LocalHost:7443").await.expect("localhost");
        assert_eq!(addrs.len(), 2);
        let r = last_resolution("localhost").expect("remembered");
        assert_eq!(r.addrs, addrs.iter().map(|a| a.ip()).collect::<Vec<_>>());
        assert!(r.error.is_empty());
        assert!(r.at_unix_ms > 1_700_000_000_000, "{}", r.at_unix_ms);

        resolve("127.0.0.9:1").await.expect("literal");
        assert_eq!(last_resolution("127.0.0.9"), None);
    }

    /// A failed resolution is remembered with its error, replacing an earlier answer.
    #[test]
    fn a_failure_is_remembered_too() {
        remember(
            "gw.example.invalid",
            &Ok(vec!["10.0.0.1".parse().expect("ip")]),
        );
        remember(
            "gw.example.invalid",
            &Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such name",
            )),
        );
        let r = last_resolution("gw.example.invalid").expect("remembered");
        assert!(r.addrs.is_empty());
        assert_eq!(r.error, "no such name");
    }
}
