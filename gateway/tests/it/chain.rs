//! The chain side of the `fedgw` binary end to end: the consensus declared at `init` reaches a
//! joiner, and a node's RPC endpoint stays at its own site. Real processes on loopback, port 0.

use std::path::Path;
use std::time::Duration;

use crate::common::procs::{NET, fedgw, json, s};

fn nodes(dir: &Path) -> serde_json::Value {
    json(dir, "nodes")
}

#[test]
fn consensus_reaches_the_joiner_and_rpc_endpoints_stay_home() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("org1"), tmp.path().join("org2"));
    let mut init = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--consensus",
        "raft",
    ];
    init.extend(NET);
    let da = s(&a);
    init.extend(["--data-dir", &da]);
    fedgw().run(init).expect("spawn").ok().expect("init");
    let gw1 = fedgw().start(&a).expect("org1 starts");
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &da])
        .expect("spawn")
        .ok()
        .expect("invite")
        .stdout
        .trim()
        .to_owned();
    let db = s(&b);
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
    let gw2 = fedgw().start(&b).expect("org2 starts");
    for dir in [&a, &b] {
        let run = fedgw()
            .run(["members", "--data-dir", &s(dir)])
            .expect("spawn")
            .ok()
            .expect("members");
        assert!(
            run.stdout.lines().any(|l| l == "consensus: raft"),
            "{}",
            run.stdout
        );
    }

    let enode = format!(
        "enode://{}@10.0.0.9:30303?discport=0&raftport=50400",
        fedgw_tests::enode_id(9)
    );
    // a URL fedgw cannot call is refused before anything is registered
    for bad in ["https://10.0.0.9:8545", "http://10.0.0.9", "10.0.0.9:8545"] {
        let run = fedgw()
            .run([
                "node",
                "add",
                "n1",
                "--enode",
                &enode,
                "--rpc",
                bad,
                "--data-dir",
                &da,
            ])
            .expect("spawn");
        assert_eq!(run.code, Some(64), "{bad}: {}", run.stderr);
        assert!(run.stderr.contains("--rpc"), "{}", run.stderr);
    }
    fedgw()
        .run([
            "node",
            "add",
            "n1",
            "--enode",
            &enode,
            "--rpc",
            "http://10.0.0.9:8545",
            "--data-dir",
            &da,
        ])
        .expect("spawn")
        .ok()
        .expect("node add");
    let here = nodes(&a);
    assert_eq!(here[0]["rpc"], "http://10.0.0.9:8545/", "{here}");
    let text = fedgw()
        .run(["nodes", "--data-dir", &da])
        .expect("spawn")
        .ok()
        .expect("nodes")
        .stdout;
    assert!(text.contains("rpc http://10.0.0.9:8545/"), "{text}");
    // org2 learns the node, never its endpoint
    let there = fedgw_tests::wait_for("org2 sees n1", Duration::from_secs(30), || {
        let list = nodes(&b);
        (list.as_array().is_some_and(|l| !l.is_empty())).then_some(list)
    })
    .expect("synced");
    assert_eq!(there[0]["name"], "n1");
    assert!(there[0]["rpc"].is_null(), "{there}");
    drop((gw1, gw2));
}
