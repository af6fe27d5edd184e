//! MSP folders checked with `openssl verify` the way Fabric's MSP checks an identity: the
//! chain must end at one of the MSP's roots (`cacerts`) and may only go through its
//! intermediates (`intermediatecerts`). A PKI of one root and two org CAs is made at test time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use fedgw_certs::CertificateAuthority;
use fedgw_certs::pki::{generate_key, org_ca_csr};

use super::*;

const DOMAIN: &str = "acme.test";
const DAY: Duration = Duration::from_secs(24 * 3600);

struct Org {
    name: &'static str,
    ca: CertificateAuthority,
}

fn pki(orgs: &[&'static str]) -> (CertificateAuthority, Vec<Org>) {
    let now = SystemTime::now();
    let root = CertificateAuthority::new_root("acme", DOMAIN, now).expect("root");
    let orgs = orgs
        .iter()
        .map(|name| {
            let key = generate_key().expect("key");
            let csr = org_ca_csr(&key, name).expect("csr");
            let cert = root
                .sign_org_ca(&csr, "acme", name, DOMAIN, now)
                .expect("org ca");
            let ca = CertificateAuthority::from_parts(cert, &key.serialize_pem()).expect("ca");
            Org { name, ca }
        })
        .collect();
    (root, orgs)
}

fn local_msp(root: &CertificateAuthority, org: &Org, node: &str, role: Role, dir: &Path) {
    let cas = Cas {
        root: root.cert(),
        org_ca: org.ca.cert(),
        org: org.name,
    };
    let req = LocalMspRequest {
        node,
        role,
        domain: DOMAIN,
        lifetime: DAY,
        now: SystemTime::now(),
    };
    let files = local_msp_files(&org.ca, &cas, &req).expect("msp files");
    write_files(dir, &files, false).expect("write");
}

fn org_msp(root: &CertificateAuthority, org: &Org, dir: &Path) {
    let cas = Cas {
        root: root.cert(),
        org_ca: org.ca.cert(),
        org: org.name,
    };
    write_files(dir, &org_msp_files(&cas), false).expect("write");
}

/// `openssl verify -CAfile <msp>/cacerts/* -untrusted <msp>/intermediatecerts/* CERT`: the
/// roots are the only trust anchors (no `-partial_chain`), the intermediates the only path.
fn openssl_verify(msp: &Path, cert: &Path) -> (bool, String) {
    let one = |sub: &str| {
        let mut files: Vec<_> = std::fs::read_dir(msp.join(sub))
            .expect("msp subdir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 1, "{sub} holds one certificate");
        files.swap_remove(0)
    };
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(one("cacerts"))
        .arg("-untrusted")
        .arg(one("intermediatecerts"))
        .arg(cert)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn signcert(dir: &Path) -> std::path::PathBuf {
    let mut certs: Vec<_> = std::fs::read_dir(dir.join("msp/signcerts"))
        .expect("signcerts")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(certs.len(), 1);
    certs.swap_remove(0)
}

fn x509_text(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn local_msp_has_fabric_layout_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let (root, orgs) = pki(&["org2"]);
    let tmp = tempfile::tempdir().expect("tmp");
    local_msp(&root, &orgs[0], "peer0", Role::Peer, tmp.path());
    for path in [
        "msp/cacerts/root-ca.pem",
        "msp/intermediatecerts/org2-ca.pem",
        "msp/tlscacerts/root-ca.pem",
        "msp/tlsintermediatecerts/org2-ca.pem",
        "msp/signcerts/peer0.org2.acme.test-cert.pem",
        "msp/keystore/priv_sk",
        "msp/config.yaml",
        "tls/server.crt",
        "tls/server.key",
        "tls/ca.crt",
    ] {
        assert!(tmp.path().join(path).is_file(), "{path} missing");
    }
    for key in ["msp/keystore/priv_sk", "tls/server.key"] {
        let mode = std::fs::metadata(tmp.path().join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
        let pem = std::fs::read_to_string(tmp.path().join(key)).expect("key");
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{key} is PKCS#8"
        );
    }
    let config: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(tmp.path().join("msp/config.yaml")).expect("config"),
    )
    .expect("config.yaml parses");
    assert_eq!(config["NodeOUs"]["Enable"], serde_yaml::Value::Bool(true));
    for (key, ou) in [
        ("PeerOUIdentifier", "peer"),
        ("OrdererOUIdentifier", "orderer"),
        ("ClientOUIdentifier", "client"),
        ("AdminOUIdentifier", "admin"),
    ] {
        assert_eq!(config["NodeOUs"][key]["OrganizationalUnitIdentifier"], ou);
        let cert = config["NodeOUs"][key]["Certificate"]
            .as_str()
            .expect("certificate");
        assert!(tmp.path().join("msp").join(cert).is_file(), "{cert}");
    }
}

#[test]
fn writing_again_without_force_refuses_and_keeps_the_key() {
    let (root, orgs) = pki(&["org2"]);
    let tmp = tempfile::tempdir().expect("tmp");
    local_msp(&root, &orgs[0], "peer0", Role::Peer, tmp.path());
    let key = std::fs::read(tmp.path().join("msp/keystore/priv_sk")).expect("key");
    let cas = Cas {
        root: root.cert(),
        org_ca: orgs[0].ca.cert(),
        org: "org2",
    };
    let req = LocalMspRequest {
        node: "peer0",
        role: Role::Peer,
        domain: DOMAIN,
        lifetime: DAY,
        now: SystemTime::now(),
    };
    let again = local_msp_files(&orgs[0].ca, &cas, &req).expect("msp files");
    let err = write_files(tmp.path(), &again, false).expect_err("exists");
    assert!(err.to_string().contains("pass --force"), "{err}");
    let key_path = tmp.path().join("msp/keystore/priv_sk");
    assert_eq!(std::fs::read(&key_path).expect("key"), key);
    write_files(tmp.path(), &again, true).expect("forced");
    assert_ne!(
        std::fs::read(&key_path).expect("key"),
        key,
        "--force replaces"
    );
}

#[test]
fn signcert_and_tls_cert_verify_against_their_own_org_msp() {
    let (root, orgs) = pki(&["org1", "org2"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let node = tmp.path().join("peer0");
    local_msp(&root, &orgs[1], "peer0", Role::Peer, &node);
    let org_dir = tmp.path().join("org2-msp");
    org_msp(&root, &orgs[1], &org_dir);

    let sign = signcert(&node);
    let (ok, text) = openssl_verify(&org_dir, &sign);
    assert!(ok, "signcert refused by its org MSP: {text}");
    let (ok, text) = openssl_verify(&node.join("msp"), &sign);
    assert!(ok, "signcert refused by its local MSP: {text}");
    let (ok, text) = openssl_verify(&org_dir, &node.join("tls/server.crt"));
    assert!(ok, "TLS cert refused: {text}");

    let sign_text = x509_text(&sign);
    assert!(sign_text.contains("OU=peer") || sign_text.contains("OU = peer"));
    assert!(
        sign_text.contains("DNS:peer0.org2.acme.test"),
        "{sign_text}"
    );
    assert!(!sign_text.contains("Extended Key Usage"), "{sign_text}");
    // Fabric reads the identity's issuer SKI to look up CRLs: the org CA must carry one
    let org_ca_text = x509_text(&org_dir.join("intermediatecerts/org2-ca.pem"));
    assert!(
        org_ca_text.contains("Subject Key Identifier"),
        "{org_ca_text}"
    );
    let tls_text = x509_text(&node.join("tls/server.crt"));
    assert!(tls_text.contains("DNS:peer0.org2.acme.test"), "{tls_text}");
    assert!(
        tls_text.contains("TLS Web Server Authentication"),
        "{tls_text}"
    );
}

#[test]
fn every_role_carries_its_node_ou() {
    let (root, orgs) = pki(&["org1"]);
    let tmp = tempfile::tempdir().expect("tmp");
    for (node, role) in [
        ("orderer0", Role::Orderer),
        ("app", Role::Client),
        ("admin", Role::Admin),
    ] {
        let dir = tmp.path().join(node);
        local_msp(&root, &orgs[0], node, role, &dir);
        let text = x509_text(&signcert(&dir));
        let ou = role.ou();
        assert!(
            text.contains(&format!("OU={ou}")) || text.contains(&format!("OU = {ou}")),
            "{node}: {text}"
        );
        let (ok, text) = openssl_verify(&dir.join("msp"), &signcert(&dir));
        assert!(ok, "{node}: {text}");
    }
}

#[test]
fn another_orgs_identity_is_refused_by_this_orgs_msp() {
    let (root, orgs) = pki(&["org1", "org2"]);
    let tmp = tempfile::tempdir().expect("tmp");
    let org1_msp = tmp.path().join("org1-msp");
    org_msp(&root, &orgs[0], &org1_msp);
    let node = tmp.path().join("peer0-org2");
    local_msp(&root, &orgs[1], "peer0", Role::Peer, &node);

    // both chain to the same root, but org1's MSP lists only org1's CA as an intermediate
    let (ok, text) = openssl_verify(&org1_msp, &signcert(&node));
    assert!(!ok, "org2's signcert verified against org1's MSP: {text}");
    assert!(
        text.contains("unable to get local issuer certificate"),
        "{text}"
    );
    let (ok, text) = openssl_verify(&org1_msp, &node.join("tls/server.crt"));
    assert!(
        !ok,
        "org2's TLS certificate verified against org1's MSP: {text}"
    );
}

#[test]
fn bad_node_names_and_zero_lifetime_are_refused_before_issuing() {
    let (root, orgs) = pki(&["org1"]);
    let cas = Cas {
        root: root.cert(),
        org_ca: orgs[0].ca.cert(),
        org: "org1",
    };
    let mut req = LocalMspRequest {
        node: "gw-dc1",
        role: Role::Peer,
        domain: DOMAIN,
        lifetime: DAY,
        now: SystemTime::now(),
    };
    assert!(matches!(
        local_msp_files(&orgs[0].ca, &cas, &req),
        Err(MspError::Issue(_))
    ));
    req.node = "Peer_0";
    assert!(matches!(
        local_msp_files(&orgs[0].ca, &cas, &req),
        Err(MspError::Name(_))
    ));
    req.node = "peer0";
    req.lifetime = Duration::ZERO;
    assert!(matches!(
        local_msp_files(&orgs[0].ca, &cas, &req),
        Err(MspError::ZeroLifetime)
    ));
}
