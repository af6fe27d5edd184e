//! Commands that talk to the running gateway over its admin socket: nodes, members, status,
//! approve, revoke.

use std::path::PathBuf;

use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use fedgw_proto::enode::{EnodeUrl, Host};
use fedgw_proto::tessera::{TesseraKey, parse_tessera_config};
use fedgw_proto::v1 as pb;
use pb::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{CliError, DataDirArg, exit, usage};
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
}

impl ClientArg {
    fn to_pb(self) -> pb::ClientKind {
        match self {
            ClientArg::Goquorum => pb::ClientKind::Goquorum,
            ClientArg::Besu => pb::ClientKind::Besu,
            ClientArg::Tessera => pb::ClientKind::Tessera,
            ClientArg::FabricPeer => pb::ClientKind::FabricPeer,
            ClientArg::FabricOrderer => pb::ClientKind::FabricOrderer,
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
        dir: DataDirArg,
    },
}

/// `fedgw node add`.
#[derive(Debug, Args)]
pub struct NodeAddArgs {
    /// The node name (a DNS label): the node becomes <name>.<org>.<domain>.
    name: String,
    #[command(flatten)]
    dir: DataDirArg,
    /// The node's enode URL (GoQuorum/geth format); gives its key, host, p2p and raft ports.
    #[arg(long, value_name = "URL")]
    enode: Option<String>,
    /// The client software.
    #[arg(long, value_enum, default_value = "goquorum")]
    client: ClientArg,
    /// The node's real address at this site [default: the enode URL's host].
    #[arg(long)]
    host: Option<String>,
    /// The raft id.
    #[arg(long)]
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
}

/// `fedgw node import`.
#[derive(Debug, Args)]
pub struct NodeImportArgs {
    /// A static-nodes.json or permissioned-nodes.json file (a JSON array of enode URLs).
    file: PathBuf,
    #[command(flatten)]
    dir: DataDirArg,
    /// Node names, comma-separated, in file order [default: node1..nodeN].
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// The client software of the imported nodes.
    #[arg(long, value_enum, default_value = "goquorum")]
    client: ClientArg,
    /// A Tessera config: a peer whose host is an imported node's host becomes that node's
    /// Tessera URL; other peers are registered as Tessera nodes tm1..tmN.
    #[arg(long, value_name = "FILE")]
    tessera_config: Option<PathBuf>,
}

async fn connect(dir: &DataDir) -> Result<AdminClient<Channel>, CliError> {
    crate::admin::connect_cli(&dir.admin_socket())
        .await
        .map_err(|e| {
            CliError::new(
                exit::FAILURE,
                anyhow::anyhow!(
                    "cannot reach the gateway's admin socket {} (is `fedgw run` up?): {e}",
                    dir.admin_socket().display()
                ),
            )
        })
}

fn status_err(s: tonic::Status) -> CliError {
    match s.code() {
        // tonic's answer when the call's timeout expires
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => CliError::new(
            exit::FAILURE,
            anyhow::anyhow!(
                "the gateway did not answer on its admin socket within {} s ({})",
                crate::admin::CLI_CALL_TIMEOUT.as_secs(),
                s.message()
            ),
        ),
        tonic::Code::InvalidArgument
        | tonic::Code::AlreadyExists
        | tonic::Code::NotFound
        | tonic::Code::FailedPrecondition => usage(s.message()),
        _ => CliError::new(exit::FAILURE, anyhow::anyhow!("{}", s.message())),
    }
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
            if let Some(h) = &a.host {
                spec.host = h.clone();
            }
            if let Some(url) = &a.tessera_url {
                if spec.host.is_empty() {
                    spec.host = url_host(url).unwrap_or_default();
                }
                spec.tessera_url = url.clone();
            }
            spec.raft_id = a.raft_id.unwrap_or(0);
            spec.tessera_keys = tessera_keys(&a.tessera_key)?;
            spec.roles = a.role.clone();
            spec.allowed_orgs = a.allowed_org.clone();
            let dir = DataDir::new(a.dir.data_dir);
            let info = connect(&dir)
                .await?
                .add_node(pb::AddNodeRequest { node: Some(spec) })
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "node {}/{} registered (seq {})",
                info.org, info.name, info.seq
            );
            Ok(())
        }
        NodeCommand::Import(a) => import(a).await,
        NodeCommand::Rm { name, dir } => {
            let dir = DataDir::new(dir.data_dir);
            connect(&dir)
                .await?
                .remove_node(pb::RemoveNodeRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            println!("node {name} removed");
            Ok(())
        }
    }
}

