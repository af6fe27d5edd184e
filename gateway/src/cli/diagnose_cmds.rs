//! `fedgw diagnose`: gathers what the checks in [`crate::diagnose`] look at (certificates from
//! the data dir; status, nodes and a store snapshot over the admin socket; a `Hello` to every
//! peer for its clock and leaf; a DNS query to the gateway's own listener) and prints one line
//! per check. Exits 1 when any check fails.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use fedgw_proto::v1 as pb;

use super::admin_conn::{Admin, connect};
use super::{AdminDirArg, CliError, exit};
use crate::datadir::DataDir;
use crate::diagnose::{
    self, CertExpiry, Check, DnsProbe, Gathered, Level, PeerClock, PeerLink, PoolUse, StoreHealth,
};

/// Bound on one peer's `Hello` (dial, TLS and the call).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the DNS probe's answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// `fedgw diagnose`.
#[derive(Debug, Subcommand)]
pub(crate) enum DiagnoseCommand {
    /// Check this gateway and explain what is wrong: clocks against peers, certificate expiry,
    /// DNS, each peer over TCP and QUIC, listeners, the address pool, the store. Exits 1 when a
    /// check fails.
    Diagnose {
        #[command(flatten)]
        dir: AdminDirArg,
        /// Print JSON: `{"result": "ok|warn|fail", "checks": [{name, level, detail, fix}]}`.
        #[arg(long)]
        json: bool,
        /// A rendered file to compare with what `fedgw render KIND` gives now, KIND=FILE
        /// (repeatable; e.g. static-nodes=/etc/quorum/static-nodes.json).
        #[arg(long = "rendered", value_name = "KIND=FILE")]
        rendered: Vec<String>,
    },
}

/// Runs [`DiagnoseCommand`].
pub(crate) async fn diagnose(command: DiagnoseCommand) -> Result<(), CliError> {
    let DiagnoseCommand::Diagnose {
        dir,
        json,
        rendered,
    } = command;
    let mut gathered = gather(&dir).await?;
    for spec in &rendered {
        gathered
            .render_outputs
            .push(compare_rendered(&dir, spec).await?);
    }
    let checks = diagnose::checks(&gathered);
    let worst = diagnose::worst(&checks);
    if json {
        let v = serde_json::json!({ "result": worst, "checks": checks });
        outln!("{v}")?;
    } else {
        for c in &checks {
            outln!("{}", line(c))?;
            if !c.fix.is_empty() {
                outln!("      fix: {}", c.fix)?;
            }
        }
    }
    if worst == Level::Fail {
        let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
        return Err(CliError::new(
            exit::FAILURE,
            anyhow::anyhow!("{failed} check(s) failed; each says its fix above"),
        ));
    }
    Ok(())
}

/// Compares the file of `spec` (`KIND=FILE`) with a fresh render. A malformed spec or an
/// unknown kind is a usage error; a render that fails is reported in the check.
async fn compare_rendered(
    args: &AdminDirArg,
    spec: &str,
) -> Result<diagnose::RenderedFile, CliError> {
    use clap::ValueEnum as _;
    let Some((kind_text, path)) = spec
        .split_once('=')
        .filter(|(k, p)| !k.is_empty() && !p.is_empty())
    else {
        return Err(super::usage(format!(
            "--rendered {spec}: give KIND=FILE, e.g. static-nodes=/etc/quorum/static-nodes.json"
        )));
    };
    let kind = super::admin_cmds::RenderKind::from_str(kind_text, false).map_err(|_| {
        super::usage(format!(
            "--rendered {spec}: no render kind {kind_text:?} (see `fedgw render --help`)"
        ))
    })?;
    let state = match super::admin_cmds::render_text(kind, args, None).await {
        Err(e) => diagnose::RenderState::Unknown(e.to_string()),
        Ok(text) => match std::fs::read(path) {
            Ok(old) if old == text.as_bytes() => diagnose::RenderState::Current,
            Ok(_) => diagnose::RenderState::Stale,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => diagnose::RenderState::Missing,
            Err(e) => diagnose::RenderState::Unknown(format!("reading {path}: {e}")),
        },
    };
    Ok(diagnose::RenderedFile {
        kind: kind_text.to_owned(),
        path: path.to_owned(),
        state,
    })
}

