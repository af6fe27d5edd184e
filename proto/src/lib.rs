//! fedgw-proto: the `fedgw.v1` protobuf package (proto/fedgw/v1/*.proto) and its generated
//! prost messages and tonic clients and servers.
//!
//! Services: `Join` (ALPN `fedgw-join/1`, server-authenticated TLS), `Federation` (ALPN `h2`,
//! mutual TLS) and `Admin` (Unix socket in the data dir).

pub mod demo_keys;
pub mod enode;
pub mod rpc_url;
pub mod tessera;

/// The version a `JoinRequest` carries.
pub const JOIN_PROTOCOL_VERSION: u32 = 1;

/// Largest join request accepted, in bytes (a CSR and a few endpoints).
pub const MAX_JOIN_REQUEST_BYTES: usize = 64 * 1024;
/// Largest join response accepted, in bytes (certificates plus a genesis file).
pub const MAX_JOIN_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest federation or admin message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Generated code for package `fedgw.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fedgw.v1");
}

/// The ports a node record announces, by name: `p2p` and `raft` when non-zero, and `tessera`
/// from the port of `tessera_url` (80 or 443 by scheme when the URL gives none). These names key
/// every per-port table: local listeners, allocated ports, DNS SRV records, Kubernetes Service
/// ports, and the tunnel header's port name.
pub fn node_ports(r: &v1::NodeRecord) -> std::collections::BTreeMap<String, u16> {
    let mut ports = std::collections::BTreeMap::new();
    for (name, p) in [("p2p", r.p2p_port), ("raft", r.raft_port)] {
        if let Ok(p) = u16::try_from(p)
            && p != 0
        {
            ports.insert(name.to_owned(), p);
        }
    }
    if let Some((scheme, rest)) = r.tessera_url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let port = match authority.rsplit_once(':') {
            Some((_, p)) => p.parse().ok(),
            None if scheme == "https" => Some(443),
            None => Some(80),
        };
        if let Some(p) = port {
            ports.insert("tessera".to_owned(), p);
        }
    }
    ports
}
