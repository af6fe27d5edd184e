//! `fedgw diagnose`: the checks, as pure functions over a [`Gathered`] snapshot of what the CLI
//! read from the data dir, the admin socket, the peers and the DNS listener
//! (`cli/diagnose_cmds.rs` does that IO). Each check gives ok, warn, fail or skip, a line of
//! detail and, unless ok, the fix in one sentence.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A clock offset above this is a warning: record versions and certificate checks tolerate it,
/// but it is drifting.
pub const SKEW_WARN: Duration = Duration::from_secs(2);
/// A clock offset above this fails: new certificates look not yet valid to the peer.
pub const SKEW_FAIL: Duration = Duration::from_secs(60);
/// A CA certificate with less than this left is a warning.
pub const CA_EXPIRY_WARN: Duration = Duration::from_secs(30 * 24 * 3600);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Not checked (nothing to check, or an earlier failure prevents it).
    Skip,
    /// Works, but will not for long or works badly.
    Warn,
    /// Broken.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `clock org2/dc1`.
    pub name: String,
    /// The outcome.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do (empty when ok).
    pub fix: String,
}

fn check(name: impl Into<String>, level: Level, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name: name.into(),
        level,
        detail: detail.into(),
        fix: if level == Level::Ok {
            String::new()
        } else {
            fix.to_owned()
        },
    }
}

/// A certificate's expiry, as read.
#[derive(Debug, Clone)]
pub struct CertExpiry {
    /// Which certificate: `gateway leaf`, `org CA`, `root CA`, `peer org2/dc1 leaf`.
    pub name: String,
    /// Whether it is a CA (warned about 30 days ahead) or a leaf (renewed automatically; warned
    /// about when less than a quarter of its lifetime is left).
    pub ca: bool,
    /// Its `notAfter`, or why it could not be read.
    pub not_after: Result<SystemTime, String>,
}

/// A peer's clock, from one `Hello` call.
#[derive(Debug, Clone)]
pub struct PeerClock {
    /// `org/site`.
    pub peer: String,
    /// The call's outcome: (the peer's clock minus ours in ms, round trip in ms), or why it
    /// failed. A peer clock of 0 (an older gateway) is `Ok(None)`.
    pub offset: Result<Option<(i64, u64)>, String>,
}

/// The DNS probe: a query for a name the gateway serves, sent to its DNS listen address.
#[derive(Debug, Clone)]
pub struct DnsProbe {
    /// The address asked.
    pub addr: String,
    /// The name asked.
    pub name: String,
    /// Answers in the reply, or why there was no good reply.
    pub answers: Result<usize, String>,
}

/// One peer as the admin `Status` reports it.
#[derive(Debug, Clone, Default)]
pub struct PeerLink {
    /// `org/site`.
    pub peer: String,
    /// The sync state: `connected`, `connecting`, `backoff`, `revoked`.
    pub state: String,
    /// The sync stream's last error.
    pub last_error: String,
    /// The tunnel link's transport (`quic`, `tcp`), `None` without a link.
    pub transport: Option<String>,
    /// The link is on TCP because QUIC failed.
    pub quic_failed: bool,
}

/// Address pool use.
#[derive(Debug, Clone, Copy)]
pub struct PoolUse {
    /// Addresses (IP mode) or ports (port mode) in use.
    pub used: u64,
    /// The pool's size.
    pub size: u64,
}

/// The store as the gateway (or the CLI, when no gateway runs) read it.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    /// The file's size in bytes.
    pub file_bytes: Option<u64>,
    /// Rows per table, or why the tables could not be read.
    pub tables: Result<Vec<(String, usize)>, String>,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// This host's clock when gathering began.
    pub now: SystemTime,
    /// The gateway's leaf lifetime (`leaf_lifetime_secs`).
    pub leaf_lifetime: Duration,
    /// The admin socket answered; otherwise why not.
    pub running: Result<(), String>,
    /// Certificates read.
    pub certs: Vec<CertExpiry>,
    /// Peers' clocks.
    pub clocks: Vec<PeerClock>,
    /// The DNS probe (`None`: not running).
    pub dns: Option<DnsProbe>,
    /// Peers and their links (empty when not running).
    pub peers: Vec<PeerLink>,
    /// Local listeners bound and whether some failed (`None`: not running).
    pub listeners: Option<(u32, bool)>,
    /// Address pool use (`None`: not running or not known).
    pub pool: Option<PoolUse>,
    /// Rendered files to compare with a fresh render (`fedgw diagnose --rendered KIND=FILE`).
    pub render_outputs: Vec<RenderedFile>,
    /// The store.
    pub store: StoreHealth,
}

/// A rendered file compared with what `fedgw render KIND` gives now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// The render kind (`static-nodes`, ...).
    pub kind: String,
    /// The file.
    pub path: String,
    /// What the comparison found.
    pub state: RenderState,
}

