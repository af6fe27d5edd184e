//! `fedgw node import` of a node file: a JSON array of node objects, for nodes without an
//! enode URL (Fabric peers and orderers, IPFS nodes), beside the static-nodes.json form:
//!
//! ```json
//! [{"name": "peer0", "client": "fabric-peer", "host": "10.0.0.7",
//!   "services": {"peer": 7051, "chaincode": 7052}, "allowed_orgs": ["org2"]},
//!  {"name": "ipfs0", "client": "ipfs", "host": "10.0.0.9", "services": {"cluster": 9096},
//!   "ipfs_peer_id": "12D3KooW..."},
//!  {"name": "orderer0", "client": "fabric-orderer", "host": "10.0.0.8",
//!   "services": {"orderer": 7050}, "tls_cert": "orderer0-tls.pem"},
//!  {"name": "peer1", "client": "fabric-peer", "hosts": ["10.0.0.10", "10.0.0.11"],
//!   "services": {"peer": 7051}}]
//! ```
//!
//! Unknown keys are refused; `tls_cert` is a PEM or DER file relative to the node file's folder.
//! A node has `host` (one address) or `hosts` (its replicas' addresses, the first the node's
//! own, as `fedgw node add --host A --host B`), not both. Each value is checked as `fedgw node
//! add` checks its option.

use std::collections::BTreeMap;
use std::path::Path;

use clap::ValueEnum;
use fedgw_proto::v1 as pb;
use serde::Deserialize;

use super::admin_cmds::ClientArg;
use super::service_args;

/// One node of a node file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    name: String,
    client: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    services: BTreeMap<String, u32>,
    #[serde(default)]
    ipfs_peer_id: Option<String>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    allowed_orgs: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// Whether `text` is a node file (a JSON array of objects) rather than a list of enode URLs.
pub fn is_node_file(text: &str) -> bool {
    text.trim_start().starts_with('[') && text.trim_start()[1..].trim_start().starts_with('{')
}

/// The node specs of a node file read from `path`; errors name the entry (1-based) and say
/// what is wrong.
pub fn specs(text: &str, path: &Path) -> Result<Vec<pb::NodeSpec>, String> {
    let nodes: Vec<FileNode> =
        serde_json::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut names = std::collections::HashSet::new();
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let at = |e: String| format!("{} entry {} ({}): {e}", path.display(), i + 1, n.name);
            if !names.insert(n.name.clone()) {
                return Err(at("the name is listed twice".into()));
            }
            let client = ClientArg::from_str(&n.client, false).map_err(|_| {
                at(format!(
                    "client {:?} is not goquorum, besu, tessera, fabric-peer, fabric-orderer or ipfs",
                    n.client
                ))
            })?;
            let services: Vec<String> = n
                .services
                .iter()
                .map(|(name, port)| format!("{name}={port}"))
                .collect();
            let (host, replica_hosts) = match (&n.host, n.hosts.split_first()) {
                (Some(host), None) => (host.clone(), vec![]),
                (None, Some((first, more))) => (first.clone(), more.to_vec()),
                (Some(_), Some(_)) => return Err(at("give host or hosts, not both".into())),
                (None, None) => return Err(at("no address: give host or hosts".into())),
            };
            let mut spec = pb::NodeSpec {
                name: n.name.clone(),
                client: client.to_pb().into(),
                host,
                replica_hosts,
                services: service_args::services(&services).map_err(at)?,
                allowed_orgs: n.allowed_orgs.clone(),
                roles: n.roles.clone(),
                ..Default::default()
            };
            if let Some(id) = &n.ipfs_peer_id {
                spec.ipfs_peer_id = service_args::ipfs_peer_id(id).map_err(at)?;
            }
            if let Some(file) = &n.tls_cert {
                spec.tls_cert_der = service_args::tls_cert(&base.join(file)).map_err(at)?;
            }
            Ok(spec)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_file_gives_specs_and_names_the_bad_entry() {
        let text = r#"[
          {"name": "peer0", "client": "fabric-peer", "host": "10.0.0.7",
           "services": {"peer": 7051}, "allowed_orgs": ["org2"]},
          {"name": "ipfs0", "client": "ipfs", "host": "10.0.0.9", "services": {"cluster": 9096},
           "ipfs_peer_id": "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"}
        ]"#;
        assert!(is_node_file(text));
        assert!(!is_node_file(r#"["enode://..."]"#));
        let s = specs(text, Path::new("nodes.json")).expect("valid");
        assert_eq!(s[0].client, i32::from(pb::ClientKind::FabricPeer));
        assert_eq!(s[0].services[0].port, 7051);
        assert_eq!(s[1].client, i32::from(pb::ClientKind::Ipfs));
        assert!(s[1].ipfs_peer_id.starts_with("12D3KooW"));

        let bad =
            r#"[{"name": "p", "client": "fabric-peer", "host": "h", "services": {"p2p": 1}}]"#;
        let e = specs(bad, Path::new("nodes.json")).expect_err("reserved name");
        assert!(
            e.starts_with("nodes.json entry 1 (p): --service p2p=1"),
            "{e}"
        );
        let unknown = r#"[{"name": "p", "client": "fabric-peer", "host": "h", "port": 1}]"#;
        assert!(specs(unknown, Path::new("n.json")).is_err());
        let client = r#"[{"name": "p", "client": "fabric", "host": "h"}]"#;
        let e = specs(client, Path::new("n.json")).expect_err("client");
        assert!(e.contains("not goquorum"), "{e}");
    }

    #[test]
    fn hosts_list_a_nodes_replicas_and_exclude_host() {
        let text = r#"[{"name": "tm", "client": "tessera", "hosts": ["10.0.0.7", "10.0.0.8"],
                        "services": {"tm": 9000}}]"#;
        let s = specs(text, Path::new("n.json")).expect("valid");
        assert_eq!(s[0].host, "10.0.0.7");
        assert_eq!(s[0].replica_hosts, ["10.0.0.8"]);
        for (bad, why) in [
            (
                r#"[{"name": "p", "client": "ipfs", "host": "a", "hosts": ["b"]}]"#,
                "not both",
            ),
            (r#"[{"name": "p", "client": "ipfs"}]"#, "no address"),
            (
                r#"[{"name": "p", "client": "ipfs", "hosts": []}]"#,
                "no address",
            ),
        ] {
            let e = specs(bad, Path::new("n.json")).expect_err(bad);
            assert!(
                e.starts_with("n.json entry 1 (p): ") && e.contains(why),
                "{e}"
            );
        }
    }
}
