//! Renderers against golden files and against the shape of the real Fabric samples in
//! `testdata/` (copied byte for byte from ../shared/samples: fabric-samples'
//! `first-network/connection-org1.json` and IBM/blockchain-network-on-kubernetes'
//! `artifacts/configtx.yaml`). The consortium mirrors those samples: org1 with peer0 (7051)
//! and peer1 (8051), org2 with peer0, an orderer org. `UPDATE_GOLDEN=1 cargo nextest run -p
//! fedgw-controlplane fabric::render` rewrites the golden files; review the diff before committing.

use std::path::PathBuf;

use super::*;

const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nTUlJQiBST09U\n-----END CERTIFICATE-----\n";
const ORDERER_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nTUlJQiBPUkRFUkVS\n-----END CERTIFICATE-----\n";

fn peer(host: &str, port: u16, anchor: bool) -> FabricPeer {
    FabricPeer {
        host: host.into(),
        port,
        anchor,
    }
}

fn consortium() -> Vec<FabricOrg> {
    vec![
        FabricOrg {
            name: "org2".into(),
            msp_id: "Org2MSP".into(),
            tls_ca_pem: ROOT_PEM.into(),
            peers: vec![peer("peer0.org2.example.com", 7051, false)],
            orderers: vec![],
        },
        FabricOrg {
            name: "org1".into(),
            msp_id: "Org1MSP".into(),
            tls_ca_pem: ROOT_PEM.into(),
            peers: vec![
                peer("peer1.org1.example.com", 8051, false),
                peer("peer0.org1.example.com", 7051, true),
            ],
            orderers: vec![],
        },
        FabricOrg {
            name: "orderer".into(),
            msp_id: "OrdererMSP".into(),
            tls_ca_pem: ROOT_PEM.into(),
            peers: vec![],
            orderers: vec![
                FabricOrderer {
                    host: "orderer1.orderer.example.com".into(),
                    port: 7050,
                    tls_cert_pem: None,
                },
                FabricOrderer {
                    host: "orderer0.orderer.example.com".into(),
                    port: 7050,
                    tls_cert_pem: Some(ORDERER_PEM.into()),
                },
            ],
        },
    ]
}

fn testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/fabric/render/testdata")
        .join(file)
}

fn golden(file: &str, rendered: &str) {
    let path = testdata(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        rendered, want,
        "{file} drifted; UPDATE_GOLDEN=1 regenerates it"
    );
}

fn all_renders(orgs: &[FabricOrg]) -> Vec<(&'static str, String)> {
    let c = consenters(orgs, "consenters");
    let mut files = c.yaml.clone();
    for (path, pem) in &c.files {
        files.push_str(&format!("# {path}\n{pem}"));
    }
    vec![
        (
            "connection-profile.json",
            connection_profile("acme", "org1", orgs, ProfileFormat::Json).expect("json"),
        ),
        (
            "connection-profile.yaml",
            connection_profile("acme", "org1", orgs, ProfileFormat::Yaml).expect("yaml"),
        ),
        ("configtx-orgs.yaml", configtx_orgs(orgs, "organizations")),
        ("consenters.yaml", files),
    ]
}

#[test]
fn golden_files() {
    for (file, rendered) in all_renders(&consortium()) {
        golden(file, &rendered);
    }
}

#[test]
fn output_does_not_depend_on_input_order() {
    let orgs = consortium();
    let mut reversed = orgs.clone();
    reversed.reverse();
    for org in &mut reversed {
        org.peers.reverse();
        org.orderers.reverse();
    }
    assert_eq!(all_renders(&orgs), all_renders(&reversed));
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn connection_profile_has_the_samples_shape_with_pem_instead_of_paths() {
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("fabric-connection-org1.json")).expect("sample"),
    )
    .expect("sample parses");
    let ours: serde_json::Value = serde_json::from_str(
        &connection_profile("acme", "org1", &consortium(), ProfileFormat::Json).expect("json"),
    )
    .expect("ours parses");

    let sample_peer = &sample["peers"]["peer0.org1.example.com"];
    let our_peer = &ours["peers"]["peer0.org1.example.com"];
    assert_eq!(keys(our_peer), keys(sample_peer));
    assert_eq!(
        our_peer["grpcOptions"]["ssl-target-name-override"],
        sample_peer["grpcOptions"]["ssl-target-name-override"]
    );
    assert_eq!(our_peer["url"], "grpcs://peer0.org1.example.com:7051");
    assert_eq!(our_peer["tlsCACerts"]["pem"], ROOT_PEM);
    assert_eq!(
        ours["peers"]["peer1.org1.example.com"]["url"],
        "grpcs://peer1.org1.example.com:8051"
    );
    assert_eq!(
        ours["orderers"]["orderer0.orderer.example.com"]["url"],
        "grpcs://orderer0.orderer.example.com:7050"
    );
    let sample_org = &sample["organizations"]["Org1"];
    assert_eq!(ours["organizations"]["org1"]["mspid"], sample_org["mspid"]);
    assert_eq!(
        ours["organizations"]["org1"]["peers"], sample_org["peers"],
        "same peers, in the sample's order"
    );
    assert_eq!(ours["client"]["organization"], "org1");

    let yaml: serde_json::Value = serde_yaml::from_str(
        &connection_profile("acme", "org1", &consortium(), ProfileFormat::Yaml).expect("yaml"),
    )
    .expect("yaml parses");
    assert_eq!(yaml, ours, "YAML and JSON carry the same profile");
}

