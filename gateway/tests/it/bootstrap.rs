//! A gateway whose store is empty or damaged, as real processes: the damaged file is a clear
//! error with its own exit code, `fedgw store rebuild` fetches the view again from a running
//! peer, and a gateway started from only the files of `fedgw export k8s` (the Kubernetes
//! Secret) fills its empty store from the peers, turns ready and syncs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedgw_gateway::config::Config;
use fedgw_tests::wait_for;

use crate::common::procs::{NET, fast, fedgw, json, s};

/// The pod addresses of `fedgw export k8s`, on loopback port 0 for a test.
const POD: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--dns",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
];

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

fn digest(dir: &Path) -> String {
    json(dir, "status")["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn gateways_of(dir: &Path, org: &str) -> Vec<String> {
    json(dir, "members")
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["org"] == org)
        .flat_map(|m| m["gateways"].as_array().cloned().unwrap_or_default())
        .map(|g| g["site"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Founds org1 in `tmp/org1` and joins org2 into `tmp/org2` (not started).
fn consortium(tmp: &Path) -> (PathBuf, PathBuf) {
    let (o1, o2) = (tmp.join("org1"), tmp.join("org2"));
    let d1 = s(&o1);
    let mut args = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
    ];
    args.extend(["--data-dir", &d1]);
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    fast(&o1);
    (o1, o2)
}

fn join(o1: &Path, o2: &Path) {
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(o1)])
        .expect("spawn")
        .ok()
        .expect("invite");
    let d2 = s(o2);
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
    fast(o2);
}

fn add_node(dir: &Path, name: &str, key: u64, host: &str) {
    let add = fedgw()
        .run([
            "node",
            "add",
            name,
            "--data-dir",
            &s(dir),
            "--enode",
            &format!(
                "enode://{}@{host}:30303?discport=0&raftport=50400",
                fedgw_tests::enode_id(key)
            ),
        ])
        .expect("spawn");
    assert_eq!(add.code, Some(0), "{}", add.stderr);
}

#[test]
fn a_damaged_store_is_exit_20_and_rebuild_fetches_the_view_from_a_running_peer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, o2) = consortium(tmp.path());
    let gw1 = fedgw().start(&o1).expect("org1");
    join(&o1, &o2);
    let gw2 = fedgw().start(&o2).expect("org2");
    add_node(&o1, "node1", 11, "10.1.0.1");
    add_node(&o2, "node2", 12, "10.2.0.2");
    let want = vec!["org1/node1".to_owned(), "org2/node2".to_owned()];
    wait_for("org2 sees both nodes", Duration::from_secs(20), || {
        (node_names(&o2) == want).then_some(())
    })
    .expect("synced");
    assert!(gw2.stop().expect("stop").success());

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 2] = [
        ("truncated to 4 KiB", |b| b.truncate(4096)),
        ("a byte flipped in every page", |b| {
            for p in (100..b.len()).step_by(4096) {
                b[p] ^= 0xff;
            }
        }),
    ];
    for (what, damage) in damages {
        let store = o2.join("store.redb");
        let mut bytes = std::fs::read(&store).expect("read store");
        damage(&mut bytes);
        std::fs::write(&store, &bytes).expect("write store");

        let run = fedgw().run(["run", "--data-dir", &s(&o2)]).expect("spawn");
        assert_eq!(run.code, Some(20), "{what}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("store {} is damaged", s(&store))),
            "{what}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("fedgw store rebuild"),
            "{what}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("thread '"),
            "no panic message: {}",
            run.stderr
        );

        let rebuild = fedgw()
            .run([
                "store",
                "rebuild",
                "--data-dir",
                &s(&o2),
                "--timeout",
                "30s",
            ])
            .expect("spawn");
        assert_eq!(
            rebuild.code,
            Some(0),
            "{what}: {}{}",
            rebuild.stdout,
            rebuild.stderr
        );
        assert!(
            rebuild.stdout.contains("the same view as org1/dc1"),
            "{what}: {}",
            rebuild.stdout
        );
        assert!(
            rebuild.stdout.contains("the damaged file is kept as"),
            "{}",
            rebuild.stdout
        );
        assert!(
            rebuild
                .stdout
                .lines()
                .any(|l| l.starts_with("lost: ") || l.starts_with("kept: ")),
            "{}",
            rebuild.stdout
        );
        // a healthy store is not rebuilt by mistake
        let again = fedgw()
            .run(["store", "rebuild", "--data-dir", &s(&o2)])
            .expect("spawn");
        assert_eq!(again.code, Some(64), "{}", again.stderr);

        let gw2 = fedgw()
            .start(&o2)
            .expect("org2 starts on the rebuilt store");
        assert_eq!(
            node_names(&o2),
            want,
            "{what}: the view came back from org1"
        );
        wait_for("equal digests", Duration::from_secs(20), || {
            (digest(&o1) == digest(&o2)).then_some(())
        })
        .expect("converged");
        assert!(gw2.stop().expect("stop").success());
    }

    // the founder's store: its config names no peers and nothing of the old file reads, so it
    // needs --peer; the admissions ledger comes back from the view (org2 cannot be invited
    // again)
    let gw2 = fedgw().start(&o2).expect("org2");
    let org2_at = gw2.endpoint();
    assert!(gw1.stop().expect("stop").success());
    let store1 = o1.join("store.redb");
    let bytes = std::fs::read(&store1).expect("read");
    std::fs::write(&store1, &bytes[..4096]).expect("truncate");
    let alone = fedgw()
        .run([
            "store",
            "rebuild",
            "--data-dir",
            &s(&o1),
            "--timeout",
            "30s",
        ])
        .expect("spawn");
    assert_eq!(alone.code, Some(64), "{}", alone.stderr);
    assert!(alone.stderr.contains("--peer"), "{}", alone.stderr);
    assert_eq!(
        std::fs::metadata(&store1).expect("stat").len(),
        4096,
        "a failed rebuild leaves the damaged file in place"
    );
    assert!(!o1.join("store.redb.rebuild").exists());
    let peer = format!("org2/dc1={org2_at}");
    let rebuild = fedgw()
        .run([
            "store",
            "rebuild",
            "--data-dir",
            &s(&o1),
            "--peer",
            &peer,
            "--timeout",
            "30s",
        ])
        .expect("spawn");
    assert_eq!(
        rebuild.code,
        Some(0),
        "{}{}",
        rebuild.stdout,
        rebuild.stderr
    );
    assert!(
        rebuild.stdout.contains("lost: invites"),
        "{}",
        rebuild.stdout
    );
    let invite = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&o1)])
        .expect("spawn");
    assert_eq!(invite.code, Some(64), "{}", invite.stderr);
    assert!(
        invite.stderr.contains("already a member"),
        "{}",
        invite.stderr
    );
    let gw1 = fedgw()
        .start(&o1)
        .expect("org1 starts on the rebuilt store");
    assert_eq!(node_names(&o1), want);
    assert!(gw2.stop().expect("stop").success());

    let damaged = std::fs::read_dir(&o2)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.redb.damaged-")
        })
        .count();
    assert!(damaged >= 1, "the damaged files are kept");
    assert!(gw1.stop().expect("stop").success());
}

