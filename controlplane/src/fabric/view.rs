//! From the membership view to [`FabricOrg`]s: the adapter `fedgw render fabric-*` uses.
//!
//! Members and nodes arrive as plain facts ([`member_facts`] and [`node_facts`] read them from
//! the admin API's `ListMembers` and `ListNodes`, which the CLI and the Kubernetes controller
//! call), so the projection is a pure function. A node runs Fabric when its record's client kind is
//! fabric-peer or fabric-orderer; its gRPC port is its named service port (`peer` or
//! `orderer`) when the record has one, else Fabric's default (7051 / 7050).

use std::collections::BTreeMap;

use fedgw_proto::v1 as pb;

use super::render::{
    DEFAULT_ORDERER_PORT, DEFAULT_PEER_PORT, FabricOrderer, FabricOrg, FabricPeer,
};

/// What the view says about a member org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFacts {
    /// The org name.
    pub org: String,
    /// Its published Fabric MSP ID; `None` uses [`super::default_msp_id`].
    pub msp_id: Option<String>,
}

/// The Fabric node kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Client kind fabric-peer.
    Peer,
    /// Client kind fabric-orderer.
    Orderer,
}

/// What the view says about a Fabric node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's org.
    pub org: String,
    /// The node's name (a DNS label).
    pub name: String,
    /// Peer or orderer.
    pub kind: NodeKind,
    /// Named service ports (`peer`, `orderer`, `operations`, `admin`); may be empty.
    pub ports: BTreeMap<String, u16>,
    /// Free-form roles from the record; `anchor` marks an anchor peer.
    pub roles: Vec<String>,
    /// An orderer's TLS certificate (PEM), when published.
    pub tls_cert_pem: Option<String>,
}

/// The active members of a `ListMembers` answer as [`MemberFacts`] (revoked and pending orgs
/// are left out; an empty `fabric_msp_id` means the default).
pub fn member_facts(members: &[pb::MemberInfo]) -> Vec<MemberFacts> {
    members
        .iter()
        .filter(|m| m.status == "active")
        .map(|m| MemberFacts {
            org: m.org.clone(),
            msp_id: Some(m.fabric_msp_id.clone()).filter(|id| !id.is_empty()),
        })
        .collect()
}

/// A node of client kind fabric-peer or fabric-orderer as [`NodeFacts`] (`None` for any other
/// node): its named service ports (`peer`, `orderer`, ...; a port outside 1..=65535 is left
/// out, the default applies) and an orderer's published TLS certificate, as PEM.
pub fn node_facts(n: &pb::NodeInfo) -> Option<NodeFacts> {
    let record = n.record.as_ref()?;
    let kind = match pb::ClientKind::try_from(record.client).ok()? {
        pb::ClientKind::FabricPeer => NodeKind::Peer,
        pb::ClientKind::FabricOrderer => NodeKind::Orderer,
        _ => return None,
    };
    let ports = record
        .services
        .iter()
        .filter_map(|s| {
            Some((
                s.name.clone(),
                u16::try_from(s.port).ok().filter(|p| *p != 0)?,
            ))
        })
        .collect();
    let tls_cert_pem = (!record.tls_cert_der.is_empty()).then(|| cert_pem(&record.tls_cert_der));
    Some(NodeFacts {
        org: n.org.clone(),
        name: n.name.clone(),
        kind,
        ports,
        roles: record.roles.clone(),
        tls_cert_pem,
    })
}

