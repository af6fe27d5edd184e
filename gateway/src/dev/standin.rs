//! Stand-in nodes and the probe that checks them: what `fedgw lab` and the compose lab run in
//! place of GoQuorum and Tessera, so traffic across sites can be proven without a chain.
//!
//! - [`serve_echo`]: a TCP echo server (a node's p2p or raft port). It echoes until the client
//!   half-closes, then half-closes back.
//! - [`serve_upcheck`]: an HTTP/1.1 server answering `GET /upcheck` with `200 I'm up!`, as
//!   Tessera's P2P endpoint does (Tessera docs, "upcheck").
//! - [`probe`]: resolves a name (through a given DNS server, or the system configuration),
//!   connects, and checks an echo byte for byte, or an upcheck.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most bytes of an upcheck response a probe reads.
const MAX_UPCHECK_RESPONSE: u64 = 64 * 1024;

/// The body of a healthy Tessera upcheck.
pub const UPCHECK_BODY: &str = "I'm up!";

/// Accepts on `listener` until `shutdown`, running `serve` for each connection on `tracker`.
async fn accept_each<F, Fut>(
    listener: TcpListener,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let s = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        tracker.spawn(serve(s, shutdown.clone()));
    }
}

/// Serves a TCP echo on `listener` until `shutdown`.
pub async fn serve_echo(listener: TcpListener, tracker: TaskTracker, shutdown: CancellationToken) {
    accept_each(listener, tracker, shutdown, |mut s, sd| async move {
        let (mut r, mut w) = s.split();
        tokio::select! {
            _ = tokio::io::copy(&mut r, &mut w) => {
                let _ = w.shutdown().await;
            }
            () = sd.cancelled() => {}
        }
    })
    .await;
}

/// Serves `GET /upcheck` on `listener` until `shutdown`; anything else gets a 404.
pub async fn serve_upcheck(
    listener: TcpListener,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    accept_each(listener, tracker, shutdown, |s, _| upcheck(s)).await;
}

async fn upcheck(mut s: TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let read = async {
        while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => have += n,
            }
            if have == buf.len() {
                return false;
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        return;
    }
    let resp = if buf[..have].starts_with(b"GET /upcheck ") {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{UPCHECK_BODY}",
            UPCHECK_BODY.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    };
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Binds and serves echo servers on `echo` and upcheck servers on `http`; returns the bound
/// addresses (echo first, then http) once every socket is bound.
pub async fn serve(
    echo: &[SocketAddr],
    http: &[SocketAddr],
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = vec![];
    for (addrs, is_http) in [(echo, false), (http, true)] {
        for addr in addrs {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            bound.push(l.local_addr()?);
            if is_http {
                tracker.spawn(serve_upcheck(l, tracker.clone(), shutdown.clone()));
            } else {
                tracker.spawn(serve_echo(l, tracker.clone(), shutdown.clone()));
            }
        }
    }
    Ok(bound)
}

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Sends this many bytes, half-closes, and expects them back.
    Echo(usize),
    /// `GET /upcheck`, expecting `200` and [`UPCHECK_BODY`].
    Upcheck,
}

/// A successful probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOk {
    /// The address the name resolved to.
    pub addr: SocketAddr,
    /// Resolution, connection and exchange, end to end.
    pub elapsed: Duration,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The target is not `host:port`.
    #[error("invalid target {0:?} (want host:port)")]
    Target(String),
    /// The name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// The DNS server answered that it has no address for the name.
    #[error(
        "{host} is not a name the DNS server at {dns} knows (no such node, or not registered \
         yet); `fedgw nodes --data-dir DIR` lists the names a gateway serves"
    )]
    NoSuchName {
        /// The name asked for.
        host: String,
        /// The DNS server asked.
        dns: SocketAddr,
    },
    /// Connecting failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The exchange failed or returned the wrong bytes.
    #[error("{0}: {1}")]
    Exchange(SocketAddr, String),
    /// Nothing finished in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

