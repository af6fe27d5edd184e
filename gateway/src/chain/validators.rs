//! QBFT/IBFT validator votes driven by fedgw (docs/DESIGN.md section 13, "Validator votes").
//!
//! An org proposes to add a node to the validator set, or to remove it (a `validator/<org>/<node>`
//! record signed by the proposing org); each member org approves it with a
//! `validator-vote/<voter>/<org>.<node>` record naming the proposal's seq. The proposal counts
//! as its proposer's approval; the consortium's admission policy sets how many are needed
//! ([`approvals_needed`]). Once a proposal has them, every site makes each of its own local
//! validator nodes vote for the change over JSON-RPC and, once the validator set shows it,
//! discard the vote, so a node stops proposing it in later blocks.
//!
//! | client   | consensus  | read the set                                 | pending votes           | vote                                  | discard                        |
//! |----------|------------|----------------------------------------------|-------------------------|---------------------------------------|--------------------------------|
//! | GoQuorum | qbft, ibft | `istanbul_getValidators("latest")`          | `istanbul_candidates`   | `istanbul_propose(address, auth)`     | `istanbul_discard(address)`    |
//! | Besu     | qbft       | `qbft_getValidatorsByBlockNumber("latest")` | `qbft_getPendingVotes`  | `qbft_proposeValidatorVote(address, auth)` | `qbft_discardValidatorVote(address)` |
//! | Besu     | ibft       | `ibft_getValidatorsByBlockNumber("latest")` | `ibft_getPendingVotes`  | `ibft_proposeValidatorVote(address, auth)` | `ibft_discardValidatorVote(address)` |
//!
//! A local node is a validator when its address ([`fedgw_proto::enode::Address`], from its enode
//! id) is in the set it reports; only validators vote (the others' votes would not count). A vote
//! a node holds for a consortium node that no approved proposal asks for (a proposal withdrawn,
//! or tombstoned once done) is discarded too: fedgw owns the votes about consortium nodes.
//! Once the change shows, the proposing org's gateway deletes the proposal (a tombstone).
//!
//! [`plan`] decides from one node's read-back which calls it gets; it is pure. [`Votes::pass`]
//! reads the nodes, executes the plans with a backoff per node on failure, and keeps what
//! `fedgw chain status` shows; [`keeper`] is the async shell started by `fedgw run`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use fedgw_certs::ids::NodeKey;
use fedgw_proto::enode::{Address, EnodeId};
use fedgw_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{info, warn};

use super::rpc::{RpcClient, RpcError};
use crate::config::{Admission, Consensus};
use crate::membership::view::View;

pub mod keeper;

/// Most validator proposals a pass looks at (the first ones by node); a consortium changes its
/// validator set one or a few nodes at a time.
pub const MAX_PROPOSALS: usize = 64;
/// Most addresses read from one validator set or pending-vote list; larger answers are refused.
pub const MAX_SET: usize = 1024;

/// Approvals a proposal needs under `policy` with `members` active member orgs: one (the
/// proposer's) for `operator`, more than half for `majority`, every member for `all`.
pub fn approvals_needed(policy: Admission, members: usize) -> usize {
    match policy {
        Admission::Operator => 1,
        Admission::Majority => members / 2 + 1,
        Admission::All => members,
    }
}

/// Whether the consortium's consensus has a validator set fedgw can vote on.
pub fn votes_on(consensus: Consensus) -> bool {
    consensus.has_validator_set()
}

/// An open proposal with its approvals, from the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The node to add or remove.
    pub node: NodeKey,
    /// The proposal record's seq.
    pub seq: u64,
    /// `true`: add; `false`: remove.
    pub add: bool,
    /// The node's address.
    pub address: Address,
    /// The proposing org.
    pub proposer: String,
    /// Active member orgs that approve it (the proposer included), sorted.
    pub approvals: Vec<String>,
    /// Approvals needed.
    pub needed: usize,
}

impl Proposal {
    /// Whether it has the approvals it needs.
    pub fn approved(&self) -> bool {
        self.approvals.len() >= self.needed
    }

    /// Whether `set` shows the change.
    pub fn applied(&self, set: &BTreeSet<Address>) -> bool {
        set.contains(&self.address) == self.add
    }
}

/// The open proposals in `view`, at most [`MAX_PROPOSALS`], with approvals counted under
/// `policy`.
pub fn proposals(view: &View, policy: Admission) -> Vec<Proposal> {
    let needed = approvals_needed(policy, view.members().len());
    view.validator_proposals()
        .into_iter()
        .take(MAX_PROPOSALS)
        .filter_map(|p| {
            let id = EnodeId::from_bytes(<[u8; 64]>::try_from(p.enode_id.as_slice()).ok()?);
            let mut approvals: BTreeSet<String> = view
                .validator_approvals(&p.node, p.seq)
                .into_iter()
                .collect();
            if view.is_member(&p.proposer) {
                approvals.insert(p.proposer.clone());
            }
            Some(Proposal {
                node: p.node,
                seq: p.seq,
                add: p.add,
                address: id.address(),
                proposer: p.proposer,
                approvals: approvals.into_iter().collect(),
                needed,
            })
        })
        .collect()
}

