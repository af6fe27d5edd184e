//! The checked parts of a node record beyond the chain ports: named TCP services
//! ([`ServiceName`], [`v1::NamedService`](crate::v1::NamedService)), an IPFS Cluster peer id
//! ([`IpfsPeerId`]) and a Fabric orderer's TLS certificate ([`check_tls_cert`]).
//!
//! A service name keys every per-port table the way `p2p`, `raft` and `tessera` do (local
//! listeners, allocated ports, `_<name>._tcp` SRV records, the tunnel header's port name), so
//! it follows the SRV service-name rules of RFC 6335 section 5.1 in lowercase: 1 to 15 bytes of
//! `a-z`, `0-9` and `-`, starting with a letter, not ending with `-`, no `--`; the chain port
//! names are reserved.

use std::fmt;

/// Longest service name, in bytes (RFC 6335 section 5.1).
pub const MAX_SERVICE_NAME: usize = 15;
/// Most named services one node record may list.
pub const MAX_SERVICES: usize = 16;
/// Port names a node's own fields use; a named service may not take them.
pub const RESERVED_SERVICE_NAMES: [&str; 3] = ["p2p", "raft", "tessera"];
/// Longest IPFS peer id accepted, in characters (an identity multihash of a 42-byte key is
/// 59 base58 characters; RSA keys are hashed to 46).
pub const MAX_IPFS_PEER_ID: usize = 64;
/// Largest TLS certificate a node record may carry, DER bytes.
pub const MAX_TLS_CERT: usize = 4096;

/// A named service's name, checked (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks `s`; `None` when it is not a service name or is reserved.
    pub fn new(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_SERVICE_NAME
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && !s.contains("--")
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && !RESERVED_SERVICE_NAMES.contains(&s);
        ok.then(|| Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPFS (libp2p) peer id in its base58btc text form, checked to decode to a multihash:
/// sha2-256 (`0x12 0x20` + 32 bytes, `Qm...`) or identity (`0x00 <len>` + a key of at most 42
/// bytes, `12D3KooW...` for Ed25519), as the libp2p peer-id spec defines them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpfsPeerId(String);

impl IpfsPeerId {
    /// Checks `s`; `None` when it is not a base58btc sha2-256 or identity multihash.
    pub fn new(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > MAX_IPFS_PEER_ID {
            return None;
        }
        let bytes = base58_decode(s)?;
        let ok = match bytes.as_slice() {
            [0x12, 0x20, rest @ ..] => rest.len() == 32,
            [0x00, len, rest @ ..] => *len as usize == rest.len() && rest.len() <= 42,
            _ => false,
        };
        ok.then(|| Self(s.to_owned()))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IpfsPeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const BASE58_ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Decodes Bitcoin-alphabet base58 (leading `1`s are zero bytes); `None` on a character
/// outside the alphabet. Quadratic in the length, which callers bound.
fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    // little-endian base-256 digits of the value
    let mut num: Vec<u8> = Vec::with_capacity(s.len());
    for c in s.bytes() {
        let digit = BASE58_ALPHABET.iter().position(|&a| a == c)?;
        let mut carry = digit as u32;
        for byte in &mut num {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            num.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0u8; zeros];
    out.extend(num.iter().rev());
    Some(out)
}

/// Why a TLS certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsCertError {
    /// Larger than [`MAX_TLS_CERT`].
    #[error("is {0} bytes, more than the 4096 allowed")]
    TooLarge(usize),
    /// Not one DER X.509 certificate.
    #[error("is not a DER X.509 certificate")]
    Parse,
}

/// Checks that `der` is one X.509 certificate in DER of at most [`MAX_TLS_CERT`] bytes, with
/// nothing after it.
pub fn check_tls_cert(der: &[u8]) -> Result<(), TlsCertError> {
    if der.len() > MAX_TLS_CERT {
        return Err(TlsCertError::TooLarge(der.len()));
    }
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        _ => Err(TlsCertError::Parse),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_srv_rules() {
        for ok in [
            "peer",
            "cluster",
            "operations",
            "a",
            "x-1",
            "abcdefghijklmno",
        ] {
            assert!(ServiceName::new(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "Peer",
            "1peer",
            "-peer",
            "peer-",
            "pe--er",
            "pe_er",
            "abcdefghijklmnop",
            "p2p",
            "raft",
            "tessera",
        ] {
            assert!(ServiceName::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn peer_ids_decode_to_multihashes() {
        // real ids: an Ed25519 identity multihash and a sha2-256 one (go-ipfs docs)
        for ok in [
            "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            assert!(IpfsPeerId::new(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            // 0, O, I and l are not base58
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5O",
            // one character short: not 34 bytes
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5",
            "abc",
            &"1".repeat(MAX_IPFS_PEER_ID + 1),
        ] {
            assert!(IpfsPeerId::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn base58_decodes_known_vectors() {
        assert_eq!(base58_decode("").as_deref(), Some(&[][..]));
        assert_eq!(base58_decode("11").as_deref(), Some(&[0, 0][..]));
        assert_eq!(base58_decode("2g").as_deref(), Some(&b"a"[..]));
        assert_eq!(
            base58_decode("StV1DL6CwTryKyV").as_deref(),
            Some(&b"hello world"[..])
        );
    }

    #[test]
    fn tls_certs_are_bounded_and_parsed() {
        assert_eq!(
            check_tls_cert(&[0; MAX_TLS_CERT + 1]),
            Err(TlsCertError::TooLarge(MAX_TLS_CERT + 1))
        );
        assert_eq!(
            check_tls_cert(b"not a certificate"),
            Err(TlsCertError::Parse)
        );
        let cert = rcgen::generate_simple_self_signed(vec!["orderer0.org1.example".into()])
            .expect("test certificate");
        let der = cert.cert.der().to_vec();
        assert_eq!(check_tls_cert(&der), Ok(()));
        let mut trailing = der;
        trailing.push(0);
        assert_eq!(check_tls_cert(&trailing), Err(TlsCertError::Parse));
    }
}
