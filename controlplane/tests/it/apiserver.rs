//! Opt-in: the scenario of `support/scenario.rs` (register, Service and ConfigMap, a steady
//! state without writes, status transitions, a duplicate name, both targets refused by the
//! CRD's rule, delete, restart, two replicas and a leader kill) against a real API server.
//!
//! Set `FEDGW_TEST_KUBECONFIG` to a kubeconfig whose user may create namespaces, CRDs and
//! everything the controller's Role allows (e.g. the admin of a kube-apiserver and etcd on
//! loopback; no scheduler or kubelet is needed: pods stay Pending). The test applies the CRD
//! (`deploy/k8s/crd/crd.yaml`), works in a fresh namespace `fedgw-it-<pid>` and deletes it at
//! the end; it creates the namespace's `default` ServiceAccount itself (a bare kube-apiserver has
//! no controller manager to do so). Without the variable the test passes at once and says it
//! was skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedgw_controlplane::k8s::crd::ConsortiumNode;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, CustomResourceExt};

use crate::support::scenario;

const ENV: &str = "FEDGW_TEST_KUBECONFIG";

/// A client of the configured server, and the writes it sent (method, path).
async fn counting_client(path: &str) -> (kube::Client, Arc<Mutex<Vec<(String, String)>>>) {
    let kubeconfig = Kubeconfig::read_from(path).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a kubeconfig for a reachable server");
    let writes = Arc::new(Mutex::new(Vec::new()));
    let seen = writes.clone();
    let count = tower::layer::layer_fn(move |svc| {
        let seen = seen.clone();
        tower::util::MapRequest::new(svc, move |req: http::Request<kube::client::Body>| {
            if req.method() != http::Method::GET {
                seen.lock()
                    .expect("lock")
                    .push((req.method().to_string(), req.uri().path().to_owned()));
            }
            req
        })
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .expect("a client stack")
        .with_layer(&count)
        .build();
    (client, writes)
}

async fn apply_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ConsortiumNode::crd();
    let name = crd.metadata.name.clone().expect("name");
    crds.patch(
        &name,
        &PatchParams::apply("fedgw-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    scenario::eventually("the CRD is established", || async {
        let crd = crds.get(&name).await.expect("get the CRD");
        crd.status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_api_server() {
    let Ok(path) = std::env::var(ENV) else {
        eprintln!("skipped: set {ENV} to a kubeconfig to run against a real API server");
        return;
    };
    let (client, writes) = counting_client(&path).await;
    apply_crd(&client).await;
    let ns = format!("fedgw-it-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    }))
    .expect("a Namespace");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the namespace");
    // without kube-controller-manager nobody creates the namespace's default ServiceAccount,
    // and the ServiceAccount admission plugin refuses the scenario's pods without it
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}
    }))
    .expect("a ServiceAccount");
    match Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &account)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create the default ServiceAccount: {e}"),
    }

    let counted = writes.clone();
    let site = scenario::Site::new(
        client.clone(),
        &ns,
        Arc::new(move || counted.lock().expect("lock").clone()),
        true,
    );
    // the namespace goes whatever the outcome
    let outcome = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::spawn(async move { scenario::lifecycle(&site).await }),
    )
    .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the scenario did not finish within 600 s"),
    }
}
