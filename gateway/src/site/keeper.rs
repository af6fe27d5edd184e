//! The keeper: applies the projection ([`super::plan`]) as the view changes. On each wake it
//! takes the records changed since its last pass ([`View::changed_since`]), gives new remote
//! nodes a local address and frees removed ones' (persisted before anything is served), reads
//! this site's entries for the changed nodes only, and hands what changed to the DNS zone and
//! the data plane. A batch of changes (an import) is applied in one pass; a member, revocation
//! or rebuilt view, a Service address set ([`Membership::touch`]) or a failed store read makes
//! the next pass a full one.
//!
//! A failed store read never withdraws anything: the last good site state is projected, an
//! `error!` says so, and the read is retried after [`READ_RETRY`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::plan::{self, Delta, GatewayEntry, Inputs, Plan, SiteState};
use crate::addressing::{AddressMode, AllocationChange, Allocations, Need};
use crate::dns::{Zone, ZoneHandler};
use crate::membership::NodeKey;
use crate::membership::record::Kind;
use crate::membership::view::{NodeView, View};
use crate::membership::{GatewayId, Membership};
use crate::store::{SiteEntries, Store, StoreError};
use crate::tunnel::Tunnels;

/// How often listeners that could not be bound are retried.
pub const LISTENER_RETRY: Duration = Duration::from_secs(5);
/// How soon a failed read of this site's state is retried.
pub const READ_RETRY: Duration = Duration::from_secs(1);
/// How often this site's nodes' one-label hosts are resolved again (a restarted container
/// may have a new address); a change makes the next pass a full one.
pub const SHORT_HOST_REFRESH: Duration = Duration::from_secs(10);

/// What the keeper serves into, and reads from besides the view.
#[derive(Debug)]
pub struct Keeper {
    /// The view.
    pub membership: Membership,
    /// This site's node hosts, Service addresses, and the persisted allocations.
    pub store: Arc<Store>,
    /// How remote nodes get local addresses.
    pub mode: AddressMode,
    /// The allocations (shared with the admin API, which lists them).
    pub allocations: Arc<RwLock<Allocations>>,
    /// The served zone.
    pub zone: ZoneHandler,
    /// The consortium domain.
    pub domain: String,
    /// This gateway's name in the zone: `gw-<site>.<org>`.
    pub me_gateway: String,
    /// The data plane.
    pub tunnels: Tunnels,
    /// Fires once the first zone is served and the data plane reflects the stored view
    /// (readiness waits for it).
    pub first_pass: Option<oneshot::Sender<()>>,
}

/// Where the keeper's last pass left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    generation: u64,
    rev: u64,
}

/// What one pass read from the view.
#[derive(Debug, Default)]
struct Scan {
    mark: Option<Mark>,
    /// A full pass: every node is in `nodes`; those of the plan that are not left the view.
    full: bool,
    /// The changed nodes: their state now (`None`: gone, deleted or their org not a member).
    nodes: Vec<(NodeKey, Option<NodeView>)>,
    /// The gateways (when they may have changed).
    gateways: Option<Vec<GatewayEntry>>,
    /// The member orgs (full passes).
    members: Option<std::collections::BTreeSet<String>>,
}

