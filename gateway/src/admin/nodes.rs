//! The admin calls about nodes: register (one or a batch), remove, list, and remote nodes'
//! Service addresses. A node spec becomes the [`Node`] this site publishes here, checked once.

use std::sync::Arc;

use fedgw_proto::v1 as pb;
use pb::record_body::Body;
use tonic::{Request, Response, Status};

use super::members::publish_status;
use super::service::AdminService;
use crate::membership::{Node, SignAs};
use crate::net::check_host;
use crate::store::Store;

/// Runs `f` on the store off the async threads; a failed task or store call is an internal
/// error.
async fn on_store<T, E>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))
}

/// Most nodes one `AddNodes` request may carry (one sync batch).
pub const MAX_ADD_NODES: usize = crate::membership::sync::MAX_BATCH_RECORDS;

/// What `AddNode` answers for a node registered here.
fn registered(org: &str, domain: &str, spec: pb::NodeSpec, node: &Node, seq: u64) -> pb::NodeInfo {
    let replicas = replica_infos(&spec.host, &spec.replica_hosts, &Default::default());
    pb::NodeInfo {
        dns_name: format!("{}.{org}.{domain}", spec.name),
        local_ip: spec.host.clone(),
        local_ports: node
            .ports()
            .into_iter()
            .map(|(k, v)| (k, u32::from(v)))
            .collect(),
        org: org.to_owned(),
        name: spec.name,
        record: Some(pb::NodeRecord {
            tessera_url: spec.tessera_url,
            ..pb::NodeRecord::from(node)
        }),
        seq,
        local_host: spec.host,
        service_ip: String::new(),
        replicas,
        local_rpc: spec.rpc_url,
        raft_id: 0,
    }
}

/// The addresses of a node with replicas (`host`, then `replicas`) and each one's health as
/// the far end holds it (`up`: host → up; a host it holds nothing about is up). A node with one
/// address has none.
fn replica_infos(
    host: &str,
    replicas: &[String],
    up: &std::collections::BTreeMap<String, bool>,
) -> Vec<pb::ReplicaInfo> {
    if replicas.is_empty() {
        return vec![];
    }
    std::iter::once(host)
        .chain(replicas.iter().map(String::as_str))
        .map(|h| pb::ReplicaInfo {
            host: h.to_owned(),
            up: up.get(h).copied().unwrap_or(true),
        })
        .collect()
}

/// The Tessera URL a node record publishes for `registered`: the same scheme, port (80 or 443
/// by scheme when the URL gives none, written out) and path, with the node's consortium name
/// `name` (`node1.org1.<domain>`) as host. The registered host is a site-internal address
/// (`http://quorum-node1:9001`) that only this site's store keeps; every other site reaches
/// the node by its consortium name through the gateways. An empty URL stays empty.
pub fn published_tessera_url(registered: &str, name: &str) -> Result<String, String> {
    if registered.is_empty() {
        return Ok(String::new());
    }
    let bad = || format!("invalid Tessera URL {registered:?} (http:// or https://, host, port)");
    let (scheme, rest) = registered.split_once("://").ok_or_else(bad)?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad()),
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        // an IPv6 literal without a port ends in ']'
        Some((h, p)) if !p.ends_with(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
        _ => (host_port, default_port),
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(format!("{scheme}://{name}:{port}{path}"))
}

