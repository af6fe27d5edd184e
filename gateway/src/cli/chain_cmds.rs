//! `fedgw chain status` and `fedgw render raft-join NODE`: the chain behind the gateways as the
//! running gateway sees it.

use clap::Subcommand;
use fedgw_proto::v1 as pb;

use super::admin_conn::connect;
use super::{AdminDirArg, CliError, exit, usage};
use crate::datadir::DataDir;

/// `fedgw chain ...`.
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Consensus, each local node's chain view over its RPC endpoint (raft role and id, block
    /// height, peers, or the RPC error), and the raft changes this site still has to make.
    Status {
        #[command(flatten)]
        dir: AdminDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `fedgw chain` command.
pub async fn chain(command: ChainCommand) -> Result<(), CliError> {
    match command {
        ChainCommand::Status { dir, json } => status(dir, json).await,
    }
}

fn status_json(s: &pb::ChainStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "consensus": s.consensus,
        "acting": s.acting,
        "adders": s.adders,
        "last_error": s.last_error,
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "name": n.name, "rpc": n.rpc_url, "raft_role": n.raft_role, "raft_id": n.raft_id,
            "block_number": n.block_number, "peer_count": n.peer_count, "error": n.error,
        })).collect::<Vec<_>>(),
        "pending": s.pending.iter().map(|p| serde_json::json!({
            "node": p.node, "action": p.action, "last_error": p.last_error,
            "failures": p.failures, "next_retry_ms": p.next_retry_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The text form of `fedgw chain status`.
fn status_text(s: &pb::ChainStatusResponse) -> String {
    let mut out = format!("consensus: {}\n", s.consensus);
    if s.consensus == "raft" {
        let adders = if s.adders.is_empty() {
            "none".to_owned()
        } else {
            s.adders.join(", ")
        };
        let acting = if s.acting { " (this site acts)" } else { "" };
        out.push_str(&format!("raft adders: {adders}{acting}\n"));
        if !s.last_error.is_empty() {
            out.push_str(&format!("cluster read failed: {}\n", s.last_error));
        }
    }
    if s.nodes.is_empty() {
        out.push_str("no local node with an RPC endpoint\n");
    }
    for n in &s.nodes {
        let mut line = format!("{} {}", n.name, n.rpc_url);
        if !n.raft_role.is_empty() {
            line.push_str(&format!(" role {}", n.raft_role));
        }
        if n.raft_id != 0 {
            line.push_str(&format!(" raft id {}", n.raft_id));
        }
        line.push_str(&format!(" block {} peers {}", n.block_number, n.peer_count));
        if !n.error.is_empty() {
            line.push_str(&format!(" error: {}", n.error));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for p in &s.pending {
        let mut line = format!("pending {} {}", p.action, p.node);
        if p.failures > 0 {
            line.push_str(&format!(
                ", {} failure(s), next try in {} s: {}",
                p.failures,
                p.next_retry_ms.div_ceil(1000),
                p.last_error
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

async fn status(dir: AdminDirArg, json: bool) -> Result<(), CliError> {
    let mut admin = connect(&dir).await?;
    let s = admin_call!(admin, chain_status(pb::ChainStatusRequest {}));
    if json {
        outln!("{}", status_json(&s))?;
    } else {
        super::write_out(format_args!("{}", status_text(&s)))?;
    }
    Ok(())
}

/// `fedgw render raft-join NODE`: `--raftjoinexisting ID --raftdnsenable` with the raft id
/// published for NODE (`NAME` of this org, or `ORG/NAME`); fails while none is published.
pub async fn raft_join(node: &str, args: &AdminDirArg) -> Result<(), CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    let config =
        crate::config::Config::load(&dir.config()).map_err(|e| CliError::new(exit::USAGE, e))?;
    let (org, name) = node.split_once('/').unwrap_or((&config.org, node));
    let mut admin = connect(args).await?;
    let nodes = admin_call!(admin, list_nodes(pb::ListNodesRequest {})).nodes;
    let Some(n) = nodes.iter().find(|n| n.org == org && n.name == name) else {
        return Err(usage(format!(
            "no node {org}/{name} in this gateway's view"
        )));
    };
    if n.raft_id == 0 {
        return Err(CliError::new(
            exit::FAILURE,
            anyhow::anyhow!(
                "no raft id published for {org}/{name} yet: a site with a raft member and an RPC endpoint adds it (see `fedgw chain status`)"
            ),
        ));
    }
    let id = u16::try_from(n.raft_id).map_err(|_| {
        CliError::new(
            exit::FAILURE,
            anyhow::anyhow!("raft id {} out of range", n.raft_id),
        )
    })?;
    outln!("{}", crate::chain::raft::join_args(id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_shows_nodes_errors_and_pending_retries() {
        let s = pb::ChainStatusResponse {
            consensus: "raft".into(),
            nodes: vec![
                pb::ChainNodeStatus {
                    name: "n1".into(),
                    rpc_url: "http://10.0.0.1:8545/".into(),
                    raft_role: "minter".into(),
                    raft_id: 1,
                    block_number: 42,
                    peer_count: 3,
                    error: String::new(),
                },
                pb::ChainNodeStatus {
                    name: "n2".into(),
                    rpc_url: "http://10.0.0.2:8545/".into(),
                    error: "cannot connect to the RPC endpoint".into(),
                    ..Default::default()
                },
            ],
            pending: vec![pb::RaftChange {
                node: "org3/n9".into(),
                action: "add".into(),
                last_error: "RPC call timed out after 5s".into(),
                failures: 2,
                next_retry_ms: 1500,
            }],
            adders: vec!["org1/a".into(), "org2/b".into()],
            acting: true,
            last_error: String::new(),
        };
        assert_eq!(
            status_text(&s),
            "consensus: raft\n\
             raft adders: org1/a, org2/b (this site acts)\n\
             n1 http://10.0.0.1:8545/ role minter raft id 1 block 42 peers 3\n\
             n2 http://10.0.0.2:8545/ block 0 peers 0 error: cannot connect to the RPC endpoint\n\
             pending add org3/n9, 2 failure(s), next try in 2 s: RPC call timed out after 5s\n"
        );
        let j = status_json(&s);
        assert_eq!(j["pending"][0]["failures"], 2);
        assert_eq!(j["nodes"][1]["error"], "cannot connect to the RPC endpoint");
    }
}
