//! `fedgw lab`: a whole consortium on one machine with no setup. Each org gets its own data dir
//! and its own `fedgw run` process on loopback (port 0 for every gateway socket). The consortium
//! uses majority admission: the founder invites every other org, each joins over the network and
//! is admitted once a majority of members approved it (the third org needs two approvals). Every
//! ordered pair of gateways proves a mutual-TLS link.
//!
//! Then the real sample nodes (the quorum-dev-quickstart `static-nodes.json` and the Tessera
//! config template, embedded from `proto/data/`) are shared out between the orgs, each node gets
//! stand-in services on its own loopback address (`127.66.<org>.<n>`: TCP echo on its p2p and
//! raft ports, `GET /upcheck` on its Tessera port), is registered at its org's gateway, and every
//! ordered pair of sites proves traffic: the name resolved with the calling site's DNS, then p2p,
//! raft and Tessera through the tunnels.
//!
//! With `--geth PATH` real GoQuorum raft nodes take the stand-ins' place: see [`geth`].
//!
//! The lab writes `DIR/lab.json` for scripts, prints a table with ready-to-paste `dig`, `curl`
//! and `fedgw probe` commands, and stays up until Ctrl-C (or, with `--check`, exits 0 only if
//! every step passed).

/// `println!` that ignores a closed standard output: the lab goes on (and stops its gateways
/// cleanly at the end) when nobody reads what it prints.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::JoinToken;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::app::RunInfo;
use crate::config::Admission;
use crate::datadir::DataDir;
use crate::provision::{self, InitOptions, NetworkOptions};

mod geth;

/// Bound on each step that waits for another process.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the lab builds.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of orgs (2..=16).
    pub orgs: usize,
    /// Where the data dirs go.
    pub dir: PathBuf,
    /// Consortium name.
    pub consortium: String,
    /// Consortium domain.
    pub domain: String,
    /// Run the flow, report, and exit instead of staying up.
    pub check: bool,
    /// The `fedgw` binary to start gateways with.
    pub bin: PathBuf,
    /// A GoQuorum 21.1 `geth`: run real raft nodes instead of the stand-ins (needs root and an
    /// empty network namespace).
    pub geth: Option<PathBuf>,
}

/// One org in `lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LabOrg {
    /// The org name.
    pub org: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its gateway port address.
    pub gateway: String,
    /// Its DNS address.
    pub dns: String,
    /// Its metrics address.
    pub metrics: String,
    /// Its web console's URL (`null`: not served).
    pub console: Option<String>,
}

/// `DIR/lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LabFile {
    /// Consortium name.
    pub consortium: String,
    /// Consortium domain.
    pub domain: String,
    /// The orgs, founder first.
    pub orgs: Vec<LabOrg>,
    /// The nodes, by org then name.
    pub nodes: Vec<LabNode>,
}

/// A node's addresses by port name (`p2p`, `raft` as `IP:PORT`; `tessera` as a URL).
pub type Endpoints = std::collections::BTreeMap<String, String>;

/// One node in `lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LabNode {
    /// The org that runs it.
    pub org: String,
    /// Its name within the org.
    pub name: String,
    /// `<name>.<org>.<domain>`.
    pub dns_name: String,
    /// `goquorum`.
    pub client: String,
    /// The enode id, 128 hex digits.
    pub enode: String,
    /// Where its stand-in services listen.
    pub real: Endpoints,
    /// Per other org: the local address clients at that org's site dial.
    pub local: std::collections::BTreeMap<String, Endpoints>,
}

/// The sample static nodes shared out between the orgs (quorum-dev-quickstart).
const SAMPLE_STATIC_NODES: &str =
    include_str!("../../../proto/data/goquorum-static-nodes.raft.json");
/// The sample Tessera config whose P2P port the stand-ins use (quorum-dev-quickstart).
const SAMPLE_TESSERA_CONFIG: &str =
    include_str!("../../../proto/data/tessera-config-template.quickstart.json");

/// A failed lab step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct LabError {
    /// The step that failed.
    pub step: String,
    /// Why.
    pub message: String,
}

fn fail(step: &str, e: impl std::fmt::Display) -> LabError {
    LabError {
        step: step.to_owned(),
        message: e.to_string(),
    }
}

struct Gateway {
    org: String,
    dir: DataDir,
    child: Child,
    info: RunInfo,
}

