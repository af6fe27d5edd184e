//! The plan as a pure function, then [`Votes::pass`] against the scripted fake
//! (`tests/src/rpcfake.rs`): three orgs' nodes on one QBFT chain, real loopback sockets, backoff
//! driven by the `now` each pass is given.

use fedgw_tests::rpcfake::{Cue, RaftRpcFake};

use super::*;

fn id(n: u64) -> EnodeId {
    let bytes: [u8; 64] = fedgw_tests::enode_key(n).try_into().expect("64 bytes");
    EnodeId::from_bytes(bytes)
}

fn addr(n: u64) -> Address {
    id(n).address()
}

fn proposal(node: u64, add: bool, approvals: &[&str], needed: usize) -> Proposal {
    Proposal {
        node: NodeKey::new("org3", format!("n{node}")),
        seq: 10,
        add,
        address: addr(node),
        proposer: "org3".into(),
        approvals: approvals.iter().map(|s| (*s).to_owned()).collect(),
        needed,
    }
}

fn set(nodes: &[u64]) -> BTreeSet<Address> {
    nodes.iter().map(|n| addr(*n)).collect()
}

#[test]
fn thresholds_follow_the_admission_policy() {
    assert_eq!(approvals_needed(Admission::Operator, 3), 1);
    assert_eq!(approvals_needed(Admission::Majority, 3), 2);
    assert_eq!(approvals_needed(Admission::Majority, 4), 3);
    assert_eq!(approvals_needed(Admission::All, 3), 3);
}

#[test]
fn no_vote_before_the_approvals_are_reached() {
    let read = NodeRead {
        validators: set(&[1, 2]),
        pending: BTreeMap::new(),
    };
    let owned = set(&[1, 2, 9]);
    let short = proposal(9, true, &["org3", "org1"], 3);
    assert_eq!(plan(addr(1), &read, &[short], &owned), vec![]);
    let enough = proposal(9, true, &["org1", "org2", "org3"], 3);
    assert_eq!(
        plan(addr(1), &read, std::slice::from_ref(&enough), &owned),
        vec![Action::Propose {
            address: addr(9),
            auth: true
        }]
    );
    // a node outside the set does not vote: its vote would not count
    assert_eq!(plan(addr(5), &read, &[enough], &owned), vec![]);
}

#[test]
fn a_held_vote_is_not_cast_again_and_is_discarded_once_the_change_shows() {
    let p = proposal(9, true, &["org1", "org2", "org3"], 3);
    let owned = set(&[1, 2, 9]);
    let mut read = NodeRead {
        validators: set(&[1, 2]),
        pending: BTreeMap::from([(addr(9), true)]),
    };
    assert_eq!(
        plan(addr(1), &read, std::slice::from_ref(&p), &owned),
        vec![]
    );
    read.validators.insert(addr(9));
    assert_eq!(
        plan(addr(1), &read, &[p], &owned),
        vec![Action::Discard { address: addr(9) }]
    );
    // a withdrawn proposal: the vote goes too; a vote about a node fedgw does not know stays
    read.pending.insert(addr(77), false);
    assert_eq!(
        plan(addr(1), &read, &[], &owned),
        vec![Action::Discard { address: addr(9) }]
    );
}

#[test]
fn a_removal_turns_a_held_add_vote_around() {
    let p = proposal(2, false, &["org1", "org2"], 2);
    let read = NodeRead {
        validators: set(&[1, 2, 3]),
        pending: BTreeMap::from([(addr(2), true)]),
    };
    assert_eq!(
        plan(addr(1), &read, &[p], &set(&[1, 2, 3])),
        vec![Action::Propose {
            address: addr(2),
            auth: false
        }]
    );
}

