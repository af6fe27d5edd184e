//! The projection of the membership view onto this site, as values: each node of the view
//! becomes a DNS entry ([`ZoneNode`]) and either a far-end target (this site's own node) or
//! near-end routes (a remote node at its local address); each gateway a DNS name and a peer.
//! Pure: no IO, no clocks, no logging.
//!
//! A [`Plan`] holds the projection of every node; [`Plan::set_node`] replaces one node's and
//! records what that changed in a [`Delta`], which the keeper hands to the DNS zone and the
//! data plane. So a change costs what it touches, and the same code serves a full rebuild (every
//! node set in turn, the ones gone set to `None`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use fedgw_proto::v1 as pb;

use crate::addressing::Allocations;
use crate::dns::{ZoneGateway, ZoneNode};
use crate::membership::view::NodeView;
use crate::membership::{GatewayId, NodeKey};
use crate::tunnel::PeerGateway;
use crate::tunnel::far::{Target, Targets, TargetsChange};
use crate::tunnel::header::HeaderError;
use crate::tunnel::near::{Route, RouteChange};

/// This site's own state that the projection combines with the view, as the store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteState {
    /// This site's nodes' real hosts: name → host.
    pub local: BTreeMap<String, String>,
    /// This site's nodes with replicas: name → their hosts after `local`'s (the far end
    /// spreads connections over them; DNS names the first).
    pub replicas: BTreeMap<String, Vec<String>>,
    /// Remote nodes' Service addresses (Kubernetes ClusterIPs): `org/name` → IP.
    pub services: BTreeMap<String, IpAddr>,
    /// This site's nodes' one-label hosts (a Compose service, a container name) as the
    /// gateway's resolver answered them: host → its first address, `None` when it did not
    /// resolve. Such a node answers that address, not a CNAME to a top-level name
    /// ([`crate::dns::alias_target`]).
    pub short_hosts: BTreeMap<String, Option<IpAddr>>,
}

/// What a node's projection reads besides the node itself.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// This gateway.
    pub me: &'a GatewayId,
    /// This site's node hosts and remote nodes' Service addresses.
    pub site: &'a SiteState,
    /// Remote nodes' local addresses.
    pub alloc: &'a Allocations,
}

/// What one node of the view becomes at this site.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// Its DNS entry.
    pub zone: ZoneNode,
    /// This site's own node, reachable by tunnel streams (far end).
    pub target: Option<Target>,
    /// A remote node: one route per port at its local address (near end).
    pub routes: Vec<Route>,
    /// Ports that got no route: the port name and why.
    pub bad_routes: Vec<(String, HeaderError)>,
}

/// Projects one node: the rules of docs/DESIGN.md section 8 (local addresses) and section 7
/// (the split-horizon zone).
///
/// - this org's node: its registered host at this site, as the A record when it is an IP and
///   as a CNAME otherwise, with its real ports; a far-end target when it runs at this site
///   and its host is known;
/// - another org's node: its Service address with its real ports if one is set (Kubernetes),
///   else its local address with the allocated ports, and a route per allocated port; no
///   address yet: the name only.
pub fn project_node(inputs: Inputs<'_>, n: &NodeView) -> NodePlan {
    let Inputs { me, site, alloc } = inputs;
    let enode_id = n.node.enode_id;
    let mut plan = NodePlan {
        zone: ZoneNode {
            org: n.org.clone(),
            name: n.name.clone(),
            ip: None,
            alias: None,
            ports: BTreeMap::new(),
            enode_id,
        },
        target: None,
        routes: vec![],
        bad_routes: vec![],
    };
    if n.org == me.org {
        let host = site.local.get(&n.name);
        plan.zone.ip = host.and_then(|h| {
            h.parse()
                .ok()
                .or_else(|| site.short_hosts.get(h).copied().flatten())
        });
        plan.zone.alias = host.filter(|_| plan.zone.ip.is_none()).cloned();
        plan.zone.ports = n.node.ports();
        if n.node.site == me.site
            && let Some(host) = host
        {
            plan.target = Some(Target {
                host: host.clone(),
                replicas: site.replicas.get(&n.name).cloned().unwrap_or_default(),
                ports: n.node.ports(),
                allowed_orgs: n.node.allowed_orgs.clone(),
            });
        }
        return plan;
    }
    let key = n.key().to_string();
    let held = alloc.nodes.get(&key);
    match (site.services.get(&key), held) {
        (Some(ip), _) => {
            plan.zone.ip = Some(*ip);
            plan.zone.ports = n.node.ports();
        }
        (None, Some(a)) => {
            plan.zone.ip = Some(a.ip);
            plan.zone.ports = a.ports.clone();
        }
        (None, None) => {}
    }
    if let Some(addr) = held {
        let site = GatewayId::new(n.org.clone(), n.node.site.clone());
        for (port_name, port) in &addr.ports {
            let at = SocketAddr::new(addr.ip, *port);
            match Route::new(at, site.clone(), &n.org, &n.name, port_name) {
                Ok(r) => plan.routes.push(r),
                Err(e) => plan.bad_routes.push((port_name.clone(), e)),
            }
        }
    }
    plan
}

/// A gateway of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEntry {
    /// `org/site`.
    pub id: GatewayId,
    /// Its record.
    pub record: pb::GatewayRecord,
}

impl GatewayEntry {
    /// Its DNS name's entry: the first advertised endpoint's IP, if it is one.
    pub fn zone(&self) -> ZoneGateway {
        ZoneGateway {
            ip: self
                .record
                .advertise
                .first()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|s| s.ip()),
            org: self.id.org.clone(),
            site: self.id.site.clone(),
        }
    }

    /// The peer the data plane links with.
    pub fn peer(&self) -> PeerGateway {
        PeerGateway {
            id: self.id.clone(),
            advertise: self.record.advertise.clone(),
            outbound_only: self.record.outbound_only,
        }
    }
}

