//! One sync stream with one peer (modelled on Consul's peering stream). Both ends run the same
//! loop whichever side dialled:
//!
//! 1. send `Open` (version, site) and a `Digest` (count and XOR-hash per origin org);
//! 2. for each origin whose summary differs, send an `Inventory` of every (key, seq) held;
//! 3. answer an `Inventory` with the records the peer lacks or holds older, as `Records`;
//! 4. ingest received `Records` (persist before anything else) and answer with an `Ack`;
//! 5. live pushes arrive as `Records` from [`super::Membership::forward`];
//! 6. every heartbeat interval send `Heartbeat` with the view digest; two mismatching heartbeats
//!    in a row restart the digest exchange; a peer silent for three intervals is dropped;
//! 7. `Peers` says which gateways the sender is linked to (sent whenever that changes), so
//!    forwarding can skip peers the sender already covered;
//! 8. between siblings (replicas of one site) only, `SiteState` carries the site state they
//!    share (`super::siblings`): all of it after the digest, then each change;
//! 9. `Terminate` (or cancellation: shutdown, revocation, a duplicate stream) ends the session.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fedgw_proto::v1 as pb;
use pb::sync_message::Msg;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::record::RecordKey;
use super::{GatewayId, Membership, unix_ms};

/// The version sent in `SyncOpen`.
pub const SYNC_PROTOCOL_VERSION: u32 = 1;
/// Most records per `Records` message.
pub const MAX_BATCH_RECORDS: usize = 256;
/// Most bytes of envelopes per `Records` message.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Most entries accepted in one inventory.
pub const MAX_INVENTORY: usize = 100_000;
/// Bound of each session's outgoing queue.
pub const QUEUE: usize = 256;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// Cancelled locally (shutdown, revocation, replaced by another stream).
    #[error("closed")]
    Closed,
    /// A stream with this peer already exists and wins.
    #[error("duplicate stream")]
    Duplicate,
    /// The peer ended the stream.
    #[error("peer terminated: {0}")]
    Terminated(String),
    /// The session reached its maximum age; it is re-established with current certificates.
    #[error("session reached its maximum age")]
    MaxAge,
    /// The peer went silent.
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The transport failed.
    #[error("stream error: {0}")]
    Transport(String),
}

fn msg(m: Msg) -> pb::SyncMessage {
    pb::SyncMessage { msg: Some(m) }
}

fn digest_msg(m: &Membership) -> pb::SyncMessage {
    let origins = m.read(|v| {
        v.origin_sums()
            .iter()
            .map(|(origin, sum)| pb::OriginDigest {
                origin: origin.clone(),
                count: sum.count,
                hash: sum.hash.to_vec(),
            })
            .collect()
    });
    msg(Msg::Digest(pb::SyncDigest { origins }))
}

/// Runs a session until it ends. `outbound` says whether this side dialled.
pub async fn run<S>(
    m: Membership,
    peer: GatewayId,
    outbound: bool,
    mut inbound: S,
    tx: mpsc::Sender<pb::SyncMessage>,
    cancel: CancellationToken,
) -> SessionEnd
where
    S: Stream<Item = Result<pb::SyncMessage, tonic::Status>> + Unpin,
{
    // Open goes first on the wire, before registration lets anything else into the queue
    let cfg = m.config();
    let open = msg(Msg::Open(pb::SyncOpen {
        version: SYNC_PROTOCOL_VERSION,
        site: cfg.me.site.clone(),
        outbound_only: cfg.outbound_only,
    }));
    if tx.send(open).await.is_err() {
        return SessionEnd::Transport("outgoing queue closed".into());
    }
    let Some((session, stats)) = m.register(&peer, outbound, tx.clone(), cancel.clone()) else {
        let _ = tx
            .send(msg(Msg::Terminate(pb::SyncTerminate {
                reason: "duplicate stream".into(),
            })))
            .await;
        return SessionEnd::Duplicate;
    };
    debug!(peer = %peer, outbound, "sync session up");
    let end = session_loop(&m, &peer, &mut inbound, &tx, &cancel, &stats).await;
    if matches!(end, SessionEnd::Closed | SessionEnd::MaxAge) {
        let _ = tx.try_send(msg(Msg::Terminate(pb::SyncTerminate {
            reason: "closing".into(),
        })));
    }
    m.deregister(&peer, session);
    debug!(peer = %peer, reason = %end, "sync session down");
    end
}

