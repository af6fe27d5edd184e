use super::*;
use crate::membership::test_pki::{DOMAIN, Pki};

fn apply(view: &mut View, pki: &Pki, bytes: &[u8]) -> Verdict {
    let v = pki.verify(bytes).expect("verifies");
    let verdict = view.check(&v);
    if verdict == Verdict::Accept {
        view.apply(v);
    }
    verdict
}

/// A view of a QBFT consortium (validator records allowed) with `orgs` as members.
fn founded(pki: &Pki, orgs: &[&str]) -> View {
    founded_with(pki, orgs, Consensus::Qbft)
}

fn founded_with(pki: &Pki, orgs: &[&str], consensus: Consensus) -> View {
    let mut view = View::new(consensus);
    for o in orgs {
        assert_eq!(apply(&mut view, pki, &pki.member(o, 1)), Verdict::Accept);
    }
    view
}

#[test]
fn newer_accepted_older_stale_same_duplicate_different_equivocation() {
    let pki = Pki::new(&["org1"]);
    let mut view = founded(&pki, &["org1"]);
    let v10 = pki.node("org1", "org1", "n", 10, 1);
    assert_eq!(apply(&mut view, &pki, &v10), Verdict::Accept);
    assert_eq!(apply(&mut view, &pki, &v10), Verdict::Duplicate);
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 9, 1)),
        Verdict::Reject(Reject::Stale { got: 9, held: 10 })
    );
    // same seq, different content (another enode id): equivocation
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 10, 2)),
        Verdict::Reject(Reject::Equivocation(10))
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 11, 2)),
        Verdict::Accept
    );
    assert_eq!(
        view.nodes()[0].node.enode_id.map(|id| *id.as_bytes()),
        Some([2; 64])
    );
    // max(held + 1, now) rounded up into the publishing replica's class modulo 16
    let key = pki.verify(&v10).expect("v").key;
    assert_eq!(view.next_seq(&key, 5, 0), 16);
    assert_eq!(view.next_seq(&key, 5, 3), 19);
    assert_eq!(view.next_seq(&key, 500, 0), 512);
    assert_eq!(view.next_seq(&key, 512, 0), 512);
}

#[test]
fn records_need_an_admitted_unrevoked_org() {
    let pki = Pki::new(&["org1", "org2"]);
    let mut view = founded(&pki, &["org1"]);
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org2", "org2", "n", 1, 1)),
        Verdict::Reject(Reject::NotMember("org2".into()))
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.member("org2", 1)),
        Verdict::Accept
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org2", "org2", "n", 1, 1)),
        Verdict::Accept
    );
    assert_eq!(view.nodes().len(), 1);
    let revoke = crate::membership::record::seal(
        &pki.root_signer,
        "org2",
        "",
        2,
        fedgw_proto::v1::record_body::Body::Revocation(pb::RevocationRecord { reason: "x".into() }),
    )
    .expect("seal");
    assert_eq!(apply(&mut view, &pki, &revoke), Verdict::Accept);
    assert!(!view.is_member("org2"));
    assert!(
        view.nodes().is_empty(),
        "a revoked org's nodes leave the view"
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org2", "org2", "n", 5, 1)),
        Verdict::Reject(Reject::Revoked("org2".into()))
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.member("org2", 3)),
        Verdict::Reject(Reject::Revoked("org2".into())),
        "revocation is permanent"
    );
}

