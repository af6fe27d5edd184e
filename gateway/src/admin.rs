//! The admin API: gRPC on a Unix socket in the data dir (`DIR/admin.sock`, mode 0600), used by
//! the CLI while `fedgw run` is up. Access is by filesystem permission on the data dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fedgw_proto::v1 as pb;
use fedgw_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::join::server::{InviteError, InviteSpec, create_invite};
use crate::membership::record::Reject;
use crate::membership::{Membership, PublishError, SignAs};
use crate::store::Store;
use pb::record_body::Body;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    /// The store.
    pub store: Arc<Store>,
    /// The gateway config.
    pub config: Config,
    /// The consortium root certificate, DER.
    pub root_cert: Vec<u8>,
    /// The advertised endpoints with the bound port filled in.
    pub advertise: Vec<String>,
    /// Membership.
    pub membership: Membership,
    /// Remote nodes' local addresses at this site.
    pub allocations: Arc<std::sync::RwLock<crate::addressing::Allocations>>,
    /// The data plane.
    pub tunnels: crate::tunnel::Tunnels,
    /// Metrics (refused stream counters).
    pub metrics: crate::metrics::Metrics,
    /// The raft keeper's state.
    pub chain: crate::chain::keeper::KeeperHandle,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Most nodes one `AddNodes` request may carry (one sync batch).
pub const MAX_ADD_NODES: usize = crate::membership::sync::MAX_BATCH_RECORDS;

/// What `AddNode` answers for a node registered here.
fn registered(
    org: &str,
    domain: &str,
    spec: pb::NodeSpec,
    record: pb::NodeRecord,
    seq: u64,
) -> pb::NodeInfo {
    pb::NodeInfo {
        dns_name: format!("{}.{org}.{domain}", spec.name),
        local_ip: spec.host.clone(),
        local_ports: fedgw_proto::node_ports(&record)
            .into_iter()
            .map(|(k, v)| (k, u32::from(v)))
            .collect(),
        org: org.to_owned(),
        name: spec.name,
        record: Some(pb::NodeRecord {
            tessera_url: spec.tessera_url,
            ..record
        }),
        seq,
        local_host: spec.host,
        service_ip: String::new(),
        local_rpc: spec.rpc_url,
        raft_id: 0,
    }
}

