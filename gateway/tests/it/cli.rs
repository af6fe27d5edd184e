//! The `fedgw` binary end to end: real processes on loopback, port 0 everywhere, readiness from
//! `DIR/run.json`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fedgw_certs::{PeerVerifier, RevocationSet, pki, tls};
use fedgw_tests::{Fedgw, Gateway, http_get};
use x509_parser::extensions::{GeneralName, ParsedExtension};

pub(crate) fn fedgw() -> Fedgw {
    Fedgw::new(env!("CARGO_BIN_EXE_fedgw"))
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

const LOOPBACK: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
    "--dns",
    "127.0.0.1:0",
];

/// `fedgw init` of org1 (consortium acme, domain acme.test) into `dir`, advertising
/// `advertise`, on loopback ports, with `extra` arguments.
pub(crate) fn init_args(dir: &Path, advertise: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "init",
        "--consortium",
        "acme",
        "--domain",
        "acme.test",
        "--org",
        "org1",
        "--advertise",
        advertise,
    ];
    args.extend(LOOPBACK);
    args.extend(extra);
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    args.extend(["--data-dir".to_owned(), s(dir)]);
    args
}

pub(crate) fn init(dir: &Path, advertise: &str) {
    let args = init_args(dir, advertise, &[]);
    fedgw().run(args).expect("spawn").ok().expect("init");
}

pub(crate) fn invite(dir: &Path, org: &str) -> String {
    let run = fedgw()
        .run(["invite", org, "--data-dir", &s(dir)])
        .expect("spawn")
        .ok()
        .expect("invite");
    run.stdout.trim().to_owned()
}

fn join(token: &str, org: &str, dir: &Path) -> fedgw_tests::Run {
    join_within(token, org, dir, "10s")
}

/// `fedgw join` on loopback with `--timeout timeout`.
fn join_within(token: &str, org: &str, dir: &Path, timeout: &str) -> fedgw_tests::Run {
    join_with(token, org, dir, &["--timeout", timeout])
}

/// `fedgw join` of `org` into `dir` on loopback, with `extra` arguments.
pub(crate) fn join_with(token: &str, org: &str, dir: &Path, extra: &[&str]) -> fedgw_tests::Run {
    let d = s(dir);
    let mut args = vec![
        "join",
        token,
        "--org",
        org,
        "--data-dir",
        &d,
        "--advertise",
        "127.0.0.1:0",
    ];
    args.extend(LOOPBACK);
    args.extend(extra);
    fedgw().run(args).expect("spawn")
}

pub(crate) fn founder(tmp: &Path) -> Gateway {
    let a = tmp.join("org1");
    init(&a, "127.0.0.1:0");
    fedgw().start(&a).expect("org1 gateway starts")
}

fn cert(path: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read_to_string(path).expect("read pem");
    pki::certs_from_pem(&pem)
        .expect("pem")
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn founder_invites_org2_which_joins_and_both_gateways_see_each_other() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let (status, _) = http_get(&gw1.metrics(), "/readyz").expect("readyz");
    assert_eq!(status, 200);

    // invite while the gateway runs: it goes through the admin socket
    let token = invite(&gw1.dir, "org2");
    assert!(
        token.starts_with("fedgw1.") && token.contains(&format!("@{}#sha256:", gw1.endpoint())),
        "{token}"
    );
    let b = tmp.path().join("org2");
    let run = join(&token, "org2", &b);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("joined consortium acme (acme.test) as org2"),
        "{}",
        run.stdout
    );

    // org2's CA: constrained to org2.acme.test only, pathlen 0, signed for org2's own key
    let org_ca = cert(&b.join("org-ca.pem")).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&org_ca).expect("parse");
    let mut permitted = vec![];
    let mut pathlen = None;
    for ext in parsed.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::NameConstraints(nc) => {
                for sub in nc.permitted_subtrees.iter().flatten() {
                    if let GeneralName::DNSName(d) = sub.base {
                        permitted.push(d.to_owned());
                    }
                }
                assert!(nc.excluded_subtrees.is_none());
            }
            ParsedExtension::BasicConstraints(bc) => pathlen = bc.path_len_constraint,
            _ => {}
        }
    }
    assert_eq!(permitted, ["org2.acme.test"]);
    assert_eq!(pathlen, Some(0));
    for key in ["org-ca.key", "gateway.key"] {
        assert_eq!(mode(&b.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&gw1.dir.join("root-ca.key")), 0o600);
    assert!(
        !b.join("root-ca.key").exists(),
        "the root key never leaves the founder"
    );
    assert_eq!(
        cert(&b.join("root-ca.pem")),
        cert(&gw1.dir.join("root-ca.pem"))
    );

    // org2's gateway leaf verifies against the consortium root
    let root = cert(&gw1.dir.join("root-ca.pem")).remove(0);
    let chain = cert(&b.join("gateway.pem"));
    let v = PeerVerifier::new(
        root.into(),
        "acme.test",
        RevocationSet::default(),
        &tls::provider(),
    )
    .expect("v");
    let intermediates: Vec<_> = chain[1..].iter().map(|c| c.clone().into()).collect();
    let id = v
        .verify_chain(
            &chain[0].clone().into(),
            &intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki_usage(),
        )
        .expect("org2 leaf chains to the root");
    assert_eq!(id.dns_name, "gw-dc1.org2.acme.test");

    // mTLS both ways between the two gateway processes
    let gw2 = fedgw().start(&b).expect("org2 gateway starts");
    let ping = |from: &Path, to: &Gateway| {
        let run = fedgw()
            .run(["ping", &to.endpoint(), "--data-dir", &s(from), "--json"])
            .expect("spawn")
            .ok()
            .expect("ping");
        serde_json::from_str::<serde_json::Value>(&run.stdout).expect("json")
    };
    let seen = ping(&b, &gw1);
    assert_eq!(seen["server"]["org"], "org1");
    assert_eq!(seen["seen_as"]["org"], "org2");
    let seen = ping(&gw1.dir, &gw2);
    assert_eq!(seen["server"]["org"], "org2");
    assert_eq!(seen["seen_as"]["org"], "org1");
    assert_eq!(
        seen["seen_as"]["spiffe_id"],
        "spiffe://acme.test/org/org1/gw/dc1"
    );

    // graceful shutdown on SIGTERM: exit 0, run files removed
    for gw in [gw2, gw1] {
        let dir = gw.dir.clone();
        let status = gw.stop().expect("stops");
        assert!(status.success(), "{status}");
        assert!(!dir.join("run.json").exists());
        assert!(!dir.join("admin.sock").exists());
    }
}

fn webpki_usage() -> webpki::KeyUsage {
    webpki::KeyUsage::server_auth()
}

