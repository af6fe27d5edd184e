//! The web console of a running gateway pair, over HTTP: the page and each JSON document,
//! access control on a non-loopback address (token, client certificate from the org CA, a
//! foreign certificate refused, refusal to start unguarded), and the page as headless
//! Chromium (Debian `chromium`, installed by scripts/test) renders it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::*;
use fedgw_gateway::app;
use fedgw_gateway::config::Admission;
use fedgw_gateway::console::ConsoleConfig;
use fedgw_proto::v1 as pb;
use serde_json::Value;

/// `host:port` of a gateway's console, from the URL in its run info (an unspecified bind
/// address is reached on 127.0.0.1).
fn console_addr(gw: &Gw) -> String {
    let url = gw.run().info.console.clone().expect("console served");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .expect("scheme");
    rest.trim_end_matches('/').replace("0.0.0.0", "127.0.0.1")
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || fedgw_tests::http_get(&addr, &path).expect("GET"))
        .await
        .expect("GET task")
}

async fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Two gateways, org2 with node1, converged.
async fn pair() -> Fed {
    let fed = Fed::with_orgs(2).await;
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("node1", 0xab, "10.2.0.11")),
        })
        .await
        .expect("add node");
    fed.converged().await;
    // org1 holds a local address for node1 once its projection ran
    let addr = console_addr(&fed.gws[0]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let nodes = get_json(&addr, "/api/v1/nodes").await;
        if nodes["nodes"][0]["local_address"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no local address: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fed
}

#[tokio::test]
async fn the_console_serves_the_page_and_the_json_documents() {
    let mut fed = pair().await;
    let gw = &fed.gws[0];
    assert!(
        gw.run()
            .info
            .console
            .as_deref()
            .is_some_and(|u| u == format!("http://{}/", gw.run().info.metrics)),
        "served on the metrics address by default: {:?}",
        gw.run().info.console
    );
    let addr = console_addr(gw);

    let topology = get_json(&addr, "/api/v1/topology").await;
    assert_eq!(topology["org"], "org1");
    let orgs: Vec<&str> = topology["orgs"]
        .as_array()
        .expect("orgs")
        .iter()
        .map(|o| o["org"].as_str().expect("org"))
        .collect();
    assert_eq!(orgs, ["org1", "org2"]);
    assert_eq!(topology["orgs"][0]["sites"][0]["here"], true);
    let links = topology["links"].as_array().expect("links");
    assert_eq!(links.len(), 1, "{topology}");
    assert_eq!(links[0]["a"], "org1/dc1");
    assert_eq!(links[0]["b"], "org2/dc1");
    assert!(
        ["up", "idle"].contains(&links[0]["state"].as_str().expect("state")),
        "{topology}"
    );

    let members = get_json(&addr, "/api/v1/members").await;
    assert_eq!(members["members"].as_array().expect("members").len(), 2);
    assert_eq!(members["members"][1]["gateways"][0]["site"], "dc1");
    assert_eq!(members["pending"], serde_json::json!([]));
    assert_eq!(members["revoked"], serde_json::json!([]));

    let nodes = get_json(&addr, "/api/v1/nodes").await;
    let node = &nodes["nodes"][0];
    assert_eq!(node["org"], "org2");
    assert_eq!(node["consortium_name"], "node1.org2.acme.test");
    assert_eq!(node["client"], "goquorum");
    assert_eq!(node["ports"]["p2p"], 30303);
    assert!(node["local_address"].is_string(), "{node}");
    assert_ne!(node["reachability"], "local");

    let audit = get_json(&addr, "/api/v1/audit?org=org2&kind=node").await;
    assert_eq!(audit["available"], true);
    assert_eq!(audit["org"], "org2");
    let entry = &audit["entries"][0];
    assert_eq!(
        (&entry["kind"], &entry["org"], &entry["subject"]),
        (
            &serde_json::json!("node"),
            &serde_json::json!("org2"),
            &serde_json::json!("node1")
        ),
        "{audit}"
    );
    assert!(
        entry["at"].is_string() && entry["hash"].is_string(),
        "{entry}"
    );

    // the page carries the data without JavaScript
    let (status, page) = get(&addr, "/").await;
    assert_eq!(status, 200);
    for want in [
        "data-org=\"org1\"",
        "data-org=\"org2\"",
        "data-a=\"org1/dc1\" data-b=\"org2/dc1\"",
        "node1.org2.acme.test",
        "node1 (signed by org2)",
    ] {
        assert!(page.contains(want), "the page lacks {want}");
    }
    // the metrics stay where they were, and the console answers only GET
    assert_eq!(get(&addr, "/metrics").await.0, 200);
    assert_eq!(get(&addr, "/api/v1/nope").await.0, 404);
    fed.stop_all().await;
}

#[tokio::test]
async fn the_console_flag_moves_the_console_to_its_own_address() {
    let mut fed = Fed::found(Admission::Operator).await;
    fed.gws[0].stop().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = app::start_with(
        fed.gws[0].dir.clone(),
        app::RunOptions {
            console: Some("127.0.0.1:0".parse().expect("address")),
        },
        shutdown.clone(),
    )
    .await
    .expect("start with --console");
    let url = running.info.console.clone().expect("console served");
    let metrics = running.info.metrics.to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_ne!(url, format!("http://{metrics}/"));
    let own = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let members = get_json(&own, "/api/v1/members").await;
    assert_eq!(members["members"][0]["org"], "org1");
    // the metrics address no longer serves it, and the console's address serves no metrics
    assert_eq!(get(&metrics, "/").await.0, 404);
    assert_eq!(get(&metrics, "/metrics").await.0, 200);
    assert_eq!(get(&own, "/metrics").await.0, 404);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("drains");
}

/// curl's HTTP status for `url` (0 when no HTTP answer came, e.g. a refused handshake).
fn curl(url: &str, args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (Debian curl; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A client certificate and key, PEM files in `dir`, from the CA `ca`.
fn client_cert(
    dir: &Path,
    name: &str,
    ca: &fedgw_certs::CertificateAuthority,
) -> (PathBuf, PathBuf) {
    let leaf = ca
        .issue_node_leaf(
            &[format!("{name}.org1.{DOMAIN}")],
            "org1",
            DOMAIN,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("issue a node leaf");
    let key = rcgen::KeyPair::try_from(leaf.key.secret_pkcs8_der()).expect("key");
    let (crt, pem) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, fedgw_certs::pki::certs_to_pem(&leaf.chain)).expect("write cert");
    std::fs::write(&pem, key.serialize_pem()).expect("write key");
    (crt, pem)
}

#[tokio::test]
async fn a_non_loopback_console_needs_a_token_or_an_org_certificate() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let token = "0123456789abcdef0123456789abcdef";
    let token_file = secrets.path().join("console.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    let mut fed = Fed::found_with(Admission::Operator, |c| {
        c.console = ConsoleConfig {
            listen: Some("0.0.0.0:0".parse().expect("address")),
            token_file: Some(token_file.clone()),
            client_cert: true,
        };
    })
    .await;
    let gw = &fed.gws[0];
    let url = gw.run().info.console.clone().expect("console served");
    assert!(url.starts_with("https://0.0.0.0:"), "{url}");
    let url = format!("https://{}/api/v1/members", console_addr(gw));

    let ok = url.clone();
    let auth = format!("Authorization: Bearer {token}");
    let bad = "Authorization: Bearer 0123456789abcdef0123456789abcdeX".to_owned();
    let org_ca = fedgw_certs::CertificateAuthority::from_parts(
        fedgw_certs::pki::certs_from_pem(
            &std::fs::read_to_string(gw.dir.org_cert()).expect("org CA"),
        )
        .expect("org CA PEM")
        .remove(0),
        &std::fs::read_to_string(gw.dir.org_key()).expect("org CA key"),
    )
    .expect("org CA");
    let (crt, key) = client_cert(secrets.path(), "operator", &org_ca);
    // a CA of another consortium, with the same org name
    let foreign_root =
        fedgw_certs::CertificateAuthority::new_root("other", DOMAIN, SystemTime::now())
            .expect("foreign root");
    let foreign_dir = secrets.path().join("foreign");
    std::fs::create_dir(&foreign_dir).expect("mkdir");
    let (fcrt, fkey) = client_cert(&foreign_dir, "operator", &foreign_root);
    let dir = secrets.path().to_owned();
    let codes = tokio::task::spawn_blocking(move || {
        let _ = dir;
        [
            curl(&ok, &[]),
            curl(&ok, &["-H", &bad]),
            curl(&ok, &["-H", &auth]),
            curl(&format!("{ok}?token={token}"), &[]),
            curl(&ok, &["--cert", &s(&crt), "--key", &s(&key)]),
            curl(&ok, &["--cert", &s(&fcrt), "--key", &s(&fkey)]),
        ]
    })
    .await
    .expect("curl task");
    assert_eq!(codes[0], 401, "no credentials");
    assert_eq!(codes[1], 401, "a wrong token");
    assert_eq!(codes[2], 200, "the bearer token");
    assert_eq!(codes[3], 200, "the token as a query parameter");
    assert_eq!(codes[4], 200, "a certificate from the org CA");
    assert_ne!(codes[5], 200, "a certificate from a foreign CA");

    // with neither a token nor client certificates, the gateway refuses to start
    fed.gws[0].stop().await;
    edit_config(&fed.gws[0].dir, |c| {
        c.console.token_file = None;
        c.console.client_cert = false;
    });
    let refused = app::start(fed.gws[0].dir.clone(), Default::default()).await;
    match refused {
        Err(e @ app::RunError::Console(_)) => {
            assert!(e.to_string().contains("not loopback"), "{e}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("an unguarded non-loopback console started"),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The Chromium binary, when installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// Runs headless Chromium with `args` on `url` (bounded to 60 s) and returns its stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("chromium status") {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    use std::io::Read as _;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read chromium output");
    out
}

#[tokio::test]
async fn headless_chromium_renders_the_console_of_a_gateway_pair() {
    let Some(bin) = chromium() else {
        println!("SKIP: chromium is not installed (scripts/test installs it)");
        return;
    };
    let mut fed = pair().await;
    let url = format!("http://{}/", console_addr(&fed.gws[0]));
    let profile = tempfile::tempdir().expect("profile dir");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-test.png");
    let (b, p, u, shot2) = (
        bin.clone(),
        profile.path().to_owned(),
        url.clone(),
        shot.clone(),
    );
    let dom = tokio::task::spawn_blocking(move || {
        let dom = run_chromium(&b, &p, &["--dump-dom"], &u);
        run_chromium(
            &b,
            &p,
            &[
                &format!("--screenshot={}", shot2.display()),
                "--window-size=1400,1000",
                "--hide-scrollbars",
            ],
            &u,
        );
        dom
    })
    .await
    .expect("chromium task");
    for want in [
        "data-org=\"org1\"",
        "data-org=\"org2\"",
        "node1.org2.acme.test",
        "node1 (signed by org2)",
    ] {
        assert!(dom.contains(want), "the rendered DOM lacks {want}:\n{dom}");
    }
    // one link per pair of sites, and the node row
    assert_eq!(dom.matches("<g class=\"link ").count(), 1, "{dom}");
    // (the script holds the row's markup too, so the count is of rendered rows)
    assert_eq!(
        dom.matches("<tr class=\"node\"><td>org2</td><td>node1</td>")
            .count(),
        1,
        "{dom}"
    );
    // the script ran: it marks the page live
    assert!(
        dom.contains("id=\"live\">live"),
        "the script did not run:\n{dom}"
    );
    let png = std::fs::metadata(&shot).expect("screenshot written");
    assert!(png.len() > 1000, "screenshot of {} bytes", png.len());
    println!("screenshot: {}", shot.display());
    fed.stop_all().await;
}
