//! Commands that talk to the running gateway over its admin socket: nodes, members, approve,
//! revoke, render (`fedgw status` is in `status_cmds`).

use std::path::PathBuf;

use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use fedgw_proto::enode::{EnodeUrl, Host};
use fedgw_proto::tessera::{TesseraKey, parse_tessera_config};
use fedgw_proto::v1 as pb;

use super::admin_conn::{connect, timed_out};
use super::{AdminDirArg, CliError, exit, json, usage};
use crate::datadir::DataDir;

/// `--client` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClientArg {
    /// GoQuorum.
    Goquorum,
    /// Hyperledger Besu.
    Besu,
    /// Tessera only.
    Tessera,
    /// Fabric peer.
    FabricPeer,
    /// Fabric orderer.
    FabricOrderer,
    /// IPFS node with an IPFS Cluster peer.
    Ipfs,
}

impl ClientArg {
    /// The wire client kind.
    pub(super) fn to_pb(self) -> pb::ClientKind {
        match self {
            ClientArg::Goquorum => pb::ClientKind::Goquorum,
            ClientArg::Besu => pb::ClientKind::Besu,
            ClientArg::Tessera => pb::ClientKind::Tessera,
            ClientArg::FabricPeer => pb::ClientKind::FabricPeer,
            ClientArg::FabricOrderer => pb::ClientKind::FabricOrderer,
            ClientArg::Ipfs => pb::ClientKind::Ipfs,
        }
    }
}

fn client_name(k: i32) -> &'static str {
    match pb::ClientKind::try_from(k) {
        Ok(pb::ClientKind::Goquorum) => "goquorum",
        Ok(pb::ClientKind::Besu) => "besu",
        Ok(pb::ClientKind::Tessera) => "tessera",
        Ok(pb::ClientKind::FabricPeer) => "fabric-peer",
        Ok(pb::ClientKind::FabricOrderer) => "fabric-orderer",
        Ok(pb::ClientKind::Ipfs) => "ipfs",
        _ => "unknown",
    }
}

/// `fedgw node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Register (or update) a node of this org at this site.
    Add(NodeAddArgs),
    /// Register every node of a static-nodes.json / permissioned-nodes.json file.
    Import(NodeImportArgs),
    /// Remove a node of this org.
    Rm {
        /// The node name.
        name: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
}

/// `fedgw node add`.
#[derive(Debug, Args)]
pub struct NodeAddArgs {
    /// The node name (a DNS label): the node becomes <name>.<org>.<domain>.
    name: String,
    #[command(flatten)]
    dir: AdminDirArg,
    /// The node's enode URL (GoQuorum/geth format); gives its key, host, p2p and raft ports.
    #[arg(long, value_name = "URL")]
    enode: Option<String>,
    /// The client software.
    #[arg(long, value_enum, default_value = "goquorum")]
    client: ClientArg,
    /// The node's real address at this site [default: the enode URL's host]. Repeat it for a
    /// node with replicas (at most 8: Tessera instances, a GoQuorum HA pair): the far end
    /// spreads connections over the healthy ones.
    #[arg(long)]
    host: Vec<String>,
    /// The raft id.
    #[arg(long, value_name = "N")]
    raft_id: Option<u32>,
    /// The node's Tessera P2P URL.
    #[arg(long, value_name = "URL")]
    tessera_url: Option<String>,
    /// A Tessera public key, base64 (repeatable).
    #[arg(long, value_name = "B64")]
    tessera_key: Vec<String>,
    /// A role (validator, bootnode, ...; repeatable).
    #[arg(long)]
    role: Vec<String>,
    /// An org allowed to reach the node (repeatable; default: every member).
    #[arg(long, value_name = "ORG")]
    allowed_org: Vec<String>,
    /// The node's JSON-RPC endpoint at this site, http://HOST:PORT (kept here, never published).
    #[arg(long, value_name = "URL")]
    rpc: Option<String>,
    /// A named TCP service, NAME=PORT (repeatable; e.g. peer=7051 for a Fabric peer,
    /// cluster=9096 for an IPFS Cluster peer): a listener at every other site and an SRV record.
    #[arg(long, value_name = "NAME=PORT")]
    service: Vec<String>,
    /// The IPFS Cluster peer id (12D3KooW... or Qm...), for `render ipfs-cluster-peers`.
    #[arg(long, value_name = "ID")]
    ipfs_peer_id: Option<String>,
    /// A Fabric orderer's TLS certificate (PEM or DER), published with the node.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// GoQuorum raft: join the cluster as a learner (raft_addLearner), promoted to a voting peer
    /// once it has caught up.
    #[arg(long)]
    raft_learner: bool,
    /// Print one JSON object (org, name, seq, dns_name) instead of text.
    #[arg(long)]
    json: bool,
}