#[test]
fn join_refusals_have_distinct_exit_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let dir = |n: &str| tmp.path().join(n);

    // wrong org: 13, and the token survives it
    let token = invite(&gw1.dir, "org2");
    assert_eq!(join(&token, "org3", &dir("x1")).code, Some(13));
    assert!(!dir("x1").exists(), "nothing written on refusal");
    assert_eq!(join(&token, "org2", &dir("org2")).code, Some(0));
    // reused: 12
    let run = join(&token, "org2", &dir("x2"));
    assert_eq!(run.code, Some(12), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one line: {}",
        run.stderr
    );
    assert!(run.stderr.contains("already used"), "{}", run.stderr);

    // unknown: 10
    let fresh = invite(&gw1.dir, "org3");
    let other_id = "0123456789abcdef";
    let unknown = format!("fedgw1.{other_id}{}", &fresh["fedgw1.".len() + 16..]);
    assert_eq!(join(&unknown, "org3", &dir("x3")).code, Some(10));

    // pin mismatch: 14
    // flip the pin's first character: it carries six whole bits (the last one has two unused
    // bits, and setting them makes the text malformed rather than a different pin)
    let mut wrong_pin = fresh.clone();
    let i = wrong_pin.len() - 43;
    let first = if wrong_pin[i..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    wrong_pin.replace_range(i..i + 1, first);
    let run = join(&wrong_pin, "org3", &dir("x4"));
    assert_eq!(run.code, Some(14), "{}", run.stderr);
    assert!(run.stderr.contains("pin mismatch"), "{}", run.stderr);

    // malformed: 64
    assert_eq!(join("fedgw1.nope", "org3", &dir("x5")).code, Some(64));
    assert_eq!(join(&fresh, "Org3", &dir("x5")).code, Some(64));

    // unreachable: 15
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let unreachable = fresh.replace(&gw1.endpoint(), &dead);
    assert_eq!(join(&unreachable, "org3", &dir("x6")).code, Some(15));

    // the untouched invite still works
    assert_eq!(join(&fresh, "org3", &dir("org3")).code, Some(0));
    let metrics = http_get(&gw1.metrics(), "/metrics").expect("metrics").1;
    assert!(
        metrics.contains(r#"fedgw_join_requests_total{result="admitted"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fedgw_join_requests_total{result="wrong_org"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&fresh[7..23]),
        "token ids stay out of metrics"
    );
    assert!(
        !gw1.log_text()
            .contains(fresh.split('@').next().expect("head")),
        "token secret logged"
    );
}

#[test]
fn invite_works_offline_and_needs_a_real_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "gw.org1.example.com:7443");
    let token = invite(&a, "org2");
    assert!(
        token.contains("@gw.org1.example.com:7443#sha256:"),
        "{token}"
    );
    let pin = pki::spki_sha256(&cert(&a.join("root-ca.pem"))[0]).expect("pin");
    assert!(token.ends_with(&fedgw_certs::token::encode_pin(&pin)));

    let b = tmp.path().join("org1b");
    init(&b, "127.0.0.1:0");
    let run = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&b)])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    let run = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&b), "--ttl", "0s"])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
}

#[test]
fn run_refuses_bad_config_and_a_second_instance() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = fedgw()
        .run(["run", "--data-dir", &s(&tmp.path().join("none"))])
        .expect("spawn");
    assert_eq!(missing.code, Some(64));
    let threads = fedgw()
        .run([
            "run",
            "--data-dir",
            &s(&tmp.path().join("none")),
            "--worker-threads",
            "100000",
        ])
        .expect("spawn");
    assert_eq!(threads.code, Some(64), "{}", threads.stderr);
    assert!(threads.stderr.contains("0..=1024"), "{}", threads.stderr);

    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let gw = fedgw().start(&a).expect("starts");
    let second = fedgw().run(["run", "--data-dir", &s(&a)]).expect("spawn");
    assert_ne!(second.code, Some(0));
    assert!(
        second.stderr.contains("already running") || second.stderr.contains("in use"),
        "{}",
        second.stderr
    );
    assert!(gw.stop().expect("stop").success());

    let config = a.join("fedgw.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}\nlisten_port = 1\n")).expect("write");
    let bad = fedgw().run(["run", "--data-dir", &s(&a)]).expect("spawn");
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    assert!(bad.stderr.contains("listen_port"), "{}", bad.stderr);
}

#[test]
fn init_refuses_bad_names_and_existing_dirs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let again = fedgw()
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
            "--data-dir",
            &s(&a),
        ])
        .expect("spawn");
    assert_ne!(again.code, Some(0));
    let b = tmp.path().join("b");
    for (flag, bad) in [
        ("--org", "Org_1"),
        ("--domain", "acme"),
        ("--advertise", "nohost"),
    ] {
        let mut args = vec![
            "init",
            "--consortium",
            "acme",
            "--domain",
            "acme.test",
            "--org",
            "org1",
            "--advertise",
            "127.0.0.1:0",
        ];
        let i = args.iter().position(|a| *a == flag).expect("flag");
        args[i + 1] = bad;
        let d = s(&b);
        args.extend(["--data-dir", &d]);
        assert_eq!(
            fedgw().run(args).expect("spawn").code,
            Some(64),
            "{flag} {bad}"
        );
    }
    let genesis = tmp.path().join("genesis.json");
    std::fs::write(&genesis, "[1,2]").expect("write");
    let run = fedgw()
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
            "--genesis",
            &s(&genesis),
            "--data-dir",
            &s(&b),
        ])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
}

#[test]
fn lab_check_founds_joins_and_links_every_pair() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lab");
    let run = fedgw()
        .run(["lab", "--check", "--orgs", "3", "--dir", &s(&dir)])
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("lab check: 29 passed, 0 failed"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    // majority admission: the third org needed both members' approval
    assert!(
        run.stdout
            .contains("PASS  join org3 (majority admission: 2 of 2 members approved)"),
        "{}",
        run.stdout
    );
    for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
        let line = format!("PASS  traffic org{a} -> org{b} ");
        assert!(run.stdout.contains(&line), "{line} in {}", run.stdout);
    }
    let lab: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).expect("lab.json"))
            .expect("json");
    assert_eq!(lab["consortium"], "acme");
    assert_eq!(lab["domain"], "acme.test");
    let orgs = lab["orgs"].as_array().expect("orgs");
    assert_eq!(orgs.len(), 3);
    for (i, o) in orgs.iter().enumerate() {
        assert_eq!(o["org"], format!("org{}", i + 1));
        for key in ["data_dir", "gateway", "dns", "metrics"] {
            assert!(
                o[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key} in {o}"
            );
        }
        // the lab's gateways were stopped cleanly
        let data_dir = std::path::PathBuf::from(o["data_dir"].as_str().expect("dir"));
        assert!(!data_dir.join("run.json").exists());
    }
    // the eight sample nodes, shared out, each with its real and per-site local addresses
    let nodes = lab["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 8);
    let sample = include_str!("../../../proto/data/goquorum-static-nodes.raft.json");
    for n in nodes {
        let (org, name) = (
            n["org"].as_str().expect("org"),
            n["name"].as_str().expect("name"),
        );
        assert_eq!(n["dns_name"], format!("{name}.{org}.acme.test"));
        let enode = n["enode"].as_str().expect("enode");
        assert!(sample.contains(enode), "{enode} comes from the sample");
        assert!(
            n["real"]["p2p"]
                .as_str()
                .is_some_and(|a| a.ends_with(":30303"))
        );
        assert!(
            n["real"]["tessera"]
                .as_str()
                .is_some_and(|u| u.ends_with(":9000"))
        );
        let local = n["local"].as_object().expect("local");
        assert_eq!(
            local.len(),
            2,
            "every other org has a local address for {name}.{org}"
        );
        assert!(!local.contains_key(org));
    }
    // a second lab in the same dir is refused rather than mixed with the first
    let again = fedgw()
        .run(["lab", "--check", "--dir", &s(&dir)])
        .expect("spawn");
    assert_ne!(again.code, Some(0));
}

