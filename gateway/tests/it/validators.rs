//! QBFT validator votes end to end: two orgs' `fedgw run`, each with a validator node on one
//! shared chain (the RPC fake), admission `all`. A proposal waits for every org's approval,
//! then both sites vote, the set changes, the votes are discarded and the proposal closes.

use std::path::Path;
use std::time::Duration;

use fedgw_proto::enode::EnodeId;
use fedgw_tests::rpcfake::RaftRpcFake;

use crate::chain::{chain_status, init_org1, metric, node};
use crate::common::procs::{NET, fast, fedgw, s};

const WAIT: Duration = Duration::from_secs(30);

fn address(n: u64) -> String {
    let key: [u8; 64] = fedgw_tests::enode_key(n).try_into().expect("64 bytes");
    EnodeId::from_bytes(key).address().to_string()
}

fn enode(n: u64) -> String {
    format!(
        "enode://{}@127.0.0.1:{}?discport=0",
        fedgw_tests::enode_id(n),
        30300 + n
    )
}

/// Invites org2 at the running gateway in `a`, approves its join there (admission `all` with
/// one member) and joins it into `b`.
fn join_org2_approved(a: &Path, b: &Path) {
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(a)])
        .expect("spawn")
        .ok()
        .expect("invite")
        .stdout
        .trim()
        .to_owned();
    fedgw()
        .run(["approve", "org2", "--data-dir", &s(a)])
        .expect("spawn")
        .ok()
        .expect("approve the join");
    let db = s(b);
    let mut join = vec![
        "join",
        &token,
        "--org",
        "org2",
        "--data-dir",
        &db,
        "--timeout",
        "10s",
    ];
    join.extend(NET);
    fedgw().run(join).expect("spawn").ok().expect("join");
    fast(b);
}

fn chain(dir: &Path, args: &[&str]) -> String {
    let d = s(dir);
    let mut all = vec!["chain"];
    all.extend(args);
    all.extend(["--data-dir", &d]);
    fedgw()
        .run(&all)
        .expect("spawn")
        .ok()
        .expect("chain command")
        .stdout
}

#[test]
fn two_orgs_add_a_validator_after_both_approve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("org1"), tmp.path().join("org2"));
    init_org1(&a, &["--consensus", "qbft", "--admission", "all"]);
    fast(&a);
    let gw1 = fedgw().start(&a).expect("org1 starts");
    join_org2_approved(&a, &b);
    let gw2 = fedgw().start(&b).expect("org2 starts");

    let chain_fake = RaftRpcFake::start().expect("fake");
    chain_fake.set_validators(&[&address(1), &address(2)]);
    let v1 = chain_fake.validator_node(&address(1)).expect("v1");
    let v2 = chain_fake.validator_node(&address(2)).expect("v2");
    node(&a, &["add", "v1", "--enode", &enode(1), "--rpc", &v1.url()]);
    node(
        &b,
        &[
            "add",
            "v2",
            "--client",
            "besu",
            "--enode",
            &enode(2),
            "--rpc",
            &v2.url(),
        ],
    );
    node(&b, &["add", "v9", "--client", "besu", "--enode", &enode(9)]);
    fedgw_tests::wait_for("org1 sees org2/v9", WAIT, || {
        crate::chain::nodes_of(&a)
            .iter()
            .any(|n| n["org"] == "org2" && n["name"] == "v9")
            .then_some(())
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(a.with_extension("log")).unwrap_or_default();
        panic!("{e}: {:?}\n{log}", crate::chain::nodes_of(&a))
    });

    let out = chain(&b, &["validator", "add", "org2/v9"]);
    assert!(out.contains("needs 2 approval(s)"), "{out}");
    // both sites' keepers passed with the proposal in view, one approval of two: no vote
    for dir in [&a, &b] {
        let st = fedgw_tests::wait_for("the proposal shows", WAIT, || {
            let st = chain_status(dir);
            (st["proposals"][0]["node"] == "org2/v9" && st["nodes"][0]["validator"] == "yes")
                .then_some(st)
        })
        .expect("proposal shown");
        assert_eq!(st["proposals"][0]["approvals"], serde_json::json!(["org2"]));
        assert_eq!(st["proposals"][0]["needed"], 2);
        assert_eq!(st["proposals"][0]["progress"], "waiting for approvals");
    }
    assert!(chain_fake.calls("istanbul_propose").is_empty());
    assert!(chain_fake.calls("qbft_proposeValidatorVote").is_empty());

    let out = chain(&a, &["approve", "org2/v9"]);
    assert!(out.contains("2 of 2"), "{out}");
    fedgw_tests::wait_for("v9 joins the validator set", WAIT, || {
        chain_fake.validators().contains(&address(9)).then_some(())
    })
    .expect("added");
    assert_eq!(chain_fake.calls("istanbul_propose").len(), 1);
    assert_eq!(
        chain_fake.calls("qbft_proposeValidatorVote")[0].params,
        serde_json::json!([address(9), true])
    );
    // the votes go and org2 closes its proposal
    fedgw_tests::wait_for("votes discarded, proposal closed", WAIT, || {
        (chain_fake.votes_of(&address(1)).is_empty()
            && chain_fake.votes_of(&address(2)).is_empty()
            && chain_status(&a)["proposals"]
                .as_array()
                .is_some_and(Vec::is_empty)
            && chain_status(&b)["proposals"]
                .as_array()
                .is_some_and(Vec::is_empty))
        .then_some(())
    })
    .expect("closed");
    assert_eq!(
        metric(
            &gw1,
            r#"fedgw_chain_rpc_calls_total{method="istanbul_propose",result="ok"}"#
        ),
        1
    );
    drop((gw1, gw2));
}