/// `fedgw node import`.
#[derive(Debug, Args)]
pub struct NodeImportArgs {
    /// A static-nodes.json or permissioned-nodes.json file (a JSON array of enode URLs), or a
    /// node file: a JSON array of {"name", "client", "host", "services": {NAME: PORT},
    /// "ipfs_peer_id", "tls_cert": FILE, "allowed_orgs", "roles"} for Fabric and IPFS nodes.
    file: PathBuf,
    #[command(flatten)]
    dir: AdminDirArg,
    /// Node names, comma-separated, in file order [default: node1..nodeN].
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// The client software of the imported nodes.
    #[arg(long, value_enum, default_value = "goquorum")]
    client: ClientArg,
    /// This site's Tessera config: its own P2P URL and public keys go to the imported node on
    /// that URL's host. Its peers are not registered (they are other nodes).
    #[arg(long, value_name = "FILE")]
    tessera_config: Option<PathBuf>,
    /// The nodes' JSON-RPC endpoints at this site, comma-separated, in file order (kept here,
    /// never published).
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    rpc: Vec<String>,
    /// GoQuorum raft: every imported node joins the cluster as a learner, promoted to a voting
    /// peer once it has caught up.
    #[arg(long)]
    raft_learner: bool,
    /// Print one JSON object, {"registered": [{org, name}], "refused": [{name, error}]},
    /// instead of a line per node (the exit code is the same).
    #[arg(long)]
    json: bool,
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Ip(ip) => ip.to_string(),
        Host::Dns(name) => name.clone(),
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// A `--rpc` value, checked here so a typo fails before the gateway is asked.
fn rpc_arg(url: Option<&str>) -> Result<String, CliError> {
    match url {
        None => Ok(String::new()),
        Some(u) => u
            .parse::<crate::chain::rpc::RpcUrl>()
            .map(|u| u.to_string())
            .map_err(|e| usage(format!("--rpc {u}: {e}"))),
    }
}

fn tessera_keys(keys: &[String]) -> Result<Vec<Vec<u8>>, CliError> {
    keys.iter()
        .map(|k| {
            k.parse::<TesseraKey>()
                .map(|k| k.as_bytes().to_vec())
                .map_err(|e| usage(format!("--tessera-key {k}: {e}")))
        })
        .collect()
}

fn spec_from_enode(name: &str, url: &EnodeUrl, client: ClientArg) -> pb::NodeSpec {
    pb::NodeSpec {
        name: name.to_owned(),
        client: client.to_pb().into(),
        enode_id: url.id.as_bytes().to_vec(),
        host: host_text(&url.host),
        p2p_port: u32::from(url.port),
        raft_port: url.raftport.map_or(0, u32::from),
        ..Default::default()
    }
}

/// Runs `fedgw node ...`.
pub async fn node(cmd: NodeCommand) -> Result<(), CliError> {
    match cmd {
        NodeCommand::Add(a) => {
            let mut spec = match &a.enode {
                Some(text) => {
                    let url = EnodeUrl::parse(text).map_err(|e| usage(format!("--enode: {e}")))?;
                    spec_from_enode(&a.name, &url, a.client)
                }
                None => pb::NodeSpec {
                    name: a.name.clone(),
                    client: a.client.to_pb().into(),
                    ..Default::default()
                },
            };
            if let Some((first, more)) = a.host.split_first() {
                spec.host = first.clone();
                spec.replica_hosts = more.to_vec();
            }
            if let Some(url) = &a.tessera_url {
                if spec.host.is_empty() {
                    spec.host = url_host(url).unwrap_or_default();
                }
                spec.tessera_url = url.clone();
            }
            if spec.host.is_empty() {
                return Err(usage(format!(
                    "node {} has no address: give its enode URL (--enode enode://ID@HOST:PORT), \
                     its Tessera P2P URL (--tessera-url http://HOST:PORT) or --host HOST",
                    a.name
                )));
            }
            spec.services = super::service_args::services(&a.service).map_err(usage)?;
            if let Some(id) = &a.ipfs_peer_id {
                spec.ipfs_peer_id = super::service_args::ipfs_peer_id(id).map_err(usage)?;
            }
            if let Some(path) = &a.tls_cert {
                spec.tls_cert_der = super::service_args::tls_cert(path).map_err(usage)?;
            }
            spec.raft_id = a.raft_id.unwrap_or(0);
            spec.tessera_keys = tessera_keys(&a.tessera_key)?;
            spec.roles = a.role.clone();
            spec.allowed_orgs = a.allowed_org.clone();
            spec.rpc_url = rpc_arg(a.rpc.as_deref())?;
            spec.raft_learner = a.raft_learner;
            let mut admin = connect(&a.dir).await?;
            let info = admin_call!(admin, add_node(pb::AddNodeRequest { node: Some(spec) }));
            if a.json {
                let v = serde_json::json!({
                    "org": info.org, "name": info.name, "seq": info.seq,
                    "dns_name": json::text(&info.dns_name),
                });
                outln!("{v}")?;
                return Ok(());
            }
            outln!(
                "node {}/{} registered (seq {})",
                info.org,
                info.name,
                info.seq
            )?;
            Ok(())
        }
        NodeCommand::Import(a) => import(a).await,
        NodeCommand::Rm { name, dir } => {
            let mut admin = connect(&dir).await?;
            admin_call!(
                admin,
                remove_node(pb::RemoveNodeRequest { name: name.clone() }),
                raw
            );
            outln!("node {name} removed")?;
            Ok(())
        }
    }
}

async fn import(a: NodeImportArgs) -> Result<(), CliError> {
    let text = read_input(&a.file)?;
    if super::node_file::is_node_file(&text) {
        if !a.names.is_empty() || !a.rpc.is_empty() || a.tessera_config.is_some() {
            return Err(usage(
                "a node file names its nodes itself: --names, --rpc and --tessera-config are for \
                 enode lists",
            ));
        }
        let specs = super::node_file::specs(&text, &a.file).map_err(usage)?;
        return add_specs(&a.dir, specs, a.json).await;
    }
    let urls = fedgw_proto::enode::parse_static_nodes(&text)
        .map_err(|e| usage(format!("{}: {e}", a.file.display())))?;
    if !a.names.is_empty() && a.names.len() != urls.len() {
        return Err(usage(format!(
            "--names lists {} names for {} nodes",
            a.names.len(),
            urls.len()
        )));
    }
    // one node per key and per name: a repeat would register one node twice or overwrite one
    let mut seen = std::collections::HashMap::new();
    for (i, url) in urls.iter().enumerate() {
        if let Some(first) = seen.insert(url.id, i) {
            return Err(usage(format!(
                "{}: entries {} and {} list the same enode id",
                a.file.display(),
                first + 1,
                i + 1
            )));
        }
    }
    if !a.rpc.is_empty() && a.rpc.len() != urls.len() {
        return Err(usage(format!(
            "--rpc lists {} URLs for {} nodes",
            a.rpc.len(),
            urls.len()
        )));
    }
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = a.names.iter().find(|n| !names.insert(n.as_str())) {
        return Err(usage(format!("--names lists {twice} twice")));
    }
    let mut specs: Vec<pb::NodeSpec> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let name = a
                .names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("node{}", i + 1));
            let mut spec = spec_from_enode(&name, url, a.client);
            spec.rpc_url = rpc_arg(a.rpc.get(i).map(String::as_str))?;
            spec.raft_learner = a.raft_learner;
            Ok(spec)
        })
        .collect::<Result<_, CliError>>()?;
    if let Some(path) = &a.tessera_config {
        let text = read_input(path)?;
        let tessera =
            parse_tessera_config(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        tessera_onto(&mut specs, &tessera)
            .map_err(|e| usage(format!("{}: {e}", path.display())))?;
        if !tessera.peers.is_empty() {
            eprintln!(
                "{}: {} peer(s) not registered: a Tessera config's peers are other nodes, \
                 registered by the site that runs each",
                path.display(),
                tessera.peers.len()
            );
        }
    }
    add_specs(&a.dir, specs, a.json).await
}