/// How a rendered file compares with a fresh render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderState {
    /// Byte for byte what the gateway renders now.
    Current,
    /// Different from what the gateway renders now.
    Stale,
    /// The file does not exist.
    Missing,
    /// Nothing to compare: the render or the read failed (why).
    Unknown(String),
}

/// Runs every check over `g`, in a fixed order.
pub fn checks(g: &Gathered) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &g.running {
        Ok(()) => check("gateway", Level::Ok, "the admin socket answers", ""),
        Err(e) => check(
            "gateway",
            Level::Fail,
            format!("the admin socket does not answer: {e}"),
            "start the gateway with `fedgw run --data-dir DIR` (or point --data-dir at its data dir); the checks of a running gateway are skipped",
        ),
    });
    out.extend(g.clocks.iter().map(clock));
    if g.clocks.is_empty() {
        out.push(check(
            "clock",
            Level::Skip,
            "no peer to compare clocks with",
            "",
        ));
    }
    out.extend(g.certs.iter().map(|c| cert(c, g.now, g.leaf_lifetime)));
    out.push(dns(g.dns.as_ref()));
    out.extend(g.peers.iter().flat_map(link));
    out.push(listeners(g.listeners));
    out.push(pool(g.pool));
    if g.render_outputs.is_empty() {
        out.push(check(
            "rendered files",
            Level::Skip,
            "none named (`fedgw diagnose --rendered KIND=FILE` compares one)",
            "",
        ));
    }
    out.extend(g.render_outputs.iter().map(rendered));
    out.push(store(&g.store));
    out
}

fn rendered(r: &RenderedFile) -> Check {
    let name = format!("rendered {}", r.path);
    let fix = format!(
        "run `fedgw render {} --out {}`, or keep it current with `--watch`",
        r.kind, r.path
    );
    match &r.state {
        RenderState::Current => check(
            name,
            Level::Ok,
            format!("matches what `fedgw render {}` gives now", r.kind),
            "",
        ),
        RenderState::Stale => check(
            name,
            Level::Warn,
            format!(
                "out of date: `fedgw render {}` gives other content now",
                r.kind
            ),
            &fix,
        ),
        RenderState::Missing => check(name, Level::Warn, "the file does not exist", &fix),
        RenderState::Unknown(why) => check(
            name,
            Level::Warn,
            format!("not compared: {why}"),
            "check the kind and that the gateway runs",
        ),
    }
}

/// The worst level among `checks`, skipped checks aside (`Ok` for none).
pub fn worst(checks: &[Check]) -> Level {
    checks
        .iter()
        .map(|c| c.level)
        .filter(|l| *l != Level::Skip)
        .max()
        .unwrap_or(Level::Ok)
}

fn clock(c: &PeerClock) -> Check {
    let name = format!("clock {}", c.peer);
    match &c.offset {
        Err(e) => check(
            name,
            Level::Warn,
            format!("the peer did not answer a Hello: {e}"),
            "see the reachability checks for this peer",
        ),
        Ok(None) => check(
            name,
            Level::Skip,
            "the peer's gateway does not report its clock (older version)",
            "",
        ),
        Ok(Some((offset_ms, rtt_ms))) => {
            let off = Duration::from_millis(offset_ms.unsigned_abs());
            let level = if off > SKEW_FAIL {
                Level::Fail
            } else if off > SKEW_WARN {
                Level::Warn
            } else {
                Level::Ok
            };
            check(
                name,
                level,
                format!("peer clock {offset_ms:+} ms from ours (round trip {rtt_ms} ms)"),
                "synchronise both hosts' clocks with NTP (chrony or systemd-timesyncd); certificates and record versions use the wall clock",
            )
        }
    }
}

fn cert(c: &CertExpiry, now: SystemTime, leaf_lifetime: Duration) -> Check {
    let name = format!("certificate {}", c.name);
    let fix = if c.ca {
        "plan the CA's rotation now (docs/SECURITY.md); a lapsed CA stops every link it signs"
    } else if c.name.starts_with("peer") {
        "ask the peer's operator to check its gateway (its leaf renews itself while `fedgw run` runs)"
    } else {
        "keep `fedgw run` up: it renews the leaf itself; if it does not, see its log for the renewal error"
    };
    let not_after = match &c.not_after {
        Ok(t) => *t,
        Err(e) => {
            return check(
                name,
                Level::Fail,
                format!("cannot read it: {e}"),
                "restore the file from a backup (`fedgw restore`)",
            );
        }
    };
    let when = humantime::format_rfc3339_seconds(not_after);
    let Ok(left) = not_after.duration_since(now) else {
        return check(name, Level::Fail, format!("expired at {when}"), fix);
    };
    let warn_below = if c.ca {
        CA_EXPIRY_WARN
    } else {
        leaf_lifetime / 4
    };
    let days = left.as_secs() / 86_400;
    let hours = left.as_secs() % 86_400 / 3600;
    let level = if left < warn_below {
        Level::Warn
    } else {
        Level::Ok
    };
    check(
        name,
        level,
        format!("expires {when} (in {days} d {hours} h)"),
        fix,
    )
}