async fn session_loop<S>(
    m: &Membership,
    peer: &GatewayId,
    inbound: &mut S,
    tx: &mpsc::Sender<pb::SyncMessage>,
    cancel: &CancellationToken,
    stats: &super::PeerStats,
) -> SessionEnd
where
    S: Stream<Item = Result<pb::SyncMessage, tonic::Status>> + Unpin,
{
    let cfg = m.config();
    if tx.send(digest_msg(m)).await.is_err() {
        return SessionEnd::Transport("outgoing queue closed".into());
    }
    if m.is_sibling(peer) {
        let state = match m.site_state_messages().await {
            Ok(state) => state,
            Err(end) => return end,
        };
        for s in state {
            if tx.send(msg(Msg::SiteState(s))).await.is_err() {
                return SessionEnd::Transport("outgoing queue closed".into());
            }
        }
    }
    let heartbeat = cfg.heartbeat;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let expires = Instant::now() + cfg.max_session_age;
    let mut mismatches = 0u32;
    let mut opened = false;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Closed,
            _ = m.0.shutdown.cancelled() => return SessionEnd::Closed,
            _ = tokio::time::sleep_until(expires) => return SessionEnd::MaxAge,
            _ = tick.tick() => {
                let silent = last_seen.elapsed();
                if silent > heartbeat * 3 {
                    return SessionEnd::Silent(silent);
                }
                let digest = m.read(|v| v.digest().to_vec());
                if tx.send(msg(Msg::Heartbeat(pb::SyncHeartbeat { digest }))).await.is_err() {
                    return SessionEnd::Transport("outgoing queue closed".into());
                }
                continue;
            }
            next = inbound.next() => next,
        };
        let message = match next {
            None => return SessionEnd::Transport("stream ended".into()),
            Some(Err(status)) => return SessionEnd::Transport(status.message().to_owned()),
            Some(Ok(pb::SyncMessage { msg: None })) => {
                return SessionEnd::Protocol("empty message".into());
            }
            Some(Ok(pb::SyncMessage { msg: Some(message) })) => message,
        };
        last_seen = Instant::now();
        stats.last_seen_ms.store(
            i64::try_from(unix_ms(std::time::SystemTime::now())).unwrap_or(0),
            Ordering::Relaxed,
        );
        match message {
            Msg::Open(o) => {
                if o.version != SYNC_PROTOCOL_VERSION {
                    return SessionEnd::Protocol(format!("unsupported version {}", o.version));
                }
                if o.site != peer.site {
                    return SessionEnd::Protocol(format!(
                        "site {:?} does not match the certificate",
                        o.site
                    ));
                }
                opened = true;
            }
            _ if !opened => return SessionEnd::Protocol("first message must be Open".into()),
            Msg::Digest(d) => {
                for inv in inventories_for(m, &d) {
                    if tx.send(inv).await.is_err() {
                        return SessionEnd::Transport("outgoing queue closed".into());
                    }
                }
            }
            Msg::Inventory(inv) => {
                if inv.entries.len() > MAX_INVENTORY {
                    return SessionEnd::Protocol("inventory too large".into());
                }
                let theirs: HashMap<RecordKey, u64> = inv
                    .entries
                    .iter()
                    .filter_map(|e| RecordKey::parse(&e.key).map(|k| (k, e.seq)))
                    .collect();
                let missing = m.read(|v| v.newer_than(&inv.origin, &theirs));
                stats
                    .records_out
                    .fetch_add(missing.len() as u64, Ordering::Relaxed);
                for batch in batches(missing.iter().map(|b| b.as_ref().clone())) {
                    if tx.send(batch).await.is_err() {
                        return SessionEnd::Transport("outgoing queue closed".into());
                    }
                }
            }
            Msg::Records(r) => {
                stats
                    .records_in
                    .fetch_add(r.envelopes.len() as u64, Ordering::Relaxed);
                let id = peer.to_string();
                let ack = match m.ingest(r.envelopes, Some(&id)).await {
                    Ok(report) => pb::SyncAck {
                        accepted: report.accepted,
                        rejected: u32::try_from(report.rejected.len()).unwrap_or(u32::MAX),
                    },
                    // not persisted: no ack; the digest exchange retries later
                    Err(e) => return SessionEnd::Transport(format!("store: {e}")),
                };
                if tx.send(msg(Msg::Ack(ack))).await.is_err() {
                    return SessionEnd::Transport("outgoing queue closed".into());
                }
            }
            Msg::Ack(_) => {}
            Msg::Heartbeat(h) => {
                let ours = m.read(|v| v.digest());
                let same = h.digest.as_slice() == ours.as_slice();
                stats.in_sync.store(same, Ordering::Relaxed);
                if same {
                    mismatches = 0;
                } else {
                    mismatches += 1;
                    if mismatches >= 2 {
                        mismatches = 0;
                        if tx.send(digest_msg(m)).await.is_err() {
                            return SessionEnd::Transport("outgoing queue closed".into());
                        }
                    }
                }
            }
            Msg::Peers(p) => {
                if p.gateways.len() > MAX_INVENTORY {
                    return SessionEnd::Protocol("peer list too large".into());
                }
                *stats.links.lock().unwrap_or_else(|e| e.into_inner()) =
                    p.gateways.into_iter().collect();
            }
            Msg::SiteState(s) => {
                if let Err(end) = m.apply_site_state(peer, s).await {
                    return end;
                }
            }
            Msg::Terminate(t) => return SessionEnd::Terminated(t.reason),
        }
    }
}