/// Registers `specs` in batches, printing each result (with `json`, one object at the end);
/// fails when any was refused.
async fn add_specs(
    dir: &AdminDirArg,
    specs: Vec<pb::NodeSpec>,
    json: bool,
) -> Result<(), CliError> {
    let mut admin = connect(dir).await?;
    let mut failed = 0;
    let (mut registered, mut refused) = (Vec::new(), Vec::new());
    let mut refuse = |name: &str, error: &str| {
        if json {
            refused.push(serde_json::json!({"name": name, "error": error}));
        } else {
            eprintln!("node {name}: {error}");
        }
    };
    // in batches: each is published at once (one store write, one view change at each gateway)
    let mut specs = specs.into_iter().peekable();
    while specs.peek().is_some() {
        let chunk: Vec<pb::NodeSpec> = specs.by_ref().take(crate::admin::MAX_ADD_NODES).collect();
        let names: Vec<String> = chunk.iter().map(|s| s.name.clone()).collect();
        match admin
            .client
            .add_nodes(pb::AddNodesRequest { nodes: chunk })
            .await
        {
            Ok(r) => {
                for (name, result) in names.iter().zip(r.into_inner().results) {
                    match result.node {
                        Some(info) if json => {
                            registered.push(serde_json::json!({"org": info.org, "name": name}));
                        }
                        Some(info) => outln!("node {}/{} registered", info.org, name)?,
                        None => {
                            failed += 1;
                            refuse(name, &result.error);
                        }
                    }
                }
            }
            // a gateway that does not answer will not answer the next batch either
            Err(s) if timed_out(&s) => return Err(admin.error(s)),
            Err(s) => {
                failed += names.len();
                for name in names {
                    refuse(&name, s.message());
                }
            }
        }
    }
    if json {
        let v = serde_json::json!({"registered": registered, "refused": refused});
        outln!("{v}")?;
    }
    if failed > 0 {
        return Err(usage(format!("{failed} node(s) refused")));
    }
    Ok(())
}

