//! Keeps a sync stream up with every gateway this one should reach
//! ([`super::Membership::dial_targets`]). A target without a live stream (in either direction)
//! is dialled; failures back off exponentially with ±25 % jitter, and a session that stayed up
//! for a while resets the backoff. A gateway marked outbound-only is never dialled: it dials
//! out, and the stream it opens is used both ways. Of a pair that can dial each other, the
//! higher `org/site` waits [`HIGHER_ID_GRACE`] for the lower to dial first (the lower's stream
//! is the one both ends keep). At start, peers already known are dialled at once; peers learned
//! afterwards wait until the gateway has caught up ([`CATCH_UP_QUIET`] of quiet view after a
//! first stream, at most [`CATCH_UP_MAX`]), and at most [`MAX_CONNECTING`] handshakes run at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fedgw_certs::tls::{self, ReloadableIdentity};
use fedgw_certs::{PeerVerifier, RevocationSet};
use fedgw_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::sync::{self, SessionEnd};
use super::{DialStatus, GatewayId, Membership};
use crate::net;

/// A session shorter than this counts as a failure for backoff purposes.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How often targets are re-examined when nothing changes.
const RESCAN: Duration = Duration::from_millis(250);
/// Bound on connect + handshake + stream setup.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the higher `org/site` of a pair waits before dialling a newly known peer: the
/// stream the lower one dials is the one both keep, so waiting saves a discarded handshake.
const HIGHER_ID_GRACE: Duration = Duration::from_millis(200);
/// Most dials in their connect/handshake phase at once. Established streams do not count: the
/// mesh still forms completely, but handshakes are spread out, so a gateway starting among many
/// keeps CPU for exchanging records with the peers it already reached.
const MAX_CONNECTING: usize = 2;
/// A gateway has caught up once its view has been quiet this long after its first stream.
const CATCH_UP_QUIET: Duration = Duration::from_millis(100);
/// Newly learned peers are dialled at the latest this long after start.
const CATCH_UP_MAX: Duration = Duration::from_secs(1);

/// What a dial task reports.
#[derive(Debug)]
enum DialEvent {
    /// The stream is established (the connect slot is free again).
    Connected(String),
    /// The attempt or the session ended: how long the session lasted, or why the dial failed.
    Ended(String, Result<Duration, DialFailure>),
}

/// Why a dial or the session it opened failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DialFailure {
    /// The peer refused this gateway's certificate as revoked: the consortium revoked this
    /// gateway's org, and no peer will take it again.
    Revoked,
    /// Anything else, as `fedgw status` shows it.
    Other(String),
}

impl From<String> for DialFailure {
    fn from(text: String) -> Self {
        DialFailure::Other(text)
    }
}

impl From<&str> for DialFailure {
    fn from(text: &str) -> Self {
        DialFailure::Other(text.to_owned())
    }
}

/// What `fedgw status` shows for a peer that refused this gateway as revoked.
pub const REVOKED_ERROR: &str = "the consortium revoked this org: the peer refuses this \
    gateway's certificate (TLS alert certificate_revoked); this gateway can no longer take \
    part, ask the consortium's operator to invite the org again";

/// What the dialer needs to build TLS client configs.
#[derive(Clone, Debug)]
pub struct DialerTls {
    /// This gateway's certificate (renewed in place).
    pub identity: ReloadableIdentity,
    /// The consortium root, DER.
    pub root: rustls_pki_types::CertificateDer<'static>,
    /// The consortium domain.
    pub domain: String,
    /// Revoked orgs.
    pub revoked: RevocationSet,
    /// Published gateway leaves (certificate transparency).
    pub issued: fedgw_certs::IssuedSet,
}

impl DialerTls {
    fn config_for(&self, org: &str) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = tls::provider();
        let verifier = PeerVerifier::new(
            self.root.clone(),
            &self.domain,
            self.revoked.clone(),
            &provider,
        )?
        .with_issued(self.issued.clone())
        .expecting_org(org);
        Ok(Arc::new(tls::federation_client_config(
            &self.identity,
            Arc::new(verifier),
            provider,
        )?))
    }
}