/// The inventories to send in answer to a peer digest: one per origin whose summary differs.
fn inventories_for(m: &Membership, theirs: &pb::SyncDigest) -> Vec<pb::SyncMessage> {
    m.read(|v| {
        let ours = v.origin_sums();
        let theirs: HashMap<&str, &pb::OriginDigest> = theirs
            .origins
            .iter()
            .map(|o| (o.origin.as_str(), o))
            .collect();
        let origins: BTreeSet<&str> = ours
            .keys()
            .map(String::as_str)
            .chain(theirs.keys().copied())
            .collect();
        origins
            .into_iter()
            .filter(|o| match (ours.get(*o), theirs.get(o)) {
                (Some(a), Some(b)) => a.count != b.count || a.hash.as_slice() != b.hash.as_slice(),
                _ => true,
            })
            .map(|origin| {
                let entries = v
                    .inventory(origin)
                    .into_iter()
                    .map(|(k, seq)| pb::InventoryEntry {
                        key: k.to_string(),
                        seq,
                    })
                    .collect();
                msg(Msg::Inventory(pb::SyncInventory {
                    origin: origin.to_owned(),
                    entries,
                }))
            })
            .collect()
    })
}

/// Splits envelopes into `Records` messages of at most [`MAX_BATCH_RECORDS`] records and
/// about [`MAX_BATCH_BYTES`] bytes.
fn batches(envelopes: impl Iterator<Item = Vec<u8>>) -> Vec<pb::SyncMessage> {
    let mut out = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    for e in envelopes {
        if !cur.is_empty() && (cur.len() >= MAX_BATCH_RECORDS || size + e.len() > MAX_BATCH_BYTES) {
            out.push(msg(Msg::Records(pb::SyncRecords {
                envelopes: std::mem::take(&mut cur),
            })));
            size = 0;
        }
        size += e.len();
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(msg(Msg::Records(pb::SyncRecords { envelopes: cur })));
    }
    out
}

#[cfg(test)]
mod tests;
