//! The whole controller (`run`, its watches, Lease and probes) against the stateful fake API
//! server and a fake gateway on a Unix socket: the scenario of `support/scenario.rs`, which
//! tests/apiserver.rs runs against a real kube-apiserver.

#[allow(dead_code)]
#[path = "support/fake_api.rs"]
mod fake_api;
#[path = "support/fake_gateway.rs"]
mod fake_gateway;
#[path = "support/scenario.rs"]
mod scenario;

use std::sync::Arc;

#[tokio::test]
async fn the_controller_registers_settles_and_hands_over() {
    let api = fake_api::FakeApi::new();
    let counted = api.clone();
    let site = scenario::Site::new(
        api.client("org1"),
        "org1",
        Arc::new(move || counted.writes()),
        false,
    );
    scenario::lifecycle(&site).await;
}