/// Writes the files of an exported Secret into a fresh data dir, as the Deployment mounts them.
fn pod_dir(secret: &str, dir: &Path) {
    pod_dir_with(
        secret,
        dir,
        &["fedgw.toml", "org-ca.key", "org-ca.pem", "root-ca.pem"],
    );
}

fn pod_dir_with(secret: &str, dir: &Path, expected: &[&str]) {
    let doc: serde_yaml::Value = serde_yaml::from_str(secret).expect("YAML");
    assert_eq!(doc["kind"], "Secret");
    let files = doc["stringData"].as_mapping().expect("stringData");
    let names: Vec<&str> = files.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, expected);
    std::fs::create_dir(dir).expect("mkdir");
    for (name, text) in files {
        let name = name.as_str().expect("name");
        std::fs::write(dir.join(name), text.as_str().expect("text")).expect("write");
    }
}

fn export(dir: &Path, ns: &str) -> String {
    export_with(dir, ns, &[])
}

fn export_with(dir: &Path, ns: &str, extra: &[&str]) -> String {
    let mut args = vec!["export", "k8s", "--namespace", ns];
    args.extend(extra);
    let d = s(dir);
    args.extend(["--data-dir", &d]);
    args.extend(POD);
    let run = fedgw().run(args).expect("spawn");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stdout
}

