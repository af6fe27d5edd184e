//! The operator tools as real processes: `fedgw diagnose` on a running pair and on a stopped
//! gateway, and `fedgw backup` of a running gateway restored into a fresh data dir, which
//! rejoins and catches up with what changed while it was down.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use fedgw_tests::wait_for;

use crate::common::procs::{NET, fast, fedgw, json, s};

/// Founds org1 in `tmp/org1` and starts it, joins org2 into `tmp/org2` (not started).
fn pair(tmp: &Path) -> (fedgw_tests::Gateway, std::path::PathBuf, std::path::PathBuf) {
    let (o1, o2) = (tmp.join("org1"), tmp.join("org2"));
    let d1 = s(&o1);
    let mut args = vec!["init", "--consortium", "acme", "--domain", "acme.test"];
    args.extend(["--org", "org1", "--data-dir", &d1]);
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    fast(&o1);
    let g1 = fedgw().start(&o1).expect("org1");
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &d1])
        .expect("spawn")
        .ok()
        .expect("invite");
    let d2 = s(&o2);
    let mut args = vec![
        "join",
        token.stdout.trim(),
        "--org",
        "org2",
        "--data-dir",
        &d2,
    ];
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("join");
    fast(&o2);
    (g1, o1, o2)
}

fn add_node(dir: &Path, name: &str, key: u64) {
    let enode = format!(
        "enode://{}@10.9.0.{key}:30303?discport=0&raftport=50400",
        fedgw_tests::enode_id(key)
    );
    fedgw()
        .run([
            "node",
            "add",
            name,
            "--enode",
            &enode,
            "--data-dir",
            &s(dir),
        ])
        .expect("spawn")
        .ok()
        .expect("node add");
}

fn node_names(dir: &Path) -> Vec<String> {
    json(dir, "nodes")
        .as_array()
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

fn diagnose(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let run = fedgw()
        .run(["diagnose", "--json", "--data-dir", &s(dir)])
        .expect("spawn");
    let v = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    (run.code, v)
}

fn level(v: &serde_json::Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["level"].as_str())
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
        .to_owned()
}