#[test]
fn configtx_orgs_parse_with_the_samples_keys_and_policies() {
    let sample: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(testdata("fabric-configtx.yaml")).expect("sample"),
    )
    .expect("sample parses");
    let ours: serde_yaml::Value =
        serde_yaml::from_str(&configtx_orgs(&consortium(), "organizations")).expect("parses");
    let sample_org1 = &sample["Organizations"][1];
    let our_orgs = ours["Organizations"].as_sequence().expect("a list");
    let ids: Vec<&str> = our_orgs.iter().filter_map(|o| o["ID"].as_str()).collect();
    assert_eq!(
        ids,
        ["OrdererMSP", "Org1MSP", "Org2MSP"],
        "sorted by org name"
    );
    let org1 = &our_orgs[1];
    for key in ["Name", "ID", "MSPDir", "AnchorPeers"] {
        assert!(!org1[key].is_null(), "{key} missing");
    }
    assert_eq!(org1["Name"], sample_org1["Name"]);
    assert_eq!(org1["ID"], sample_org1["ID"]);
    assert_eq!(org1["MSPDir"], "organizations/org1/msp");
    let anchors = org1["AnchorPeers"].as_sequence().expect("anchors");
    assert_eq!(anchors.len(), 1, "only the marked anchor peer");
    assert_eq!(anchors[0]["Host"], "peer0.org1.example.com");
    assert_eq!(anchors[0]["Port"], 7051);
    assert_eq!(
        org1["Policies"]["Endorsement"]["Rule"],
        "OR('Org1MSP.peer')"
    );
    assert_eq!(
        org1["Policies"]["Readers"]["Rule"],
        "OR('Org1MSP.admin', 'Org1MSP.peer', 'Org1MSP.client')"
    );
    let org2 = &our_orgs[2];
    assert_eq!(
        org2["AnchorPeers"].as_sequence().map(Vec::len),
        Some(1),
        "no peer marked: every peer is an anchor"
    );
    let orderer = &our_orgs[0];
    assert_eq!(orderer["ID"], "OrdererMSP");
    assert!(orderer["AnchorPeers"].is_null());
    assert_eq!(
        orderer["OrdererEndpoints"][0],
        "orderer0.orderer.example.com:7050"
    );
    assert_eq!(
        orderer["Policies"]["Writers"]["Rule"],
        "OR('OrdererMSP.admin', 'OrdererMSP.client', 'OrdererMSP.orderer')"
    );
}

#[test]
fn consenters_name_cert_files_and_leave_out_orderers_without_a_tls_cert() {
    let c = consenters(&consortium(), "consenters");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&c.yaml).expect("parses");
    let list = parsed["Consenters"].as_sequence().expect("a list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["Host"], "orderer0.orderer.example.com");
    assert_eq!(list[0]["Port"], 7050);
    let file = "consenters/orderer0.orderer.example.com-tls.pem";
    assert_eq!(list[0]["ClientTLSCert"], file);
    assert_eq!(list[0]["ServerTLSCert"], file);
    assert_eq!(c.files, vec![(file.to_owned(), ORDERER_PEM.to_owned())]);
    assert_eq!(c.missing, vec!["orderer1.orderer.example.com".to_owned()]);

    let none = consenters(&consortium()[..2], "consenters");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&none.yaml).expect("parses");
    assert_eq!(parsed["Consenters"].as_sequence().map(Vec::len), Some(0));
}