/// Largest node list or Tessera config `node import` reads, in bytes: a list of
/// [`fedgw_proto::enode::MAX_STATIC_NODES`] URLs of 200 bytes fits with room to spare.
const MAX_INPUT_FILE: u64 = 8 << 20;

/// Reads a text file of at most [`MAX_INPUT_FILE`] bytes (a usage error otherwise).
fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read as _;
    let err = |e: &dyn std::fmt::Display| usage(format!("reading {}: {e}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(|e| err(&e))?
        .take(MAX_INPUT_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(&e))?;
    if text.len() as u64 > MAX_INPUT_FILE {
        return Err(err(&format_args!("larger than {MAX_INPUT_FILE} bytes")));
    }
    Ok(text)
}

/// Why a Tessera config gave nothing to import.
#[derive(Debug, thiserror::Error)]
enum TesseraImportError {
    /// The config has no enabled P2P server.
    #[error("no enabled P2P server, so no Tessera URL of this site's own")]
    NoP2p,
    /// The P2P address is a placeholder or has no host.
    #[error(
        "the P2P address {0:?} names no host (fill in the placeholder, or register the URL with \
         `fedgw node add NAME --tessera-url URL --tessera-key KEY`)"
    )]
    NoHost(String),
    /// No imported node has the P2P address's host.
    #[error(
        "the P2P address {0:?} is not on any imported node's host (register it with \
         `fedgw node add NAME --tessera-url URL --tessera-key KEY`)"
    )]
    NoNode(String),
}

