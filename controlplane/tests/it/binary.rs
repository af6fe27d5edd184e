//! The `fedgw-controlplane` binary's logging: `--log-format json` writes one JSON object a
//! line, and text has no ANSI colour when stderr is not a terminal. The binary runs against
//! a kubeconfig naming a loopback port where nothing listens, so its watches fail and log.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn logs_of(format: &str) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u, namespace: org1}}]\n\
         current-context: x\n",
    )
    .expect("write the kubeconfig");
    let log = tmp.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedgw-controlplane"))
        .args([
            "run",
            "--namespace=org1",
            "--identity=gw-0",
            "--health-listen=127.0.0.1:0",
            &format!("--log-format={format}"),
        ])
        .arg(format!(
            "--admin-socket={}",
            tmp.path().join("admin.sock").display()
        ))
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("FEDGW_LOG_FORMAT")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn fedgw-controlplane");
    // a failed watch is logged within a second or so; bounded generously
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("watch failed") && text.ends_with('\n') {
            break text;
        }
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no failed watch logged: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn json_logs_are_one_object_a_line() {
    let text = logs_of("json");
    assert!(!text.contains('\x1b'), "{text:?}");
    let line = text
        .lines()
        .find(|l| l.contains("watch failed"))
        .expect("a line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["message"], "watch failed; retrying");
    assert!(v["fields"]["watch"].is_string(), "{v}");
}

#[test]
fn text_logs_have_no_colour_off_a_terminal() {
    let text = logs_of("text");
    assert!(text.contains("watch failed; retrying"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
}