/// Reads what changed since `since` (everything when `None` or from another generation, or
/// when a member or revocation record changed: that changes which orgs' nodes count).
fn scan(v: &View, since: Option<Mark>, full: bool) -> Scan {
    let now = Mark {
        generation: v.generation(),
        rev: v.rev(),
    };
    let mut changed = vec![];
    let mut gateways = false;
    let mut full = full || since.is_none_or(|m| m.generation != now.generation);
    if !full && let Some(since) = since {
        for key in v.changed_since(since.rev) {
            match key.kind {
                Kind::Node => changed.push(NodeKey {
                    org: key.org.clone(),
                    name: key.name.clone(),
                }),
                Kind::Gateway => gateways = true,
                Kind::Member | Kind::Revocation => {
                    full = true;
                    break;
                }
                Kind::Vote | Kind::Raft | Kind::Validator | Kind::ValidatorVote | Kind::Cert => {}
            }
        }
    }
    let all_gateways = || {
        v.gateways()
            .into_iter()
            .map(|(id, record)| GatewayEntry { id, record })
            .collect()
    };
    if full {
        return Scan {
            mark: Some(now),
            full,
            nodes: v.nodes().into_iter().map(|n| (n.key(), Some(n))).collect(),
            gateways: Some(all_gateways()),
            members: Some(
                v.members()
                    .into_iter()
                    .map(|(org, _)| org)
                    .filter(|org| v.is_member(org))
                    .collect(),
            ),
        };
    }
    changed.sort();
    changed.dedup();
    Scan {
        mark: Some(now),
        full,
        nodes: changed
            .into_iter()
            .map(|id| {
                let n = v.node(&id.org, &id.name);
                (id, n)
            })
            .collect(),
        gateways: gateways.then(all_gateways),
        members: None,
    }
}