/// Checks a node spec from the CLI and turns it into the node this site publishes (its record
/// is [`pb::NodeRecord::from`] it): the registered host never appears in it, and the Tessera
/// URL names the node by its consortium name `<node>.<org>.<domain>` (see
/// [`published_tessera_url`]). Errors are one line for the caller.
pub fn node_record(
    spec: &pb::NodeSpec,
    site: &str,
    org: &str,
    domain: &str,
) -> Result<Node, String> {
    fedgw_certs::names::validate_label("node", &spec.name).map_err(|e| e.to_string())?;
    check_host(&spec.host)?;
    if spec.replica_hosts.len() + 1 > crate::tunnel::replicas::MAX_REPLICAS {
        return Err(format!(
            "node {} lists {} addresses; at most {} (one --host each) are allowed",
            spec.name,
            spec.replica_hosts.len() + 1,
            crate::tunnel::replicas::MAX_REPLICAS
        ));
    }
    let mut seen = std::collections::BTreeSet::from([spec.host.as_str()]);
    for h in &spec.replica_hosts {
        check_host(h)?;
        if !seen.insert(h.as_str()) {
            return Err(format!("node host {h:?} is listed twice"));
        }
    }
    if !spec.rpc_url.is_empty() {
        spec.rpc_url
            .parse::<crate::chain::rpc::RpcUrl>()
            .map_err(|e| format!("--rpc {:?}: {e}", spec.rpc_url))?;
    }
    if spec.p2p_port == 0
        && spec.raft_port == 0
        && spec.tessera_url.is_empty()
        && spec.services.is_empty()
    {
        return Err("a node needs a p2p port, a raft port, a Tessera URL or a service".into());
    }
    // the CLI checks the id when it parses it; this also covers the Kubernetes controller's
    // `publicKey` and any other admin client
    if !spec.enode_id.is_empty() {
        let key: [u8; 64] = spec
            .enode_id
            .as_slice()
            .try_into()
            .map_err(|_| format!("an enode id is 64 bytes, not {}", spec.enode_id.len()))?;
        fedgw_proto::enode::EnodeId::from_key_bytes(key).map_err(|e| format!("enode id: {e}"))?;
    }
    let record = pb::NodeRecord {
        client: spec.client,
        enode_id: spec.enode_id.clone(),
        p2p_port: spec.p2p_port,
        raft_port: spec.raft_port,
        raft_id: spec.raft_id,
        tessera_keys: spec.tessera_keys.clone(),
        tessera_url: published_tessera_url(
            &spec.tessera_url,
            &format!("{}.{org}.{domain}", spec.name),
        )?,
        roles: spec.roles.clone(),
        site: site.to_owned(),
        allowed_orgs: spec.allowed_orgs.clone(),
        services: spec.services.clone(),
        ipfs_peer_id: spec.ipfs_peer_id.clone(),
        tls_cert_der: spec.tls_cert_der.clone(),
        raft_learner: spec.raft_learner,
    };
    Node::try_from(&record).map_err(|e| e.to_string())
}

/// `AddNode`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn add_node(
    svc: &AdminService,
    request: Request<pb::AddNodeRequest>,
) -> Result<Response<pb::NodeInfo>, Status> {
    let spec = request
        .into_inner()
        .node
        .ok_or_else(|| Status::invalid_argument("node missing"))?;
    let me = svc.membership.me().clone();
    let node = node_record(&spec, &me.site, &me.org, &svc.config.domain)
        .map_err(Status::invalid_argument)?;
    // one enode id, one node: another org's is refused by the view, our own here (two names
    // for one key would make clients dial the same node twice)
    if let Some(other) = svc.membership.read(|v| {
        node.enode_id
            .and_then(|id| v.enode_owner(&id))
            .filter(|(org, name)| *org == me.org && *name != spec.name)
            .map(|(_, name)| name.clone())
    }) {
        return Err(Status::already_exists(format!(
            "enode id already registered by {}/{other}",
            me.org
        )));
    }
    // the real address first: the zone rebuilt on the record's arrival must find it; the
    // registered Tessera URL stays here too (the record publishes the consortium name)
    let local = [crate::store::LocalNode::of(&spec)];
    let shared = on_store(&svc.store, move |s| s.put_local_nodes(&local)).await?;
    svc.membership.share_site(&shared);
    if let Err(e) = svc
        .membership
        .publish(&me.org, &spec.name, Body::Node((&node).into()), SignAs::Org)
        .await
    {
        let existed = svc
            .membership
            .read(|v| v.node(&me.org, &spec.name).is_some());
        if !existed {
            let (store, name) = (svc.store.clone(), spec.name.clone());
            if let Ok(Ok(gone)) =
                tokio::task::spawn_blocking(move || store.remove_local_node(&name)).await
            {
                svc.membership.share_site(&gone);
            }
        }
        return Err(publish_status(e));
    }
    let seq = svc
        .membership
        .read(|v| v.node(&me.org, &spec.name).map_or(0, |n| n.seq));
    Ok(Response::new(registered(
        &me.org,
        &svc.config.domain,
        spec,
        &node,
        seq,
    )))
}

