//! Renderers against golden files built from the real samples in proto/data (copied from
//! ../shared/samples). `UPDATE_GOLDEN=1 cargo test -p fedgw-controlplane` rewrites the golden
//! files; review the diff before committing.

use std::path::PathBuf;

use fedgw_controlplane::render::{Kind, RenderNode, goquorum_enode};
use fedgw_proto::domain::Node;
use fedgw_proto::enode::{EnodeUrl, parse_static_nodes};
use fedgw_proto::tessera::parse_tessera_config;
use fedgw_proto::v1 as pb;

const DOMAIN: &str = "acme.test";

fn data(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/data")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn node(org: &str, name: &str, url: Option<&EnodeUrl>, tessera: Option<&str>) -> RenderNode {
    let record = pb::NodeRecord {
        client: pb::ClientKind::Goquorum.into(),
        enode_id: url.map(|u| u.id.as_bytes().to_vec()).unwrap_or_default(),
        p2p_port: url.map_or(0, |u| u32::from(u.port)),
        raft_port: url.and_then(|u| u.raftport).map_or(0, u32::from),
        tessera_url: tessera.unwrap_or_default().to_owned(),
        site: "dc1".into(),
        ..Default::default()
    };
    let node = Node::try_from(&record).expect("a valid node record");
    RenderNode::new(org, name, DOMAIN, &node)
}