/// The addresses of every node in the view with an enode id: the votes fedgw owns.
pub fn consortium_addresses(view: &View) -> BTreeSet<Address> {
    view.nodes()
        .iter()
        .filter_map(|n| n.node.enode_id.as_ref().map(EnodeId::address))
        .chain(
            view.validator_proposals()
                .iter()
                .filter_map(|p| <[u8; 64]>::try_from(p.enode_id.as_slice()).ok())
                .map(|b| EnodeId::from_bytes(b).address()),
        )
        .collect()
}

/// What one local node reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRead {
    /// The validator set at the latest block.
    pub validators: BTreeSet<Address>,
    /// The node's own pending votes: address → `true` to add, `false` to remove.
    pub pending: BTreeMap<Address, bool>,
}

/// One call to make on a local node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Vote to add (`auth`) or remove the address.
    Propose {
        /// The node voted on.
        address: Address,
        /// `true`: add; `false`: remove.
        auth: bool,
    },
    /// Drop the node's pending vote about the address.
    Discard {
        /// The node voted on.
        address: Address,
    },
}

/// The calls local node `me` gets, from what it reported: a vote for every approved proposal
/// whose change does not show yet (unless it holds that vote), a discard for every vote it holds
/// about a consortium node (`owned`) that no approved, unapplied proposal asks for. A node that
/// is not a validator gets none.
pub fn plan(
    me: Address,
    read: &NodeRead,
    proposals: &[Proposal],
    owned: &BTreeSet<Address>,
) -> Vec<Action> {
    if !read.validators.contains(&me) {
        return Vec::new();
    }
    let wanted: BTreeMap<Address, bool> = proposals
        .iter()
        .filter(|p| p.approved() && !p.applied(&read.validators))
        .map(|p| (p.address, p.add))
        .collect();
    let mut out: Vec<Action> = wanted
        .iter()
        .filter(|(a, auth)| read.pending.get(*a) != Some(*auth))
        .map(|(a, auth)| Action::Propose {
            address: *a,
            auth: *auth,
        })
        .collect();
    out.extend(
        read.pending
            .iter()
            .filter(|(a, _)| owned.contains(*a) && !wanted.contains_key(*a))
            .map(|(a, _)| Action::Discard { address: *a }),
    );
    out
}

/// Which JSON-RPC namespace a node speaks for validator votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// GoQuorum, QBFT or IBFT: `istanbul_*`.
    Istanbul,
    /// Besu QBFT: `qbft_*`.
    BesuQbft,
    /// Besu IBFT 2.0: `ibft_*`.
    BesuIbft,
}

impl Dialect {
    /// The dialect of a node of `client` under `consensus`; `None` when it has no validator
    /// votes (Tessera, Fabric, or a consensus without a validator set).
    pub fn of(client: pb::ClientKind, consensus: Consensus) -> Option<Self> {
        match (client, consensus) {
            (pb::ClientKind::Goquorum, Consensus::Qbft | Consensus::Ibft) => Some(Self::Istanbul),
            (pb::ClientKind::Besu, Consensus::Qbft) => Some(Self::BesuQbft),
            (pb::ClientKind::Besu, Consensus::Ibft) => Some(Self::BesuIbft),
            _ => None,
        }
    }

    fn methods(self) -> [&'static str; 4] {
        match self {
            Self::Istanbul => [
                "istanbul_getValidators",
                "istanbul_candidates",
                "istanbul_propose",
                "istanbul_discard",
            ],
            Self::BesuQbft => [
                "qbft_getValidatorsByBlockNumber",
                "qbft_getPendingVotes",
                "qbft_proposeValidatorVote",
                "qbft_discardValidatorVote",
            ],
            Self::BesuIbft => [
                "ibft_getValidatorsByBlockNumber",
                "ibft_getPendingVotes",
                "ibft_proposeValidatorVote",
                "ibft_discardValidatorVote",
            ],
        }
    }

    /// The validator set at the latest block.
    pub async fn validators(self, c: &RpcClient) -> Result<BTreeSet<Address>, RpcError> {
        let method = self.methods()[0];
        let set: Vec<Address> = c.call(method, json!(["latest"])).await?;
        if set.len() > MAX_SET {
            return Err(RpcError::Garbage);
        }
        Ok(set.into_iter().collect())
    }

    /// The node's pending votes.
    pub async fn pending(self, c: &RpcClient) -> Result<BTreeMap<Address, bool>, RpcError> {
        let method = self.methods()[1];
        let votes: Option<BTreeMap<Address, bool>> = c.call(method, json!([])).await?;
        let votes = votes.unwrap_or_default();
        if votes.len() > MAX_SET {
            return Err(RpcError::Garbage);
        }
        Ok(votes)
    }