async fn import(a: NodeImportArgs) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| usage(format!("reading {}: {e}", a.file.display())))?;
    let urls = fedgw_proto::enode::parse_static_nodes(&text)
        .map_err(|e| usage(format!("{}: {e}", a.file.display())))?;
    if !a.names.is_empty() && a.names.len() != urls.len() {
        return Err(usage(format!(
            "--names lists {} names for {} nodes",
            a.names.len(),
            urls.len()
        )));
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
            spec_from_enode(&name, url, a.client)
        })
        .collect();
    if let Some(path) = &a.tessera_config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
        let tessera =
            parse_tessera_config(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        let mut extra = 0;
        for peer in &tessera.peers {
            let Some(host) = url_host(peer) else {
                return Err(usage(format!(
                    "{}: peer URL {peer:?} has no host",
                    path.display()
                )));
            };
            match specs.iter_mut().find(|s| s.host == host) {
                Some(s) => s.tessera_url = peer.clone(),
                None => {
                    extra += 1;
                    specs.push(pb::NodeSpec {
                        name: format!("tm{extra}"),
                        client: pb::ClientKind::Tessera.into(),
                        host,
                        tessera_url: peer.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        // the config's own keys belong to the node serving its P2P address
        if let Some(own) = tessera.p2p_url.as_deref().and_then(url_host)
            && let Some(s) = specs.iter_mut().find(|s| s.host == own)
        {
            s.tessera_keys = tessera
                .public_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect();
        }
    }
    let dir = DataDir::new(a.dir.data_dir);
    let mut client = connect(&dir).await?;
    let mut failed = 0;
    for spec in specs {
        let name = spec.name.clone();
        match client
            .add_node(pb::AddNodeRequest { node: Some(spec) })
            .await
        {
            Ok(info) => println!("node {}/{} registered", info.get_ref().org, name),
            Err(s) => {
                failed += 1;
                eprintln!("node {name}: {}", s.message());
            }
        }
    }
    if failed > 0 {
        return Err(usage(format!("{failed} node(s) refused")));
    }
    Ok(())
}

fn enode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `fedgw nodes`.
pub async fn nodes(dir: DataDirArg, json: bool) -> Result<(), CliError> {
    let dir = DataDir::new(dir.data_dir);
    let nodes = connect(&dir)
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .nodes;
    let b64 = base64::engine::general_purpose::STANDARD;
    if json {
        let list: Vec<_> = nodes
            .iter()
            .map(|n| {
                let r = n.record.clone().unwrap_or_default();
                serde_json::json!({
                    "org": n.org, "name": n.name, "client": client_name(r.client),
                    "enode": enode_hex(&r.enode_id), "p2p_port": r.p2p_port, "raft_port": r.raft_port,
                    "raft_id": r.raft_id, "site": r.site, "seq": n.seq,
                    "tessera_url": r.tessera_url,
                    "tessera_keys": r.tessera_keys.iter().map(|k| b64.encode(k)).collect::<Vec<_>>(),
                    "allowed_orgs": r.allowed_orgs, "roles": r.roles,
                    "local_host": n.local_host, "dns_name": n.dns_name,
                    "local_ip": n.local_ip, "local_ports": n.local_ports,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "{:<28} {:<10} {:<18} {:<16} ports here",
        "dns name", "client", "enode", "address here"
    );
    for n in nodes {
        let r = n.record.unwrap_or_default();
        let id = enode_hex(&r.enode_id);
        let ports: Vec<String> = n
            .local_ports
            .iter()
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
        println!(
            "{:<28} {:<10} {:<18} {:<16} {}",
            n.dns_name,
            client_name(r.client),
            enode,
            ip,
            ports
        );
    }
    Ok(())
}

/// `fedgw members`.
pub async fn members(dir: DataDirArg, json: bool) -> Result<(), CliError> {
    let dir = DataDir::new(dir.data_dir);
    let resp = connect(&dir)
        .await?
        .list_members(pb::ListMembersRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let all = resp.members.iter().chain(resp.pending.iter());
    if json {
        let list: Vec<_> = all
            .map(|m| {
                serde_json::json!({
                    "org": m.org, "status": m.status, "admitted_unix": m.admitted_unix,
                    "approved_by": m.approved_by,
                    "gateways": m.gateways.iter().map(|g| serde_json::json!({
                        "site": g.site, "advertise": g.advertise, "outbound_only": g.outbound_only,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!("{:<10} {:<8} {:<40} approvals", "org", "status", "gateways");
    for m in all {
        let gws: Vec<String> = m
            .gateways
            .iter()
            .map(|g| {
                format!(
                    "{}={}{}",
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
        println!(
            "{:<10} {:<8} {:<40} {}",
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
            }
        );
    }
    Ok(())
}

/// `fedgw status`.
pub async fn status(dir: DataDirArg, json: bool) -> Result<(), CliError> {
    let dir = DataDir::new(dir.data_dir);
    let s = connect(&dir)
        .await?
        .status(pb::StatusRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    if json {
        let peers: Vec<_> = s
            .peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "org": p.org, "site": p.site, "state": p.state, "direction": p.direction,
                    "last_seen_unix_ms": p.last_seen_unix_ms, "last_error": p.last_error,
                    "connected_since_unix_ms": p.connected_since_unix_ms,
                    "records_in": p.records_in, "records_out": p.records_out,
                })
            })
            .collect();
        let tunnels: Vec<_> = s
            .tunnels
            .iter()
            .map(|t| {
                serde_json::json!({
                    "org": t.org, "site": t.site, "transport": t.transport, "rtt_ms": t.rtt_ms,
                    "path_mtu": t.path_mtu, "lost_packets": t.lost_packets,
                })
            })
            .collect();
        let v = serde_json::json!({
            "org": s.org, "site": s.site, "digest": s.digest, "records": s.records,
            "rejected_records": s.rejected_records, "equivocations": s.equivocations, "peers": peers,
            "tunnels": tunnels, "listeners": s.listeners, "listener_failures": s.listener_failures,
            "active_streams": s.active_streams, "refused_streams": s.refused_streams,
            "stalled_connections": s.stalled_connections,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "gateway {}/{}: {} records, digest {}",
        s.org,
        s.site,
        s.records,
        &s.digest[..16.min(s.digest.len())]
    );
    println!(
        "rejected records: {}, equivocations: {}",
        s.rejected_records, s.equivocations
    );
    println!(
        "{:<16} {:<11} {:<9} {:>8} {:>8}  last error",
        "peer", "state", "direction", "in", "out"
    );
    for p in s.peers {
        println!(
            "{:<16} {:<11} {:<9} {:>8} {:>8}  {}",
            format!("{}/{}", p.org, p.site),
            p.state,
            p.direction,
            p.records_in,
            p.records_out,
            if p.last_error.is_empty() {
                "-"
            } else {
                &p.last_error
            }
        );
    }
    println!(
        "\ndata plane: {} local listeners{}, {} proxied connections open",
        s.listeners,
        if s.listener_failures {
            " (some could not be bound; retrying)"
        } else {
            ""
        },
        s.active_streams
    );
    println!(
        "{:<16} {:<9} {:>10} {:>8} {:>8}",
        "tunnel to", "transport", "rtt", "mtu", "lost"
    );
    for t in &s.tunnels {
        let (rtt, mtu, lost) = if t.transport == "quic" {
            (
                format!("{:.2} ms", t.rtt_ms),
                t.path_mtu.to_string(),
                t.lost_packets.to_string(),
            )
        } else {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        };
        println!(
            "{:<16} {:<9} {:>10} {:>8} {:>8}",
            format!("{}/{}", t.org, t.site),
            t.transport,
            rtt,
            mtu,
            lost
        );
    }
    for (title, counts) in [
        ("refused streams", &s.refused_streams),
        (
            "connections reset for a stalled reader",
            &s.stalled_connections,
        ),
    ] {
        if !counts.is_empty() {
            println!("{title}: {}", sorted_counts(counts));
        }
    }
    Ok(())
}

/// `counts` as `key n, key n` in key order: `{"b": 2, "a": 1}` → `a 1, b 2`.
fn sorted_counts(counts: &std::collections::HashMap<String, u64>) -> String {
    let mut sorted: Vec<_> = counts.iter().collect();
    sorted.sort();
    let shown: Vec<String> = sorted.iter().map(|(k, v)| format!("{k} {v}")).collect();
    shown.join(", ")
}

/// `fedgw approve ORG`.
pub async fn approve(org: String, dir: DataDirArg) -> Result<(), CliError> {
    let dir = DataDir::new(dir.data_dir);
    connect(&dir)
        .await?
        .approve(pb::ApproveRequest { org: org.clone() })
        .await
        .map_err(status_err)?;
    println!("approved {org}");
    Ok(())
}

/// `fedgw revoke ORG`.
pub async fn revoke(org: String, dir: DataDirArg, reason: Option<String>) -> Result<(), CliError> {
    let dir = DataDir::new(dir.data_dir);
    connect(&dir)
        .await?
        .revoke(pb::RevokeRequest {
            org: org.clone(),
            reason: reason.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?;
    println!("revoked {org}");
    Ok(())
}

/// `fedgw render` targets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RenderKind {
    /// GoQuorum static-nodes.json.
    StaticNodes,
    /// GoQuorum permissioned-nodes.json.
    PermissionedNodes,
    /// Besu permissions_config.toml (nodes-allowlist).
    BesuAllowlist,
    /// Tessera peer list (JSON array of {"url": ...}).
    TesseraPeers,
}

/// `fedgw render KIND`: renders from the running gateway's view; with `out`, writes the file
/// atomically and only when its content changes.
pub async fn render(
    kind: RenderKind,
    dir: DataDirArg,
    out: Option<PathBuf>,
) -> Result<(), CliError> {
    use fedgw_controlplane::render::{Kind, RenderNode};
    let dir = DataDir::new(dir.data_dir);
    let config =
        crate::config::Config::load(&dir.config()).map_err(|e| CliError::new(exit::USAGE, e))?;
    let nodes = connect(&dir)
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(status_err)?
        .into_inner()
        .nodes;
    let mut render_nodes = Vec::with_capacity(nodes.len());
    for n in &nodes {
        let record = n.record.clone().unwrap_or_default();
        render_nodes.push(
            RenderNode::from_record(&n.org, &n.name, &config.domain, &record)
                .map_err(|e| CliError::new(exit::FAILURE, e))?,
        );
    }
    let kind = match kind {
        RenderKind::StaticNodes => Kind::StaticNodes,
        RenderKind::PermissionedNodes => Kind::PermissionedNodes,
        RenderKind::BesuAllowlist => Kind::BesuAllowlist,
        RenderKind::TesseraPeers => Kind::TesseraPeers,
    };
    let text = kind.render(&render_nodes);
    match out {
        None => print!("{text}"),
        Some(path) => {
            if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
                eprintln!("{} unchanged", path.display());
                return Ok(());
            }
            crate::datadir::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| {
                CliError::new(
                    exit::FAILURE,
                    anyhow::anyhow!("writing {}: {e}", path.display()),
                )
            })?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sorted_counts;

    #[test]
    fn counts_show_in_key_order() {
        let counts = [("unknown_node", 2), ("bad_header", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(sorted_counts(&counts), "bad_header 3, unknown_node 2");
        assert_eq!(sorted_counts(&Default::default()), "");
    }
}
