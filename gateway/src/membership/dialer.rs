//! Keeps a sync stream up with every gateway this one should reach
//! ([`super::Membership::dial_targets`]). A target without a live stream (in either direction)
//! is dialled; failures back off exponentially with ±25 % jitter, and a session that stayed up
//! for a while resets the backoff. A gateway marked outbound-only is never dialled: it dials
//! out, and the stream it opens is used both ways. Of a pair that can dial each other, the
//! higher `org/site` waits [`HIGHER_ID_GRACE`] for the lower to dial first (the lower's stream
//! is the one both ends keep).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedgw_certs::tls::{self, ReloadableIdentity};
use fedgw_certs::{PeerVerifier, RevocationSet};
use fedgw_proto::v1 as pb;
use tokio::sync::mpsc;
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
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}

/// Runs until the membership's shutdown token is cancelled.
pub async fn run(m: Membership, tls: DialerTls) {
    let cfg = m.config().clone();
    let shutdown = m.0.shutdown.clone();
    let mut changed = m.subscribe();
    let (done_tx, mut done_rx) = mpsc::channel::<(String, Result<Duration, String>)>(64);
    let mut targets: HashMap<String, Target> = HashMap::new();
    loop {
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
                }
            });
            if t.in_flight || now < t.next_attempt {
                continue;
            }
            t.in_flight = true;
            m.set_dial_status(
                &key,
                Some(DialStatus {
                    state: "connecting",
                    last_error: String::new(),
                }),
            );
            let (m2, tls2, done) = (m.clone(), tls.clone(), done_tx.clone());
            m.0.tracker.spawn(async move {
                let started = Instant::now();
                let result = dial_and_run(&m2, &tls2, &id, &endpoints)
                    .await
                    .map(|()| started.elapsed());
                let _ = done.send((id.to_string(), result)).await;
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.changed() => {}
            _ = tokio::time::sleep(RESCAN) => {}
            Some((id, result)) = done_rx.recv() => {
                if let Some(t) = targets.get_mut(&id) {
                    t.in_flight = false;
                    match result {
                        Ok(lasted) if lasted >= STABLE_SESSION => {
                            t.backoff = cfg.backoff_base;
                            t.next_attempt = Instant::now();
                            m.set_dial_status(&id, None);
                        }
                        other => {
                            let error = other.err().unwrap_or_else(|| "session ended quickly".into());
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
) -> Result<(), String> {
    let config = tls.config_for(&id.org).map_err(|e| e.to_string())?;
    let mut last_error = "no endpoints".to_owned();
    for endpoint in endpoints {
        let stream = match net::dial_tls(endpoint, config.clone(), DIAL_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                last_error = format!("{e}: {}", crate::join::client::error_chain(&e));
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
            // a different gateway answers at this address: talk to it anyway, it is a member
            debug!(expected = %id, actual = %peer, "endpoint serves another gateway");
        }
        let channel = net::single_use_channel(stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut client = pb::federation_client::FederationClient::new(channel)
            .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(sync::QUEUE);
        let response = tokio::time::timeout(DIAL_TIMEOUT, client.sync(ReceiverStream::new(rx)))
            .await
            .map_err(|_| "sync call timed out".to_owned())?
            .map_err(|s| format!("sync refused: {}", s.message()))?;
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
            SessionEnd::Closed | SessionEnd::Terminated(_) => Ok(()),
            SessionEnd::Duplicate => Ok(()),
            other => Err(other.to_string()),
        };
    }
    Err(last_error)
}
