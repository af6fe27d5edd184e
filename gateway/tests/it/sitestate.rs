//! Two replicas of one site (org2/dc1 and org2/dc1/b, the second started from a copy of the
//! first's data dir) and another site (org1/dc1), in-process on loopback: every DNS name of the
//! zone answers the same at both replicas, before and after nodes are added at the other site
//! and at each replica, and after they are removed (a node added at one replica is removed at
//! the other).

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;
use fedgw_proto::v1 as pb;

/// Copies a stopped gateway's data dir, leaving out what belongs to a running process.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "admin.sock" || name == "run.json" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Every A, AAAA, TXT and SRV answer for the names of `nodes` (`name.org`) and the gateways,
/// as `dig +short` prints them, sorted.
fn answers(dns: std::net::SocketAddr, nodes: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut names: Vec<(String, &str)> = vec![];
    for n in nodes {
        let name = format!("{n}.{DOMAIN}");
        for qtype in ["A", "AAAA", "TXT"] {
            names.push((name.clone(), qtype));
        }
        for port in ["p2p", "raft"] {
            names.push((format!("_{port}._tcp.{name}"), "SRV"));
        }
    }
    for gw in ["gw-dc1.org1", "gw-dc1.org2"] {
        names.push((format!("{gw}.{DOMAIN}"), "A"));
    }
    for (name, qtype) in names {
        let mut lines: Vec<String> = dig(dns, &name, qtype, false)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        out.insert(format!("{name} {qtype}"), lines.join(" "));
    }
    out
}

async fn add(gw: &Gw, name: &str, enode: u8, host: &str) {
    gw.admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec(name, enode, host)),
        })
        .await
        .expect("add");
}

async fn remove(gw: &Gw, name: &str) {
    gw.admin()
        .await
        .remove_node(pb::RemoveNodeRequest { name: name.into() })
        .await
        .expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_of_a_site_answer_every_name_alike_as_nodes_come_and_go() {
    let mut fed = Fed::with_orgs(2).await;
    add(&fed.gws[1], "early", 0x21, "10.2.0.1").await;
    fed.converged().await;
    fed.gws[1].stop().await;
    let b_dir = fedgw_gateway::datadir::DataDir::new(fed.path("org2-b"));
    copy_dir(fed.gws[1].dir.root(), b_dir.root());
    edit_config(&b_dir, |c| {
        c.replica = "b".into();
        c.replica_index = 1;
        c.listen = "127.0.0.1:0".parse().expect("addr");
        c.advertise = vec!["127.0.0.1:0".into()];
    });
    fed.gws[1].start().await;
    let mut b = Gw {
        org: "org2".into(),
        dir: b_dir,
        running: None,
        shutdown: Default::default(),
    };
    b.start().await;
    fed.gws.push(b);
    fed.converged().await;
    let (dns_a, dns_b) = (fed.gws[1].run().info.dns, fed.gws[2].run().info.dns);

    let alike = |nodes: &[&str], what: &str, check: &dyn Fn(&BTreeMap<String, String>) -> bool| {
        let nodes: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
        let what = what.to_owned();
        let check = |m: &BTreeMap<String, String>| check(m);
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let (a, b) = (answers(dns_a, &names), answers(dns_b, &names));
        (a == b && check(&a), what, a, b)
    };
    let all = ["early.org2", "n1.org1", "ra.org2", "rb.org2"];
    let wait_alike = async |what: &str, check: &dyn Fn(&BTreeMap<String, String>) -> bool| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (same, what, a, b) = alike(&all, what, check);
            if same {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the replicas answer differently\n{a:#?}\n{b:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let a = |m: &BTreeMap<String, String>, name: &str| m[&format!("{name}.{DOMAIN} A")].clone();

    let (ma, mb) = (&fed.gws[1].run().membership, &fed.gws[2].run().membership);
    wait_for("the replicas' sync stream", || {
        ma.live_siblings() == ["b"] && mb.live_siblings() == [""]
    })
    .await;
    assert!(ma.is_allocation_leader() && !mb.is_allocation_leader());
    let before = wait_alike("before", &|m| a(m, "early.org2") == "10.2.0.1").await;
    assert_eq!(a(&before, "n1.org1"), "", "not yet added");

    // a node at the other site, one at each replica
    add(&fed.gws[0], "n1", 0x11, "10.1.0.1").await;
    add(&fed.gws[1], "ra", 0x22, "10.2.0.2").await;
    add(&fed.gws[2], "rb", 0x23, "10.2.0.3").await;
    let added = wait_alike("after adding", &|m| {
        a(m, "n1.org1").starts_with("127.77.")
            && a(m, "ra.org2") == "10.2.0.2"
            && a(m, "rb.org2") == "10.2.0.3"
    })
    .await;
    assert_eq!(
        added[&format!("_p2p._tcp.n1.org1.{DOMAIN} SRV")],
        format!("0 0 30303 n1.org1.{DOMAIN}.")
    );

    // the local address b serves is the one a (the lower replica) allocated
    let entries = fed.gws[2].run().store.shared_entries().expect("entries");
    let n1 = entries
        .iter()
        .find(|e| e.key.to_string() == "alloc/org1/n1")
        .expect("n1's allocation is shared");
    assert_eq!(n1.replica, "", "allocated by the leader");

    // removed: the other site's node there, each replica's node at the other replica
    remove(&fed.gws[0], "n1").await;
    remove(&fed.gws[2], "ra").await;
    remove(&fed.gws[1], "rb").await;
    wait_alike("after removing", &|m| {
        a(m, "n1.org1").is_empty() && a(m, "ra.org2").is_empty() && a(m, "rb.org2").is_empty()
    })
    .await;
    // nothing left registered at either replica
    for gw in &fed.gws[1..] {
        let nodes = gw
            .admin()
            .await
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner()
            .nodes;
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["early"]);
    }
    fed.stop_all().await;
}