#[test]
fn run_waits_for_the_data_dir_then_serves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("org1");
    let log = tmp.path().join("org1.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args(["run", "--wait-for-config", "--data-dir", &s(&dir)])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    fedgw_tests::wait_for("the waiting message", fedgw_tests::READY_TIMEOUT, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("waiting for fedgw init"))
    })
    .expect("run waits for a config");
    assert!(child.try_wait().expect("wait").is_none(), "still running");
    init(&dir, "127.0.0.1:0");
    let info = fedgw_tests::wait_for("run.json", fedgw_tests::READY_TIMEOUT, || {
        std::fs::read_to_string(dir.join("run.json")).ok()
    })
    .unwrap_or_else(|e| {
        panic!(
            "the gateway starts once the data dir exists: {e}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let info: serde_json::Value = serde_json::from_str(&info).expect("run.json");
    let metrics = info["metrics"].as_str().expect("metrics address");
    assert_eq!(http_get(metrics, "/readyz").expect("readyz").0, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn run_with_log_format_json_writes_one_json_object_a_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("org1");
    let log = tmp.path().join("org1.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args([
            "run",
            "--wait-for-config",
            "--log-format",
            "json",
            "--data-dir",
            &s(&dir),
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let text = fedgw_tests::wait_for("the waiting message", fedgw_tests::READY_TIMEOUT, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("waiting for fedgw init") && t.ends_with('\n'))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = text.expect("run logs while it waits");
    assert!(!text.contains('\x1b'), "no ANSI colour: {text:?}");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("a JSON line");
    assert_eq!(line["level"], "INFO");
    assert_eq!(
        line["fields"]["message"],
        "waiting for fedgw init or fedgw join"
    );
}

#[test]
fn stand_in_and_probe_check_echo_and_upcheck() {
    let port = |l: std::net::TcpListener| l.local_addr().expect("addr").port();
    // free ports for the stand-in (it binds them itself)
    let (echo, http) = (
        port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
        port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args([
            "stand-in",
            "--echo",
            &format!("127.0.0.1:{echo}"),
            "--http",
            &format!("127.0.0.1:{http}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("ready line");
    assert!(line.starts_with("stand-in serving"), "{line}");
    let ok = fedgw()
        .run(["probe", &format!("127.0.0.1:{echo}"), "--bytes", "100000"])
        .expect("spawn");
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(ok.stdout.starts_with("ok "), "{}", ok.stdout);
    let ok = fedgw()
        .run(["probe", &format!("localhost:{http}"), "--http"])
        .expect("spawn");
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let _ = child.kill();
    let _ = child.wait();
    let failed = fedgw()
        .run(["probe", &format!("127.0.0.1:{echo}"), "--timeout", "2s"])
        .expect("spawn");
    assert_eq!(failed.code, Some(1), "a dead node fails the probe");
}

#[test]
fn cert_issue_writes_a_node_certificate_that_verifies_under_its_consortium_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let out = tmp.path().join("tls");
    let issue = |name: &str, extra: &[&str]| {
        let (d, o) = (s(&a), s(&out));
        let mut args = vec!["cert", "issue", name, "--data-dir", &d, "--out-dir", &o];
        args.extend(extra);
        fedgw().run(args).expect("spawn")
    };
    let run = issue(
        "tm1",
        &["--dns", "tessera.org1.acme.test", "--lifetime", "30d"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("issued tm1.org1.acme.test, tessera.org1.acme.test"),
        "{}",
        run.stdout
    );
    assert_eq!(mode(&out.join("tm1.key")), 0o600);
    assert_eq!(cert(&out.join("ca.crt")), cert(&a.join("root-ca.pem")));
    let chain = cert(&out.join("tm1.crt"));
    assert_eq!(chain.len(), 2, "leaf and org CA");
    assert_eq!(chain[1], cert(&a.join("org-ca.pem"))[0]);

    // a TLS client that trusts the consortium root accepts it for the node's names only
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert(&out.join("ca.crt")).remove(0).into())
        .expect("root");
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), tls::provider())
            .build()
            .expect("verifier");
    let leaf: rustls_pki_types::CertificateDer<'static> = chain[0].clone().into();
    let intermediates = [chain[1].clone().into()];
    let verify = |name: &str| {
        use rustls::client::danger::ServerCertVerifier as _;
        verifier.verify_server_cert(
            &leaf,
            &intermediates,
            &rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name"),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
    };
    for name in ["tm1.org1.acme.test", "tessera.org1.acme.test"] {
        verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify("tm1.org2.acme.test").is_err());
    // the key is the certificate's
    let key_pem = std::fs::read_to_string(out.join("tm1.key")).expect("key");
    use rustls_pki_types::pem::PemObject as _;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("pem key");
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![leaf.clone(), intermediates[0].clone()],
        key,
        &tls::provider(),
    )
    .expect("key loads");
    certified
        .keys_match()
        .expect("the key matches the certificate");

    // no overwrite without --force, a second node shares ca.crt, names stay under the org
    let before = std::fs::read(out.join("tm1.crt")).expect("read");
    let again = issue("tm1", &[]);
    assert_eq!(again.code, Some(64), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read(out.join("tm1.crt")).expect("read"), before);
    assert_eq!(issue("tm1", &["--force"]).code, Some(0));
    assert_ne!(std::fs::read(out.join("tm1.crt")).expect("read"), before);
    assert_eq!(issue("peer0", &[]).code, Some(0));
    let outside = issue("tm3", &["--dns", "tm3.org2.acme.test"]);
    assert_eq!(outside.code, Some(64), "{}", outside.stderr);
    assert!(
        outside.stderr.contains("outside the org subtree"),
        "{}",
        outside.stderr
    );
    for (name, extra) in [("Bad_Name", &[][..]), ("tm4", &["--lifetime", "0s"][..])] {
        assert_eq!(issue(name, extra).code, Some(64), "{name} {extra:?}");
    }
    for refused in ["tm3", "tm4", "Bad_Name"] {
        assert!(!out.join(format!("{refused}.key")).exists(), "{refused}");
    }
}

/// `fedgw ARGS` with `stdin` written to its standard input and `env` added to its environment.
fn run_with(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args(args)
        .env_remove("FEDGW_JOIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

fn join_args<'a>(org: &'a str, dir: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "join",
        "--org",
        org,
        "--data-dir",
        dir,
        "--advertise",
        "127.0.0.1:0",
        "--timeout",
        "10s",
    ];
    args.extend(LOOPBACK);
    args
}

#[test]
fn join_reads_its_token_from_a_file_standard_input_or_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // --token-file: the first line, a trailing newline and spaces are not part of the token
    let file = tmp.path().join("org2.token");
    std::fs::write(&file, format!("  {}\n", invite(&gw1.dir, "org2"))).expect("write");
    let d2 = s(&tmp.path().join("org2"));
    let mut args = join_args("org2", &d2);
    let f = s(&file);
    args.extend(["--token-file", &f]);
    let out = run_with(&args, "", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // `-`: standard input
    let d3 = s(&tmp.path().join("org3"));
    let mut args = join_args("org3", &d3);
    args.push("-");
    let out = run_with(&args, &format!("{}\n", invite(&gw1.dir, "org3")), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // FEDGW_JOIN_TOKEN
    let d4 = s(&tmp.path().join("org4"));
    let token = invite(&gw1.dir, "org4");
    let out = run_with(
        &join_args("org4", &d4),
        "",
        &[("FEDGW_JOIN_TOKEN", token.as_str())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // bad sources are usage errors that write nothing
    let d5 = s(&tmp.path().join("org5"));
    let big = tmp.path().join("big");
    std::fs::write(&big, "x".repeat(5000)).expect("write");
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let missing = tmp.path().join("missing");
    let (big, empty, missing) = (s(&big), s(&empty), s(&missing));
    for (extra, why) in [
        (&["-"][..], "empty standard input"),
        (&["--token-file", &big][..], "a 5000-byte line"),
        (&["--token-file", &empty][..], "an empty file"),
        (&["--token-file", &missing][..], "a missing file"),
        (&[][..], "no token at all"),
        (&["x", "--token-file", &f][..], "two sources"),
    ] {
        let mut args = join_args("org5", &d5);
        args.extend(extra);
        let out = run_with(&args, "", &[]);
        assert_eq!(out.status.code(), Some(64), "{why}: {}", said(&out));
    }
    assert!(!tmp.path().join("org5").exists());

    let help = fedgw().run(["join", "--help"]).expect("spawn");
    for source in ["--token-file", "standard input", "FEDGW_JOIN_TOKEN"] {
        assert!(help.stdout.contains(source), "{source}: {}", help.stdout);
    }
}

/// Runs `fedgw ARGS` with its standard output a pipe whose reader is already gone.
fn run_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run")
}

#[test]
fn printing_commands_end_quietly_when_their_reader_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let d = s(&gw1.dir);
    let out = s(&tmp.path().join("tls"));
    for args in [
        vec!["nodes", "--data-dir", &d],
        vec!["nodes", "--data-dir", &d, "--json"],
        vec!["members", "--data-dir", &d],
        vec!["status", "--data-dir", &d],
        vec!["status", "--data-dir", &d, "--json"],
        vec!["render", "tessera-peers", "--data-dir", &d],
        vec!["invite", "org2", "--data-dir", &d],
        vec!["cert", "issue", "tm1", "--data-dir", &d, "--out-dir", &out],
        vec!["ping", &gw1.endpoint(), "--data-dir", &d],
    ] {
        let run = run_into_closed_pipe(&args);
        assert_eq!(
            run.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&run.stderr).contains("panicked"),
            "{args:?}"
        );
    }
}

/// Runs `fedgw ARGS` under umask 000.
fn run_umask_000(args: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_fedgw"))
        .args(args)
        .output()
        .expect("run")
}

#[test]
fn secrets_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("deep/org1");
    let d = s(&a);
    let args = init_args(&a, "127.0.0.1:0", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_umask_000(&args);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(mode(&a), 0o700, "data dir");
    for secret in ["root-ca.key", "org-ca.key", "gateway.key", "store.redb"] {
        assert_eq!(mode(&a.join(secret)), 0o600, "{secret}");
    }
    for public in ["fedgw.toml", "root-ca.pem", "org-ca.pem", "gateway.pem"] {
        assert_eq!(mode(&a.join(public)), 0o644, "{public}");
    }

    let out = tmp.path().join("tls/tm1");
    let o = s(&out);
    let run = run_umask_000(&["cert", "issue", "tm1", "--data-dir", &d, "--out-dir", &o]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(mode(&out), 0o700, "--out-dir");
    assert_eq!(mode(&out.join("tm1.key")), 0o600);
    assert_eq!(mode(&out.join("tm1.crt")), 0o644);
    // an existing output directory keeps its mode
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sh = s(&shared);
    let run = run_umask_000(&["cert", "issue", "tm2", "--data-dir", &d, "--out-dir", &sh]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&shared.join("tm2.key")), 0o600);
}

#[test]
fn init_into_a_data_dir_holding_a_gateway_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let again = fedgw()
        .run(init_args(&a, "127.0.0.1:0", &[]))
        .expect("spawn");
    assert_eq!(again.code, Some(64), "{}", again.stderr);
    assert!(again.stderr.contains("fedgw.toml"), "{}", again.stderr);

    // a half-provisioned dir (a key, no fedgw.toml) is not overwritten either
    let b = tmp.path().join("half");
    std::fs::create_dir(&b).expect("mkdir");
    std::fs::write(b.join("org-ca.key"), "keep me").expect("write");
    let run = fedgw()
        .run(init_args(&b, "127.0.0.1:0", &[]))
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("org-ca.key"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(b.join("org-ca.key")).expect("read"),
        "keep me"
    );
    assert!(!b.join("root-ca.key").exists());

    // other entries (a volume's lost+found) are no gateway
    let c = tmp.path().join("volume");
    std::fs::create_dir_all(c.join("lost+found")).expect("mkdir");
    let run = fedgw()
        .run(init_args(&c, "127.0.0.1:0", &[]))
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn an_invalid_address_pool_in_fedgw_toml_is_refused_at_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    init(&a, "127.0.0.1:0");
    let config = a.join("fedgw.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("\"127.77.0.0/16\""), "{text}");
    std::fs::write(&config, text.replace("127.77.0.0/16", "10.0.0.0/33")).expect("write");
    let run = fedgw().run(["run", "--data-dir", &s(&a)]).expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("10.0.0.0/33"), "{}", run.stderr);
    let run = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&a)])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
}

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/data")
}

