use super::*;

fn node(org: &str, name: &str, n: u64) -> RaftNode {
    RaftNode {
        key: NodeKey::new(org, name),
        enode_id: fedgw_tests::enode_id(n),
        p2p_port: 30303,
        raft_port: 50400,
        learner: false,
    }
}

fn peer(raft_id: u16, n: &RaftNode) -> RaftPeer {
    RaftPeer {
        raft_id,
        node_id: n.enode_id.clone(),
        hostname: format!("{}.{}.fedgw", n.key.name, n.key.org),
        raft_port: n.raft_port,
        role: "verifier".into(),
        node_active: true,
    }
}

fn inputs(me: &str, nodes: Vec<RaftNode>) -> Inputs {
    Inputs {
        domain: "fedgw".into(),
        me: me.into(),
        adders: ["org1/a".to_owned(), "org2/b".to_owned()].into(),
        nodes,
        ..Inputs::default()
    }
}

#[test]
fn enode_url_is_the_dns_name_form_raft_add_peer_takes() {
    let n = node("org4", "n1", 4);
    assert_eq!(
        n.enode_url("fedgw"),
        format!(
            "enode://{}@n1.org4.fedgw:30303?discport=0&raftport=50400",
            fedgw_tests::enode_id(4)
        )
    );
}

#[test]
fn from_record_needs_enode_p2p_and_raft_port() {
    let r = fedgw_proto::v1::NodeRecord {
        client: fedgw_proto::v1::ClientKind::Goquorum.into(),
        enode_id: fedgw_tests::enode_key(3),
        p2p_port: 30303,
        raft_port: 50400,
        ..Default::default()
    };
    let mut n = fedgw_proto::domain::Node::try_from(&r).expect("a valid record");
    let key = NodeKey::new("org3", "n1");
    assert_eq!(
        RaftNode::from_record(key.clone(), &n),
        Some(node("org3", "n1", 3))
    );
    n.raft_port = None;
    assert_eq!(RaftNode::from_record(key.clone(), &n), None);
    n.raft_port = std::num::NonZeroU16::new(50400);
    n.p2p_port = None;
    assert_eq!(RaftNode::from_record(key.clone(), &n), None);
    n.p2p_port = std::num::NonZeroU16::new(30303);
    n.enode_id = None;
    assert_eq!(RaftNode::from_record(key, &n), None);
}

#[test]
fn only_the_lowest_adding_site_adds_a_missing_node() {
    let (a, b, c) = (
        node("org1", "n1", 1),
        node("org2", "n1", 2),
        node("org4", "n1", 4),
    );
    let cluster = [peer(1, &a), peer(2, &b)];
    let mut first = inputs("org1/a", vec![a.clone(), b.clone(), c.clone()]);
    first.published = [(a.key.clone(), 1), (b.key.clone(), 2)].into();
    let second = Inputs {
        me: "org2/b".into(),
        ..first.clone()
    };
    assert_eq!(
        plan(&first, &cluster),
        [Action::AddPeer {
            node: c.key.clone(),
            enode_url: c.enode_url("fedgw"),
        }]
    );
    assert_eq!(plan(&second, &cluster), []);
    // a site without a raft member + RPC never acts
    let outsider = Inputs {
        me: "org4/d".into(),
        ..first.clone()
    };
    assert_eq!(plan(&outsider, &cluster), []);
    // the lowest one gone: the next one takes over
    let mut takeover = second.clone();
    takeover.adders.remove("org1/a");
    assert_eq!(plan(&takeover, &cluster).len(), 1);
}

#[test]
fn a_node_in_the_cluster_is_published_never_added_again() {
    // the gateway stopped between raft_addPeer and the record: the cluster has the node
    let (a, c) = (node("org1", "n1", 1), node("org4", "n1", 4));
    let cluster = [peer(1, &a), peer(5, &c)];
    let mut i = inputs("org1/a", vec![a.clone(), c.clone()]);
    i.published = [(a.key.clone(), 1)].into();
    assert_eq!(
        plan(&i, &cluster),
        [Action::Publish {
            node: c.key.clone(),
            raft_id: 5
        }]
    );
    // the enode id in the cluster in upper case is the same node
    let mut upper = peer(5, &c);
    upper.node_id = upper.node_id.to_ascii_uppercase();
    assert_eq!(plan(&i, &[peer(1, &a), upper]).len(), 1);
    i.published.insert(c.key.clone(), 5);
    assert_eq!(plan(&i, &cluster), []);
    // a wrong published id is corrected from the cluster
    i.published.insert(c.key.clone(), 9);
    assert_eq!(
        plan(&i, &cluster),
        [Action::Publish {
            node: c.key,
            raft_id: 5
        }]
    );
}

#[test]
fn two_records_with_one_enode_add_once() {
    let a = node("org1", "n1", 1);
    let mut twin = node("org3", "n9", 1);
    twin.raft_port = 50401;
    let i = inputs("org1/a", vec![a.clone(), twin]);
    assert_eq!(plan(&i, &[]).len(), 1);
}

