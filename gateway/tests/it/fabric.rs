//! `fedgw cert fabric-msp`, `fedgw cert fabric-org-msp` and `fedgw render fabric-*` end to end:
//! MSP folders from an init'd data dir checked with `openssl verify`, and the renderers fed by
//! a running founder gateway with Fabric nodes registered.

use std::path::Path;
use std::process::Command;

use super::cli::{fedgw, founder, init, init_args, invite, join_with, s};

fn openssl_verify(msp: &Path, org: &str, cert: &Path) -> bool {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(msp.join("cacerts/root-ca.pem"))
        .arg("-untrusted")
        .arg(msp.join(format!("intermediatecerts/{org}-ca.pem")))
        .arg(cert)
        .output()
        .expect("openssl must be installed (scripts/test installs it)")
        .status
        .success()
}

#[test]
fn fabric_msp_commands_write_folders_that_openssl_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let d = s(&a);
    let node = tmp.path().join("peer0");
    let n = s(&node);
    let run = fedgw()
        .run([
            "cert",
            "fabric-msp",
            "peer0",
            "--role",
            "peer",
            "--data-dir",
            &d,
            "--out-dir",
            &n,
        ])
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("peer0.org1.acme.test"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Org1MSP"), "{}", run.stdout);
    let org_msp = tmp.path().join("organizations/org1/msp");
    let o = s(&org_msp);
    fedgw()
        .run(["cert", "fabric-org-msp", "--data-dir", &d, "--out-dir", &o])
        .expect("spawn")
        .ok()
        .expect("fabric-org-msp");
    assert!(
        !org_msp.join("keystore").exists(),
        "the org MSP holds no keys"
    );
    let signcert = node.join("msp/signcerts/peer0.org1.acme.test-cert.pem");
    assert!(openssl_verify(&org_msp, "org1", &signcert));
    assert!(openssl_verify(
        &org_msp,
        "org1",
        &node.join("tls/server.crt")
    ));
    // both certificates are published as cert records (certificate transparency)
    assert_eq!(
        run.stdout.matches("published cert record").count(),
        2,
        "{}",
        run.stdout
    );
    let audit = fedgw()
        .run(["audit", "--kind", "cert", "--json", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("audit");
    assert_eq!(
        audit.stdout.matches("\"kind\":\"cert\"").count(),
        2,
        "{}",
        audit.stdout
    );

    // no overwrite without --force; bad roles and names are usage errors
    let again = fedgw()
        .run([
            "cert",
            "fabric-msp",
            "peer0",
            "--role",
            "peer",
            "--data-dir",
            &d,
            "--out-dir",
            &n,
        ])
        .expect("spawn");
    assert_eq!(again.code, Some(64), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let bad = fedgw()
        .run([
            "cert",
            "fabric-msp",
            "gw-x",
            "--role",
            "peer",
            "--data-dir",
            &d,
            "--out-dir",
            &n,
            "--force",
        ])
        .expect("spawn");
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
}

#[test]
fn render_fabric_kinds_name_every_fabric_node_at_its_consortium_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let d = s(&gw.dir);
    // the orderer's TLS pair from the org CA; its certificate is published with the node
    let msp = tmp.path().join("orderer0");
    fedgw()
        .run([
            "cert",
            "fabric-msp",
            "orderer0",
            "--role",
            "orderer",
            "--data-dir",
            &d,
            "--out-dir",
            &s(&msp),
        ])
        .expect("spawn")
        .ok()
        .expect("fabric-msp");
    let tls_cert = s(&msp.join("tls/server.crt"));
    for (name, client, host, role, service) in [
        ("peer0", "fabric-peer", "10.0.0.5", "anchor", "peer=7051"),
        ("peer1", "fabric-peer", "10.0.0.6", "endorser", "peer=8051"),
        (
            "orderer0",
            "fabric-orderer",
            "10.0.0.7",
            "consenter",
            "orderer=7050",
        ),
    ] {
        let mut args = vec![
            "node",
            "add",
            name,
            "--client",
            client,
            "--host",
            host,
            "--service",
            service,
            "--role",
            role,
            "--data-dir",
            &d,
        ];
        if name == "orderer0" {
            args.extend(["--tls-cert", &tls_cert]);
        }
        fedgw().run(args).expect("spawn").ok().expect("node add");
    }
    let render = |args: &[&str]| {
        let mut all = vec!["render"];
        all.extend(args);
        all.extend(["--data-dir", &d]);
        fedgw().run(all).expect("spawn")
    };
    let profile = render(&["fabric-connection-profile"])
        .ok()
        .expect("profile")
        .stdout;
    let profile: serde_json::Value = serde_json::from_str(&profile).expect("JSON");
    assert_eq!(profile["organizations"]["org1"]["mspid"], "Org1MSP");
    assert_eq!(
        profile["peers"]["peer0.org1.acme.test"]["url"],
        "grpcs://peer0.org1.acme.test:7051"
    );
    assert_eq!(
        profile["orderers"]["orderer0.org1.acme.test"]["url"],
        "grpcs://orderer0.org1.acme.test:7050"
    );
    // a peer's port is its named `peer` service
    assert_eq!(
        profile["peers"]["peer1.org1.acme.test"]["url"],
        "grpcs://peer1.org1.acme.test:8051"
    );
    let root = std::fs::read_to_string(gw.dir.join("root-ca.pem")).expect("root");
    assert_eq!(
        profile["peers"]["peer1.org1.acme.test"]["tlsCACerts"]["pem"].as_str(),
        Some(root.as_str())
    );
    let yaml = render(&["fabric-connection-profile", "--format", "yaml"])
        .ok()
        .expect("yaml")
        .stdout;
    let yaml: serde_json::Value = serde_yaml::from_str(&yaml).expect("YAML");
    assert_eq!(yaml, profile);

    let orgs = render(&["fabric-configtx-orgs"])
        .ok()
        .expect("configtx")
        .stdout;
    let orgs: serde_yaml::Value = serde_yaml::from_str(&orgs).expect("YAML");
    let org1 = &orgs["Organizations"][0];
    assert_eq!(org1["ID"], "Org1MSP");
    assert_eq!(org1["AnchorPeers"][0]["Host"], "peer0.org1.acme.test");
    assert!(org1["AnchorPeers"][1].is_null(), "only the anchor peer");
    assert_eq!(org1["OrdererEndpoints"][0], "orderer0.org1.acme.test:7050");

    // consenters need --out: the orderer's published TLS certificate goes beside the list
    let no_out = render(&["fabric-consenters"]);
    assert_eq!(no_out.code, Some(64), "{}", no_out.stderr);
    let out = tmp.path().join("cfg/consenters.yaml");
    let o = s(&out);
    let run = render(&["fabric-consenters", "--out", &o]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let yaml = std::fs::read_to_string(&out).expect("written");
    assert!(
        yaml.contains("- Host: orderer0.org1.acme.test\n      Port: 7050"),
        "{yaml}"
    );
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("ServerTLSCert: "))
        .expect("a ServerTLSCert");
    let written =
        std::fs::read_to_string(out.parent().expect("dir").join(line)).expect("cert file");
    let leaf = std::fs::read_to_string(msp.join("tls/server.crt")).expect("server.crt");
    assert!(
        leaf.starts_with(written.trim_end()),
        "the orderer's leaf, as published"
    );
    let again = render(&["fabric-consenters", "--out", &o]);
    assert!(again.stderr.contains("unchanged"), "{}", again.stderr);
    assert!(gw.stop().expect("stop").success());
}

#[test]
fn msp_ids_are_chosen_at_init_and_join_published_and_unique() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    let args = init_args(&a, "127.0.0.1:0", &["--msp-id", "AcmeOrg1MSP"]);
    fedgw().run(args).expect("spawn").ok().expect("init");
    let gw1 = fedgw().start(&a).expect("org1 starts");
    let token = invite(&gw1.dir, "org2");
    let b = tmp.path().join("org2");

    // not an MSP ID: refused before anything is asked
    let bad = join_with(
        &token,
        "org2",
        &b,
        &["--timeout", "10s", "--msp-id", "no spaces"],
    );
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    // org1's: refused by the inviting gateway, and the token stays usable
    let taken = join_with(
        &token,
        "org2",
        &b,
        &["--timeout", "10s", "--msp-id", "AcmeOrg1MSP"],
    );
    assert_ne!(taken.code, Some(0), "{}", taken.stderr);
    assert!(
        taken.stderr.contains("already a member's"),
        "{}",
        taken.stderr
    );
    join_with(
        &token,
        "org2",
        &b,
        &["--timeout", "10s", "--msp-id", "Org2Bank"],
    )
    .ok()
    .expect("org2 joins with its own MSP ID");

    let run = fedgw()
        .run(["members", "--json", "--data-dir", &s(&a)])
        .expect("spawn")
        .ok()
        .expect("members");
    let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let ids: Vec<(String, String)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|m| (m["org"].to_string(), m["fabric_msp_id"].to_string()))
        .collect();
    assert_eq!(
        ids,
        [
            ("\"org1\"".to_owned(), "\"AcmeOrg1MSP\"".to_owned()),
            ("\"org2\"".to_owned(), "\"Org2Bank\"".to_owned())
        ]
    );
    let config = std::fs::read_to_string(b.join("fedgw.toml")).expect("config");
    assert!(config.contains("fabric_msp_id = \"Org2Bank\""), "{config}");
}

/// What the Kubernetes controller builds its Fabric connection profile from: `ListMembers`
/// names the consortium, its domain and its root, as `fedgw render` reads them from the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_members_tells_the_consortium_name_domain_and_root() {
    use crate::support::{DOMAIN, Fed};
    let fed = Fed::found(fedgw_gateway::config::Admission::Operator).await;
    let members = fed.gws[0]
        .admin()
        .await
        .list_members(fedgw_proto::v1::ListMembersRequest {})
        .await
        .expect("list members")
        .into_inner();
    assert_eq!(
        (members.consortium.as_str(), members.domain.as_str()),
        ("acme", DOMAIN)
    );
    let root = std::fs::read_to_string(fed.gws[0].dir.root_cert()).expect("root");
    assert_eq!(
        fedgw_certs::pki::certs_from_pem(&members.root_cert_pem).expect("pem"),
        fedgw_certs::pki::certs_from_pem(&root).expect("pem")[..1],
    );
}