#[test]
fn dialects_follow_client_and_consensus() {
    use pb::ClientKind as C;
    assert_eq!(
        Dialect::of(C::Goquorum, Consensus::Qbft),
        Some(Dialect::Istanbul)
    );
    assert_eq!(
        Dialect::of(C::Goquorum, Consensus::Ibft),
        Some(Dialect::Istanbul)
    );
    assert_eq!(
        Dialect::of(C::Besu, Consensus::Qbft),
        Some(Dialect::BesuQbft)
    );
    assert_eq!(
        Dialect::of(C::Besu, Consensus::Ibft),
        Some(Dialect::BesuIbft)
    );
    assert_eq!(Dialect::of(C::Besu, Consensus::Raft), None);
    assert_eq!(Dialect::of(C::Tessera, Consensus::Qbft), None);
}

/// One org's site: a keeper and its local validator on the shared chain.
struct Site {
    votes: Votes,
    handle: VotesHandle,
    node: RaftRpcFake,
    local: LocalValidator,
}

fn site(chain: &RaftRpcFake, n: u64, dialect: Dialect) -> Site {
    let node = chain
        .validator_node(&addr(n).to_string())
        .expect("endpoint");
    let client = RpcClient::new(node.url().parse().expect("url"))
        .with_timeout(std::time::Duration::from_secs(2))
        .with_max_body(64 * 1024);
    let handle = VotesHandle::default();
    Site {
        votes: Votes::new(handle.clone()),
        handle,
        local: LocalValidator {
            name: format!("n{n}"),
            address: addr(n),
            dialect,
            client,
        },
        node,
    }
}

impl Site {
    async fn pass(&mut self, proposals: &[Proposal], now: Instant) -> BTreeSet<NodeKey> {
        let owned = set(&[1, 2, 3, 9]);
        let locals = [self.local.clone()];
        self.votes.pass(proposals, &owned, &locals, now).await
    }
}

/// Three orgs, one validator each (GoQuorum, Besu QBFT, GoQuorum); org3 proposes n9. Under
/// `all`, the votes start only once every org approved; the set changes once two of three
/// validators voted (more than half); each node then discards its vote.
#[tokio::test]
async fn three_orgs_add_a_validator_only_after_the_threshold() {
    let chain = RaftRpcFake::start().expect("fake");
    chain.set_validators(&[
        &addr(1).to_string(),
        &addr(2).to_string(),
        &addr(3).to_string(),
    ]);
    let mut sites = [
        site(&chain, 1, Dialect::Istanbul),
        site(&chain, 2, Dialect::BesuQbft),
        site(&chain, 3, Dialect::Istanbul),
    ];
    let now = Instant::now();
    let short = proposal(9, true, &["org2", "org3"], 3);
    for s in &mut sites {
        s.pass(std::slice::from_ref(&short), now).await;
    }
    assert!(chain.calls("istanbul_propose").is_empty());
    assert!(chain.calls("qbft_proposeValidatorVote").is_empty());
    let snap = sites[0].handle.snapshot();
    assert_eq!(snap.nodes["n1"].validator, Some(true));
    assert_eq!(snap.proposals[0].approvals.len(), 2);

    let full = proposal(9, true, &["org1", "org2", "org3"], 3);
    let applied = sites[0].pass(std::slice::from_ref(&full), now).await;
    assert!(
        applied.is_empty(),
        "one vote of three does not change the set"
    );
    assert_eq!(chain.votes_of(&addr(1).to_string()).len(), 1);
    sites[1].pass(std::slice::from_ref(&full), now).await;
    assert!(chain.validators().contains(&addr(9).to_string()));
    assert_eq!(
        chain.calls("qbft_proposeValidatorVote")[0].params,
        serde_json::json!([addr(9).to_string(), true])
    );
    // the next pass of each site sees the change and drops the votes its node holds
    for s in &mut sites {
        let applied = s.pass(std::slice::from_ref(&full), now).await;
        assert!(applied.contains(&full.node));
        assert!(s.node.address() == s.local.address.to_string());
        assert!(chain.votes_of(s.node.address()).is_empty());
    }
    assert_eq!(chain.calls("istanbul_discard").len(), 1);
    assert_eq!(chain.calls("qbft_discardValidatorVote").len(), 1);
    assert!(
        chain.calls("istanbul_propose").len() == 1,
        "site 3 never voted"
    );
}

