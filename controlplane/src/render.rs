//! Client config renderers (docs/DESIGN.md section 9).
//!
//! Every node is named by its consortium DNS name, `<node>.<org>.<domain>`, which each site's
//! gateway resolves to an address that works from that site (split horizon), so one rendered
//! file is valid at every site. Output is deterministic: nodes sorted by (org, name), one entry
//! per line, a trailing newline; the same input in any order renders the same bytes.
//!
//! | renderer                 | format (reference)                                                   |
//! |--------------------------|----------------------------------------------------------------------|
//! | [`static_nodes`]         | GoQuorum `static-nodes.json`: JSON array of `enode://<id>@<host>:<port>?discport=0[&raftport=<p>]` |
//! | [`permissioned_nodes`]   | GoQuorum basic permissioning `permissioned-nodes.json`: same format |
//! | [`besu_allowlist`]       | Besu `permissions_config.toml`: `nodes-allowlist=[ "enode://<id>@<host>:<port>", ... ]` |
//! | [`tessera_peers`]        | Tessera config `peer` array: `[{"url": "<scheme>://<host>:<port>"}]` |
//! | [`ipfs_cluster_peers`]   | IPFS Cluster `peerstore` file: one `/dns4/<host>/tcp/<port>/p2p/<peer id>` multiaddress per line |
//!
//! Besu resolves host names in enode URLs only with DNS support enabled (`--Xdns-enabled=true`,
//! plus `--Xdns-update-enabled=true` when addresses change); GoQuorum raft needs
//! `--raftdnsenable`.

use fedgw_proto::domain::Node;

/// A node as the renderers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderNode {
    /// Owning org.
    pub org: String,
    /// Node name.
    pub name: String,
    /// The name clients dial: `<node>.<org>.<domain>`.
    pub host: String,
    /// The enode id (64 bytes), if the node runs devp2p.
    pub enode_id: Option<[u8; 64]>,
    /// devp2p TCP port (0: none).
    pub p2p_port: u16,
    /// raft port (0: none).
    pub raft_port: u16,
    /// The Tessera P2P URL the node announced, if any.
    pub tessera_url: Option<String>,
    /// The IPFS Cluster peer id the node announced, if any.
    pub ipfs_peer_id: Option<String>,
    /// The IPFS Cluster port: its `cluster` service, else [`DEFAULT_CLUSTER_PORT`].
    pub cluster_port: u16,
}

/// IPFS Cluster's default cluster (libp2p) port, for a peer without a `cluster` service.
pub const DEFAULT_CLUSTER_PORT: u16 = 9096;