fn dns(p: Option<&DnsProbe>) -> Check {
    let Some(p) = p else {
        return check("dns", Level::Skip, "the gateway is not running", "");
    };
    match &p.answers {
        Ok(n) if *n > 0 => check(
            "dns",
            Level::Ok,
            format!("{} answers {} with {n} record(s)", p.addr, p.name),
            "",
        ),
        Ok(_) => check(
            "dns",
            Level::Warn,
            format!("{} answers {} with no records", p.addr, p.name),
            "check `fedgw nodes`: the name should be in the zone",
        ),
        Err(e) => check(
            "dns",
            Level::Fail,
            format!("{} did not answer {}: {e}", p.addr, p.name),
            "check that `dns` in fedgw.toml is an address this host can reach and no firewall drops UDP to it",
        ),
    }
}

fn link(p: &PeerLink) -> Vec<Check> {
    let sync = match p.state.as_str() {
        "connected" => check(format!("sync {}", p.peer), Level::Ok, "connected", ""),
        "revoked" => check(
            format!("sync {}", p.peer),
            Level::Fail,
            "the peer refuses this gateway: the consortium revoked this org",
            "talk to the consortium: a revoked org cannot rejoin with its old CA",
        ),
        state => check(
            format!("sync {}", p.peer),
            Level::Fail,
            format!(
                "{state}{}",
                if p.last_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.last_error)
                }
            ),
            "check that the peer's advertised host:port is reachable over TCP from here (`fedgw ping HOST:PORT`)",
        ),
    };
    let tunnel = match (p.transport.as_deref(), p.quic_failed) {
        (Some("quic"), _) => check(
            format!("tunnel {}", p.peer),
            Level::Ok,
            "QUIC (UDP) link up",
            "",
        ),
        (Some(t), true) => check(
            format!("tunnel {}", p.peer),
            Level::Warn,
            format!("{t} link up, QUIC failed: UDP to the peer looks blocked"),
            "allow UDP to and from the gateway port on both sides' firewalls; the TCP fallback works but is slower under loss",
        ),
        (Some(t), false) => check(
            format!("tunnel {}", p.peer),
            Level::Ok,
            format!("{t} link up"),
            "",
        ),
        (None, _) => check(
            format!("tunnel {}", p.peer),
            if p.state == "connected" {
                Level::Warn
            } else {
                Level::Fail
            },
            "no tunnel link",
            "check that the peer's gateway port is reachable over UDP (QUIC) and TCP; `fedgw status` shows the link's last error",
        ),
    };
    vec![sync, tunnel]
}

fn listeners(l: Option<(u32, bool)>) -> Check {
    match l {
        None => check("listeners", Level::Skip, "the gateway is not running", ""),
        Some((n, false)) => check(
            "listeners",
            Level::Ok,
            format!("{n} local listeners bound"),
            "",
        ),
        Some((n, true)) => check(
            "listeners",
            Level::Fail,
            format!("{n} local listeners bound, some could not be bound (retrying)"),
            "check the gateway log for the address that failed: it is in use by another program or not on any interface ([addresses] in fedgw.toml)",
        ),
    }
}

fn pool(p: Option<PoolUse>) -> Check {
    let Some(p) = p else {
        return check("address pool", Level::Skip, "not known", "");
    };
    let detail = format!("{} of {} in use", p.used, p.size);
    let fix =
        "widen [addresses] pool (IP mode) or the port range (port mode) in fedgw.toml and restart";
    if p.used >= p.size {
        check("address pool", Level::Fail, detail, fix)
    } else if p.used.saturating_mul(10) >= p.size.saturating_mul(9) {
        check("address pool", Level::Warn, detail, fix)
    } else {
        check("address pool", Level::Ok, detail, fix)
    }
}

fn store(s: &StoreHealth) -> Check {
    match &s.tables {
        Ok(tables) => {
            let rows: Vec<String> = tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
            let size = s
                .file_bytes
                .map_or(String::new(), |b| format!("{} KiB; ", b / 1024));
            check("store", Level::Ok, format!("{size}{}", rows.join(", ")), "")
        }
        Err(e) => check(
            "store",
            Level::Fail,
            e.clone(),
            "stop the gateway and run `fedgw store rebuild`, or restore a backup with `fedgw restore`",
        ),
    }
}

#[cfg(test)]
mod tests;
