//! The chain side of the `fedgw` binary end to end: the consensus declared at `init` reaches a
//! joiner, and a node's RPC endpoint stays at its own site. Real processes on loopback, port 0.

use std::path::Path;
use std::time::Duration;

use crate::common::procs::{NET, fedgw, json, s};

fn nodes(dir: &Path) -> serde_json::Value {
    json(dir, "nodes")
}

/// The nodes `fedgw nodes --json` lists in `dir`.
pub(crate) fn nodes_of(dir: &Path) -> Vec<serde_json::Value> {
    nodes(dir).as_array().cloned().unwrap_or_default()
}

/// Founds consortium `acme` (domain `acme.test`) as org1 in `a`, with `extra` init flags.
pub(crate) fn init_org1(a: &Path, extra: &[&str]) {
    let da = s(a);
    let mut init = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--data-dir",
        &da,
    ];
    init.extend(extra);
    init.extend(NET);
    fedgw().run(init).expect("spawn").ok().expect("init");
}

/// Invites org2 at the running gateway in `a` and joins it into data dir `b`.
fn join_org2(a: &Path, b: &Path) {
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(a)])
        .expect("spawn")
        .ok()
        .expect("invite")
        .stdout
        .trim()
        .to_owned();
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
}

#[test]
fn consensus_reaches_the_joiner_and_rpc_endpoints_stay_home() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("org1"), tmp.path().join("org2"));
    init_org1(&a, &["--consensus", "raft"]);
    let da = s(&a);
    let gw1 = fedgw().start(&a).expect("org1 starts");
    join_org2(&a, &b);
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

/// `fedgw node add NAME ARGS` (or `node rm NAME`) in `dir`, which must succeed.
pub(crate) fn node(dir: &Path, args: &[&str]) {
    let d = s(dir);
    let mut all = vec!["node"];
    all.extend(args);
    all.extend(["--data-dir", &d]);
    fedgw()
        .run(&all)
        .expect("spawn")
        .ok()
        .expect("node command");
}

