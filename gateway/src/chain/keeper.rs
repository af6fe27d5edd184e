//! The raft keeper: runs [`raft::plan`] in `fedgw run` when the consortium's consensus is raft.
//!
//! On every view change and every [`TICK`] it builds the plan's [`Inputs`] from the view (nodes,
//! `raft/<org>/<node>` records, gateway records that say `raft_adder`) and this site's local RPC
//! endpoints, asks the first local raft member that answers for `raft_cluster`, and executes the
//! actions: `raft_addPeer`, then `raft_cluster` again for the id, then the raft record;
//! `raft_removePeer`, then a tombstone for the record. A failed action is retried per node after
//! [`raft::backoff`]; the last error, failure count and next try stay visible in
//! [`KeeperHandle::snapshot`] (`fedgw chain status`). `raft_addPeer` refused by the node while
//! the cluster lists the node (GoQuorum's "node with this enode has already been added") counts
//! as added: the keeper classifies by what the cluster says, not by the message.
//!
//! [`Raft::pass`] holds the logic and takes the RPC clients and a [`RaftRecords`] sink, so tests
//! drive it against `tests/src/rpcfake.rs` without a gateway; [`run`] is the thin async shell.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedgw_certs::ids::NodeKey;
use fedgw_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::raft::{self, Action, Inputs, RaftNode};
use super::rpc::{RaftPeer, RpcClient, RpcError, RpcUrl};
use crate::config::Consensus;
use crate::membership::{Membership, PublishError, SignAs};
use crate::metrics::Metrics;
use crate::store::Store;

/// How often the keeper looks at the cluster without a view change.
pub const TICK: Duration = Duration::from_secs(30);

/// After a view change, how long the keeper waits for more before its pass: view changes
/// come from other orgs' records, so they set the pace of RPC calls to this site's nodes only
/// up to one pass per this interval.
pub const VIEW_GAP: Duration = Duration::from_millis(200);
/// Most local nodes with an RPC endpoint the keeper asks (the first ones by name).
pub const MAX_LOCAL: usize = 16;
/// Bound on one RPC call made by the keeper or `fedgw chain status`.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on one RPC response body, in bytes.
pub const RPC_MAX_BODY: usize = 1 << 20;

/// Why one keeper step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A JSON-RPC call failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// No local raft member with an RPC endpoint is registered at this site.
    #[error("no local raft member with an RPC endpoint")]
    NoMember,
    /// `raft_addPeer` answered, but `raft_cluster` does not list the node.
    #[error("raft_addPeer answered but raft_cluster does not list the node")]
    NotListed,
    /// The raft record could not be published.
    #[error("publishing the raft record")]
    Publish(#[source] PublishError),
}

/// Where raft records go: the gateway's membership in `fedgw run`, a fake in tests.
pub trait RaftRecords: Send + Sync {
    /// Publishes `raft/<org>/<node>` with `raft_id` and the node's 64-byte enode id, signed by
    /// this org.
    fn publish_raft(
        &self,
        node: &NodeKey,
        raft_id: u16,
        enode_id: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), PublishError>> + Send;
    /// Deletes `raft/<org>/<node>` (a tombstone), once the member left the cluster.
    fn delete_raft(
        &self,
        node: &NodeKey,
    ) -> impl std::future::Future<Output = Result<(), PublishError>> + Send;
}

impl RaftRecords for Membership {
    async fn publish_raft(
        &self,
        node: &NodeKey,
        raft_id: u16,
        enode_id: Vec<u8>,
    ) -> Result<(), PublishError> {
        let body = pb::record_body::Body::Raft(pb::RaftRecord {
            raft_id: u32::from(raft_id),
            enode_id,
        });
        self.publish(&node.org, &node.name, body, SignAs::Org).await
    }

    async fn delete_raft(&self, node: &NodeKey) -> Result<(), PublishError> {
        let body = pb::record_body::Body::Tombstone(pb::TombstoneRecord {
            kind: pb::RecordKind::Raft.into(),
        });
        self.publish(&node.org, &node.name, body, SignAs::Org).await
    }
}

/// A raft change this site still has to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// `add`, `add learner`, `promote`, `publish` or `remove`.
    pub action: &'static str,
    /// Failed attempts in a row.
    pub failures: u32,
    /// The last failure, with its sources.
    pub last_error: Option<String>,
    /// Not tried again before this instant.
    pub next_retry: Option<Instant>,
}

