use super::*;

fn id(n: u64) -> Vec<u8> {
    fedgw_tests::enode_key(n)
}

fn hex(n: u64) -> String {
    fedgw_tests::enode_id(n)
}

fn local(name: &str, client: Client) -> LocalNode {
    LocalNode {
        name: name.into(),
        client,
        rpc: "http://127.0.0.1:8545".parse().expect("url"),
    }
}

fn record(n: u64, p2p: u32, raft: u32, tessera: &str) -> pb::NodeRecord {
    pb::NodeRecord {
        enode_id: if n == 0 { vec![] } else { id(n) },
        p2p_port: p2p,
        raft_port: raft,
        tessera_url: tessera.into(),
        ..Default::default()
    }
}

fn remote(org: &str, name: &str, r: &pb::NodeRecord) -> RemoteNode {
    let r = pb::NodeRecord {
        client: pb::ClientKind::Goquorum as i32,
        ..r.clone()
    };
    let node = fedgw_proto::domain::Node::try_from(&r).expect("a valid record");
    RemoteNode::from_node(NodeKey::new(org, name), &node, "acme.test")
}

#[test]
fn remote_enode_urls_use_the_consortium_name() {
    let r = remote("org2", "m1", &record(2, 30303, 50400, ""));
    assert_eq!(
        r.enode_url.as_deref(),
        Some(
            format!(
                "enode://{}@m1.org2.acme.test:30303?discport=0&raftport=50400",
                hex(2)
            )
            .as_str()
        )
    );
    assert_eq!(r.tessera_url, None);
    let r = remote("org2", "b1", &record(3, 30304, 0, ""));
    assert_eq!(
        r.enode_url.as_deref(),
        Some(format!("enode://{}@b1.org2.acme.test:30304?discport=0", hex(3)).as_str())
    );
    // no id or no p2p port: nothing to dial
    assert_eq!(remote("o", "t", &record(0, 30303, 0, "")).enode_url, None);
    assert_eq!(remote("o", "t", &record(4, 0, 50400, "")).enode_url, None);
    let mut short = record(4, 30303, 0, "");
    short.enode_id.truncate(63);
    // a short id never becomes a node: records are checked once, where they are read
    assert!(fedgw_proto::domain::Node::try_from(&short).is_err());
    let t = remote(
        "org2",
        "tm",
        &record(0, 0, 0, "http://tm.org2.acme.test:9000"),
    );
    assert_eq!(
        t.tessera_url.as_deref(),
        Some("http://tm.org2.acme.test:9000")
    );
}

#[test]
fn each_client_gets_its_own_calls() {
    let remotes = [
        remote(
            "org2",
            "m1",
            &record(2, 30303, 50400, "http://m1.org2.acme.test:9000"),
        ),
        remote(
            "org2",
            "t1",
            &record(0, 0, 0, "http://t1.org2.acme.test:9000"),
        ),
    ];
    let want = desired(
        &[
            local("q", Client::GoQuorum),
            local("b", Client::Besu),
            local("t", Client::Tessera),
        ],
        &remotes,
    );
    let got: Vec<(&str, Op, &str)> = want
        .iter()
        .map(|l| (l.local.as_str(), l.op, l.remote.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("b", Op::Allowlist, "org2/m1"),
            ("b", Op::AdminPeer, "org2/m1"),
            ("q", Op::AdminPeer, "org2/m1"),
            ("t", Op::TesseraPeer, "org2/m1"),
            ("t", Op::TesseraPeer, "org2/t1"),
        ]
    );
    assert!(
        want.iter()
            .all(|l| l.op == Op::TesseraPeer || l.enode_id() == Some(hex(2)))
    );
}

/// Each step's kind and op.
fn kinds(steps: &[Step]) -> Vec<(&'static str, Op)> {
    steps
        .iter()
        .map(|s| match s {
            Step::Add(l) => ("add", l.op),
            Step::Remove(l) => ("remove", l.op),
            Step::Forget(l) => ("forget", l.op),
        })
        .collect()
}

#[test]
fn plan_adds_new_links_and_removes_gone_ones_in_reverse_order() {
    let locals = [local("b", Client::Besu)];
    let names = BTreeSet::from(["b".to_owned()]);
    let one = desired(&locals, &[remote("org2", "m1", &record(2, 30303, 0, ""))]);
    assert_eq!(
        kinds(&plan(&one, &BTreeSet::new(), &names)),
        [("add", Op::Allowlist), ("add", Op::AdminPeer)]
    );
    // applied: nothing to do
    assert!(plan(&one, &one, &names).is_empty());
    // gone: the peer goes before the allowlist entry
    assert_eq!(
        kinds(&plan(&BTreeSet::new(), &one, &names)),
        [("remove", Op::AdminPeer), ("remove", Op::Allowlist)]
    );
    // a node that lost its endpoint cannot be called: its links are forgotten
    assert_eq!(
        kinds(&plan(&BTreeSet::new(), &one, &BTreeSet::new())),
        [("forget", Op::AdminPeer), ("forget", Op::Allowlist)]
    );
}