/// The value of the metric line starting with `series` at the gateway, 0 when absent.
pub(crate) fn metric(gw: &fedgw_tests::Gateway, series: &str) -> u64 {
    let (_, body) = fedgw_tests::http_get(&gw.metrics(), "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn live_peering_follows_remote_nodes_and_survives_restarts() {
    use fedgw_tests::rpcfake::{Cue, RaftRpcFake};
    const WAIT: Duration = Duration::from_secs(30);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("org1"), tmp.path().join("org2"));
    init_org1(&a, &[]);
    crate::common::procs::fast(&a);
    let path = a.join("fedgw.toml");
    let mut c = fedgw_gateway::config::Config::load(&path).expect("config");
    c.peering.reconcile_ms = 300;
    std::fs::write(&path, c.to_toml()).expect("write");

    let mut gw1 = fedgw().start(&a).expect("org1 starts");

    // org1's nodes: a GoQuorum node, a Besu node and a Tessera node, each with its endpoint
    let (quorum, besu, tessera) = (
        RaftRpcFake::start().expect("fake"),
        RaftRpcFake::start().expect("fake"),
        RaftRpcFake::start().expect("fake"),
    );
    let enode = |n: u64, port: u16| {
        format!(
            "enode://{}@127.0.0.1:{port}?discport=0",
            fedgw_tests::enode_id(n)
        )
    };
    node(
        &a,
        &[
            "add",
            "q1",
            "--enode",
            &enode(1, 30303),
            "--rpc",
            &quorum.url(),
        ],
    );
    node(
        &a,
        &[
            "add",
            "b1",
            "--client",
            "besu",
            "--enode",
            &enode(2, 30304),
            "--rpc",
            &besu.url(),
        ],
    );
    node(
        &a,
        &[
            "add",
            "t1",
            "--client",
            "tessera",
            "--host",
            "127.0.0.1",
            "--tessera-url",
            "http://127.0.0.1:9000",
            "--rpc",
            &tessera.url(),
        ],
    );
    join_org2(&a, &b);
    crate::common::procs::fast(&b);
    let gw2 = fedgw().start(&b).expect("org2 starts");

    // the first admin_addPeer answer is garbage: bounded, counted, retried
    quorum.cue("admin_addPeer", Cue::Garbage);
    let m1 = format!(
        "enode://{}@m1.org2.acme.test:30303?discport=0&raftport=50400",
        fedgw_tests::enode_id(3)
    );
    node(
        &b,
        &[
            "add",
            "m1",
            "--enode",
            &format!("{}&raftport=50400", enode(3, 30303)),
            "--tessera-url",
            "http://127.0.0.1:9000",
        ],
    );
    fedgw_tests::wait_for("the GoQuorum node peers with m1", WAIT, || {
        (quorum.peers() == [m1.clone()]).then_some(())
    })
    .expect("peered");
    fedgw_tests::wait_for("the Besu node allowlists and peers with m1", WAIT, || {
        (besu.allowlist() == [m1.clone()] && besu.peers() == [m1.clone()]).then_some(())
    })
    .expect("besu");
    fedgw_tests::wait_for("the Tessera node learns m1's Tessera", WAIT, || {
        (tessera.tessera_peers() == ["http://m1.org2.acme.test:9000"]).then_some(())
    })
    .expect("tessera");
    let besu_calls: Vec<String> = besu
        .all_calls()
        .into_iter()
        .map(|c| c.method)
        .filter(|m| m != "admin_peers")
        .collect();
    assert_eq!(
        besu_calls,
        [
            "perm_getNodesAllowlist",
            "perm_addNodesToAllowlist",
            "admin_addPeer"
        ]
    );
    assert_eq!(
        metric(
            &gw1,
            r#"fedgw_chain_rpc_calls_total{method="admin_addPeer",result="garbage"}"#
        ),
        1
    );
    assert!(
        gw1.log_text().contains("live peering"),
        "{}",
        gw1.log_text()
    );

    // the GoQuorum node restarts (its dynamic peers are lost) while its endpoint is down
    quorum.set_down(true);
    quorum.restart();
    fedgw_tests::wait_for("a call to the down endpoint", WAIT, || {
        (quorum.refused() > 0).then_some(())
    })
    .expect("refused");
    quorum.set_down(false);
    fedgw_tests::wait_for("m1 re-added after the restart", WAIT, || {
        (quorum.peers() == [m1.clone()]).then_some(())
    })
    .expect("re-added");

    // a gateway restart repeats nothing: the next reconcile finds every peer in place
    gw1.stop().expect("stop");
    let adds = quorum.calls("admin_addPeer").len();
    let perms = besu.calls("perm_addNodesToAllowlist").len();
    let reads = quorum.calls("admin_peers").len();
    gw1 = fedgw().start(&a).expect("org1 restarts");
    fedgw_tests::wait_for("a reconcile after the restart", WAIT, || {
        (quorum.calls("admin_peers").len() > reads).then_some(())
    })
    .expect("reconciled");
    assert_eq!(quorum.calls("admin_addPeer").len(), adds);
    assert_eq!(besu.calls("perm_addNodesToAllowlist").len(), perms);

    // m1 removed at org2: removed from the peers and the allowlist at org1
    node(&b, &["rm", "m1"]);
    fedgw_tests::wait_for("m1 removed", WAIT, || {
        (quorum.peers().is_empty() && besu.peers().is_empty() && besu.allowlist().is_empty())
            .then_some(())
    })
    .expect("removed");
    assert_eq!(
        quorum.calls("admin_removePeer")[0].params,
        serde_json::json!([m1])
    );
    assert_eq!(
        besu.calls("perm_removeNodesFromAllowlist")[0].params,
        serde_json::json!([[m1]])
    );
    // Tessera has no call that removes a peer
    assert!(
        tessera
            .all_calls()
            .iter()
            .all(|c| c.method == "tessera_addPeer")
    );
    drop((gw1, gw2));
}

fn raft_id_of(dir: &Path, name: &str) -> u64 {
    nodes(dir)
        .as_array()
        .and_then(|l| l.iter().find(|n| n["name"] == name))
        .and_then(|n| n["raft_id"].as_u64())
        .unwrap_or(0)
}

