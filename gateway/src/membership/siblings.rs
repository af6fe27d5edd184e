//! Siblings: the other replicas of this gateway's site. Over the sync stream with each one
//! (and no other) this gateway sends the site state replicas share
//! ([`crate::site::shared`]): all of it when the stream opens, then each local change
//! ([`Membership::share_site`]); what a sibling sends is merged into the store in one
//! transaction and the site projection re-reads it ([`Membership::touch`]). Site state is never
//! relayed and never part of a digest. The allocation leader is the lowest replica name among
//! this gateway and its live siblings ([`Membership::is_allocation_leader`]).

use std::sync::atomic::Ordering;

use fedgw_proto::v1 as pb;
use pb::sync_message::Msg;
use tracing::{debug, warn};

use super::sync::SessionEnd;
use super::{GatewayId, Membership};
use crate::addressing::AddressMode;
use crate::site::shared::{self, Entry};

/// The shared-site settings and counters [`Membership`] keeps.
#[derive(Debug, Default)]
pub(super) struct SiteShare {
    /// How this site allocates local addresses (merging allocations depends on it).
    mode: std::sync::OnceLock<AddressMode>,
    /// Counts the times a sibling's entries changed the served allocations.
    allocations_rev: std::sync::atomic::AtomicU64,
}

impl Membership {
    /// Sets the address mode merged allocations are compared in (the default IP mode until
    /// set; only the first call counts).
    pub fn set_address_mode(&self, mode: AddressMode) {
        let _ = self.0.site.mode.set(mode);
    }

    fn address_mode(&self) -> AddressMode {
        self.0.site.mode.get().cloned().unwrap_or_default()
    }

    /// Whether `peer` is another replica of this gateway's site.
    pub fn is_sibling(&self, peer: &GatewayId) -> bool {
        self.me().is_sibling(peer)
    }

    /// The replica names of the siblings with a live sync stream, sorted.
    pub fn live_siblings(&self) -> Vec<String> {
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = peers
            .keys()
            .filter_map(|id| id.parse::<GatewayId>().ok())
            .filter(|p| self.is_sibling(p))
            .map(|p| p.replica)
            .collect();
        out.sort();
        out
    }

    /// Whether this replica allocates local addresses: no live sibling has a lower name.
    pub fn is_allocation_leader(&self) -> bool {
        let live = self.live_siblings();
        shared::is_leader(&self.me().replica, live.iter().map(String::as_str))
    }

    /// How many times a sibling's entries changed the served allocations (the site keeper
    /// reloads them when this moves).
    pub fn shared_allocations_rev(&self) -> u64 {
        self.0.site.allocations_rev.load(Ordering::Relaxed)
    }

    /// Sends this replica's changed entries to every live sibling. A sibling whose queue is
    /// full loses its stream: the next one starts with the whole state.
    pub fn share_site(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let messages = shared::messages(self.0.store.replica(), entries);
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        for (id, p) in peers.iter() {
            if !id.parse().is_ok_and(|g: GatewayId| self.is_sibling(&g)) {
                continue;
            }
            for m in &messages {
                let sent = p.tx.try_send(pb::SyncMessage {
                    msg: Some(Msg::SiteState(m.clone())),
                });
                if sent.is_err() {
                    debug!(peer = %id, "sibling queue full; its stream restarts with the whole site state");
                    p.cancel.cancel();
                    break;
                }
            }
        }
    }

    /// The whole site state as messages for a sibling whose stream just opened (one message,
    /// possibly empty, at least).
    pub(super) async fn site_state_messages(&self) -> Result<Vec<pb::SyncSiteState>, SessionEnd> {
        let store = self.0.store.clone();
        let entries = tokio::task::spawn_blocking(move || store.shared_entries())
            .await
            .map_err(|e| SessionEnd::Transport(format!("store task: {e}")))?
            .map_err(|e| SessionEnd::Transport(format!("store: {e}")))?;
        let replica = self.0.store.replica();
        let mut out = shared::messages(replica, &entries);
        if out.is_empty() {
            out.push(pb::SyncSiteState {
                replica: replica.to_owned(),
                entries: vec![],
            });
        }
        Ok(out)
    }

    /// Merges a sibling's `SyncSiteState`. Errors: site state from a gateway that is not a
    /// sibling, or an entry that does not check, is a protocol error; a failed store write
    /// ends the stream (the next one sends the whole state again).
    pub(super) async fn apply_site_state(
        &self,
        peer: &GatewayId,
        msg: pb::SyncSiteState,
    ) -> Result<(), SessionEnd> {
        if !self.is_sibling(peer) {
            return Err(SessionEnd::Protocol(
                "site state from a gateway of another site".into(),
            ));
        }
        if msg.replica != peer.replica {
            return Err(SessionEnd::Protocol(format!(
                "site state names replica {:?}, the certificate {:?}",
                msg.replica, peer.replica
            )));
        }
        if msg.entries.len() > shared::MAX_MESSAGE_ENTRIES {
            return Err(SessionEnd::Protocol("site state message too large".into()));
        }
        let entries = msg
            .entries
            .into_iter()
            .map(Entry::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
        if entries.is_empty() {
            return Ok(());
        }
        let store = self.0.store.clone();
        let mode = self.address_mode();
        let applied = tokio::task::spawn_blocking(move || store.apply_shared(&entries, &mode))
            .await
            .map_err(|e| SessionEnd::Transport(format!("store task: {e}")))?
            .map_err(|e| SessionEnd::Transport(format!("store: {e}")))?;
        for conflict in &applied.conflicts {
            warn!(sibling = %peer, conflict = %conflict, "local address conflict between replicas");
        }
        self.0
            .metrics
            .count_site_allocation_conflicts(applied.conflicts.len());
        if applied.allocations {
            self.0.site.allocations_rev.fetch_add(1, Ordering::Relaxed);
        }
        if applied.nodes || applied.allocations {
            self.touch();
        }
        Ok(())
    }
}