/// What the keeper shows: the state after its last pass.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Gateway ids (`org/site`) that may change the cluster; the first acts.
    pub adders: Vec<String>,
    /// Whether this site acts.
    pub acting: bool,
    /// Why the last pass could not read the cluster.
    pub last_error: Option<String>,
    /// Changes still to make, by node.
    pub pending: BTreeMap<NodeKey, Pending>,
}

/// Shared view of the keeper's state, for the admin API.
#[derive(Clone, Debug, Default)]
pub struct KeeperHandle(Arc<Mutex<Snapshot>>);

impl KeeperHandle {
    /// The state after the last pass.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, s: Snapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::AddPeer { .. } => "add",
        Action::AddLearner { .. } => "add learner",
        Action::Promote { .. } => "promote",
        Action::Publish { .. } => "publish",
        Action::RemovePeer { .. } => "remove",
    }
}

fn action_node(a: &Action) -> &NodeKey {
    match a {
        Action::AddPeer { node, .. }
        | Action::AddLearner { node, .. }
        | Action::Promote { node, .. }
        | Action::Publish { node, .. }
        | Action::RemovePeer { node, .. } => node,
    }
}

fn enode_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 128 {
        return None;
    }
    (0..64)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The keeper's state between passes.
#[derive(Debug, Default)]
pub struct Raft {
    pending: BTreeMap<NodeKey, Pending>,
    /// Failed passes in a row (no member answered `raft_cluster`).
    pass_failures: u32,
    next_pass: Option<Instant>,
    last_error: Option<String>,
    handle: KeeperHandle,
}

impl Raft {
    /// A keeper with nothing pending that reports to `handle`.
    pub fn new(handle: KeeperHandle) -> Self {
        Raft {
            handle,
            ..Raft::default()
        }
    }

    /// The earliest instant a retry is due (a failed pass or a failed action), if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| p.next_retry)
            .chain(self.next_pass)
            .min()
    }

    /// One pass: reads the cluster from the first of `members` (local raft members' RPC
    /// clients, in order) that answers with a non-empty cluster, plans, and executes the
    /// actions not waiting for a retry. Nothing happens unless this site is the acting one.
    pub async fn pass<R: RaftRecords>(
        &mut self,
        inputs: &Inputs,
        members: &[RpcClient],
        records: &R,
        now: Instant,
    ) {
        self.pass_with_learners(inputs, members, &[], records, now)
            .await;
    }

    /// [`Raft::pass`] with the RPC clients of this site's learners (registered with
    /// `raft_learner`), by node: a learner listed here is promoted only once its block height
    /// is within [`raft::LEARNER_MAX_LAG`] of the member's the cluster was read from; one not
    /// listed (another site's) once the cluster lists it `nodeActive`.
    pub async fn pass_with_learners<R: RaftRecords>(
        &mut self,
        inputs: &Inputs,
        members: &[RpcClient],
        learners: &[(NodeKey, RpcClient)],
        records: &R,
        now: Instant,
    ) {
        let acting = raft::acting_site(&inputs.adders) == Some(inputs.me.as_str());
        if !acting {
            self.pending.clear();
            self.last_error = None;
            self.next_pass = None;
            self.pass_failures = 0;
        } else if self.next_pass.is_none_or(|t| t <= now) {
            match read_cluster(members).await {
                Ok((client, cluster)) => {
                    self.pass_failures = 0;
                    self.next_pass = None;
                    self.last_error = None;
                    let mut inputs = inputs.clone();
                    inputs.caught_up = caught_up(&inputs, client, &cluster, learners).await;
                    self.execute(&inputs, client, &cluster, records, now).await;
                }
                Err(e) => {
                    let text = crate::net::with_sources(&e);
                    warn!(error = %text, "raft keeper cannot read the cluster");
                    self.next_pass = Some(now + raft::backoff(self.pass_failures));
                    self.pass_failures = self.pass_failures.saturating_add(1);
                    self.last_error = Some(text);
                }
            }
        }
        self.handle.set(Snapshot {
            adders: inputs.adders.iter().cloned().collect(),
            acting,
            last_error: self.last_error.clone(),
            pending: self.pending.clone(),
        });
    }

    async fn execute<R: RaftRecords>(
        &mut self,
        inputs: &Inputs,
        client: &RpcClient,
        cluster: &[RaftPeer],
        records: &R,
        now: Instant,
    ) {
        let actions = raft::plan(inputs, cluster);
        let wanted: BTreeSet<&NodeKey> = actions.iter().map(action_node).collect();
        // a change no longer planned was made (or made moot) elsewhere
        self.pending.retain(|k, _| wanted.contains(k));
        for action in &actions {
            let node = action_node(action).clone();
            let entry = self.pending.entry(node.clone()).or_insert(Pending {
                action: action_name(action),
                failures: 0,
                last_error: None,
                next_retry: None,
            });
            entry.action = action_name(action);
            if entry.next_retry.is_some_and(|t| t > now) {
                continue;
            }
            match step(inputs, client, action, records).await {
                Ok(()) => {
                    self.pending.remove(&node);
                }
                Err(e) => {
                    let text = crate::net::with_sources(&e);
                    warn!(node = %node, action = entry.action, error = %text, "raft change failed; retrying later");
                    entry.next_retry = Some(now + raft::backoff(entry.failures));
                    entry.failures = entry.failures.saturating_add(1);
                    entry.last_error = Some(text);
                }
            }
        }
    }
}