/// What a change of the plan changed, for the DNS zone and the data plane.
#[derive(Debug, Default)]
pub struct Delta {
    /// Zone entries to set (`Some`) or remove (`None`), in order.
    pub zone: Vec<(NodeKey, Option<ZoneNode>)>,
    /// The far-end targets changed ([`Plan::targets`] gives them).
    pub targets: bool,
    /// This site's nodes whose target changed: name → its target now (`None`: none), in order.
    pub target_nodes: Vec<(String, Option<Target>)>,
    /// The member orgs changed: the far end needs every target anew.
    pub members: bool,
    /// Routes to listen on and addresses to stop listening on.
    pub routes: RouteChange,
    /// The gateways changed ([`Plan::gateways`]).
    pub gateways: bool,
}

impl Delta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.zone.is_empty() && !self.targets && self.routes.is_empty() && !self.gateways
    }
}

/// The projection of the whole view: every node's [`NodePlan`], the far-end targets, the
/// members and the gateways.
#[derive(Debug, Default)]
pub struct Plan {
    nodes: BTreeMap<NodeKey, NodePlan>,
    /// This site's own nodes' targets (kept beside `nodes`, so handing them over costs the
    /// number of this site's nodes, not of the view's).
    targets: BTreeMap<String, Target>,
    members: BTreeSet<String>,
    gateways: Vec<GatewayEntry>,
}

impl Plan {
    /// Replaces the projection of node `id` (`None`: it left the view) and adds what that
    /// changed to `delta`.
    pub fn set_node(&mut self, id: NodeKey, new: Option<NodePlan>, delta: &mut Delta) {
        let old = match &new {
            Some(p) => self.nodes.insert(id.clone(), p.clone()),
            None => self.nodes.remove(&id),
        };
        let zone_old = old.as_ref().map(|p| &p.zone);
        let zone_new = new.as_ref().map(|p| &p.zone);
        if zone_old != zone_new {
            delta.zone.push((id.clone(), zone_new.cloned()));
        }
        let target_old = old.as_ref().and_then(|p| p.target.as_ref());
        let target_new = new.as_ref().and_then(|p| p.target.as_ref());
        if target_old != target_new {
            match target_new {
                Some(t) => self.targets.insert(id.name.clone(), t.clone()),
                None => self.targets.remove(&id.name),
            };
            delta.targets = true;
            delta
                .target_nodes
                .push((id.name.clone(), target_new.cloned()));
        }
        let routes_old = old.as_ref().map_or(&[][..], |p| &p.routes[..]);
        let routes_new = new.as_ref().map_or(&[][..], |p| &p.routes[..]);
        for r in routes_old {
            if !routes_new.iter().any(|n| n.same_as(r)) {
                delta.routes.removed.push(r.addr);
            }
        }
        for r in routes_new {
            if !routes_old.iter().any(|o| o.same_as(r)) {
                delta.routes.added.push(r.clone());
            }
        }
    }

    /// Replaces the member orgs (who may call this site's nodes).
    pub fn set_members(&mut self, members: BTreeSet<String>, delta: &mut Delta) {
        if members != self.members {
            self.members = members;
            delta.targets = true;
            delta.members = true;
        }
    }

    /// Replaces the gateways.
    pub fn set_gateways(&mut self, gateways: Vec<GatewayEntry>, delta: &mut Delta) {
        if gateways != self.gateways {
            self.gateways = gateways;
            delta.gateways = true;
        }
    }

    /// The nodes the plan holds.
    pub fn node_ids(&self) -> impl Iterator<Item = &NodeKey> + '_ {
        self.nodes.keys()
    }

    /// The projection of one node.
    pub fn node(&self, id: &NodeKey) -> Option<&NodePlan> {
        self.nodes.get(id)
    }

    /// What the far end needs for `delta`: every target when the members changed (or `all`),
    /// else the nodes that changed; `None` when nothing did. Takes the nodes out of `delta`.
    pub fn targets_change(&self, org: &str, delta: &mut Delta, all: bool) -> Option<TargetsChange> {
        if all || delta.members {
            return Some(TargetsChange::All(self.targets(org)));
        }
        let nodes = std::mem::take(&mut delta.target_nodes);
        (!nodes.is_empty()).then_some(TargetsChange::Nodes(nodes))
    }

    /// What the far end serves: this site's reachable nodes of `org` and the members.
    pub fn targets(&self, org: &str) -> Targets {
        Targets {
            org: org.to_owned(),
            nodes: self.targets.clone(),
            members: self.members.clone(),
        }
    }

    /// The gateways' DNS names: one per site (`gw-<site>.<org>`), from its first replica's
    /// record (the gateways are sorted by id, so a site's first replica comes first).
    pub fn zone_gateways(&self) -> Vec<ZoneGateway> {
        let mut out: Vec<ZoneGateway> = Vec::new();
        for g in &self.gateways {
            if !out.iter().any(|z| z.org == g.id.org && z.site == g.id.site) {
                out.push(g.zone());
            }
        }
        out
    }

    /// The peer gateways.
    pub fn peers(&self) -> Vec<PeerGateway> {
        self.gateways.iter().map(GatewayEntry::peer).collect()
    }

    /// Every route, in node order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> + '_ {
        self.nodes.values().flat_map(|p| &p.routes)
    }
}

#[cfg(test)]
mod tests;