/// `ok    dns: 127.0.0.1:53 answers ...`.
fn line(c: &Check) -> String {
    let level = match c.level {
        Level::Ok => "ok",
        Level::Skip => "skip",
        Level::Warn => "WARN",
        Level::Fail => "FAIL",
    };
    format!("{level:<5} {}: {}", c.name, c.detail)
}

async fn gather(args: &AdminDirArg) -> Result<Gathered, CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    let config = crate::config::Config::load(&dir.config())
        .map_err(|e| CliError::new(exit::USAGE, anyhow::anyhow!("{e}")))?;
    let now = SystemTime::now();
    let mut g = Gathered {
        now,
        leaf_lifetime: Duration::from_secs(config.leaf_lifetime_secs),
        running: Ok(()),
        certs: own_certs(&dir),
        clocks: vec![],
        dns: None,
        peers: vec![],
        listeners: None,
        pool: None,
        render_outputs: vec![],
        store: StoreHealth {
            file_bytes: std::fs::metadata(dir.store()).ok().map(|m| m.len()),
            tables: Err("not read".into()),
        },
    };
    let mut admin = match connect(args).await {
        Ok(admin) => admin,
        Err(e) => {
            g.running = Err(e.error.to_string());
            g.store.tables = offline_store(&dir);
            return Ok(g);
        }
    };
    let status = admin_call!(admin, status(pb::StatusRequest {}));
    let nodes = admin_call!(admin, list_nodes(pb::ListNodesRequest {})).nodes;
    g.store.tables = store_over_admin(&mut admin).await;
    g.listeners = Some((status.listeners, status.listener_failures));
    g.pool = pool_use(&config.addresses, &config.org, &nodes);
    g.peers = status
        .peers
        .iter()
        .map(|p| {
            let tunnel = status
                .tunnels
                .iter()
                .find(|t| t.org == p.org && t.site == p.site);
            PeerLink {
                peer: format!("{}/{}", p.org, p.site),
                state: p.state.clone(),
                last_error: p.last_error.clone(),
                transport: tunnel.map(|t| t.transport.clone()),
                quic_failed: tunnel.is_some_and(|t| t.quic_failed_at_unix_ms != 0),
            }
        })
        .collect();
    let (clocks, peer_certs) = hello_peers(&dir, &status.peers).await;
    g.clocks = clocks;
    g.certs.extend(peer_certs);
    g.dns = Some(dns_probe(&dir, &config, &nodes).await);
    Ok(g)
}

/// This gateway's leaf, org CA and root CA expiry, from the data dir.
fn own_certs(dir: &DataDir) -> Vec<CertExpiry> {
    [
        ("gateway leaf", false, dir.gateway_cert()),
        ("org CA", true, dir.org_cert()),
        ("root CA", true, dir.root_cert()),
    ]
    .into_iter()
    .map(|(name, ca, path)| CertExpiry {
        name: name.to_owned(),
        ca,
        not_after: first_cert_expiry(&path),
    })
    .collect()
}

fn first_cert_expiry(path: &std::path::Path) -> Result<SystemTime, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs =
        fedgw_certs::pki::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{} holds no certificate", path.display()))?;
    fedgw_certs::pki::not_after(first).map_err(|e| format!("{}: {e}", path.display()))
}

/// The store's tables read directly (no gateway holds the file).
fn offline_store(dir: &DataDir) -> Result<Vec<(String, usize)>, String> {
    if !dir.store().exists() {
        return Err(format!("{} does not exist", dir.store().display()));
    }
    let store = crate::store::Store::open(&dir.store()).map_err(|e| e.to_string())?;
    store
        .snapshot()
        .map(|s| s.sizes())
        .map_err(|e| e.to_string())
}

