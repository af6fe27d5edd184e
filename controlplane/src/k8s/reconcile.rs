//! Carries out an [`index::Plan`](super::index::Plan): gateway calls first (then the gateway's
//! view is read again), then Kubernetes writes, each fed back into the index so the next plan
//! sees it; repeated until the plan is empty. Gateway calls go to the gateway in this pod, so
//! every replica makes them; Kubernetes writes are made only while this replica leads.
//!
//! Kubernetes writes: Services and the ConfigMap by server-side apply (field manager
//! `fedgw-controlplane`, forced: the controller owns those fields), deletions of owned Services,
//! and `ConsortiumNode` statuses by a JSON merge patch (RFC 7386) of the `status` subresource
//! that names every field, `null` for the absent ones. Each write is planned only when what the
//! API server returned last differs from what is wanted, so a steady state writes nothing.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use super::crd::ConsortiumNode;
use super::gateway::Gateway;
use super::index::{GatewayCall, Index};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "fedgw-controlplane";
/// Plans carried out per [`Reconciler::reconcile`] before giving up until the next event.
const MAX_ROUNDS: usize = 8;

/// Errors from one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Kubernetes request failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Reading the gateway's view failed.
    #[error("gateway: {0}")]
    Gateway(#[source] tonic::Status),
}

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This replica does not lead: nothing was written to Kubernetes.
    NotLeader,
    /// An input has not finished its first list: nothing was written.
    NotReady,
    /// Everything observed is as wanted.
    Done,
    /// Still something to do after the round limit (e.g. a write the next event will confirm).
    Pending,
}

/// Writes plans through a Kubernetes client and a gateway.
#[derive(Debug)]
pub struct Reconciler<G> {
    services: Api<Service>,
    config_maps: Api<ConfigMap>,
    nodes: Api<ConsortiumNode>,
    gateway: G,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl<G: Gateway> Reconciler<G> {
    /// A reconciler writing in `namespace` through `client`, calling `gateway`.
    pub fn new(client: Client, namespace: &str, gateway: G) -> Self {
        Self {
            services: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client.clone(), namespace),
            nodes: Api::namespaced(client, namespace),
            gateway,
        }
    }

    /// The gateway.
    pub fn gateway_mut(&mut self) -> &mut G {
        &mut self.gateway
    }

    /// Reads the gateway's view into `index`.
    pub async fn refresh(&mut self, index: &mut Index) -> Result<(), ReconcileError> {
        let view = self.gateway.view().await.map_err(ReconcileError::Gateway)?;
        if index.gateway() != Some(&view) {
            index.set_gateway(view);
        }
        Ok(())
    }

    /// Plans and writes until nothing is left to do (at most a few rounds). `leader` is asked
    /// before every round of Kubernetes writes, so losing the Lease stops them between rounds.
    pub async fn reconcile(
        &mut self,
        index: &mut Index,
        leader: impl Fn() -> bool,
    ) -> Result<Outcome, ReconcileError> {
        for _ in 0..MAX_ROUNDS {
            let Some(plan) = index.plan(&now()) else {
                return Ok(Outcome::NotReady);
            };
            if plan.is_empty() {
                return Ok(Outcome::Done);
            }
            // the gateway in this pod keeps its own local state (real addresses, Service
            // addresses): every replica brings its own gateway in line
            if !plan.gateway.is_empty() {
                for call in &plan.gateway {
                    match self.gateway.call(call).await {
                        Ok(()) => info!(call = ?Brief(call), "gateway updated"),
                        Err(s) => match call {
                            // a refusal about the node itself: shown in its status
                            GatewayCall::AddNode(spec)
                                if matches!(
                                    s.code(),
                                    tonic::Code::InvalidArgument
                                        | tonic::Code::AlreadyExists
                                        | tonic::Code::FailedPrecondition
                                ) =>
                            {
                                warn!(node = %spec.name, error = %s.message(), "gateway refused a node");
                                index.record_failure((**spec).clone(), s.message().to_owned());
                            }
                            _ => return Err(ReconcileError::Gateway(s)),
                        },
                    }
                }
                self.refresh(index).await?;
                continue;
            }
            if !leader() {
                return Ok(Outcome::NotLeader);
            }
            for svc in &plan.apply_services {
                let name = svc.name_any();
                let applied = self
                    .services
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(svc),
                    )
                    .await?;
                debug!(service = %name, "service applied");
                index.services.apply(applied);
            }
            for name in &plan.delete_services {
                match self.services.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                debug!(service = %name, "service deleted");
                index.services.delete(name);
            }
            if let Some(cm) = &plan.config_map {
                let name = cm.name_any();
                let applied = self
                    .config_maps
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(cm),
                    )
                    .await?;
                info!(config_map = %name, "rendered files updated");
                index.config_maps.apply(applied);
            }
            for (name, status) in &plan.statuses {
                // the whole status, absent fields as null: what is left out of a merge patch
                // stays on the server
                let patch = status.merge_patch();
                match self
                    .nodes
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(patched) => index.nodes.apply(patched),
                    // deleted meanwhile: its watch event follows
                    Err(kube::Error::Api(s)) if s.code == 404 => index.nodes.delete(name),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(Outcome::Pending)
    }
}

/// A gateway call for logs: names, no keys.
struct Brief<'a>(&'a GatewayCall);

impl std::fmt::Debug for Brief<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            GatewayCall::AddNode(s) => write!(f, "AddNode({})", s.name),
            GatewayCall::RemoveNode(n) => write!(f, "RemoveNode({n})"),
            GatewayCall::SetServiceAddress { org, name, ip } => {
                write!(f, "SetServiceAddress({org}/{name}, {ip:?})")
            }
        }
    }
}
