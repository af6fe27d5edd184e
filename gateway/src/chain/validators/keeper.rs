//! The async shell of the validator votes: in `fedgw run` with QBFT or IBFT consensus, a pass on
//! start, on every view change (at most one per [`VIEW_GAP`](crate::chain::keeper::VIEW_GAP)) and every [`TICK`] (every
//! [`BUSY_TICK`] while an approved proposal waits for its change to show; earlier when a node's
//! retry is due). A pass reads the proposals and this site's local nodes from the view and the
//! store, runs [`Votes::pass`], and deletes the proposals of this org whose change shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fedgw_proto::enode::EnodeId;
use fedgw_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Dialect, LocalValidator, Votes, VotesHandle};
use crate::chain::keeper::{MAX_LOCAL, client};
use crate::config::{Admission, Consensus};
use crate::membership::view::View;
use crate::membership::{Membership, SignAs};
use crate::metrics::Metrics;
use crate::store::Store;

/// How often the votes are looked at without a view change, with no approved proposal waiting.
pub const TICK: Duration = Duration::from_secs(30);
/// How often while an approved proposal waits for its change (a few QBFT blocks).
pub const BUSY_TICK: Duration = Duration::from_secs(2);

/// What [`run`] needs.
pub struct Keeper {
    /// Membership: the view, and where proposals are deleted once done.
    pub membership: Membership,
    /// The store (local RPC endpoints).
    pub store: Arc<Store>,
    /// The consortium's consensus; the keeper idles unless QBFT or IBFT.
    pub consensus: Consensus,
    /// The consortium's admission policy: how many approvals a proposal needs.
    pub admission: Admission,
    /// Metrics (RPC calls).
    pub metrics: Metrics,
    /// Where the state is shown.
    pub handle: VotesHandle,
}

/// This org's nodes registered here with an RPC endpoint, an enode id and a client that votes
/// under `consensus`, by name, at most [`MAX_LOCAL`]. The clients count their calls in `metrics`.
pub fn local_validators(
    view: &View,
    org: &str,
    consensus: Consensus,
    local_rpc: &BTreeMap<String, String>,
    metrics: &Metrics,
) -> Vec<LocalValidator> {
    local_rpc
        .iter()
        .filter_map(|(name, url)| {
            let n = view.node(org, name)?;
            let dialect = Dialect::of(n.node.client, consensus)?;
            let address = n.node.enode_id.as_ref().map(EnodeId::address)?;
            Some(LocalValidator {
                name: name.clone(),
                address,
                dialect,
                client: client(url.parse().ok()?, metrics),
            })
        })
        .take(MAX_LOCAL)
        .collect()
}

/// Runs the vote keeper until `shutdown`.
pub async fn run(k: Keeper, shutdown: CancellationToken) {
    if !super::votes_on(k.consensus) {
        return;
    }
    let mut changed = k.membership.subscribe();
    let mut votes = Votes::new(k.handle.clone());
    let me = k.membership.me().clone();
    loop {
        let store = k.store.clone();
        let local_rpc = match tokio::task::spawn_blocking(move || store.local_rpc()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                warn!(error = %crate::net::with_sources(&e), "validator votes cannot read local RPC endpoints");
                BTreeMap::new()
            }
            Err(_) => BTreeMap::new(),
        };
        let (proposals, owned, locals) = k.membership.read(|v| {
            (
                super::proposals(v, k.admission),
                super::consortium_addresses(v),
                local_validators(v, &me.org, k.consensus, &local_rpc, &k.metrics),
            )
        });
        let applied = votes
            .pass(&proposals, &owned, &locals, Instant::now())
            .await;
        for p in proposals
            .iter()
            .filter(|p| p.proposer == me.org && applied.contains(&p.node))
        {
            let body = pb::record_body::Body::Tombstone(pb::TombstoneRecord {
                kind: pb::RecordKind::Validator.into(),
            });
            match k
                .membership
                .publish(&p.node.org, &p.node.name, body, SignAs::Org)
                .await
            {
                Ok(()) => {
                    info!(node = %p.node, add = p.add, "validator change done; proposal closed")
                }
                Err(e) => {
                    warn!(node = %p.node, error = %crate::net::with_sources(&e), "cannot close a done validator proposal")
                }
            }
        }
        let busy = proposals
            .iter()
            .any(|p| p.approved() && !applied.contains(&p.node));
        let tick = if busy { BUSY_TICK } else { TICK };
        let wake = votes
            .next_due()
            .map_or(tick, |t| t.saturating_duration_since(Instant::now()))
            .min(tick);
        if !crate::chain::keeper::next_pass(&mut changed, wake, &shutdown).await {
            return;
        }
    }
}
