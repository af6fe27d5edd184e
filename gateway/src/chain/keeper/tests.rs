//! The keeper against the scripted GoQuorum fake (`tests/src/rpcfake.rs`): real loopback
//! sockets, so time is not paused; backoff is driven by the `now` each pass is given.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fedgw_tests::rpcfake::{Cue, RaftRpcFake};

use super::*;

/// Raft records as the view would hold them after the keepers published them.
#[derive(Default)]
struct Board {
    ids: Mutex<BTreeMap<NodeKey, u16>>,
    /// The enode id each raft record names, hex.
    enodes: Mutex<BTreeMap<NodeKey, String>>,
    deleted: Mutex<Vec<NodeKey>>,
    /// Publishing fails (the gateway stops before the record is written).
    fail: AtomicBool,
}

impl Board {
    fn ids(&self) -> BTreeMap<NodeKey, u16> {
        self.ids.lock().expect("lock").clone()
    }
}

impl RaftRecords for Board {
    async fn publish_raft(
        &self,
        node: &NodeKey,
        raft_id: u16,
        enode_id: Vec<u8>,
    ) -> Result<(), PublishError> {
        assert_eq!(enode_id.len(), 64);
        if self.fail.load(Ordering::SeqCst) {
            return Err(PublishError::EmptyBody);
        }
        self.ids.lock().expect("lock").insert(node.clone(), raft_id);
        let hex: String = enode_id.iter().map(|b| format!("{b:02x}")).collect();
        self.enodes.lock().expect("lock").insert(node.clone(), hex);
        Ok(())
    }

    async fn delete_raft(&self, node: &NodeKey) -> Result<(), PublishError> {
        self.ids.lock().expect("lock").remove(node);
        self.deleted.lock().expect("lock").push(node.clone());
        Ok(())
    }
}

fn node(org: &str, name: &str, n: u64) -> RaftNode {
    RaftNode {
        key: NodeKey::new(org, name),
        enode_id: fedgw_tests::enode_id(n),
        p2p_port: 30303,
        raft_port: 50400,
        learner: false,
    }
}

/// A cluster with org1/n0 (raft id 1) and a new node org3/n9 registered.
fn world() -> (RaftRpcFake, Vec<RaftNode>) {
    let fake = RaftRpcFake::start().expect("fake");
    let n0 = node("org1", "n0", 1);
    fake.add_member(&n0.enode_id, "n0.org1.fedgw", 50400);
    (fake, vec![n0, node("org3", "n9", 9)])
}

