//! The controller process: watches, gateway polling, leader election and reconciling, in one
//! loop. Every replica watches and keeps its index current; only the leader writes.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::crd::ConsortiumNode;
use super::gateway::AdminGateway;
use super::health::Health;
use super::index::{Index, NODEKEY_LABEL, Settings};
use super::lease::Elector;
use super::reconcile::{Outcome, Reconciler};

/// Settings of `fedgw-controlplane run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// What the index needs: namespace, ConfigMap name, gateway pod labels.
    pub settings: Settings,
    /// The gateway's admin socket (`DIR/admin.sock` on the shared volume).
    pub admin_socket: PathBuf,
    /// The Lease's name.
    pub lease: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// The Lease duration.
    pub lease_duration: Duration,
    /// How often the gateway's node list is read besides on its change notifications.
    pub poll: Duration,
    /// How often refused nodes are tried again.
    pub retry: Duration,
    /// The probe state the loop beats and latches ready.
    pub health: Health,
}

/// How long a leader that shuts down spends releasing the Lease and its pod's label.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors that end the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A watch stream ended (it never should: watchers retry with backoff).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

fn log_watch_error(what: &str, e: &watcher::Error) {
    warn!(watch = what, error = %e, "watch failed; retrying");
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ns = cfg.settings.namespace.clone();
    let wc = watcher::Config::default();
    let mut nodes = Box::pin(
        watcher(
            Api::<ConsortiumNode>::namespaced(client.clone(), &ns),
            wc.clone(),
        )
        .default_backoff(),
    );
    let mut services = Box::pin(
        watcher(Api::<Service>::namespaced(client.clone(), &ns), wc.clone()).default_backoff(),
    );
    let mut secrets = Box::pin(
        watcher(
            Api::<Secret>::namespaced(client.clone(), &ns),
            wc.clone().labels(&format!("{NODEKEY_LABEL}=true")),
        )
        .default_backoff(),
    );
    let mut config_maps = Box::pin(
        watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &ns),
            wc.clone()
                .fields(&format!("metadata.name={}", cfg.settings.config_map)),
        )
        .default_backoff(),
    );
    // the Lease itself: a follower sees a released or expired Lease at once
    let mut leases = Box::pin(
        watcher(
            Api::<Lease>::namespaced(client.clone(), &ns),
            wc.fields(&format!("metadata.name={}", cfg.lease)),
        )
        .default_backoff()
        .applied_objects(),
    );

    let mut index = Index::new(cfg.settings.clone());
    let admin = AdminGateway::lazy(&cfg.admin_socket);
    let mut reconciler = Reconciler::new(client.clone(), &ns, admin.clone());
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut elector = Elector::new(
        Api::<Lease>::namespaced(client, &ns),
        &cfg.lease,
        &cfg.identity,
        cfg.lease_duration,
    );
    let mut lease_tick = tokio::time::interval(elector.interval());
    let mut poll = tokio::time::interval(cfg.poll);
    let mut retry = tokio::time::interval(cfg.retry);
    for t in [&mut lease_tick, &mut poll, &mut retry] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // view changes at the gateway, as they happen (re-opened on the next poll if it ends)
    let mut changes: Option<tonic::Streaming<fedgw_proto::v1::StatusResponse>> = None;
    let mut was_leader = false;

    loop {
        cfg.health.beat();
        tokio::select! {
            _ = shutdown.cancelled() => {
                if elector.is_leader() || was_leader {
                    step_down(&mut elector, &pods, &cfg.identity).await;
                }
                return Ok(());
            }
            e = nodes.next() => match e {
                Some(Ok(e)) => index.nodes.event(e),
                Some(Err(e)) => log_watch_error("consortiumnodes", &e),
                None => return Err(RunError::WatchEnded("consortiumnodes")),
            },
            e = services.next() => match e {
                Some(Ok(e)) => index.services.event(e),
                Some(Err(e)) => log_watch_error("services", &e),
                None => return Err(RunError::WatchEnded("services")),
            },
            e = secrets.next() => match e {
                Some(Ok(e)) => index.secrets.event(e),
                Some(Err(e)) => log_watch_error("secrets", &e),
                None => return Err(RunError::WatchEnded("secrets")),
            },
            e = config_maps.next() => match e {
                Some(Ok(e)) => index.config_maps.event(e),
                Some(Err(e)) => log_watch_error("configmaps", &e),
                None => return Err(RunError::WatchEnded("configmaps")),
            },
            e = leases.next() => match e {
                Some(Ok(lease)) if !elector.is_leader() && elector.may_take(&lease) => {
                    lease_tick.reset_immediately();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => log_watch_error("leases", &e),
                None => return Err(RunError::WatchEnded("leases")),
            },
            _ = lease_tick.tick() => {
                if let Err(e) = elector.tick().await {
                    warn!(error = %e, "lease update failed; not writing");
                }
                let leader = elector.is_leader();
                if leader != was_leader {
                    info!(leader, "leadership changed");
                }
                // the leader keeps its pod the only one remote nodes' Services select
                if (leader || leader != was_leader)
                    && let Err(e) = super::leader::mark(&pods, &cfg.identity, leader).await
                {
                    warn!(error = %e, "cannot label the leader's gateway pod");
                }
                was_leader = leader;
            }
            _ = retry.tick() => index.clear_failures(),
            _ = poll.tick() => {
                if changes.is_none() {
                    changes = admin.clone().watch().await.ok();
                }
                if let Err(e) = reconciler.refresh(&mut index).await {
                    debug!(error = %e, "gateway not reachable");
                }
            }
            m = next_change(&mut changes), if changes.is_some() => match m {
                Ok(Some(_)) => {
                    if let Err(e) = reconciler.refresh(&mut index).await {
                        debug!(error = %e, "gateway not reachable");
                    }
                }
                // the gateway restarted: the next poll opens the stream again
                Ok(None) | Err(_) => changes = None,
            },
        }
        match reconciler
            .reconcile(&mut index, || elector.is_leader())
            .await
        {
            Ok(Outcome::NotReady) => {}
            Ok(Outcome::Done | Outcome::NotLeader) => cfg.health.set_ready(),
            Ok(Outcome::Pending) => {
                cfg.health.set_ready();
                debug!("reconcile left work for the next event");
            }
            Err(e) => warn!(error = %e, "reconcile failed; retrying on the next event"),
        }
    }
}

/// A leader's last act: release the Lease, then take the leader label off its pod, so a
/// follower leads (and its pod carries outbound traffic) at once. Bounded by
/// [`RELEASE_TIMEOUT`]; failures are logged, and the Lease then expires as usual.
async fn step_down(elector: &mut Elector, pods: &Api<Pod>, identity: &str) {
    let release = async {
        if let Err(e) = elector.release().await {
            warn!(error = %e, "cannot release the lease; it expires instead");
        }
        if let Err(e) = super::leader::mark(pods, identity, false).await {
            warn!(error = %e, "cannot take the leader label off this pod");
        }
    };
    match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
        Ok(()) => info!("leadership released"),
        Err(_) => warn!("releasing leadership timed out; the lease expires instead"),
    }
}

async fn next_change(
    s: &mut Option<tonic::Streaming<fedgw_proto::v1::StatusResponse>>,
) -> Result<Option<fedgw_proto::v1::StatusResponse>, tonic::Status> {
    match s {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}
