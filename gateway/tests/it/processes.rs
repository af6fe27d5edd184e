//! Membership across real gateway processes: import the sample static-nodes file, SIGKILL a
//! gateway, change the view while it is down, restart it, and check nothing was lost and every
//! gateway converges to the same digest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedgw_tests::{Gateway, wait_for};

use crate::common::procs::{NET, fast, fedgw, json, s};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/data")
}

fn node_names(dir: &Path) -> Vec<String> {
    let v = json(dir, "nodes");
    v.as_array()
        .expect("array")
        .iter()
        .map(|n| {
            format!(
                "{}/{}",
                n["org"].as_str().unwrap_or(""),
                n["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn digest(dir: &Path) -> String {
    json(dir, "status")["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn converged(dirs: &[&Path]) -> Option<()> {
    let d: Vec<_> = dirs.iter().map(|d| digest(d)).collect();
    d.windows(2).all(|w| w[0] == w[1]).then_some(())
}

#[test]
fn a_killed_gateway_loses_nothing_and_reconverges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5)
        .map(|i| tmp.path().join(format!("org{i}")))
        .collect();
    let mut args = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--data-dir",
    ];
    let d0 = s(&dirs[0]);
    args.push(&d0);
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    fast(&dirs[0]);
    let mut gws: Vec<Option<Gateway>> = vec![Some(fedgw().start(&dirs[0]).expect("org1"))];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let org = format!("org{}", i + 1);
        let token = fedgw()
            .run(["invite", &org, "--data-dir", &d0])
            .expect("spawn")
            .ok()
            .expect("invite");
        let d = s(dir);
        let mut args = vec!["join", token.stdout.trim(), "--org", &org, "--data-dir", &d];
        args.extend(NET);
        fedgw().run(args).expect("spawn").ok().expect("join");
        fast(dir);
        gws.push(Some(fedgw().start(dir).expect("start")));
    }
    let all: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();

    let import = fedgw()
        .run([
            "node",
            "import",
            &s(&samples().join("goquorum-static-nodes.raft.json")),
            "--data-dir",
            &s(&dirs[1]),
        ])
        .expect("spawn");
    assert_eq!(import.code, Some(0), "{}{}", import.stdout, import.stderr);
    // a Tessera-only node registered by host name
    let tm1 = fedgw()
        .run([
            "node",
            "add",
            "tm1",
            "--client",
            "tessera",
            "--tessera-url",
            "http://quorum-node1:9001",
            "--data-dir",
            &s(&dirs[1]),
        ])
        .expect("spawn");
    assert_eq!(tm1.code, Some(0), "{}{}", tm1.stdout, tm1.stderr);
    let mut expected: Vec<String> = (1..=8).map(|i| format!("org2/node{i}")).collect();
    expected.push("org2/tm1".to_owned());
    wait_for("nodes everywhere", Duration::from_secs(20), || {
        all.iter().all(|d| node_names(d) == expected).then_some(())
    })
    .expect("converged");

    // every node has its DNS name; org2's own nodes are at their real hosts, and at org1 each
    // has an address of its own from the default pool, with its real ports
    let at = |dir: &Path, name: &str| {
        json(dir, "nodes")
            .as_array()
            .expect("array")
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .expect("listed")
    };
    let home = at(&dirs[1], "node1");
    assert_eq!(home["dns_name"], "node1.org2.acme.test");
    assert_eq!(home["local_ip"], "172.16.239.11");
    let away = at(&dirs[0], "node1");
    assert!(
        away["local_ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("127.77.")),
        "{away}"
    );
    assert_eq!(
        away["local_ports"],
        serde_json::json!({"p2p": 30303, "raft": 53000})
    );
    let ips: std::collections::BTreeSet<String> = json(&dirs[0], "nodes")
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["local_ip"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ips.len(), 9, "one address per remote node: {ips:?}");

    // each gateway's DNS answers the same name with the address that works at its own site
    let dns_of = |gw: &Gateway| -> std::net::SocketAddr {
        gw.info["dns"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("dns address in run.json")
    };
    let dig = |dns: std::net::SocketAddr, name: &str, qtype: &str| {
        let out = std::process::Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args([
                "-p",
                &dns.port().to_string(),
                "+short",
                "+time=2",
                "+tries=1",
                name,
                qtype,
            ])
            .output()
            .expect("dig (scripts/test installs bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let at_org1 = dns_of(gws[0].as_ref().expect("org1"));
    let at_org2 = dns_of(gws[1].as_ref().expect("org2"));
    assert_eq!(dig(at_org2, "node1.org2.acme.test", "A"), "172.16.239.11");
    assert_eq!(
        dig(at_org1, "node1.org2.acme.test", "A"),
        away["local_ip"].as_str().expect("ip")
    );
    assert_eq!(
        dig(at_org1, "_raft._tcp.node1.org2.acme.test", "SRV"),
        "0 0 53000 node1.org2.acme.test."
    );
    // a Tessera node registered by a one-label host name: at home, the address the gateway
    // resolves it to (none here: `quorum-node1` exists only in the Compose lab), never a CNAME
    // to the top-level `quorum-node1.`; a local address elsewhere
    assert_eq!(dig(at_org2, "tm1.org2.acme.test", "A"), "");
    assert_eq!(dig(at_org2, "tm1.org2.acme.test", "CNAME"), "");
    assert!(dig(at_org1, "tm1.org2.acme.test", "A").starts_with("127.77."));
    assert_eq!(
        dig(at_org1, "_tessera._tcp.tm1.org2.acme.test", "SRV"),
        "0 0 9001 tm1.org2.acme.test."
    );

    // the Besu quickstart sample reuses the same eight keys: org3 may not claim them
    let besu = fedgw()
        .run([
            "node",
            "import",
            &s(&samples().join("besu-static-nodes.json")),
            "--client",
            "besu",
            "--data-dir",
            &s(&dirs[2]),
        ])
        .expect("spawn");
    assert_eq!(besu.code, Some(64), "{}", besu.stderr);
    assert_eq!(
        besu.stderr.matches("already registered by org2").count(),
        8,
        "{}",
        besu.stderr
    );
    // the qubernetes sample is the public 7nodes set: refused as demo keys
    let demo = fedgw()
        .run([
            "node",
            "import",
            &s(&samples().join("goquorum-permissioned-nodes.raft-dns.json")),
            "--data-dir",
            &s(&dirs[0]),
        ])
        .expect("spawn");
    assert_eq!(demo.code, Some(64), "{}", demo.stderr);
    assert_eq!(
        demo.stderr.matches("demo key").count(),
        7,
        "{}",
        demo.stderr
    );
    assert_eq!(
        node_names(&dirs[0]),
        expected,
        "refused imports changed nothing"
    );

    // SIGKILL org2: no clean shutdown, no chance to flush anything
    let org2 = gws[1].take().expect("running");
    let pid = org2.pid();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    drop(org2);
    // the others keep serving the last-known view and keep changing it
    assert_eq!(node_names(&dirs[0]), expected);
    let add = fedgw()
        .run([
            "node",
            "add",
            "extra",
            "--data-dir",
            &s(&dirs[2]),
            "--enode",
            // the secp256k1 generator: a valid key no sample uses
            &format!(
                "enode://{}{}@10.3.0.9:30303?discport=0&raftport=50400",
                "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
                "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
            ),
        ])
        .expect("spawn");
    assert_eq!(add.code, Some(0), "{}", add.stderr);
    // a public 7nodes Tessera key is refused; a Tessera-only node with its own key is not
    let demo_tm = fedgw()
        .run([
            "node",
            "add",
            "tm0",
            "--data-dir",
            &s(&dirs[3]),
            "--client",
            "tessera",
            "--tessera-url",
            "http://10.4.0.4:9000",
            "--tessera-key",
            "QfeDAys9MPDs2XHExtc84jKGHxZg/aj52DTh0vtA3Xc=",
        ])
        .expect("spawn");
    assert_eq!(demo_tm.code, Some(64), "{}", demo_tm.stderr);
    assert!(demo_tm.stderr.contains("demo key"), "{}", demo_tm.stderr);
    // a Tessera-only node with its public key, at org4
    let tm = fedgw()
        .run([
            "node",
            "add",
            "tm1",
            "--data-dir",
            &s(&dirs[3]),
            "--client",
            "tessera",
            "--tessera-url",
            "http://10.4.0.5:9000",
            "--tessera-key",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ])
        .expect("spawn");
    assert_eq!(tm.code, Some(0), "{}", tm.stderr);
    // org2's own admin commands need its gateway: a clear error, not a hang
    let rm = fedgw()
        .run(["node", "rm", "node8", "--data-dir", &s(&dirs[1])])
        .expect("spawn");
    assert_eq!(rm.code, Some(1), "{}", rm.stderr);
    assert!(rm.stderr.contains("is `fedgw run` up?"), "{}", rm.stderr);

    // org3's addresses for org2's nodes, to compare after org3 restarts
    let before_restart = at(&dirs[2], "node1")["local_ip"].clone();
    let org3 = gws[2].take().expect("running");
    assert!(org3.stop().expect("stop").success());
    gws[2] = Some(fedgw().start(&dirs[2]).expect("org3 restarts"));
    assert_eq!(
        at(&dirs[2], "node1")["local_ip"],
        before_restart,
        "allocations survive a restart"
    );
    gws[1] = Some(fedgw().start(&dirs[1]).expect("org2 restarts"));
    // nothing lost: org2 lists its own eight nodes straight after the restart
    let after = node_names(&dirs[1]);
    assert!(expected.iter().all(|n| after.contains(n)), "{after:?}");
    wait_for("equal digests", Duration::from_secs(20), || converged(&all)).expect("reconverged");
    let mut want = expected.clone();
    want.push("org3/extra".into());
    want.push("org4/tm1".into());
    for d in &all {
        assert_eq!(node_names(d), want, "at {}", d.display());
    }
    // the rendered static-nodes.json names every node by its consortium DNS name, at any site
    let out = tmp.path().join("static-nodes.json");
    let render = |dir: &Path| {
        fedgw()
            .run([
                "render",
                "static-nodes",
                "--data-dir",
                &s(dir),
                "--out",
                &s(&out),
            ])
            .expect("spawn")
    };
    let first = render(&dirs[0]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let text = std::fs::read_to_string(&out).expect("rendered");
    let urls = fedgw_proto::enode::parse_static_nodes(&text).expect("parses back");
    assert_eq!(urls.len(), 9, "eight imported nodes and org3/extra");
    assert!(
        text.contains("@node1.org2.acme.test:30303?discport=0&raftport=53000"),
        "{text}"
    );
    let mtime = std::fs::metadata(&out)
        .expect("stat")
        .modified()
        .expect("mtime");
    let again = render(&dirs[4]);
    assert!(again.stderr.contains("unchanged"), "{}", again.stderr);
    assert_eq!(
        std::fs::metadata(&out)
            .expect("stat")
            .modified()
            .expect("mtime"),
        mtime
    );
    let nodes = json(&dirs[4], "nodes");
    let tm = nodes
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["org"] == "org4" && n["name"] == "tm1")
        .expect("tm1");
    assert_eq!(tm["client"], "tessera");
    // the URL is published under the node's consortium name; 10.4.0.5 stays at org4
    assert_eq!(tm["tessera_url"], "http://tm1.org4.acme.test:9000");
    assert_eq!(
        tm["tessera_keys"][0],
        "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
    );
    for gw in gws.into_iter().flatten() {
        assert!(gw.stop().expect("stop").success());
    }
}

#[test]
fn sigkill_during_writes_keeps_every_acknowledged_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("org1");
    let d = s(&dir);
    let mut args = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--data-dir",
        &d,
    ];
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    let gw = fedgw().start(&dir).expect("start");
    let pid = gw.pid();
    let socket = dir.join("admin.sock");

    // a writer that records every add the gateway acknowledged, until the connection dies
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let writer = rt.spawn(async move {
        let mut admin = fedgw_gateway::admin::connect(&socket).await.expect("admin");
        for (k, id) in (0u32..10_000).zip(fedgw_tests::enode_keys(0x42)) {
            let spec = fedgw_proto::v1::NodeSpec {
                name: format!("n{k}"),
                client: fedgw_proto::v1::ClientKind::Goquorum.into(),
                enode_id: id,
                host: "10.0.0.1".into(),
                p2p_port: 30303,
                ..Default::default()
            };
            match admin
                .add_node(fedgw_proto::v1::AddNodeRequest { node: Some(spec) })
                .await
            {
                Ok(_) => {
                    if acked_tx.send(format!("org1/n{k}")).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    // kill once a good number of writes were acknowledged, while more are in flight
    let mut acked = Vec::new();
    while acked.len() < 50 {
        acked.push(
            acked_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("writes progress"),
        );
    }
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    drop(gw);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), writer).await })
        .expect("writer stops")
        .expect("writer task");
    acked.extend(acked_rx.try_iter());

    let gw = fedgw().start(&dir).expect("the store opens after a crash");
    let names = node_names(&dir);
    let missing: Vec<_> = acked.iter().filter(|n| !names.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost: {missing:?}",
        missing.len()
    );
    assert!(gw.stop().expect("stop").success());
}

/// A revocation reaches every gateway; one restarts afterwards (and reloads its store, where a
/// revoked org's records are refused), another never does. Both must hold the same records:
/// equal digests, not a digest exchange that resends records forever.
#[test]
fn after_a_revocation_restarted_and_running_gateways_agree_on_the_digest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|i| tmp.path().join(format!("org{i}")))
        .collect();
    let d0 = s(&dirs[0]);
    let mut args = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--data-dir",
        &d0,
    ];
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    fast(&dirs[0]);
    let mut gws: Vec<Option<Gateway>> = vec![Some(fedgw().start(&dirs[0]).expect("org1"))];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let org = format!("org{}", i + 1);
        let token = fedgw()
            .run(["invite", &org, "--data-dir", &d0])
            .expect("spawn")
            .ok()
            .expect("invite");
        let d = s(dir);
        let mut args = vec!["join", token.stdout.trim(), "--org", &org, "--data-dir", &d];
        args.extend(NET);
        fedgw().run(args).expect("spawn").ok().expect("join");
        fast(dir);
        gws.push(Some(fedgw().start(dir).expect("start")));
    }
    for (i, dir) in dirs.iter().enumerate() {
        let add = fedgw()
            .run([
                "node",
                "add",
                &format!("n{}", i + 1),
                "--data-dir",
                &s(dir),
                "--enode",
                &format!(
                    "enode://{}@10.{}.0.1:30303?discport=0&raftport=50400",
                    fedgw_tests::enode_id(0xa0 + i as u64),
                    i + 1
                ),
            ])
            .expect("spawn");
        assert_eq!(add.code, Some(0), "{}", add.stderr);
    }
    let all: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    wait_for("every node everywhere", Duration::from_secs(20), || {
        all.iter()
            .all(|d| node_names(d) == ["org1/n1", "org2/n2", "org3/n3"])
            .then_some(())
    })
    .expect("synced");

    let revoke = fedgw()
        .run(["revoke", "org3", "--data-dir", &d0])
        .expect("spawn");
    assert_eq!(revoke.code, Some(0), "{}", revoke.stderr);
    let pair = [all[0], all[1]];
    wait_for(
        "org3's node leaves org1 and org2",
        Duration::from_secs(20),
        || {
            pair.iter()
                .all(|d| node_names(d) == ["org1/n1", "org2/n2"])
                .then_some(())
        },
    )
    .expect("revoked");
    // org3's own gateway says so: its peers refuse its certificate as revoked
    let d2 = s(&dirs[2]);
    let mut last = String::new();
    let said = wait_for("org3 sees it is revoked", Duration::from_secs(20), || {
        let run = fedgw()
            .run(["status", "--json", "--data-dir", &d2])
            .ok()?
            .ok()
            .ok()?;
        last.clone_from(&run.stdout);
        let status: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
        let peers = status["peers"].as_array()?.clone();
        peers
            .iter()
            .any(|p| p["state"] == "revoked")
            .then_some(peers)
    })
    .unwrap_or_else(|e| panic!("{e}; org3's last status: {last}"));
    let revoked = said
        .iter()
        .find(|p| p["state"] == "revoked")
        .expect("a revoked peer");
    assert!(
        revoked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked this org")),
        "{said:?}"
    );
    let text = fedgw()
        .run(["status", "--data-dir", &d2])
        .expect("spawn")
        .ok()
        .expect("status");
    assert!(
        text.stdout
            .contains("REVOKED: the consortium revoked org org3"),
        "{}",
        text.stdout
    );
    // org2 restarts and reloads its store; org1 keeps running
    let org2 = gws[1].take().expect("running");
    assert!(org2.stop().expect("stop").success());
    gws[1] = Some(fedgw().start(&dirs[1]).expect("org2 restarts"));
    wait_for(
        "equal digests after org2's restart",
        Duration::from_secs(20),
        || converged(&pair),
    )
    .expect("org1 and org2 agree");
    // and org1's store no longer holds what its view dropped: a restart changes nothing
    let org1 = gws[0].take().expect("running");
    assert!(org1.stop().expect("stop").success());
    gws[0] = Some(fedgw().start(&dirs[0]).expect("org1 restarts"));
    wait_for(
        "equal digests after org1's restart",
        Duration::from_secs(20),
        || converged(&pair),
    )
    .expect("org1 and org2 still agree");
    for gw in gws.into_iter().flatten() {
        assert!(gw.stop().expect("stop").success());
    }
}
