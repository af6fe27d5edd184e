//! `fedgw chain status`: the chain as this site sees it, read live from each local node's RPC
//! endpoint, with the raft keeper's pending changes ([`super::keeper::KeeperHandle`]) and, for
//! QBFT/IBFT, the open validator proposals with this site's votes
//! ([`super::validators::VotesHandle`]).

use std::time::Duration;

use fedgw_proto::v1 as pb;
use tokio::time::Instant;

use super::keeper::{self, KeeperHandle};
use super::rpc::{RpcError, RpcUrl};
use super::validators::{Dialect, VotesHandle};
use crate::config::Consensus;
use crate::metrics::Metrics;

/// Bound on each call `chain status` makes (all nodes are asked at once).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// A local node to ask: name, RPC endpoint, enode id (128 hex digits) when it has one.
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// The node's name.
    pub name: String,
    /// Its RPC endpoint.
    pub url: RpcUrl,
    /// Its enode id, to find its raft id in `raft_cluster`.
    pub enode_id: Option<String>,
    /// QBFT/IBFT: how to read its validator set, and its address.
    pub validator: Option<(Dialect, fedgw_proto::enode::Address)>,
}

fn first_error(errors: &[&Result<(), &RpcError>]) -> String {
    errors
        .iter()
        .find_map(|r| r.err())
        .map(|e| crate::net::with_sources(e))
        .unwrap_or_default()
}

async fn node_status(node: LocalNode, raft: bool, metrics: Metrics) -> pb::ChainNodeStatus {
    let c = keeper::client(node.url.clone(), &metrics).with_timeout(STATUS_TIMEOUT);
    let (height, peers) = tokio::join!(c.block_number(), c.peer_count());
    let (role, cluster) = if raft {
        let (r, c) = tokio::join!(c.raft_role(), c.raft_cluster());
        (Some(r), Some(c))
    } else {
        (None, None)
    };
    let set = match node.validator {
        Some((dialect, _)) => Some(dialect.validators(&c).await),
        None => None,
    };
    let validator = match (&set, node.validator) {
        (Some(Ok(set)), Some((_, a))) if set.contains(&a) => "yes",
        (Some(Ok(_)), Some(_)) => "no",
        _ => "",
    };
    if let Ok(h) = &height {
        metrics.set_chain_block_height(&node.name, *h);
    }
    let raft_id = match (&cluster, &node.enode_id) {
        (Some(Ok(cl)), Some(id)) => cl
            .iter()
            .find(|p| p.node_id.eq_ignore_ascii_case(id))
            .map_or(0, |p| u32::from(p.raft_id)),
        _ => 0,
    };
    let error = first_error(&[
        &height.as_ref().map(|_| ()),
        &peers.as_ref().map(|_| ()),
        &role.as_ref().map_or(Ok(()), |r| r.as_ref().map(|_| ())),
        &cluster.as_ref().map_or(Ok(()), |r| r.as_ref().map(|_| ())),
        &set.as_ref().map_or(Ok(()), |r| r.as_ref().map(|_| ())),
    ]);
    pb::ChainNodeStatus {
        name: node.name,
        rpc_url: node.url.to_string(),
        raft_role: role.and_then(Result::ok).unwrap_or_default(),
        raft_id,
        block_number: height.unwrap_or(0),
        peer_count: peers.unwrap_or(0),
        error,
        validator: validator.to_owned(),
        address: node
            .validator
            .map_or_else(String::new, |(_, a)| a.to_string()),
    }
}

/// Reads every local node (at once, each call bounded by [`STATUS_TIMEOUT`]) and adds the
/// keeper's state.
pub async fn read(
    consensus: Consensus,
    nodes: Vec<LocalNode>,
    handle: &KeeperHandle,
    votes: &VotesHandle,
    metrics: &Metrics,
) -> pb::ChainStatusResponse {
    let raft = consensus == Consensus::Raft;
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.into_iter().take(keeper::MAX_LOCAL).enumerate() {
        let m = metrics.clone();
        set.spawn(async move { (i, node_status(n, raft, m).await) });
    }
    let mut out: Vec<(usize, pb::ChainNodeStatus)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    let snap = handle.snapshot();
    let now = Instant::now();
    pb::ChainStatusResponse {
        consensus: consensus.name().to_owned(),
        nodes: out.into_iter().map(|(_, s)| s).collect(),
        pending: snap
            .pending
            .iter()
            .map(|(node, p)| pb::RaftChange {
                node: node.to_string(),
                action: p.action.to_owned(),
                last_error: p.last_error.clone().unwrap_or_default(),
                failures: p.failures,
                next_retry_ms: p.next_retry.map_or(0, |t| {
                    u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
                }),
            })
            .collect(),
        adders: snap.adders,
        acting: snap.acting,
        last_error: snap.last_error.unwrap_or_default(),
        proposals: proposal_status(&votes.snapshot()),
    }
}

/// The open proposals with their progress at this site.
fn proposal_status(snap: &super::validators::Snapshot) -> Vec<pb::ValidatorProposalStatus> {
    snap.proposals
        .iter()
        .map(|p| {
            let progress = if snap.applied.contains(&p.node) {
                "applied"
            } else if p.approved() {
                "voting"
            } else {
                "waiting for approvals"
            };
            pb::ValidatorProposalStatus {
                node: p.node.to_string(),
                address: p.address.to_string(),
                add: p.add,
                proposer: p.proposer.clone(),
                seq: p.seq,
                approvals: p.approvals.clone(),
                needed: u32::try_from(p.needed).unwrap_or(u32::MAX),
                progress: progress.to_owned(),
                voted_by: snap
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.pending.get(&p.address) == Some(&p.add))
                    .map(|(name, _)| name.clone())
                    .collect(),
            }
        })
        .collect()
}
