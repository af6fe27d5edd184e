//! Live peering: this site's chain nodes learn remote nodes as they come and go, without a
//! restart (docs/DESIGN.md section 13).
//!
//! The pure part decides: [`desired`] turns this site's nodes with an RPC endpoint
//! ([`LocalNode`]) and the other orgs' registered nodes ([`RemoteNode`]) into the set of
//! [`Link`]s that should hold, and [`plan`] compares it with the links already applied and returns
//! the [`Step`]s to take. Per local node, by its client:
//!
//! - GoQuorum: `admin_addPeer` / `admin_removePeer` with the remote node's DNS-name enode URL
//!   `enode://ID@NODE.ORG.DOMAIN:P2P?discport=0` (plus `&raftport=RAFT` when it has a raft port);
//! - Besu: the same URL added to (removed from) the node allowlist of Besu's local permissioning
//!   (`perm_addNodesToAllowlist` / `perm_removeNodesFromAllowlist`) before `admin_addPeer`;
//! - Tessera: the node's `--rpc` URL names its ADMIN server; each remote node's published Tessera
//!   URL (already in its consortium-name form) is put with `PUT /config/peers`. Tessera has no call
//!   that removes a peer: a gone node's link is only forgotten.
//!
//! The async [`run`] keeps the applied links in the store (a restart repeats nothing), executes
//! the steps with a backoff per endpoint, and re-applies what a restarted node lost: an endpoint
//! that failed and answers again gets every link re-applied, and every [`DEFAULT_RECONCILE`] each
//! GoQuorum/Besu endpoint's `admin_peers` is read and links to peers it lacks are re-added.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fedgw_certs::ids::NodeKey;
use fedgw_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::rpc::{RpcClient, RpcError, RpcUrl};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Default interval between reconciles of one endpoint (reading `admin_peers`).
pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(60);
/// How soon a failed read of the store is retried.
const READ_RETRY: Duration = Duration::from_secs(1);

/// The client a local node runs, as far as peering goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    /// GoQuorum (or geth): `admin_*` calls.
    GoQuorum,
    /// Besu with local permissioning: allowlist and `admin_addPeer`.
    Besu,
    /// Tessera: its ADMIN API.
    Tessera,
}

impl Client {
    /// The peering client of a record's `client` field; `None` for Fabric and unknown kinds.
    pub fn of(kind: i32) -> Option<Self> {
        match pb::ClientKind::try_from(kind) {
            Ok(pb::ClientKind::Goquorum) => Some(Client::GoQuorum),
            Ok(pb::ClientKind::Besu) => Some(Client::Besu),
            Ok(pb::ClientKind::Tessera) => Some(Client::Tessera),
            _ => None,
        }
    }
}

/// One of this site's nodes with an RPC endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// The node's name in this org.
    pub name: String,
    /// Its client.
    pub client: Client,
    /// Its JSON-RPC endpoint (Tessera: its ADMIN server).
    pub rpc: RpcUrl,
}

/// A node of another org, as its record publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// `org/name`.
    pub key: NodeKey,
    /// Its enode URL in DNS-name form, when it has a 64-byte enode id and a p2p port.
    pub enode_url: Option<String>,
    /// Its Tessera P2P URL (the record holds it at the node's consortium name), when any.
    pub tessera_url: Option<String>,
}

impl RemoteNode {
    /// The node from its record under the consortium `domain`: the enode URL is
    /// `enode://ID@NODE.ORG.DOMAIN:P2P?discport=0`, with `&raftport=RAFT` when the record has a
    /// raft port.
    pub fn from_node(key: NodeKey, node: &fedgw_proto::domain::Node, domain: &str) -> Self {
        let enode_url = match (node.enode_id, node.p2p_port) {
            (Some(id), Some(p2p)) => {
                let mut url = format!(
                    "enode://{id}@{}.{}.{domain}:{p2p}?discport=0",
                    key.name, key.org
                );
                if let Some(raft) = node.raft_port {
                    url.push_str(&format!("&raftport={raft}"));
                }
                Some(url)
            }
            _ => None,
        };
        let tessera_url = node.tessera_url.clone();
        RemoteNode {
            key,
            enode_url,
            tessera_url,
        }
    }
}

/// What a link asks of the local node. The order is the order of adds for one local node
/// (Besu allowlists a node before it dials it); removes go in reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Besu node allowlist entry.
    Allowlist,
    /// `admin_addPeer` peer.
    AdminPeer,
    /// Tessera peer.
    TesseraPeer,
}