/// org2: the quickstart's eight GoQuorum raft nodes; org3: the 7nodes Tessera peers;
/// org1: a Besu-docs node whose discovery port differs from its p2p port.
fn consortium() -> Vec<RenderNode> {
    let mut nodes = Vec::new();
    let quickstart = parse_static_nodes(&data("goquorum-static-nodes.raft.json")).expect("sample");
    for (i, url) in quickstart.iter().enumerate() {
        nodes.push(node("org2", &format!("node{}", i + 1), Some(url), None));
    }
    let tessera = parse_tessera_config(&data("tessera-config-09.json")).expect("sample");
    for (i, peer) in tessera.peers.iter().enumerate() {
        nodes.push(node("org3", &format!("tm{}", i + 1), None, Some(peer)));
    }
    let besu_docs = data("enodes.txt")
        .lines()
        .find(|l| l.contains("discport=30301"))
        .and_then(|l| l.split('\t').next())
        .map(|u| EnodeUrl::parse(u).expect("sample"))
        .expect("a Besu-docs line");
    nodes.push(node(
        "org1",
        "boot",
        Some(&besu_docs),
        Some("https://boot.example/tm"),
    ));
    // org4: IPFS Cluster peers (ids from the IPFS docs), one on a non-default cluster port
    for (name, id, cluster) in [
        (
            "ipfs1",
            "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            None,
        ),
        (
            "ipfs0",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
            Some(19096),
        ),
    ] {
        let record = pb::NodeRecord {
            client: pb::ClientKind::Ipfs.into(),
            site: "dc1".into(),
            ipfs_peer_id: id.into(),
            services: cluster
                .map(|port| pb::NamedService {
                    name: "cluster".into(),
                    port,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let n = Node::try_from(&record).expect("a valid IPFS node record");
        nodes.push(RenderNode::new("org4", name, DOMAIN, &n));
    }
    nodes
}

fn golden(kind: Kind, file: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    let rendered = kind.render(&consortium());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        rendered, want,
        "{file} drifted; UPDATE_GOLDEN=1 regenerates it"
    );
}

#[test]
fn golden_files() {
    for (kind, file) in Kind::ALL {
        golden(kind, file);
    }
}

#[test]
fn output_does_not_depend_on_input_order() {
    let nodes = consortium();
    let mut reversed = nodes.clone();
    reversed.reverse();
    let mut interleaved: Vec<RenderNode> = nodes.iter().step_by(2).cloned().collect();
    interleaved.extend(nodes.iter().skip(1).step_by(2).cloned());
    for (kind, file) in Kind::ALL {
        let a = kind.render(&nodes);
        assert_eq!(a, kind.render(&reversed), "{file}");
        assert_eq!(a, kind.render(&interleaved), "{file}");
        assert_eq!(a, kind.render(&nodes), "{file}: byte-identical across runs");
    }
}

#[test]
fn goquorum_files_parse_back_to_the_same_enodes() {
    let nodes = consortium();
    for kind in [Kind::StaticNodes, Kind::PermissionedNodes] {
        let parsed = parse_static_nodes(&kind.render(&nodes)).expect("our output parses");
        let mut got: Vec<String> = parsed.iter().map(|u| u.to_string()).collect();
        let mut want: Vec<String> = nodes.iter().filter_map(goquorum_enode).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            parsed.len(),
            9,
            "eight quickstart nodes and the Besu-docs node"
        );
        let quick = parse_static_nodes(&data("goquorum-static-nodes.raft.json")).expect("sample");
        for (u, sample) in parsed
            .iter()
            .filter(|u| u.raftport.is_some())
            .zip(quick.iter())
        {
            assert_eq!(u.id, sample.id);
            assert_eq!(
                (u.port, u.raftport, u.discport),
                (sample.port, sample.raftport, Some(0))
            );
        }
        assert!(
            parsed
                .iter()
                .all(|u| u.host.to_string().ends_with(".acme.test"))
        );
    }
}

#[test]
fn besu_allowlist_is_toml_with_plain_enode_urls() {
    let text = Kind::BesuAllowlist.render(&consortium());
    let value: toml::Value = toml::from_str(&text).expect("valid TOML");
    let list = value["nodes-allowlist"].as_array().expect("an array");
    assert_eq!(list.len(), 9);
    for item in list {
        let url = EnodeUrl::parse(item.as_str().expect("a string")).expect("an enode URL");
        assert_eq!((url.discport, url.raftport), (None, None));
    }
    // the sample file has the same shape
    let sample: toml::Value = toml::from_str(&data_besu_sample()).expect("sample parses");
    assert!(sample["nodes-allowlist"].is_array());
}

#[test]
fn besu_static_nodes_have_the_shape_of_the_besu_sample() {
    let text = Kind::BesuStaticNodes.render(&consortium());
    let parsed = parse_static_nodes(&text).expect("our output parses");
    assert_eq!(parsed.len(), 9, "{text}");
    for url in &parsed {
        assert_eq!((url.discport, url.raftport), (None, None), "{url}");
        assert!(url.host.to_string().ends_with(".acme.test"), "{url}");
    }
    // quorum-dev-quickstart's Besu file: the same plain URLs, no query
    let sample = parse_static_nodes(&data("besu-static-nodes.json")).expect("sample parses");
    assert!(!sample.is_empty());
    assert!(
        sample
            .iter()
            .all(|u| u.discport.is_none() && u.raftport.is_none())
    );
    assert!(!data("besu-static-nodes.json").contains('?'));
    assert!(!text.contains('?'), "{text}");
}

fn data_besu_sample() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/besu-sample-permissions_config.toml");
    std::fs::read_to_string(p).expect("sample copy")
}

#[test]
fn tessera_peers_name_every_tessera_node_by_its_consortium_name() {
    let text = Kind::TesseraPeers.render(&consortium());
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let urls: Vec<&str> = value
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["url"].as_str().expect("url"))
        .collect();
    assert_eq!(urls.len(), 8);
    assert_eq!(urls[0], "https://boot.org1.acme.test:443/tm");
    assert_eq!(urls[1], "http://tm1.org3.acme.test:9001");
}

#[test]
fn nothing_to_render_is_still_a_valid_file() {
    assert_eq!(Kind::StaticNodes.render(&[]), "[]\n");
    assert_eq!(Kind::TesseraPeers.render(&[]), "[]\n");
    let empty: toml::Value = toml::from_str(&Kind::BesuAllowlist.render(&[])).expect("toml");
    assert_eq!(empty["nodes-allowlist"].as_array().map(Vec::len), Some(0));
    let bad = pb::NodeRecord {
        p2p_port: 70_000,
        ..Default::default()
    };
    assert!(Node::try_from(&bad).is_err(), "never a render input");
    let bad = pb::NodeRecord {
        enode_id: vec![1; 3],
        ..Default::default()
    };
    assert!(Node::try_from(&bad).is_err(), "never a render input");
}