#[test]
fn a_gateway_started_from_the_exported_secret_fills_its_store_from_peers_and_syncs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, o2) = consortium(tmp.path());
    let gw1 = fedgw().start(&o1).expect("org1");
    join(&o1, &o2);
    add_node(&o1, "node1", 11, "10.1.0.1");

    // org2 exports its joined data dir (never run) and a "pod" starts from exactly those files
    let secret = export(&o2, "org2");
    assert!(secret.contains("namespace: org2"), "{secret}");
    let pod2 = tmp.path().join("pod-org2");
    pod_dir(&secret, &pod2);
    let config = Config::load(&pod2.join("fedgw.toml")).expect("exported config loads");
    assert!(!config.root_holder);
    assert_eq!(
        config.peers.len(),
        1,
        "org1's gateway to fetch from: {:?}",
        config.peers
    );
    assert!(!pod2.join("store.redb").exists());
    let gw2 = fedgw().start(&pod2).expect("the pod becomes ready");
    assert_eq!(node_names(&pod2), ["org1/node1"]);
    add_node(&pod2, "node2", 12, "10.2.0.2");
    wait_for(
        "org1 sees org2's gateway and node",
        Duration::from_secs(20),
        || {
            (gateways_of(&o1, "org2") == ["dc1"] && node_names(&o1) == ["org1/node1", "org2/node2"])
                .then_some(())
        },
    )
    .expect("synced");

    // the founder too: its Secret leaves the root key out, and its pod fetches from org2
    let secret = export(&o1, "org1");
    assert!(!secret.contains("root-ca.key"), "{secret}");
    assert!(gw1.stop().expect("stop").success());
    let pod1 = tmp.path().join("pod-org1");
    pod_dir(&secret, &pod1);
    let gw1 = fedgw()
        .start(&pod1)
        .expect("the founder's pod becomes ready");
    assert_eq!(node_names(&pod1), ["org1/node1", "org2/node2"]);
    wait_for("equal digests", Duration::from_secs(20), || {
        (digest(&pod1) == digest(&pod2)).then_some(())
    })
    .expect("converged");
    assert!(gw1.stop().expect("stop").success());
    assert!(gw2.stop().expect("stop").success());
}

/// An empty store with no peer to fetch the membership from is a usage error about the store
/// (exit 64), not a failure to publish; with a peer listed that does not answer, the gateway
/// waits (not ready) and stops cleanly on SIGTERM.
#[test]
fn an_empty_store_without_peers_is_a_clear_error_and_a_waiting_gateway_stops_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, _) = consortium(tmp.path());
    std::fs::remove_file(o1.join("store.redb")).expect("rm store");
    // the founder's data dir as its pods see it: without the root key's role
    let path = o1.join("fedgw.toml");
    let mut c = Config::load(&path).expect("config");
    c.root_holder = false;
    std::fs::write(&path, c.to_toml()).expect("write");
    let run = fedgw().run(["run", "--data-dir", &s(&o1)]).expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("no peer gateway is known") && run.stderr.contains("[[peers]]"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("is not a member"), "{}", run.stderr);

    // a listener that never answers TLS stands in for a peer that is down
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let path = o1.join("fedgw.toml");
    let mut c = Config::load(&path).expect("config");
    c.peers = vec![fedgw_gateway::config::PeerConfig {
        org: "org2".into(),
        site: "dc1".into(),
        replica: String::new(),
        advertise: vec![silent.local_addr().expect("addr").to_string()],
    }];
    std::fs::write(&path, c.to_toml()).expect("write");
    let log = tmp.path().join("waiting.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args(["run", "--data-dir", &s(&o1)])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    wait_for(
        "the gateway waits for its peers",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("fetching it from peers"))
                .map(|_| ())
        },
    )
    .expect("waiting");
    assert!(!o1.join("run.json").exists(), "not ready while waiting");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = wait_for("exit", Duration::from_secs(20), || {
        child.try_wait().ok().flatten()
    })
    .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}

/// The first gateway of a consortium has no peer to fetch from: exported with its root key, its
/// pod admits its own org again from the root and becomes ready; without the key it says why.
#[test]
fn the_founders_pod_with_the_root_key_and_no_peers_admits_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, _) = consortium(tmp.path());
    let secret = export_with(&o1, "org1", &["--include-root-key"]);
    let pod = tmp.path().join("pod-org1");
    pod_dir_with(
        &secret,
        &pod,
        &[
            "fedgw.toml",
            "org-ca.key",
            "org-ca.pem",
            "root-ca.key",
            "root-ca.pem",
        ],
    );
    assert!(
        Config::load(&pod.join("fedgw.toml"))
            .expect("config")
            .root_holder
    );
    let gw = fedgw()
        .start(&pod)
        .expect("the founder's pod becomes ready");
    let members = json(&pod, "members");
    assert_eq!(members[0]["org"], "org1", "{members}");
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&pod)])
        .expect("spawn");
    assert_eq!(token.code, Some(0), "it admits orgs: {}", token.stderr);
    assert!(gw.stop().expect("stop").success());

    let without = tmp.path().join("pod-without-key");
    pod_dir(&export(&o1, "org1"), &without);
    let run = fedgw()
        .run(["run", "--data-dir", &s(&without)])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("no peer gateway is known"),
        "{}",
        run.stderr
    );
}
