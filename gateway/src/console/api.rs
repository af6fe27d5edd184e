//! The console's JSON documents (`/api/v1/topology`, `/api/v1/members`, `/api/v1/nodes`,
//! `/api/v1/audit`): pure projections of what the admin service already answers
//! (`ListMembers`, `ListNodes`, the status report of `fedgw status --json`). Values the admin
//! answer leaves unset (empty strings, zeros that mean "none") are `null` here. The field names
//! are a stable contract (version 1); new fields may be added, none renamed or removed.

use std::collections::{BTreeMap, BTreeSet};

use fedgw_proto::v1 as pb;
use serde::Serialize;

/// `None` for an empty string.
fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// `None` for zero.
fn nonzero<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// `org/site`, how the console names a site.
pub fn site_key(org: &str, site: &str) -> String {
    format!("{org}/{site}")
}

/// `/api/v1/topology`: every site of every member org (grouped by org) and one link per pair
/// of sites, as this gateway sees them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// The org of the gateway answering.
    pub org: String,
    /// The site of the gateway answering.
    pub site: String,
    /// Hex SHA-256 over the per-origin record digests (equal on two gateways: equal views).
    pub digest: String,
    /// Records held.
    pub records: u64,
    /// Member orgs (active and revoked) and their sites, by org name.
    pub orgs: Vec<TopologyOrg>,
    /// One entry per unordered pair of active sites, `a` < `b` by `org/site`.
    pub links: Vec<Link>,
}

/// An org in the topology.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologyOrg {
    /// Org name.
    pub org: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Its sites (gateways), by site name.
    pub sites: Vec<TopologySite>,
}

/// A site (one gateway) in the topology.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologySite {
    /// `org/site`.
    pub id: String,
    /// Site name.
    pub site: String,
    /// Advertised `host:port` endpoints.
    pub advertise: Vec<String>,
    /// The site accepts no inbound connections (behind NAT).
    pub outbound_only: bool,
    /// This is the gateway answering.
    pub here: bool,
}

/// The state of the data-plane link between two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// A tunnel link is up.
    Up,
    /// No tunnel link now, but the membership sync stream is connected: a link is dialled on
    /// the first proxied connection.
    Idle,
    /// Neither a tunnel link nor a sync stream is up; the dialler is trying.
    Down,
    /// Both sites are outbound-only: they can never connect directly.
    None,
    /// A pair of two other sites: only they know the link's state.
    Unknown,
}

/// A link between two sites.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    /// `org/site` of the lower end.
    pub a: String,
    /// `org/site` of the higher end.
    pub b: String,
    /// The link's state.
    pub state: LinkState,
    /// `quic` or `tcp` while a tunnel link is up, else `null`.
    pub transport: Option<String>,
    /// Smoothed round-trip time in milliseconds (QUIC links only), else `null`.
    pub rtt_ms: Option<f64>,
    /// The membership sync stream's state (`connected`, `connecting`, `backoff`), `null` when
    /// this gateway is not an end.
    pub sync: Option<String>,
}