/// The learners in `cluster` that have caught up: listed `nodeActive` and, for one of this
/// site's (in `learners`), at a block height within [`raft::LEARNER_MAX_LAG`] of `member`'s. A
/// height that cannot be read counts as not caught up.
async fn caught_up(
    inputs: &Inputs,
    member: &RpcClient,
    cluster: &[RaftPeer],
    learners: &[(NodeKey, RpcClient)],
) -> BTreeSet<NodeKey> {
    let mut out = BTreeSet::new();
    let mut leader_height = None;
    for p in cluster
        .iter()
        .filter(|p| p.role == raft::LEARNER_ROLE && p.node_active)
    {
        let Some(node) = inputs
            .nodes
            .iter()
            .find(|n| n.learner && n.enode_id.eq_ignore_ascii_case(&p.node_id))
        else {
            continue;
        };
        let ready = match learners.iter().find(|(k, _)| *k == node.key) {
            None => true,
            Some((_, c)) => {
                if leader_height.is_none() {
                    leader_height = member.block_number().await.ok();
                }
                match (leader_height, c.block_number().await) {
                    (Some(top), Ok(h)) => h.saturating_add(raft::LEARNER_MAX_LAG) >= top,
                    (_, Err(e)) => {
                        debug!(node = %node.key, error = %e, "cannot read the learner's block height");
                        false
                    }
                    (None, _) => false,
                }
            }
        };
        if ready {
            out.insert(node.key.clone());
        }
    }
    out
}

/// The cluster from the first member that answers with a non-empty one.
async fn read_cluster(members: &[RpcClient]) -> Result<(&RpcClient, Vec<RaftPeer>), StepError> {
    let mut last = StepError::NoMember;
    for client in members {
        match client.raft_cluster().await {
            Ok(cluster) if !cluster.is_empty() => return Ok((client, cluster)),
            Ok(_) => debug!(rpc = %client.url(), "local node reports an empty raft cluster"),
            Err(e) => last = StepError::Rpc(e),
        }
    }
    Err(last)
}

fn find_node<'a>(inputs: &'a Inputs, node: &NodeKey) -> Option<&'a RaftNode> {
    inputs.nodes.iter().find(|n| n.key == *node)
}