#[test]
fn removed_nodes_leave_the_cluster_once() {
    let (a, c) = (node("org1", "n1", 1), node("org4", "n1", 4));
    let mut i = inputs("org1/a", vec![a.clone()]);
    i.published = [(a.key.clone(), 1)].into();
    i.removed = [(c.key.clone(), 5)].into();
    assert_eq!(
        plan(&i, &[peer(1, &a), peer(5, &c)]),
        [Action::RemovePeer {
            node: c.key.clone(),
            raft_id: 5,
            tombstone: true,
        }]
    );
    // gone already
    assert_eq!(plan(&i, &[peer(1, &a)]), []);
    // the id now belongs to a registered node (the same enode registered again): keep it
    let again = RaftNode {
        key: NodeKey::new("org4", "n2"),
        ..c.clone()
    };
    i.nodes.push(again.clone());
    let mut p = peer(5, &c);
    p.node_id = again.enode_id.clone();
    assert_eq!(
        plan(&i, &[peer(1, &a), p]),
        [Action::Publish {
            node: again.key,
            raft_id: 5
        }]
    );
}

#[test]
fn a_learner_is_added_as_one_and_promoted_only_once_caught_up() {
    let a = node("org1", "n1", 1);
    let l = RaftNode {
        learner: true,
        ..node("org3", "l1", 3)
    };
    let mut i = inputs("org1/a", vec![a.clone(), l.clone()]);
    i.published = [(a.key.clone(), 1)].into();
    assert_eq!(
        plan(&i, &[peer(1, &a)]),
        [Action::AddLearner {
            node: l.key.clone(),
            enode_url: l.enode_url("fedgw"),
        }]
    );
    let mut listed = peer(2, &l);
    listed.role = LEARNER_ROLE.into();
    i.published.insert(l.key.clone(), 2);
    // listed as a learner, not caught up: nothing
    assert_eq!(plan(&i, &[peer(1, &a), listed.clone()]), []);
    i.caught_up.insert(l.key.clone());
    assert_eq!(
        plan(&i, &[peer(1, &a), listed.clone()]),
        [Action::Promote {
            node: l.key.clone(),
            raft_id: 2
        }]
    );
    // promoted: a verifier is never promoted again
    listed.role = "verifier".into();
    assert_eq!(plan(&i, &[peer(1, &a), listed]), []);
}

#[test]
fn a_revoked_orgs_members_are_removed_by_their_host_names_once() {
    let a = node("org1", "n1", 1);
    let gone = node("org3", "n7", 7);
    let mut i = inputs("org1/a", vec![a.clone()]);
    i.published = [(a.key.clone(), 1)].into();
    let mut outside = peer(9, &node("org5", "x", 9));
    // a member added outside fedgw, by address: never touched
    outside.hostname = "10.0.0.9".into();
    let cluster = [peer(1, &a), peer(4, &gone), outside];
    assert_eq!(plan(&i, &cluster), []);
    i.revoked.insert("org3".into());
    assert_eq!(
        plan(&i, &cluster),
        [Action::RemovePeer {
            node: gone.key.clone(),
            raft_id: 4,
            tombstone: false,
        }]
    );
    // another site does nothing
    i.me = "org2/b".into();
    assert_eq!(plan(&i, &cluster), []);
}

#[test]
fn a_new_enode_id_replaces_the_old_member() {
    let a = node("org1", "n1", 1);
    let old = node("org3", "n2", 2);
    let new = RaftNode {
        enode_id: fedgw_tests::enode_id(22),
        ..old.clone()
    };
    let mut i = inputs("org1/a", vec![a.clone(), new.clone()]);
    i.published = [(a.key.clone(), 1), (new.key.clone(), 2)].into();
    i.replaced = [(new.key.clone(), 2)].into();
    assert_eq!(
        plan(&i, &[peer(1, &a), peer(2, &old)]),
        [
            Action::RemovePeer {
                node: new.key.clone(),
                raft_id: 2,
                tombstone: false,
            },
            Action::AddPeer {
                node: new.key.clone(),
                enode_url: new.enode_url("fedgw"),
            }
        ]
    );
    // the old member left, the add failed: the add again, no second removal
    assert_eq!(
        plan(&i, &[peer(1, &a)]),
        [Action::AddPeer {
            node: new.key.clone(),
            enode_url: new.enode_url("fedgw"),
        }]
    );
    // added: the new id is published
    assert_eq!(
        plan(&i, &[peer(1, &a), peer(3, &new)]),
        [Action::Publish {
            node: new.key.clone(),
            raft_id: 3
        }]
    );
}

#[test]
fn backoff_doubles_to_a_bound() {
    assert_eq!(backoff(0), Duration::from_secs(1));
    assert_eq!(backoff(3), Duration::from_secs(8));
    assert_eq!(backoff(9), Duration::from_secs(300));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
}

#[test]
fn join_arguments() {
    assert_eq!(join_args(5), "--raftjoinexisting 5 --raftdnsenable");
}