impl RenderNode {
    /// The render form of the node `name` of `org`, in consortium `domain`: its enode id and
    /// ports as checked when its record was read ([`Node`]), 0 for an absent port.
    pub fn new(org: &str, name: &str, domain: &str, node: &Node) -> Self {
        Self {
            org: org.to_owned(),
            name: name.to_owned(),
            host: format!("{name}.{org}.{domain}"),
            enode_id: node.enode_id.map(|id| *id.as_bytes()),
            p2p_port: node.p2p_port.map_or(0, |p| p.get()),
            raft_port: node.raft_port.map_or(0, |p| p.get()),
            tessera_url: node.tessera_url.clone(),
            ipfs_peer_id: node.ipfs_peer_id.as_ref().map(|id| id.as_str().to_owned()),
            cluster_port: node
                .services
                .iter()
                .find(|(n, _)| n.as_str() == "cluster")
                .map_or(DEFAULT_CLUSTER_PORT, |(_, p)| p.get()),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sorted(nodes: &[RenderNode]) -> Vec<&RenderNode> {
    let mut v: Vec<&RenderNode> = nodes.iter().collect();
    v.sort_by(|a, b| (&a.org, &a.name).cmp(&(&b.org, &b.name)));
    v
}

/// The GoQuorum enode URL of a node, or `None` without enode id or p2p port.
pub fn goquorum_enode(n: &RenderNode) -> Option<String> {
    let id = n.enode_id?;
    if n.p2p_port == 0 {
        return None;
    }
    let mut url = format!("enode://{}@{}:{}?discport=0", hex(&id), n.host, n.p2p_port);
    if n.raft_port != 0 {
        url.push_str(&format!("&raftport={}", n.raft_port));
    }
    Some(url)
}

fn json_lines<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        return "[]\n".to_owned();
    }
    let mut out = String::from("[\n");
    for (i, item) in items.iter().enumerate() {
        out.push_str("  ");
        out.push_str(item);
        if i + 1 < items.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]\n");
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// GoQuorum `static-nodes.json`: every node with an enode id and a p2p port.
pub fn static_nodes(nodes: &[RenderNode]) -> String {
    json_lines(
        sorted(nodes)
            .into_iter()
            .filter_map(goquorum_enode)
            .map(|u| json_string(&u)),
    )
}

/// GoQuorum `permissioned-nodes.json` (basic permissioning): the same list as static nodes.
pub fn permissioned_nodes(nodes: &[RenderNode]) -> String {
    static_nodes(nodes)
}

/// The Besu enode URL of a node, `enode://<id>@<name>:<p2p>` (no discport or raftport, as in
/// quorum-dev-quickstart's `files/besu/config/besu/static-nodes.json`), or `None` without enode
/// id or p2p port.
pub fn besu_enode(n: &RenderNode) -> Option<String> {
    let id = n.enode_id?;
    (n.p2p_port != 0).then(|| format!("enode://{}@{}:{}", hex(&id), n.host, n.p2p_port))
}

/// Besu `static-nodes.json`: the [`besu_enode`] URL of every node with an enode id and a p2p
/// port (Besu wants no `discport`/`raftport` query).
pub fn besu_static_nodes(nodes: &[RenderNode]) -> String {
    json_lines(
        sorted(nodes)
            .into_iter()
            .filter_map(besu_enode)
            .map(|u| json_string(&u)),
    )
}

/// Besu `permissions_config.toml` with the `nodes-allowlist` of every node with an enode id
/// and a p2p port (Besu's enode URLs carry no discport/raftport).
pub fn besu_allowlist(nodes: &[RenderNode]) -> String {
    let urls: Vec<String> = sorted(nodes).into_iter().filter_map(besu_enode).collect();
    let mut out = String::from("nodes-allowlist=[\n");
    for (i, u) in urls.iter().enumerate() {
        out.push_str(&json_string(u));
        if i + 1 < urls.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("]\n");
    out
}

/// The URL Tessera should use for a node: the announced URL's scheme, port and path with the
/// node's consortium name as host. `None` when the node announced no usable URL.
pub fn tessera_url(n: &RenderNode) -> Option<String> {
    let announced = n.tessera_url.as_deref()?;
    let (scheme, rest) = announced.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok()?
        }
        _ if scheme == "https" => 443,
        _ => 80,
    };
    Some(format!("{scheme}://{}:{port}{path}", n.host))
}

/// The Tessera `peer` array: one `{"url": ...}` per node with a Tessera URL.
pub fn tessera_peers(nodes: &[RenderNode]) -> String {
    json_lines(
        sorted(nodes)
            .into_iter()
            .filter_map(tessera_url)
            .map(|u| format!("{{\"url\": {}}}", json_string(&u))),
    )
}

/// The IPFS Cluster `peerstore` file (in the cluster peer's config folder, beside
/// `service.json`): one multiaddress `/dns4/<host>/tcp/<cluster port>/p2p/<peer id>` per line,
/// for every node that announced an IPFS Cluster peer id. Empty when there is none.
pub fn ipfs_cluster_peers(nodes: &[RenderNode]) -> String {
    sorted(nodes)
        .into_iter()
        .filter_map(|n| {
            let id = n.ipfs_peer_id.as_deref()?;
            Some(format!(
                "/dns4/{}/tcp/{}/p2p/{id}\n",
                n.host, n.cluster_port
            ))
        })
        .collect()
}

/// A renderer by its CLI name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`static_nodes`].
    StaticNodes,
    /// [`permissioned_nodes`].
    PermissionedNodes,
    /// [`besu_static_nodes`].
    BesuStaticNodes,
    /// [`besu_allowlist`].
    BesuAllowlist,
    /// [`tessera_peers`].
    TesseraPeers,
    /// [`ipfs_cluster_peers`].
    IpfsClusterPeers,
}

impl Kind {
    /// Every renderer with its name (also the file name the controller uses).
    pub const ALL: [(Kind, &'static str); 6] = [
        (Kind::StaticNodes, "static-nodes.json"),
        (Kind::PermissionedNodes, "permissioned-nodes.json"),
        (Kind::BesuStaticNodes, "besu-static-nodes.json"),
        (Kind::BesuAllowlist, "permissions_config.toml"),
        (Kind::TesseraPeers, "tessera-peers.json"),
        (Kind::IpfsClusterPeers, "ipfs-cluster-peerstore"),
    ];

    /// Renders `nodes`.
    pub fn render(self, nodes: &[RenderNode]) -> String {
        match self {
            Kind::StaticNodes => static_nodes(nodes),
            Kind::PermissionedNodes => permissioned_nodes(nodes),
            Kind::BesuStaticNodes => besu_static_nodes(nodes),
            Kind::BesuAllowlist => besu_allowlist(nodes),
            Kind::TesseraPeers => tessera_peers(nodes),
            Kind::IpfsClusterPeers => ipfs_cluster_peers(nodes),
        }
    }
}