/// The secp256k1 generator G (SEC 2 section 2.4.1): a valid enode id that no sample uses.
const GENERATOR: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

fn nodes_json(dir: &Path) -> Vec<serde_json::Value> {
    let run = fedgw()
        .run(["nodes", "--json", "--data-dir", &s(dir)])
        .expect("spawn")
        .ok()
        .expect("nodes");
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn node_registration_refuses_repeated_and_invalid_enode_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let d = s(&gw1.dir);
    let node = |args: &[&str]| {
        let mut all = vec!["node"];
        all.extend(args);
        all.extend(["--data-dir", &d]);
        fedgw().run(all).expect("spawn")
    };
    let sample =
        std::fs::read_to_string(samples().join("goquorum-static-nodes.raft.json")).expect("sample");
    let urls: Vec<String> = serde_json::from_str(&sample).expect("list");

    // one enode listed twice in a file: refused before anything is registered
    let twice = tmp.path().join("twice.json");
    std::fs::write(
        &twice,
        serde_json::to_string(&[&urls[0], &urls[1], &urls[0]]).expect("json"),
    )
    .expect("write");
    let run = node(&["import", &s(&twice)]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("entries 1 and 3"), "{}", run.stderr);
    assert!(nodes_json(&gw1.dir).is_empty());

    // 64 bytes that are no secp256k1 point
    let random = format!("enode://{}@10.0.0.9:30303", "ab".repeat(64));
    let run = node(&["add", "bad", "--enode", &random]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("secp256k1"), "{}", run.stderr);

    // `node add` reusing another node's enode: refused; the same node may be updated
    let g = format!("enode://{GENERATOR}@10.0.0.9:30303");
    assert_eq!(node(&["add", "a", "--enode", &g]).code, Some(0));
    let run = node(&["add", "b", "--enode", &g.replace("10.0.0.9", "10.0.0.10")]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("already registered by org1/a"),
        "{}",
        run.stderr
    );
    let run = node(&["add", "a", "--enode", &g.replace("30303", "30304")]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let names: Vec<_> = nodes_json(&gw1.dir)
        .iter()
        .map(|n| n["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["a"]);
}

#[test]
fn node_import_takes_only_the_local_tessera_node_from_its_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let d = s(&gw1.dir);
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let config = |p2p: &str| {
        serde_json::json!({
            "serverConfigs": [
                {"app": "ThirdParty", "enabled": true, "serverAddress": "http://172.16.239.11:9080"},
                {"app": "P2P", "enabled": true, "serverAddress": p2p},
            ],
            "peer": [
                {"url": "http://172.16.239.11:9001"},
                {"url": "http://172.16.239.13:9001"},
                {"url": "http://tessera.org9.example:9001"},
            ],
            "keys": {"keyData": [{"publicKey": key}]},
        })
        .to_string()
    };
    let import = |tessera: &Path| {
        fedgw()
            .run([
                "node",
                "import",
                &s(&samples().join("goquorum-static-nodes.raft.json")),
                "--data-dir",
                &d,
                "--tessera-config",
                &s(tessera),
            ])
            .expect("spawn")
    };
    // a placeholder (the qubernetes sample) or a host no imported node has: nothing registered
    let unknown = tmp.path().join("unknown.json");
    std::fs::write(&unknown, config("http://172.16.239.99:9001")).expect("write");
    for file in [samples().join("tessera-config-09.json"), unknown] {
        let run = import(&file);
        assert_eq!(run.code, Some(64), "{}", run.stderr);
        assert!(run.stderr.contains("P2P address"), "{}", run.stderr);
        assert!(nodes_json(&gw1.dir).is_empty());
    }

    let own = tmp.path().join("tessera.json");
    std::fs::write(&own, config("http://172.16.239.12:9001")).expect("write");
    let run = import(&own);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("3 peer(s) not registered"),
        "{}",
        run.stderr
    );
    let nodes = nodes_json(&gw1.dir);
    let names: Vec<_> = nodes
        .iter()
        .map(|n| n["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        (1..=8).map(|i| format!("node{i}")).collect::<Vec<_>>()
    );
    for n in &nodes {
        let (url, keys) = if n["name"] == "node2" {
            (
                serde_json::json!("http://172.16.239.12:9001"),
                serde_json::json!([key]),
            )
        } else {
            (serde_json::Value::Null, serde_json::json!([]))
        };
        assert_eq!(n["tessera_url"], url, "{n}");
        assert_eq!(n["tessera_keys"], keys, "{n}");
    }
}

#[test]
fn node_import_registers_the_replicas_a_node_file_lists_under_hosts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let d = s(&gw1.dir);
    let file = tmp.path().join("nodes.json");
    std::fs::write(
        &file,
        r#"[{"name": "tm1", "client": "tessera", "hosts": ["127.0.0.21", "127.0.0.22"],
             "services": {"tm": 9000}},
            {"name": "peer0", "client": "fabric-peer", "host": "127.0.0.23",
             "services": {"peer": 7051}}]"#,
    )
    .expect("write");
    let run = fedgw()
        .run(["node", "import", &s(&file), "--data-dir", &d])
        .expect("spawn");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let nodes = nodes_json(&gw1.dir);
    let replicas = |name: &str| {
        let n = nodes
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {nodes:?}"));
        n["replicas"].as_array().cloned().unwrap_or_default()
    };
    let tm1 = replicas("tm1");
    let hosts: Vec<&str> = tm1.iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, ["127.0.0.21", "127.0.0.22"], "{tm1:?}");
    assert!(tm1.iter().all(|r| r["up"] == true), "{tm1:?}");
    assert!(replicas("peer0").is_empty(), "one address: no replica list");
    // the text listing shows both
    let text = fedgw()
        .run(["nodes", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("nodes");
    for host in ["127.0.0.21", "127.0.0.22"] {
        assert!(
            text.stdout.contains(&format!("replica {host}")),
            "{}",
            text.stdout
        );
    }

    // host and hosts together: refused before anything is registered
    std::fs::write(
        &file,
        r#"[{"name": "tm2", "client": "tessera", "host": "127.0.0.24",
             "hosts": ["127.0.0.25"], "services": {"tm": 9000}}]"#,
    )
    .expect("write");
    let run = fedgw()
        .run(["node", "import", &s(&file), "--data-dir", &d])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("host or hosts"), "{}", run.stderr);
    assert_eq!(nodes_json(&gw1.dir).len(), 2);
}