fn publish_status(e: PublishError) -> Status {
    match e {
        PublishError::Rejected(r @ (Reject::EnodeTaken(_) | Reject::Stale { .. })) => {
            Status::already_exists(r.to_string())
        }
        PublishError::Rejected(r) => Status::invalid_argument(r.to_string()),
        e @ (PublishError::EmptyBody | PublishError::NoRootKey | PublishError::Sign(_)) => {
            Status::failed_precondition(crate::net::with_sources(&e))
        }
        PublishError::Store(e) => Status::internal(e.to_string()),
        PublishError::Batch(e) => Status::internal(format!("{e}")),
    }
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

/// Checks a node spec from the CLI and turns it into the record this site publishes: the
/// registered host never appears in it, and the Tessera URL names the node by its consortium
/// name `<node>.<org>.<domain>` (see [`published_tessera_url`]).
pub fn node_record(
    spec: &pb::NodeSpec,
    site: &str,
    org: &str,
    domain: &str,
) -> Result<pb::NodeRecord, String> {
    fedgw_certs::names::validate_label("node", &spec.name).map_err(|e| e.to_string())?;
    if spec.host.is_empty()
        || fedgw_certs::token::validate_endpoint(&format!("{}:1", spec.host)).is_err()
    {
        return Err(format!("invalid node host {:?}", spec.host));
    }
    if !spec.rpc_url.is_empty() {
        spec.rpc_url
            .parse::<crate::chain::rpc::RpcUrl>()
            .map_err(|e| format!("--rpc {:?}: {e}", spec.rpc_url))?;
    }
    if spec.p2p_port == 0 && spec.raft_port == 0 && spec.tessera_url.is_empty() {
        return Err("a node needs a p2p port, a raft port or a Tessera URL".into());
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
    Ok(pb::NodeRecord {
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
    })
}

fn status(e: InviteError) -> Status {
    match e {
        InviteError::NotRootHolder => Status::failed_precondition(e.to_string()),
        InviteError::Name(_) | InviteError::Range(_) | InviteError::Endpoint(_) => {
            Status::invalid_argument(e.to_string())
        }
        InviteError::AlreadyMember(_) => Status::already_exists(e.to_string()),
        InviteError::Store(_) | InviteError::Pki(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        let req = request.into_inner();
        let candidate = req.org.clone();
        let (store, config, root_cert) = (
            self.store.clone(),
            self.config.clone(),
            self.root_cert.clone(),
        );
        let endpoint = self.advertise.first().cloned().unwrap_or_default();
        let (token, expires_unix) = tokio::task::spawn_blocking(move || {
            create_invite(
                &store,
                &config,
                &root_cert,
                &endpoint,
                &InviteSpec {
                    org: req.org,
                    ttl: Duration::from_secs(req.ttl_secs),
                    uses: req.uses,
                },
                SystemTime::now(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        if self.config.admission != crate::config::Admission::Operator {
            self.announce_candidate(&candidate).await;
        }
        Ok(Response::new(pb::CreateInviteResponse {
            token: token.to_text().to_string(),
            token_id: token.id.clone(),
            expires_unix: i64::try_from(expires_unix).unwrap_or(i64::MAX),
        }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let spec = request
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("node missing"))?;
        let me = self.membership.me().clone();
        let record = node_record(&spec, &me.site, &me.org, &self.config.domain)
            .map_err(Status::invalid_argument)?;
        // one enode id, one node: another org's is refused by the view, our own here (two names
        // for one key would make clients dial the same node twice)
        if let Some(other) = self.membership.read(|v| {
            v.enode_owner(&record.enode_id)
                .filter(|(org, name)| {
                    *org == me.org && *name != spec.name && !record.enode_id.is_empty()
                })
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_local_nodes(&local))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Err(e) = self
            .membership
            .publish(&me.org, &spec.name, Body::Node(record.clone()), SignAs::Org)
            .await
        {
            let existed = self
                .membership
                .read(|v| v.node(&me.org, &spec.name).is_some());
            if !existed {
                let (store, name) = (self.store.clone(), spec.name.clone());
                let _ = tokio::task::spawn_blocking(move || store.remove_local_node(&name)).await;
            }
            return Err(publish_status(e));
        }
        let seq = self
            .membership
            .read(|v| v.node(&me.org, &spec.name).map_or(0, |n| n.seq));
        Ok(Response::new(registered(
            &me.org,
            &self.config.domain,
            spec,
            record,
            seq,
        )))
    }

    async fn add_nodes(
        &self,
        request: Request<pb::AddNodesRequest>,
    ) -> Result<Response<pb::AddNodesResponse>, Status> {
        let specs = request.into_inner().nodes;
        if specs.len() > MAX_ADD_NODES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_ADD_NODES} nodes per request"
            )));
        }
        let me = self.membership.me().clone();
        let mut results = vec![pb::AddNodeResult::default(); specs.len()];
        let mut batch: Vec<(usize, pb::NodeSpec, pb::NodeRecord)> = vec![];
        let mut names = std::collections::HashSet::new();
        let mut enodes = std::collections::HashMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let record = match node_record(&spec, &me.site, &me.org, &self.config.domain) {
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
            let held = self.membership.read(|v| {
                v.enode_owner(&record.enode_id)
                    .filter(|(org, name)| *org == me.org && *name != spec.name)
                    .map(|(_, name)| name.clone())
            });
            let other = match record.enode_id.is_empty() {
                true => None,
                false => held.or_else(|| {
                    enodes
                        .insert(record.enode_id.clone(), spec.name.clone())
                        .filter(|n| *n != spec.name)
                }),
            };
            if let Some(other) = other {
                results[i].error = format!("enode id already registered by {}/{other}", me.org);
                continue;
            }
            batch.push((i, spec, record));
        }
        // the real addresses first: the zone changed on the records' arrival must find them
        let local: Vec<crate::store::LocalNode> = batch
            .iter()
            .map(|(_, s, _)| crate::store::LocalNode::of(s))
            .collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_local_nodes(&local))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let items = batch
            .iter()
            .map(|(_, s, r)| (s.name.clone(), Body::Node(r.clone())))
            .collect();
        let published = self
            .membership
            .publish_all(&me.org, items, SignAs::Org)
            .await;
        let mut forget = vec![];
        for ((i, spec, record), outcome) in batch.into_iter().zip(published) {
            let held = self.membership.read(|v| v.node(&me.org, &spec.name));
            match outcome {
                Ok(()) => {
                    let seq = held.map_or(0, |n| n.seq);
                    let info = registered(&me.org, &self.config.domain, spec, record, seq);
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
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                forget.iter().try_for_each(|n| store.remove_local_node(n))
            })
            .await;
        }
        Ok(Response::new(pb::AddNodesResponse { results }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let name = request.into_inner().name;
        let me = self.membership.me().clone();
        let exists = self
            .membership
            .read(|v| v.nodes().iter().any(|n| n.org == me.org && n.name == name));
        if !exists {
            return Err(Status::not_found(format!("no node {name:?} in {}", me.org)));
        }
        self.membership
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove_local_node(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.local_nodes())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let store = self.store.clone();
        let urls = tokio::task::spawn_blocking(move || store.local_urls())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let store = self.store.clone();
        let rpc = tokio::task::spawn_blocking(move || store.local_rpc())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let store = self.store.clone();
        let services = tokio::task::spawn_blocking(move || store.service_addresses())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let me = self.membership.me().org.clone();
        let domain = self.config.domain.clone();
        let allocations = self
            .allocations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (nodes, raft_ids) = self.membership.read(|v| (v.nodes(), v.raft_ids()));
        let raft_ids: std::collections::BTreeMap<_, _> =
            raft_ids.into_iter().map(|(k, id, _)| (k, id)).collect();
        let nodes = nodes
            .into_iter()
            .map(|mut n| {
                let ports = fedgw_proto::node_ports(&n.record);
                // this site's own nodes show the Tessera URL registered here
                if n.org == me
                    && let Some(url) = urls.get(&n.name)
                {
                    n.record.tessera_url.clone_from(url);
                }
                let raft_id = raft_ids.get(&n.key()).copied().map_or(0, u32::from);
                let key = n.key().to_string();
                let service_ip = match services.get(&key) {
                    Some(ip) if n.org != me => ip.to_string(),
                    _ => String::new(),
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
                    record: Some(n.record),
                    seq: n.seq,
                    service_ip,
                    local_rpc,
                    raft_id,
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn chain_status(
        &self,
        _request: Request<pb::ChainStatusRequest>,
    ) -> Result<Response<pb::ChainStatusResponse>, Status> {
        let store = self.store.clone();
        let rpc = tokio::task::spawn_blocking(move || store.local_rpc())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let me = self.membership.me().org.clone();
        let nodes = self.membership.read(|v| {
            rpc.iter()
                .filter_map(|(name, url)| {
                    let url = url.parse().ok()?;
                    let enode_id = v
                        .node(&me, name)
                        .filter(|n| n.record.enode_id.len() == 64)
                        .map(|n| hex(&n.record.enode_id));
                    Some(crate::chain::status::LocalNode {
                        name: name.clone(),
                        url,
                        enode_id,
                    })
                })
                .collect()
        });
        let status =
            crate::chain::status::read(self.config.consensus, nodes, &self.chain, &self.metrics)
                .await;
        Ok(Response::new(status))
    }

    async fn list_members(
        &self,
        _request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let resp = self.membership.read(|v| {
            let gateways = v.gateways();
            let info = |org: &str, status: &str, admitted_unix: i64| pb::MemberInfo {
                org: org.to_owned(),
                status: status.to_owned(),
                admitted_unix,
                gateways: gateways
                    .iter()
                    .filter(|(o, _, _)| o == org)
                    .map(|(_, site, g)| pb::GatewayInfo {
                        site: site.clone(),
                        advertise: g.advertise.clone(),
                        outbound_only: g.outbound_only,
                    })
                    .collect(),
                approved_by: v.approvals_for(org),
            };
            let mut members: Vec<_> = v
                .members()
                .iter()
                .map(|(org, m)| info(org, "active", m.admitted_unix))
                .collect();
            members.extend(v.revoked().iter().map(|org| info(org, "revoked", 0)));
            members.sort_by(|a, b| a.org.cmp(&b.org));
            let pending = v
                .candidates()
                .iter()
                .map(|c| info(c, "pending", 0))
                .collect();
            pb::ListMembersResponse {
                members,
                pending,
                consensus: self.config.consensus.name().to_owned(),
            }
        });
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // this gateway never dials its own names: resolve them now, as a peer would
        let own = async {
            for endpoint in &self.advertise {
                let _ = crate::net::resolve(endpoint).await;
            }
        };
        let _ = tokio::time::timeout(OWN_RESOLVE_TIMEOUT, own).await;
        let mut status = status_of(&self.membership, &self.tunnels, &self.metrics);
        status.advertise = self.advertise.iter().map(|e| advertised(e)).collect();
        Ok(Response::new(status))
    }

    type WatchStatusStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::StatusResponse, Status>> + Send + 'static>,
    >;

    async fn watch_status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let m = self.membership.clone();
        let (tunnels, metrics) = (self.tunnels.clone(), self.metrics.clone());
        let advertise = self.advertise.clone();
        let mut changed = m.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let tracker = m.tracker().clone();
        tracker.spawn(async move {
            loop {
                let mut status = status_of(&m, &tunnels, &metrics);
                status.advertise = advertise.iter().map(|e| advertised(e)).collect();
                if tx.send(Ok(status)).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    c = changed.changed() => if c.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let candidate = request.into_inner().org;
        fedgw_certs::names::validate_label("org", &candidate)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.config.admission == crate::config::Admission::Operator {
            // the invite alone admits: no join ever waits for a vote
            return Err(Status::failed_precondition(format!(
                "the consortium's admission is operator: no join waits for approval, \
                 so there is no pending join of {candidate} to approve"
            )));
        }
        let (member, revoked, pending) = self.membership.read(|v| {
            (
                v.is_member(&candidate),
                v.revoked().contains(&candidate),
                v.candidates().contains(&candidate),
            )
        });
        if member {
            return Err(Status::already_exists(format!(
                "{candidate} is already a member"
            )));
        }
        if revoked {
            return Err(Status::failed_precondition(format!(
                "{candidate} is revoked"
            )));
        }
        if !pending {
            // a vote is only given for an announced invite, so a typo never counts as one
            return Err(Status::failed_precondition(format!(
                "there is no pending join of {candidate} at this gateway: \
                 it was not invited, or the invite has not reached this gateway yet"
            )));
        }
        let me = self.membership.me().org.clone();
        self.membership
            .publish(
                &me,
                &candidate,
                Body::Vote(pb::VoteRecord { approve: true }),
                SignAs::Org,
            )
            .await
            .map_err(publish_status)?;
        Ok(Response::new(pb::ApproveResponse {}))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let req = request.into_inner();
        if !self.membership.is_root_holder() {
            return Err(Status::failed_precondition(
                "only the gateway holding the consortium root key can revoke",
            ));
        }
        if req.org == self.membership.me().org {
            return Err(Status::invalid_argument("an org cannot revoke itself"));
        }
        if !self.membership.read(|v| v.is_member(&req.org)) {
            return Err(Status::not_found(format!(
                "{} is not an active member",
                req.org
            )));
        }
        self.membership
            .publish(
                &req.org,
                "",
                Body::Revocation(pb::RevocationRecord { reason: req.reason }),
                SignAs::Root,
            )
            .await
            .map_err(publish_status)?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn set_service_address(
        &self,
        request: Request<pb::SetServiceAddressRequest>,
    ) -> Result<Response<pb::SetServiceAddressResponse>, Status> {
        self.set_service_address_impl(request.into_inner())
            .await
            .map(Response::new)
    }
}

impl AdminService {
    /// Makes an invited org a pending join at every gateway, under an admission policy that
    /// waits for votes: this org's vote record for it, not approving (`approve = false`), so
    /// `fedgw members` lists it everywhere before anyone approved and `fedgw approve` can
    /// tell a pending join from a typo. An existing vote of this org (an approval given before
    /// the invite) is kept. The invite stands if the record cannot be published (logged).
    async fn announce_candidate(&self, candidate: &str) {
        use crate::membership::record::{Kind, RecordKey};
        let me = self.membership.me().org.clone();
        let key = RecordKey {
            kind: Kind::Vote,
            org: me.clone(),
            name: candidate.to_owned(),
        };
        if self.membership.read(|v| v.get(&key).is_some()) {
            return;
        }
        if let Err(e) = self
            .membership
            .publish(
                &me,
                candidate,
                Body::Vote(pb::VoteRecord { approve: false }),
                SignAs::Org,
            )
            .await
        {
            tracing::warn!(org = %candidate, error = %e, "invited org not announced as a pending join");
        }
    }

    async fn set_service_address_impl(
        &self,
        req: pb::SetServiceAddressRequest,
    ) -> Result<pb::SetServiceAddressResponse, Status> {
        for (what, v) in [("org", &req.org), ("node", &req.name)] {
            fedgw_certs::names::validate_label(what, v)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let ip =
            match req.ip.as_str() {
                "" => None,
                s => Some(s.parse::<std::net::IpAddr>().map_err(|_| {
                    Status::invalid_argument(format!("invalid service address {s:?}"))
                })?),
            };
        let me = self.membership.me().org.clone();
        if req.org == me {
            return Err(Status::invalid_argument(
                "a Service address is for remote nodes; register own nodes with AddNode",
            ));
        }
        let in_view: std::collections::BTreeSet<String> = self.membership.read(|v| {
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.set_service_address(&key, ip, |k| in_view.contains(k))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        // the zone is rebuilt from the view plus this table
        self.membership.touch();
        Ok(pb::SetServiceAddressResponse {})
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    service: Arc<AdminService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let listening = &listener;
    let accepting = accept(
        move || async move { listening.accept().await.map(|(conn, _)| conn) },
        tx,
        shutdown.clone(),
    );
    let server = tonic::transport::Server::builder()
        .add_service(
            pb::admin_server::AdminServer::from_arc(service)
                .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
            shutdown.cancelled_owned(),
        );
    // the accept loop ends on shutdown, and the server then finishes the calls in flight
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served,
        () = accepting => {}
    }
    server.await
}

/// How long the admin socket's accept loop waits after a failed accept (`EMFILE` when the
/// process is out of file descriptors): retrying at once would spin a core, and a
/// connection closing meanwhile frees a descriptor.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts admin connections with `accept_one` (the listener's `accept`) and hands them to the
/// server; a failed accept is logged and retried after [`ACCEPT_BACKOFF`].
async fn accept<C, A, F>(
    mut accept_one: A,
    tx: tokio::sync::mpsc::Sender<C>,
    shutdown: CancellationToken,
) where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<C>>,
{
    loop {
        let accepted = tokio::select! {
            a = accept_one() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(conn) => {
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Longest a connection to the admin socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the admin socket at `path`.
pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    connect_with(path, None).await
}

/// Connects to the admin socket at `path` for the CLI: connecting and every call fail after
/// `timeout` (a call with tonic's `Cancelled`, "Timeout expired"), so a gateway that is
/// overloaded or stuck gets a clear error rather than a command that hangs.
pub async fn connect_cli(
    path: &Path,
    timeout: Duration,
) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    connect_with(path, Some(timeout)).await
}

async fn connect_with(
    path: &Path,
    call_timeout: Option<Duration>,
) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    let path = path.to_owned();
    let mut endpoint = Endpoint::from_static("http://admin.fedgw.invalid")
        .connect_timeout(call_timeout.map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT)));
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(AdminClient::new(channel).max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES))
}

/// Bound on resolving this gateway's own advertised names for a status report.
const OWN_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// An advertised endpoint with the addresses its host last resolved to
/// ([`crate::net::last_resolution`]); an IP literal is its own address.
fn advertised(endpoint: &str) -> pb::AdvertisedEndpoint {
    let mut out = pb::AdvertisedEndpoint {
        endpoint: endpoint.to_owned(),
        ..Default::default()
    };
    let Some((host, _)) = crate::net::split_host_port(endpoint) else {
        return out;
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        out.addresses = vec![ip.to_string()];
    } else if let Some(r) = crate::net::last_resolution(host) {
        out.addresses = r.addrs.iter().map(|ip| ip.to_string()).collect();
        out.resolved_unix_ms = r.at_unix_ms;
        out.error = r.error;
    }
    out
}

/// The status report of a gateway; its own `advertise` is left to the caller, which holds it.
fn status_of(
    m: &Membership,
    tunnels: &crate::tunnel::Tunnels,
    metrics: &crate::metrics::Metrics,
) -> pb::StatusResponse {
    let (digest, records) = m.read(|v| (hex(&v.digest()), v.len() as u64));
    // each peer's endpoints: from the view, or from the bootstrap list for a peer not in it yet
    let mut endpoints: std::collections::HashMap<crate::membership::GatewayId, Vec<String>> =
        m.dial_targets().into_iter().collect();
    endpoints.extend(
        m.read(|v| v.gateways())
            .into_iter()
            .map(|(org, site, g)| (crate::membership::GatewayId { org, site }, g.advertise)),
    );
    let peers = m
        .peer_reports()
        .into_iter()
        .map(|p| pb::PeerStatus {
            advertise: endpoints
                .get(&p.id)
                .map(|e| e.iter().map(|e| advertised(e)).collect())
                .unwrap_or_default(),
            org: p.id.org,
            site: p.id.site,
            state: p.state.to_owned(),
            direction: p.direction.to_owned(),
            last_seen_unix_ms: p.last_seen_ms,
            connected_since_unix_ms: p.since_ms,
            last_error: p.last_error,
            records_in: p.records_in,
            records_out: p.records_out,
        })
        .collect();
    pb::StatusResponse {
        org: m.me().org.clone(),
        site: m.me().site.clone(),
        digest,
        records,
        peers,
        rejected_records: m.rejected_total(),
        equivocations: m.equivocations_total(),
        tunnels: tunnels
            .links()
            .into_iter()
            .map(|l| pb::TunnelStatus {
                org: l.peer.org,
                site: l.peer.site,
                transport: l.transport.to_owned(),
                rtt_ms: l.quic.map_or(0.0, |p| p.rtt.as_secs_f64() * 1000.0),
                path_mtu: l.quic.map_or(0, |p| u32::from(p.current_mtu)),
                lost_packets: l.quic.map_or(0, |p| p.lost_packets),
                quic_failed_at_unix_ms: l.quic_failed.map_or(0, |f| unix_ms(f.at)),
                quic_retry_at_unix_ms: l.quic_failed.map_or(0, |f| unix_ms(f.retry_at)),
            })
            .collect(),
        listeners: u32::try_from(tunnels.listening().len()).unwrap_or(u32::MAX),
        listener_failures: tunnels.listener_failures(),
        active_streams: u64::try_from(metrics.tunnel_active_streams()).unwrap_or(0),
        refused_streams: crate::tunnel::refusal_reasons()
            .map(|label| (label.to_owned(), metrics.tunnel_refused_label_total(label)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        stalled_connections: ["near", "far"]
            .into_iter()
            .map(|end| (end.to_owned(), metrics.tunnel_stalled_total(end)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        classes: crate::tunnel::class::Class::ALL
            .into_iter()
            .map(|class| {
                let t = metrics.tunnel_class_totals(class);
                pb::ClassStatus {
                    class: class.label().to_owned(),
                    bytes: t.bytes,
                    writes: t.writes,
                    wait_sum_us: t.wait_sum_us,
                    max_wait_us: t.max_wait_us,
                }
            })
            .collect(),
        advertise: vec![],
    }
}

/// `t` as Unix milliseconds (0 before 1970).
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::published_tessera_url as url;

    /// Out of file descriptors, every accept fails at once: the loop retries every
    /// [`super::ACCEPT_BACKOFF`] rather than spinning, and hands on the connection that comes
    /// when a descriptor is free again. The fake accept stops the loop after 1,000 attempts, so
    /// a loop without back-off fails the count instead of hanging the test.
    #[tokio::test(start_paused = true)]
    async fn the_accept_loop_backs_off_while_accepts_fail() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        let attempts = Arc::new(AtomicUsize::new(0));
        let fail_until = Arc::new(AtomicUsize::new(usize::MAX));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let accept_one = {
            let (attempts, fail_until, shutdown) =
                (attempts.clone(), fail_until.clone(), shutdown.clone());
            move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= 1000 {
                    shutdown.cancel();
                }
                let result = if n < fail_until.load(Ordering::SeqCst) {
                    Err(std::io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    Ok(n)
                };
                async move { result }
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let looping = tokio::spawn(super::accept(accept_one, tx, shutdown.clone()));

        let window = Duration::from_secs(1);
        tokio::time::sleep(window).await;
        let tried = attempts.load(Ordering::SeqCst);
        let most = (window.as_millis() / super::ACCEPT_BACKOFF.as_millis()) as usize + 1;
        assert!(
            (most - 1..=most).contains(&tried),
            "{tried} accepts in {window:?}; at most {most} with back-off"
        );

        fail_until.store(tried + 1, Ordering::SeqCst);
        let conn = tokio::time::timeout(window, rx.recv()).await;
        assert_eq!(conn, Ok(Some(tried + 1)), "the next accept succeeds");
        // the server is gone and shutdown asked: the loop ends whatever it was waiting for
        drop(rx);
        shutdown.cancel();
        let ended = tokio::time::timeout(window, looping).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the accept loop ends: {ended:?}"
        );
    }

    /// The admin API (the CLI's and the Kubernetes controller's way in) refuses an enode id
    /// that is not a secp256k1 public key, or not 64 bytes; no id at all is a Tessera-only node.
    #[test]
    fn a_node_spec_needs_an_enode_id_on_the_curve() {
        let spec = |enode_id: Vec<u8>| fedgw_proto::v1::NodeSpec {
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
        assert_eq!(record(key.clone()).expect("a key").enode_id, key);
        assert!(record(Vec::new()).is_ok(), "no enode id");
    }

    /// The RPC endpoint is checked like the CLI checks it, and never reaches the record.
    #[test]
    fn a_node_spec_rpc_url_is_checked_and_stays_local() {
        let spec = |rpc_url: &str| fedgw_proto::v1::NodeSpec {
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