#[test]
fn an_enode_id_belongs_to_one_org() {
    let pki = Pki::new(&["org1", "org2"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "a", 1, 9)),
        Verdict::Accept
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org2", "org2", "b", 1, 9)),
        Verdict::Reject(Reject::EnodeTaken("org1".into()))
    );
    // the owner may move it between its own nodes
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "c", 1, 9)),
        Verdict::Accept
    );
    // deleting both frees it
    for name in ["a", "c"] {
        let tomb = crate::membership::record::seal(
            pki.signer("org1"),
            "org1",
            name,
            50,
            fedgw_proto::v1::record_body::Body::Tombstone(pb::TombstoneRecord {
                kind: pb::RecordKind::Node.into(),
            }),
        )
        .expect("seal");
        assert_eq!(apply(&mut view, &pki, &tomb), Verdict::Accept);
    }
    assert!(view.nodes().is_empty());
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org2", "org2", "b", 1, 9)),
        Verdict::Accept
    );
    // a replay of the deleted node's older record stays out
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "a", 1, 9)),
        Verdict::Reject(Reject::Stale { got: 1, held: 50 })
    );
}

#[test]
fn demo_keys_are_refused() {
    let pki = Pki::new(&["org1"]);
    let mut view = founded(&pki, &["org1"]);
    let tsv = include_str!("../../../../proto/data/qubernetes-7nodes-identities.tsv");
    let line = tsv
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a line");
    let mut cols = line.split('\t');
    let _name = cols.next();
    let id: Vec<u8> = (0..64)
        .map(|i| {
            u8::from_str_radix(&cols.clone().next().expect("id")[2 * i..2 * i + 2], 16)
                .expect("hex")
        })
        .collect();
    let mut rec = crate::membership::test_pki::node_record(0);
    rec.enode_id = id;
    let bytes = crate::membership::record::seal(
        pki.signer("org1"),
        "org1",
        "demo",
        1,
        fedgw_proto::v1::record_body::Body::Node(rec),
    )
    .expect("seal");
    assert!(matches!(
        apply(&mut view, &pki, &bytes),
        Verdict::Reject(Reject::DemoKey(_))
    ));
}

#[test]
fn digests_match_iff_the_same_records_are_held_in_any_order() {
    let pki = Pki::new(&["org1", "org2"]);
    let records = [
        pki.member("org1", 1),
        pki.member("org2", 1),
        pki.node("org1", "org1", "a", 3, 1),
        pki.node("org2", "org2", "b", 4, 2),
        pki.node("org1", "org1", "a", 5, 1),
    ];
    let mut a = View::default();
    for r in &records {
        apply(&mut a, &pki, r);
    }
    let mut b = View::default();
    for r in [&records[1], &records[0], &records[4], &records[3]] {
        apply(&mut b, &pki, r);
    }
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.len(), 4);
    let mut c = b.clone();
    apply(&mut c, &pki, &pki.node("org2", "org2", "z", 1, 3));
    assert_ne!(c.digest(), b.digest());
    assert_ne!(c.origin_sums().get("org2"), b.origin_sums().get("org2"));
    assert_eq!(c.origin_sums().get("org1"), b.origin_sums().get("org1"));
    // what c has that b lacks, by inventory
    let theirs: HashMap<RecordKey, u64> = b.inventory("org2").into_iter().collect();
    assert_eq!(c.newer_than("org2", &theirs).len(), 1);
    let _ = DOMAIN;
}

#[test]
fn votes_count_only_from_active_members() {
    let pki = Pki::new(&["org1", "org2", "org3"]);
    let mut view = founded(&pki, &["org1", "org2", "org3"]);
    let vote = |org: &str, seq| {
        crate::membership::record::seal(
            pki.signer(org),
            org,
            "org4",
            seq,
            fedgw_proto::v1::record_body::Body::Vote(pb::VoteRecord { approve: true }),
        )
        .expect("seal")
    };
    apply(&mut view, &pki, &vote("org2", 1));
    apply(&mut view, &pki, &vote("org3", 1));
    assert_eq!(
        view.approvals_for("org4"),
        vec!["org2".to_owned(), "org3".to_owned()]
    );
    assert_eq!(
        view.candidates().into_iter().collect::<Vec<_>>(),
        vec!["org4".to_owned()]
    );
    let revoke = crate::membership::record::seal(
        &pki.root_signer,
        "org3",
        "",
        2,
        fedgw_proto::v1::record_body::Body::Revocation(pb::RevocationRecord {
            reason: String::new(),
        }),
    )
    .expect("seal");
    apply(&mut view, &pki, &revoke);
    assert_eq!(view.approvals_for("org4"), vec!["org2".to_owned()]);
}

