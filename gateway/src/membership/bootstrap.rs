//! Filling a view from peers: a gateway whose store holds no member record for its own org
//! (a new Kubernetes pod, whose Secret carries keys and config but no store, or a store
//! rebuilt after damage) fetches the records from the gateways it knows (`[[peers]]` in
//! `fedgw.toml`, and any gateway records it still holds). Every record is verified as on any
//! sync stream (signed by the root or a root-signed org CA), so a peer can withhold records
//! but not forge them. The gateway publishes its own records only after this.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Membership;

/// How often the wait logs which peers it is still trying.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The view holds this org's member record.
    Member,
    /// That, and a peer's heartbeat carried this gateway's view digest: the view holds what
    /// that peer holds.
    CaughtUp,
}

/// Why the view could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No gateway is known to fetch the membership from.
    #[error(
        "the store holds no membership for org {org:?} and no peer gateway is known to fetch it \
         from (list them under [[peers]] in fedgw.toml: `fedgw export k8s` writes them)"
    )]
    NoPeers {
        /// This org.
        org: String,
    },
    /// The records received say this org is revoked.
    #[error("org {0:?} is revoked")]
    Revoked(String),
    /// The deadline passed first.
    #[error("no peer supplied the membership within {waited:?} (last errors: {errors})")]
    TimedOut {
        /// How long was waited.
        waited: Duration,
        /// The dialer's last error per peer, `org/site: error`, joined by `; `.
        errors: String,
    },
    /// Shutdown was requested first.
    #[error("shut down while waiting for the membership")]
    Cancelled,
}

/// Whether the view lacks this gateway's own member record.
pub fn needed(m: &Membership) -> bool {
    let me = m.me().org.clone();
    m.read(|v| !v.is_member(&me))
}

/// Waits (with the dialer running) until `until` holds, the deadline passes, or shutdown.
/// Logs the peers being tried every [`REPORT_EVERY`].
pub async fn wait(
    m: &Membership,
    until: Until,
    deadline: Option<Duration>,
) -> Result<(), BootstrapError> {
    let org = m.me().org.clone();
    if m.dial_targets().is_empty() {
        return Err(BootstrapError::NoPeers { org });
    }
    let started = Instant::now();
    let mut changed = m.subscribe();
    let mut report = tokio::time::interval_at(started + REPORT_EVERY, REPORT_EVERY);
    // heartbeats are what tell "in sync"; look again at each interval
    let mut poll = tokio::time::interval(m.config().heartbeat.min(Duration::from_millis(250)));
    let shutdown = m.0.shutdown.clone();
    loop {
        let (member, revoked) = m.read(|v| (v.is_member(&org), v.revoked().contains(&org)));
        if revoked {
            return Err(BootstrapError::Revoked(org));
        }
        if member && (until == Until::Member || !m.peers_in_sync().is_empty()) {
            info!(
                records = m.read(super::view::View::len),
                "membership fetched from peers"
            );
            return Ok(());
        }
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(started + d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Err(BootstrapError::Cancelled),
            () = timeout => {
                return Err(BootstrapError::TimedOut {
                    waited: started.elapsed(),
                    errors: last_errors(m),
                });
            }
            _ = changed.changed() => {}
            _ = poll.tick() => {}
            _ = report.tick() => {
                warn!(
                    org = %org,
                    peers = %last_errors(m),
                    "still waiting for a peer to supply the membership"
                );
            }
        }
    }
}

fn last_errors(m: &Membership) -> String {
    let reports = m.peer_reports();
    if reports.is_empty() {
        return "no dial finished yet".into();
    }
    reports
        .iter()
        .map(|p| {
            let why = if p.last_error.is_empty() {
                p.state
            } else {
                p.last_error.as_str()
            };
            format!("{}: {why}", p.id)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