async fn resolve(host: &str, port: u16, dns: Option<SocketAddr>) -> Result<SocketAddr, ProbeError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let err = |e: String| ProbeError::Resolve(host.to_owned(), e);
    let Some(dns) = dns else {
        return crate::net::resolve(&format!("{host}:{port}"))
            .await
            .map_err(|e| err(e.to_string()))?
            .first()
            .copied()
            .ok_or_else(|| err("no address".into()));
    };
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.port();
    let mut server = NameServerConfig::udp_and_tcp(dns.ip());
    server.connections = vec![udp, tcp];
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 1;
    builder.options_mut().timeout = Duration::from_secs(2);
    let resolver = builder.build().map_err(|e| err(e.to_string()))?;
    let name = if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    };
    let lookup = resolver.lookup_ip(name).await.map_err(|e| {
        // hickory's own text of a negative answer is a debug dump of the query
        if e.is_no_records_found() {
            ProbeError::NoSuchName {
                host: host.to_owned(),
                dns,
            }
        } else {
            err(e.to_string())
        }
    })?;
    lookup
        .iter()
        .next()
        .map(|ip| SocketAddr::new(ip, port))
        .ok_or_else(|| err("no address".into()))
}

/// Resolves `target` (`host:port`), connects and runs the check, all within `timeout`.
pub async fn probe(
    target: &str,
    dns: Option<SocketAddr>,
    kind: ProbeKind,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let start = Instant::now();
    let (host, port) =
        crate::net::split_host_port(target).ok_or_else(|| ProbeError::Target(target.to_owned()))?;
    let work = async {
        let addr = resolve(host, port, dns).await?;
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeError::Connect(addr, e))?;
        let _ = s.set_nodelay(true);
        let fail = |what: String| ProbeError::Exchange(addr, what);
        match kind {
            ProbeKind::Echo(len) => {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let (mut r, mut w) = s.split();
                let write = async {
                    w.write_all(&data).await?;
                    w.shutdown().await
                };
                let read = async {
                    let mut back = Vec::with_capacity(len);
                    // one byte more than sent shows a wrong echo without reading forever
                    (&mut r)
                        .take(len as u64 + 1)
                        .read_to_end(&mut back)
                        .await
                        .map(|_| back)
                };
                let (wrote, back) = tokio::join!(write, read);
                wrote.map_err(|e| fail(format!("sending: {e}")))?;
                let back = back.map_err(|e| fail(format!("receiving: {e}")))?;
                if back != data {
                    return Err(fail(format!(
                        "echo returned {} of {len} bytes, or different bytes",
                        back.len()
                    )));
                }
            }
            ProbeKind::Upcheck => {
                let req =
                    format!("GET /upcheck HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n\r\n");
                s.write_all(req.as_bytes())
                    .await
                    .map_err(|e| fail(format!("sending: {e}")))?;
                let mut resp = Vec::new();
                (&mut s)
                    .take(MAX_UPCHECK_RESPONSE)
                    .read_to_end(&mut resp)
                    .await
                    .map_err(|e| fail(format!("receiving: {e}")))?;
                let text = String::from_utf8_lossy(&resp);
                if !text.starts_with("HTTP/1.1 200") || !text.ends_with(UPCHECK_BODY) {
                    let first = text.lines().next().unwrap_or("no response").to_owned();
                    return Err(fail(format!("upcheck answered {first:?}")));
                }
            }
        }
        Ok(addr)
    };
    let addr = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))??;
    Ok(ProbeOk {
        addr,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_pass_against_stand_ins_and_fail_without_them() {
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let bound = serve(&[any], &[any], &tracker, &shutdown)
            .await
            .expect("serve");
        let t = Duration::from_secs(5);
        let ok = probe(&bound[0].to_string(), None, ProbeKind::Echo(100_000), t)
            .await
            .expect("echo");
        assert_eq!(ok.addr, bound[0]);
        probe(&bound[1].to_string(), None, ProbeKind::Upcheck, t)
            .await
            .expect("upcheck");
        // an upcheck against an echo server never sees a response end
        assert!(matches!(
            probe(
                &bound[0].to_string(),
                None,
                ProbeKind::Upcheck,
                Duration::from_millis(300)
            )
            .await,
            Err(ProbeError::Timeout(_))
        ));
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(matches!(
            probe(&bound[0].to_string(), None, ProbeKind::Echo(10), t).await,
            Err(ProbeError::Connect(..))
        ));
        assert!(matches!(
            probe("no-port", None, ProbeKind::Echo(10), t).await,
            Err(ProbeError::Target(_))
        ));
    }
}