fn inputs(me: &str, adders: &[&str], nodes: &[RaftNode], board: &Board) -> Inputs {
    let ids = board.ids();
    let live: BTreeSet<&NodeKey> = nodes.iter().map(|n| &n.key).collect();
    Inputs {
        domain: "fedgw".into(),
        me: me.into(),
        adders: adders.iter().map(|s| (*s).to_owned()).collect(),
        nodes: nodes.to_vec(),
        published: ids
            .iter()
            .filter(|(k, _)| live.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        removed: ids
            .iter()
            .filter(|(k, _)| !live.contains(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        replaced: board
            .enodes
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(k, e)| {
                let now = nodes.iter().find(|n| n.key == *k)?;
                (now.enode_id != *e).then_some(())?;
                Some((k.clone(), *ids.get(k)?))
            })
            .collect(),
        revoked: BTreeSet::new(),
        caught_up: BTreeSet::new(),
    }
}

/// One pass of `k` as site `me`, with the view `board` and `nodes` give, against `fake`.
async fn run(
    k: &mut Raft,
    me: &str,
    adders: &[&str],
    fake: &RaftRpcFake,
    nodes: &[RaftNode],
    board: &Board,
    at: Instant,
) {
    k.pass(
        &inputs(me, adders, nodes, board),
        &[client(fake)],
        board,
        at,
    )
    .await;
}

/// [`run`] as the only adding site, org1/a.
async fn run_a(k: &mut Raft, fake: &RaftRpcFake, nodes: &[RaftNode], board: &Board, at: Instant) {
    run(k, "org1/a", &["org1/a"], fake, nodes, board, at).await;
}

fn client(fake: &RaftRpcFake) -> RpcClient {
    RpcClient::new(fake.url().parse().expect("url")).with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn two_sites_that_can_add_add_each_new_node_once() {
    let (fake, nodes) = world();
    let board = Board::default();
    let adders = ["org1/a", "org2/b"];
    let (mut a, mut b) = (Raft::default(), Raft::default());
    let now = Instant::now();
    for _ in 0..3 {
        run(&mut a, "org1/a", &adders, &fake, &nodes, &board, now).await;
        run(&mut b, "org2/b", &adders, &fake, &nodes, &board, now).await;
    }
    assert_eq!(
        fake.calls("raft_addPeer").len(),
        1,
        "{:?}",
        fake.all_calls()
    );
    assert_eq!(
        board.ids(),
        [
            (NodeKey::new("org1", "n0"), 1),
            (NodeKey::new("org3", "n9"), 2)
        ]
        .into()
    );
    // b never acted: it made no raft call at all
    assert!(b.handle.snapshot().pending.is_empty());
    assert!(!b.handle.snapshot().acting && a.handle.snapshot().acting);
    // b had not yet seen a's flag: it acts too, reads n9 in the cluster, and adds nothing
    run(&mut b, "org2/b", &["org2/b"], &fake, &nodes, &board, now).await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1);
}

#[tokio::test]
async fn a_refused_duplicate_add_counts_as_added() {
    let (fake, nodes) = world();
    let board = Board::default();
    board
        .ids
        .lock()
        .expect("lock")
        .insert(nodes[0].key.clone(), 1);
    // another site added n9 after this one read a stale cluster
    let stale = serde_json::Value::Array(fake.cluster());
    let id = fake.add_member(&nodes[1].enode_id, "n9.org3.fedgw", 50400);
    fake.cue("raft_cluster", Cue::Result(stale));
    let mut k = Raft::default();
    run(
        &mut k,
        "org2/b",
        &["org2/b"],
        &fake,
        &nodes,
        &board,
        Instant::now(),
    )
    .await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1);
    assert_eq!(
        board.ids().get(&nodes[1].key),
        Some(&u16::try_from(id).expect("id"))
    );
    assert!(
        k.handle.snapshot().pending.is_empty(),
        "{:?}",
        k.handle.snapshot()
    );
}

#[tokio::test]
async fn a_restart_between_the_add_and_the_record_publishes_without_adding_again() {
    let (fake, nodes) = world();
    let board = Board::default();
    board.fail.store(true, Ordering::SeqCst);
    let adders = ["org1/a"];
    let mut before = Raft::default();
    run(
        &mut before,
        "org1/a",
        &adders,
        &fake,
        &nodes,
        &board,
        Instant::now(),
    )
    .await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1);
    assert!(board.ids().is_empty());
    drop(before);
    // the gateway comes back with no memory of the add
    board.fail.store(false, Ordering::SeqCst);
    let mut after = Raft::default();
    run(
        &mut after,
        "org1/a",
        &adders,
        &fake,
        &nodes,
        &board,
        Instant::now(),
    )
    .await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1, "no second add");
    assert_eq!(board.ids().get(&nodes[1].key), Some(&2));
    assert!(after.handle.snapshot().pending.is_empty());
}

#[tokio::test]
async fn removing_a_raft_member_calls_remove_peer_once() {
    let (fake, nodes) = world();
    let n9 = &nodes[1];
    let id = fake.add_member(&n9.enode_id, "n9.org3.fedgw", 50400);
    let board = Board::default();
    board.ids.lock().expect("lock").extend([
        (nodes[0].key.clone(), 1),
        (n9.key.clone(), u16::try_from(id).expect("id")),
    ]);
    // n9's record is deleted: only n0 is registered
    let registered = &nodes[..1];
    let mut k = Raft::default();
    for _ in 0..3 {
        run(
            &mut k,
            "org1/a",
            &["org1/a"],
            &fake,
            registered,
            &board,
            Instant::now(),
        )
        .await;
    }
    let removes = fake.calls("raft_removePeer");
    assert_eq!(removes.len(), 1);
    assert_eq!(removes[0].params, serde_json::json!([id]));
    assert_eq!(fake.cluster().len(), 1);
    assert_eq!(*board.deleted.lock().expect("lock"), vec![n9.key.clone()]);
    assert!(fake.calls("raft_addPeer").is_empty());
}