#[test]
fn approve_needs_a_policy_that_waits_for_approvals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw1 = founder(tmp.path());
    let run = fedgw()
        .run(["approve", "org2", "--data-dir", &s(&gw1.dir)])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("no pending join"), "{}", run.stderr);
    // nothing was published: no vote makes org2 look pending
    let members = fedgw()
        .run(["members", "--json", "--data-dir", &s(&gw1.dir)])
        .expect("spawn")
        .ok()
        .expect("members");
    let list: serde_json::Value = serde_json::from_str(&members.stdout).expect("json");
    let orgs: Vec<_> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|m| (m["org"].clone(), m["status"].clone()))
        .collect();
    assert_eq!(
        orgs,
        [(serde_json::json!("org1"), serde_json::json!("active"))]
    );
}

#[test]
fn approve_needs_a_pending_join_under_majority_admission() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    let d = s(&a);
    let args = init_args(&a, "127.0.0.1:0", &["--admission", "majority"]);
    fedgw().run(args).expect("spawn").ok().expect("init");
    let gw1 = fedgw().start(&a).expect("starts");
    // not invited, and a member: refused with one line, exit 64
    for (org, why) in [
        ("org2", "no pending join of org2"),
        ("org1", "already a member"),
    ] {
        let run = fedgw()
            .run(["approve", org, "--data-dir", &d])
            .expect("spawn");
        assert_eq!(run.code, Some(64), "{}", run.stderr);
        assert!(run.stderr.contains(why), "{}", run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    }
    // invited: accepted
    invite(&gw1.dir, "org2");
    fedgw()
        .run(["approve", "org2", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("approve");
}

#[test]
fn members_lists_an_invited_org_as_a_pending_join_with_its_votes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    let d = s(&a);
    let args = init_args(&a, "127.0.0.1:0", &["--admission", "majority"]);
    fedgw().run(args).expect("spawn").ok().expect("init");
    let gw1 = fedgw().start(&a).expect("starts");
    let pending = || {
        let run = fedgw()
            .run(["members", "--json", "--data-dir", &d])
            .expect("spawn")
            .ok()
            .expect("members");
        let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        list.as_array()
            .expect("array")
            .iter()
            .filter(|m| m["status"] == "pending")
            .map(|m| (m["org"].clone(), m["approved_by"].clone()))
            .collect::<Vec<_>>()
    };
    assert!(pending().is_empty());
    // invited: pending, nobody approved yet
    invite(&gw1.dir, "org2");
    assert_eq!(
        pending(),
        [(serde_json::json!("org2"), serde_json::json!([]))]
    );
    let table = fedgw()
        .run(["members", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("members");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("org2") && l.contains("pending")),
        "{}",
        table.stdout
    );
    // approved here: its vote shows
    fedgw()
        .run(["approve", "org2", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("approve");
    assert_eq!(
        pending(),
        [(serde_json::json!("org2"), serde_json::json!(["org1"]))]
    );
    // a second invite does not take the approval back
    invite(&gw1.dir, "org2");
    assert_eq!(
        pending(),
        [(serde_json::json!("org2"), serde_json::json!(["org1"]))]
    );
    // the join is admitted on that approval
    let run = join(&invite(&gw1.dir, "org2"), "org2", &tmp.path().join("org2"));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(pending().is_empty());
    assert!(gw1.stop().expect("stop").success());
}

/// A gateway that accepts on its admin socket and never answers (stuck, or out of threads):
/// every command that asks it gives up after `--admin-timeout` (here from
/// `FEDGW_ADMIN_TIMEOUT`) with a message that names the socket and the timeout, and exits 1.
#[test]
fn every_admin_command_gives_up_on_a_gateway_that_does_not_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("org1");
    init(&dir, "127.0.0.1:7443");
    let socket = dir.join("admin.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind admin.sock");
    // holds every connection open, reading nothing; ends with the test process
    std::thread::spawn(move || {
        let mut held = vec![];
        for conn in listener.incoming() {
            held.extend(conn.ok());
        }
    });
    let nodes = tmp.path().join("static-nodes.json");
    let enode = format!("enode://{}@10.0.0.1:30303", fedgw_tests::enode_id(0xab));
    std::fs::write(&nodes, format!("[\"{enode}\"]")).expect("write");
    let d = s(&dir);
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["nodes"],
        vec!["members"],
        vec!["approve", "org2"],
        vec!["revoke", "org2"],
        vec!["render", "static-nodes"],
        vec![
            "node",
            "add",
            "node1",
            "--host",
            "10.0.0.1",
            "--tessera-url",
            "http://10.0.0.1:9000",
        ],
        vec!["node", "rm", "node1"],
        vec!["node", "import", nodes.to_str().expect("utf-8")],
        vec!["invite", "org2"],
        vec!["export", "k8s", "--namespace", "fedgw"],
    ];
    for args in commands {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"));
        cmd.args(&args)
            .args(["--data-dir", &d])
            .env("FEDGW_ADMIN_TIMEOUT", "300ms")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let started = std::time::Instant::now();
        let mut child = cmd.spawn().expect("spawn");
        // bounded: a command that hangs is killed and fails the test
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{args:?} still waits after 20 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&s(&socket)) && stderr.contains("within 300ms"),
            "{args:?}: {stderr}"
        );
    }
    // the default is written where an operator looks for it
    let help = fedgw().run(["status", "--help"]).expect("spawn");
    assert!(
        help.stdout.contains("FEDGW_ADMIN_TIMEOUT"),
        "{}",
        help.stdout
    );
    assert!(help.stdout.contains("[default: 30s]"), "{}", help.stdout);
}