/// Builds the topology from a status report and the member list.
pub fn topology(status: &pb::StatusResponse, members: &pb::ListMembersResponse) -> Topology {
    let here = site_key(&status.org, &status.site);
    let orgs: Vec<TopologyOrg> = members
        .members
        .iter()
        .map(|m| {
            let mut sites: Vec<TopologySite> = m
                .gateways
                .iter()
                .map(|g| TopologySite {
                    id: site_key(&m.org, &g.site),
                    site: g.site.clone(),
                    advertise: g.advertise.clone(),
                    outbound_only: g.outbound_only,
                    here: site_key(&m.org, &g.site) == here,
                })
                .collect();
            sites.sort_by(|a, b| a.site.cmp(&b.site));
            TopologyOrg {
                org: m.org.clone(),
                status: m.status.clone(),
                sites,
            }
        })
        .collect();
    let active: Vec<&TopologySite> = orgs
        .iter()
        .filter(|o| o.status == "active")
        .flat_map(|o| o.sites.iter())
        .collect();
    let tunnels: BTreeMap<String, &pb::TunnelStatus> = status
        .tunnels
        .iter()
        .map(|t| (site_key(&t.org, &t.site), t))
        .collect();
    let peers: BTreeMap<String, &pb::PeerStatus> = status
        .peers
        .iter()
        .map(|p| (site_key(&p.org, &p.site), p))
        .collect();
    let mut links = Vec::new();
    for (i, x) in active.iter().enumerate() {
        for y in &active[i + 1..] {
            let (a, b) = if x.id <= y.id { (x, y) } else { (y, x) };
            let other = if a.id == here {
                Some(&b.id)
            } else if b.id == here {
                Some(&a.id)
            } else {
                None
            };
            let tunnel = other.and_then(|o| tunnels.get(o));
            let sync = other.and_then(|o| peers.get(o)).map(|p| p.state.clone());
            let state = if a.outbound_only && b.outbound_only {
                LinkState::None
            } else if other.is_none() {
                LinkState::Unknown
            } else if tunnel.is_some() {
                LinkState::Up
            } else if sync.as_deref() == Some("connected") {
                LinkState::Idle
            } else {
                LinkState::Down
            };
            links.push(Link {
                a: a.id.clone(),
                b: b.id.clone(),
                state,
                transport: tunnel.map(|t| t.transport.clone()),
                rtt_ms: tunnel.and_then(|t| (t.rtt_ms > 0.0).then_some(t.rtt_ms)),
                sync,
            });
        }
    }
    links.sort_by(|l, m| (&l.a, &l.b).cmp(&(&m.a, &m.b)));
    Topology {
        org: status.org.clone(),
        site: status.site.clone(),
        digest: status.digest.clone(),
        records: status.records,
        orgs,
        links,
    }
}

/// `/api/v1/members`: members with their gateways, pending joins with their votes, revoked
/// orgs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Members {
    /// The consortium's consensus (`none`, `raft`, `qbft`, `ibft`, `clique`).
    pub consensus: String,
    /// Active members, by org name.
    pub members: Vec<Member>,
    /// Joins waiting for votes.
    pub pending: Vec<Pending>,
    /// Revoked orgs, by name.
    pub revoked: Vec<String>,
}

/// An active member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Org name.
    pub org: String,
    /// When the org was admitted, Unix seconds (`null`: unknown).
    pub admitted_unix: Option<i64>,
    /// Its gateways.
    pub gateways: Vec<Gateway>,
}

/// A member's gateway (site).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gateway {
    /// Site name.
    pub site: String,
    /// Advertised `host:port` endpoints.
    pub advertise: Vec<String>,
    /// The site accepts no inbound connections.
    pub outbound_only: bool,
}

/// A pending join.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pending {
    /// The candidate org.
    pub org: String,
    /// Orgs that voted to admit it.
    pub votes: Vec<String>,
}

/// Builds the member document from `ListMembers`.
pub fn members(list: &pb::ListMembersResponse) -> Members {
    let gateways = |m: &pb::MemberInfo| {
        m.gateways
            .iter()
            .map(|g| Gateway {
                site: g.site.clone(),
                advertise: g.advertise.clone(),
                outbound_only: g.outbound_only,
            })
            .collect()
    };
    Members {
        consensus: list.consensus.clone(),
        members: list
            .members
            .iter()
            .filter(|m| m.status == "active")
            .map(|m| Member {
                org: m.org.clone(),
                admitted_unix: nonzero(m.admitted_unix),
                gateways: gateways(m),
            })
            .collect(),
        pending: list
            .pending
            .iter()
            .map(|m| Pending {
                org: m.org.clone(),
                votes: m.approved_by.clone(),
            })
            .collect(),
        revoked: list
            .members
            .iter()
            .filter(|m| m.status == "revoked")
            .map(|m| m.org.clone())
            .collect(),
    }
}

/// `/api/v1/nodes`: every node of every org, by org then name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nodes {
    /// The nodes.
    pub nodes: Vec<NodeRow>,
}

