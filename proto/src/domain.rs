//! Domain types built from wire messages once, where a record is read or ingested, so the rest
//! of fedgw reads checked values instead of re-checking lengths and ranges.
//!
//! [`Node`] is a node record ([`v1::NodeRecord`], proto/fedgw/v1/records.proto) whose shapes
//! are checked: a known client kind, an enode id of exactly 64 bytes or none, ports in
//! 1..=65535 or none, Tessera keys of 32 bytes, an http(s) Tessera URL of at most
//! [`MAX_TESSERA_URL`] bytes, lists of at most [`MAX_LIST`] items, at most [`MAX_SERVICES`]
//! named services with unique [`ServiceName`]s and ports in 1..=65535, an [`IpfsPeerId`] or
//! none, and a TLS certificate that parses as DER X.509 of at most 4 KiB or none
//! ([`crate::service`]). Consortium label rules (for
//! the site, roles and allowed orgs) belong to the PKI crate and are checked beside this
//! conversion by the record verifier.

use std::collections::BTreeMap;
use std::num::NonZeroU16;

use crate::enode::EnodeId;
use crate::service::{IpfsPeerId, MAX_SERVICES, ServiceName, TlsCertError, check_tls_cert};
use crate::tessera::TesseraKey;
use crate::v1;

/// Most Tessera keys, roles or allowed orgs one node record may list.
pub const MAX_LIST: usize = 16;
/// Longest Tessera URL a node record may carry, in bytes.
pub const MAX_TESSERA_URL: usize = 256;

/// Why a node record is not a [`Node`]. Messages are lowercase and name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The client kind is unspecified or unknown.
    #[error("unknown client kind")]
    Client,
    /// The enode id is neither empty nor 64 bytes.
    #[error("enode id must be 64 bytes, not {0}")]
    EnodeId(usize),
    /// A port is above 65535.
    #[error("{0} port out of range")]
    Port(&'static str),
    /// More than [`MAX_LIST`] Tessera keys, roles or allowed orgs.
    #[error("too many tessera keys, roles or allowed orgs")]
    TooMany,
    /// A Tessera key is not 32 bytes.
    #[error("tessera keys must be 32 bytes")]
    TesseraKey,
    /// The Tessera URL is not http(s) or longer than [`MAX_TESSERA_URL`].
    #[error("tessera URL must be http(s) and at most 256 bytes")]
    TesseraUrl,
    /// A service name is not a lowercase SRV service name or is reserved.
    #[error(
        "service name {0:?} must be 1 to 15 lowercase letters, digits or inner hyphens, start with a letter, and not be p2p, raft or tessera"
    )]
    ServiceName(String),
    /// A service's port is 0 or above 65535.
    #[error("service {0:?} port must be 1 to 65535")]
    ServicePort(String),
    /// Two services share a name.
    #[error("service {0:?} is listed twice")]
    ServiceDuplicate(String),
    /// More than [`MAX_SERVICES`] services.
    #[error("too many services: {0}, at most 16")]
    TooManyServices(usize),
    /// The IPFS peer id is not a base58btc multihash.
    #[error("ipfs peer id {0:?} is not a base58 multihash (12D3KooW... or Qm...)")]
    IpfsPeerId(String),
    /// The TLS certificate is too large or does not parse.
    #[error("tls certificate {0}")]
    TlsCert(#[source] TlsCertError),
}

/// A node as a node record announces it, checked (see the module docs). Its key (`org/node`)
/// is the record's; holders keep it beside the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The client it runs (never [`v1::ClientKind::Unspecified`]).
    pub client: v1::ClientKind,
    /// Its secp256k1 public key (the enode id), if it runs devp2p.
    pub enode_id: Option<EnodeId>,
    /// Its devp2p TCP port, if any.
    pub p2p_port: Option<NonZeroU16>,
    /// Its raft port, if any.
    pub raft_port: Option<NonZeroU16>,
    /// Its raft id (0: none).
    pub raft_id: u32,
    /// Its Tessera public keys.
    pub tessera_keys: Vec<TesseraKey>,
    /// Its Tessera P2P URL as the node announces it (`http://` or `https://`), if any.
    pub tessera_url: Option<String>,
    /// Free-form roles (validator, bootnode, ...).
    pub roles: Vec<String>,
    /// The site whose gateway serves it.
    pub site: String,
    /// Orgs allowed to reach it; empty means every member.
    pub allowed_orgs: Vec<String>,
    /// Named TCP services, in record order, names unique.
    pub services: Vec<(ServiceName, NonZeroU16)>,
    /// Its IPFS Cluster peer id, if any.
    pub ipfs_peer_id: Option<IpfsPeerId>,
    /// A Fabric orderer's public TLS certificate (DER, parsed once), if any.
    pub tls_cert_der: Option<Vec<u8>>,
    /// It joins the raft cluster as a learner, promoted once caught up.
    pub raft_learner: bool,
}

