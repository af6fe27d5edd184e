//! `fedgw chain status`, `fedgw chain validator add|remove|withdraw ORG/NODE`, `fedgw chain
//! approve ORG/NODE` and `fedgw render raft-join NODE`: the chain behind the gateways as the
//! running gateway sees it, and the QBFT/IBFT validator proposals it takes part in.

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
    /// QBFT/IBFT: propose adding a node to the validator set, or removing it, or withdraw the
    /// proposal. Once enough member orgs approve it (the admission policy), every site's
    /// validator nodes vote for the change.
    Validator {
        #[command(subcommand)]
        command: ValidatorCommand,
    },
    /// QBFT/IBFT: this org's approval of the open validator proposal about ORG/NODE.
    Approve {
        /// The node, ORG/NODE (or NODE of this org).
        node: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
}

/// `fedgw chain validator ...`.
#[derive(Debug, Subcommand)]
pub enum ValidatorCommand {
    /// Proposes making ORG/NODE a validator (this org's proposal counts as its approval).
    Add {
        /// The node, ORG/NODE (or NODE of this org).
        node: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
    /// Proposes removing ORG/NODE from the validator set.
    Remove {
        /// The node, ORG/NODE (or NODE of this org).
        node: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
    /// Withdraws the open proposal about ORG/NODE; the sites discard the votes their nodes hold.
    Withdraw {
        /// The node, ORG/NODE (or NODE of this org).
        node: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
}

/// Runs a `fedgw chain` command.
pub async fn chain(command: ChainCommand) -> Result<(), CliError> {
    match command {
        ChainCommand::Status { dir, json } => status(dir, json).await,
        ChainCommand::Approve { node, dir } => approve(&node, &dir).await,
        ChainCommand::Validator { command } => match command {
            ValidatorCommand::Add { node, dir } => propose(&node, true, &dir).await,
            ValidatorCommand::Remove { node, dir } => propose(&node, false, &dir).await,
            ValidatorCommand::Withdraw { node, dir } => withdraw(&node, &dir).await,
        },
    }
}

/// `ORG/NODE`, or `NODE` of this gateway's org (read from its config).
fn node_arg(node: &str, args: &AdminDirArg) -> Result<(String, String), CliError> {
    if let Some((org, name)) = node.split_once('/') {
        return Ok((org.to_owned(), name.to_owned()));
    }
    let dir = DataDir::new(args.data_dir.clone());
    let config =
        crate::config::Config::load(&dir.config()).map_err(|e| CliError::new(exit::USAGE, e))?;
    Ok((config.org, node.to_owned()))
}

async fn propose(node: &str, add: bool, dir: &AdminDirArg) -> Result<(), CliError> {
    let (org, name) = node_arg(node, dir)?;
    let mut admin = connect(dir).await?;
    let r = admin_call!(
        admin,
        propose_validator(pb::ProposeValidatorRequest {
            org: org.clone(),
            name: name.clone(),
            add,
        })
    );
    let what = if add { "add" } else { "remove" };
    outln!(
        "proposed to {what} {org}/{name} as a validator (proposal {}); it needs {} approval(s): \
         each member org runs `fedgw chain approve {org}/{name}`",
        r.seq,
        r.needed
    )?;
    Ok(())
}

async fn approve(node: &str, dir: &AdminDirArg) -> Result<(), CliError> {
    let (org, name) = node_arg(node, dir)?;
    let mut admin = connect(dir).await?;
    let r = admin_call!(
        admin,
        approve_validator(pb::ApproveValidatorRequest {
            org: org.clone(),
            name: name.clone(),
        })
    );
    outln!(
        "approved the validator proposal about {org}/{name}: {} of {} approval(s)",
        r.approvals,
        r.needed
    )?;
    Ok(())
}

async fn withdraw(node: &str, dir: &AdminDirArg) -> Result<(), CliError> {
    let (org, name) = node_arg(node, dir)?;
    let mut admin = connect(dir).await?;
    admin_call!(
        admin,
        withdraw_validator(pb::WithdrawValidatorRequest {
            org: org.clone(),
            name: name.clone(),
        })
    );
    outln!("withdrew the validator proposal about {org}/{name}")?;
    Ok(())
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
            "validator": n.validator, "address": n.address,
        })).collect::<Vec<_>>(),
        "proposals": s.proposals.iter().map(|p| serde_json::json!({
            "node": p.node, "address": p.address, "add": p.add, "proposer": p.proposer,
            "seq": p.seq, "approvals": p.approvals, "needed": p.needed, "progress": p.progress,
            "voted_by": p.voted_by,
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
        if !n.validator.is_empty() {
            line.push_str(&format!(" validator: {} ({})", n.validator, n.address));
        }
        if !n.error.is_empty() {
            line.push_str(&format!(" error: {}", n.error));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for p in &s.proposals {
        let what = if p.add { "add" } else { "remove" };
        let mut line = format!(
            "validator {what} {} {} by {}: {} of {} approval(s) ({}), {}",
            p.node,
            p.address,
            p.proposer,
            p.approvals.len(),
            p.needed,
            p.approvals.join(", "),
            p.progress
        );
        if !p.voted_by.is_empty() {
            line.push_str(&format!("; voted here by {}", p.voted_by.join(", ")));
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
                    ..Default::default()
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
            proposals: Vec::new(),
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

    #[test]
    fn status_text_shows_validators_and_proposals() {
        let s = pb::ChainStatusResponse {
            consensus: "qbft".into(),
            nodes: vec![pb::ChainNodeStatus {
                name: "v1".into(),
                rpc_url: "http://10.0.0.1:8545/".into(),
                block_number: 9,
                peer_count: 2,
                validator: "yes".into(),
                address: "0x93917cadbace5dfce132b991732c6cda9bcc5b8a".into(),
                ..Default::default()
            }],
            proposals: vec![pb::ValidatorProposalStatus {
                node: "org3/v9".into(),
                address: "0x27a97c9aaf04f18f3014c32e036dd0ac76da5f18".into(),
                add: true,
                proposer: "org3".into(),
                seq: 5,
                approvals: vec!["org1".into(), "org3".into()],
                needed: 2,
                progress: "voting".into(),
                voted_by: vec!["v1".into()],
            }],
            ..Default::default()
        };
        assert_eq!(
            status_text(&s),
            "consensus: qbft\n\
             v1 http://10.0.0.1:8545/ block 9 peers 2 validator: yes (0x93917cadbace5dfce132b991732c6cda9bcc5b8a)\n\
             validator add org3/v9 0x27a97c9aaf04f18f3014c32e036dd0ac76da5f18 by org3: 2 of 2 approval(s) (org1, org3), voting; voted here by v1\n"
        );
        let j = status_json(&s);
        assert_eq!(j["proposals"][0]["progress"], "voting");
        assert_eq!(j["nodes"][0]["validator"], "yes");
    }
}