#[test]
fn a_changed_port_replaces_the_link() {
    let locals = [local("q", Client::GoQuorum)];
    let names = BTreeSet::from(["q".to_owned()]);
    let old = desired(&locals, &[remote("org2", "m1", &record(2, 30303, 0, ""))]);
    let new = desired(&locals, &[remote("org2", "m1", &record(2, 30310, 0, ""))]);
    let steps = plan(&new, &old, &names);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(matches!(&steps[0], Step::Add(l) if l.target.contains(":30310")));
    assert!(matches!(&steps[1], Step::Remove(l) if l.target.contains(":30303")));
}

#[test]
fn tessera_peers_are_forgotten_not_removed() {
    let locals = [local("t", Client::Tessera)];
    let names = BTreeSet::from(["t".to_owned()]);
    let one = desired(
        &locals,
        &[remote(
            "org2",
            "t1",
            &record(0, 0, 0, "http://t1.org2.acme.test:9000"),
        )],
    );
    assert_eq!(one.len(), 1);
    let steps = plan(&BTreeSet::new(), &one, &names);
    assert!(matches!(steps.as_slice(), [Step::Forget(l)] if l.op == Op::TesseraPeer));
}

#[test]
fn reapply_after_recovery_and_for_missing_peers() {
    let locals = [local("q", Client::GoQuorum), local("b", Client::Besu)];
    let want = desired(
        &locals,
        &[
            remote("org2", "m1", &record(2, 30303, 0, "")),
            remote("org2", "m2", &record(3, 30303, 0, "")),
        ],
    );
    // a stale link (no longer desired) survives reapply_all so it is still removed
    let stale = Link {
        local: "q".into(),
        op: Op::AdminPeer,
        remote: "org2/gone".into(),
        target: format!("enode://{}@gone.org2.acme.test:30303?discport=0", hex(9)),
    };
    let mut applied = want.clone();
    applied.insert(stale.clone());
    reapply_all(&mut applied, &want, "q");
    assert!(
        applied.iter().all(|l| l.local == "b" || *l == stale),
        "{applied:?}"
    );
    assert_eq!(applied.iter().filter(|l| l.local == "b").count(), 4);

    // admin_peers lists m1 only: the m2 peer link is forgotten, the allowlist entries stay
    let mut applied = want.clone();
    reapply_missing(&mut applied, "b", &BTreeSet::from([hex(2)]));
    let b: Vec<(Op, &str)> = applied
        .iter()
        .filter(|l| l.local == "b")
        .map(|l| (l.op, l.remote.as_str()))
        .collect();
    assert_eq!(
        b,
        [
            (Op::Allowlist, "org2/m1"),
            (Op::Allowlist, "org2/m2"),
            (Op::AdminPeer, "org2/m1"),
        ]
    );
    assert_eq!(applied.iter().filter(|l| l.local == "q").count(), 2);
}

#[test]
fn enode_ids_are_read_from_urls_only_when_whole() {
    assert_eq!(enode_id(&format!("enode://{}@h:1", hex(5))), Some(hex(5)));
    let upper = hex(5).to_ascii_uppercase();
    assert_eq!(enode_id(&format!("enode://{upper}@h:1")), Some(hex(5)));
    assert_eq!(enode_id("enode://abc@h:1"), None);
    assert_eq!(enode_id(&format!("http://{}@h:1", hex(5))), None);
}

#[test]
fn backoff_starts_at_a_second_and_is_capped() {
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(2), Duration::from_secs(2));
    assert_eq!(backoff(40), Duration::from_secs(300));
}

#[test]
fn only_known_clients_are_peered() {
    assert_eq!(
        Client::of(pb::ClientKind::Goquorum as i32),
        Some(Client::GoQuorum)
    );
    assert_eq!(Client::of(pb::ClientKind::Besu as i32), Some(Client::Besu));
    assert_eq!(
        Client::of(pb::ClientKind::Tessera as i32),
        Some(Client::Tessera)
    );
    assert_eq!(Client::of(pb::ClientKind::FabricPeer as i32), None);
    assert_eq!(Client::of(99), None);
}