#[test]
fn diagnose_passes_on_a_linked_pair_and_fails_on_a_stopped_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (g1, o1, o2) = pair(tmp.path());
    let g2 = fedgw().start(&o2).expect("org2");
    add_node(&o2, "node1", 1);
    wait_for("org2's node at org1", Duration::from_secs(20), || {
        node_names(&o1)
            .contains(&"org2/node1".to_owned())
            .then_some(())
    })
    .expect("synced");
    // the tunnel link comes up on its own schedule: wait until diagnose passes
    let v = wait_for("diagnose to pass", Duration::from_secs(30), || {
        let (code, v) = diagnose(&o1);
        (code == Some(0) && v["result"] == "ok").then_some(v)
    })
    .expect("diagnose passes");
    for name in [
        "gateway",
        "dns",
        "sync org2/dc1",
        "clock org2/dc1",
        "certificate gateway leaf",
        "certificate org CA",
        "certificate root CA",
        "certificate peer org2/dc1 leaf",
        "tunnel org2/dc1",
        "address pool",
        "listeners",
        "store",
    ] {
        assert_eq!(level(&v, name), "ok", "{name}: {v}");
    }
    assert_eq!(level(&v, "rendered files"), "skip");

    // a rendered file: missing, then current once rendered, then out of date after a change
    let file = tmp.path().join("static-nodes.json");
    let spec = format!("static-nodes={}", s(&file));
    let name = format!("rendered {}", s(&file));
    let rendered_level = || {
        let run = fedgw()
            .run([
                "diagnose",
                "--json",
                "--rendered",
                &spec,
                "--data-dir",
                &s(&o1),
            ])
            .expect("spawn");
        let v: serde_json::Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        level(&v, &name)
    };
    assert_eq!(rendered_level(), "warn", "missing");
    fedgw()
        .run([
            "render",
            "static-nodes",
            "--out",
            &s(&file),
            "--data-dir",
            &s(&o1),
        ])
        .expect("spawn")
        .ok()
        .expect("render");
    assert_eq!(rendered_level(), "ok");
    add_node(&o2, "node2", 2);
    wait_for(
        "org2's second node at org1",
        Duration::from_secs(20),
        || {
            node_names(&o1)
                .contains(&"org2/node2".to_owned())
                .then_some(())
        },
    )
    .expect("synced");
    assert_eq!(rendered_level(), "warn", "out of date");
    let bad = fedgw()
        .run(["diagnose", "--rendered", "nonsense", "--data-dir", &s(&o1)])
        .expect("spawn");
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);

    drop(g2);
    g1.stop().expect("stop");
    let (code, v) = diagnose(&o1);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(level(&v, "gateway"), "fail");
    // the store is read directly when no gateway holds it
    assert_eq!(level(&v, "store"), "ok", "{v}");
    let text = fedgw()
        .run(["diagnose", "--data-dir", &s(&o1)])
        .expect("spawn");
    assert!(text.stdout.contains("FAIL  gateway"), "{}", text.stdout);
    assert!(
        text.stdout.contains("fix: start the gateway"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_restored_backup_rejoins_and_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (g1, o1, o2) = pair(tmp.path());
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").expect("pass");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "wrong horse\n").expect("wrong");
    let g2 = fedgw().start(&o2).expect("org2");
    add_node(&o2, "node1", 1);
    wait_for("org2's node at org1", Duration::from_secs(20), || {
        node_names(&o1)
            .contains(&"org2/node1".to_owned())
            .then_some(())
    })
    .expect("synced");

    // a backup of the running gateway (its store is locked: the snapshot comes over admin.sock)
    let archive = tmp.path().join("org2.fedgwbak");
    let run = fedgw()
        .run([
            "backup",
            "--out",
            &s(&archive),
            "--passphrase-file",
            &s(&pass),
            "--data-dir",
            &s(&o2),
        ])
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{run:?}");
    let mode = std::fs::metadata(&archive)
        .expect("archive")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bytes = std::fs::read(&archive).expect("read");
    assert!(
        !bytes.windows(10).any(|w| w == b"PRIVATE KE"),
        "keys in the clear"
    );

    // the gateway is lost; org1 changes the view meanwhile
    g2.stop().expect("stop org2");
    add_node(&o1, "late", 2);

    let fresh = tmp.path().join("org2-restored");
    let restore = |file: &Path, pass: &Path, dir: &Path| {
        fedgw()
            .run([
                "restore",
                &s(file),
                "--passphrase-file",
                &s(pass),
                "--data-dir",
                &s(dir),
            ])
            .expect("spawn")
    };
    let bad = restore(&archive, &wrong, &fresh);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(
        bad.stderr.contains("passphrase does not open"),
        "{}",
        bad.stderr
    );
    assert!(
        !fresh.join("fedgw.toml").exists(),
        "nothing written on failure"
    );
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let damaged_file = tmp.path().join("damaged.fedgwbak");
    std::fs::write(&damaged_file, &damaged).expect("write");
    let bad = restore(&damaged_file, &pass, &fresh);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(
        bad.stderr.contains("not a readable fedgw backup"),
        "{}",
        bad.stderr
    );
    let occupied = restore(&archive, &pass, &o1);
    assert_eq!(occupied.code, Some(64), "{occupied:?}");
    assert!(
        occupied.stderr.contains("already holds"),
        "{}",
        occupied.stderr
    );

    restore(&archive, &pass, &fresh).ok().expect("restore");
    for key in ["org-ca.key", "gateway.key"] {
        let mode = std::fs::metadata(fresh.join(key))
            .expect(key)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let _g2 = fedgw().start(&fresh).expect("restored org2");
    // it still has its own node from the backup, and catches up with org1's change
    wait_for(
        "the restored gateway to catch up",
        Duration::from_secs(30),
        || {
            let names = node_names(&fresh);
            (names.contains(&"org2/node1".to_owned()) && names.contains(&"org1/late".to_owned()))
                .then_some(())
        },
    )
    .expect("caught up");
    drop(g1);
}