#[tokio::test]
async fn an_endpoint_down_is_retried_with_backoff_and_the_error_shows_meanwhile() {
    let (fake, nodes) = world();
    let board = Board::default();
    let handle = KeeperHandle::default();
    let mut k = Raft::new(handle.clone());
    let t0 = Instant::now();
    fake.set_down(true);
    run_a(&mut k, &fake, &nodes, &board, t0).await;
    let snap = handle.snapshot();
    let err = snap.last_error.expect("error shown");
    assert!(err.contains("RPC"), "{err}");
    assert_eq!(k.next_due(), Some(t0 + Duration::from_secs(1)));
    // status shows it too, with the node's own RPC error
    let local = vec![crate::chain::status::LocalNode {
        name: "n0".into(),
        url: fake.url().parse().expect("url"),
        enode_id: Some(nodes[0].enode_id.clone()),
        validator: None,
    }];
    let status = crate::chain::status::read(
        Consensus::Raft,
        local.clone(),
        &handle,
        &Default::default(),
        &Metrics::new(),
    )
    .await;
    assert_eq!(status.last_error, err);
    assert!(!status.nodes[0].error.is_empty());
    fake.set_down(false);
    // not before the backoff
    run_a(
        &mut k,
        &fake,
        &nodes,
        &board,
        t0 + Duration::from_millis(500),
    )
    .await;
    assert!(fake.calls("raft_cluster").is_empty());
    assert!(handle.snapshot().last_error.is_some());
    run_a(&mut k, &fake, &nodes, &board, t0 + Duration::from_secs(1)).await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1);
    assert!(handle.snapshot().last_error.is_none());
    assert_eq!(board.ids().len(), 2);

    // an add the node refuses: pending with its error until the retry succeeds
    let n5 = node("org3", "n5", 5);
    let nodes: Vec<RaftNode> = nodes.iter().cloned().chain([n5.clone()]).collect();
    fake.cue("raft_addPeer", Cue::Error("raft not ready".into()));
    let t1 = t0 + Duration::from_secs(10);
    run_a(&mut k, &fake, &nodes, &board, t1).await;
    let p = handle
        .snapshot()
        .pending
        .get(&n5.key)
        .cloned()
        .expect("pending");
    assert_eq!((p.action, p.failures), ("add", 1));
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("raft not ready")),
        "{p:?}"
    );
    let status = crate::chain::status::read(
        Consensus::Raft,
        local,
        &handle,
        &Default::default(),
        &Metrics::new(),
    )
    .await;
    assert_eq!(status.pending.len(), 1);
    assert!(status.pending[0].last_error.contains("raft not ready"));
    assert_eq!(status.nodes[0].raft_id, 1);
    assert_eq!(status.nodes[0].block_number, 7);
    run_a(
        &mut k,
        &fake,
        &nodes,
        &board,
        t1 + Duration::from_millis(900),
    )
    .await;
    assert_eq!(fake.calls("raft_addPeer").len(), 2, "not retried early");
    run_a(&mut k, &fake, &nodes, &board, t1 + Duration::from_secs(1)).await;
    assert_eq!(fake.calls("raft_addPeer").len(), 3);
    assert!(handle.snapshot().pending.is_empty());
    assert_eq!(board.ids().get(&n5.key), Some(&3));
}

#[tokio::test]
async fn garbage_huge_and_silent_answers_are_bounded_and_reported() {
    let (fake, nodes) = world();
    let board = Board::default();
    let bounded = RpcClient::new(fake.url().parse().expect("url"))
        .with_timeout(Duration::from_millis(300))
        .with_max_body(64 * 1024);
    for (cue, says) in [
        (Cue::Garbage, "not a JSON-RPC 2.0 response"),
        (Cue::Huge(4 << 20), "larger than 65536 bytes"),
        (Cue::Hang, "timed out"),
    ] {
        fake.cue("raft_cluster", cue);
        let mut k = Raft::default();
        let started = std::time::Instant::now();
        k.pass(
            &inputs("org1/a", &["org1/a"], &nodes, &board),
            std::slice::from_ref(&bounded),
            &board,
            Instant::now(),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{says}: unbounded"
        );
        let err = k.handle.snapshot().last_error.expect("reported");
        assert!(err.contains(says), "{err}");
        assert!(fake.calls("raft_addPeer").is_empty());
    }
}