/// The subcommands `fedgw` has, from its own definition.
fn subcommands() -> Vec<String> {
    use clap::CommandFactory as _;
    fedgw_gateway::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect()
}

#[test]
fn completions_name_every_subcommand_and_the_man_page_renders() {
    let names = subcommands();
    assert!(
        ["init", "run", "node", "render", "completions", "man"]
            .iter()
            .all(|n| names.iter().any(|m| m == n)),
        "{names:?}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let run = fedgw()
            .run(["completions", shell])
            .expect("spawn")
            .ok()
            .expect("completions");
        for name in &names {
            assert!(run.stdout.contains(name.as_str()), "{shell}: no {name}");
        }
    }
    let bash = fedgw().run(["completions", "bash"]).expect("spawn");
    assert!(
        bash.stdout.contains("complete -F _fedgw"),
        "{}",
        bash.stdout
    );
    let bad = fedgw().run(["completions", "tcsh"]).expect("spawn");
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);

    let man = fedgw().run(["man"]).expect("spawn").ok().expect("man");
    assert!(
        man.stdout.starts_with(".ie"),
        "{}",
        &man.stdout[..80.min(man.stdout.len())]
    );
    assert!(man.stdout.contains(".TH fedgw 1"), "{}", man.stdout);
    for name in &names {
        assert!(
            man.stdout
                .contains(&format!("fedgw\\-{}", name.replace('-', "\\-"))),
            "man: no {name}"
        );
    }
    // groff renders it without a warning
    let mut groff = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff (apt: groff-base)");
    std::io::Write::write_all(
        &mut groff.stdin.take().expect("stdin"),
        man.stdout.as_bytes(),
    )
    .expect("write");
    let out = groff.wait_with_output().expect("groff");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // one page per command into a directory
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("man1");
    fedgw()
        .run(["man", "--dir", &s(&dir)])
        .expect("spawn")
        .ok()
        .expect("man --dir");
    for page in [
        "fedgw.1",
        "fedgw-run.1",
        "fedgw-node-add.1",
        "fedgw-completions.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).expect(page);
        assert!(text.contains(".TH"), "{page}");
    }
}

/// The Dockerfile of the compose lab copies each binary once, and nothing runs a path the
/// image does not have.
#[test]
fn the_compose_image_holds_the_fedgw_binary_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose-lab");
    let docker = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let copies: Vec<&str> = docker
        .lines()
        .filter(|l| l.starts_with("COPY fedgw "))
        .collect();
    assert_eq!(copies, ["COPY fedgw /usr/local/bin/fedgw"], "{docker}");
    for file in ["Dockerfile", "docker-compose.yml", "e2e.sh", "README.md"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        for (i, line) in text.lines().enumerate() {
            let stray = line.match_indices("/fedgw").any(|(at, _)| {
                !line[..at].ends_with("/usr/local/bin")
                    && !line[at + "/fedgw".len()..].starts_with(['-', '/', '.'])
                    && !line[..at].ends_with("/var/lib")
            });
            assert!(!stray, "{file}:{}: {line}", i + 1);
        }
    }
}