/// A removal approved by two of three orgs (majority): n3 leaves once n1 and n2 voted.
#[tokio::test]
async fn a_validator_is_removed() {
    let chain = RaftRpcFake::start().expect("fake");
    chain.set_validators(&[
        &addr(1).to_string(),
        &addr(2).to_string(),
        &addr(3).to_string(),
    ]);
    let mut a = site(&chain, 1, Dialect::BesuIbft);
    let mut b = site(&chain, 2, Dialect::BesuIbft);
    let p = proposal(3, false, &["org1", "org2"], 2);
    let now = Instant::now();
    a.pass(std::slice::from_ref(&p), now).await;
    b.pass(std::slice::from_ref(&p), now).await;
    assert_eq!(
        chain.validators(),
        vec![addr(1).to_string(), addr(2).to_string()]
    );
    assert!(
        a.pass(std::slice::from_ref(&p), now)
            .await
            .contains(&p.node)
    );
    assert!(chain.votes_of(&addr(1).to_string()).is_empty());
    assert_eq!(chain.calls("ibft_discardValidatorVote").len(), 1);
}

/// The endpoint down: the error shows, no retry before the backoff, the vote once it is back.
#[tokio::test]
async fn an_endpoint_down_then_back() {
    let chain = RaftRpcFake::start().expect("fake");
    chain.set_validators(&[&addr(1).to_string(), &addr(2).to_string()]);
    let mut s = site(&chain, 1, Dialect::Istanbul);
    let p = proposal(9, true, &["org1"], 1);
    let now = Instant::now();
    chain.set_down(true);
    s.pass(std::slice::from_ref(&p), now).await;
    let snap = s.handle.snapshot();
    let state = &snap.nodes["n1"];
    assert_eq!(state.failures, 1);
    assert!(state.last_error.is_some());
    assert_eq!(state.validator, None);
    assert_eq!(
        s.votes.next_due(),
        Some(now + super::super::raft::backoff(0))
    );
    chain.set_down(false);
    s.pass(std::slice::from_ref(&p), now).await;
    assert!(
        chain.calls("istanbul_propose").is_empty(),
        "waits for its retry"
    );
    s.pass(
        std::slice::from_ref(&p),
        now + std::time::Duration::from_secs(2),
    )
    .await;
    assert_eq!(chain.calls("istanbul_propose").len(), 1);
    let snap = s.handle.snapshot();
    assert_eq!(snap.nodes["n1"].failures, 0);
    assert_eq!(snap.nodes["n1"].pending.get(&addr(9)), Some(&true));
}

/// Garbage, a body over the cap, a set over [`MAX_SET`] and a remote error each fail the pass
/// for that node, with no vote cast.
#[tokio::test]
async fn garbage_and_huge_answers_are_bounded() {
    let chain = RaftRpcFake::start().expect("fake");
    chain.set_validators(&[&addr(1).to_string()]);
    let mut s = site(&chain, 1, Dialect::Istanbul);
    let p = proposal(9, true, &["org1"], 1);
    let too_many: Vec<String> = (0..=MAX_SET).map(|i| format!("0x{i:040x}")).collect();
    let cues = [
        Cue::Garbage,
        Cue::Huge(1 << 20),
        Cue::Result(serde_json::json!(too_many)),
        Cue::Result(serde_json::json!(["0xnot-an-address"])),
        Cue::Error("istanbul is not enabled".into()),
    ];
    let mut now = Instant::now();
    for cue in cues {
        chain.cue("istanbul_getValidators", cue);
        s.pass(std::slice::from_ref(&p), now).await;
        let snap = s.handle.snapshot();
        assert!(snap.nodes["n1"].last_error.is_some());
        now += std::time::Duration::from_secs(600);
    }
    assert!(chain.calls("istanbul_propose").is_empty());
    assert_eq!(s.handle.snapshot().nodes["n1"].failures, 5);
}
