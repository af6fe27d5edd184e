//! A chain node's JSON-RPC endpoint URL, `http://HOST:PORT[/PATH]`, as `fedgw node add --rpc`,
//! the admin API and the Kubernetes ConsortiumNode resource's `rpc` field all check it.

use std::fmt;
use std::str::FromStr;

/// Longest RPC endpoint URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 256;

/// Why an RPC endpoint URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// The URL is longer than [`MAX_URL_LEN`].
    #[error("RPC URL longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// The scheme is not `http://`.
    #[error("RPC URL must start with http:// (https endpoints are not supported)")]
    Scheme,
    /// The host is empty or holds characters a DNS name or IP address cannot.
    #[error("RPC URL has no valid host")]
    Host,
    /// The port is missing, zero or not a number.
    #[error("RPC URL needs a port, e.g. http://10.0.0.9:8545")]
    Port,
    /// The path holds spaces, controls, a query or a fragment.
    #[error("RPC URL path may hold only printable characters without '?' or '#'")]
    Path,
}

/// A node's JSON-RPC endpoint, `http://HOST:PORT[/PATH]`, checked once when registered.
///
/// HOST is a DNS name, an IPv4 address or a bracketed IPv6 address. Stored only at the node's own
/// site; never published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcUrl {
    host: String,
    port: u16,
    path: String,
}

impl RpcUrl {
    /// The host as written (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path, at least `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `HOST:PORT` with an IPv6 host in brackets, as an HTTP `Host` header carries it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for RpcUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let rest = s.strip_prefix("http://").ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if path
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#')
        {
            return Err(UrlError::Path);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, port) = v6.split_once(']').ok_or(UrlError::Host)?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| UrlError::Host)?;
            (host, port.strip_prefix(':').ok_or(UrlError::Port)?)
        } else {
            authority.rsplit_once(':').ok_or(UrlError::Port)?
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.contains(':')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return Err(UrlError::Host);
        }
        let port: u16 = port.parse().map_err(|_| UrlError::Port)?;
        if port == 0 {
            return Err(UrlError::Port);
        }
        Ok(RpcUrl {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for RpcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}