async fn step<R: RaftRecords>(
    inputs: &Inputs,
    client: &RpcClient,
    action: &Action,
    records: &R,
) -> Result<(), StepError> {
    match action {
        Action::AddPeer { node, enode_url } | Action::AddLearner { node, enode_url } => {
            let Some(n) = find_node(inputs, node) else {
                return Ok(());
            };
            let added = if matches!(action, Action::AddLearner { .. }) {
                client.raft_add_learner(enode_url).await
            } else {
                client.raft_add_peer(enode_url).await
            };
            // the cluster decides: a refusal while the node is listed (added by another site,
            // or by this one before a restart) is success, an answer without it is not
            let cluster = client.raft_cluster().await?;
            let listed = cluster
                .iter()
                .find(|p| p.node_id.eq_ignore_ascii_case(&n.enode_id));
            let raft_id = match (added, listed) {
                (_, Some(p)) => p.raft_id,
                (Err(e), None) => return Err(e.into()),
                (Ok(_), None) => return Err(StepError::NotListed),
            };
            info!(node = %node, raft_id, "node added to the raft cluster");
            let enode = enode_bytes(&n.enode_id).ok_or(StepError::NotListed)?;
            records
                .publish_raft(node, raft_id, enode)
                .await
                .map_err(StepError::Publish)
        }
        Action::Publish { node, raft_id } => {
            let Some(n) = find_node(inputs, node) else {
                return Ok(());
            };
            let enode = enode_bytes(&n.enode_id).ok_or(StepError::NotListed)?;
            records
                .publish_raft(node, *raft_id, enode)
                .await
                .map_err(StepError::Publish)
        }
        Action::Promote { node, raft_id } => {
            client.raft_promote_to_peer(*raft_id).await?;
            info!(node = %node, raft_id, "learner promoted to a voting raft member");
            Ok(())
        }
        Action::RemovePeer {
            node,
            raft_id,
            tombstone,
        } => {
            client.raft_remove_peer(*raft_id).await?;
            info!(node = %node, raft_id, "node removed from the raft cluster");
            if *tombstone {
                records
                    .delete_raft(node)
                    .await
                    .map_err(StepError::Publish)?;
            }
            Ok(())
        }
    }
}

/// The plan's inputs from the view: registered raft nodes, published ids (live nodes) and
/// removed ones (deleted nodes whose raft record is still held), and the adders.
pub fn inputs_from_view(view: &crate::membership::view::View, domain: &str, me: &str) -> Inputs {
    let nodes: Vec<RaftNode> = view
        .nodes()
        .into_iter()
        .filter_map(|n| RaftNode::from_record(n.key(), &n.node))
        .collect();
    let live: BTreeMap<&NodeKey, &str> = nodes
        .iter()
        .map(|n| (&n.key, n.enode_id.as_str()))
        .collect();
    let (mut published, mut removed, mut replaced) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (key, raft_id, enode) in view.raft_ids() {
        match live.get(&key) {
            Some(now) => {
                if enode_bytes(now).is_some_and(|b| b != enode) {
                    replaced.insert(key.clone(), raft_id);
                }
                published.insert(key, raft_id);
            }
            None => {
                removed.insert(key, raft_id);
            }
        }
    }
    let adders = view
        .gateways()
        .into_iter()
        .filter(|(_, g)| g.raft_adder)
        .map(|(id, _)| id.to_string())
        .collect();
    Inputs {
        domain: domain.to_owned(),
        me: me.to_owned(),
        adders,
        nodes,
        removed,
        published,
        replaced,
        revoked: view.revoked().clone(),
        caught_up: BTreeSet::new(),
    }
}

/// This org's nodes registered here with an RPC endpoint that take part in raft (an enode id,
/// a p2p and a raft port) and are not registered as learners (GoQuorum refuses membership
/// changes from a learner): `(name, url)`, by name, at most [`MAX_LOCAL`].
pub fn local_members(
    view: &crate::membership::view::View,
    org: &str,
    local_rpc: &BTreeMap<String, String>,
) -> Vec<(String, RpcUrl)> {
    local_raft_nodes(view, org, local_rpc, false)
}

/// This org's raft learners registered here with an RPC endpoint: `(name, url)`, by name, at
/// most [`MAX_LOCAL`]; their block height decides when they are promoted.
pub fn local_learners(
    view: &crate::membership::view::View,
    org: &str,
    local_rpc: &BTreeMap<String, String>,
) -> Vec<(String, RpcUrl)> {
    local_raft_nodes(view, org, local_rpc, true)
}

fn local_raft_nodes(
    view: &crate::membership::view::View,
    org: &str,
    local_rpc: &BTreeMap<String, String>,
    learners: bool,
) -> Vec<(String, RpcUrl)> {
    local_rpc
        .iter()
        .filter(|(name, _)| {
            view.node(org, name).is_some_and(|n| {
                RaftNode::from_record(n.key(), &n.node).is_some_and(|r| r.learner == learners)
            })
        })
        .filter_map(|(name, url)| Some((name.clone(), url.parse::<RpcUrl>().ok()?)))
        .take(MAX_LOCAL)
        .collect()
}

/// Whether this site may change the raft cluster (the `raft_adder` flag of its gateway
/// record): the consensus is raft and a local raft member has an RPC endpoint.
pub fn is_adder(
    consensus: Consensus,
    view: &crate::membership::view::View,
    org: &str,
    local_rpc: &BTreeMap<String, String>,
) -> bool {
    consensus == Consensus::Raft && !local_members(view, org, local_rpc).is_empty()
}