/// A learner registered here (its RPC endpoint on its own fake): added with `raft_addLearner`,
/// promoted only once the cluster lists it active and its height is within the bound of the
/// member's, and promoted once.
#[tokio::test]
async fn a_learner_is_promoted_once_only_after_it_caught_up() {
    let (fake, mut nodes) = world();
    nodes[1].learner = true;
    let learner_rpc = RaftRpcFake::start().expect("learner fake");
    fake.set_block(100);
    learner_rpc.set_block(10);
    let board = Board::default();
    let mut k = Raft::default();
    let learners = [(nodes[1].key.clone(), client(&learner_rpc))];
    async fn pass(
        k: &mut Raft,
        fake: &RaftRpcFake,
        nodes: &[RaftNode],
        learners: &[(NodeKey, RpcClient)],
        board: &Board,
    ) {
        let i = inputs("org1/a", &["org1/a"], nodes, board);
        k.pass_with_learners(&i, &[client(fake)], learners, board, Instant::now())
            .await;
    }
    pass(&mut k, &fake, &nodes, &learners, &board).await;
    assert!(fake.calls("raft_addPeer").is_empty());
    assert_eq!(fake.calls("raft_addLearner").len(), 1);
    assert_eq!(
        board.ids().get(&nodes[1].key),
        Some(&2),
        "its id is published"
    );
    // not active yet, then active but 90 blocks behind: no promotion
    pass(&mut k, &fake, &nodes, &learners, &board).await;
    fake.set_active(&nodes[1].enode_id, true);
    pass(&mut k, &fake, &nodes, &learners, &board).await;
    assert!(fake.calls("raft_promoteToPeer").is_empty());
    assert!(
        !learner_rpc.calls("eth_blockNumber").is_empty(),
        "its height was read"
    );
    // within the bound: promoted, once
    learner_rpc.set_block(100 - crate::chain::raft::LEARNER_MAX_LAG);
    pass(&mut k, &fake, &nodes, &learners, &board).await;
    pass(&mut k, &fake, &nodes, &learners, &board).await;
    let promotes = fake.calls("raft_promoteToPeer");
    assert_eq!(promotes.len(), 1, "{:?}", fake.all_calls());
    assert_eq!(promotes[0].params, serde_json::json!([2]));
    assert!(fake.cluster().iter().all(|p| p["role"] != "learner"));
    assert!(k.handle.snapshot().pending.is_empty());
}

/// A learner at another site: promoted once the cluster lists it active.
#[tokio::test]
async fn a_remote_learner_is_promoted_once_the_cluster_lists_it_active() {
    let (fake, mut nodes) = world();
    nodes[1].learner = true;
    let board = Board::default();
    let mut k = Raft::default();
    for _ in 0..2 {
        run_a(&mut k, &fake, &nodes, &board, Instant::now()).await;
    }
    assert_eq!(fake.calls("raft_addLearner").len(), 1);
    assert!(fake.calls("raft_promoteToPeer").is_empty());
    fake.set_active(&nodes[1].enode_id, true);
    for _ in 0..2 {
        run_a(&mut k, &fake, &nodes, &board, Instant::now()).await;
    }
    assert_eq!(fake.calls("raft_promoteToPeer").len(), 1);
}

/// Org3 revoked: the view holds none of its records, so its member is found by host name and
/// removed once, by the acting site only, with no record published about the revoked org.
#[tokio::test]
async fn a_revoked_orgs_member_is_removed_exactly_once() {
    let (fake, nodes) = world();
    let n9 = &nodes[1];
    fake.add_member(&n9.enode_id, "n9.org3.fedgw", 50400);
    let board = Board::default();
    board
        .ids
        .lock()
        .expect("lock")
        .insert(nodes[0].key.clone(), 1);
    // org3's node and raft record are gone from the view
    let registered = &nodes[..1];
    let adders = ["org1/a", "org2/b"];
    let (mut a, mut b) = (Raft::default(), Raft::default());
    for _ in 0..3 {
        for (k, me) in [(&mut a, "org1/a"), (&mut b, "org2/b")] {
            let mut i = inputs(me, &adders, registered, &board);
            i.revoked.insert("org3".into());
            k.pass(&i, &[client(&fake)], &board, Instant::now()).await;
        }
    }
    let removes = fake.calls("raft_removePeer");
    assert_eq!(removes.len(), 1, "{:?}", fake.all_calls());
    assert_eq!(removes[0].params, serde_json::json!([2]));
    assert_eq!(fake.cluster().len(), 1);
    assert!(board.deleted.lock().expect("lock").is_empty());
    assert_eq!(board.ids().len(), 1);
}