#[test]
fn errors_of_probe_node_add_and_a_majority_join_say_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("org1");
    let d = s(&a);
    let args = init_args(&a, "127.0.0.1:0", &["--admission", "majority"]);
    fedgw().run(args).expect("spawn").ok().expect("init");

    // node add without an address: a sentence naming the options, before any gateway is asked
    let run = fedgw()
        .run(["node", "add", "x", "--data-dir", &d])
        .expect("spawn");
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("node x has no address"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--enode enode://"), "{}", run.stderr);
    assert!(!run.stderr.contains("invalid node host"), "{}", run.stderr);

    let gw1 = fedgw().start(&a).expect("starts");
    // probe of a name the gateway's DNS does not know: no debug dump of hickory's query
    let dns = gw1.info["dns"].as_str().expect("dns").to_owned();
    let run = fedgw()
        .run([
            "probe",
            "nosuch.org1.acme.test:30303",
            "--dns",
            &dns,
            "--timeout",
            "5s",
        ])
        .expect("spawn");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("nosuch.org1.acme.test is not a name the DNS server at"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fedgw nodes"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("Query {") && !run.stderr.contains('{'),
        "{}",
        run.stderr
    );

    // a majority join nobody approved: who approved, and what to do
    let token = invite(&a, "org2");
    let run = join_within(&token, "org2", &tmp.path().join("org2"), "2s");
    assert_eq!(run.code, Some(18), "{}", run.stderr);
    let last = run
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("approvals (nobody approved yet)"),
        "{}",
        run.stderr
    );
    assert!(last.contains("`fedgw approve <this org>`"), "{last}");
    assert!(!run.stderr.contains("approved by: )"), "{}", run.stderr);
    assert!(gw1.stop().expect("stop").success());
}

#[test]
fn render_has_a_besu_static_nodes_flavour_and_a_client_filter_and_json_shows_null() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let d = s(&gw.dir);
    for (name, client, host, n) in [
        ("q1", "goquorum", "10.0.0.1", 1u64),
        ("b1", "besu", "besu1.internal", 2),
    ] {
        let enode = format!(
            "enode://{}@{host}:30303?discport=0",
            fedgw_tests::enode_id(0xb0 + n)
        );
        fedgw()
            .run([
                "node",
                "add",
                name,
                "--client",
                client,
                "--enode",
                &enode,
                "--data-dir",
                &d,
            ])
            .expect("spawn")
            .ok()
            .expect("node add");
    }
    let render = |args: &[&str]| {
        let mut all = vec!["render"];
        all.extend(args);
        all.extend(["--data-dir", &d]);
        fedgw()
            .run(all)
            .expect("spawn")
            .ok()
            .expect("render")
            .stdout
    };
    let besu = render(&["besu-static-nodes", "--client", "besu"]);
    let list: Vec<String> = serde_json::from_str(&besu).expect("a JSON array");
    assert_eq!(
        list,
        [format!(
            "enode://{}@b1.org1.acme.test:30303",
            fedgw_tests::enode_id(0xb2)
        )],
        "{besu}"
    );
    let quorum = render(&["static-nodes", "--client", "goquorum"]);
    assert!(
        quorum.contains("@q1.org1.acme.test:30303?discport=0"),
        "{quorum}"
    );
    assert!(!quorum.contains("b1.org1"), "{quorum}");
    let every = render(&["besu-static-nodes"]);
    assert!(
        every.contains("q1.org1") && every.contains("b1.org1"),
        "{every}"
    );
    // with --out, --json reports the write and whether it changed the file
    let out = s(&gw.dir.join("static-nodes.rendered.json"));
    let first = render(&["static-nodes", "--out", &out, "--json"]);
    let again = render(&["static-nodes", "--out", &out, "--json"]);
    assert_eq!(
        (first.trim(), again.trim()),
        (
            serde_json::json!({"path": out, "changed": true})
                .to_string()
                .as_str(),
            serde_json::json!({"path": out, "changed": false})
                .to_string()
                .as_str()
        )
    );

    // --json: unset values are null, and local_ip holds only addresses
    let nodes = nodes_json(&gw.dir);
    let by = |name: &str| {
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .expect(name)
            .clone()
    };
    let (q1, b1) = (by("q1"), by("b1"));
    assert_eq!(q1["local_ip"], "10.0.0.1", "{q1}");
    assert!(b1["local_ip"].is_null(), "{b1}");
    assert_eq!(b1["local_host"], "besu1.internal", "{b1}");
    for key in ["raft_port", "raft_id", "tessera_url", "rpc"] {
        assert!(q1[key].is_null(), "{key}: {q1}");
    }
    assert_eq!(q1["p2p_port"], 30303, "{q1}");
    assert!(gw.stop().expect("stop").success());
}

#[test]
fn invite_join_and_probe_print_one_json_object_with_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let d = s(&gw.dir);
    let run = fedgw()
        .run(["invite", "org2", "--json", "--data-dir", &d])
        .expect("spawn")
        .ok()
        .expect("invite");
    let invite: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one object");
    assert_eq!(invite["org"], "org2");
    assert_eq!(invite["uses"], 1);
    assert_eq!(invite["ttl_s"], 3600);
    let token = invite["token"].as_str().expect("token");
    assert!(
        token.contains(invite["token_id"].as_str().expect("token id")),
        "{invite}"
    );

    let org2 = s(&tmp.path().join("org2"));
    let mut args = join_args("org2", &org2);
    args.extend(["--json", "-"]);
    let out = run_with(&args, token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let joined: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(joined["org"], "org2");
    assert_eq!(joined["consortium"], "acme");
    assert_eq!(
        joined["gateway"],
        format!(
            "gw-{}.org2.acme.test",
            joined["site"].as_str().expect("site")
        )
    );

    // an echo server answers the probe; a closed port does not
    let echo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = echo.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = echo.accept() {
            let mut r = c.try_clone().expect("clone");
            let _ = std::io::copy(&mut r, &mut c);
        }
    });
    let ok = fedgw()
        .run(["probe", &addr.to_string(), "--json"])
        .expect("spawn");
    let v: serde_json::Value = serde_json::from_str(ok.stdout.trim()).expect("one object");
    assert_eq!(
        (ok.code, &v["ok"], &v["addr"]),
        (
            Some(0),
            &serde_json::json!(true),
            &serde_json::json!(addr.to_string())
        )
    );
    assert!(v["error"].is_null() && v["elapsed_ms"].is_u64(), "{v}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let failed = fedgw().run(["probe", &gone, "--json"]).expect("spawn");
    let v: serde_json::Value = serde_json::from_str(failed.stdout.trim()).expect("one object");
    assert_eq!(
        (failed.code, &v["ok"]),
        (Some(1), &serde_json::json!(false))
    );
    assert!(v["addr"].is_null() && v["error"].is_string(), "{v}");
}