fn services(list: &[v1::NamedService]) -> Result<Vec<(ServiceName, NonZeroU16)>, NodeError> {
    if list.len() > MAX_SERVICES {
        return Err(NodeError::TooManyServices(list.len()));
    }
    let mut out: Vec<(ServiceName, NonZeroU16)> = Vec::with_capacity(list.len());
    for s in list {
        let name =
            ServiceName::new(&s.name).ok_or_else(|| NodeError::ServiceName(s.name.clone()))?;
        let port = u16::try_from(s.port)
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or_else(|| NodeError::ServicePort(s.name.clone()))?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(NodeError::ServiceDuplicate(s.name.clone()));
        }
        out.push((name, port));
    }
    Ok(out)
}

fn port(p: u32, what: &'static str) -> Result<Option<NonZeroU16>, NodeError> {
    let p = u16::try_from(p).map_err(|_| NodeError::Port(what))?;
    Ok(NonZeroU16::new(p))
}

impl TryFrom<&v1::NodeRecord> for Node {
    type Error = NodeError;

    fn try_from(r: &v1::NodeRecord) -> Result<Self, NodeError> {
        let client = match v1::ClientKind::try_from(r.client) {
            Ok(v1::ClientKind::Unspecified) | Err(_) => return Err(NodeError::Client),
            Ok(c) => c,
        };
        let enode_id = match r.enode_id.len() {
            0 => None,
            _ => Some(EnodeId::from_bytes(
                <[u8; 64]>::try_from(r.enode_id.as_slice())
                    .map_err(|_| NodeError::EnodeId(r.enode_id.len()))?,
            )),
        };
        if r.tessera_keys.len() > MAX_LIST
            || r.roles.len() > MAX_LIST
            || r.allowed_orgs.len() > MAX_LIST
        {
            return Err(NodeError::TooMany);
        }
        let tessera_keys = r
            .tessera_keys
            .iter()
            .map(|k| {
                <[u8; 32]>::try_from(k.as_slice())
                    .map(TesseraKey::from_bytes)
                    .map_err(|_| NodeError::TesseraKey)
            })
            .collect::<Result<_, _>>()?;
        let url = &r.tessera_url;
        if !url.is_empty()
            && (url.len() > MAX_TESSERA_URL
                || !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(NodeError::TesseraUrl);
        }
        let ipfs_peer_id = match r.ipfs_peer_id.as_str() {
            "" => None,
            id => Some(IpfsPeerId::new(id).ok_or_else(|| NodeError::IpfsPeerId(id.to_owned()))?),
        };
        if !r.tls_cert_der.is_empty() {
            check_tls_cert(&r.tls_cert_der).map_err(NodeError::TlsCert)?;
        }
        Ok(Self {
            client,
            enode_id,
            p2p_port: port(r.p2p_port, "p2p")?,
            raft_port: port(r.raft_port, "raft")?,
            raft_id: r.raft_id,
            tessera_keys,
            tessera_url: (!url.is_empty()).then(|| url.clone()),
            roles: r.roles.clone(),
            site: r.site.clone(),
            allowed_orgs: r.allowed_orgs.clone(),
            services: services(&r.services)?,
            ipfs_peer_id,
            tls_cert_der: (!r.tls_cert_der.is_empty()).then(|| r.tls_cert_der.clone()),
            raft_learner: r.raft_learner,
        })
    }
}