/// A view that saw a revocation live and a view built from the same records in load order
/// (members, revocations, then the rest: how a restarted gateway reads its store) hold the
/// same records and agree on the digest, and the live one reports what it dropped.
#[test]
fn a_revocation_seen_live_gives_the_digest_of_a_fresh_load() {
    let pki = Pki::new(&["org1", "org2", "org3"]);
    let members = [
        pki.member("org1", 1),
        pki.member("org2", 1),
        pki.member("org3", 1),
    ];
    let vote = crate::membership::record::seal(
        pki.signer("org3"),
        "org3",
        "org4",
        1,
        fedgw_proto::v1::record_body::Body::Vote(pb::VoteRecord { approve: true }),
    )
    .expect("seal");
    let others = [
        pki.node("org1", "org1", "a", 1, 1),
        pki.node("org3", "org3", "b", 1, 3),
        pki.node("org3", "org3", "c", 1, 4),
        vote,
    ];
    let revoke = crate::membership::record::seal(
        &pki.root_signer,
        "org3",
        "",
        2,
        fedgw_proto::v1::record_body::Body::Revocation(pb::RevocationRecord {
            reason: String::new(),
        }),
    )
    .expect("seal");
    let mut live = View::default();
    for r in members.iter().chain(&others) {
        assert_eq!(apply(&mut live, &pki, r), Verdict::Accept);
    }
    assert_eq!(apply(&mut live, &pki, &revoke), Verdict::Accept);
    let mut dropped: Vec<String> = live
        .take_dropped()
        .iter()
        .map(ToString::to_string)
        .collect();
    dropped.sort();
    assert_eq!(dropped, ["node/org3/b", "node/org3/c", "vote/org3/org4"]);
    assert!(live.take_dropped().is_empty());

    let mut loaded = View::default();
    for r in members.iter().chain([&revoke]).chain(&others) {
        apply(&mut loaded, &pki, r);
    }
    assert_eq!(live.len(), loaded.len());
    assert_eq!(live.origin_sums(), loaded.origin_sums());
    assert_eq!(live.digest(), loaded.digest());
    // the dropped enode ids are free again, as after a fresh load
    assert_eq!(
        apply(&mut live, &pki, &pki.node("org1", "org1", "d", 1, 3)),
        Verdict::Accept
    );
}

fn raft(
    pki: &Pki,
    signer: &str,
    org: &str,
    name: &str,
    seq: u64,
    raft_id: u32,
    enode: u8,
) -> Vec<u8> {
    crate::membership::record::seal(
        pki.signer(signer),
        org,
        name,
        seq,
        pb::record_body::Body::Raft(pb::RaftRecord {
            raft_id,
            enode_id: vec![enode; 64],
        }),
    )
    .expect("seal")
}

