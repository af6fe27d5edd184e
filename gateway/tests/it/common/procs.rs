//! Helpers shared by the test modules that run real `fedgw` processes (bootstrap, links,
//! processes): the binary under test, loopback network flags, quick sync timers, JSON output.

use std::path::Path;

use fedgw_gateway::config::Config;
use fedgw_tests::Fedgw;

/// The `fedgw` binary built for this test run.
pub fn fedgw() -> Fedgw {
    Fedgw::new(env!("CARGO_BIN_EXE_fedgw"))
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `init`/`join` flags that put every listener on a free loopback port.
pub const NET: [&str; 8] = [
    "--advertise",
    "127.0.0.1:0",
    "--listen",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
    "--dns",
    "127.0.0.1:0",
];

/// Shortens the sync heartbeat and backoff in `dir`'s `fedgw.toml`, so tests converge quickly.
pub fn fast(dir: &Path) {
    let path = dir.join("fedgw.toml");
    let mut c = Config::load(&path).expect("config");
    c.sync.heartbeat_ms = 100;
    c.sync.backoff_base_ms = 50;
    c.sync.backoff_max_ms = 500;
    std::fs::write(&path, c.to_toml()).expect("write");
}

/// The `--json` output of `fedgw <what>` for `dir`.
pub fn json(dir: &Path, what: &str) -> serde_json::Value {
    let run = fedgw()
        .run([what, "--json", "--data-dir", &s(dir)])
        .expect("spawn")
        .ok()
        .expect(what);
    serde_json::from_str(&run.stdout).expect("json")
}
