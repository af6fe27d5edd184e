//! Consensus side links: beside a TCP+TLS link to a peer, a second TCP+TLS connection (its own
//! yamux session, ALPN `fedgw-consensus/1`) that carries only streams of class consensus.
//!
//! Over one TCP connection a raft message queues behind the bulk bytes the connection already
//! has in flight at the link's bottleneck, which the session's scheduler cannot pass (a
//! congestion window of 64 KB is 5 ms at 100 Mbit/s; docs/PERFORMANCE.md "Consensus first").
//! On a connection of its own it waits only for the bottleneck's queue, as a QUIC stream of
//! the highest priority does.
//!
//! - **Dialled and kept by the side that dialled the main link**, to the endpoint that link
//!   was dialled at, with the same client certificate and the same check that the peer is who
//!   the view says ([`Links::dial_tcp`]); after a loss it is dialled again on the keeper's
//!   schedule ([`super::keeper`]: at once, then backing off) for as long as its main link is
//!   the peer's registered one. It is closed when its main link closes.
//! - **Accepted like a main link** (the same listener, client certificate, and published-
//!   gateway check), but never registered as one: it supersedes no link. The newest side link
//!   to a peer, either side's, takes the peer's new consensus streams; one that is replaced
//!   keeps the streams it carries until its dialler closes it.
//! - **Optional.** A consensus stream goes over the main link whenever the peer has no side
//!   link (not yet dialled, lost, refused by a peer that predates it, or the main link is
//!   QUIC, whose stream priorities already put consensus first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::debug;

use super::{BACKOFF, DialError, GatewayId, Link, Links, keeper};

/// The side links of one gateway, by peer.
#[derive(Debug, Default)]
pub(super) struct SideLinks {
    /// The side link new consensus streams to a peer use, with its number.
    by_peer: Mutex<std::collections::HashMap<GatewayId, (u64, Link)>>,
    /// The test hook: side links are not dialled ([`Links::block_consensus_dials`]).
    blocked: AtomicBool,
}

/// A side link as its keeper holds it: it does not retire (its main link does).
struct Kept(Link);

impl keeper::Kept for Kept {
    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.0.closed()
    }
    fn retire_at(&self) -> tokio::time::Instant {
        // never within the keeper's watch: the main link's end ends the keeper
        tokio::time::Instant::now() + super::MAX_RETIRE
    }
}

/// Why a side link was not dialled.
#[derive(Debug, thiserror::Error)]
enum SideDialError {
    /// Side links are blocked by the test hook.
    #[error("consensus side links blocked by the test hook")]
    Blocked,
    /// The dial failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

impl Links {
    /// The live side link to `peer` that new consensus streams use, if any.
    pub(super) fn consensus_link(&self, peer: &GatewayId) -> Option<Link> {
        self.live_side_link(peer).map(|(_, l)| l)
    }

    /// The number of the live side link to `peer`, for `fedgw status` and tests.
    pub(super) fn consensus_link_id(&self, peer: &GatewayId) -> Option<u64> {
        self.live_side_link(peer).map(|(id, _)| id)
    }

    fn live_side_link(&self, peer: &GatewayId) -> Option<(u64, Link)> {
        self.0
            .consensus
            .by_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .filter(|(_, l)| l.is_alive())
            .cloned()
    }

    /// Makes `link` the side link new consensus streams to `peer` use, until it closes, the
    /// peer's org is revoked, or the gateway shuts down. An older one keeps its streams and
    /// closes once they end, so a peer that keeps dialling side links holds one at a time
    /// (plus those still draining).
    pub(super) fn register_consensus(&self, peer: GatewayId, link: Link, direction: &str) {
        let id = self.0.next_link.fetch_add(1, Ordering::Relaxed);
        let older = self
            .0
            .consensus
            .by_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.clone(), (id, link.clone()));
        if let Some((older_id, older)) = older {
            self.drain(&peer, older_id, older);
        }
        debug!(%peer, direction, link = id, "consensus side link up");
        let revoked = self.0.membership.revocation().token(&peer.org);
        let this = self.clone();
        self.0.tracker.spawn(async move {
            tokio::select! {
                () = link.closed() => {}
                () = revoked.cancelled() => link.close(2, "revoked"),
                () = this.0.shutdown.cancelled() => link.close(0, "shutdown"),
            }
            let mut by_peer = this
                .0
                .consensus
                .by_peer
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if by_peer.get(&peer).is_some_and(|(i, _)| *i == id) {
                by_peer.remove(&peer);
            }
            debug!(%peer, link = id, "consensus side link down");
        });
    }

    /// Keeps a side link up beside `main`, a TCP+TLS link this side dialled to `peer` at
    /// `endpoint`: dialled now and again after a loss while `main` is the peer's registered
    /// link; closed when `main` closes.
    pub(super) fn keep_consensus(
        &self,
        peer: GatewayId,
        main_id: u64,
        main: Link,
        endpoint: String,
    ) {
        let this = self.clone();
        self.0.tracker.spawn(async move {
            let current: Arc<Mutex<Option<Link>>> = Arc::default();
            let stop = this.0.shutdown.child_token();
            let keep = keeper::keep(
                || {
                    let (this, peer, endpoint, current) = (
                        this.clone(),
                        peer.clone(),
                        endpoint.clone(),
                        current.clone(),
                    );
                    async move {
                        if this.0.consensus.blocked.load(Ordering::Acquire) {
                            return Err(SideDialError::Blocked);
                        }
                        let link = this.dial_tcp(&peer, &endpoint, true).await?;
                        this.register_consensus(peer, link.clone(), "outbound");
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
                        Ok(Kept(link))
                    }
                },
                // a newer main link has its own keeper; this one stops dialling
                || {
                    this.0.membership.revocation().set().contains(&peer.org)
                        || this
                            .registered_link(&peer, true)
                            .is_none_or(|e| e.id != main_id)
                },
                &stop,
                BACKOFF,
                |e: &SideDialError| debug!(%peer, error = %e, "consensus side link: dial failed"),
                |_: &Kept| std::future::pending::<()>(),
            );
            tokio::select! {
                () = keep => {}
                () = main.closed() => {}
            }
            stop.cancel();
            // the keeper stops dialling when a newer main link took over, only once its side
            // link has closed: what is left to close is the side link of a main link that
            // closed, which lives no longer than it
            if let Some(side) = current.lock().unwrap_or_else(|e| e.into_inner()).take() {
                side.close(3, "main link closed");
            }
        });
    }

    /// Test hook: while set, no consensus side link is dialled (consensus streams take the
    /// main link), as with a peer that does not offer them.
    pub fn block_consensus_dials(&self, blocked: bool) {
        self.0.consensus.blocked.store(blocked, Ordering::Release);
    }

    /// Test hook: closes the live side link to `peer`, as a lost connection would; its
    /// keeper dials another.
    pub fn close_consensus_link(&self, peer: &GatewayId) {
        if let Some(link) = self.consensus_link(peer) {
            link.close(5, "closed by the test hook");
        }
    }
}