impl From<&Node> for v1::NodeRecord {
    /// The wire form: absent values as the empty or zero defaults.
    fn from(n: &Node) -> Self {
        Self {
            client: n.client.into(),
            enode_id: n
                .enode_id
                .map(|id| id.as_bytes().to_vec())
                .unwrap_or_default(),
            p2p_port: n.p2p_port.map_or(0, |p| u32::from(p.get())),
            raft_port: n.raft_port.map_or(0, |p| u32::from(p.get())),
            raft_id: n.raft_id,
            tessera_keys: n
                .tessera_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            tessera_url: n.tessera_url.clone().unwrap_or_default(),
            roles: n.roles.clone(),
            site: n.site.clone(),
            allowed_orgs: n.allowed_orgs.clone(),
            services: n
                .services
                .iter()
                .map(|(name, port)| v1::NamedService {
                    name: name.as_str().to_owned(),
                    port: u32::from(port.get()),
                })
                .collect(),
            ipfs_peer_id: n
                .ipfs_peer_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            tls_cert_der: n.tls_cert_der.clone().unwrap_or_default(),
            raft_learner: n.raft_learner,
        }
    }
}

impl Node {
    /// The ports the node announces, by name: `p2p` and `raft` when present, `tessera`
    /// from the port of the Tessera URL (80 or 443 by scheme when the URL gives none), and
    /// each named service (whose names never take those three). These
    /// names key every per-port table: local listeners, allocated ports, DNS SRV records,
    /// Kubernetes Service ports, and the tunnel header's port name.
    pub fn ports(&self) -> BTreeMap<String, u16> {
        let mut ports = BTreeMap::new();
        for (name, p) in [("p2p", self.p2p_port), ("raft", self.raft_port)] {
            if let Some(p) = p {
                ports.insert(name.to_owned(), p.get());
            }
        }
        if let Some((scheme, rest)) = self
            .tessera_url
            .as_deref()
            .and_then(|u| u.split_once("://"))
        {
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
        for (name, p) in &self.services {
            ports.insert(name.as_str().to_owned(), p.get());
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> v1::NodeRecord {
        v1::NodeRecord {
            client: v1::ClientKind::Goquorum.into(),
            enode_id: vec![7; 64],
            p2p_port: 30303,
            raft_port: 50400,
            raft_id: 2,
            tessera_keys: vec![vec![1; 32]],
            tessera_url: "https://node1:9443/x".into(),
            roles: vec!["validator".into()],
            site: "dc1".into(),
            allowed_orgs: vec!["org2".into()],
            ..Default::default()
        }
    }

    fn svc(name: &str, port: u32) -> v1::NamedService {
        v1::NamedService {
            name: name.into(),
            port,
        }
    }

    const PEER_ID: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn services_and_peer_id_are_kept_in_order_and_named_as_ports() {
        let r = v1::NodeRecord {
            client: v1::ClientKind::Ipfs.into(),
            site: "dc1".into(),
            services: vec![svc("swarm", 4001), svc("cluster", 9096)],
            ipfs_peer_id: PEER_ID.into(),
            ..Default::default()
        };
        let n = Node::try_from(&r).expect("valid");
        assert_eq!(
            n.ipfs_peer_id.as_ref().map(IpfsPeerId::as_str),
            Some(PEER_ID)
        );
        assert_eq!(v1::NodeRecord::from(&n), r);
        let ports: Vec<(String, u16)> = n.ports().into_iter().collect();
        assert_eq!(
            ports,
            [("cluster".to_owned(), 9096), ("swarm".to_owned(), 4001)]
        );
    }

    #[test]
    fn a_record_encoded_without_the_service_fields_still_reads() {
        use prost::Message;
        // the bytes an older gateway signs: fields 1 to 10 only
        let old = record().encode_to_vec();
        let r = v1::NodeRecord::decode(old.as_slice()).expect("decodes");
        let n = Node::try_from(&r).expect("valid");
        assert!(n.services.is_empty() && n.ipfs_peer_id.is_none() && n.tls_cert_der.is_none());
        assert_eq!(r.encode_to_vec(), old);
    }

    #[test]
    fn a_record_becomes_a_node_and_back_unchanged() {
        let r = record();
        let n = Node::try_from(&r).expect("valid");
        assert_eq!(n.enode_id, Some(EnodeId::from_bytes([7; 64])));
        assert_eq!(n.p2p_port.map(NonZeroU16::get), Some(30303));
        assert_eq!(n.tessera_url.as_deref(), Some("https://node1:9443/x"));
        assert_eq!(v1::NodeRecord::from(&n), r);
        let ports: Vec<(&str, u16)> = [("p2p", 30303), ("raft", 50400), ("tessera", 9443)].into();
        let want: BTreeMap<String, u16> = ports.iter().map(|(k, v)| ((*k).into(), *v)).collect();
        assert_eq!(n.ports(), want);
    }

    #[test]
    fn zero_and_empty_fields_are_absent() {
        let r = v1::NodeRecord {
            client: v1::ClientKind::Tessera.into(),
            tessera_url: "http://t".into(),
            site: "dc1".into(),
            ..Default::default()
        };
        let n = Node::try_from(&r).expect("valid");
        assert_eq!((n.enode_id, n.p2p_port, n.raft_port), (None, None, None));
        assert_eq!(n.ports().get("tessera"), Some(&80));
        assert_eq!(n.ports().len(), 1);
        assert_eq!(v1::NodeRecord::from(&n), r);
    }

    #[test]
    fn each_bad_field_is_refused_by_name() {
        let cases: Vec<(v1::NodeRecord, NodeError)> = vec![
            (
                v1::NodeRecord {
                    client: 0,
                    ..record()
                },
                NodeError::Client,
            ),
            (
                v1::NodeRecord {
                    client: 99,
                    ..record()
                },
                NodeError::Client,
            ),
            (
                v1::NodeRecord {
                    enode_id: vec![1; 63],
                    ..record()
                },
                NodeError::EnodeId(63),
            ),
            (
                v1::NodeRecord {
                    p2p_port: 65536,
                    ..record()
                },
                NodeError::Port("p2p"),
            ),
            (
                v1::NodeRecord {
                    raft_port: u32::MAX,
                    ..record()
                },
                NodeError::Port("raft"),
            ),
            (
                v1::NodeRecord {
                    tessera_keys: vec![vec![1; 31]],
                    ..record()
                },
                NodeError::TesseraKey,
            ),
            (
                v1::NodeRecord {
                    roles: vec!["r".into(); MAX_LIST + 1],
                    ..record()
                },
                NodeError::TooMany,
            ),
            (
                v1::NodeRecord {
                    tessera_url: "ftp://x".into(),
                    ..record()
                },
                NodeError::TesseraUrl,
            ),
            (
                v1::NodeRecord {
                    tessera_url: format!("http://{}", "a".repeat(MAX_TESSERA_URL)),
                    ..record()
                },
                NodeError::TesseraUrl,
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("Peer", 7051)],
                    ..record()
                },
                NodeError::ServiceName("Peer".into()),
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("p2p", 7051)],
                    ..record()
                },
                NodeError::ServiceName("p2p".into()),
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("a-very-long-name", 7051)],
                    ..record()
                },
                NodeError::ServiceName("a-very-long-name".into()),
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("peer", 0)],
                    ..record()
                },
                NodeError::ServicePort("peer".into()),
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("peer", 65536)],
                    ..record()
                },
                NodeError::ServicePort("peer".into()),
            ),
            (
                v1::NodeRecord {
                    services: vec![svc("peer", 7051), svc("peer", 7052)],
                    ..record()
                },
                NodeError::ServiceDuplicate("peer".into()),
            ),
            (
                v1::NodeRecord {
                    services: (0..=MAX_SERVICES)
                        .map(|i| svc(&format!("s{i}"), 1000))
                        .collect(),
                    ..record()
                },
                NodeError::TooManyServices(MAX_SERVICES + 1),
            ),
            (
                v1::NodeRecord {
                    ipfs_peer_id: "QmNotAPeerId0".into(),
                    ..record()
                },
                NodeError::IpfsPeerId("QmNotAPeerId0".into()),
            ),
            (
                v1::NodeRecord {
                    tls_cert_der: b"PEM, not DER".to_vec(),
                    ..record()
                },
                NodeError::TlsCert(TlsCertError::Parse),
            ),
        ];
        for (r, want) in cases {
            assert_eq!(Node::try_from(&r), Err(want));
        }
    }
}