/// `AddNodes`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn add_nodes(
    svc: &AdminService,
    request: Request<pb::AddNodesRequest>,
) -> Result<Response<pb::AddNodesResponse>, Status> {
    let specs = request.into_inner().nodes;
    if specs.len() > MAX_ADD_NODES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_ADD_NODES} nodes per request"
        )));
    }
    let me = svc.membership.me().clone();
    let mut results = vec![pb::AddNodeResult::default(); specs.len()];
    let mut batch: Vec<(usize, pb::NodeSpec, Node)> = vec![];
    let mut names = std::collections::HashSet::new();
    let mut enodes = std::collections::HashMap::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let node = match node_record(&spec, &me.site, &me.org, &svc.config.domain) {
            Ok(r) => r,
            Err(e) => {
                results[i].error = e;
                continue;
            }
        };
        if !names.insert(spec.name.clone()) {
            results[i].error = format!("node {} is listed twice", spec.name);
            continue;
        }
        // one enode id, one node, within the batch and with the view (as in AddNode)
        let other = node.enode_id.and_then(|id| {
            svc.membership
                .read(|v| {
                    v.enode_owner(&id)
                        .filter(|(org, name)| *org == me.org && *name != spec.name)
                        .map(|(_, name)| name.clone())
                })
                .or_else(|| {
                    enodes
                        .insert(id, spec.name.clone())
                        .filter(|n| *n != spec.name)
                })
        });
        if let Some(other) = other {
            results[i].error = format!("enode id already registered by {}/{other}", me.org);
            continue;
        }
        batch.push((i, spec, node));
    }
    // the real addresses first: the zone changed on the records' arrival must find them
    let local: Vec<crate::store::LocalNode> = batch
        .iter()
        .map(|(_, s, _)| crate::store::LocalNode::of(s))
        .collect();
    let shared = on_store(&svc.store, move |s| s.put_local_nodes(&local)).await?;
    svc.membership.share_site(&shared);
    let items = batch
        .iter()
        .map(|(_, s, n)| (s.name.clone(), Body::Node(n.into())))
        .collect();
    let published = svc
        .membership
        .publish_all(&me.org, items, SignAs::Org)
        .await;
    let mut forget = vec![];
    for ((i, spec, node), outcome) in batch.into_iter().zip(published) {
        let held = svc.membership.read(|v| v.node(&me.org, &spec.name));
        match outcome {
            Ok(()) => {
                let seq = held.map_or(0, |n| n.seq);
                let info = registered(&me.org, &svc.config.domain, spec, &node, seq);
                results[i].node = Some(info);
            }
            Err(e) => {
                if held.is_none() {
                    forget.push(spec.name);
                }
                results[i].error = publish_status(e).message().to_owned();
            }
        }
    }
    if !forget.is_empty() {
        let store = svc.store.clone();
        let gone = tokio::task::spawn_blocking(move || {
            let mut gone = vec![];
            for n in &forget {
                gone.extend(store.remove_local_node(n)?);
            }
            Ok::<_, crate::store::StoreError>(gone)
        })
        .await;
        if let Ok(Ok(gone)) = gone {
            svc.membership.share_site(&gone);
        }
    }
    Ok(Response::new(pb::AddNodesResponse { results }))
}