#[test]
fn a_raft_record_is_signed_by_any_member_about_a_node_it_names() {
    let pki = Pki::new(&["org1", "org2", "org3"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    // no node yet
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 1, 7, 1)),
        Verdict::Reject(Reject::UnknownNode)
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 1, 1)),
        Verdict::Accept
    );
    // another enode id than the node's
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 1, 7, 2)),
        Verdict::Reject(Reject::EnodeMismatch)
    );
    // org3 is no member
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org3", "org1", "n", 1, 7, 1)),
        Verdict::Reject(Reject::NotMember("org3".into()))
    );
    // org2 added the node and signs its id about org1's node
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 2, 7, 1)),
        Verdict::Accept
    );
    let key = fedgw_certs::ids::NodeKey::new("org1", "n");
    assert_eq!(view.raft_ids(), vec![(key.clone(), 7, vec![1; 64])]);
    // a raft id of 0 or over 65535 never verifies
    for bad in [0, 65536] {
        assert!(matches!(
            pki.verify(&raft(&pki, "org2", "org1", "n", 3, bad, 1)),
            Err(Reject::Invalid(_))
        ));
    }
    // the node deleted: its raft record stays (it names the member to remove), and one
    // arriving after the tombstone is still taken
    let tomb = crate::membership::record::seal(
        pki.signer("org1"),
        "org1",
        "n",
        5,
        pb::record_body::Body::Tombstone(pb::TombstoneRecord {
            kind: pb::RecordKind::Node.into(),
        }),
    )
    .expect("seal");
    assert_eq!(apply(&mut view, &pki, &tomb), Verdict::Accept);
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 4, 8, 1)),
        Verdict::Accept
    );
    assert_eq!(view.raft_ids(), vec![(key, 8, vec![1; 64])]);
    // deleting it takes a tombstone of the raft kind
    let gone = crate::membership::record::seal(
        pki.signer("org2"),
        "org1",
        "n",
        6,
        pb::record_body::Body::Tombstone(pb::TombstoneRecord {
            kind: pb::RecordKind::Raft.into(),
        }),
    )
    .expect("seal");
    assert_eq!(apply(&mut view, &pki, &gone), Verdict::Accept);
    assert!(view.raft_ids().is_empty());
}

#[test]
fn a_revoked_orgs_raft_records_leave_the_view() {
    let pki = Pki::new(&["org1", "org2"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 1, 1)),
        Verdict::Accept
    );
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 1, 2, 1)),
        Verdict::Accept
    );
    let revoke = crate::membership::record::seal(
        &pki.root_signer,
        "org2",
        "",
        2,
        pb::record_body::Body::Revocation(pb::RevocationRecord { reason: "x".into() }),
    )
    .expect("seal");
    assert_eq!(apply(&mut view, &pki, &revoke), Verdict::Accept);
    // signed by the revoked org: dropped as a fresh load would refuse it
    assert!(view.raft_ids().is_empty());
    assert_eq!(view.take_dropped().len(), 1);
    assert_eq!(
        apply(&mut view, &pki, &raft(&pki, "org2", "org1", "n", 3, 2, 1)),
        Verdict::Reject(Reject::Revoked("org2".into()))
    );
}

fn seal_as(
    pki: &Pki,
    signer: &str,
    org: &str,
    name: &str,
    seq: u64,
    body: pb::record_body::Body,
) -> Vec<u8> {
    crate::membership::record::seal(pki.signer(signer), org, name, seq, body).expect("seal")
}

fn proposal(add: bool, enode: u8) -> pb::record_body::Body {
    pb::record_body::Body::Validator(pb::ValidatorProposal {
        add,
        enode_id: vec![enode; 64],
    })
}

fn approval(proposal_seq: u64) -> pb::record_body::Body {
    pb::record_body::Body::ValidatorVote(pb::ValidatorVote { proposal_seq })
}

