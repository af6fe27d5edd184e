//! Which gateway pod carries outbound traffic: the one whose controller holds the Lease.
//!
//! Each gateway replica allocates remote nodes' ports in its own store, so two replicas may
//! listen on different ports for the same node. The remote nodes' Services are written by the
//! leader from its own gateway's allocation, and they select only the pod labelled
//! [`LEADER_LABEL`]` = true`: the leader's pod. The leader labels its own pod on every Lease
//! tick and takes the label off any other pod (a former leader that lost the Lease); a replica
//! that loses the Lease takes the label off its own pod. Inbound tunnel traffic still reaches
//! either replica.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

/// The pod label that marks the leader's gateway pod; remote nodes' Services select it.
pub const LEADER_LABEL: &str = "fedgw.io/leader";

fn has_label(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LEADER_LABEL))
        .is_some_and(|v| v == "true")
}

async fn set_label(pods: &Api<Pod>, name: &str, on: bool) -> Result<(), kube::Error> {
    let value = if on { json!("true") } else { json!(null) };
    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { LEADER_LABEL: value } } })),
    )
    .await
    .map(|_| ())
}

/// Brings the leader label in line with `leader` for this replica's pod `me`: as leader, on
/// `me` and on no other pod; otherwise off `me`. Only pods whose label is wrong are patched.
pub async fn mark(pods: &Api<Pod>, me: &str, leader: bool) -> Result<(), kube::Error> {
    if !leader {
        let mine = pods.get_opt(me).await?;
        if mine.as_ref().is_some_and(has_label) {
            set_label(pods, me, false).await?;
        }
        return Ok(());
    }
    let labelled = pods
        .list(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
        .await?;
    let mut mine = false;
    for pod in &labelled.items {
        match pod.metadata.name.as_deref() {
            Some(name) if name == me => mine = true,
            Some(name) => set_label(pods, name, false).await?,
            None => {}
        }
    }
    if !mine {
        set_label(pods, me, true).await?;
    }
    Ok(())
}