/// Whether a node can be reached from this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// This org's node, registered at this site: clients dial it directly.
    Local,
    /// This org's node served by another site of the org.
    OtherSite,
    /// A tunnel link to the node's site is up.
    Up,
    /// The sync stream to the node's site is up; a tunnel link is dialled on first use.
    OnDemand,
    /// Neither a tunnel link nor a sync stream to the node's site is up.
    Down,
    /// No local address could be allocated here, so clients cannot reach it.
    NoAddress,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    /// Owning org.
    pub org: String,
    /// Node name.
    pub name: String,
    /// `<node>.<org>.<domain>`: the name clients use.
    pub consortium_name: String,
    /// `goquorum`, `besu`, `tessera`, `fabric-peer`, `fabric-orderer`, or `null`.
    pub client: Option<String>,
    /// The site whose gateway serves the node (`null`: not announced).
    pub site: Option<String>,
    /// Port name (`p2p`, `raft`, `tessera`, named services) → the node's real port.
    pub ports: BTreeMap<String, u32>,
    /// The address clients at this site dial (`null`: none).
    pub local_address: Option<String>,
    /// Port name → port at `local_address`.
    pub local_ports: BTreeMap<String, u32>,
    /// Whether the node can be reached from here.
    pub reachability: Reachability,
}

fn client_name(kind: i32) -> Option<String> {
    let name = match pb::ClientKind::try_from(kind).ok()? {
        pb::ClientKind::Unspecified => return None,
        pb::ClientKind::Goquorum => "goquorum",
        pb::ClientKind::Besu => "besu",
        pb::ClientKind::Tessera => "tessera",
        pb::ClientKind::FabricPeer => "fabric-peer",
        pb::ClientKind::FabricOrderer => "fabric-orderer",
        pb::ClientKind::Ipfs => "ipfs",
    };
    Some(name.to_owned())
}

/// Builds the node document from `ListNodes` and the status report (for link states).
pub fn nodes(list: &pb::ListNodesResponse, status: &pb::StatusResponse) -> Nodes {
    let links: BTreeSet<String> = status
        .tunnels
        .iter()
        .map(|t| site_key(&t.org, &t.site))
        .collect();
    let synced: BTreeSet<String> = status
        .peers
        .iter()
        .filter(|p| p.state == "connected")
        .map(|p| site_key(&p.org, &p.site))
        .collect();
    let mut nodes: Vec<NodeRow> = list
        .nodes
        .iter()
        .map(|n| {
            let record = n.record.clone().unwrap_or_default();
            // every named port the record carries (p2p, raft, tessera, services); a record
            // the view took is valid, so a failure here only leaves the column empty
            let ports: BTreeMap<String, u32> = fedgw_proto::domain::Node::try_from(&record)
                .map(|node| {
                    node.ports()
                        .into_iter()
                        .map(|(name, p)| (name, u32::from(p)))
                        .collect()
                })
                .unwrap_or_default();
            let site = text(&record.site);
            let at = site_key(&n.org, &record.site);
            let local_address = text(&n.service_ip).or_else(|| text(&n.local_ip));
            let reachability = if n.org == status.org {
                if record.site.is_empty() || record.site == status.site {
                    Reachability::Local
                } else {
                    Reachability::OtherSite
                }
            } else if local_address.is_none() {
                Reachability::NoAddress
            } else if links.contains(&at) {
                Reachability::Up
            } else if synced.contains(&at) {
                Reachability::OnDemand
            } else {
                Reachability::Down
            };
            NodeRow {
                org: n.org.clone(),
                name: n.name.clone(),
                consortium_name: n.dns_name.clone(),
                client: client_name(record.client),
                site,
                ports,
                local_address,
                local_ports: n.local_ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                reachability,
            }
        })
        .collect();
    nodes.sort_by(|a, b| (&a.org, &a.name).cmp(&(&b.org, &b.name)));
    Nodes { nodes }
}

/// `/api/v1/audit`: audit-trail entries, newest first, as the audit source gives them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    /// Whether this gateway has an audit trail at all (`false`: no audit source is wired).
    pub available: bool,
    /// The org filter applied (`null`: all orgs).
    pub org: Option<String>,
    /// The kind filter applied (`null`: all kinds).
    pub kind: Option<String>,
    /// The entries, at most [`super::MAX_AUDIT_ENTRIES`].
    pub entries: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests;
