//! Opt-in: real GoQuorum raft nodes behind real `fedgw run` gateways. Three orgs, one site and
//! one raft node each, found a raft cluster; a fourth org joins the consortium, registers its
//! node, and fedgw alone makes it a member: the founder's raft keeper calls `raft_addPeer`, the
//! new node starts with `fedgw render raft-join`'s arguments, and a transaction sent at one site
//! is mined and seen at all four.
//!
//! Set `FEDGW_TEST_GETH` to a GoQuorum 21.1 `geth` (raft, geth 1.9 flag names). Without it the
//! test passes at once and says it was skipped. It needs root and `ip` (iproute2): each node
//! runs in a network namespace of its own behind a veth pair, resolving names with its site's
//! gateway DNS (port 53 on the veth), and the gateways put their remote nodes' local addresses
//! on `lo` (`gateway/src/dev/geth.rs` says why). So that none of this touches the
//! host, the test runs only in a network namespace of its own, one with nothing but `lo` at the
//! start (it says it skipped otherwise):
//! `unshare -n sh -c 'ip link set lo up && FEDGW_TEST_GETH=/path/to/geth cargo nextest run -p
//! fedgw-gateway --test it -E "test(/^quorum::/)"'` (README, "Add a node to a running chain").
//!
//! A third test runs `fedgw lab --geth` (its own namespaces 1 to 4) and checks its steps.
//!
//! Every node uses the usual ports (p2p 30303, raft 50400, RPC 8545) in its own namespace: the
//! gateways keep real ports (IP mode), so the same port at four nodes is what raft needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedgw_gateway::dev::geth::{self, GethNode, Key, Netns};
use serde_json::{Value, json};

use crate::chain::{chain_status, node, nodes_of};
use crate::common::procs::{fast, fedgw, s};

const ENV: &str = "FEDGW_TEST_GETH";
const DOMAIN: &str = "acme.test";
/// Bound on each wait: raft elections, syncing and gateways converging on loopback.
const WAIT: Duration = Duration::from_secs(60);

/// Runs `geth` processes in their namespaces; stops them (SIGTERM, then SIGKILL) and removes
/// the namespaces when dropped.
#[derive(Default)]
struct Geths {
    running: Vec<(String, Child)>,
    namespaces: Vec<Netns>,
}

impl Geths {
    fn namespace(&mut self, k: u8) -> Netns {
        let ns = Netns::new(std::process::id(), k);
        ns.create().expect("network namespace");
        self.namespaces.push(ns.clone());
        ns
    }

    fn start(&mut self, bin: &Path, ns: &Netns, n: &GethNode, resolv: &Path, args: &[String]) {
        let (program, args) = ns.command(bin, resolv, args);
        let log = std::fs::File::create(n.datadir.with_extension("log")).expect("log");
        let child = Command::new(program)
            .args(args)
            .env("PRIVATE_CONFIG", "ignore")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start geth");
        self.running.push((format!("{}/{}", n.org, n.name), child));
    }
}

impl Drop for Geths {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (_, child) in &mut self.running {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            ns.remove();
        }
    }
}

fn call(rt: &tokio::runtime::Runtime, n: &GethNode, method: &'static str, params: Value) -> Value {
    rt.block_on(geth::rpc(&n.rpc_url(), method, params))
        .unwrap_or_else(|e| panic!("{}/{}: {e}", n.org, n.name))
}