/// The store's tables as the running gateway reads them (one read transaction).
async fn store_over_admin(admin: &mut Admin) -> Result<Vec<(String, usize)>, String> {
    let document = super::backup_cmds::fetch_snapshot(admin)
        .await
        .map_err(|e| e.error.to_string())?;
    serde_json::from_slice::<crate::store::Snapshot>(&document)
        .map(|s| s.sizes())
        .map_err(|e| format!("the gateway's store snapshot does not parse: {e}"))
}

/// Addresses (IP mode) or ports (port mode) held by remote nodes, against the pool's size.
fn pool_use(
    mode: &crate::addressing::AddressMode,
    own_org: &str,
    nodes: &[pb::NodeInfo],
) -> Option<PoolUse> {
    let remote = nodes.iter().filter(|n| n.org != own_org);
    match mode {
        crate::addressing::AddressMode::Ip { pool, .. } => {
            let (first, last) = crate::addressing::pool_range(pool).ok()?;
            let size = u64::from(u32::from(last)).saturating_sub(u64::from(u32::from(first))) + 1;
            let used = remote.filter(|n| !n.local_ip.is_empty()).count() as u64;
            Some(PoolUse { used, size })
        }
        crate::addressing::AddressMode::Port {
            first_port,
            last_port,
            ..
        } => {
            let size = u64::from(last_port.saturating_sub(*first_port)) + 1;
            let used = remote.map(|n| n.local_ports.len() as u64).sum();
            Some(PoolUse { used, size })
        }
    }
}

/// One `Hello` to each peer's first advertised endpoint, concurrently: its clock offset and
/// its leaf's expiry.
async fn hello_peers(dir: &DataDir, peers: &[pb::PeerStatus]) -> (Vec<PeerClock>, Vec<CertExpiry>) {
    let (loaded, config) = match crate::provision::federation_client_config(dir, None) {
        Ok(c) => c,
        Err(e) => {
            let clocks = peers
                .iter()
                .map(|p| PeerClock {
                    peer: format!("{}/{}", p.org, p.site),
                    offset: Err(format!("no federation client: {e}")),
                })
                .collect();
            return (clocks, vec![]);
        }
    };
    let mut calls = tokio::task::JoinSet::new();
    for (i, p) in peers.iter().enumerate() {
        let Some(endpoint) = p.advertise.first().map(|a| a.endpoint.clone()) else {
            continue;
        };
        let peer = format!("{}/{}", p.org, p.site);
        let (config, domain, site) = (
            config.clone(),
            loaded.config.domain.clone(),
            loaded.config.site.clone(),
        );
        calls.spawn(async move {
            let out =
                crate::federation::hello(&endpoint, config, &domain, &site, HELLO_TIMEOUT).await;
            (i, peer, out)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Ok(r) = done {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _, _)| *i);
    let mut clocks = Vec::new();
    let mut certs = Vec::new();
    for (_, peer, out) in results {
        match out {
            Ok(h) => {
                clocks.push(PeerClock {
                    peer: peer.clone(),
                    offset: Ok(clock_offset(&h)),
                });
                certs.push(CertExpiry {
                    name: format!("peer {peer} leaf"),
                    ca: false,
                    not_after: h
                        .server_not_after
                        .ok_or_else(|| "the peer's certificate does not parse".to_owned()),
                });
            }
            Err(e) => clocks.push(PeerClock {
                peer,
                offset: Err(crate::net::with_sources(&e)),
            }),
        }
    }
    (clocks, certs)
}

/// The peer's clock minus ours at the middle of the call, and the round trip, in ms; `None`
/// when the peer does not report its clock.
fn clock_offset(h: &crate::federation::HelloOutcome) -> Option<(i64, u64)> {
    if h.server_unix_ms == 0 {
        return None;
    }
    let sent = crate::federation::unix_ms(h.sent);
    let answered = crate::federation::unix_ms(h.answered);
    let rtt = answered.saturating_sub(sent).max(0);
    let middle = sent.saturating_add(rtt / 2);
    Some((h.server_unix_ms.saturating_sub(middle), rtt.unsigned_abs()))
}

/// Asks the gateway's bound DNS address (`run.json`) for a name it serves: the first node's
/// name (A), or without nodes the consortium domain's SOA.
async fn dns_probe(
    dir: &DataDir,
    config: &crate::config::Config,
    nodes: &[pb::NodeInfo],
) -> DnsProbe {
    use hickory_proto::rr::RecordType;
    let addr: SocketAddr = std::fs::read(dir.run_info())
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::app::RunInfo>(&b).ok())
        .map_or(config.dns, |r| r.dns);
    let (name, qtype) = match nodes
        .iter()
        .find(|n| !n.dns_name.is_empty() && !n.local_ip.is_empty())
    {
        Some(n) => (
            format!("{}.", n.dns_name.trim_end_matches('.')),
            RecordType::A,
        ),
        None => (
            format!("{}.", config.domain.trim_end_matches('.')),
            RecordType::SOA,
        ),
    };
    let answers = query(addr, &name, qtype).await;
    DnsProbe {
        addr: addr.to_string(),
        name,
        answers,
    }
}

async fn query(
    addr: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Result<usize, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::Name;
    let qname = Name::from_ascii(name).map_err(|e| format!("bad name {name}: {e}"))?;
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(qname, qtype));
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let exchange = async {
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        socket.connect(addr).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await?;
            if let Ok(reply) = Message::from_vec(&buf[..n])
                && reply.metadata.id == id
            {
                return Ok::<_, std::io::Error>(reply);
            }
        }
    };
    let reply = tokio::time::timeout(DNS_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                humantime::format_duration(DNS_TIMEOUT)
            )
        })?
        .map_err(|e| e.to_string())?;
    let code = reply.metadata.response_code;
    if code != ResponseCode::NoError {
        return Err(format!("answered {code}"));
    }
    Ok(reply.answers.len())
}