/// An RPC client for a local node that counts its calls in `metrics`.
pub fn client(url: RpcUrl, metrics: &Metrics) -> RpcClient {
    let m = metrics.clone();
    RpcClient::new(url)
        .with_timeout(RPC_TIMEOUT)
        .with_max_body(RPC_MAX_BODY)
        .with_hook(Arc::new(move |method, result| {
            m.chain_rpc_call(method, result)
        }))
}

/// What [`run`] needs.
pub struct Keeper {
    /// Membership: the view, and where raft and gateway records are published.
    pub membership: Membership,
    /// The store (local RPC endpoints).
    pub store: Arc<Store>,
    /// The consortium's consensus; the keeper idles unless raft.
    pub consensus: Consensus,
    /// Metrics (RPC calls, block heights).
    pub metrics: Metrics,
    /// Where the state is shown.
    pub handle: KeeperHandle,
}

/// Runs the keeper until `shutdown`: a pass on start, on every view change and every [`TICK`]
/// (earlier when a retry is due).
pub async fn run(k: Keeper, shutdown: CancellationToken) {
    if k.consensus != Consensus::Raft {
        return;
    }
    let mut changed = k.membership.subscribe();
    let mut raft = Raft::new(k.handle.clone());
    let me = k.membership.me().clone();
    let domain = k.membership.config().domain.clone();
    loop {
        let store = k.store.clone();
        let local_rpc = match tokio::task::spawn_blocking(move || store.local_rpc()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                warn!(error = %crate::net::with_sources(&e), "raft keeper cannot read local RPC endpoints");
                BTreeMap::new()
            }
            Err(_) => BTreeMap::new(),
        };
        let (inputs, members, learners, own) = k.membership.read(|v| {
            (
                inputs_from_view(v, &domain, &me.to_string()),
                local_members(v, &me.org, &local_rpc),
                local_learners(v, &me.org, &local_rpc),
                v.gateways()
                    .into_iter()
                    .find(|(id, _)| id == &me)
                    .map(|(_, g)| g),
            )
        });
        // the flag follows the local nodes: a node added or removed here changes it
        let adder = !members.is_empty();
        if let Some(g) = own.filter(|g| g.raft_adder != adder) {
            let record = pb::GatewayRecord {
                raft_adder: adder,
                ..g
            };
            if let Err(e) = k
                .membership
                .publish(
                    &me.org,
                    &me.record_name(),
                    pb::record_body::Body::Gateway(record),
                    SignAs::Org,
                )
                .await
            {
                warn!(error = %crate::net::with_sources(&e), "cannot update this gateway's raft_adder flag");
            }
        }
        let clients: Vec<RpcClient> = members
            .iter()
            .map(|(name, url)| {
                client(url.clone(), &k.metrics).with_hook(super::audit::hook(
                    k.metrics.clone(),
                    k.store.clone(),
                    me.org.clone(),
                    name.clone(),
                ))
            })
            .collect();
        for ((name, _), c) in members.iter().zip(&clients) {
            if let Ok(h) = c.block_number().await {
                k.metrics.set_chain_block_height(name, h);
            }
        }
        let learners: Vec<(NodeKey, RpcClient)> = learners
            .into_iter()
            .map(|(name, url)| (NodeKey::new(&me.org, &name), client(url, &k.metrics)))
            .collect();
        raft.pass_with_learners(&inputs, &clients, &learners, &k.membership, Instant::now())
            .await;
        let wake = raft
            .next_due()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
            .min(TICK);
        if !next_pass(&mut changed, wake, &shutdown).await {
            return;
        }
    }
}

/// Waits until a keeper's next pass is due: a view change (then [`VIEW_GAP`] more, so a burst
/// of records, a sync of many nodes, makes one pass and the local nodes get at most one pass
/// of RPC calls per gap) or `wake`. `false` on shutdown or when the view is gone.
pub(crate) async fn next_pass(
    changed: &mut tokio::sync::watch::Receiver<u64>,
    wake: Duration,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        r = changed.changed() => {
            if r.is_err() {
                return false;
            }
            tokio::select! {
                () = shutdown.cancelled() => false,
                () = tokio::time::sleep(VIEW_GAP) => true,
            }
        }
        () = tokio::time::sleep(wake) => true,
    }
}

#[cfg(test)]
mod tests;