/// `RemoveNode`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn remove_node(
    svc: &AdminService,
    request: Request<pb::RemoveNodeRequest>,
) -> Result<Response<pb::RemoveNodeResponse>, Status> {
    let name = request.into_inner().name;
    let me = svc.membership.me().clone();
    let exists = svc
        .membership
        .read(|v| v.nodes().iter().any(|n| n.org == me.org && n.name == name));
    if !exists {
        return Err(Status::not_found(format!("no node {name:?} in {}", me.org)));
    }
    svc.membership
        .publish(
            &me.org,
            &name,
            Body::Tombstone(pb::TombstoneRecord {
                kind: pb::RecordKind::Node.into(),
            }),
            SignAs::Org,
        )
        .await
        .map_err(publish_status)?;
    let gone = on_store(&svc.store, move |s| s.remove_local_node(&name)).await?;
    svc.membership.share_site(&gone);
    Ok(Response::new(pb::RemoveNodeResponse {}))
}

/// `ListNodes`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn list_nodes(
    svc: &AdminService,
    _request: Request<pb::ListNodesRequest>,
) -> Result<Response<pb::ListNodesResponse>, Status> {
    let local = on_store(&svc.store, move |s| s.local_nodes()).await?;
    let replicas = on_store(&svc.store, move |s| s.local_replicas()).await?;
    let health = svc.tunnels.replica_status();
    let urls = on_store(&svc.store, move |s| s.local_urls()).await?;
    let rpc = on_store(&svc.store, move |s| s.local_rpc()).await?;
    let services = on_store(&svc.store, move |s| s.service_addresses()).await?;
    let me = svc.membership.me().org.clone();
    let domain = svc.config.domain.clone();
    let allocations = svc
        .allocations
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (nodes, raft_ids) = svc.membership.read(|v| (v.nodes(), v.raft_ids()));
    let raft_ids: std::collections::BTreeMap<_, _> =
        raft_ids.into_iter().map(|(k, id, _)| (k, id)).collect();
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let ports = n.node.ports();
            let mut record = pb::NodeRecord::from(&n.node);
            // this site's own nodes show the Tessera URL registered here
            if n.org == me
                && let Some(url) = urls.get(&n.name)
            {
                record.tessera_url.clone_from(url);
            }
            let raft_id = raft_ids.get(&n.key()).copied().map_or(0, u32::from);
            let key = n.key().to_string();
            let service_ip = match services.get(&key) {
                Some(ip) if n.org != me => ip.to_string(),
                _ => String::new(),
            };
            let replicas = match (local.get(&n.name), replicas.get(&n.name)) {
                (Some(host), Some(more)) if n.org == me => {
                    let up = health
                        .get(&n.name)
                        .map(|h| h.iter().cloned().collect())
                        .unwrap_or_default();
                    replica_infos(host, more, &up)
                }
                _ => vec![],
            };
            let local_rpc = match rpc.get(&n.name) {
                Some(url) if n.org == me => url.clone(),
                _ => String::new(),
            };
            let (local_host, local_ip, local_ports) = if n.org == me {
                let host = local.get(&n.name).cloned().unwrap_or_default();
                (host.clone(), host, ports)
            } else {
                match allocations.nodes.get(&key) {
                    Some(a) => (String::new(), a.ip.to_string(), a.ports.clone()),
                    None => (String::new(), String::new(), Default::default()),
                }
            };
            pb::NodeInfo {
                dns_name: format!("{}.{}.{}", n.name, n.org, domain),
                local_host,
                local_ip,
                local_ports: local_ports
                    .into_iter()
                    .map(|(k, v)| (k, u32::from(v)))
                    .collect(),
                org: n.org,
                name: n.name,
                record: Some(record),
                seq: n.seq,
                service_ip,
                local_rpc,
                raft_id,
                replicas,
            }
        })
        .collect();
    Ok(Response::new(pb::ListNodesResponse { nodes }))
}