/// Loopback settings for org number `i` (1-based): port 0 everywhere, and a pool of its own
/// (127.77.<i>.0/24) for remote nodes' local addresses.
fn network(i: usize) -> NetworkOptions {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    NetworkOptions {
        fabric_msp_id: None,
        site: "dc1".into(),
        advertise: vec!["127.0.0.1:0".into()],
        listen: Some(any),
        dns: any,
        metrics: any,
        leaf_lifetime: Duration::from_secs(24 * 3600),
        outbound_only: false,
        addresses: crate::addressing::AddressMode::Ip {
            pool: format!("127.77.{}.0/24", i % 256),
            interface: None,
        },
        // everything runs on loopback here, the stand-in nodes too
        tunnel: crate::tunnel::TunnelConfig {
            allow_loopback_targets: true,
            ..Default::default()
        },
    }
}

async fn start_gateway(bin: &Path, org: &str, dir: DataDir) -> Result<Gateway, LabError> {
    let step = format!("start gateway {org}");
    let _ = std::fs::remove_file(dir.run_info());
    let log =
        std::fs::File::create(dir.root().with_extension("log")).map_err(|e| fail(&step, e))?;
    let log2 = log.try_clone().map_err(|e| fail(&step, e))?;
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--data-dir")
        .arg(dir.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(&step, e))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read(dir.run_info())
            && let Ok(info) = serde_json::from_slice::<RunInfo>(&text)
        {
            return Ok(Gateway {
                org: org.to_owned(),
                dir,
                child,
                info,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(
                &step,
                format!("exited early ({status}); see {}.log", dir.root().display()),
            ));
        }
        if Instant::now() > deadline {
            return Err(fail(&step, "not ready in time"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop_gateway(gw: &mut Gateway) {
    if let Some(pid) = gw.child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), gw.child.wait())
        .await
        .is_err()
    {
        let _ = gw.child.kill().await;
    }
}

/// Progress reporting: one line per step.
struct Steps {
    check: bool,
    passed: usize,
    failed: usize,
}

impl Steps {
    fn report<T>(&mut self, name: &str, started: Instant, r: &Result<T, LabError>) {
        let ms = started.elapsed().as_millis();
        match (r, self.check) {
            (Ok(_), true) => {
                self.passed += 1;
                say!("PASS  {name} ({ms} ms)");
            }
            (Ok(_), false) => {
                self.passed += 1;
                say!("[ok]  {name} ({ms} ms)");
            }
            (Err(e), true) => {
                self.failed += 1;
                say!("FAIL  {name} ({ms} ms): {}", e.message);
            }
            (Err(e), false) => {
                self.failed += 1;
                say!("[!!]  {name} ({ms} ms): {}", e.message);
            }
        }
    }
}

async fn invite(founder: &Gateway, org: &str) -> Result<JoinToken, LabError> {
    let step = format!("invite {org}");
    let mut client = crate::admin::connect(&founder.info.admin)
        .await
        .map_err(|e| fail(&step, e))?;
    let resp = client
        .create_invite(fedgw_proto::v1::CreateInviteRequest {
            org: org.to_owned(),
            ttl_secs: 600,
            uses: 1,
        })
        .await
        .map_err(|e| fail(&step, e.message()))?
        .into_inner();
    JoinToken::parse(&resp.token).map_err(|e| fail(&step, e))
}

async fn ping(from: &Gateway, to: &Gateway, domain: &str) -> Result<(), LabError> {
    let step = format!("mTLS {} -> {}", from.org, to.org);
    let (_, config) = provision::federation_client_config(&from.dir, Some(&to.org))
        .map_err(|e| fail(&step, e))?;
    let out = crate::federation::hello(
        to.info
            .advertise
            .first()
            .ok_or_else(|| fail(&step, "the gateway advertises no endpoint"))?,
        config,
        domain,
        "dc1",
        STEP_TIMEOUT,
    )
    .await
    .map_err(|e| fail(&step, e))?;
    if out.server.org != to.org || out.seen_as.org != from.org {
        return Err(fail(
            &step,
            format!(
                "identities {} / {} do not match",
                out.server.org, out.seen_as.org
            ),
        ));
    }
    Ok(())
}

/// Approves `candidate` at `member` once the invite has reached it: a gateway refuses to
/// approve an org it holds no pending join of, and the pending join syncs from the inviter.
async fn approve(member: &Gateway, candidate: &str) -> Result<(), LabError> {
    let step = format!("approve {candidate} at {}", member.org);
    let mut client = crate::admin::connect(&member.info.admin)
        .await
        .map_err(|e| fail(&step, e))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let members = client
            .list_members(fedgw_proto::v1::ListMembersRequest {})
            .await
            .map_err(|e| fail(&step, e.message()))?
            .into_inner();
        if members.pending.iter().any(|m| m.org == candidate) {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(&step, "the invite did not reach this gateway in time"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .approve(fedgw_proto::v1::ApproveRequest {
            org: candidate.to_owned(),
        })
        .await
        .map_err(|e| fail(&step, e.message()))?;
    Ok(())
}

/// A sample node as the lab runs it.
#[derive(Debug, Clone)]
struct PlannedNode {
    org: String,
    name: String,
    enode_id: [u8; 64],
    raft_id: u32,
    /// Its own loopback address.
    ip: std::net::Ipv4Addr,
    p2p: u16,
    raft: u16,
    tessera: u16,
    tessera_key: [u8; 32],
}

/// Shares the sample nodes out between the orgs round-robin; each gets `127.66.<org>.<n>` with
/// the sample's p2p and raft ports and the Tessera config's P2P port.
fn plan_nodes(orgs: &[String]) -> Result<Vec<PlannedNode>, LabError> {
    let step = "sample nodes";
    let enodes =
        fedgw_proto::enode::parse_static_nodes(SAMPLE_STATIC_NODES).map_err(|e| fail(step, e))?;
    let tessera = fedgw_proto::tessera::parse_tessera_config(SAMPLE_TESSERA_CONFIG)
        .map_err(|e| fail(step, e))?;
    let tessera_port = tessera
        .p2p_url
        .as_deref()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| fail(step, "the Tessera config has no P2P port"))?;
    let mut per_org = vec![0u8; orgs.len()];
    let mut plan = vec![];
    for (k, e) in enodes.iter().enumerate() {
        let o = k % orgs.len();
        per_org[o] += 1;
        let name = format!("node{}", per_org[o]);
        // the sample's Tessera keys are the public 7nodes demo keys, which gateways refuse:
        // each stand-in gets a key of its own
        let tessera_key: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(format!(
                "fedgw lab tessera {}/{name}",
                orgs[o]
            )))
            .into();
        plan.push(PlannedNode {
            org: orgs[o].clone(),
            ip: std::net::Ipv4Addr::new(
                127,
                66,
                u8::try_from(o + 1).unwrap_or(u8::MAX),
                per_org[o],
            ),
            name,
            enode_id: *e.id.as_bytes(),
            raft_id: u32::try_from(k + 1).unwrap_or(u32::MAX),
            p2p: e.port,
            raft: e.raftport.unwrap_or(50400),
            tessera: tessera_port,
            tessera_key,
        });
    }
    Ok(plan)
}

async fn start_stand_ins(
    plan: &[PlannedNode],
    tracker: &tokio_util::task::TaskTracker,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), LabError> {
    for n in plan {
        let at = |port| std::net::SocketAddr::from((n.ip, port));
        super::standin::serve(
            &[at(n.p2p), at(n.raft)],
            &[at(n.tessera)],
            tracker,
            shutdown,
        )
        .await
        .map_err(|e| fail("stand-ins", format!("{e} (is another lab running?)")))?;
    }
    Ok(())
}

async fn register(gw: &Gateway, nodes: &[&PlannedNode]) -> Result<(), LabError> {
    let step = format!("register nodes at {}", gw.org);
    let mut client = crate::admin::connect(&gw.info.admin)
        .await
        .map_err(|e| fail(&step, e))?;
    for n in nodes {
        client
            .add_node(fedgw_proto::v1::AddNodeRequest {
                node: Some(fedgw_proto::v1::NodeSpec {
                    name: n.name.clone(),
                    client: fedgw_proto::v1::ClientKind::Goquorum.into(),
                    enode_id: n.enode_id.to_vec(),
                    host: n.ip.to_string(),
                    p2p_port: u32::from(n.p2p),
                    raft_port: u32::from(n.raft),
                    raft_id: n.raft_id,
                    tessera_keys: vec![n.tessera_key.to_vec()],
                    tessera_url: format!("http://{}:{}", n.ip, n.tessera),
                    roles: vec![],
                    allowed_orgs: vec![],
                    rpc_url: String::new(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| fail(&step, format!("{}: {}", n.name, e.message())))?;
    }
    Ok(())
}

/// Waits until every gateway lists `count` nodes, each with an address at its site; returns
/// each gateway's list.
async fn converge(
    gateways: &[Gateway],
    count: usize,
) -> Result<Vec<(String, Vec<fedgw_proto::v1::NodeInfo>)>, LabError> {
    let step = "converge";
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut all = vec![];
        for gw in gateways {
            let mut client = crate::admin::connect(&gw.info.admin)
                .await
                .map_err(|e| fail(step, e))?;
            let nodes = client
                .list_nodes(fedgw_proto::v1::ListNodesRequest {})
                .await
                .map_err(|e| fail(step, e.message()))?
                .into_inner()
                .nodes;
            all.push((gw.org.clone(), nodes));
        }
        let done = all
            .iter()
            .all(|(_, n)| n.len() == count && n.iter().all(|i| !i.local_ip.is_empty()));
        if done {
            return Ok(all);
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = all
                .iter()
                .map(|(o, n)| format!("{o}: {}", n.len()))
                .collect();
            return Err(fail(step, format!("nodes listed: {}", seen.join(", "))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From `from`'s site: resolve `node` with `from`'s DNS, then echo on p2p and raft and ask
/// Tessera's upcheck, through the tunnels. Retries each probe until [`STEP_TIMEOUT`].
async fn traffic(from: &Gateway, node: &PlannedNode, domain: &str) -> Result<(), LabError> {
    use super::standin::{ProbeKind, probe};
    let step = format!("traffic {} -> {}", from.org, node.org);
    let name = format!("{}.{}.{domain}", node.name, node.org);
    let deadline = Instant::now() + STEP_TIMEOUT;
    for (port, kind) in [
        (node.p2p, ProbeKind::Echo(64 * 1024)),
        (node.raft, ProbeKind::Echo(1024)),
        (node.tessera, ProbeKind::Upcheck),
    ] {
        let target = format!("{name}:{port}");
        loop {
            match probe(&target, Some(from.info.dns), kind, Duration::from_secs(5)).await {
                Ok(ok) if ok.addr.ip() == std::net::IpAddr::V4(node.ip) => {
                    return Err(fail(
                        &step,
                        format!("{target} resolved to the node itself, not a local address"),
                    ));
                }
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(fail(&step, e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

fn lab_nodes(
    plan: &[PlannedNode],
    listed: &[(String, Vec<fedgw_proto::v1::NodeInfo>)],
    domain: &str,
) -> Vec<LabNode> {
    let mut nodes: Vec<LabNode> = plan
        .iter()
        .map(|n| {
            let mut real = Endpoints::new();
            real.insert("p2p".into(), format!("{}:{}", n.ip, n.p2p));
            real.insert("raft".into(), format!("{}:{}", n.ip, n.raft));
            real.insert("tessera".into(), format!("http://{}:{}", n.ip, n.tessera));
            let local = listed
                .iter()
                .filter(|(org, _)| *org != n.org)
                .filter_map(|(org, infos)| {
                    let info = infos.iter().find(|i| i.org == n.org && i.name == n.name)?;
                    let ports = info
                        .local_ports
                        .iter()
                        .map(|(k, p)| (k.clone(), format!("{}:{p}", info.local_ip)))
                        .collect();
                    Some((org.clone(), ports))
                })
                .collect();
            LabNode {
                org: n.org.clone(),
                name: n.name.clone(),
                dns_name: format!("{}.{}.{domain}", n.name, n.org),
                client: "goquorum".into(),
                enode: n.enode_id.iter().map(|b| format!("{b:02x}")).collect(),
                real,
                local,
            }
        })
        .collect();
    nodes.sort_by(|a, b| (&a.org, &a.name).cmp(&(&b.org, &b.name)));
    nodes
}

/// Runs the lab. Without `--check` it stays up until `stop` resolves (the command line passes
/// SIGINT or SIGTERM), then stops its gateways. Returns the number of failed steps (0 means
/// every step passed).
pub async fn run(opts: LabOptions, stop: impl Future<Output = ()>) -> Result<usize, LabError> {
    if !(2..=16).contains(&opts.orgs) {
        return Err(fail("options", "--orgs must be between 2 and 16"));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| fail("create lab dir", e))?;
    let dir = std::path::absolute(&opts.dir).map_err(|e| fail("lab dir", e))?;
    if dir.join("org1").join("fedgw.toml").exists() {
        return Err(fail(
            "options",
            format!(
                "{} already holds a lab; remove it or pass another --dir",
                dir.display()
            ),
        ));
    }
    let mut steps = Steps {
        check: opts.check,
        passed: 0,
        failed: 0,
    };
    let orgs: Vec<String> = (1..=opts.orgs).map(|i| format!("org{i}")).collect();
    let mut gateways: Vec<Gateway> = Vec::new();
    let stand_ins = tokio_util::task::TaskTracker::new();
    let stop_stand_ins = tokio_util::sync::CancellationToken::new();
    let mut quorum = geth::Running::default();
    let namespaces = match &opts.geth {
        Some(_) => match geth::namespaces(opts.orgs, &mut quorum) {
            Ok(n) => n,
            Err(e) => {
                quorum.stop().await;
                return Err(e);
            }
        },
        None => vec![],
    };
    let network = |i: usize| match namespaces.get(i - 1) {
        Some(ns) => geth::network(network(i), ns, i),
        None => network(i),
    };

    let result = async {
        let t = Instant::now();
        let founder_dir = DataDir::new(dir.join(&orgs[0]));
        let r = provision::init(
            &founder_dir,
            &InitOptions {
                consortium: opts.consortium.clone(),
                domain: opts.domain.clone(),
                org: orgs[0].clone(),
                admission: Admission::Majority,
                consensus: if opts.geth.is_some() {
                    crate::config::Consensus::Raft
                } else {
                    Default::default()
                },
                genesis: None,
                network: network(1),
            },
            SystemTime::now(),
        )
        .map_err(|e| fail("init", e));
        steps.report(
            &format!("init consortium {} as {}", opts.consortium, orgs[0]),
            t,
            &r,
        );
        r?;
        let t = Instant::now();
        let r = start_gateway(&opts.bin, &orgs[0], founder_dir).await;
        steps.report(&format!("start gateway {}", orgs[0]), t, &r);
        gateways.push(r?);

        for (index, org) in orgs[1..].iter().enumerate() {
            let t = Instant::now();
            let r = invite(&gateways[0], org).await;
            steps.report(&format!("invite {org}"), t, &r);
            let token = r?;
            let t = Instant::now();
            let org_dir = DataDir::new(dir.join(org));
            // the join waits, answered Pending, until a majority of members approved it
            let net = network(index + 2);
            let join =
                crate::join::client::join_into(token, org, &org_dir, &net, STEP_TIMEOUT, &|_| {});
            let approvals = async {
                let mut results = vec![];
                for member in &gateways {
                    let t = Instant::now();
                    results.push((member.org.clone(), t, approve(member, org).await));
                }
                results
            };
            let (joined, approvals) = tokio::join!(join, approvals);
            for (member, t, r) in &approvals {
                steps.report(&format!("approve {org} at {member}"), *t, r);
            }
            let r = joined.map_err(|e| fail(&format!("join {org}"), e));
            steps.report(
                &format!(
                    "join {org} (majority admission: {} of {} members approved)",
                    approvals.iter().filter(|(_, _, r)| r.is_ok()).count(),
                    gateways.len()
                ),
                t,
                &r,
            );
            r?;
            let t = Instant::now();
            let r = start_gateway(&opts.bin, org, org_dir).await;
            steps.report(&format!("start gateway {org}"), t, &r);
            gateways.push(r?);
        }
        for a in &gateways {
            for b in &gateways {
                if a.org != b.org {
                    let t = Instant::now();
                    let r = ping(a, b, &opts.domain).await;
                    steps.report(&format!("mTLS {} -> {}", a.org, b.org), t, &r);
                }
            }
        }
        if let Some(bin) = &opts.geth {
            geth::run(
                bin,
                &dir,
                &opts.domain,
                &gateways,
                &namespaces,
                &mut steps,
                &mut quorum,
            )
            .await?;
            let lab = lab_file(&opts, &gateways, vec![]);
            let json = serde_json::to_vec_pretty(&lab).expect("LabFile serialises");
            crate::datadir::write_atomic(&dir.join("lab.json"), &json, 0o644)
                .map_err(|e| fail("write lab.json", e))?;
            return Ok(lab);
        }
        let t = Instant::now();
        let r = plan_nodes(&orgs);
        steps.report(
            "share the sample static-nodes.json and Tessera config out between the orgs",
            t,
            &r,
        );
        let plan = r?;
        let t = Instant::now();
        let r = start_stand_ins(&plan, &stand_ins, &stop_stand_ins).await;
        steps.report(
            &format!("start stand-in services for {} nodes", plan.len()),
            t,
            &r,
        );
        r?;
        for gw in &gateways {
            let t = Instant::now();
            let mine: Vec<&PlannedNode> = plan.iter().filter(|n| n.org == gw.org).collect();
            let r = register(gw, &mine).await;
            steps.report(
                &format!("register {} nodes at {}", mine.len(), gw.org),
                t,
                &r,
            );
            r?;
        }
        let t = Instant::now();
        let r = converge(&gateways, plan.len()).await;
        steps.report("every gateway lists every node with a local address", t, &r);
        let listed = r?;
        for a in &gateways {
            for b in &gateways {
                if a.org == b.org {
                    continue;
                }
                let Some(node) = plan.iter().find(|n| n.org == b.org) else {
                    continue;
                };
                let t = Instant::now();
                let r = traffic(a, node, &opts.domain).await;
                steps.report(
                    &format!(
                        "traffic {} -> {} ({}.{}: p2p, raft, tessera)",
                        a.org, b.org, node.name, b.org
                    ),
                    t,
                    &r,
                );
            }
        }
        let nodes = lab_nodes(&plan, &listed, &opts.domain);
        let lab = lab_file(&opts, &gateways, nodes);
        let json = serde_json::to_vec_pretty(&lab).expect("LabFile serialises");
        crate::datadir::write_atomic(&dir.join("lab.json"), &json, 0o644)
            .map_err(|e| fail("write lab.json", e))?;
        Ok::<LabFile, LabError>(lab)
    }
    .await;

    match result {
        Ok(lab) if !opts.check => {
            say!("{}", table(&lab, &dir, &opts.bin).trim_end());
            say!("\nthe lab is up; Ctrl-C (or SIGTERM) stops it");
            stop.await;
        }
        Ok(_) => {}
        Err(e) => {
            if steps.failed == 0 {
                steps.failed = 1;
                say!("FAIL  {e}");
            }
        }
    }
    quorum.stop().await;
    for gw in gateways.iter_mut().rev() {
        stop_gateway(gw).await;
    }
    stop_stand_ins.cancel();
    stand_ins.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), stand_ins.wait()).await;
    if opts.check {
        say!(
            "lab check: {} passed, {} failed",
            steps.passed,
            steps.failed
        );
    }
    Ok(steps.failed)
}

fn lab_file(opts: &LabOptions, gateways: &[Gateway], nodes: Vec<LabNode>) -> LabFile {
    LabFile {
        consortium: opts.consortium.clone(),
        domain: opts.domain.clone(),
        nodes,
        orgs: gateways
            .iter()
            .map(|g| LabOrg {
                org: g.org.clone(),
                data_dir: g.dir.root().to_owned(),
                gateway: g.info.gateway.to_string(),
                dns: g.info.dns.to_string(),
                metrics: g.info.metrics.to_string(),
                console: g.info.console.clone(),
            })
            .collect(),
    }
}

/// The lab's table and the commands to try, as printed. The `fedgw` commands name `bin`, the
/// binary running the lab, so they work where `fedgw` is not on `PATH` (`cargo run ... -- lab`).
fn table(lab: &LabFile, dir: &Path, bin: &Path) -> String {
    let mut out = String::new();
    // the lines go into `out` rather than to standard output
    macro_rules! say {
        ($($arg:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!(out, $($arg)*);
        }};
    }
    let fedgw = shell_word(&bin.display().to_string());
    say!("\nconsortium {} ({})", lab.consortium, lab.domain);
    say!(
        "{:<6} {:<22} {:<22} {:<22} data dir",
        "org",
        "gateway",
        "metrics",
        "dns"
    );
    for o in &lab.orgs {
        say!(
            "{:<6} {:<22} {:<22} {:<22} {}",
            o.org,
            o.gateway,
            o.metrics,
            o.dns,
            o.data_dir.display()
        );
    }
    say!("\nweb console of each site:");
    for o in &lab.orgs {
        say!(
            "  {:<6} {}",
            o.org,
            o.console.as_deref().unwrap_or("(not served)")
        );
    }
    let first = lab.orgs.first().map(|o| o.org.clone()).unwrap_or_default();
    say!(
        "\n{:<26} {:<22} {:<22} local p2p address at {first}",
        "node",
        "real p2p",
        "real tessera"
    );
    for n in &lab.nodes {
        let local = n
            .local
            .get(&first)
            .and_then(|l| l.get("p2p"))
            .map_or("(its own site)", String::as_str);
        say!(
            "{:<26} {:<22} {:<22} {local}",
            n.dns_name,
            n.real.get("p2p").map_or("", String::as_str),
            n.real.get("tessera").map_or("", String::as_str),
        );
    }
    say!("\ntry:");
    if let (Some(a), Some(b)) = (lab.orgs.first(), lab.orgs.get(1)) {
        if let Some(n) = lab.nodes.iter().find(|n| n.org == b.org) {
            let (dns_ip, dns_port) = a.dns.rsplit_once(':').unwrap_or((&a.dns, "53"));
            say!("  dig @{dns_ip} -p {dns_port} +short {}", n.dns_name);
            if let Some(t) = n.local.get(&a.org).and_then(|l| l.get("tessera")) {
                say!("  curl http://{t}/upcheck");
            }
            if let Some(p) = n.real.get("p2p").and_then(|p| p.rsplit(':').next()) {
                say!("  {fedgw} probe {}:{p} --dns {}", n.dns_name, a.dns);
            }
        }
        say!("  {fedgw} nodes --data-dir {}", a.data_dir.display());
        say!(
            "  {fedgw} ping {} --data-dir {}",
            a.gateway,
            b.data_dir.display()
        );
        say!("  curl -s http://{}/metrics | grep fedgw_tunnel", a.metrics);
    }
    say!("  cat {}", dir.join("lab.json").display());
    out
}

/// A new directory for a lab under the system's temporary directory,
/// `fedgw-lab-<pid>-<unix ms>`.
pub fn temporary_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = base.join(format!("fedgw-lab-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `word` as one POSIX shell word: as it is when it holds only safe characters, else in single
/// quotes.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_to_try_name_the_running_binary() {
        let org = |n: u8| LabOrg {
            org: format!("org{n}"),
            data_dir: PathBuf::from(format!("/tmp/lab/org{n}")),
            gateway: format!("127.0.0.1:700{n}"),
            dns: format!("127.0.0.1:530{n}"),
            metrics: format!("127.0.0.1:900{n}"),
            console: Some(format!("http://127.0.0.1:900{n}/")),
        };
        let lab = LabFile {
            consortium: "acme".into(),
            domain: "acme.test".into(),
            orgs: vec![org(1), org(2)],
            nodes: vec![LabNode {
                org: "org2".into(),
                name: "node1".into(),
                dns_name: "node1.org2.acme.test".into(),
                client: "goquorum".into(),
                enode: "ab".repeat(64),
                real: [("p2p".to_owned(), "127.66.2.1:30303".to_owned())].into(),
                local: Default::default(),
            }],
        };
        let text = table(
            &lab,
            Path::new("/tmp/lab"),
            Path::new("/src/target/release/fedgw"),
        );
        assert!(
            text.contains("  /src/target/release/fedgw probe node1.org2.acme.test:30303 --dns"),
            "{text}"
        );
        assert!(text.contains("  /src/target/release/fedgw nodes --data-dir /tmp/lab/org1"));
        assert!(text.contains("  /src/target/release/fedgw ping 127.0.0.1:7001"));
        assert!(!text.contains("  fedgw "), "{text}");
        assert!(text.contains("  org2   http://127.0.0.1:9002/"), "{text}");
        let spaced = table(&lab, Path::new("/tmp/lab"), Path::new("/my bin/fedgw"));
        assert!(spaced.contains("  '/my bin/fedgw' nodes"), "{spaced}");
    }
}
