//! Enode URLs as GoQuorum, geth and Besu write them, and the JSON node lists that carry them.
//!
//! Text form (geth `p2p/enode` package, `ParseV4`; GoQuorum adds `raftport`):
//!
//! ```text
//! enode://<node-id>@<host>:<tcp-port>[?discport=<udp-port>][&raftport=<raft-port>]
//! ```
//!
//! - `node-id`: the node's secp256k1 public key, 64 bytes (uncompressed point without the `0x04`
//!   prefix) as 128 hex digits; either case is read, lowercase is written;
//! - `host`: an IPv4 address, an IPv6 address in brackets, or a DNS name of LDH labels (GoQuorum
//!   with `--raftdnsenable`, Besu with `--Xdns-enabled`); DNS names are stored lowercase;
//! - `tcp-port`: the devp2p listening port, 1..=65535;
//! - `discport`: the UDP discovery port when it differs from `tcp-port`; `0` means discovery is off
//!   (GoQuorum raft samples write `discport=0`);
//! - `raftport`: the GoQuorum raft transport port, 1..=65535.
//!
//! The parser is stricter than geth: it is meant for lists a consortium member hands over, so it
//! refuses un-rendered templates (`enode://{{ .Values.enodeOverride }}@…`, `enode://<id>@<host:port>`),
//! percent-encoding, unknown or repeated query parameters, ports with leading zeros and anything
//! after the last recognised part. The id must be a point on the secp256k1 curve (SEC 1 section
//! 2.3.4 with the `0x04` prefix put back): 64 random bytes are not, and no devp2p handshake could
//! ever succeed with such a node.
//!
//! [`parse_static_nodes`] reads a JSON array of such URLs: GoQuorum `static-nodes.json` and
//! `permissioned-nodes.json`, Besu `static-nodes.json`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

mod address;
pub use address::{Address, AddressError};

/// The URL scheme prefix.
pub const ENODE_SCHEME: &str = "enode://";
/// Longest accepted enode URL, in bytes.
pub const MAX_ENODE_URL_LEN: usize = 1024;
/// Most entries accepted in one static-nodes / permissioned-nodes list.
pub const MAX_STATIC_NODES: usize = 10_000;
/// Longest accepted DNS name, in bytes (RFC 1035 section 2.3.4, without the trailing dot).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Why an enode URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnodeError {
    /// The text is longer than [`MAX_ENODE_URL_LEN`].
    #[error("enode url is too long")]
    TooLong,
    /// The text does not start with `enode://`.
    #[error("not an enode url (expected it to start with \"enode://\")")]
    Scheme,
    /// The node id is not exactly 128 characters.
    #[error("node id must be 128 hex digits")]
    IdLength,
    /// The node id has a character that is not a hex digit.
    #[error("node id is not hex")]
    IdHex,
    /// There is no `@host` part, or the host is empty.
    #[error("enode url has no host")]
    MissingHost,
    /// The host is not an IPv4 address, a bracketed IPv6 address or an LDH DNS name.
    #[error("invalid host in enode url")]
    BadHost,
    /// There is no `:port` after the host.
    #[error("enode url has no tcp port")]
    MissingPort,
    /// A port is not a decimal number in range (the name says which: port, discport, raftport).
    #[error("invalid {0} in enode url")]
    BadPort(&'static str),
    /// The query string is empty or has a part that is not `name=value`.
    #[error("malformed query string in enode url")]
    BadQuery,
    /// A query parameter other than `discport` and `raftport`.
    #[error("unknown query parameter {0:?} in enode url")]
    UnknownParam(String),
    /// A query parameter given twice.
    #[error("query parameter {0} given twice in enode url")]
    DuplicateParam(&'static str),
    /// The node id is 64 bytes but not a secp256k1 public key (a point on the curve).
    #[error("node id is not a secp256k1 public key")]
    NotOnCurve,
}

/// A devp2p node id: the 64-byte secp256k1 public key (X and Y, big-endian, no `0x04` prefix).
///
/// Text form: 128 hex digits; [`FromStr`] reads either case (and refuses an id that is not a
/// point on the curve), [`Display`](fmt::Display) writes lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnodeId([u8; 64]);

impl EnodeId {
    /// Wraps raw key bytes without checking them: for ids read back from where a checked one was
    /// stored, and for lookups. Outside input goes through [`Self::from_key_bytes`] or
    /// [`FromStr`].
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// Wraps raw key bytes that must be a secp256k1 public key: X and Y, each 32 bytes
    /// big-endian, of a point on the curve ([`EnodeError::NotOnCurve`] otherwise).
    pub fn from_key_bytes(bytes: [u8; 64]) -> Result<Self, EnodeError> {
        let mut sec1 = [0u8; 65];
        sec1[0] = 0x04;
        sec1[1..].copy_from_slice(&bytes);
        k256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| EnodeError::NotOnCurve)?;
        Ok(Self(bytes))
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl FromStr for EnodeId {
    type Err = EnodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 128 {
            return Err(EnodeError::IdLength);
        }
        let mut bytes = [0u8; 64];
        for (out, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(EnodeError::IdHex);
            };
            *out = hi << 4 | lo;
        }
        Self::from_key_bytes(bytes)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for EnodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for EnodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnodeId({self})")
    }
}