/// Puts a Tessera config's own P2P URL and public keys on the imported node at the URL's host.
/// The config's `peer` list is not used: those are other Tessera nodes, often other orgs', and
/// each is registered by the site that runs it.
fn tessera_onto(
    specs: &mut [pb::NodeSpec],
    tessera: &fedgw_proto::tessera::TesseraConfig,
) -> Result<(), TesseraImportError> {
    let own = tessera
        .p2p_url
        .as_deref()
        .ok_or(TesseraImportError::NoP2p)?;
    let host = url_host(own)
        .filter(|h| fedgw_certs::token::validate_endpoint(&format!("{h}:1")).is_ok())
        .ok_or_else(|| TesseraImportError::NoHost(own.to_owned()))?;
    let node = specs
        .iter_mut()
        .find(|s| s.host == host)
        .ok_or_else(|| TesseraImportError::NoNode(own.to_owned()))?;
    node.tessera_url = own.to_owned();
    node.tessera_keys = tessera
        .public_keys
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    Ok(())
}

fn enode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `fedgw nodes`.
pub async fn nodes(dir: AdminDirArg, json: bool) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    let nodes = admin_call!(admin, list_nodes(pb::ListNodesRequest {})).nodes;
    let b64 = base64::engine::general_purpose::STANDARD;
    if json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                let r = n.record.clone().unwrap_or_default();
                serde_json::json!({
                    "org": n.org, "name": n.name, "client": client_name(r.client),
                    "enode": json::text(&enode_hex(&r.enode_id)),
                    "p2p_port": json::number(r.p2p_port), "raft_port": json::number(r.raft_port),
                    "raft_id": json::number(if n.raft_id != 0 { n.raft_id } else { r.raft_id }),
                    "site": json::text(&r.site), "seq": n.seq,
                    "tessera_url": json::text(&r.tessera_url),
                    "tessera_keys": r.tessera_keys.iter().map(|k| b64.encode(k)).collect::<Vec<_>>(),
                    "allowed_orgs": r.allowed_orgs, "roles": r.roles,
                    "local_host": json::text(&n.local_host), "dns_name": n.dns_name,
                    "local_ip": json::ip(&n.local_ip), "local_ports": n.local_ports,
                    "rpc": json::text(&n.local_rpc),
                    "services": r.services.iter().map(|s| serde_json::json!({
                        "name": s.name, "port": s.port,
                    })).collect::<Vec<_>>(),
                    "ipfs_peer_id": json::text(&r.ipfs_peer_id),
                    "tls_cert": (!r.tls_cert_der.is_empty()).then(|| b64.encode(&r.tls_cert_der)),
                    "raft_learner": r.raft_learner,
                    "replicas": n.replicas.iter().map(|r| serde_json::json!({"host": r.host, "up": r.up})).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    outln!(
        "{:<28} {:<10} {:<18} {:<16} ports here",
        "dns name",
        "client",
        "enode",
        "address here"
    )?;
    for n in nodes {
        let r = n.record.unwrap_or_default();
        let id = enode_hex(&r.enode_id);
        let ports: Vec<String> = ordered_ports(&n.local_ports)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let enode = if id.len() < 16 {
            "-".to_owned()
        } else {
            format!("{}…", &id[..16])
        };
        let ip = if n.local_ip.is_empty() {
            "-"
        } else {
            &n.local_ip
        };
        let ports = if ports.is_empty() {
            "-".to_owned()
        } else {
            ports.join(" ")
        };
        outln!(
            "{:<28} {:<10} {:<18} {:<16} {}",
            n.dns_name,
            client_name(r.client),
            enode,
            ip,
            ports
        )?;
        for replica in &n.replicas {
            let health = if replica.up { "up" } else { "down" };
            outln!("  replica {:<40} {health}", replica.host)?;
        }
        if !n.local_rpc.is_empty() {
            outln!("{:<28} rpc {}", "", n.local_rpc)?;
        }
        if n.raft_id != 0 {
            outln!("{:<28} raft id {}", "", n.raft_id)?;
        }
        if !r.services.is_empty() {
            let real: Vec<String> = r
                .services
                .iter()
                .map(|s| format!("{}={}", s.name, s.port))
                .collect();
            outln!("{:<28} services {}", "", real.join(" "))?;
        }
        if !r.ipfs_peer_id.is_empty() {
            outln!("{:<28} ipfs peer {}", "", r.ipfs_peer_id)?;
        }
        if r.raft_learner {
            outln!("{:<28} raft learner (promoted once caught up)", "")?;
        }
    }
    Ok(())
}

/// A node's ports in a fixed order: p2p, raft, tessera, then any others by name.
fn ordered_ports(ports: &std::collections::HashMap<String, u32>) -> Vec<(&str, u32)> {
    const FIRST: [&str; 3] = ["p2p", "raft", "tessera"];
    let rank = |name: &str| FIRST.iter().position(|f| *f == name).unwrap_or(FIRST.len());
    let mut sorted: Vec<(&str, u32)> = ports.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    sorted.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
    sorted
}

/// The Fabric MSP ID an org goes by: its member record's, or the default `<Org>MSP`.
fn msp_id(m: &pb::MemberInfo) -> String {
    if m.fabric_msp_id.is_empty() {
        crate::fabric::default_msp_id(&m.org)
    } else {
        m.fabric_msp_id.clone()
    }
}

/// `fedgw members`.
pub async fn members(dir: AdminDirArg, json: bool) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    let resp = admin_call!(admin, list_members(pb::ListMembersRequest {}));
    let all = resp.members.iter().chain(resp.pending.iter());
    if json {
        let list: Vec<_> = all
            .map(|m| {
                serde_json::json!({
                    "org": m.org, "status": m.status, "admitted_unix": json::number(m.admitted_unix),
                    "approved_by": m.approved_by, "fabric_msp_id": msp_id(m),
                    "gateways": m.gateways.iter().map(|g| serde_json::json!({
                        "site": g.site, "advertise": g.advertise, "outbound_only": g.outbound_only,
                        "replica": g.replica, "replica_index": g.replica_index,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    outln!("{:<10} {:<8} {:<40} approvals", "org", "status", "gateways")?;
    for m in all {
        let gws: Vec<String> = m
            .gateways
            .iter()
            .map(|g| {
                let replica = if g.replica.is_empty() {
                    String::new()
                } else {
                    format!("/{}", g.replica)
                };
                format!(
                    "{}{replica}={}{}",
                    g.site,
                    g.advertise.join(","),
                    if g.outbound_only {
                        " (outbound-only)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        outln!(
            "{:<10} {:<8} {:<40} {}  (Fabric MSP ID {})",
            m.org,
            m.status,
            if gws.is_empty() {
                "-".into()
            } else {
                gws.join(" ")
            },
            if m.approved_by.is_empty() {
                "-".into()
            } else {
                m.approved_by.join(",")
            },
            msp_id(m)
        )?;
    }
    outln!("consensus: {}", resp.consensus)?;
    Ok(())
}

/// `fedgw approve ORG`.
pub async fn approve(org: String, dir: AdminDirArg) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    admin_call!(admin, approve(pb::ApproveRequest { org: org.clone() }), raw);
    outln!("approved {org}")?;
    Ok(())
}

/// `fedgw revoke ORG`.
pub async fn revoke(org: String, dir: AdminDirArg, reason: Option<String>) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    admin
        .client
        .revoke(pb::RevokeRequest {
            org: org.clone(),
            reason: reason.unwrap_or_default(),
        })
        .await
        .map_err(|s| admin.error(s))?;
    outln!("revoked {org}")?;
    Ok(())
}

/// `fedgw render` targets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RenderKind {
    /// GoQuorum static-nodes.json.
    StaticNodes,
    /// GoQuorum permissioned-nodes.json.
    PermissionedNodes,
    /// Besu static-nodes.json (enode URLs without discport or raftport).
    BesuStaticNodes,
    /// Besu permissions_config.toml (nodes-allowlist).
    BesuAllowlist,
    /// Tessera peer list (JSON array of {"url": ...}).
    TesseraPeers,
    /// IPFS Cluster peerstore file (/dns4/NODE.ORG.DOMAIN/tcp/PORT/p2p/PEER-ID per line).
    IpfsClusterPeers,
    /// The start arguments of a GoQuorum node joining the raft cluster with its published raft
    /// id (`render raft-join NODE`).
    RaftJoin,
    /// Fabric common connection profile: every org's peers and orderers at their consortium
    /// names, TLS CA embedded (`--format json|yaml`).
    FabricConnectionProfile,
    /// The Organizations section of Fabric's configtx.yaml.
    FabricConfigtxOrgs,
    /// Fabric etcdraft consenters, with the orderers' TLS certificates beside --out FILE.
    FabricConsenters,
}

/// Where `fedgw render` puts its result.
#[derive(Debug)]
pub struct RenderOutput {
    /// The file to write (atomically, only when its content changes); `None`: stdout.
    pub out: Option<PathBuf>,
    /// `Some(hook)`: keep `out` current until the process is stopped ([`super::watch`]).
    pub watch: Option<Option<String>>,
    /// Print `{"path", "changed"}` after each write to `out`.
    pub json: bool,
}

/// `fedgw render KIND`: renders from the running gateway's view, as `output` says.
pub async fn render(
    kind: RenderKind,
    node: Option<String>,
    args: AdminDirArg,
    client: Option<ClientArg>,
    format: Option<super::fabric_cmds::FormatArg>,
    output: RenderOutput,
) -> Result<(), CliError> {
    let RenderOutput { out, watch, json } = output;
    use super::fabric_cmds::FabricRender;
    let fabric = match kind {
        RenderKind::FabricConnectionProfile => {
            Some(FabricRender::ConnectionProfile(format.unwrap_or_default()))
        }
        RenderKind::FabricConfigtxOrgs => Some(FabricRender::ConfigtxOrgs),
        RenderKind::FabricConsenters => Some(FabricRender::Consenters),
        _ => None,
    };
    if format.is_some() && !matches!(kind, RenderKind::FabricConnectionProfile) {
        return Err(usage(
            "only render fabric-connection-profile takes --format",
        ));
    }
    if let Some(what) = fabric {
        if node.is_some() || client.is_some() || watch.is_some() {
            return Err(usage(
                "render fabric-* takes no NODE, no --client and no --watch",
            ));
        }
        return super::fabric_cmds::render(what, &args, out, json).await;
    }
    match (kind, node) {
        (RenderKind::RaftJoin, _) if watch.is_some() => {
            return Err(usage(
                "render raft-join prints start arguments once; drop --watch",
            ));
        }
        (RenderKind::RaftJoin, Some(node)) => {
            return super::chain_cmds::raft_join(&node, &args).await;
        }
        (RenderKind::RaftJoin, None) => return Err(usage("render raft-join needs a NODE")),
        (_, Some(_)) => return Err(usage("only render raft-join takes a NODE")),
        (_, None) => {}
    }
    let Some(hook) = watch else {
        return render_once(kind, &args, out.as_deref(), client, json)
            .await
            .map(|_| ());
    };
    let Some(out) = out else {
        return Err(usage(
            "render --watch keeps a file current: give it --out FILE",
        ));
    };
    super::watch::run(&args, &out, hook.as_deref(), async || {
        render_once(kind, &args, Some(&out), client, json).await
    })
    .await
}

/// Renders `kind` from the running gateway's nodes once, to `out` (atomically, only when the
/// content changes) or to standard output; returns whether `out` was rewritten.
async fn render_once(
    kind: RenderKind,
    args: &AdminDirArg,
    out: Option<&std::path::Path>,
    client: Option<ClientArg>,
    json: bool,
) -> Result<bool, CliError> {
    let text = render_text(kind, args, client).await?;
    let Some(path) = out else {
        super::write_out(format_args!("{text}"))?;
        return Ok(false);
    };
    let changed = super::write_if_changed(path, text.as_bytes())?;
    if json {
        super::print_written(path, changed)?;
    }
    Ok(changed)
}

/// What `fedgw render KIND` gives now from the running gateway's nodes (the node-list kinds;
/// raft-join and the Fabric kinds are usage errors here).
pub(super) async fn render_text(
    kind: RenderKind,
    args: &AdminDirArg,
    client: Option<ClientArg>,
) -> Result<String, CliError> {
    use fedgw_controlplane::render::{Kind, RenderNode};
    let dir = DataDir::new(args.data_dir.clone());
    let config =
        crate::config::Config::load(&dir.config()).map_err(|e| CliError::new(exit::USAGE, e))?;
    let mut admin = connect(args).await?;
    let nodes = admin_call!(admin, list_nodes(pb::ListNodesRequest {})).nodes;
    let mut render_nodes = Vec::with_capacity(nodes.len());
    for n in &nodes {
        let record = n.record.clone().unwrap_or_default();
        if client.is_some_and(|c| record.client != i32::from(c.to_pb())) {
            continue;
        }
        let node = fedgw_proto::domain::Node::try_from(&record).map_err(|e| {
            CliError::new(
                exit::FAILURE,
                anyhow::anyhow!("node {}/{}: {e}", n.org, n.name),
            )
        })?;
        render_nodes.push(RenderNode::new(&n.org, &n.name, &config.domain, &node));
    }
    let kind = match kind {
        RenderKind::StaticNodes => Kind::StaticNodes,
        RenderKind::PermissionedNodes => Kind::PermissionedNodes,
        RenderKind::BesuStaticNodes => Kind::BesuStaticNodes,
        RenderKind::BesuAllowlist => Kind::BesuAllowlist,
        RenderKind::TesseraPeers => Kind::TesseraPeers,
        RenderKind::IpfsClusterPeers => Kind::IpfsClusterPeers,
        RenderKind::RaftJoin => return Err(usage("render raft-join needs a NODE")),
        RenderKind::FabricConnectionProfile
        | RenderKind::FabricConfigtxOrgs
        | RenderKind::FabricConsenters => {
            return Err(usage("render fabric-* is rendered from the Fabric model"));
        }
    };
    Ok(kind.render(&render_nodes))
}

#[cfg(test)]
mod tests {
    use super::ordered_ports;

    #[test]
    fn ports_show_p2p_raft_tessera_then_others_by_name() {
        let ports = [
            ("tessera", 3),
            ("grpc", 5),
            ("raft", 2),
            ("admin", 4),
            ("p2p", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(
            ordered_ports(&ports),
            [
                ("p2p", 1),
                ("raft", 2),
                ("tessera", 3),
                ("admin", 4),
                ("grpc", 5)
            ]
        );
    }
}
