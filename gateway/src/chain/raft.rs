//! Raft membership decisions: which raft calls this site makes, and which raft ids it publishes.
//!
//! Pure: [`plan`] takes the registered nodes, the raft ids already published, the cluster as a
//! local raft member answered `raft_cluster` just now, and which sites may change the cluster;
//! it returns [`Action`]s. The cluster is the source of truth. A node whose enode id is in it is
//! never added again, whoever added it and whether or not its id was published yet (a gateway that
//! stopped between `raft_addPeer` and the record publishes the id on its next pass). Of the sites
//! that host a raft member with a local RPC endpoint, only the one with the lowest gateway id
//! (`org/site`, byte order) acts, so two sites that see the same view never both add; if their
//! views differ, the second still reads the node in the cluster first, or GoQuorum refuses the
//! duplicate enode, which the caller treats as "already added" and reads the cluster again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fedgw_certs::ids::NodeKey;

use super::rpc::RaftPeer;

/// A node that may belong to the raft cluster: registered with an enode id and a raft port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftNode {
    /// The node's consortium key.
    pub key: NodeKey,
    /// The enode id, 128 lowercase hex digits.
    pub enode_id: String,
    /// The devp2p TCP port.
    pub p2p_port: u16,
    /// The raft port.
    pub raft_port: u16,
}

impl RaftNode {
    /// The node's enode URL in its consortium DNS-name form, as `raft_addPeer` takes it:
    /// `enode://ID@NODE.ORG.DOMAIN:P2P?discport=0&raftport=RAFT` (the members run with
    /// `--raftdnsenable`).
    pub fn enode_url(&self, domain: &str) -> String {
        format!(
            "enode://{}@{}.{}.{}:{}?discport=0&raftport={}",
            self.enode_id, self.key.name, self.key.org, domain, self.p2p_port, self.raft_port
        )
    }

    /// The node from a registered one: `None` without an enode id, a p2p port or a raft port
    /// (such a node takes no part in raft).
    pub fn from_record(key: NodeKey, node: &fedgw_proto::domain::Node) -> Option<Self> {
        Some(RaftNode {
            key,
            enode_id: node.enode_id?.to_string(),
            p2p_port: node.p2p_port?.get(),
            raft_port: node.raft_port?.get(),
        })
    }
}

/// What this site does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Call `raft_addPeer` with this enode URL (read `raft_cluster` just before).
    AddPeer {
        /// The node to add.
        node: NodeKey,
        /// Its enode URL, DNS-name form.
        enode_url: String,
    },
    /// Publish (or correct) the node's raft id as the cluster reports it.
    Publish {
        /// The node.
        node: NodeKey,
        /// Its raft id in the cluster.
        raft_id: u16,
    },
    /// Call `raft_removePeer`: the node was removed from the consortium and is still a member.
    RemovePeer {
        /// The removed node.
        node: NodeKey,
        /// Its raft id in the cluster.
        raft_id: u16,
    },
}

/// Everything [`plan`] decides from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The consortium DNS domain, e.g. `fedgw`.
    pub domain: String,
    /// This site's gateway id, `org/site`.
    pub me: String,
    /// Gateway ids (`org/site`) of the sites that host a raft member with a local RPC endpoint,
    /// this one included when it does.
    pub adders: BTreeSet<String>,
    /// Registered raft nodes of admitted orgs.
    pub nodes: Vec<RaftNode>,
    /// Nodes removed from the consortium (their record deleted) with the raft id last published.
    /// GoQuorum never reuses a raft id, so the id names the member.
    pub removed: BTreeMap<NodeKey, u16>,
    /// Raft ids as published in records, per node.
    pub published: BTreeMap<NodeKey, u16>,
}

/// The site among `adders` that changes the raft cluster: the lowest gateway id.
pub fn acting_site(adders: &BTreeSet<String>) -> Option<&str> {
    adders.first().map(String::as_str)
}

/// The actions this site takes given the cluster `cluster` as read just now; empty unless this
/// site is the [`acting_site`]. Adds come in node order; a node is added at most once per pass.
pub fn plan(inputs: &Inputs, cluster: &[RaftPeer]) -> Vec<Action> {
    if acting_site(&inputs.adders) != Some(inputs.me.as_str()) {
        return Vec::new();
    }
    let by_enode: BTreeMap<String, u16> = cluster
        .iter()
        .map(|p| (p.node_id.to_ascii_lowercase(), p.raft_id))
        .collect();
    let in_cluster: BTreeSet<u16> = cluster.iter().map(|p| p.raft_id).collect();
    let mut actions = Vec::new();
    let mut seen = BTreeSet::new();
    for node in &inputs.nodes {
        if !seen.insert(node.enode_id.clone()) {
            // two records with one enode id: only the first one is added
            continue;
        }
        match by_enode.get(&node.enode_id) {
            Some(&raft_id) => {
                if inputs.published.get(&node.key) != Some(&raft_id) {
                    actions.push(Action::Publish {
                        node: node.key.clone(),
                        raft_id,
                    });
                }
            }
            None => actions.push(Action::AddPeer {
                node: node.key.clone(),
                enode_url: node.enode_url(&inputs.domain),
            }),
        }
    }
    let registered: BTreeSet<&str> = inputs.nodes.iter().map(|n| n.enode_id.as_str()).collect();
    for (node, &raft_id) in &inputs.removed {
        let still_used = cluster
            .iter()
            .any(|p| p.raft_id == raft_id && registered.contains(p.node_id.as_str()));
        if in_cluster.contains(&raft_id) && !still_used {
            actions.push(Action::RemovePeer {
                node: node.clone(),
                raft_id,
            });
        }
    }
    actions
}

/// Retry delay after `failures` failed attempts in a row: 1 s doubling to at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    Duration::from_secs(1)
        .checked_mul(1u32 << failures.min(16))
        .map_or(MAX, |d| d.min(MAX))
}

/// The start arguments of a GoQuorum node joining an existing raft cluster with `raft_id`.
pub fn join_args(raft_id: u16) -> String {
    format!("--raftjoinexisting {raft_id} --raftdnsenable")
}

#[cfg(test)]
mod tests;