/// Runs the keeper until `shutdown`.
pub async fn run(mut k: Keeper, shutdown: CancellationToken) {
    let me = k.membership.me().clone();
    let mut changed = k.membership.subscribe();
    let mut plan = Plan::default();
    let mut mark: Option<Mark> = None;
    let mut touches = k.membership.touches();
    // the last site state read without error (`None`: no read succeeded yet)
    let mut site: Option<SiteState> = None;
    let mut reread = true;
    let mut serial: u32 = 0;
    // allocation rows a failed write left unsaved, written with the next change
    let mut unsaved = AllocationChange::default();
    // the siblings' allocations last loaded (see Membership::shared_allocations_rev)
    let mut shared_rev = k.membership.shared_allocations_rev();
    k.zone.replace(Zone::new(&k.domain, &k.me_gateway));
    loop {
        changed.borrow_and_update();
        let now_touched = k.membership.touches();
        reread |= now_touched != touches;
        touches = now_touched;
        let scanned = k.membership.read(|v| scan(v, mark, reread));
        let gone: Vec<NodeKey> = if scanned.full {
            let held: std::collections::BTreeSet<&NodeKey> =
                scanned.nodes.iter().map(|(id, _)| id).collect();
            plan.node_ids()
                .filter(|id| !held.contains(id))
                .cloned()
                .collect()
        } else {
            vec![]
        };
        let mut nodes = scanned.nodes;
        nodes.extend(gone.into_iter().map(|id| (id, None)));

        let rev = k.membership.shared_allocations_rev();
        if rev != shared_rev {
            // a sibling changed the served allocations: take them as the store now holds them
            let store = k.store.clone();
            match run_blocking(move || store.allocations()).await {
                Ok(a) => {
                    *k.allocations.write().unwrap_or_else(|e| e.into_inner()) = a;
                    shared_rev = rev;
                }
                Err(e) => {
                    warn!(error = %e, "reading the siblings' local addresses failed; retrying")
                }
            }
        }
        allocate(&k, &me, &nodes, scanned.full, &mut unsaved).await;
        let read_ok = read_site(&k, &me, &mut site, &nodes, scanned.full).await;
        // a failed reload of the siblings' allocations is retried like a failed read
        reread = !read_ok || rev != shared_rev;
        if let Some(state) = &mut site {
            let changed = (!scanned.full).then(|| {
                nodes
                    .iter()
                    .filter(|(id, _)| id.org == me.org)
                    .map(|(id, _)| id.name.as_str())
                    .collect::<Vec<_>>()
            });
            resolve_new_short_hosts(state, changed.as_deref()).await;
        }
        let Some(state) = &site else {
            // nothing was ever read: serve nothing rather than a zone without this site's
            // nodes, and try again
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(READ_RETRY) => continue,
            }
        };
        mark = scanned.mark;

        let mut delta = Delta::default();
        {
            let alloc = k.allocations.read().unwrap_or_else(|e| e.into_inner());
            let inputs = Inputs {
                me: &me,
                site: state,
                alloc: &alloc,
            };
            for (id, n) in nodes {
                let projected = n.as_ref().map(|n| plan::project_node(inputs, n));
                for (port, e) in projected.iter().flat_map(|p| &p.bad_routes) {
                    warn!(org = %id.org, node = %id.name, port = %port, error = %e, "no route for a remote node");
                }
                plan.set_node(id, projected, &mut delta);
            }
        }
        if let Some(members) = scanned.members {
            plan.set_members(members, &mut delta);
        }
        if let Some(gateways) = scanned.gateways {
            plan.set_gateways(gateways, &mut delta);
        }
        let first = k.first_pass.is_some();
        if !delta.is_empty() || first {
            serial = serial.wrapping_add(1);
            k.zone.update(|z| {
                for (id, entry) in &delta.zone {
                    match entry {
                        Some(n) => z.set_node(n),
                        None => z.remove_node(&id.org, &id.name),
                    }
                }
                if delta.gateways {
                    z.set_gateways(&plan.zone_gateways());
                }
                z.set_serial(serial);
            });
        }
        if !delta.is_empty() || first || k.tunnels.listener_failures() {
            k.tunnels.update(
                plan.targets_change(&me.org, &mut delta, first),
                delta.routes,
                (delta.gateways || first).then(|| plan.peers()),
            );
        }
        if let Some(done) = k.first_pass.take() {
            let _ = done.send(());
        }
        // one-label hosts are resolved again: an address that moved re-projects every node
        let short: Vec<String> = state.short_hosts.keys().cloned().collect();
        let resolved = state.short_hosts.clone();
        let moved = async {
            if short.is_empty() {
                std::future::pending::<()>().await;
            }
            loop {
                tokio::time::sleep(SHORT_HOST_REFRESH).await;
                let now = crate::dns::resolve_short_hosts(&short).await;
                if now != resolved {
                    return now;
                }
            }
        };
        // a listener that could not be bound is retried until it can, a failed read sooner
        let retry = async {
            if reread || !unsaved.is_empty() {
                tokio::time::sleep(READ_RETRY).await;
            } else if k.tunnels.listener_failures() {
                tokio::time::sleep(LISTENER_RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            () = retry => {}
            now = moved => {
                if let Some(state) = &mut site {
                    state.short_hosts = now;
                }
                reread = true;
            }
        }
    }
}

/// Resolves the one-label hosts of this site's nodes that were not tried yet: of every node,
/// forgetting those no node has any more (`changed` is `None`), or of the `changed` nodes only
/// (what a node no longer uses is forgotten on the next full pass). Costs the nodes looked at.
async fn resolve_new_short_hosts(state: &mut SiteState, changed: Option<&[&str]>) {
    let hosts: std::collections::BTreeSet<&String> = match changed {
        None => state.local.values().collect(),
        Some(names) => names.iter().filter_map(|n| state.local.get(*n)).collect(),
    };
    let hosts: std::collections::BTreeSet<&String> = hosts
        .into_iter()
        .filter(|h| crate::dns::is_short_host(h))
        .collect();
    if changed.is_none() {
        state.short_hosts.retain(|h, _| hosts.contains(h));
    }
    let room = crate::dns::MAX_SHORT_HOSTS.saturating_sub(state.short_hosts.len());
    let new: Vec<String> = hosts
        .into_iter()
        .filter(|h| !state.short_hosts.contains_key(*h))
        .take(room)
        .cloned()
        .collect();
    if !new.is_empty() {
        state
            .short_hosts
            .extend(crate::dns::resolve_short_hosts(&new).await);
    }
}

/// Gives the changed remote nodes a local address and frees the removed ones' (every remote
/// node's on a full pass), and persists the rows of the nodes whose address that changed,
/// with the rows `unsaved` by an earlier failed write (a failed write leaves them there).
async fn allocate(
    k: &Keeper,
    me: &GatewayId,
    nodes: &[(NodeKey, Option<NodeView>)],
    full: bool,
    unsaved: &mut AllocationChange,
) {
    if !k.membership.is_allocation_leader() {
        // a lower sibling allocates; its allocations arrive over the sync stream
        return;
    }
    let mut needs = vec![];
    let mut gone = vec![];
    for (id, n) in nodes.iter().filter(|(id, _)| id.org != me.org) {
        match n {
            Some(n) => needs.push(Need {
                node: id.to_string(),
                ports: n.node.ports(),
            }),
            None => gone.push(id.to_string()),
        }
    }
    let (change, failed) = {
        let mut a = k.allocations.write().unwrap_or_else(|e| e.into_inner());
        if full {
            a.sync_change(&k.mode, &needs)
        } else {
            a.update_change(&k.mode, &needs, &gone)
        }
    };
    for (node, e) in failed {
        warn!(node = %node, error = %e, "no local address for a remote node");
    }
    unsaved.merge(change);
    if !unsaved.is_empty() {
        let store = k.store.clone();
        let change = Arc::new(std::mem::take(unsaved));
        let writing = change.clone();
        match run_blocking(move || store.write_shared_allocations(&writing)).await {
            Ok((_, entries)) => k.membership.share_site(&entries),
            Err(e) => {
                warn!(error = %e, "persisting local addresses failed; retrying in 1 s");
                *unsaved = Arc::unwrap_or_clone(change);
            }
        }
    }
}

/// A read of this site's state: all of it, or the entries of some nodes.
enum Read {
    All(SiteState),
    Some {
        local: Vec<String>,
        remote: Vec<String>,
        entries: SiteEntries,
    },
}

/// Brings `site` up to date for the changed nodes (everything on a full pass). A failed read
/// leaves `site` as it was (the last good state) and says so; returns whether the read worked.
async fn read_site(
    k: &Keeper,
    me: &GatewayId,
    site: &mut Option<SiteState>,
    nodes: &[(NodeKey, Option<NodeView>)],
    full: bool,
) -> bool {
    let store = k.store.clone();
    let read = if full || site.is_none() {
        run_blocking(move || {
            Ok(Read::All(SiteState {
                local: store.local_nodes()?,
                replicas: store.local_replicas()?,
                services: store.service_addresses()?,
                short_hosts: Default::default(),
            }))
        })
        .await
    } else {
        let (local, remote): (Vec<&NodeKey>, Vec<&NodeKey>) = nodes
            .iter()
            .map(|(id, _)| id)
            .partition(|id| id.org == me.org);
        let local: Vec<String> = local.into_iter().map(|id| id.name.clone()).collect();
        let remote: Vec<String> = remote.into_iter().map(ToString::to_string).collect();
        run_blocking(move || {
            let entries = store.site_entries(&local, &remote)?;
            Ok(Read::Some {
                local,
                remote,
                entries,
            })
        })
        .await
    };
    match read {
        Ok(Read::All(mut state)) => {
            // what was resolved stays: the hosts are resolved again on their own schedule
            if let Some(old) = site.take() {
                state.short_hosts = old.short_hosts;
            }
            *site = Some(state);
        }
        Ok(Read::Some {
            local,
            remote,
            entries,
        }) => {
            if let Some(state) = site {
                for name in local {
                    match entries.replicas.get(&name) {
                        Some(hosts) => state.replicas.insert(name.clone(), hosts.clone()),
                        None => state.replicas.remove(&name),
                    };
                    match entries.local.get(&name) {
                        Some(host) => state.local.insert(name, host.clone()),
                        None => state.local.remove(&name),
                    };
                }
                for key in remote {
                    match entries.services.get(&key) {
                        Some(ip) => state.services.insert(key, *ip),
                        None => state.services.remove(&key),
                    };
                }
            }
        }
        Err(e) => {
            error!(
                error = %e,
                "reading this site's node addresses from the store failed; keeping the last \
                 good DNS zone, routes and targets, retrying in 1 s"
            );
            return false;
        }
    }
    true
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

#[cfg(test)]
mod tests;
