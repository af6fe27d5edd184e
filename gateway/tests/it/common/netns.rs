//! Hosts in network namespaces for tests that need real networks: sites with LANs, a WAN,
//! routes, a virtual IP that moves. A [`Net`] owns a set of namespaces named
//! `fgw<pid>-<name>` (the test process's pid keeps concurrent tests apart): one per host and
//! one `switch` namespace holding a bridge per network, so nothing is added to the namespace
//! the test runs in. A host joins a network through a veth pair, its end named as the test
//! asks (`lan0`, `wan0`), the other end on the network's bridge.
//!
//! Programs run in a host with `ip netns exec` (which execs, so a child's pid is the
//! program's). Dropping the [`Net`] SIGKILLs every process in its namespaces and deletes
//! them, also after a failed assertion; namespaces left by a test process that no longer
//! exists (a SIGKILLed test run) are deleted by the next [`Net::new`].
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip netns`; [`Net::new`] returns `None`
//! and prints why when either is missing, so tests skip. With `FEDGW_REQUIRE_NETNS=1` (CI) a
//! missing prerequisite fails the test instead.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use fedgw_tests::Fedgw;

const PREFIX: &str = "fgw";

/// A set of namespaces, deleted on drop.
pub struct Net {
    /// `fgw<pid>`: every namespace of this net starts with it.
    prefix: String,
    /// The namespace holding the bridges.
    switch: String,
    hosts: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    next_port: Mutex<u32>,
}

/// Why this machine cannot run namespace tests, or `None` when it can.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

/// Returns `None` (printing why) when a prerequisite of a namespace test is missing, or panics
/// when `FEDGW_REQUIRE_NETNS=1` says it must not be.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("FEDGW_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("FEDGW_REQUIRE_NETNS=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// Whether `program` is on the PATH (or at /usr/sbin, where Debian puts daemons).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {program} || test -x /usr/sbin/{program}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command to completion; fails with its output when it exits non-zero.
pub fn checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip<I, S>(args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    checked(Command::new("ip").args(args))
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pids of the processes in namespace `ns`.
fn pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in `ns`, then deletes it.
fn remove(ns: &str) {
    for pid in pids(ns) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Deletes the namespaces of earlier test processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>()
            && !alive(pid)
        {
            remove(name);
        }
    }
}

impl Net {
    /// Creates the switch namespace, or returns `None` (after printing why) when this machine
    /// cannot run namespace tests.
    pub fn new() -> Option<Self> {
        if let Some(reason) = unavailable() {
            return skip(&reason);
        }
        remove_stale();
        let prefix = format!("{PREFIX}{}", std::process::id());
        let net = Self {
            switch: format!("{prefix}-switch"),
            prefix,
            hosts: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            next_port: Mutex::new(0),
        };
        if let Err(e) = net.add_namespace(&net.switch.clone()) {
            return skip(&format!("cannot create a network namespace: {e:#}"));
        }
        Some(net)
    }

    fn add_namespace(&self, ns: &str) -> anyhow::Result<()> {
        ip(["netns", "add", ns])?;
        self.hosts.lock().expect("hosts").push(ns.to_owned());
        ip(["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace name of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Adds a network: a bridge `name` in the switch namespace.
    pub fn network(&self, name: &str) -> anyhow::Result<()> {
        ip(["-n", &self.switch, "link", "add", name, "type", "bridge"])?;
        // no STP listening delay: a port forwards as soon as it is up
        ip([
            "-n",
            &self.switch,
            "link",
            "set",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ip(["-n", &self.switch, "link", "set", name, "up"])?;
        Ok(())
    }

    /// Adds a host (namespace) `name` with loopback up.
    pub fn host(&self, name: &str) -> anyhow::Result<()> {
        self.add_namespace(&self.ns(name))
    }

    /// Puts host `host` on network `network`: a veth pair, `ifname` in the host with address
    /// `cidr` (e.g. `10.1.0.2/24`), the other end on the network's bridge.
    pub fn attach(
        &self,
        host: &str,
        network: &str,
        ifname: &str,
        cidr: &str,
    ) -> anyhow::Result<()> {
        let port = {
            let mut next = self.next_port.lock().expect("port");
            *next += 1;
            format!("p{}", *next)
        };
        let ns = self.ns(host);
        ip([
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            &ns,
        ])?;
        ip(["-n", &self.switch, "link", "set", &port, "master", network])?;
        ip(["-n", &self.switch, "link", "set", &port, "up"])?;
        ip(["-n", &ns, "addr", "add", cidr, "dev", ifname])?;
        ip(["-n", &ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Adds a route in `host`: `ip route add DEST via VIA`.
    pub fn route(&self, host: &str, dest: &str, via: &str) -> anyhow::Result<()> {
        ip(["-n", &self.ns(host), "route", "add", dest, "via", via])?;
        Ok(())
    }

    /// Sets a sysctl in `host` (network sysctls are per namespace), e.g.
    /// `net.ipv4.ip_nonlocal_bind=1`.
    pub fn sysctl(&self, host: &str, setting: &str) -> anyhow::Result<()> {
        checked(self.cmd(host, "sysctl").args(["-q", "-w", setting]))?;
        Ok(())
    }

    /// `ip netns exec NS PROGRAM`, without arguments yet.
    pub fn cmd(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd
    }

    /// The `fedgw` binary run inside `host`.
    pub fn fedgw(&self, fedgw: &Fedgw, host: &str) -> Fedgw {
        fedgw.wrapped(["ip", "netns", "exec", &self.ns(host)])
    }

    /// Starts a long-running program in `host` (output to `log`); it is SIGKILLed on drop at
    /// the latest. Returns its pid.
    pub fn spawn(&self, host: &str, args: &[&str], log: &std::path::Path) -> anyhow::Result<u32> {
        let (program, rest) = args.split_first().expect("a program");
        let file = std::fs::File::create(log)?;
        let child = self
            .cmd(host, program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let pid = child.id();
        self.children.lock().expect("children").push(child);
        Ok(pid)
    }

    /// SIGKILLs process `pid` if it is one this net spawned, and reaps it.
    pub fn kill(&self, pid: u32) {
        let mut children = self.children.lock().expect("children");
        if let Some(child) = children.iter_mut().find(|c| c.id() == pid) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A host failing as a machine does: its links go down first (so nothing a dying process
    /// sends gets out), then every process in it is SIGKILLed.
    pub fn crash(&self, host: &str) -> anyhow::Result<()> {
        let ns = self.ns(host);
        let links = ip(["-n", &ns, "-o", "link", "show"])?;
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            // "2: lan0@if5: <...>": the name, without the peer suffix
            let Some(name) = line.split(':').nth(1) else {
                continue;
            };
            let name = name.trim().split('@').next().unwrap_or_default();
            if name != "lo" && !name.is_empty() {
                ip(["-n", &ns, "link", "set", name, "down"])?;
            }
        }
        for pid in pids(&ns) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        Ok(())
    }

    /// Whether `host` holds address `addr` on any interface.
    pub fn holds(&self, host: &str, addr: &str) -> bool {
        ip(["-n", &self.ns(host), "-o", "-4", "addr", "show"]).is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(addr))
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut *self.children.lock().expect("children"));
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // hosts first, the switch (created first) last
        let hosts = std::mem::take(&mut *self.hosts.lock().expect("hosts"));
        for ns in hosts.iter().rev() {
            remove(ns);
        }
    }
}
