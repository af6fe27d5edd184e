//! The audit trail and certificate transparency across gateways started in-process: entries
//! appended on ingest at every gateway and for local actions, digests that agree, cert records
//! published and listed, and unpublished gateway leaves refused when required.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::*;
use fedgw_gateway::config::Admission;
use fedgw_gateway::store::AuditEntry;
use fedgw_proto::v1 as pb;

async fn trail(g: &Gw, kind: &str) -> Vec<AuditEntry> {
    g.admin()
        .await
        .list_audit(pb::ListAuditRequest {
            kind: kind.into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries_json
        .iter()
        .map(|j| serde_json::from_str(j).expect("entry"))
        .collect()
}

/// The entries of `kind` once there are `n` of them: a gateway applies a record to its view
/// just before the store transaction that appends its entry commits.
async fn trail_of(g: &Gw, kind: &str, n: usize) -> Vec<AuditEntry> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let entries = trail(g, kind).await;
        if entries.len() >= n || std::time::Instant::now() >= deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn certs(g: &Gw) -> Vec<(String, pb::CertRecord)> {
    g.admin()
        .await
        .list_certs(pb::ListCertsRequest::default())
        .await
        .expect("certs")
        .into_inner()
        .certs
        .into_iter()
        .map(|c| (c.org, c.cert.expect("record")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_audits_what_it_accepts_and_lists_the_published_leaves() {
    let mut fed = Fed::with_orgs(2).await;
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("node1", 2, "10.2.0.1")),
        })
        .await
        .expect("add");
    fed.converged().await;
    // each gateway published its own leaf; both records reach both gateways
    for g in &fed.gws {
        wait_for("both leaves published", || {
            g.run().membership.read(|v| v.certs().len()) == 2
        })
        .await;
    }
    fed.converged().await;
    for g in &fed.gws {
        let nodes = trail_of(g, "node", 1).await;
        assert_eq!(nodes.len(), 1, "at {}", g.org);
        assert_eq!(
            (
                nodes[0].org.as_str(),
                nodes[0].subject.as_str(),
                nodes[0].signer.as_str()
            ),
            ("org2", "node1", "org2")
        );
        let listed = certs(g).await;
        let orgs: Vec<_> = listed.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(orgs, ["org1", "org2"], "at {}", g.org);
        assert!(
            listed[1].1.sans.contains(&format!("gw-dc1.org2.{DOMAIN}")),
            "{:?}",
            listed[1].1.sans
        );
        assert_eq!(trail_of(g, "cert", 2).await.len(), 2, "at {}", g.org);
    }
    // the inviter also recorded its own actions
    let invites = trail_of(&fed.gws[0], "invite.", 2).await;
    let kinds: Vec<_> = invites.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["invite.used", "invite.created"]);
    assert!(
        invites
            .iter()
            .all(|e| e.org == "org2" && e.signer == "local")
    );

    // both gateways hold the same records: their digests agree, over the admin socket and over
    // the federation API (mutual TLS, as `fedgw audit --compare` asks)
    let local = fed.gws[0]
        .admin()
        .await
        .audit_digest(pb::AuditDigestRequest {})
        .await
        .expect("digest")
        .into_inner();
    let (_, config) =
        fedgw_gateway::provision::federation_client_config(&fed.gws[0].dir, None).expect("tls");
    let endpoint = fed.gws[1].run().info.gateway.to_string();
    let (peer, remote) = fedgw_gateway::federation::audit_digest(&endpoint, config, DOMAIN, WAIT)
        .await
        .expect("remote digest");
    assert_eq!(peer.org, "org2");
    assert_eq!(local.digest, remote.digest);
    assert_eq!(local.count, remote.count);
    assert!(remote.complete);
    fed.stop_all().await;
}

/// Dials `endpoint` (org1's gateway) with an org2 gateway leaf issued `age` ago and never
/// published, and says Hello.
async fn hello_with_unpublished_leaf(
    fed: &Fed,
    age: Duration,
) -> Result<(), fedgw_gateway::federation::HelloError> {
    use fedgw_certs::tls;
    let loaded = fedgw_gateway::provision::load(&fed.gws[1].dir).expect("load org2");
    let provider = tls::provider();
    let leaf = loaded
        .org_ca
        .issue_gateway_leaf(
            "dc9",
            "org2",
            DOMAIN,
            Duration::from_secs(86_400),
            SystemTime::now() - age,
        )
        .expect("leaf");
    let identity = tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &provider).expect("id");
    let verifier = fedgw_certs::PeerVerifier::new(
        loaded.root_cert.clone(),
        DOMAIN,
        fedgw_certs::RevocationSet::default(),
        &provider,
    )
    .expect("verifier")
    .any_server_name();
    let config =
        tls::federation_client_config(&identity, Arc::new(verifier), provider).expect("config");
    let endpoint = fed.gws[0].run().info.gateway.to_string();
    fedgw_gateway::federation::hello(&endpoint, Arc::new(config), DOMAIN, "dc9", WAIT)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublished_gateway_leaf_is_refused_only_when_required() {
    // required: a member that joins publishes its leaf within the grace period and syncs
    let mut fed = Fed::found_with(Admission::Operator, |c| {
        c.federation.require_issued_certs_after_s = 600;
    })
    .await;
    fed.add("org2", false, |_| {}).await;
    fed.converged().await;
    wait_for("org2's leaf published at org1", || {
        fed.gws[0]
            .run()
            .membership
            .read(|v| v.certs().iter().any(|(o, _)| o == "org2"))
    })
    .await;
    // a fresh unpublished leaf is still within the grace period
    hello_with_unpublished_leaf(&fed, Duration::ZERO)
        .await
        .expect("within the grace period");
    // an unpublished leaf issued an hour ago is refused at the handshake
    let refused = hello_with_unpublished_leaf(&fed, Duration::from_secs(3600)).await;
    assert!(refused.is_err(), "an unpublished leaf was accepted");
    fed.stop_all().await;

    // off (the default): the same leaf is accepted
    let mut fed = Fed::with_orgs(2).await;
    hello_with_unpublished_leaf(&fed, Duration::from_secs(3600))
        .await
        .expect("accepted with the check off");
    fed.stop_all().await;
}
