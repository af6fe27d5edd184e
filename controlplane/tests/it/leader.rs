//! Leader election and hand-over against the stateful fake API server: a released Lease is
//! taken at once, and of two running controllers, the leader's shutdown moves the Lease and
//! the leader label to the other well within the lease duration.

use std::collections::BTreeMap;
use std::time::Duration;

use fedgw_controlplane::k8s::health::Health;
use fedgw_controlplane::k8s::index::Settings;
use fedgw_controlplane::k8s::leader::LEADER_LABEL;
use fedgw_controlplane::k8s::lease::Elector;
use fedgw_controlplane::k8s::run::{RunConfig, run};
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::fake_api;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/org1/leases";
const PODS: &str = "/api/v1/namespaces/org1/pods";
const LEASE: &str = "fedgw-controlplane";
/// Renewed (and ticked by followers) every 10 s.
const DURATION: Duration = Duration::from_secs(30);

fn holder(api: &fake_api::FakeApi) -> Option<String> {
    api.get(LEASES, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn labelled(api: &fake_api::FakeApi) -> Vec<String> {
    api.list(PODS)
        .iter()
        .filter(|p| p["metadata"]["labels"][LEADER_LABEL] == "true")
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `cond` every 20 ms until it holds, for at most `bound`; returns how long it took.
async fn within(bound: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let api = fake_api::FakeApi::new();
    let mut a = Elector::new(
        kube::Api::<Lease>::namespaced(api.client("org1"), "org1"),
        LEASE,
        "gw-a",
        DURATION,
    );
    let mut b = Elector::new(
        kube::Api::<Lease>::namespaced(api.client("org1"), "org1"),
        LEASE,
        "gw-b",
        DURATION,
    );
    assert!(a.tick().await.expect("a"));
    assert!(!b.tick().await.expect("b"), "a holds it");
    a.release().await.expect("release");
    assert!(!a.is_leader());
    assert_eq!(holder(&api), None);
    let released = api.get(LEASES, LEASE).expect("lease");
    let lease: Lease = serde_json::from_value(released).expect("a Lease");
    assert!(b.may_take(&lease), "a follower sees it free");
    assert!(
        b.tick().await.expect("b"),
        "taken without waiting for expiry"
    );
    assert_eq!(holder(&api).as_deref(), Some("gw-b"));

    // a former holder releasing late leaves the new holder alone
    a.release().await.expect("release");
    assert_eq!(holder(&api).as_deref(), Some("gw-b"));
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "org1",
                        "labels": {"app.kubernetes.io/name": "fedgw"}}})
}

fn config(identity: &str, dir: &std::path::Path) -> RunConfig {
    RunConfig {
        settings: Settings {
            namespace: "org1".into(),
            config_map: "fedgw-peers".into(),
            gateway_selector: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "fedgw".into()),
                (LEADER_LABEL.into(), "true".into()),
            ]),
            cluster_domain: "cluster.local".into(),
        },
        // no gateway answers: the election runs all the same
        admin_socket: dir.join(format!("{identity}.sock")),
        lease: LEASE.into(),
        identity: identity.into(),
        lease_duration: DURATION,
        poll: Duration::from_secs(1),
        retry: Duration::from_secs(60),
        health: Health::new(Duration::from_secs(60)),
    }
}

#[tokio::test]
async fn a_leader_shutting_down_hands_over_well_within_the_lease_duration() {
    let api = fake_api::FakeApi::new();
    api.seed(PODS, pod("gw-a"));
    api.seed(PODS, pod("gw-b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(run(
        api.client("org1"),
        config("gw-a", dir.path()),
        stop_a.clone(),
    ));
    // b starts once a leads, as in a rolling update
    within(Duration::from_secs(20), "gw-a leads", || {
        holder(&api).as_deref() == Some("gw-a") && labelled(&api) == ["gw-a"]
    })
    .await;
    let lease_reads = || {
        api.requests()
            .iter()
            .filter(|(m, p)| m == "GET" && *p == format!("{LEASES}/{LEASE}"))
            .count()
    };
    let before = lease_reads();
    let b = tokio::spawn(run(
        api.client("org1"),
        config("gw-b", dir.path()),
        stop_b.clone(),
    ));
    // b's first tick has found the Lease held (a's next renewal is 10 s away)
    within(Duration::from_secs(20), "gw-b reads the Lease", || {
        lease_reads() > before
    })
    .await;
    assert_eq!(holder(&api).as_deref(), Some("gw-a"));

    // SIGTERM to the leader: it releases the Lease and its label; b takes both at once
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("a stops")
        .expect("task")
        .expect("run");
    assert!(!labelled(&api).contains(&"gw-a".to_owned()), "label off a");
    // without the release, b would wait for expiry (at least 20 s); without its watch of the
    // Lease, for its next tick (10 s after its first); with both, it takes over at once
    let took = within(Duration::from_secs(5), "gw-b takes over", || {
        holder(&api).as_deref() == Some("gw-b") && labelled(&api) == ["gw-b"]
    })
    .await;
    eprintln!("hand-over took {took:?}");

    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("b stops")
        .expect("task")
        .expect("run");
    assert_eq!(holder(&api), None, "released again");
    assert!(labelled(&api).is_empty());
}