/// n9 re-registered with another key: its old member is removed (no tombstone), the new enode
/// added and the new id published, each once.
#[tokio::test]
async fn a_new_enode_id_replaces_the_member_and_republishes() {
    let (fake, nodes) = world();
    let board = Board::default();
    let mut k = Raft::default();
    run_a(&mut k, &fake, &nodes, &board, Instant::now()).await;
    assert_eq!(board.ids().get(&nodes[1].key), Some(&2));
    let mut renewed = nodes.clone();
    renewed[1].enode_id = fedgw_tests::enode_id(99);
    for _ in 0..3 {
        run_a(&mut k, &fake, &renewed, &board, Instant::now()).await;
    }
    let removes = fake.calls("raft_removePeer");
    assert_eq!(removes.len(), 1, "{:?}", fake.all_calls());
    assert_eq!(removes[0].params, serde_json::json!([2]));
    let adds = fake.calls("raft_addPeer");
    assert_eq!(adds.len(), 2);
    assert_eq!(
        adds[1].params,
        serde_json::json!([renewed[1].enode_url("fedgw")])
    );
    assert_eq!(board.ids().get(&nodes[1].key), Some(&3));
    assert_eq!(
        board.enodes.lock().expect("lock").get(&nodes[1].key),
        Some(&renewed[1].enode_id)
    );
    assert!(board.deleted.lock().expect("lock").is_empty());
    let ids: Vec<u64> = fake
        .cluster()
        .iter()
        .filter_map(|p| p["raftId"].as_u64())
        .collect();
    assert_eq!(ids, [1, 3]);
}

/// A `raft_addPeer` the node carries out only after the keeper gave up on it (GoQuorum
/// resolving the new peer's name inside the call): no second add before [`ADD_SETTLE`], by
/// which time `raft_cluster` lists the late one, so the node gets exactly one raft id.
#[tokio::test]
async fn an_add_that_timed_out_is_not_repeated_before_the_cluster_can_show_it() {
    let (fake, nodes) = world();
    let board = Board::default();
    let impatient =
        RpcClient::new(fake.url().parse().expect("url")).with_timeout(Duration::from_millis(300));
    fake.cue("raft_addPeer", Cue::Late(Duration::from_millis(1500)));
    let mut k = Raft::default();
    let t0 = Instant::now();
    let pass = async |k: &mut Raft, at: Instant| {
        k.pass(
            &inputs("org1/a", &["org1/a"], &nodes, &board),
            std::slice::from_ref(&impatient),
            &board,
            at,
        )
        .await;
    };
    pass(&mut k, t0).await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1);
    let pending = k.handle.snapshot().pending;
    let error = pending
        .get(&nodes[1].key)
        .and_then(|p| p.last_error.clone());
    assert!(
        error.is_some_and(|e| e.contains("timed out")),
        "{pending:?}"
    );
    // the usual backoff (1 s) has passed, the late add has not landed yet: held
    pass(&mut k, t0 + Duration::from_secs(2)).await;
    assert_eq!(fake.calls("raft_addPeer").len(), 1, "added again too early");
    // the node carries the first call out
    let listed = std::time::Instant::now() + Duration::from_secs(10);
    while !fake.cluster().iter().any(|p| {
        p["nodeId"]
            .as_str()
            .is_some_and(|id| id.eq_ignore_ascii_case(&nodes[1].enode_id))
    }) {
        assert!(
            std::time::Instant::now() < listed,
            "the late add never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pass(&mut k, t0 + ADD_SETTLE).await;
    assert_eq!(
        fake.calls("raft_addPeer").len(),
        1,
        "{:?}",
        fake.all_calls()
    );
    assert_eq!(board.ids().get(&nodes[1].key), Some(&2));
    assert!(k.handle.snapshot().pending.is_empty());
}