pub(crate) fn chain_status(dir: &Path) -> serde_json::Value {
    let run = fedgw()
        .run(["chain", "status", "--json", "--data-dir", &s(dir)])
        .expect("spawn")
        .ok()
        .expect("chain status");
    serde_json::from_str(&run.stdout).expect("json")
}

/// One raft site end to end: a member registered with its RPC endpoint makes the site an adder,
/// a new node is added once and its id published (`nodes`, `render raft-join`), a restart adds
/// nothing again, `node rm` removes the member once.
#[test]
fn the_keeper_adds_publishes_survives_a_restart_and_removes() {
    let fake = fedgw_tests::rpcfake::RaftRpcFake::start().expect("fake");
    let n0 = fedgw_tests::enode_id(1);
    fake.add_member(&n0, "n0.org1.acme.test", 50400);
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init_org1(&a, &["--consensus", "raft"]);
    let da = s(&a);
    let gw = fedgw().start(&a).expect("starts");
    let enode =
        |id: &str, host: &str| format!("enode://{id}@{host}:30303?discport=0&raftport=50400");
    let url = fake.url();
    fedgw()
        .run([
            "node",
            "add",
            "n0",
            "--enode",
            &enode(&n0, "127.66.0.1"),
            "--rpc",
            &url,
            "--data-dir",
            &da,
        ])
        .expect("spawn")
        .ok()
        .expect("add n0");
    // before any id is published, render raft-join says so
    let run = fedgw()
        .run(["render", "raft-join", "n0", "--data-dir", &da])
        .expect("spawn");
    if raft_id_of(&a, "n0") == 0 {
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(
            run.stderr.contains("no raft id published"),
            "{}",
            run.stderr
        );
    }
    let n9 = fedgw_tests::enode_id(9);
    fedgw()
        .run([
            "node",
            "add",
            "n9",
            "--enode",
            &enode(&n9, "127.66.0.2"),
            "--data-dir",
            &da,
        ])
        .expect("spawn")
        .ok()
        .expect("add n9");
    let id = fedgw_tests::wait_for("n9 gets its raft id", Duration::from_secs(30), || {
        Some(raft_id_of(&a, "n9")).filter(|id| *id != 0)
    })
    .expect("published");
    assert_eq!(id, 2);
    assert_eq!(raft_id_of(&a, "n0"), 1, "the member's id is published too");
    let adds = fake.calls("raft_addPeer");
    assert_eq!(adds.len(), 1, "{adds:?}");
    assert_eq!(
        adds[0].params,
        serde_json::json!([format!(
            "enode://{n9}@n9.org1.acme.test:30303?discport=0&raftport=50400"
        )])
    );
    let join = fedgw()
        .run(["render", "raft-join", "n9", "--data-dir", &da])
        .expect("spawn")
        .ok()
        .expect("render raft-join");
    assert_eq!(join.stdout.trim(), "--raftjoinexisting 2 --raftdnsenable");
    let status = chain_status(&a);
    assert_eq!(status["consensus"], "raft");
    assert_eq!(status["acting"], true, "{status}");
    assert_eq!(
        status["adders"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["nodes"][0]["name"], "n0");
    assert_eq!(status["nodes"][0]["raft_id"], 1);
    assert_eq!(status["nodes"][0]["block_number"], 7);
    assert_eq!(status["nodes"][0]["error"], "");
    let (_, metrics) = fedgw_tests::http_get(&gw.metrics(), "/metrics").expect("metrics");
    assert!(
        metrics.contains(r#"fedgw_chain_rpc_calls_total{method="raft_addPeer",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fedgw_chain_block_height{node="n0"} 7"#),
        "{metrics}"
    );

    // a restart: nothing is added again
    gw.stop().expect("stop");
    let gw = fedgw().start(&a).expect("restarts");
    fedgw_tests::wait_for(
        "the keeper passed after the restart",
        Duration::from_secs(30),
        || (chain_status(&a)["acting"] == true).then_some(()),
    )
    .expect("acting");
    assert_eq!(fake.calls("raft_addPeer").len(), 1);

    fedgw()
        .run(["node", "rm", "n9", "--data-dir", &da])
        .expect("spawn")
        .ok()
        .expect("rm n9");
    fedgw_tests::wait_for("n9 leaves the cluster", Duration::from_secs(30), || {
        (fake.cluster().len() == 1).then_some(())
    })
    .expect("removed");
    let removes = fake.calls("raft_removePeer");
    assert_eq!(removes.len(), 1);
    assert_eq!(removes[0].params, serde_json::json!([2]));
    drop(gw);
}

/// Two sites that may both change the raft cluster (each has a local member with an RPC
/// endpoint; one fake stands for the one cluster reached at both): each new node gets exactly
/// one `raft_addPeer`, even when the acting gateway dies after the call and before the record,
/// and the other site never adds meanwhile.
#[test]
fn two_adding_gateways_add_each_node_once_across_a_restart() {
    use fedgw_tests::rpcfake::{Cue, RaftRpcFake};
    const WAIT: Duration = Duration::from_secs(30);
    let fake = RaftRpcFake::start().expect("fake");
    let (n0, m0) = (fedgw_tests::enode_id(1), fedgw_tests::enode_id(2));
    fake.add_member(&n0, "n0.org1.acme.test", 50400);
    fake.add_member(&m0, "m0.org2.acme.test", 50400);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("org1"), tmp.path().join("org2"));
    init_org1(&a, &["--consensus", "raft"]);
    crate::common::procs::fast(&a);
    let gw1 = fedgw().start(&a).expect("org1 starts");
    join_org2(&a, &b);
    crate::common::procs::fast(&b);
    let gw2 = fedgw().start(&b).expect("org2 starts");
    let enode =
        |id: &str, host: &str| format!("enode://{id}@{host}:30303?discport=0&raftport=50400");
    let url = fake.url();
    node(
        &a,
        &[
            "add",
            "n0",
            "--enode",
            &enode(&n0, "127.66.0.1"),
            "--rpc",
            &url,
        ],
    );
    node(
        &b,
        &[
            "add",
            "m0",
            "--enode",
            &enode(&m0, "127.66.0.2"),
            "--rpc",
            &url,
        ],
    );
    for dir in [&a, &b] {
        fedgw_tests::wait_for("both sites are adders", WAIT, || {
            (chain_status(dir)["adders"].as_array().map(Vec::len) == Some(2)).then_some(())
        })
        .expect("adders");
    }
    assert_eq!(chain_status(&b)["acting"], false);

    // the add takes effect but its answer never comes: org1's gateway dies waiting
    fake.cue("raft_addPeer", Cue::Stall);
    let n9 = fedgw_tests::enode_id(9);
    node(&b, &["add", "n9", "--enode", &enode(&n9, "127.66.0.3")]);
    fedgw_tests::wait_for("the acting site calls raft_addPeer", WAIT, || {
        (!fake.calls("raft_addPeer").is_empty()).then_some(())
    })
    .expect("called");
    drop(gw1);
    // killed while the add waited for its answer (5 s): no record, and org2 does not add
    assert_eq!(raft_id_of(&b, "n9"), 0, "published before the restart");
    let gw1 = fedgw().start(&a).expect("org1 restarts");
    for dir in [&a, &b] {
        let id = fedgw_tests::wait_for("n9's raft id published", WAIT, || {
            Some(raft_id_of(dir, "n9")).filter(|id| *id != 0)
        })
        .expect("published");
        assert_eq!(id, 3);
    }
    assert_eq!(
        fake.calls("raft_addPeer").len(),
        1,
        "{:?}",
        fake.all_calls()
    );

    // the next new node: one more add
    let n8 = fedgw_tests::enode_id(8);
    node(&b, &["add", "n8", "--enode", &enode(&n8, "127.66.0.4")]);
    fedgw_tests::wait_for("n8's raft id published at org2", WAIT, || {
        Some(raft_id_of(&b, "n8")).filter(|id| *id != 0)
    })
    .expect("published");
    assert_eq!(fake.calls("raft_addPeer").len(), 2);
    assert_eq!(fake.cluster().len(), 4);
    drop((gw1, gw2));
}