#[test]
fn node_add_node_import_and_cert_issue_print_one_json_object_with_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let d = s(&gw.dir);
    let one = |args: &[&str]| -> (Option<i32>, serde_json::Value) {
        let mut all = args.to_vec();
        all.extend(["--json", "--data-dir", &d]);
        let run = fedgw().run(all).expect("spawn");
        let v = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{e}: one JSON object expected: {:?} {:?}",
                run.stdout, run.stderr
            )
        });
        (run.code, v)
    };
    let enode = format!(
        "enode://{}@10.0.0.1:30303?discport=0",
        fedgw_tests::enode_id(0xd1)
    );
    let (code, added) = one(&["node", "add", "q1", "--enode", &enode]);
    assert_eq!(code, Some(0), "{added}");
    assert_eq!(
        (&added["org"], &added["name"]),
        (&serde_json::json!("org1"), &serde_json::json!("q1"))
    );
    assert_eq!(added["dns_name"], "q1.org1.acme.test");
    assert!(added["seq"].as_u64().is_some_and(|n| n > 0), "{added}");

    // an import with one new node and one whose key q1 already holds
    let list = tmp.path().join("static-nodes.json");
    let again = format!(
        "enode://{}@10.0.0.2:30303?discport=0",
        fedgw_tests::enode_id(0xd1)
    );
    let new = format!(
        "enode://{}@10.0.0.3:30303?discport=0",
        fedgw_tests::enode_id(0xd2)
    );
    std::fs::write(&list, serde_json::json!([new, again]).to_string()).expect("write");
    let (code, imported) = one(&["node", "import", &s(&list), "--names", "q2,q3"]);
    assert_eq!(code, Some(64), "one refused: {imported}");
    assert_eq!(
        imported["registered"],
        serde_json::json!([{"org": "org1", "name": "q2"}])
    );
    assert_eq!(imported["refused"][0]["name"], "q3");
    assert!(imported["refused"][0]["error"].is_string(), "{imported}");

    let out = tmp.path().join("tls");
    let (code, issued) = one(&["cert", "issue", "tm1", "--out-dir", &s(&out)]);
    assert_eq!(code, Some(0), "{issued}");
    assert_eq!(
        issued["dns_names"],
        serde_json::json!(["tm1.org1.acme.test"])
    );
    assert_eq!(issued["key"], s(&out.join("tm1.key")));
    assert!(
        issued["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{issued}"
    );
    assert!(
        issued["not_after"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{issued}"
    );
}

/// Kills the child process when dropped, so a failed assertion leaves no watcher behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn render_watch_keeps_the_file_current_across_a_gateway_restart_and_runs_the_hook() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let dir = gw.dir.clone();
    let d = s(&dir);
    let out = tmp.path().join("static-nodes.json");
    let marker = tmp.path().join("hook.log");
    let _watch = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_fedgw"))
            .args(["render", "static-nodes", "--watch", "--data-dir", &d])
            .arg("--out")
            .arg(&out)
            .arg("--hook")
            .arg(format!("echo \"$FEDGW_RENDERED\" >> {}", marker.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn render --watch"),
    );
    let wait = fedgw_tests::READY_TIMEOUT;
    let hook_runs = || {
        std::fs::read_to_string(&marker)
            .map(|t| {
                t.lines()
                    .filter(|l| *l == out.display().to_string())
                    .count()
            })
            .unwrap_or(0)
    };
    let add = |name: &str, n: u64| {
        let enode = format!(
            "enode://{}@10.0.0.{n}:30303?discport=0",
            fedgw_tests::enode_id(0xc0 + n)
        );
        fedgw()
            .run([
                "node",
                "add",
                name,
                "--client",
                "goquorum",
                "--enode",
                &enode,
                "--data-dir",
                &d,
            ])
            .expect("spawn")
            .ok()
            .expect("node add");
    };
    let listed = |n: u64| {
        std::fs::read_to_string(&out)
            .is_ok_and(|t| t.contains(&fedgw_tests::enode_id(0xc0 + n)))
            .then_some(())
    };
    fedgw_tests::wait_for("the first render and its hook", wait, || {
        (hook_runs() == 1).then_some(())
    })
    .expect("first render");
    add("q1", 1);
    fedgw_tests::wait_for("q1 in the watched file", wait, || listed(1)).expect("q1 rendered");
    fedgw_tests::wait_for("the hook after the change", wait, || {
        (hook_runs() == 2).then_some(())
    })
    .expect("hook ran again");

    // the gateway goes away and comes back: the watch follows it to the next change
    gw.stop().expect("stop");
    let gw = fedgw().start(&dir).expect("gateway starts again");
    add("q2", 2);
    fedgw_tests::wait_for("q2 in the watched file", wait, || listed(2)).expect("q2 rendered");
    let text = std::fs::read_to_string(&out).expect("read");
    let list: Vec<String> = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(list.len(), 2, "{text}");
    drop(gw);
}

#[test]
fn metrics_carry_the_build_and_process_series() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let (code, body) = fedgw_tests::http_get(&gw.metrics(), "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        body.contains(&format!("fedgw_build_info{{version=\"{version}\"}} 1")),
        "{body}"
    );
    for series in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(series)),
            "no {series}in {body}"
        );
    }
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert!(gw.stop().expect("stop").success());
}

#[test]
fn an_ipfs_cluster_peer_is_registered_with_services_listed_and_rendered_into_a_peerstore() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gw = founder(tmp.path());
    let d = s(&gw.dir);
    let id = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let add = |extra: &[&str]| {
        let mut args = vec![
            "node", "add", "ipfs0", "--client", "ipfs", "--host", "10.0.0.9",
        ];
        args.extend(extra);
        args.extend(["--data-dir", &d]);
        fedgw().run(args).expect("spawn")
    };
    // a bad service or peer id is a usage error that names the option
    let run = add(&["--service", "cluster=0"]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("--service cluster=0"), "{}", run.stderr);
    let run = add(&["--service", "cluster=9096", "--ipfs-peer-id", "QmNope"]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("--ipfs-peer-id QmNope"),
        "{}",
        run.stderr
    );

    add(&[
        "--service",
        "cluster=19096",
        "--service",
        "swarm=4001",
        "--ipfs-peer-id",
        id,
    ])
    .ok()
    .expect("node add");
    let nodes = nodes_json(&gw.dir);
    let n = nodes.iter().find(|n| n["name"] == "ipfs0").expect("listed");
    assert_eq!(n["client"], "ipfs", "{n}");
    assert_eq!(n["ipfs_peer_id"], id, "{n}");
    assert_eq!(
        n["services"],
        serde_json::json!([{"name": "cluster", "port": 19096}, {"name": "swarm", "port": 4001}]),
        "{n}"
    );
    assert_eq!(n["local_ports"]["cluster"], 19096, "{n}");

    let out = tmp.path().join("peerstore");
    let render = || {
        fedgw()
            .run([
                "render",
                "ipfs-cluster-peers",
                "--out",
                &s(&out),
                "--data-dir",
                &d,
            ])
            .expect("spawn")
            .ok()
            .expect("render")
    };
    assert!(render().stderr.contains("wrote"));
    assert_eq!(
        std::fs::read_to_string(&out).expect("peerstore"),
        format!("/dns4/ipfs0.org1.acme.test/tcp/19096/p2p/{id}\n")
    );
    assert!(render().stderr.contains("unchanged"));
    assert!(gw.stop().expect("stop").success());
}