/// Where a node listens: an IP address or a DNS name.
///
/// [`Display`](fmt::Display) writes the URL form: IPv6 in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name: dot-separated labels of ASCII letters, digits and hyphens, lowercase,
    /// at most [`MAX_HOSTNAME_LEN`] bytes, last label not all digits.
    Dns(String),
}

impl Host {
    /// Parses the host part of a URL: `1.2.3.4`, `[::1]` or `name.example`.
    fn parse(s: &str) -> Result<Self, EnodeError> {
        if s.is_empty() {
            return Err(EnodeError::MissingHost);
        }
        if let Some(v6) = s.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Self::Ip(IpAddr::V6(ip)))
                .map_err(|_| EnodeError::BadHost);
        }
        if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
            return Ok(Self::Ip(IpAddr::V4(ip)));
        }
        if is_ldh_name(s) {
            Ok(Self::Dns(s.to_ascii_lowercase()))
        } else {
            Err(EnodeError::BadHost)
        }
    }
}

/// LDH labels of 1..=63 bytes, no hyphen at either end, at most 253 bytes in all; the last label
/// is not all digits, so `256.1.1.1` or `010.0.0.1` is not taken for a name (RFC 3696 section 2).
fn is_ldh_name(s: &str) -> bool {
    let labels_ok = s.len() <= MAX_HOSTNAME_LEN
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let last_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

/// A parsed enode URL (see the module docs for the text form).
///
/// [`Display`](fmt::Display) writes the canonical form,
/// `enode://<id>@<host>:<port>[?discport=<d>][&raftport=<r>]` (only the parameters present, in
/// that order; `?` before the first), which [`EnodeUrl::parse`] reads back to an equal value.
/// The bounds stated on the fields hold for parsed values; a value built by hand is not checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnodeUrl {
    /// The node's public key.
    pub id: EnodeId,
    /// Where the node listens.
    pub host: Host,
    /// The devp2p TCP port, never 0.
    pub port: u16,
    /// The UDP discovery port when given; `Some(0)` means discovery is off.
    pub discport: Option<u16>,
    /// The GoQuorum raft port when given, never 0.
    pub raftport: Option<u16>,
}

impl EnodeUrl {
    /// Parses one enode URL. No whitespace is trimmed; the text must match the form exactly.
    pub fn parse(s: &str) -> Result<Self, EnodeError> {
        if s.len() > MAX_ENODE_URL_LEN {
            return Err(EnodeError::TooLong);
        }
        let rest = s.strip_prefix(ENODE_SCHEME).ok_or(EnodeError::Scheme)?;
        // The id is hex, so the first `@` ends it; an `@` further on makes the host invalid.
        let (id, rest) = rest.split_once('@').ok_or(EnodeError::MissingHost)?;
        let id = id.parse::<EnodeId>()?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let (host, port) = split_host_port(authority)?;
        let host = Host::parse(host)?;
        if port.is_empty() {
            return Err(EnodeError::MissingPort);
        }
        let port = parse_port(port, "port", false)?;

        let mut discport = None;
        let mut raftport = None;
        if let Some(query) = query {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').ok_or(EnodeError::BadQuery)?;
                let (slot, name, allow_zero) = match name {
                    "discport" => (&mut discport, "discport", true),
                    "raftport" => (&mut raftport, "raftport", false),
                    "" => return Err(EnodeError::BadQuery),
                    other => return Err(EnodeError::UnknownParam(other.to_owned())),
                };
                if slot.is_some() {
                    return Err(EnodeError::DuplicateParam(name));
                }
                *slot = Some(parse_port(value, name, allow_zero)?);
            }
        }
        Ok(Self {
            id,
            host,
            port,
            discport,
            raftport,
        })
    }
}

