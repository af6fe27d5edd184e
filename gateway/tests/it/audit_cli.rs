//! `fedgw cert issue`, `fedgw audit` and `fedgw audit --verify` as an operator runs them on a
//! stopped gateway's data dir: the issued certificate is published and audited, the trail
//! verifies, and a record changed in the store file makes `--verify` exit 21 naming it.

use std::path::Path;
use std::sync::Arc;

use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::store::{AuditEntry, Store};
use fedgw_tests::Fedgw;

fn fedgw() -> Fedgw {
    Fedgw::new(env!("CARGO_BIN_EXE_fedgw"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn issued_certificates_are_audited_and_a_changed_record_fails_verification() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    let d = s(&a);
    let init = fedgw()
        .run([
            "init",
            "--consortium",
            "acme",
            "--domain",
            "acme.test",
            "--org",
            "org1",
            "--advertise",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--data-dir",
            &d,
        ])
        .expect("spawn");
    assert_eq!(init.code, Some(0), "{}", init.stderr);
    let out = s(&tmp.path().join("tls"));
    let issue = fedgw()
        .run(["cert", "issue", "tm1", "--data-dir", &d, "--out-dir", &out])
        .expect("spawn");
    assert_eq!(issue.code, Some(0), "{}", issue.stderr);
    assert!(
        issue.stdout.contains("published    cert record"),
        "{}",
        issue.stdout
    );

    let list = fedgw()
        .run(["audit", "--data-dir", &d, "--json"])
        .expect("spawn");
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let entries: Vec<AuditEntry> = serde_json::from_str(&list.stdout).expect("json");
    let kinds: Vec<_> = entries.iter().map(|e| e.kind.as_str()).collect();
    // newest first: the certificate, then the founder's member record
    assert_eq!(kinds, ["cert", "member"], "{}", list.stdout);
    assert_eq!(entries[0].signer, "org1");
    assert_eq!(entries[1].signer, "root");

    let only = fedgw()
        .run(["audit", "--data-dir", &d, "--kind", "cert"])
        .expect("spawn");
    assert_eq!(only.code, Some(0), "{}", only.stderr);
    assert_eq!(
        only.stdout.lines().count(),
        2,
        "header and one entry: {}",
        only.stdout
    );

    let verify = fedgw()
        .run(["audit", "--data-dir", &d, "--verify"])
        .expect("spawn");
    assert_eq!(verify.code, Some(0), "{}", verify.stderr);
    assert!(
        verify
            .stdout
            .contains("2 entries chained, 2 stored records"),
        "{}",
        verify.stdout
    );

    // a record rewritten in the store file, outside fedgw
    {
        let store = Store::open(&DataDir::new(a.clone()).store()).expect("open");
        store
            .put_records(
                &[("member/org1/".to_owned(), Arc::new(b"forged".to_vec()))],
                &[],
            )
            .expect("tamper");
    }
    let tampered = fedgw()
        .run(["audit", "--data-dir", &d, "--verify"])
        .expect("spawn");
    assert_eq!(tampered.code, Some(21), "{}", tampered.stderr);
    assert!(
        tampered
            .stderr
            .contains("record member/org1/ was changed in the store"),
        "{}",
        tampered.stderr
    );
}
