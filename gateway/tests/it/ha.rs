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
pub fn keepalived_conf(
    router_id: &str,
    interface: &str,
    priority: u8,
    vip_cidr: &str,
    check_url: &str,
) -> String {
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
    let file = |what: &str| {
        dir.join(format!("keepalived-{host}.{what}"))
            .display()
            .to_string()
    };
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
    Ok(Outage {
        gap,
        probes,
        failed,
    })
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
    let holding: Vec<&str> = hosts
        .iter()
        .copied()
        .filter(|h| net.holds(h, addr))
        .collect();
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
    let backup = hosts
        .iter()
        .copied()
        .find(|h| *h != master)
        .expect("backup");
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
    assert!(
        net.holds(backup, VIP) && !net.holds(master, VIP),
        "the VIP is on {backup} only"
    );
    assert!(
        out.gap <= Duration::from_secs(2),
        "gap {:?} over 2 s",
        out.gap
    );
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

/// The WAN between the sites' gateways.
const WAN: &str = "10.200.0";
const DOMAIN: &str = "acme.test";

/// One gateway host of a [`Sites`] lab.
pub struct GwHost {
    /// The namespace's host name (`gwa`, `gwb1`, `gwb2`).
    pub host: String,
    /// Its data dir.
    pub dir: std::path::PathBuf,
    /// Its LAN address.
    pub lan_ip: String,
    /// The running gateway.
    pub gw: Option<fedgw_tests::Gateway>,
}

/// Two sites in namespaces: site A (org1/dc1, founder) with gateway `gwa` and node `na`
/// (10.210.1.0/24), site B (org2/dc1) with gateway `gwb1` and node `nb` (10.210.2.0/24),
/// a WAN (10.200.0.0/24) between the gateways. Each site's pool (10.211.N.0/24, outside its
/// LAN) is put on each gateway's loopback (`[addresses] interface = "lo"`: this kernel may
/// have no dummy links) and its nodes route it via their gateway; nodes run stand-ins (echo
/// on 30303 and 50400, upcheck on 9000) and are registered at their gateway.
pub struct Sites {
    pub net: Net,
    pub tmp: tempfile::TempDir,
    pub a: GwHost,
    pub b: Vec<GwHost>,
}

fn fedgw_in(net: &Net, host: &str) -> fedgw_tests::Fedgw {
    net.fedgw(&crate::common::procs::fedgw(), host)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The network flags of `init`/`join` for a gateway on WAN address `wan_ip` whose DNS answers
/// on `dns` and whose pool is 10.211.`site`.0/24 on loopback.
fn net_flags(wan_ip: &str, dns: &str, site: u8) -> Vec<String> {
    [
        "--advertise",
        &format!("{wan_ip}:7443"),
        "--listen",
        "0.0.0.0:7443",
        "--dns",
        dns,
        "--metrics",
        "127.0.0.1:9464",
        "--address-pool",
        &format!("10.211.{site}.0/24"),
        "--alias-interface",
        "lo",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Sites {
    /// Builds the networks, founds org1 at `gwa`, joins org2 at `gwb1` (DNS on `b_dns`, an
    /// address of gwb1 or the VIP), starts both, and registers and starts the nodes.
    pub fn new(b_dns: &str) -> Option<Self> {
        let net = Net::new()?;
        let tmp = tempfile::tempdir().expect("tempdir");
        for n in ["wan", "lana", "lanb"] {
            net.network(n).expect("network");
        }
        for (host, lan, ip, wan) in [
            ("gwa", "lana", "10.210.1.2", Some("10.200.0.1")),
            ("gwb1", "lanb", "10.210.2.2", Some("10.200.0.2")),
            ("na", "lana", "10.210.1.10", None),
            ("nb", "lanb", "10.210.2.10", None),
        ] {
            net.host(host).expect("host");
            net.attach(host, lan, "lan0", &format!("{ip}/24"))
                .expect("lan");
            if let Some(wan) = wan {
                net.attach(host, "wan", "wan0", &format!("{wan}/24"))
                    .expect("wan");
            }
        }
        net.route("na", "10.211.1.0/24", "10.210.1.2")
            .expect("route");
        net.route("nb", "10.211.2.0/24", "10.210.2.2")
            .expect("route");

        let a_dir = tmp.path().join("gwa");
        let mut args = vec![
            "init",
            "--consortium",
            "acme",
            "--domain",
            DOMAIN,
            "--org",
            "org1",
            "--site",
            "dc1",
            "--data-dir",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.push(s(&a_dir));
        args.extend(net_flags("10.200.0.1", "10.210.1.2:53", 1));
        fedgw_in(&net, "gwa")
            .run(&args)
            .expect("spawn")
            .ok()
            .expect("init");
        crate::common::procs::fast(&a_dir);
        let gwa = fedgw_in(&net, "gwa").start(&a_dir).expect("start gwa");

        let token = crate::common::procs::fedgw()
            .run(["invite", "org2", "--data-dir", &s(&a_dir)])
            .expect("spawn")
            .ok()
            .expect("invite");
        let b_dir = tmp.path().join("gwb1");
        let mut args = vec![
            "join",
            token.stdout.trim(),
            "--org",
            "org2",
            "--site",
            "dc1",
            "--data-dir",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.push(s(&b_dir));
        args.extend(net_flags("10.200.0.2", b_dns, 2));
        fedgw_in(&net, "gwb1")
            .run(&args)
            .expect("spawn")
            .ok()
            .expect("join");
        crate::common::procs::fast(&b_dir);
        let gwb = fedgw_in(&net, "gwb1").start(&b_dir).expect("start gwb1");

        let sites = Self {
            a: GwHost {
                host: "gwa".into(),
                dir: a_dir,
                lan_ip: "10.210.1.2".into(),
                gw: Some(gwa),
            },
            b: vec![GwHost {
                host: "gwb1".into(),
                dir: b_dir,
                lan_ip: "10.210.2.2".into(),
                gw: Some(gwb),
            }],
            net,
            tmp,
        };
        for (node, ip, n) in [("na", "10.210.1.10", 1), ("nb", "10.210.2.10", 2)] {
            sites.stand_in(node);
            let dir = if n == 1 {
                &sites.a.dir
            } else {
                &sites.b[0].dir
            };
            sites.add_node(dir, node, ip, n);
        }
        Some(sites)
    }

    /// Runs the stand-in services in node host `node`.
    pub fn stand_in(&self, node: &str) {
        self.net
            .spawn(
                node,
                &[
                    env!("CARGO_BIN_EXE_fedgw"),
                    "stand-in",
                    "--echo",
                    "0.0.0.0:30303",
                    "--echo",
                    "0.0.0.0:50400",
                    "--http",
                    "0.0.0.0:9000",
                ],
                &self.tmp.path().join(format!("{node}-stand-in.log")),
            )
            .expect("stand-in");
    }

    /// Registers node `name` at `ip` (enode id `n`·G) with the gateway of data dir `dir`.
    pub fn add_node(&self, dir: &Path, name: &str, ip: &str, n: u64) {
        let enode = format!(
            "enode://{}@{ip}:30303?discport=0&raftport=50400",
            fedgw_tests::enode_id(n)
        );
        crate::common::procs::fedgw()
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

    /// Removes node `name` at the gateway of data dir `dir`.
    pub fn remove_node(&self, dir: &Path, name: &str) {
        crate::common::procs::fedgw()
            .run(["node", "remove", name, "--data-dir", &s(dir)])
            .expect("spawn")
            .ok()
            .expect("node remove");
    }

    /// A probe from node host `from` to `name.org:port`, resolved through `dns`.
    pub fn reach(&self, from: &str, name: &str, org: &str, dns: &str, timeout: &str) -> bool {
        probe(
            &self.net,
            from,
            &format!("{name}.{org}.{DOMAIN}:30303"),
            &["--dns", dns],
            timeout,
        )
    }

    /// `dig +short NAME TYPE` against `server` (port 53) from host `from`, sorted lines.
    pub fn dig(&self, from: &str, server: &str, name: &str, qtype: &str) -> String {
        let out = self
            .net
            .cmd(from, "dig")
            .args([
                &format!("@{server}"),
                "+time=1",
                "+tries=2",
                "+norecurse",
                "+short",
                name,
                qtype,
            ])
            .output()
            .expect("dig must be installed (scripts/test installs bind9-dnsutils)");
        if !out.status.success() {
            return format!(
                "dig failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap_or("")
            .lines()
            .collect();
        lines.sort_unstable();
        lines.join("\n")
    }

    /// Every gateway's log, for a failure message.
    pub fn logs(&self) -> String {
        logs(self.tmp.path())
    }
}

/// The lab itself: a node at site B resolves a node at site A through its gateway's DNS,
/// into B's pool, and reaches it through the tunnel; and the other way round.
#[test]
fn nodes_at_two_sites_in_namespaces_reach_each_other_through_their_gateways() {
    let Some(sites) = Sites::new("10.210.2.2:53") else {
        return;
    };
    let ok = fedgw_tests::wait_for("nb reaches na.org1", Duration::from_secs(30), || {
        sites
            .reach("nb", "na", "org1", "10.210.2.2:53", "1s")
            .then_some(())
    });
    ok.unwrap_or_else(|e| panic!("{e}: {}", sites.logs()));
    let answer = sites.dig("nb", "10.210.2.2", &format!("na.org1.{DOMAIN}"), "A");
    assert!(
        answer.starts_with("10.211.2."),
        "B answers an address of its pool: {answer:?}"
    );
    fedgw_tests::wait_for("na reaches nb.org2", Duration::from_secs(30), || {
        sites
            .reach("na", "nb", "org2", "10.210.1.2:53", "1s")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", sites.logs()));
}