#[derive(Debug)]
struct Target {
    backoff: Duration,
    next_attempt: Instant,
    in_flight: bool,
    connected: bool,
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}

/// Runs until the membership's shutdown token is cancelled.
pub async fn run(m: Membership, tls: DialerTls) {
    schedule(m, move |m, id, endpoints, events| {
        let tls = tls.clone();
        async move { dial_and_run(&m, &tls, &id, &endpoints, &events).await }
    })
    .await;
}

/// The dialler's schedule: which targets to dial when, with `dial` doing one attempt (and the
/// session it opens) and returning how long the session lasted or why the attempt failed.
async fn schedule<D, F>(m: Membership, dial: D)
where
    D: Fn(Membership, GatewayId, Vec<String>, mpsc::Sender<DialEvent>) -> F,
    F: Future<Output = Result<Duration, DialFailure>> + Send + 'static,
{
    let cfg = m.config().clone();
    let shutdown = m.0.shutdown.clone();
    let mut changed = m.subscribe();
    let (done_tx, mut done_rx) = mpsc::channel::<DialEvent>(64);
    let mut targets: HashMap<String, Target> = HashMap::new();
    let mut connecting = 0usize;
    // peers known at start are dialled at once; peers learned later (from the view others
    // hand us) wait until this gateway has caught up through the links it already has, so a
    // fresh gateway spends its first moments on records rather than on handshakes
    let started = Instant::now();
    let known_at_start: std::collections::HashSet<String> = m
        .dial_targets()
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    let mut last_change = started;
    let mut ever_linked = false;
    loop {
        ever_linked = ever_linked || m.connected_count() > 0;
        let caught_up = started.elapsed() >= CATCH_UP_MAX
            || (ever_linked && last_change.elapsed() >= CATCH_UP_QUIET);
        let now = Instant::now();
        for (id, endpoints) in m.dial_targets() {
            let key = id.to_string();
            if m.is_connected(&key) {
                continue;
            }
            let t = targets.entry(key.clone()).or_insert_with(|| {
                let bootstrap = cfg.bootstrap.iter().any(|(b, _)| *b == id);
                let grace = id < cfg.me && !bootstrap && !cfg.outbound_only;
                Target {
                    backoff: cfg.backoff_base,
                    next_attempt: if grace { now + HIGHER_ID_GRACE } else { now },
                    in_flight: false,
                    connected: false,
                }
            });
            if t.in_flight || now < t.next_attempt {
                continue;
            }
            if !caught_up && !known_at_start.contains(&key) {
                continue;
            }
            if connecting >= MAX_CONNECTING {
                break;
            }
            connecting += 1;
            t.in_flight = true;
            m.set_dial_status(
                &key,
                Some(DialStatus {
                    state: "connecting",
                    last_error: String::new(),
                }),
            );
            let done = done_tx.clone();
            let attempt = dial(m.clone(), id.clone(), endpoints, done.clone());
            m.0.tracker.spawn(async move {
                let result = attempt.await;
                let _ = done.send(DialEvent::Ended(key, result)).await;
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.changed() => last_change = Instant::now(),
            _ = tokio::time::sleep(if caught_up { RESCAN } else { CATCH_UP_QUIET / 2 }) => {}
            Some(event) = done_rx.recv() => {
                let (id, result) = match event {
                    DialEvent::Connected(id) => {
                        connecting = connecting.saturating_sub(1);
                        if let Some(t) = targets.get_mut(&id) {
                            t.connected = true;
                        }
                        continue;
                    }
                    DialEvent::Ended(id, result) => (id, result),
                };
                if let Some(t) = targets.get_mut(&id) {
                    if !t.connected {
                        connecting = connecting.saturating_sub(1);
                    }
                    t.connected = false;
                    t.in_flight = false;
                    match result {
                        Ok(lasted) if lasted >= STABLE_SESSION => {
                            t.backoff = cfg.backoff_base;
                            t.next_attempt = Instant::now();
                            m.set_dial_status(&id, None);
                        }
                        Err(DialFailure::Revoked) => {
                            // said once per peer, at error: the operator must act
                            let said = m.0.dial_status.lock().unwrap_or_else(|e| e.into_inner())
                                .get(&id).is_some_and(|s| s.state == "revoked");
                            if !said {
                                tracing::error!(peer = %id, "{REVOKED_ERROR}");
                            }
                            t.next_attempt = Instant::now() + jitter(t.backoff);
                            t.backoff = (t.backoff * 2).min(cfg.backoff_max);
                            m.set_dial_status(&id, Some(DialStatus { state: "revoked", last_error: REVOKED_ERROR.to_owned() }));
                        }
                        other => {
                            let error = match other {
                                Err(DialFailure::Other(e)) => e,
                                _ => "session ended quickly".into(),
                            };
                            debug!(peer = %id, error = %error, "sync dial failed");
                            t.next_attempt = Instant::now() + jitter(t.backoff);
                            t.backoff = (t.backoff * 2).min(cfg.backoff_max);
                            m.set_dial_status(&id, Some(DialStatus { state: "backoff", last_error: error }));
                        }
                    }
                }
            }
        }
    }
}

/// Dials one target (each endpoint in turn) and runs the session to its end.
async fn dial_and_run(
    m: &Membership,
    tls: &DialerTls,
    id: &GatewayId,
    endpoints: &[String],
    events: &mpsc::Sender<DialEvent>,
) -> Result<Duration, DialFailure> {
    let config = tls.config_for(&id.org).map_err(|e| e.to_string())?;
    let mut last_error = "no endpoints".to_owned();
    // the peer proves the identity the view expects, whatever name or address it is at
    let name = net::dns_server_name(&id.server_name(&tls.domain)).map_err(|e| e.to_string())?;
    for endpoint in endpoints {
        let stream =
            match net::dial_tls_as(endpoint, name.clone(), config.clone(), DIAL_TIMEOUT).await {
                Ok(s) => s,
                Err(e) if net::revoked_by_peer(&e) => return Err(DialFailure::Revoked),
                Err(e) => {
                    last_error = crate::net::with_sources(&e);
                    continue;
                }
            };
        // the verifier pinned the org; the site comes from the certificate too
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| fedgw_certs::peer_identity(leaf, &tls.domain).ok())
            .and_then(|pid| GatewayId::from_identity(&pid, &tls.domain));
        let Some(peer) = peer else {
            last_error = "peer certificate names no gateway".into();
            continue;
        };
        if peer != *id {
            // the verifier checked the expected name; a leaf names only its own gateway
            last_error = format!("{endpoint} is {peer}, not {id}");
            continue;
        }
        // under TLS 1.3 the peer's verdict on this gateway's certificate arrives after the
        // handshake, as the first read, which the gRPC channel reports only as a transport error
        let (stream, revoked) = net::WatchRevoked::new(stream);
        let failure = |text: String| {
            if revoked.load(std::sync::atomic::Ordering::Relaxed) {
                DialFailure::Revoked
            } else {
                DialFailure::Other(text)
            }
        };
        let channel = net::single_use_channel(stream)
            .await
            .map_err(|e| failure(e.to_string()))?;
        let mut client = pb::federation_client::FederationClient::new(channel)
            .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(sync::QUEUE);
        let response = tokio::time::timeout(DIAL_TIMEOUT, client.sync(ReceiverStream::new(rx)))
            .await
            .map_err(|_| "sync call timed out".to_owned())?
            .map_err(|s| failure(format!("sync refused: {}", s.message())))?;
        let _ = events.send(DialEvent::Connected(id.to_string())).await;
        let started = Instant::now();
        let cancel = m.revocation().token(&peer.org);
        let end = sync::run(
            m.clone(),
            peer,
            true,
            response.into_inner(),
            tx,
            cancel.clone(),
        )
        .await;
        cancel.cancel();
        return match end {
            SessionEnd::Closed
            | SessionEnd::Terminated(_)
            | SessionEnd::Duplicate
            | SessionEnd::MaxAge => Ok(started.elapsed()),
            other => Err(other.to_string().into()),
        };
    }
    Err(last_error.into())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::membership::test_pki::{Pki, membership};

    /// When `schedule` dials org2's gateway (a bootstrap peer) for `simulated` of paused time,
    /// with every attempt ending after `lasts` with `result`: the attempts' start times.
    async fn attempts(
        lasts: Duration,
        result: Result<Duration, DialFailure>,
        simulated: Duration,
    ) -> Vec<Instant> {
        let pki = Pki::new(&["org1", "org2"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let m = membership(&pki, "org1", dir.path(), |c| {
            c.bootstrap = vec![(
                GatewayId::new("org2", "dc1"),
                vec!["gw.org2.example:7000".into()],
            )];
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let dialer = tokio::spawn(schedule(m.clone(), move |_, id, _, _| {
            assert_eq!(id.to_string(), "org2/dc1");
            log.lock().expect("attempts").push(Instant::now());
            let result = result.clone();
            async move {
                tokio::time::sleep(lasts).await;
                result
            }
        }));
        tokio::time::sleep(simulated).await;
        m.0.shutdown.cancel();
        dialer.await.expect("dialer");
        seen.lock().expect("attempts").clone()
    }

    #[tokio::test(start_paused = true)]
    async fn failed_dials_back_off_exponentially_up_to_the_maximum() {
        let start = Instant::now();
        let at = attempts(
            Duration::ZERO,
            Err("refused".into()),
            Duration::from_secs(60),
        )
        .await;
        assert!(
            at[0] - start < RESCAN,
            "first attempt at once: {:?}",
            at[0] - start
        );
        // base 1 s doubling to 8 s, ±25 % jitter; an attempt waits for the next rescan
        let mut backoff = Duration::from_secs(1);
        for (i, pair) in at.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= backoff.mul_f64(0.75) && gap <= backoff.mul_f64(1.25) + RESCAN,
                "gap {i} is {gap:?}, backoff {backoff:?}"
            );
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
        // 1 + 2 + 4 + 8 s, then every 8 s ± 25 %: 9 to 12 attempts in a minute
        assert!((9..=12).contains(&at.len()), "{} attempts", at.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_session_resets_the_backoff() {
        // each session lasts STABLE_SESSION and ends cleanly: redialled at the next rescan,
        // never after a backoff
        let at = attempts(STABLE_SESSION, Ok(STABLE_SESSION), Duration::from_secs(60)).await;
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= STABLE_SESSION && gap <= STABLE_SESSION + RESCAN,
                "redialled after {gap:?}"
            );
        }
        assert!(at.len() >= 10, "{} sessions", at.len());
    }

    #[tokio::test(start_paused = true)]
    async fn short_sessions_count_as_failures() {
        // a session that ends after a second backs off like a failed dial
        let at = attempts(
            Duration::from_secs(1),
            Ok(Duration::from_secs(1)),
            Duration::from_secs(40),
        )
        .await;
        let gaps: Vec<Duration> = at.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.len() >= 3, "{gaps:?}");
        // session (1 s) + backoff 1 s, 2 s, 4 s, each ±25 % and up to a rescan late
        for (gap, backoff) in gaps.iter().zip([1u64, 2, 4]) {
            let backoff = Duration::from_secs(backoff);
            let least = Duration::from_secs(1) + backoff.mul_f64(0.75);
            let most = Duration::from_secs(1) + backoff.mul_f64(1.25) + RESCAN;
            assert!(*gap >= least && *gap <= most, "{gaps:?}");
        }
    }
}
