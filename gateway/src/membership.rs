//! Membership (docs/DESIGN.md section 6): the signed records every gateway shares, the store they
//! persist in, and the sync streams that carry them.
//!
//! ```text
//!  admin API / join ──publish──┐                    ┌──▶ readers (admin lists, DNS, proxy, renderers)
//!                              ▼                    │
//!  sync sessions ──records──▶ ingest: verify ▶ view.check ▶ view.apply ▶ store (fsync) ▶ forward
//!                                                                          to every other peer
//! ```
//!
//! [`record`] checks one envelope, [`view`] holds what was accepted, [`sync`] runs one peer
//! stream, [`dialer`] keeps streams up. This module ties them together.

pub mod bootstrap;
pub mod certs;
pub mod dialer;
pub mod record;
pub mod siblings;
pub mod sync;
#[cfg(test)]
pub(crate) mod test_pki;
pub mod trail;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fedgw_certs::RevocationSet;
use fedgw_certs::envelope::{EnvelopeError, EnvelopeSigner, Signer, SignerVerifier};
use fedgw_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use record::{Kind, RecordKey, Reject, Verified};
use view::{Verdict, View};

pub use fedgw_certs::ids::{GatewayId, NodeKey};
pub use fedgw_proto::domain::Node;

/// Settings of the membership subsystem.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Consortium domain.
    pub domain: String,
    /// This gateway.
    pub me: GatewayId,
    /// This replica's index within its site (0: the first gateway; `replica_index` in
    /// `fedgw.toml`): every seq it signs is congruent to it modulo 16.
    pub replica_index: u8,
    /// This gateway accepts no inbound connections.
    pub outbound_only: bool,
    /// Heartbeat interval on sync streams; a stream silent for three intervals is closed.
    pub heartbeat: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max` (with ±25 % jitter).
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Gateways (`org/site`) never linked with directly (their records still arrive by relay).
    pub deny: BTreeSet<String>,
    /// Gateways to dial before their records are known (from the join).
    pub bootstrap: Vec<(GatewayId, Vec<String>)>,
    /// Longest life of a sync session: half the gateway leaf lifetime (when the leaf is
    /// renewed), so no session outlives the certificates it was authenticated with.
    pub max_session_age: Duration,
}

/// Revoked orgs, enforced three ways: the TLS verifiers' set (new handshakes), and a
/// cancellation token per org that closes its live connections and sync sessions.
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    set: RevocationSet,
    issued: fedgw_certs::IssuedSet,
    tokens: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl Revocation {
    /// The set the TLS verifiers consult.
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// The published gateway leaves the TLS verifiers consult (certificate transparency).
    pub fn issued(&self) -> &fedgw_certs::IssuedSet {
        &self.issued
    }

    /// A token cancelled when `org` is revoked (already cancelled if it is).
    pub fn token(&self, org: &str) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let t = tokens.entry(org.to_owned()).or_default();
        if self.set.contains(org) {
            t.cancel();
        }
        t.child_token()
    }

    /// Installs the revoked set: new handshakes see it at once, live connections of newly
    /// revoked orgs are cancelled.
    pub fn apply(&self, revoked: &BTreeSet<String>) {
        self.set.replace(revoked.clone());
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        for org in revoked {
            tokens.entry(org.clone()).or_default().cancel();
        }
    }
}

/// Per-peer counters, shown by `fedgw status`, and what the peer last said it is linked to.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// The gateways the peer reported live streams with (its last `SyncPeers`).
    pub links: Mutex<std::collections::HashSet<String>>,
    /// Last message received, Unix ms.
    pub last_seen_ms: AtomicI64,
    /// When the session was established, Unix ms.
    pub since_ms: AtomicI64,
    /// Records received.
    pub records_in: AtomicU64,
    /// Records sent.
    pub records_out: AtomicU64,
    /// The peer's last heartbeat carried this gateway's view digest.
    pub in_sync: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct PeerEntry {
    session: u64,
    dialer: String,
    outbound: bool,
    tx: mpsc::Sender<pb::SyncMessage>,
    cancel: CancellationToken,
    stats: Arc<PeerStats>,
}

/// The dialer's view of a peer it is not connected to.
#[derive(Debug, Clone, Default)]
pub struct DialStatus {
    /// "connecting", "backoff" or "revoked" (the peer refused this gateway as revoked).
    pub state: &'static str,
    /// The last failure.
    pub last_error: String,
}

/// A peer as `fedgw status` shows it.
#[derive(Debug, Clone)]
pub struct PeerReport {
    /// The peer.
    pub id: GatewayId,
    /// "connected", "connecting", "backoff" or "revoked".
    pub state: &'static str,
    /// "outbound" or "inbound" (connected peers).
    pub direction: &'static str,
    /// Last message, Unix ms.
    pub last_seen_ms: i64,
    /// When the session was established, Unix ms (0 when not connected).
    pub since_ms: i64,
    /// Last dial error.
    pub last_error: String,
    /// Records received.
    pub records_in: u64,
    /// Records sent.
    pub records_out: u64,
}

/// What an ingest did.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    /// Records newly accepted (persisted, applied, forwarded).
    pub accepted: u32,
    /// Records already held.
    pub duplicates: u32,
    /// Refused records with why.
    pub rejected: Vec<Reject>,
    /// The refused records that verified, by key (a subset of `rejected`).
    pub refused: Vec<(RecordKey, Reject)>,
}

/// Errors publishing a local record.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The record was refused (demo key, enode taken, invalid field...).
    #[error(transparent)]
    Rejected(Reject),
    /// The record body has no kind (an empty `oneof`).
    #[error("the record body is empty")]
    EmptyBody,
    /// Root-signed records (member, revocation) need the root key, which this gateway does
    /// not hold.
    #[error("this gateway does not hold the root key")]
    NoRootKey,
    /// Signing the envelope failed.
    #[error("cannot sign the record")]
    Sign(#[source] fedgw_certs::envelope::EnvelopeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The batch the record was published in could not be persisted.
    #[error("the batch was not persisted")]
    Batch(#[source] Arc<StoreError>),
}

/// How a local record is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAs {
    /// With this org's CA key.
    Org,
    /// With the consortium root key (root holder only).
    Root,
}

/// Signer certificate (DER) → who it is and its public key.
type SignerCache = HashMap<Vec<u8>, (Signer, Vec<u8>)>;

struct Inner {
    cfg: MembershipConfig,
    store: Arc<Store>,
    view: RwLock<View>,
    verifier: SignerVerifier,
    signer_cache: Mutex<SignerCache>,
    org_signer: EnvelopeSigner,
    root_signer: Option<EnvelopeSigner>,
    ingest_lock: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    /// Counts [`Membership::touch`] calls.
    touches: AtomicU64,
    revocation: Revocation,
    peers: Mutex<HashMap<String, PeerEntry>>,
    dial_status: Mutex<HashMap<String, DialStatus>>,
    next_session: AtomicU64,
    rejected: AtomicU64,
    equivocations: AtomicU64,
    metrics: Metrics,
    site: siblings::SiteShare,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// The membership subsystem. Clones share one instance.
#[derive(Clone)]
pub struct Membership(Arc<Inner>);

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.0.cfg.me)
            .finish_non_exhaustive()
    }
}

struct Lookup<'a> {
    inner: &'a Inner,
    now: SystemTime,
}

impl record::SignerLookup for Lookup<'_> {
    fn identify(&self, cert: &[u8]) -> Result<(Signer, Vec<u8>), EnvelopeError> {
        let mut cache = self
            .inner
            .signer_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(cert) {
            return Ok(hit.clone());
        }
        let found = self.inner.verifier.identify(cert, self.now)?;
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(cert.to_vec(), found.clone());
        Ok(found)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The storage key of an envelope, read without verification (verification happens on load).
pub fn storage_key(bytes: &[u8]) -> Option<String> {
    use prost::Message;
    let env = pb::Envelope::decode(bytes).ok()?;
    let rec = pb::RecordBody::decode(env.payload.as_slice()).ok()?;
    let kind = body_kind(&rec.body?)?;
    Some(
        RecordKey {
            kind,
            org: rec.org,
            name: rec.name,
        }
        .to_string(),
    )
}

/// What [`Membership::open`] needs besides the config.
#[derive(Debug)]
pub struct Keys {
    /// The consortium root certificate, DER.
    pub root_cert: Vec<u8>,
    /// This org's CA signer.
    pub org_signer: EnvelopeSigner,
    /// The root signer (founder only).
    pub root_signer: Option<EnvelopeSigner>,
}

impl Membership {
    /// Loads every stored record (re-verifying each), and returns the subsystem. Records that no
    /// longer verify are skipped with a warning.
    pub fn open(
        cfg: MembershipConfig,
        store: Arc<Store>,
        keys: Keys,
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, MembershipError> {
        let verifier =
            SignerVerifier::new(keys.root_cert, &cfg.domain).map_err(MembershipError::Root)?;
        let inner = Inner {
            cfg,
            store,
            view: RwLock::new(View::default()),
            verifier,
            signer_cache: Mutex::new(HashMap::new()),
            org_signer: keys.org_signer,
            root_signer: keys.root_signer,
            ingest_lock: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            touches: AtomicU64::new(0),
            revocation: Revocation::default(),
            peers: Mutex::new(HashMap::new()),
            dial_status: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            rejected: AtomicU64::new(0),
            equivocations: AtomicU64::new(0),
            metrics,
            site: siblings::SiteShare::default(),
            tracker,
            shutdown,
        };
        let m = Membership(Arc::new(inner));
        m.reload()?;
        Ok(m)
    }

    /// Rebuilds the view from the store.
    fn reload(&self) -> Result<(), MembershipError> {
        let stored = self.0.store.records().map_err(MembershipError::Store)?;
        let lookup = Lookup {
            inner: &self.0,
            now: SystemTime::now(),
        };
        let mut verified: Vec<Verified> = Vec::with_capacity(stored.len());
        for (key, bytes) in stored {
            match record::verify(&bytes, &lookup, &self.0.cfg.domain) {
                Ok(v) => verified.push(v),
                Err(e) => {
                    warn!(key = %key, error = %e, "stored record no longer verifies; skipped")
                }
            }
        }
        verified.sort_by_key(|v| v.key.kind.priority());
        let mut view = View::default();
        view.set_generation(self.read(View::generation) + 1);
        for v in verified {
            match view.check(&v) {
                Verdict::Accept => view.apply(v),
                Verdict::Duplicate => {}
                Verdict::Reject(r) => {
                    warn!(key = %v.key, error = %r, "stored record refused on load")
                }
            }
        }
        self.0.revocation.apply(view.revoked());
        self.0.metrics.set_revoked_orgs(view.revoked().len());
        let issued = certs::issued_spkis(&view.certs());
        self.0.revocation.issued.replace(issued);
        *self.0.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        self.0.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The store the records are kept in (the audit trail beside them).
    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    /// This gateway.
    pub fn me(&self) -> &GatewayId {
        &self.0.cfg.me
    }

    /// The settings.
    pub fn config(&self) -> &MembershipConfig {
        &self.0.cfg
    }

    /// The revocation state (for TLS verifiers and connection kill switches).
    pub fn revocation(&self) -> &Revocation {
        &self.0.revocation
    }

    /// Reads the view.
    pub fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        f(&self.0.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A receiver that changes whenever the view does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    /// Wakes every [`Membership::subscribe`]r as if the view had changed: for local state that
    /// readers combine with the view (a remote node's Service address).
    pub fn touch(&self) {
        self.0.touches.fetch_add(1, Ordering::Relaxed);
        self.0.changed.send_modify(|v| *v += 1);
    }

    /// How many times [`Membership::touch`] was called: a reader that sees it move re-reads
    /// the local state it combines with the view.
    pub fn touches(&self) -> u64 {
        self.0.touches.load(Ordering::Relaxed)
    }

    /// Refused records since start (invalid, unauthorised, equivocating, ...), not counting
    /// stale copies of records held in a newer version (`fedgw_records_rejected_total{result="stale"}`).
    pub fn rejected_total(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }

    /// Equivocations seen since start.
    pub fn equivocations_total(&self) -> u64 {
        self.0.equivocations.load(Ordering::Relaxed)
    }

    /// Verifies, checks, persists, applies and forwards a batch of envelopes. `from` is the
    /// peer they came from (not sent back to it). Only persisted records are forwarded or
    /// acknowledged.
    pub async fn ingest(
        &self,
        envelopes: Vec<Vec<u8>>,
        from: Option<&str>,
    ) -> Result<IngestReport, StoreError> {
        let (verified, copies) = self.verify_all(envelopes);
        let guard = self.0.ingest_lock.lock().await;
        let report = self.ingest_locked(verified, from).await;
        drop(guard);
        report.map(|mut r| {
            r.duplicates += copies;
            r
        })
    }

    /// Verifies each envelope, except exact copies of held ones (recognised by hash: flooding
    /// delivers a record once per peer, and a copy needs no second signature check).
    fn verify_all(&self, envelopes: Vec<Vec<u8>>) -> (Vec<Result<Verified, Reject>>, u32) {
        use sha2::Digest;
        let lookup = Lookup {
            inner: &self.0,
            now: SystemTime::now(),
        };
        let total = envelopes.len();
        let fresh: Vec<Vec<u8>> = self.read(|v| {
            envelopes
                .into_iter()
                .filter(|b| !v.holds(&sha2::Sha256::digest(b).into()))
                .collect()
        });
        let copies = u32::try_from(total - fresh.len()).unwrap_or(u32::MAX);
        let mut out: Vec<_> = fresh
            .iter()
            .map(|b| record::verify(b, &lookup, &self.0.cfg.domain))
            .collect();
        out.sort_by_key(|r| r.as_ref().map_or(0, |v| v.key.kind.priority()));
        (out, copies)
    }

    async fn ingest_locked(
        &self,
        verified: Vec<Result<Verified, Reject>>,
        from: Option<&str>,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut accepted: Vec<(String, Arc<Vec<u8>>)> = Vec::new();
        let mut audit = Vec::new();
        let mut revocations = false;
        let mut certs = false;
        // a revoked org's own records leave the view with the revocation: the store too
        let dropped: Vec<String>;
        {
            let mut view = self.0.view.write().unwrap_or_else(|e| e.into_inner());
            for v in verified {
                let v = match v {
                    Ok(v) => v,
                    Err(r) => {
                        self.count_reject(&r, from);
                        report.rejected.push(r);
                        continue;
                    }
                };
                match view.check(&v) {
                    Verdict::Accept => {
                        revocations |= v.key.kind == Kind::Revocation;
                        certs |= v.key.kind == Kind::Cert;
                        accepted.push((v.key.to_string(), v.bytes.clone()));
                        audit.push(record::audit_event(&v));
                        view.apply(v);
                    }
                    Verdict::Duplicate => report.duplicates += 1,
                    Verdict::Reject(r) => {
                        self.count_reject(&r, from);
                        report.refused.push((v.key.clone(), r.clone()));
                        report.rejected.push(r);
                    }
                }
            }
            dropped = view
                .take_dropped()
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        if accepted.is_empty() {
            return Ok(report);
        }
        let store = self.0.store.clone();
        let to_store = accepted.clone();
        let persisted =
            tokio::task::spawn_blocking(move || store.replace_records(&to_store, &dropped, &audit))
                .await
                .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())));
        if let Err(e) = persisted {
            // the view ran ahead of the store: rebuild it from what is durable
            warn!(error = %e, "persisting records failed; reloading the view");
            let _ = self.reload();
            return Err(e);
        }
        report.accepted = accepted.len() as u32;
        if revocations {
            let revoked = self.read(|v| v.revoked().clone());
            info!(revoked = ?revoked, "revocation received");
            self.0.revocation.apply(&revoked);
            self.0.metrics.set_revoked_orgs(revoked.len());
        }
        if certs || revocations {
            let issued = self.read(|v| certs::issued_spkis(&v.certs()));
            self.0.revocation.issued.replace(issued);
        }
        self.0.changed.send_modify(|v| *v += 1);
        self.forward(&accepted, from);
        Ok(report)
    }

    fn count_reject(&self, r: &Reject, from: Option<&str>) {
        self.0.metrics.record_rejected(r.label());
        // a stale copy is an older version of a record the view already holds newer: flooding
        // delivers one whenever two versions cross (a relayed copy arriving after its
        // successor), so it is counted by the metric only, not as a refusal
        if !matches!(r, Reject::Stale { .. }) {
            self.0.rejected.fetch_add(1, Ordering::Relaxed);
        }
        let from = from.unwrap_or("local");
        match r {
            Reject::Equivocation(seq) => {
                self.0.equivocations.fetch_add(1, Ordering::Relaxed);
                warn!(from, seq, "equivocating record refused");
            }
            Reject::Stale { .. } => debug!(from, error = %r, "stale record ignored"),
            _ => debug!(from, error = %r, "record refused"),
        }
    }

    /// Sends accepted records to every connected peer but `except` (the sender) and the
    /// sender's own peers: the sender sent to those (or, by the same rule, a gateway closer to
    /// the record's origin did). In a full mesh each record thus crosses each link once instead
    /// of N times. A peer whose queue is full, or whose link list was stale, misses the push and
    /// catches up through the digest exchange.
    fn forward(&self, records: &[(String, Arc<Vec<u8>>)], except: Option<&str>) {
        let msg = pb::SyncMessage {
            msg: Some(pb::sync_message::Msg::Records(pb::SyncRecords {
                envelopes: records.iter().map(|(_, b)| b.as_ref().clone()).collect(),
            })),
        };
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        let covered: std::collections::HashSet<String> = except
            .and_then(|from| peers.get(from))
            .map(|p| {
                p.stats
                    .links
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .unwrap_or_default();
        for (id, peer) in peers.iter() {
            if Some(id.as_str()) == except || covered.contains(id) {
                continue;
            }
            match peer.tx.try_send(msg.clone()) {
                Ok(()) => {
                    peer.stats
                        .records_out
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                }
                Err(_) => debug!(peer = %id, "peer queue full; it will catch up by digest"),
            }
        }
    }

    /// Signs and ingests a local record about (`org`, `name`); the seq is
    /// `max(held + 1, now in ms)`.
    pub async fn publish(
        &self,
        org: &str,
        name: &str,
        body: pb::record_body::Body,
        sign: SignAs,
    ) -> Result<(), PublishError> {
        let guard = self.0.ingest_lock.lock().await;
        let bytes = self.seal(org, name, body, sign)?;
        let (verified, _) = self.verify_all(vec![bytes]);
        let report = self.ingest_locked(verified, None).await?;
        drop(guard);
        match report.rejected.into_iter().next() {
            Some(r) => Err(PublishError::Rejected(r)),
            None => Ok(()),
        }
    }

    /// Signs and ingests records about (`org`, `name`) for each `(name, body)` of `items` as
    /// one batch: one store write, one view change, one push to each peer. Returns, per item
    /// in order, whether it was accepted.
    pub async fn publish_all(
        &self,
        org: &str,
        items: Vec<(String, pb::record_body::Body)>,
        sign: SignAs,
    ) -> Vec<Result<(), PublishError>> {
        let guard = self.0.ingest_lock.lock().await;
        let mut out = Vec::with_capacity(items.len());
        let mut sealed = Vec::with_capacity(items.len());
        let mut names: HashMap<(Kind, String), usize> = HashMap::new();
        for (name, body) in items {
            let kind = body_kind(&body);
            match self.seal(org, &name, body, sign) {
                Ok(bytes) => {
                    if let Some(kind) = kind {
                        names.insert((kind, name), out.len());
                    }
                    sealed.push(bytes);
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        let (verified, _) = self.verify_all(sealed);
        let unverified: Vec<Reject> = verified
            .iter()
            .filter_map(|v| v.as_ref().err().cloned())
            .collect();
        let report = self.ingest_locked(verified, None).await;
        drop(guard);
        match report {
            Ok(report) => {
                for (key, reject) in report.refused {
                    if let Some(i) = names.get(&(key.kind, key.name)) {
                        out[*i] = Err(PublishError::Rejected(reject));
                    }
                }
                // a record of ours that does not verify is a signing fault: every item is
                // reported, as nothing tells which one it was
                if let Some(r) = unverified.into_iter().next() {
                    for o in out.iter_mut().filter(|o| o.is_ok()) {
                        *o = Err(PublishError::Rejected(r.clone()));
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for o in out.iter_mut().filter(|o| o.is_ok()) {
                    *o = Err(PublishError::Batch(e.clone()));
                }
            }
        }
        out
    }

    /// Builds a signed envelope about (`org`, `name`) with the next seq, without ingesting it.
    pub fn seal(
        &self,
        org: &str,
        name: &str,
        body: pb::record_body::Body,
        sign: SignAs,
    ) -> Result<Vec<u8>, PublishError> {
        let kind = body_kind(&body).ok_or(PublishError::EmptyBody)?;
        let key = RecordKey {
            kind,
            org: org.to_owned(),
            name: name.to_owned(),
        };
        let index = self.0.cfg.replica_index;
        let seq = self.read(|v| v.next_seq(&key, unix_ms(SystemTime::now()), index));
        let signer = match sign {
            SignAs::Org => &self.0.org_signer,
            SignAs::Root => self.0.root_signer.as_ref().ok_or(PublishError::NoRootKey)?,
        };
        record::seal(signer, org, name, seq, body).map_err(PublishError::Sign)
    }

    /// The task tracker sessions run on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// Whether this gateway holds the root key.
    pub fn is_root_holder(&self) -> bool {
        self.0.root_signer.is_some()
    }

    // ---- peers

    /// Registers a session with `peer`. Of two sessions with the same peer the one whose dialer
    /// has the lower gateway id is kept, so both ends settle on the same stream; a reconnect by
    /// the same dialer replaces the old session.
    fn register(
        &self,
        peer: &GatewayId,
        outbound: bool,
        tx: mpsc::Sender<pb::SyncMessage>,
        cancel: CancellationToken,
    ) -> Option<(u64, Arc<PeerStats>)> {
        let dialer = if outbound {
            self.0.cfg.me.to_string()
        } else {
            peer.to_string()
        };
        let mut peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        let id = peer.to_string();
        if let Some(existing) = peers.get(&id) {
            if existing.dialer < dialer {
                return None;
            }
            existing.cancel.cancel();
        }
        let session = self.0.next_session.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(PeerStats::default());
        stats.since_ms.store(
            i64::try_from(unix_ms(SystemTime::now())).unwrap_or(0),
            Ordering::Relaxed,
        );
        peers.insert(
            id,
            PeerEntry {
                session,
                dialer,
                outbound,
                tx,
                cancel,
                stats: stats.clone(),
            },
        );
        drop(peers);
        self.0
            .dial_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer.to_string());
        self.0.metrics.set_peers(self.connected_count());
        self.announce_links();
        if self.is_sibling(peer) {
            // the allocation leader may have changed
            self.touch();
        }
        Some((session, stats))
    }

    /// Tells every peer which gateways this one now has streams with.
    fn announce_links(&self) {
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        let msg = pb::SyncMessage {
            msg: Some(pb::sync_message::Msg::Peers(pb::SyncPeers {
                gateways: peers.keys().cloned().collect(),
            })),
        };
        for p in peers.values() {
            let _ = p.tx.try_send(msg.clone());
        }
    }

    fn deregister(&self, peer: &GatewayId, session: u64) {
        let mut peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        let removed = peers
            .get(&peer.to_string())
            .is_some_and(|p| p.session == session);
        if removed {
            peers.remove(&peer.to_string());
        }
        drop(peers);
        self.0.metrics.set_peers(self.connected_count());
        if removed {
            self.announce_links();
            if self.is_sibling(peer) {
                // the allocation leader may have changed
                self.touch();
            }
        }
    }

    /// Whether a sync session with `peer` is up.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.0
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(peer)
    }

    /// The connected peers whose last heartbeat carried this gateway's view digest, sorted.
    pub fn peers_in_sync(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, p)| p.stats.in_sync.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// How many sync streams are up.
    pub fn connected_count(&self) -> usize {
        self.0.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn set_dial_status(&self, peer: &str, status: Option<DialStatus>) {
        let mut map = self.0.dial_status.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            Some(s) => {
                map.insert(peer.to_owned(), s);
            }
            None => {
                map.remove(peer);
            }
        }
    }

    /// Connected peers and the dialer's state for the others, sorted by id.
    pub fn peer_reports(&self) -> Vec<PeerReport> {
        let mut out = Vec::new();
        for (id, p) in self
            .0
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let Ok(gateway) = id.parse::<GatewayId>() else {
                continue;
            };
            out.push(PeerReport {
                id: gateway,
                state: "connected",
                direction: if p.outbound { "outbound" } else { "inbound" },
                last_seen_ms: p.stats.last_seen_ms.load(Ordering::Relaxed),
                since_ms: p.stats.since_ms.load(Ordering::Relaxed),
                last_error: String::new(),
                records_in: p.stats.records_in.load(Ordering::Relaxed),
                records_out: p.stats.records_out.load(Ordering::Relaxed),
            });
        }
        for (id, s) in self
            .0
            .dial_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let Ok(gateway) = id.parse::<GatewayId>() else {
                continue;
            };
            if out.iter().any(|p| p.id == gateway) {
                continue;
            }
            out.push(PeerReport {
                id: gateway,
                state: s.state,
                direction: "outbound",
                last_seen_ms: 0,
                since_ms: 0,
                last_error: s.last_error.clone(),
                records_in: 0,
                records_out: 0,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Gateways this one should hold a stream with: every known gateway of an active member
    /// that accepts inbound connections, plus bootstrap peers not yet known; never itself,
    /// a revoked org, or a denied id. Each with its endpoints.
    pub fn dial_targets(&self) -> Vec<(GatewayId, Vec<String>)> {
        let me = &self.0.cfg.me;
        let mut out: Vec<(GatewayId, Vec<String>)> = self.read(|v| {
            v.gateways()
                .into_iter()
                .filter(|(_, g)| !g.outbound_only)
                .map(|(id, g)| (id, g.advertise))
                .collect()
        });
        for (id, endpoints) in &self.0.cfg.bootstrap {
            if !out.iter().any(|(known, _)| known == id) {
                out.push((id.clone(), endpoints.clone()));
            }
        }
        let revoked = self.0.revocation.set().snapshot();
        out.retain(|(id, _)| {
            id != me && !revoked.contains(&id.org) && !self.0.cfg.deny.contains(&id.to_string())
        });
        out
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        for p in self
            .0
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            p.cancel.cancel();
        }
    }
}

/// Errors opening the membership subsystem.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The root certificate is unusable.
    #[error("root certificate: {0}")]
    Root(EnvelopeError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

fn body_kind(body: &pb::record_body::Body) -> Option<Kind> {
    use pb::record_body::Body as B;
    Some(match body {
        B::Member(_) => Kind::Member,
        B::Revocation(_) => Kind::Revocation,
        B::Gateway(_) => Kind::Gateway,
        B::Node(_) => Kind::Node,
        B::Vote(_) => Kind::Vote,
        B::Raft(_) => Kind::Raft,
        B::Validator(_) => Kind::Validator,
        B::ValidatorVote(_) => Kind::ValidatorVote,
        B::Cert(_) => Kind::Cert,
        // a cert record is never deleted (it expires with its certificate)
        B::Tombstone(t) => Kind::from_pb(t.kind).filter(|k| !k.root_only() && *k != Kind::Cert)?,
    })
}