/// A validator proposal is signed by any member about a node it names (with the node's enode
/// id); approvals count only from active members naming the proposal's current seq.
#[test]
fn validator_proposals_and_their_approvals() {
    let pki = Pki::new(&["org1", "org2", "org3"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    let p = |signer, seq, enode| seal_as(&pki, signer, "org1", "n", seq, proposal(true, enode));
    assert_eq!(
        apply(&mut view, &pki, &p("org2", 1, 1)),
        Verdict::Reject(Reject::UnknownNode)
    );
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 1, 1)),
        Verdict::Accept
    );
    assert_eq!(
        apply(&mut view, &pki, &p("org2", 1, 2)),
        Verdict::Reject(Reject::EnodeMismatch)
    );
    assert_eq!(
        apply(&mut view, &pki, &p("org3", 1, 1)),
        Verdict::Reject(Reject::NotMember("org3".into()))
    );
    assert_eq!(apply(&mut view, &pki, &p("org2", 5, 1)), Verdict::Accept);
    let open = view.validator_proposals();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].seq, open[0].add, open[0].proposer.as_str()),
        (5, true, "org2")
    );

    let node = fedgw_certs::ids::NodeKey::new("org1", "n");
    let vote = |voter, seq, proposal_seq| {
        seal_as(&pki, voter, voter, "org1.n", seq, approval(proposal_seq))
    };
    assert_eq!(apply(&mut view, &pki, &vote("org1", 1, 5)), Verdict::Accept);
    // an approval of an older proposal does not count
    assert_eq!(apply(&mut view, &pki, &vote("org2", 1, 4)), Verdict::Accept);
    assert_eq!(view.validator_approvals(&node, 5), vec!["org1".to_owned()]);
    // a vote signed by another org than its own, a name that is not <org>.<node>, seq 0
    let forged = seal_as(&pki, "org2", "org1", "org1.n", 2, approval(5));
    assert!(matches!(pki.verify(&forged), Err(Reject::Unauthorised(_))));
    for name in ["n", "org1.n.x", "org1.", "Org1.n"] {
        let bad = seal_as(&pki, "org1", "org1", name, 3, approval(5));
        assert!(
            matches!(pki.verify(&bad), Err(Reject::Invalid(_))),
            "{name}"
        );
    }
    let zero = seal_as(&pki, "org1", "org1", "org1.n", 3, approval(0));
    assert!(matches!(pki.verify(&zero), Err(Reject::Invalid(_))));

    // a tombstone by any member closes it
    let close = seal_as(
        &pki,
        "org1",
        "org1",
        "n",
        6,
        pb::record_body::Body::Tombstone(pb::TombstoneRecord {
            kind: pb::RecordKind::Validator.into(),
        }),
    );
    assert_eq!(apply(&mut view, &pki, &close), Verdict::Accept);
    assert!(view.validator_proposals().is_empty());
}

