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
//!
//! Beyond adds and removals the plan covers three changes, all made by the same acting site:
//! - **Learners**: a node registered with `raft_learner` is added with `raft_addLearner` and
//!   promoted with `raft_promoteToPeer` once the keeper judged it caught up ([`Inputs::caught_up`]:
//!   the cluster lists it `nodeActive` and, when the acting site has its RPC endpoint, its block
//!   height is within [`LEARNER_MAX_LAG`] blocks of the member the cluster was read from).
//! - **Revoked orgs**: the view drops every record about a revoked org (its nodes and their raft
//!   records), so the members are found by the cluster's own DNS host names,
//!   `<node>.<org>.<domain>` (members run with `--raftdnsenable`), and removed.
//! - **A new enode id**: a live node whose published raft record names another enode id has its
//!   old member removed (no tombstone: the record is replaced by the new member's) and the new
//!   enode added.

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
    /// It joins as a learner (`raft_addLearner`), promoted once caught up.
    pub learner: bool,
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
            learner: node.raft_learner,
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
    /// Call `raft_addLearner` with this enode URL: the node was registered as a learner.
    AddLearner {
        /// The node to add.
        node: NodeKey,
        /// Its enode URL, DNS-name form.
        enode_url: String,
    },
    /// Call `raft_promoteToPeer`: the learner has caught up.
    Promote {
        /// The learner.
        node: NodeKey,
        /// Its raft id in the cluster.
        raft_id: u16,
    },
    /// Publish (or correct) the node's raft id as the cluster reports it.
    Publish {
        /// The node.
        node: NodeKey,
        /// Its raft id in the cluster.
        raft_id: u16,
    },
    /// Call `raft_removePeer`: the node was removed from the consortium (or its org revoked, or
    /// its enode id replaced) and is still a member.
    RemovePeer {
        /// The removed node.
        node: NodeKey,
        /// Its raft id in the cluster.
        raft_id: u16,
        /// Then delete the node's raft record: true for a deleted node; false for a revoked
        /// org's node (the view dropped its records already) and for a replaced enode id (the new
        /// member's record replaces it).
        tombstone: bool,
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
    /// Registered nodes whose published raft record names another enode id (the node's key
    /// changed): the raft id of the old member.
    pub replaced: BTreeMap<NodeKey, u16>,
    /// Revoked orgs: their members in the cluster are removed.
    pub revoked: BTreeSet<String>,
    /// Learners the keeper found caught up (see the module docs): promoted.
    pub caught_up: BTreeSet<NodeKey>,
}

/// Most blocks a learner's height may trail the member's for it to count as caught up.
pub const LEARNER_MAX_LAG: u64 = 2;

/// The raft role GoQuorum's `raft_cluster` gives a learner.
pub const LEARNER_ROLE: &str = "learner";

/// The node a cluster member's host name names, `<node>.<org>.<domain>`, if it is one.
fn node_of_hostname(hostname: &str, domain: &str) -> Option<NodeKey> {
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    let rest = host.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    let (name, org) = rest.split_once('.')?;
    (!name.is_empty() && !org.is_empty() && !org.contains('.')).then(|| NodeKey::new(org, name))
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
    let registered: BTreeSet<&str> = inputs.nodes.iter().map(|n| n.enode_id.as_str()).collect();
    let role: BTreeMap<u16, &str> = cluster
        .iter()
        .map(|p| (p.raft_id, p.role.as_str()))
        .collect();
    let mut actions = Vec::new();
    let mut removing = BTreeSet::new();
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
                if role.get(&raft_id) == Some(&LEARNER_ROLE) && inputs.caught_up.contains(&node.key)
                {
                    actions.push(Action::Promote {
                        node: node.key.clone(),
                        raft_id,
                    });
                }
            }
            None => {
                // a new enode id: the old member leaves first, so the node is a member once
                if let Some(&old) = inputs.replaced.get(&node.key) {
                    let old_member = cluster.iter().find(|p| p.raft_id == old);
                    if old_member.is_some_and(|p| !registered.contains(p.node_id.as_str())) {
                        removing.insert(old);
                        actions.push(Action::RemovePeer {
                            node: node.key.clone(),
                            raft_id: old,
                            tombstone: false,
                        });
                    }
                }
                let enode_url = node.enode_url(&inputs.domain);
                let key = node.key.clone();
                actions.push(if node.learner {
                    Action::AddLearner {
                        node: key,
                        enode_url,
                    }
                } else {
                    Action::AddPeer {
                        node: key,
                        enode_url,
                    }
                });
            }
        }
    }
    for (node, &raft_id) in &inputs.removed {
        let still_used = cluster
            .iter()
            .any(|p| p.raft_id == raft_id && registered.contains(p.node_id.as_str()));
        if in_cluster.contains(&raft_id) && !still_used && removing.insert(raft_id) {
            actions.push(Action::RemovePeer {
                node: node.clone(),
                raft_id,
                tombstone: true,
            });
        }
    }
    for p in cluster {
        let Some(node) = node_of_hostname(&p.hostname, &inputs.domain) else {
            continue;
        };
        if inputs.revoked.contains(&node.org)
            && !registered.contains(p.node_id.to_ascii_lowercase().as_str())
            && removing.insert(p.raft_id)
        {
            actions.push(Action::RemovePeer {
                node,
                raft_id: p.raft_id,
                tombstone: false,
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
