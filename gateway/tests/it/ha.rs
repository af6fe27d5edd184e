//! High availability in network namespaces: a virtual IP kept by keepalived (VRRPv3) in front
//! of a site's gateways, as deploy/keepalived/keepalived.conf sets it up. Each host is a
//! namespace ([`crate::common::netns`]); skipped (with the reason printed) when not root, without
//! `ip netns`, or without keepalived (scripts/test installs it).
//!
//! Inside a test's own namespaces fixed ports are private to the test, so gateways use their
//! deployed ports (DNS 53, metrics 9464) as the keepalived example expects.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::netns::{Net, have, skip};

/// The LAN of the site in front of which the VIP sits.
const LAN: &str = "10.201.0";
/// The VIP (`LAN`.53).
const VIP: &str = "10.201.0.53";

/// keepalived's config for one replica, in the shape of deploy/keepalived/keepalived.conf:
/// VRRPv3, 100 ms adverts, both replicas BACKUP with nopreempt, a readiness check every
/// second (`check_url`, fetched with curl) whose one failure hands the VIP on.
pub fn keepalived_conf(router_id: &str, interface: &str, priority: u8, vip_cidr: &str, check_url: &str) -> String {
    format!(
        r#"global_defs {{
    router_id {router_id}
    script_user root
    enable_script_security
    vrrp_version 3
}}

vrrp_script fedgw_ready {{
    script "/usr/bin/curl -fsS -m 1 -o /dev/null {check_url}"
    interval 1
    timeout 1
    fall 1
    rise 2
}}

vrrp_instance fedgw_site {{
    state BACKUP
    nopreempt
    interface {interface}
    virtual_router_id 53
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {vip_cidr} dev {interface}
    }}
    track_script {{
        fedgw_ready
    }}
}}
"#
    )
}

/// Starts keepalived (VRRP only, in the foreground, its own pid files) in `host` with
/// `conf`; files go to `dir`. Returns its pid.
pub fn keepalived(net: &Net, host: &str, conf: &str, dir: &Path) -> anyhow::Result<u32> {
    let conf_path = dir.join(format!("keepalived-{host}.conf"));
    std::fs::write(&conf_path, conf)?;
    let file = |what: &str| dir.join(format!("keepalived-{host}.{what}")).display().to_string();
    net.spawn(
        host,
        &[
            "keepalived",
            "--dont-fork",
            "--vrrp",
            "--log-console",
            "--no-syslog",
            "--use-file",
            &conf_path.display().to_string(),
            "--pid",
            &file("pid"),
            "--vrrp_pid",
            &file("vrrp.pid"),
        ],
        &dir.join(format!("keepalived-{host}.log")),
    )
}

/// Why a keepalived test cannot run here (no curl or keepalived), or `None`.
pub fn keepalived_missing() -> Option<String> {
    ["keepalived", "curl"]
        .into_iter()
        .find(|p| !have(p))
        .map(|p| format!("{p} is not installed (scripts/test installs it)"))
}

/// The result of probing a service over and over while something fails.
pub struct Outage {
    /// The longest time between two consecutive successful probes around the failure.
    pub gap: Duration,
    /// Probes run, and how many of them failed.
    pub probes: usize,
    pub failed: usize,
}

/// Probes with `probe` (a bounded check, true when the service answered) in a loop: waits
/// for a first success, runs `fail`, then goes on until `after` more successes in a row (at
/// most `limit` after the failure). The gap is the longest time between the ends of two
/// successful probes, so it covers the failure and every probe it made fail.
pub fn outage(
    mut probe: impl FnMut() -> bool,
    fail: impl FnOnce(),
    after: usize,
    limit: Duration,
) -> anyhow::Result<Outage> {
    let start = Instant::now();
    while !probe() {
        anyhow::ensure!(
            start.elapsed() < limit,
            "the service never answered before the failure"
        );
    }
    let mut last_ok = Instant::now();
    fail();
    let failed_at = Instant::now();
    let (mut gap, mut probes, mut failed, mut streak) = (Duration::ZERO, 0, 0, 0);
    while streak < after {
        anyhow::ensure!(
            failed_at.elapsed() < limit,
            "no {after} successes in a row within {limit:?} of the failure ({probes} probes, {failed} failed)"
        );
        probes += 1;
        if probe() {
            let now = Instant::now();
            gap = gap.max(now - last_ok);
            last_ok = now;
            streak += 1;
        } else {
            failed += 1;
            streak = 0;
        }
    }
    Ok(Outage { gap, probes, failed })
}