/// One thing a local node should hold about one remote node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The local node's name.
    pub local: String,
    /// What it holds.
    pub op: Op,
    /// The remote node, `org/name`.
    pub remote: String,
    /// The enode URL or Tessera URL given in the call.
    pub target: String,
}

impl Link {
    /// The enode id (lowercase hex) in the target of an enode link.
    pub fn enode_id(&self) -> Option<String> {
        enode_id(&self.target)
    }
}

/// The id of `enode://ID@...`, lowercase; `None` when `url` holds none.
pub fn enode_id(url: &str) -> Option<String> {
    let id = url.strip_prefix("enode://")?.split('@').next()?;
    (id.len() == 128 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The links that should hold between `locals` and `remotes`.
pub fn desired(locals: &[LocalNode], remotes: &[RemoteNode]) -> BTreeSet<Link> {
    let mut out = BTreeSet::new();
    for l in locals {
        for r in remotes {
            let link = |op, target: &String| Link {
                local: l.name.clone(),
                op,
                remote: r.key.to_string(),
                target: target.clone(),
            };
            match (l.client, &r.enode_url, &r.tessera_url) {
                (Client::GoQuorum, Some(enode), _) => {
                    out.insert(link(Op::AdminPeer, enode));
                }
                (Client::Besu, Some(enode), _) => {
                    out.insert(link(Op::Allowlist, enode));
                    out.insert(link(Op::AdminPeer, enode));
                }
                (Client::Tessera, _, Some(url)) => {
                    out.insert(link(Op::TesseraPeer, url));
                }
                _ => {}
            }
        }
    }
    out
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make the local node hold the link.
    Add(Link),
    /// Undo the link at the local node.
    Remove(Link),
    /// Drop the link from the applied set without a call: its local node has no endpoint any
    /// more, or (Tessera) there is no call that undoes it.
    Forget(Link),
}

/// The steps from `applied` to `desired`: adds in link order, then removes and forgets in
/// reverse link order. `locals` are the local nodes with an endpoint now.
pub fn plan(
    desired: &BTreeSet<Link>,
    applied: &BTreeSet<Link>,
    locals: &BTreeSet<String>,
) -> Vec<Step> {
    let mut steps: Vec<Step> = desired
        .difference(applied)
        .cloned()
        .map(Step::Add)
        .collect();
    let gone: Vec<&Link> = applied.difference(desired).collect();
    for gone in gone.into_iter().rev() {
        if !locals.contains(&gone.local) || gone.op == Op::TesseraPeer {
            steps.push(Step::Forget(gone.clone()));
        } else {
            steps.push(Step::Remove(gone.clone()));
        }
    }
    steps
}

/// After `local`'s endpoint came back from a failure (the node may have restarted and lost its
/// dynamic peers): forgets its applied links that are still desired, so they are applied again.
pub fn reapply_all(applied: &mut BTreeSet<Link>, desired: &BTreeSet<Link>, local: &str) {
    applied.retain(|l| l.local != local || !desired.contains(l));
}

/// After `local` answered `admin_peers` with `connected` (enode ids): forgets its applied
/// `admin_addPeer` links to peers it is not connected to, so they are added again.
pub fn reapply_missing(applied: &mut BTreeSet<Link>, local: &str, connected: &BTreeSet<String>) {
    applied.retain(|l| {
        l.local != local
            || l.op != Op::AdminPeer
            || l.enode_id().is_some_and(|id| connected.contains(&id))
    });
}

/// Delay before retrying an endpoint after `failures` failed passes in a row: 1 s doubling to
/// at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    super::raft::backoff(failures.saturating_sub(1))
}

/// What the keeper reads besides the view.
#[derive(Debug)]
pub struct Keeper {
    /// The view: this org's node records and every other org's.
    pub membership: Membership,
    /// The local RPC endpoints and the applied links.
    pub store: Arc<Store>,
    /// The consortium DNS domain.
    pub domain: String,
    /// Counts every call (`fedgw_chain_rpc_calls_total`).
    pub metrics: Metrics,
    /// Interval between reconciles of one endpoint.
    pub reconcile: Duration,
}

/// One endpoint's standing.
#[derive(Debug)]
struct Endpoint {
    failures: u32,
    retry_at: Option<Instant>,
    /// The last call failed below JSON-RPC (no answer): the node may restart.
    down: bool,
    next_reconcile: Instant,
}

/// Why a local node did not take a step.
#[derive(Debug, thiserror::Error)]
pub enum PeeringError {
    /// The call failed (see [`RpcError`]).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The node answered `false` to the call.
    #[error("the node declined {0}")]
    Declined(&'static str),
}

/// Whether an error means the endpoint gave no answer at all (it may be restarting).
fn unreachable(e: &PeeringError) -> bool {
    matches!(
        e,
        PeeringError::Rpc(RpcError::Connect(_) | RpcError::Timeout(_) | RpcError::Http(_))
    )
}

/// Runs live peering until `shutdown`: a pass on every view change, on an endpoint's retry or
/// reconcile time, and after a failed store read.
pub async fn run(k: Keeper, shutdown: CancellationToken) {
    let mut changed = k.membership.subscribe();
    let store = k.store.clone();
    let mut applied = match tokio::task::spawn_blocking(move || store.peering::<BTreeSet<Link>>())
        .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            error!(error = %crate::net::with_sources(&e), "reading applied peering links; every link is applied again");
            BTreeSet::new()
        }
        Err(e) => {
            error!(error = %e, "reading applied peering links; every link is applied again");
            BTreeSet::new()
        }
    };
    let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
    loop {
        changed.borrow_and_update();
        let wake = match pass(&k, &mut applied, &mut endpoints).await {
            Ok(wake) => wake,
            Err(e) => {
                error!(error = %crate::net::with_sources(&e), "live peering: store read failed; retrying");
                Instant::now() + READ_RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changed.changed() => if r.is_err() {
                shutdown.cancelled().await;
                return;
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The local nodes (this org's, with an endpoint) and the remote nodes (other orgs') now.
async fn inputs(k: &Keeper) -> Result<(Vec<LocalNode>, Vec<RemoteNode>), StoreError> {
    let store = k.store.clone();
    let rpc = tokio::task::spawn_blocking(move || store.local_rpc())
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    if rpc.is_empty() {
        // no local endpoint: nothing to call, and no need to walk the view
        return Ok((vec![], vec![]));
    }
    let me = k.membership.me().clone();
    Ok(k.membership.read(|v| {
        let mut locals = vec![];
        let mut remotes = vec![];
        for n in v.nodes() {
            if n.org != me.org {
                remotes.push(RemoteNode::from_node(n.key(), &n.node, &k.domain));
                continue;
            }
            let client = Client::of(n.node.client as i32);
            let url = rpc.get(&n.name).and_then(|u| u.parse::<RpcUrl>().ok());
            if let (Some(client), Some(rpc)) = (client, url) {
                locals.push(LocalNode {
                    name: n.name.clone(),
                    client,
                    rpc,
                });
            }
        }
        (locals, remotes)
    }))
}

/// One pass over every local endpoint; returns when the next pass is due at the latest.
async fn pass(
    k: &Keeper,
    applied: &mut BTreeSet<Link>,
    endpoints: &mut BTreeMap<String, Endpoint>,
) -> Result<Instant, StoreError> {
    let (locals, remotes) = inputs(k).await?;
    let want = desired(&locals, &remotes);
    let names: BTreeSet<String> = locals.iter().map(|l| l.name.clone()).collect();
    endpoints.retain(|name, _| names.contains(name));
    let before = applied.clone();
    // links of nodes without an endpoint now can only be forgotten
    for step in plan(&want, applied, &names) {
        if let Step::Forget(l) = step
            && !names.contains(&l.local)
        {
            applied.remove(&l);
        }
    }
    let now = Instant::now();
    for local in &locals {
        let ep = endpoints
            .entry(local.name.clone())
            .or_insert_with(|| Endpoint {
                failures: 0,
                retry_at: None,
                down: false,
                next_reconcile: now + k.reconcile,
            });
        if ep.retry_at.is_some_and(|at| at > now) {
            continue;
        }
        let client = RpcClient::new(local.rpc.clone()).with_hook(super::audit::hook(
            k.metrics.clone(),
            k.store.clone(),
            k.membership.me().org.clone(),
            local.name.clone(),
        ));
        match serve_endpoint(&client, local, &want, applied, ep, now, k.reconcile).await {
            Ok(()) => {
                ep.failures = 0;
                ep.retry_at = None;
                ep.down = false;
            }
            Err(e) => {
                ep.failures = ep.failures.saturating_add(1);
                ep.down = ep.down || unreachable(&e);
                let delay = backoff(ep.failures);
                ep.retry_at = Some(now + delay);
                warn!(
                    node = %local.name,
                    error = %crate::net::with_sources(&e),
                    retry_in = ?delay,
                    "live peering: call to the node's RPC endpoint failed"
                );
            }
        }
    }
    if *applied != before {
        let store = k.store.clone();
        let keep = applied.clone();
        match tokio::task::spawn_blocking(move || store.put_peering(&keep)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(error = %crate::net::with_sources(&e), "live peering: storing applied links failed; a restart applies them again");
            }
            Err(e) => error!(error = %e, "live peering: storing applied links failed"),
        }
    }
    let wake = endpoints
        .values()
        .map(|ep| ep.retry_at.unwrap_or(ep.next_reconcile))
        .min()
        .unwrap_or(now + k.reconcile);
    Ok(wake)
}

/// Brings one endpoint in line: reconcile when due (or after a failure), then the plan's steps
/// for its node, in order, stopping at the first failure.
async fn serve_endpoint(
    client: &RpcClient,
    local: &LocalNode,
    want: &BTreeSet<Link>,
    applied: &mut BTreeSet<Link>,
    ep: &mut Endpoint,
    now: Instant,
    reconcile: Duration,
) -> Result<(), PeeringError> {
    let due = ep.down || ep.next_reconcile <= now;
    if due {
        if local.client != Client::Tessera {
            let peers = client.admin_peers().await?;
            if ep.down {
                info!(node = %local.name, "live peering: RPC endpoint answers again; re-applying its peers");
                reapply_all(applied, want, &local.name);
            } else {
                let connected = peers.iter().filter_map(|p| p.enode_id()).collect();
                reapply_missing(applied, &local.name, &connected);
            }
        } else if ep.down {
            reapply_all(applied, want, &local.name);
        }
        ep.next_reconcile = now + reconcile;
    }
    let mine = |set: &BTreeSet<Link>| -> BTreeSet<Link> {
        set.iter()
            .filter(|l| l.local == local.name)
            .cloned()
            .collect()
    };
    let names = BTreeSet::from([local.name.clone()]);
    let steps = plan(&mine(want), &mine(applied), &names);
    if steps.is_empty() {
        return Ok(());
    }
    // Besu: read the allowlist once, so entries already there (it survives a restart) are not
    // added again and absent ones not removed
    let allowlist: Option<BTreeSet<String>> = if steps.iter().any(|s| match s {
        Step::Add(l) | Step::Remove(l) => l.op == Op::Allowlist,
        Step::Forget(_) => false,
    }) {
        let list = client.perm_get_nodes_allowlist().await?;
        Some(list.iter().filter_map(|u| enode_id(u)).collect())
    } else {
        None
    };
    let listed = |l: &Link| {
        allowlist
            .as_ref()
            .zip(l.enode_id())
            .is_some_and(|(set, id)| set.contains(&id))
    };
    for step in steps {
        match step {
            Step::Add(l) => {
                match l.op {
                    Op::Allowlist if listed(&l) => {}
                    Op::Allowlist => {
                        client
                            .perm_add_nodes_to_allowlist(std::slice::from_ref(&l.target))
                            .await?;
                    }
                    Op::AdminPeer => {
                        if !client.admin_add_peer(&l.target).await? {
                            return Err(PeeringError::Declined("admin_addPeer"));
                        }
                    }
                    Op::TesseraPeer => client.tessera_add_peer(&l.target).await?,
                }
                debug!(node = %l.local, remote = %l.remote, op = ?l.op, "live peering: added");
                applied.insert(l);
            }
            Step::Remove(l) => {
                match l.op {
                    Op::Allowlist if !listed(&l) => {}
                    Op::Allowlist => {
                        client
                            .perm_remove_nodes_from_allowlist(std::slice::from_ref(&l.target))
                            .await?;
                    }
                    Op::AdminPeer => {
                        // `false`: the node had no such peer, which is what removing wants
                        client.admin_remove_peer(&l.target).await?;
                    }
                    Op::TesseraPeer => {}
                }
                debug!(node = %l.local, remote = %l.remote, op = ?l.op, "live peering: removed");
                applied.remove(&l);
            }
            Step::Forget(l) => {
                applied.remove(&l);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