    /// Makes one call of `action`; any non-error answer is taken as done (GoQuorum answers
    /// `null`, Besu `true`).
    pub async fn execute(self, c: &RpcClient, action: &Action) -> Result<(), RpcError> {
        let [_, _, propose, discard] = self.methods();
        let _: Value = match action {
            Action::Propose { address, auth } => {
                c.call(propose, json!([address.to_string(), auth])).await?
            }
            Action::Discard { address } => c.call(discard, json!([address.to_string()])).await?,
        };
        Ok(())
    }
}

/// A local node that may vote.
#[derive(Clone)]
pub struct LocalValidator {
    /// The node's name.
    pub name: String,
    /// Its address.
    pub address: Address,
    /// The namespace it speaks.
    pub dialect: Dialect,
    /// Its RPC client.
    pub client: RpcClient,
}

/// One local node as the last pass saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Whether its address is in the set it reported (`None`: not read yet or the read failed).
    pub validator: Option<bool>,
    /// Votes it holds, as it reported them.
    pub pending: BTreeMap<Address, bool>,
    /// Failed passes in a row.
    pub failures: u32,
    /// The last failure, with its sources.
    pub last_error: Option<String>,
    /// Not asked again before this instant.
    pub next_retry: Option<Instant>,
}

/// What `fedgw chain status` shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Open proposals with their approvals.
    pub proposals: Vec<Proposal>,
    /// Proposals whose change shows in a set read here, by node.
    pub applied: BTreeSet<NodeKey>,
    /// Local nodes, by name.
    pub nodes: BTreeMap<String, NodeState>,
}

/// Shared view of the vote keeper's state, for the admin API.
#[derive(Clone, Debug, Default)]
pub struct VotesHandle(Arc<Mutex<Snapshot>>);

impl VotesHandle {
    /// The state after the last pass.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, s: Snapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// The vote keeper's state between passes.
#[derive(Debug, Default)]
pub struct Votes {
    nodes: BTreeMap<String, NodeState>,
    handle: VotesHandle,
}

impl Votes {
    /// A keeper that reports to `handle`.
    pub fn new(handle: VotesHandle) -> Self {
        Votes {
            handle,
            ..Votes::default()
        }
    }

    /// The earliest instant a node's retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.nodes.values().filter_map(|n| n.next_retry).min()
    }

    /// One pass: every local node not waiting for a retry reports its set and votes, and gets
    /// the calls [`plan`] gives it. Returns the proposals whose change shows at a node of this
    /// site.
    pub async fn pass(
        &mut self,
        proposals: &[Proposal],
        owned: &BTreeSet<Address>,
        locals: &[LocalValidator],
        now: Instant,
    ) -> BTreeSet<NodeKey> {
        self.nodes
            .retain(|name, _| locals.iter().any(|l| l.name == *name));
        let mut applied = BTreeSet::new();
        for l in locals {
            let state = self.nodes.entry(l.name.clone()).or_default();
            if state.next_retry.is_some_and(|t| t > now) {
                continue;
            }
            match node_pass(l, proposals, owned).await {
                Ok(read) => {
                    applied.extend(
                        proposals
                            .iter()
                            .filter(|p| p.applied(&read.validators))
                            .map(|p| p.node.clone()),
                    );
                    *state = NodeState {
                        validator: Some(read.validators.contains(&l.address)),
                        pending: read.pending,
                        ..NodeState::default()
                    };
                }
                Err(e) => {
                    let text = crate::net::with_sources(&e);
                    warn!(node = %l.name, error = %text, "validator vote failed; retrying later");
                    state.next_retry = Some(now + super::raft::backoff(state.failures));
                    state.failures = state.failures.saturating_add(1);
                    state.last_error = Some(text);
                }
            }
        }
        self.handle.set(Snapshot {
            proposals: proposals.to_vec(),
            applied: applied.clone(),
            nodes: self.nodes.clone(),
        });
        applied
    }
}

/// Reads one node, makes its calls, and returns what it reported (pending votes as they stand
/// after the calls).
async fn node_pass(
    l: &LocalValidator,
    proposals: &[Proposal],
    owned: &BTreeSet<Address>,
) -> Result<NodeRead, RpcError> {
    let validators = l.dialect.validators(&l.client).await?;
    let pending = l.dialect.pending(&l.client).await?;
    let mut read = NodeRead {
        validators,
        pending,
    };
    for action in plan(l.address, &read, proposals, owned) {
        l.dialect.execute(&l.client, &action).await?;
        match action {
            Action::Propose { address, auth } => {
                info!(node = %l.name, %address, auth, "validator vote cast");
                read.pending.insert(address, auth);
            }
            Action::Discard { address } => {
                info!(node = %l.name, %address, "validator vote discarded");
                read.pending.remove(&address);
            }
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests;