impl FromStr for EnodeUrl {
    type Err = EnodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for EnodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ENODE_SCHEME}{}@{}:{}", self.id, self.host, self.port)?;
        let mut sep = '?';
        if let Some(d) = self.discport {
            write!(f, "{sep}discport={d}")?;
            sep = '&';
        }
        if let Some(r) = self.raftport {
            write!(f, "{sep}raftport={r}")?;
        }
        Ok(())
    }
}

/// Splits `host:port`, where an IPv6 host is in brackets. A bare IPv6 address (more than one
/// colon outside brackets) is a bad host.
fn split_host_port(authority: &str) -> Result<(&str, &str), EnodeError> {
    if authority.is_empty() {
        return Err(EnodeError::MissingHost);
    }
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(EnodeError::BadHost)?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, port)),
            None if rest.is_empty() => Err(EnodeError::MissingPort),
            None => Err(EnodeError::BadHost),
        };
    }
    let (host, port) = authority.rsplit_once(':').ok_or(EnodeError::MissingPort)?;
    if host.contains(':') {
        return Err(EnodeError::BadHost);
    }
    Ok((host, port))
}

/// A port: ASCII digits without a sign or leading zeros, at most 65535, and 0 only when
/// `allow_zero`; `name` says which port an error is about.
fn parse_port(s: &str, name: &'static str, allow_zero: bool) -> Result<u16, EnodeError> {
    let digits_ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    match s.parse::<u16>() {
        Ok(p) if digits_ok && (p != 0 || allow_zero) => Ok(p),
        _ => Err(EnodeError::BadPort(name)),
    }
}

/// Why a static-nodes / permissioned-nodes list was refused.
#[derive(Debug, thiserror::Error)]
pub enum StaticNodesError {
    /// The text is not a JSON array of strings.
    #[error("node list is not a json array of strings")]
    InvalidJson(#[source] serde_json::Error),
    /// The array has more than [`MAX_STATIC_NODES`] entries.
    #[error("node list has more than {MAX_STATIC_NODES} entries")]
    TooMany,
    /// One entry is not a valid enode URL.
    #[error("node list entry {index} is not a valid enode url")]
    Entry {
        /// Zero-based position of the entry in the array.
        index: usize,
        /// Why that entry was refused.
        #[source]
        source: EnodeError,
    },
}

/// Parses a JSON array of enode URL strings: the format of GoQuorum `static-nodes.json` and
/// `permissioned-nodes.json` and of Besu `static-nodes.json`, e.g.
/// `["enode://…@172.16.239.11:30303?discport=0&raftport=53000"]`. Order is kept and duplicates
/// are not removed. At most [`MAX_STATIC_NODES`] entries; the first bad entry fails the list.
pub fn parse_static_nodes(json: &str) -> Result<Vec<EnodeUrl>, StaticNodesError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let list = (&mut de)
        .deserialize_seq(CappedStrings)
        .and_then(|list| de.end().map(|()| list))
        .map_err(StaticNodesError::InvalidJson)?;
    let Some(entries) = list else {
        return Err(StaticNodesError::TooMany);
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, s)| {
            EnodeUrl::parse(s).map_err(|source| StaticNodesError::Entry { index, source })
        })
        .collect()
}

/// Reads a JSON array of strings, keeping at most [`MAX_STATIC_NODES`]: `None` when there were
/// more. The surplus is skipped without being stored, so an oversized list costs no memory.
struct CappedStrings;

impl<'de> Visitor<'de> for CappedStrings {
    type Value = Option<Vec<String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of enode url strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(s) = seq.next_element::<String>()? {
            if out.len() == MAX_STATIC_NODES {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            out.push(s);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests;