/// `fedgw probe TARGET` from `host` (echo, or `GET /upcheck` with `--http`), bounded by
/// `timeout`; true when it answered.
pub fn probe(net: &Net, host: &str, target: &str, extra: &[&str], timeout: &str) -> bool {
    net.cmd(host, env!("CARGO_BIN_EXE_fedgw"))
        .args(["probe", target, "--timeout", timeout])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Which of `hosts` holds `addr`; fails unless exactly one does.
pub fn holder<'a>(net: &Net, hosts: &[&'a str], addr: &str) -> Option<&'a str> {
    let holding: Vec<&str> = hosts.iter().copied().filter(|h| net.holds(h, addr)).collect();
    (holding.len() == 1).then(|| holding[0])
}

/// Two hosts on a LAN, each running keepalived in front of a stand-in service (echo on 30303,
/// `GET /upcheck` on 9000, which the check fetches); a node reaches the service at the VIP.
/// The master's service is SIGKILLed: its check fails, it gives the VIP up, the backup takes
/// it over, and the node's probes through the VIP answer again within 2 s.
#[test]
fn the_vip_moves_to_the_backup_within_2s_when_the_masters_service_is_killed() {
    let Some(net) = Net::new() else { return };
    if let Some(reason) = keepalived_missing() {
        return skip(&reason).unwrap_or(());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    net.network("lan").expect("lan");
    let hosts = ["gwa", "gwb"];
    let mut services = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        net.host(host).expect("host");
        net.attach(host, "lan", "lan0", &format!("{LAN}.{}/24", i + 2))
            .expect("attach");
        let pid = net
            .spawn(
                host,
                &[
                    env!("CARGO_BIN_EXE_fedgw"),
                    "stand-in",
                    "--echo",
                    "0.0.0.0:30303",
                    "--http",
                    "127.0.0.1:9000",
                ],
                &tmp.path().join(format!("{host}-stand-in.log")),
            )
            .expect("stand-in");
        services.push(pid);
        let conf = keepalived_conf(
            host,
            "lan0",
            [150, 100][i],
            &format!("{VIP}/24"),
            "http://127.0.0.1:9000/upcheck",
        );
        keepalived(&net, host, &conf, tmp.path()).expect("keepalived");
    }
    net.host("node").expect("node");
    net.attach("node", "lan", "lan0", &format!("{LAN}.10/24"))
        .expect("attach");

    let master = fedgw_tests::wait_for("a VRRP master", Duration::from_secs(20), || {
        holder(&net, &hosts, VIP)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", logs(tmp.path())));
    let backup = hosts.iter().copied().find(|h| *h != master).expect("backup");
    let target = format!("{VIP}:30303");
    let out = outage(
        || probe(&net, "node", &target, &[], "300ms"),
        || net.kill(services[hosts.iter().position(|h| *h == master).expect("index")]),
        5,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", logs(tmp.path())));
    println!(
        "VIP {VIP} moved from {master} to {backup}: longest gap between answers {:?} ({} probes, {} failed)",
        out.gap, out.probes, out.failed
    );
    assert!(net.holds(backup, VIP) && !net.holds(master, VIP), "the VIP is on {backup} only");
    assert!(out.gap <= Duration::from_secs(2), "gap {:?} over 2 s", out.gap);
}

/// The keepalived logs in `dir`, for a failure message.
fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            text += &format!(
                "\n--- {}\n{}",
                path.display(),
                std::fs::read_to_string(&path).unwrap_or_default()
            );
        }
    }
    text
}
