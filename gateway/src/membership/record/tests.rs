use fedgw_proto::v1 as pb;
use prost::Message;

use super::*;
use crate::membership::test_pki::{DOMAIN, Pki, node_record};

#[test]
fn keys_round_trip() {
    for s in [
        "member/org2/",
        "node/org1/node1",
        "vote/org1/org4",
        "gateway/org3/dc1",
    ] {
        assert_eq!(RecordKey::parse(s).expect("parses").to_string(), s);
    }
    for bad in ["", "node", "node/org1", "nope/org1/x"] {
        assert!(RecordKey::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn signed_records_verify_with_their_key_and_signer() {
    let pki = Pki::new(&["org1", "org2"]);
    let v = pki
        .verify(&pki.node("org2", "org2", "node1", 5, 7))
        .expect("valid");
    assert_eq!(v.key.to_string(), "node/org2/node1");
    assert_eq!(v.seq, 5);
    assert_eq!(v.signer, Signer::Org("org2".into()));
    let m = pki.verify(&pki.member("org2", 1)).expect("valid");
    assert_eq!(m.key.to_string(), "member/org2/");
    assert_eq!(m.signer, Signer::Root);
}

#[test]
fn forged_signature_is_refused() {
    let pki = Pki::new(&["org1"]);
    let bytes = pki.node("org1", "org1", "node1", 5, 7);
    let mut env = pb::Envelope::decode(bytes.as_slice()).expect("decode");
    let mut body = pb::RecordBody::decode(env.payload.as_slice()).expect("body");
    body.seq = 6; // altered after signing
    env.payload = body.encode_to_vec();
    let err = pki.verify(&env.encode_to_vec()).expect_err("forged");
    assert_eq!(err, Reject::Signature(EnvelopeError::Signature));
    // a signature from a foreign consortium's org CA
    let foreign = Pki::new(&["org1"]);
    let err = pki
        .verify(&foreign.node("org1", "org1", "node1", 5, 7))
        .expect_err("foreign");
    assert_eq!(err, Reject::Signature(EnvelopeError::UntrustedSigner));
}

#[test]
fn orgs_sign_only_about_themselves_and_root_kinds_need_the_root() {
    let pki = Pki::new(&["org1", "org2"]);
    let err = pki
        .verify(&pki.node("org1", "org2", "node1", 5, 7))
        .expect_err("org1 about org2");
    assert!(matches!(err, Reject::Unauthorised(_)), "{err:?}");
    let by_org = seal(
        pki.signer("org1"),
        "org1",
        "",
        1,
        pb::record_body::Body::Member(pb::MemberRecord {
            org_ca_der: pki.ca("org1").cert().to_vec(),
            fabric_msp_id: String::new(),
            admitted_unix: 0,
        }),
    )
    .expect("seal");
    assert!(matches!(pki.verify(&by_org), Err(Reject::Unauthorised(_))));
    let root_node = seal(
        &pki.root_signer,
        "org1",
        "node1",
        1,
        pb::record_body::Body::Node(node_record(1)),
    )
    .expect("seal");
    assert!(matches!(
        pki.verify(&root_node),
        Err(Reject::Unauthorised(_))
    ));
    let revoke_by_org = seal(
        pki.signer("org2"),
        "org1",
        "",
        1,
        pb::record_body::Body::Revocation(pb::RevocationRecord { reason: "x".into() }),
    )
    .expect("seal");
    assert!(matches!(
        pki.verify(&revoke_by_org),
        Err(Reject::Unauthorised(_))
    ));
}

#[test]
fn member_record_must_carry_that_orgs_constrained_ca() {
    let pki = Pki::new(&["org1", "org2"]);
    let wrong = seal(
        &pki.root_signer,
        "org1",
        "",
        1,
        pb::record_body::Body::Member(pb::MemberRecord {
            org_ca_der: pki.ca("org2").cert().to_vec(),
            fabric_msp_id: String::new(),
            admitted_unix: 0,
        }),
    )
    .expect("seal");
    assert!(matches!(pki.verify(&wrong), Err(Reject::Invalid(_))));
}

#[test]
fn member_record_fabric_msp_id_is_empty_or_a_plain_id() {
    let pki = Pki::new(&["org1"]);
    let member = |msp_id: &str| {
        seal(
            &pki.root_signer,
            "org1",
            "",
            1,
            pb::record_body::Body::Member(pb::MemberRecord {
                org_ca_der: pki.ca("org1").cert().to_vec(),
                fabric_msp_id: msp_id.into(),
                admitted_unix: 0,
            }),
        )
        .expect("seal")
    };
    for ok in ["", "Org1MSP", "bank-1.msp"] {
        pki.verify(&member(ok))
            .unwrap_or_else(|e| panic!("{ok:?}: {e:?}"));
    }
    for bad in ["Org1 MSP", "Org1')MSP", "x\ny"] {
        assert!(
            matches!(pki.verify(&member(bad)), Err(Reject::Invalid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn malformed_and_oversized_records_are_refused() {
    let pki = Pki::new(&["org1"]);
    assert_eq!(pki.verify(b"garbage").expect_err("garbage"), Reject::Decode);
    assert_eq!(
        pki.verify(&vec![0u8; MAX_ENVELOPE_BYTES + 1])
            .expect_err("big"),
        Reject::TooLarge
    );
    let mut big = node_record(1);
    big.roles = (0..2000).map(|i| format!("a-long-role-name-{i}")).collect();
    let bytes = seal(
        pki.signer("org1"),
        "org1",
        "n",
        1,
        pb::record_body::Body::Node(big),
    )
    .expect("seal");
    assert_eq!(pki.verify(&bytes).expect_err("big"), Reject::TooLarge);
    let cases: Vec<(&str, pb::NodeRecord)> = vec![
        (
            "short enode",
            pb::NodeRecord {
                enode_id: vec![1; 63],
                ..node_record(1)
            },
        ),
        (
            "port",
            pb::NodeRecord {
                p2p_port: 70000,
                ..node_record(1)
            },
        ),
        (
            "tessera key",
            pb::NodeRecord {
                tessera_keys: vec![vec![1; 31]],
                ..node_record(1)
            },
        ),
        (
            "tessera url",
            pb::NodeRecord {
                tessera_url: "ftp://x".into(),
                ..node_record(1)
            },
        ),
        (
            "client",
            pb::NodeRecord {
                client: 0,
                ..node_record(1)
            },
        ),
        (
            "site",
            pb::NodeRecord {
                site: "Bad_Site".into(),
                ..node_record(1)
            },
        ),
    ];
    for (what, rec) in cases {
        let bytes = seal(
            pki.signer("org1"),
            "org1",
            "n",
            1,
            pb::record_body::Body::Node(rec),
        )
        .expect("seal");
        assert!(
            matches!(pki.verify(&bytes), Err(Reject::Invalid(_))),
            "{what}"
        );
    }
    for (org, name) in [("Org1", "n"), ("org1", "bad name"), ("org1", "")] {
        let bytes = seal(
            pki.signer("org1"),
            org,
            name,
            1,
            pb::record_body::Body::Node(node_record(1)),
        )
        .expect("seal");
        assert!(pki.verify(&bytes).is_err(), "{org} {name}");
    }
    let zero_seq = pki.node("org1", "org1", "n", 0, 1);
    assert!(matches!(pki.verify(&zero_seq), Err(Reject::Invalid(_))));
    let _ = DOMAIN;
}
