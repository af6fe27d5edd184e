use std::sync::Arc;

use super::*;
use crate::membership::test_pki::{DOMAIN, Pki, membership};
use crate::store::audit::{AuditFilter, audit_entries};

fn verifier(pki: &Pki) -> SignerVerifier {
    SignerVerifier::new(pki.root.cert().to_vec(), DOMAIN).expect("verifier")
}

#[tokio::test]
async fn every_gateway_appends_what_it_ingests_and_the_trails_agree() {
    let pki = Pki::new(&["org1", "org2"]);
    let d = tempfile::tempdir().expect("tempdir");
    let g1 = membership(&pki, "org1", d.path(), |_| {});
    let g2 = membership(&pki, "org2", d.path(), |_| {});
    let records = vec![
        pki.member("org1", 1),
        pki.member("org2", 1),
        pki.node("org1", "org1", "n1", 2, 1),
        pki.node("org2", "org2", "n2", 2, 2),
    ];
    let r1 = g1.ingest(records.clone(), None).await.expect("ingest 1");
    assert_eq!(r1.accepted, 4);
    // the other gateway receives them in another order and in two batches
    let mut reversed = records.clone();
    reversed.reverse();
    g2.ingest(reversed[2..].to_vec(), Some("org1/dc1"))
        .await
        .expect("ingest 2a");
    g2.ingest(reversed[..2].to_vec(), Some("org1/dc1"))
        .await
        .expect("ingest 2b");
    // a copy already held adds nothing
    g2.ingest(records.clone(), Some("org1/dc1"))
        .await
        .expect("ingest 2c");

    let trail = |g: &crate::membership::Membership| {
        audit_entries(g.store(), &AuditFilter::default()).expect("entries")
    };
    let (t1, t2) = (trail(&g1), trail(&g2));
    assert_eq!(t1.len(), 4);
    assert_eq!(t2.len(), 4);
    let node = t1.iter().find(|e| e.kind == "node" && e.org == "org1");
    let node = node.expect("node entry");
    assert_eq!(node.subject, "n1");
    assert_eq!(node.signer, "org1");
    assert_eq!(node.record_key.as_deref(), Some("node/org1/n1"));
    assert!(t1.iter().any(|e| e.kind == "member" && e.signer == "root"));
    let digest = |g: &crate::membership::Membership| g.store().records_digest().expect("digest");
    assert_eq!(digest(&g1), digest(&g2));
    for g in [&g1, &g2] {
        let report =
            verify_trail(g.store(), verifier(&pki), DOMAIN, SystemTime::now()).expect("verifies");
        assert_eq!(report.entries, 4);
        assert_eq!(report.records, 4);
    }

    // a tombstone is recorded as such, and the gateways then differ until it reaches both
    let tomb = crate::membership::record::seal(
        pki.signer("org1"),
        "org1",
        "n1",
        3,
        fedgw_proto::v1::record_body::Body::Tombstone(fedgw_proto::v1::TombstoneRecord {
            kind: fedgw_proto::v1::RecordKind::Node.into(),
        }),
    )
    .expect("seal");
    g1.ingest(vec![tomb], None).await.expect("tombstone");
    let t1 = trail(&g1);
    assert_eq!(t1[0].kind, "tombstone.node");
    let (d1, d2) = (digest(&g1), digest(&g2));
    assert_ne!(d1.digest, d2.digest);
    let diff = d1.differences(&d2);
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].key, "node/org1/n1");
    assert_eq!(diff[0].ours.as_deref(), Some(t1[0].record_hash.as_str()));
}

#[tokio::test]
async fn verify_names_a_record_changed_in_the_store() {
    let pki = Pki::new(&["org1"]);
    let d = tempfile::tempdir().expect("tempdir");
    let g = membership(&pki, "org1", d.path(), |_| {});
    g.ingest(
        vec![pki.member("org1", 1), pki.node("org1", "org1", "n1", 2, 1)],
        None,
    )
    .await
    .expect("ingest");
    // another valid envelope written under the key without going through ingest
    let other = pki.node("org1", "org1", "n1", 5, 9);
    g.store()
        .put_records(&[("node/org1/n1".to_owned(), Arc::new(other))], &[])
        .expect("tamper");
    let e =
        verify_trail(g.store(), verifier(&pki), DOMAIN, SystemTime::now()).expect_err("tampered");
    assert!(matches!(&e, TrailError::Unrecorded { key, .. } if key == "node/org1/n1"));
    assert!(
        e.to_string().starts_with("record node/org1/n1 was changed"),
        "{e}"
    );
}

#[tokio::test]
async fn verify_names_an_altered_audit_entry() {
    let pki = Pki::new(&["org1"]);
    let d = tempfile::tempdir().expect("tempdir");
    let g = membership(&pki, "org1", d.path(), |_| {});
    g.ingest(
        vec![pki.member("org1", 1), pki.node("org1", "org1", "n1", 2, 1)],
        None,
    )
    .await
    .expect("ingest");
    let all = g.store().audit_all().expect("read");
    let mut entry = all[1].1.clone();
    entry.signer = "org9".into();
    g.store().overwrite_audit(2, &entry).expect("tamper");
    let e =
        verify_trail(g.store(), verifier(&pki), DOMAIN, SystemTime::now()).expect_err("tampered");
    assert!(e.to_string().contains("audit entry 2 was altered"), "{e}");
}