/// One DER certificate as a PEM block (base64 in lines of 64, as OpenSSL writes it).
pub fn cert_pem(der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // chunks of base64 text are ASCII
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The role that marks a peer as an anchor peer in configtx.yaml.
pub const ANCHOR_ROLE: &str = "anchor";

/// Builds one [`FabricOrg`] per member that has Fabric nodes or a published MSP ID, each
/// node at `<node>.<org>.<domain>`. Nodes of orgs that are not members are left out (the view
/// drops them too, this only guards the projection). `tls_ca_pem` is the consortium root,
/// the trust anchor of every org's TLS servers.
pub fn orgs_from_view(
    members: &[MemberFacts],
    nodes: &[NodeFacts],
    domain: &str,
    tls_ca_pem: &str,
) -> Vec<FabricOrg> {
    let mut orgs: BTreeMap<&str, FabricOrg> = BTreeMap::new();
    for m in members {
        let org = FabricOrg {
            name: m.org.clone(),
            msp_id: m
                .msp_id
                .clone()
                .unwrap_or_else(|| super::default_msp_id(&m.org)),
            tls_ca_pem: tls_ca_pem.to_owned(),
            peers: Vec::new(),
            orderers: Vec::new(),
        };
        orgs.insert(&m.org, org);
    }
    for n in nodes {
        let Some(org) = orgs.get_mut(n.org.as_str()) else {
            continue;
        };
        let host = format!("{}.{}.{domain}", n.name, n.org);
        match n.kind {
            NodeKind::Peer => org.peers.push(FabricPeer {
                host,
                port: n.ports.get("peer").copied().unwrap_or(DEFAULT_PEER_PORT),
                anchor: n.roles.iter().any(|r| r == ANCHOR_ROLE),
            }),
            NodeKind::Orderer => org.orderers.push(FabricOrderer {
                host,
                port: n
                    .ports
                    .get("orderer")
                    .copied()
                    .unwrap_or(DEFAULT_ORDERER_PORT),
                tls_cert_pem: n.tls_cert_pem.clone(),
            }),
        }
    }
    let with_msp_id: Vec<&str> = members
        .iter()
        .filter(|m| m.msp_id.is_some())
        .map(|m| m.org.as_str())
        .collect();
    orgs.into_values()
        .filter(|o| {
            !o.peers.is_empty() || !o.orderers.is_empty() || with_msp_id.contains(&o.name.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(org: &str, name: &str, kind: NodeKind, ports: &[(&str, u16)]) -> NodeFacts {
        NodeFacts {
            org: org.into(),
            name: name.into(),
            kind,
            ports: ports.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            roles: vec![],
            tls_cert_pem: None,
        }
    }

    fn member(org: &str, msp_id: Option<&str>) -> MemberFacts {
        MemberFacts {
            org: org.into(),
            msp_id: msp_id.map(str::to_owned),
        }
    }

    #[test]
    fn nodes_land_in_their_org_with_named_or_default_ports() {
        let mut anchor = node("org2", "peer0", NodeKind::Peer, &[]);
        anchor.roles = vec!["anchor".into()];
        let nodes = [
            anchor,
            node(
                "org2",
                "peer1",
                NodeKind::Peer,
                &[("peer", 9051), ("operations", 9443)],
            ),
            node("org1", "orderer0", NodeKind::Orderer, &[]),
            node("org1", "orderer1", NodeKind::Orderer, &[("orderer", 8050)]),
            node("gone", "peer0", NodeKind::Peer, &[]),
        ];
        let members = [
            member("org1", None),
            member("org2", Some("BankMSP")),
            member("org3", None),
            member("org4", Some("Org4MSP")),
        ];
        let orgs = orgs_from_view(&members, &nodes, "acme.test", "ROOT");
        let names: Vec<&str> = orgs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            ["org1", "org2", "org4"],
            "org3 has no Fabric nodes or MSP ID"
        );
        assert_eq!(orgs[0].msp_id, "Org1MSP");
        assert_eq!(orgs[1].msp_id, "BankMSP");
        assert_eq!(orgs[0].orderers[0].host, "orderer0.org1.acme.test");
        assert_eq!(orgs[0].orderers[0].port, 7050);
        assert_eq!(orgs[0].orderers[1].port, 8050);
        assert_eq!(
            orgs[1].peers,
            vec![
                FabricPeer {
                    host: "peer0.org2.acme.test".into(),
                    port: 7051,
                    anchor: true
                },
                FabricPeer {
                    host: "peer1.org2.acme.test".into(),
                    port: 9051,
                    anchor: false
                },
            ]
        );
        assert!(orgs.iter().all(|o| o.tls_ca_pem == "ROOT"));
    }
}