/// Sets or clears the Service address of a remote node (Kubernetes ClusterIP).
pub(super) async fn set_service_address(
    svc: &AdminService,
    req: pb::SetServiceAddressRequest,
) -> Result<pb::SetServiceAddressResponse, Status> {
    for (what, v) in [("org", &req.org), ("node", &req.name)] {
        fedgw_certs::names::validate_label(what, v)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let ip = match req.ip.as_str() {
        "" => None,
        s => Some(
            s.parse::<std::net::IpAddr>()
                .map_err(|_| Status::invalid_argument(format!("invalid service address {s:?}")))?,
        ),
    };
    let me = svc.membership.me().org.clone();
    if req.org == me {
        return Err(Status::invalid_argument(
            "a Service address is for remote nodes; register own nodes with AddNode",
        ));
    }
    let in_view: std::collections::BTreeSet<String> = svc.membership.read(|v| {
        v.nodes()
            .into_iter()
            .filter(|n| n.org != me)
            .map(|n| n.key().to_string())
            .collect()
    });
    let key = crate::membership::NodeKey::new(&req.org, &req.name).to_string();
    if ip.is_some() && !in_view.contains(&key) {
        return Err(Status::not_found(format!("no remote node {key}")));
    }
    let store = svc.store.clone();
    tokio::task::spawn_blocking(move || {
        store.set_service_address(&key, ip, |k| in_view.contains(k))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(e.to_string()))?;
    // the zone is rebuilt from the view plus this table
    svc.membership.touch();
    Ok(pb::SetServiceAddressResponse {})
}

/// `ChainStatus`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn chain_status(
    svc: &AdminService,
    _request: Request<pb::ChainStatusRequest>,
) -> Result<Response<pb::ChainStatusResponse>, Status> {
    let rpc = on_store(&svc.store, move |s| s.local_rpc()).await?;
    let me = svc.membership.me().org.clone();
    let consensus = svc.config.consensus;
    let nodes = svc.membership.read(|v| {
        rpc.iter()
            .filter_map(|(name, url)| {
                let url = url.parse().ok()?;
                let node = v.node(&me, name).map(|n| n.node);
                let enode_id = node.as_ref().and_then(|n| n.enode_id);
                let validator = node.as_ref().and_then(|n| {
                    let dialect = crate::chain::validators::Dialect::of(n.client, consensus)?;
                    Some((dialect, n.enode_id.as_ref()?.address()))
                });
                Some(crate::chain::status::LocalNode {
                    name: name.clone(),
                    url,
                    enode_id: enode_id.map(|id| id.to_string()),
                    validator,
                })
            })
            .collect()
    });
    let status =
        crate::chain::status::read(consensus, nodes, &svc.chain, &svc.votes, &svc.metrics).await;
    Ok(Response::new(status))
}

#[cfg(test)]
mod tests {
    use super::published_tessera_url as url;

    /// Replica hosts are checked like the host, at most eight addresses in all, none twice.
    #[test]
    fn replica_hosts_are_checked_bounded_and_distinct() {
        let spec = |replicas: &[&str]| fedgw_proto::v1::NodeSpec {
            client: fedgw_proto::v1::ClientKind::Goquorum.into(),
            name: "tm".into(),
            host: "tessera-1".into(),
            p2p_port: 30303,
            replica_hosts: replicas.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let record = |r: &[&str]| super::node_record(&spec(r), "dc1", "org1", "acme.example");
        assert!(record(&["tessera-2", "10.0.0.3"]).is_ok());
        let bad = record(&["tessera 2"]).expect_err("a space");
        assert!(bad.contains("invalid node host"), "{bad}");
        let twice = record(&["tessera-1"]).expect_err("the host again");
        assert!(twice.contains("listed twice"), "{twice}");
        let seven: Vec<String> = (2..9).map(|i| format!("tessera-{i}")).collect();
        let seven: Vec<&str> = seven.iter().map(String::as_str).collect();
        assert!(record(&seven).is_ok(), "eight addresses in all");
        let mut eight = seven.clone();
        eight.push("tessera-9");
        let many = record(&eight).expect_err("nine addresses");
        assert!(many.contains("at most 8"), "{many}");
        // the listing shows a node with replicas, each with its health, and no list for one
        // address
        let up = [("tessera-2".to_owned(), false)].into();
        let infos = super::replica_infos("tessera-1", &["tessera-2".into()], &up);
        let got: Vec<(&str, bool)> = infos.iter().map(|r| (r.host.as_str(), r.up)).collect();
        assert_eq!(got, [("tessera-1", true), ("tessera-2", false)]);
        assert!(super::replica_infos("tessera-1", &[], &up).is_empty());
    }

    /// The admin API (the CLI's and the Kubernetes controller's way in) refuses an enode id
    /// that is not a secp256k1 public key, or not 64 bytes; no id at all is a Tessera-only node.
    #[test]
    fn a_node_spec_needs_an_enode_id_on_the_curve() {
        let spec = |enode_id: Vec<u8>| fedgw_proto::v1::NodeSpec {
            client: fedgw_proto::v1::ClientKind::Goquorum.into(),
            name: "node1".into(),
            host: "10.0.0.1".into(),
            p2p_port: 30303,
            enode_id,
            ..Default::default()
        };
        let record = |id| super::node_record(&spec(id), "dc1", "org1", "acme.example");
        let random = record(vec![0xab; 64]).expect_err("64 bytes off the curve");
        assert!(random.contains("secp256k1"), "{random}");
        let short = record(vec![0xab; 63]).expect_err("63 bytes");
        assert!(short.contains("64 bytes"), "{short}");
        let key = fedgw_tests::enode_key(7);
        let id = record(key.clone()).expect("a key").enode_id;
        assert_eq!(id.map(|id| id.as_bytes().to_vec()), Some(key));
        assert!(record(Vec::new()).is_ok(), "no enode id");
    }

    /// The RPC endpoint is checked like the CLI checks it, and never reaches the record.
    #[test]
    fn a_node_spec_rpc_url_is_checked_and_stays_local() {
        let spec = |rpc_url: &str| fedgw_proto::v1::NodeSpec {
            client: fedgw_proto::v1::ClientKind::Goquorum.into(),
            name: "node1".into(),
            host: "10.0.0.1".into(),
            p2p_port: 30303,
            rpc_url: rpc_url.into(),
            ..Default::default()
        };
        let record = |u| super::node_record(&spec(u), "dc1", "org1", "acme.example");
        let ok = record("http://10.0.0.1:8545").expect("valid URL");
        assert!(!format!("{ok:?}").contains("8545"), "{ok:?}");
        for bad in ["https://10.0.0.1:8545", "http://10.0.0.1", "10.0.0.1:8545"] {
            let e = record(bad).expect_err(bad);
            assert!(e.starts_with("--rpc"), "{e}");
        }
    }

    #[test]
    fn the_published_tessera_url_keeps_scheme_port_and_path_under_the_consortium_name() {
        let name = "node1.org1.acme.example";
        let ok = |u: &str| url(u, name).expect(u);
        assert_eq!(
            ok("http://quorum-node1:9001"),
            "http://node1.org1.acme.example:9001"
        );
        assert_eq!(
            ok("https://10.0.0.1/p/q"),
            "https://node1.org1.acme.example:443/p/q"
        );
        assert_eq!(ok("http://tm"), "http://node1.org1.acme.example:80");
        assert_eq!(
            ok("http://[fd00::1]:9000/"),
            "http://node1.org1.acme.example:9000/"
        );
        assert_eq!(ok("http://[fd00::1]"), "http://node1.org1.acme.example:80");
        assert_eq!(ok(""), "");
        for bad in [
            "ftp://x:1",
            "quorum-node1:9001",
            "http://:9000",
            "http://x:0",
            "http://x:port",
        ] {
            assert!(url(bad, name).is_err(), "{bad}");
        }
    }
}