/// The raft cluster as `n` reports it: (raft id, enode id, active), or `None` while it does not
/// answer.
fn cluster(rt: &tokio::runtime::Runtime, n: &GethNode) -> Option<Vec<(u64, String, bool)>> {
    let v = rt
        .block_on(geth::rpc(&n.rpc_url(), "raft_cluster", json!([])))
        .ok()?;
    let mut members: Vec<(u64, String, bool)> = v
        .as_array()?
        .iter()
        .map(|m| {
            (
                m["raftId"].as_u64().unwrap_or(0),
                m["nodeId"].as_str().unwrap_or("").to_owned(),
                m["nodeActive"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    members.sort();
    Some(members)
}

/// `init`/`join` flags: gateway and metrics on free loopback ports, DNS on port 53 of the
/// org's end of its node's veth (what the node's resolver names), remote nodes' local
/// addresses from the org's own pool, put on `lo`.
fn net_flags(ns: &Netns, pool: &str) -> Vec<String> {
    [
        "--advertise",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--dns",
        &format!("{}:53", ns.host_ip),
        "--address-pool",
        pool,
        "--alias-interface",
        "lo",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// Invites `org` at the gateway in `founder` and joins it into `dir`.
fn join(founder: &Path, org: &str, dir: &Path, net: &[String]) {
    let token = fedgw()
        .run(["invite", org, "--data-dir", &s(founder)])
        .expect("spawn")
        .ok()
        .expect("invite")
        .stdout
        .trim()
        .to_owned();
    let d = s(dir);
    let mut args: Vec<&str> = vec![
        "join",
        &token,
        "--org",
        org,
        "--data-dir",
        &d,
        "--timeout",
        "10s",
    ];
    args.extend(net.iter().map(String::as_str));
    fedgw().run(args).expect("spawn").ok().expect("join");
    fast(dir);
}

/// Waits until the site in `dir` lists every node of `nodes` with an address (its own at
/// their real one), so its DNS answers them.
fn wait_listed(dir: &Path, org: &str, nodes: &[&GethNode]) {
    fedgw_tests::wait_for("the site lists every node", WAIT, || {
        let listed = nodes_of(dir);
        nodes
            .iter()
            .all(|n| {
                n.org == org
                    || listed.iter().any(|l| {
                        l["org"] == n.org.as_str()
                            && l["name"] == n.name.as_str()
                            && l["local_ip"].is_string()
                    })
            })
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{org}: {e}: {:?}", nodes_of(dir)));
}

fn init_geth(bin: &Path, n: &GethNode, genesis: &Path, statics: &str) {
    geth::prepare(n, Some(statics)).expect("datadir");
    let out = Command::new(bin)
        .args(geth::init_args(n, genesis))
        .output()
        .expect("geth init");
    assert!(
        out.status.success(),
        "geth init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_of(n: &GethNode) -> String {
    let text = std::fs::read_to_string(n.datadir.with_extension("log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The `geth` to run, or `None` (and a line saying the test skipped) without one or outside an
/// empty network namespace.
fn geth_or_skip() -> Option<PathBuf> {
    let Ok(bin) = std::env::var(ENV) else {
        eprintln!("skipped: set {ENV} to a GoQuorum 21.1 geth binary to run against real nodes");
        return None;
    };
    if !geth::in_empty_network_namespace() {
        eprintln!(
            "skipped: {ENV} is set, but the test adds interfaces and addresses: run it in a \
             network namespace of its own with nothing but lo (unshare -n), as root"
        );
        return None;
    }
    Some(PathBuf::from(bin))
}

/// Three raft orgs, a fourth joins through fedgw alone, a transaction is seen at all four.
#[test]
fn goquorum_raft_a_fourth_org_joins_through_fedgw() {
    let Some(bin) = geth_or_skip() else {
        return;
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |org: &str| tmp.path().join(org);
    let orgs: Vec<String> = (1..=4).map(|i| format!("org{i}")).collect();

    // one network namespace per org's node; the org's gateway DNS on its end of the veth
    let mut geths = Geths::default();
    // namespaces (and pools) 21 to 24: apart from the other tests' (the lab takes 1 to 4)
    let namespaces: Vec<Netns> = (21..=24).map(|k| geths.namespace(k)).collect();
    let net: Vec<Vec<String>> = namespaces
        .iter()
        .map(|ns| net_flags(ns, &format!("10.201.{}.0/24", ns.host_ip.octets()[2])))
        .collect();

    // the consortium: org1 founds it with raft, org2 and org3 join
    let d1 = s(&dir("org1"));
    let mut init = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        DOMAIN,
        "--org",
        "org1",
        "--consensus",
        "raft",
        "--data-dir",
        &d1,
    ];
    init.extend(net[0].iter().map(String::as_str));
    fedgw().run(init).expect("spawn").ok().expect("init");
    fast(&dir("org1"));
    let mut gateways = vec![fedgw().start(&dir("org1")).expect("org1 starts")];
    for (i, org) in orgs.iter().enumerate().take(3).skip(1) {
        join(&dir("org1"), org, &dir(org), &net[i]);
        gateways.push(fedgw().start(&dir(org)).expect("gateway starts"));
    }

    let nodes: Vec<GethNode> = orgs
        .iter()
        .zip(&namespaces)
        .map(|(org, ns)| GethNode {
            org: org.clone(),
            name: "node1".into(),
            key: Key::from_seed(&format!("fedgw quorum test {org}/node1")).expect("key"),
            ip: ns.node_ip,
            p2p: 30303,
            raft: 50400,
            rpc: 8545,
            datadir: tmp.path().join("geth").join(org),
        })
        .collect();
    let resolv: Vec<PathBuf> = namespaces
        .iter()
        .zip(&orgs)
        .map(|(ns, org)| {
            let path = tmp.path().join(format!("resolv-{org}.conf"));
            std::fs::write(&path, geth::resolv_conf(ns.host_ip)).expect("resolv.conf");
            path
        })
        .collect();
    let account = Key::from_seed("fedgw quorum test account").expect("key");
    let genesis = tmp.path().join("genesis.json");
    std::fs::write(&genesis, geth::raft_genesis(&[account.address()])).expect("genesis");
    let first: Vec<&GethNode> = nodes.iter().take(3).collect();
    let statics = geth::static_nodes(&first, DOMAIN);
    for n in &first {
        node(
            &dir(&n.org),
            &[
                "add",
                &n.name,
                "--enode",
                &n.registered_enode(),
                "--rpc",
                &n.rpc_url(),
            ],
        );
    }
    for (n, org) in first.iter().zip(&orgs) {
        wait_listed(&dir(org), org, &first);
        init_geth(&bin, n, &genesis, &statics);
    }
    for ((n, ns), resolv) in first.iter().zip(&namespaces).zip(&resolv) {
        geths.start(&bin, ns, n, resolv, &n.raft_args(&[]));
    }
    let three = fedgw_tests::wait_for("a raft cluster of three", WAIT, || {
        cluster(&rt, &nodes[0]).filter(|c| c.len() == 3 && c.iter().all(|m| m.2))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(&nodes[0])));
    eprintln!("raft cluster: {} members", three.len());
    // org1 acts on the cluster and publishes the first members' raft ids
    fedgw_tests::wait_for("org1 acts", WAIT, || {
        (chain_status(&dir("org1"))["acting"] == true).then_some(())
    })
    .expect("acting");

    // org4 joins the consortium and registers its node: nothing else
    join(&dir("org1"), "org4", &dir("org4"), &net[3]);
    gateways.push(fedgw().start(&dir("org4")).expect("org4 starts"));
    let n4 = &nodes[3];
    node(
        &dir("org4"),
        &[
            "add",
            &n4.name,
            "--enode",
            &n4.registered_enode(),
            "--rpc",
            &n4.rpc_url(),
        ],
    );
    let d4 = s(&dir("org4"));
    let join_args = fedgw_tests::wait_for("org4/node1's raft id", WAIT, || {
        let run = fedgw()
            .run(["render", "raft-join", &n4.name, "--data-dir", &d4])
            .ok()?;
        (run.code == Some(0)).then(|| run.stdout.trim().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", chain_status(&dir("org1"))));
    eprintln!("fedgw render raft-join {}: {join_args}", n4.name);
    let all: Vec<&GethNode> = nodes.iter().collect();
    wait_listed(&dir("org4"), "org4", &all);
    init_geth(&bin, n4, &genesis, &statics);
    let join: Vec<String> = join_args.split_whitespace().map(str::to_owned).collect();
    geths.start(&bin, &namespaces[3], n4, &resolv[3], &n4.raft_args(&join));

    let four = fedgw_tests::wait_for("a raft cluster of four", WAIT, || {
        cluster(&rt, &nodes[0]).filter(|c| c.len() == 4 && c.iter().all(|m| m.2))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: org1/node1 lists {:?}\n{}\n{}",
            cluster(&rt, &nodes[0]),
            gateways[0].log_text(),
            log_of(n4)
        )
    });
    assert!(
        four.iter().any(|m| m.1 == n4.key.enode_id().to_string()),
        "{four:?}"
    );
    fedgw_tests::wait_for("org4/node1 sees the cluster of four", WAIT, || {
        cluster(&rt, n4).filter(|c| c.len() == 4)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            rt.block_on(geth::rpc(&n4.rpc_url(), "raft_cluster", json!([]))),
            log_of(n4)
        )
    });
    eprintln!("raft cluster: {} members", four.len());

    // a transaction sent at org2's node is mined and seen at every node
    let from = call(
        &rt,
        &nodes[1],
        "personal_importRawKey",
        json!([account.hex(), geth::ACCOUNT_PASSWORD]),
    );
    assert_eq!(from, json!(account.address().to_string()));
    let tx = call(
        &rt,
        &nodes[1],
        "personal_sendTransaction",
        json!([{
            "from": account.address().to_string(),
            "to": format!("0x{}dead", "0".repeat(36)),
            "value": "0x1",
            "gas": "0x5208",
            "gasPrice": "0x0"
        }, geth::ACCOUNT_PASSWORD]),
    );
    let mut blocks = vec![];
    for n in &nodes {
        let receipt = fedgw_tests::wait_for("the transaction's receipt", WAIT, || {
            rt.block_on(geth::rpc(
                &n.rpc_url(),
                "eth_getTransactionReceipt",
                json!([tx.clone()]),
            ))
            .ok()
            .filter(|r| !r.is_null())
        })
        .unwrap_or_else(|e| panic!("{}/{}: {e}\n{}", n.org, n.name, log_of(n)));
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        blocks.push(receipt["blockHash"].clone());
    }
    assert!(blocks.windows(2).all(|w| w[0] == w[1]), "{blocks:?}");
    eprintln!(
        "transaction {tx} mined in block {} and seen at all four nodes; {:.1} s in all",
        blocks[0],
        started.elapsed().as_secs_f64()
    );
    drop(geths);
    drop(gateways);
}

/// `fedgw approve ORG` at the gateway in `dir`, once the pending join has reached it.
fn approve_join(dir: &Path, org: &str) {
    let d = s(dir);
    fedgw_tests::wait_for("the pending join reaches the member", WAIT, || {
        let run = fedgw().run(["approve", org, "--data-dir", &d]).ok()?;
        (run.code == Some(0)).then_some(())
    })
    .unwrap_or_else(|e| panic!("approve {org} at {d}: {e}"));
}

/// An IBFT chain of three validators, one per org, and a fourth node at org3 that is not one:
/// org3 proposes it with `fedgw chain validator add`, org1 approves (majority admission: two of
/// three), and the validators' votes, cast by the gateways with `istanbul_propose`, make it a
/// validator.
///
/// GoQuorum 21.1 has IBFT (istanbul), not QBFT; GoQuorum's QBFT takes its votes through the same
/// `istanbul_propose` call (and reports the set with `istanbul_getValidators`), so the flow is
/// the same. A GoQuorum with QBFT (21.4 and later) could not be built here: those releases
/// vendor no dependencies and need a Go module proxy.
#[test]
fn goquorum_ibft_a_validator_is_added_by_votes() {
    let Some(bin) = geth_or_skip() else {
        return;
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |org: &str| tmp.path().join(org);
    let orgs: Vec<String> = (1..=3).map(|i| format!("org{i}")).collect();
    let mut geths = Geths::default();
    // namespaces (and pools) 11 to 14: apart from the other tests'; the lab takes 1 to 4
    let namespaces: Vec<Netns> = (11..=14).map(|k| geths.namespace(k)).collect();
    let net: Vec<Vec<String>> = namespaces
        .iter()
        .take(3)
        .map(|ns| net_flags(ns, &format!("10.201.{}.0/24", ns.host_ip.octets()[2])))
        .collect();

    let d1 = s(&dir("org1"));
    let mut init = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        DOMAIN,
        "--org",
        "org1",
        "--consensus",
        "ibft",
        "--admission",
        "majority",
        "--data-dir",
        &d1,
    ];
    init.extend(net[0].iter().map(String::as_str));
    fedgw().run(init).expect("spawn").ok().expect("init");
    fast(&dir("org1"));
    let mut gateways = vec![fedgw().start(&dir("org1")).expect("org1 starts")];
    for (i, org) in orgs.iter().enumerate().skip(1) {
        let token = fedgw()
            .run(["invite", org, "--data-dir", &d1])
            .expect("spawn")
            .ok()
            .expect("invite")
            .stdout
            .trim()
            .to_owned();
        for member in &orgs[..i] {
            approve_join(&dir(member), org);
        }
        let d = s(&dir(org));
        let mut args: Vec<&str> = vec![
            "join",
            &token,
            "--org",
            org,
            "--data-dir",
            &d,
            "--timeout",
            "10s",
        ];
        args.extend(net[i].iter().map(String::as_str));
        fedgw().run(args).expect("spawn").ok().expect("join");
        fast(&dir(org));
        gateways.push(fedgw().start(&dir(org)).expect("gateway starts"));
    }

    // node1 at each org is a validator; org3's node2 (its own namespace, org3's DNS) is not
    let placed = [
        ("org1", "node1"),
        ("org2", "node1"),
        ("org3", "node1"),
        ("org3", "node2"),
    ];
    let nodes: Vec<GethNode> = placed
        .iter()
        .zip(&namespaces)
        .map(|((org, name), ns)| GethNode {
            org: (*org).to_owned(),
            name: (*name).to_owned(),
            key: Key::from_seed(&format!("fedgw ibft test {org}/{name}")).expect("key"),
            ip: ns.node_ip,
            p2p: 30303,
            raft: 50400,
            rpc: 8545,
            datadir: tmp.path().join("geth").join(format!("{org}-{name}")),
        })
        .collect();
    let resolv: Vec<PathBuf> = [0, 1, 2, 2]
        .iter()
        .zip(&nodes)
        .map(|(site, n)| {
            let path = tmp.path().join(format!("resolv-{}-{}.conf", n.org, n.name));
            std::fs::write(&path, geth::resolv_conf(namespaces[*site].host_ip))
                .expect("resolv.conf");
            path
        })
        .collect();
    let validators: Vec<_> = nodes[..3].iter().map(|n| n.key.address()).collect();
    let genesis = tmp.path().join("genesis.json");
    std::fs::write(&genesis, geth::istanbul_genesis(&validators, &[])).expect("genesis");
    for n in &nodes {
        let enode = format!("enode://{}@{}:{}?discport=0", n.key.enode_id(), n.ip, n.p2p);
        node(
            &dir(&n.org),
            &["add", &n.name, "--enode", &enode, "--rpc", &n.rpc_url()],
        );
    }
    let all: Vec<&GethNode> = nodes.iter().collect();
    for org in &orgs {
        wait_listed(&dir(org), org, &all);
    }
    for ((n, ns), resolv) in nodes.iter().zip(&namespaces).zip(&resolv) {
        geth::prepare(n, None).expect("datadir");
        let out = Command::new(&bin)
            .args(geth::init_args(n, &genesis))
            .output()
            .expect("geth init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        geths.start(&bin, ns, n, resolv, &n.istanbul_args());
    }
    // the validators peer through fedgw's live peering and seal blocks
    fedgw_tests::wait_for("blocks sealed", WAIT, || {
        let height = rt
            .block_on(geth::rpc(&nodes[0].rpc_url(), "eth_blockNumber", json!([])))
            .ok()?;
        let height = u64::from_str_radix(height.as_str()?.trim_start_matches("0x"), 16).ok()?;
        (height >= 3).then_some(height)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(&nodes[0])));

    let set = |n: &GethNode| -> Option<Vec<String>> {
        let v = rt
            .block_on(geth::rpc(
                &n.rpc_url(),
                "istanbul_getValidators",
                json!(["latest"]),
            ))
            .ok()?;
        let mut list: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_lowercase))
            .collect();
        list.sort();
        Some(list)
    };
    assert_eq!(set(&nodes[0]).map(|l| l.len()), Some(3));
    let added = nodes[3].key.address().to_string();
    let d3 = s(&dir("org3"));
    let out = fedgw()
        .run(["chain", "validator", "add", "org3/node2", "--data-dir", &d3])
        .expect("spawn")
        .ok()
        .expect("validator add")
        .stdout;
    assert!(out.contains("needs 2 approval(s)"), "{out}");
    let d1 = s(&dir("org1"));
    fedgw_tests::wait_for("org1 approves the proposal", WAIT, || {
        let run = fedgw()
            .run(["chain", "approve", "org3/node2", "--data-dir", &d1])
            .ok()?;
        (run.code == Some(0)).then_some(())
    })
    .expect("approved");
    for n in &nodes {
        let list =
            fedgw_tests::wait_for("four validators", WAIT, || set(n).filter(|l| l.len() == 4))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}/{}: {e}: {:?}\n{}",
                        n.org,
                        n.name,
                        chain_status(&dir("org3")),
                        log_of(n)
                    )
                });
        assert!(list.contains(&added), "{list:?}");
    }
    fedgw_tests::wait_for("the proposal closes", WAIT, || {
        chain_status(&dir("org3"))["proposals"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .expect("closed");
    eprintln!(
        "org3/node2 ({added}) is a validator: 4 in the set at every node; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    drop(geths);
    drop(gateways);
}

/// `fedgw lab --geth --check`: three orgs' raft nodes, one more added at org3 through fedgw, a
/// transaction seen at every node; every step passes.
#[test]
fn the_lab_with_geth_grows_the_cluster_and_mines_a_transaction() {
    let Some(bin) = geth_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let lab = tmp.path().join("lab");
    let run = fedgw()
        .run(["lab", "--geth", &s(&bin), "--check", "--dir", &s(&lab)])
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for step in [
        "PASS  GoQuorum raft cluster of 3 members, one per org",
        "PASS  register node2.org3 at org3: fedgw adds it to the cluster",
        "PASS  raft cluster grows from 3 to 4 members (node2.org3 started with --raftjoinexisting",
        "PASS  a transaction sent at node1.org1 is mined and seen at every other node",
        "lab check: 25 passed, 0 failed",
    ] {
        assert!(run.stdout.contains(step), "{step}: {}", run.stdout);
    }
    let json: Value =
        serde_json::from_slice(&std::fs::read(lab.join("lab.json")).expect("lab.json"))
            .expect("json");
    assert_eq!(json["orgs"].as_array().map(Vec::len), Some(3));
}