/// A revoked org's proposals (those it signed) and approvals leave the view.
#[test]
fn a_revoked_orgs_validator_records_leave_the_view() {
    let pki = Pki::new(&["org1", "org2"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    assert_eq!(
        apply(&mut view, &pki, &pki.node("org1", "org1", "n", 1, 1)),
        Verdict::Accept
    );
    let p = seal_as(&pki, "org2", "org1", "n", 2, proposal(false, 1));
    assert_eq!(apply(&mut view, &pki, &p), Verdict::Accept);
    let v = seal_as(&pki, "org2", "org2", "org1.n", 2, approval(2));
    assert_eq!(apply(&mut view, &pki, &v), Verdict::Accept);
    let revoke = crate::membership::record::seal(
        &pki.root_signer,
        "org2",
        "",
        3,
        pb::record_body::Body::Revocation(pb::RevocationRecord { reason: "x".into() }),
    )
    .expect("seal");
    assert_eq!(apply(&mut view, &pki, &revoke), Verdict::Accept);
    assert!(view.validator_proposals().is_empty());
    assert_eq!(view.take_dropped().len(), 2);
}

#[test]
fn seqs_of_each_replica_fall_in_their_own_class_modulo_16() {
    for index in 0..16u8 {
        for seq in [0u64, 1, 15, 16, 17, 1_765_000_000_123] {
            let got = super::seq_for_replica(seq, index);
            assert_eq!(got % super::SEQ_REPLICAS, u64::from(index), "{seq} {index}");
            assert!(
                got >= seq && got < seq + super::SEQ_REPLICAS,
                "{seq} {index}: {got}"
            );
        }
    }
    assert_eq!(super::seq_for_replica(32, 0), 32, "already in its class");
}

#[test]
fn each_replica_has_its_own_gateway_record_and_the_view_groups_them_by_site() {
    let pki = Pki::new(&["org1", "org2"]);
    let mut view = founded(&pki, &["org1", "org2"]);
    let gateway = |org: &str, name: &str, endpoint: &str| {
        crate::membership::record::seal(
            pki.signer(org),
            org,
            name,
            16,
            pb::record_body::Body::Gateway(pb::GatewayRecord {
                advertise: vec![endpoint.into()],
                ..Default::default()
            }),
        )
        .expect("seal")
    };
    for (org, name, endpoint) in [
        ("org1", "dc1.r2", "10.0.0.2:7443"),
        ("org1", "dc1", "10.0.0.1:7443"),
        ("org2", "dc1", "10.0.1.1:7443"),
    ] {
        assert_eq!(
            apply(&mut view, &pki, &gateway(org, name, endpoint)),
            Verdict::Accept
        );
    }
    for bad in ["dc1.", "dc1.r2.x", ".r2", "dc1.R2"] {
        assert!(
            pki.verify(&gateway("org1", bad, "10.0.0.9:7443")).is_err(),
            "{bad}"
        );
    }
    let ids: Vec<String> = view
        .gateways()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(ids, ["org1/dc1", "org1/dc1/r2", "org2/dc1"]);
    let sites = view.sites();
    let org1 = &sites[&GatewayId::new("org1", "dc1")];
    assert_eq!(org1.len(), 2);
    assert_eq!(org1[1].0, GatewayId::replica("org1", "dc1", "r2"));
    assert_eq!(org1[1].1.advertise, ["10.0.0.2:7443"]);
    assert_eq!(
        view.replicas_of(&GatewayId::replica("org1", "dc1", "r2"))
            .len(),
        2
    );
    assert_eq!(sites[&GatewayId::new("org2", "dc1")].len(), 1);
    assert_eq!(view.replica_count(&GatewayId::new("org1", "dc1")), 2);
    assert_eq!(view.replica_count(&GatewayId::new("org2", "dc1")), 1);
    assert_eq!(
        view.replica_count(&GatewayId::new("org1", "dc")),
        0,
        "a prefix is not the site"
    );
    assert_eq!(view.replica_count(&GatewayId::new("org3", "dc1")), 0);
}

/// Validator proposals and approvals enter only a view whose consortium has a validator set
/// (qbft, ibft): any other consensus refuses them on ingest, with a reason of their own.
#[test]
fn validator_records_need_a_consensus_with_a_validator_set() {
    let pki = Pki::new(&["org1", "org2"]);
    for consensus in [
        Consensus::None,
        Consensus::Raft,
        Consensus::Clique,
        Consensus::Qbft,
        Consensus::Ibft,
    ] {
        let mut view = founded_with(&pki, &["org1", "org2"], consensus);
        assert_eq!(
            apply(&mut view, &pki, &pki.node("org1", "org1", "n", 1, 1)),
            Verdict::Accept
        );
        let p = seal_as(&pki, "org2", "org1", "n", 2, proposal(true, 1));
        let v = seal_as(&pki, "org2", "org2", "org1.n", 2, approval(2));
        let close = seal_as(
            &pki,
            "org1",
            "org1",
            "n",
            3,
            pb::record_body::Body::Tombstone(pb::TombstoneRecord {
                kind: pb::RecordKind::Validator.into(),
            }),
        );
        for record in [p, v, close] {
            let verdict = apply(&mut view, &pki, &record);
            if consensus.has_validator_set() {
                assert_eq!(verdict, Verdict::Accept, "{consensus:?}");
            } else {
                assert_eq!(
                    verdict,
                    Verdict::Reject(Reject::NoValidatorSet(consensus.name())),
                    "{consensus:?}"
                );
                assert_eq!(
                    Reject::NoValidatorSet(consensus.name()).label(),
                    "no_validator_set"
                );
            }
        }
        assert!(view.validator_proposals().is_empty(), "{consensus:?}");
    }
}
