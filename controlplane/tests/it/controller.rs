//! The whole controller (`run`, its watches, Lease and probes) against the stateful fake API
//! server and a fake gateway on a Unix socket: the scenario of `support/scenario.rs`, which
//! the `apiserver` module runs against a real kube-apiserver.

use std::sync::Arc;

use crate::support::{fake_api, scenario};

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