#[cfg(test)]
mod tests {
    use super::{clock_offset, pool_use};
    use crate::addressing::AddressMode;
    use fedgw_proto::v1 as pb;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_clock_offset_is_taken_at_the_middle_of_the_call() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000);
        let h = crate::federation::HelloOutcome {
            server: fedgw_certs::PeerIdentity {
                org: "org2".into(),
                dns_name: "gw-dc1.org2.acme.test".into(),
                spiffe_id: None,
            },
            seen_as: pb::PeerIdentity::default(),
            server_site: "dc1".into(),
            server_not_after: None,
            // the peer answered 5 s ahead of the call's middle (t0 + 20 ms)
            server_unix_ms: 1_000_000 + 20 + 5_000,
            sent: t0,
            answered: t0 + Duration::from_millis(40),
        };
        assert_eq!(clock_offset(&h), Some((5_000, 40)));
        let old = crate::federation::HelloOutcome {
            server_unix_ms: 0,
            ..h
        };
        assert_eq!(clock_offset(&old), None);
    }

    #[test]
    fn pool_use_counts_remote_nodes_only() {
        let node = |org: &str, ip: &str, ports: &[(&str, u32)]| pb::NodeInfo {
            org: org.into(),
            local_ip: ip.into(),
            local_ports: ports.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..Default::default()
        };
        let nodes = [
            node("org1", "10.0.0.1", &[("p2p", 30303)]),
            node("org2", "127.77.0.1", &[("p2p", 30303), ("raft", 53000)]),
            node("org2", "127.77.0.2", &[("p2p", 30303)]),
        ];
        let ip = AddressMode::Ip {
            pool: "127.77.0.0/24".into(),
            interface: None,
        };
        let u = pool_use(&ip, "org1", &nodes).expect("ip");
        assert_eq!((u.used, u.size), (2, 254));
        let port = AddressMode::Port {
            ip: "10.1.0.1".parse().expect("ip"),
            first_port: 40_000,
            last_port: 40_009,
        };
        let u = pool_use(&port, "org1", &nodes).expect("port");
        assert_eq!((u.used, u.size), (3, 10));
    }
}
