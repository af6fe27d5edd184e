//! The controller's state as a plain index (no IO): what the watches and the gateway report
//! goes in, what should be written comes out.
//!
//! Inputs: `ConsortiumNode`s, Services, labelled nodekey Secrets and the peers ConfigMap of the
//! controller's namespace (each a [`Cache`] fed by a watcher's events), and the gateway's
//! `ListNodes` ([`GatewayView`]). Output: a [`Plan`] of gateway calls, Services to apply or
//! delete, the ConfigMap to apply and statuses to patch, each only when what is observed
//! differs from what is wanted. Nothing is planned before every input has finished its first
//! list ([`Index::ready`]); a re-list replaces a cache whole, so objects that vanished while the
//! watch was down are gone from it and what was derived from them is deleted.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use fedgw_proto::domain::Node;
use fedgw_proto::v1 as pb;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::runtime::watcher;

use super::crd::{Client, Condition, ConsortiumNode, ConsortiumNodeStatus, MAX_HOSTS};
use super::nodekey;
use crate::fabric::render::{ProfileFormat, connection_profile};
use crate::fabric::view::{self as fabric_view, MemberFacts};
use crate::render::{Kind, RenderNode};

/// Label on every object the controller owns, with [`MANAGED_BY_VALUE`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "fedgw-controlplane";
/// `remote` on a remote node's Service, `local` on a Service made for a `podSelector`.
pub const ROLE_LABEL: &str = "fedgw.io/role";
/// The node's org, on the Services the controller owns.
pub const ORG_LABEL: &str = "fedgw.io/org";
/// The node's name, on the Services the controller owns.
pub const NODE_LABEL: &str = "fedgw.io/node";
/// Secrets holding node keys carry this label with value `"true"`: the controller watches
/// only those.
pub const NODEKEY_LABEL: &str = "fedgw.io/nodekey";
/// Condition type: the gateway holds and publishes this resource's node.
pub const REGISTERED: &str = "Registered";
/// Condition type: the node is registered as its current spec says (the summary condition of
/// the Kubernetes API conventions).
pub const READY: &str = "Ready";
/// The cluster DNS domain when none is configured.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Objects of one kind, by name, fed by a watcher.
#[derive(Debug, Clone)]
pub struct Cache<K> {
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: kube::Resource> Cache<K> {
    /// An object was created or changed.
    pub fn apply(&mut self, obj: K) {
        self.objects.insert(obj.name_any(), obj);
    }

    /// An object was deleted.
    pub fn delete(&mut self, name: &str) {
        self.objects.remove(name);
    }

    /// Feeds one watcher event. A (re-)list (`Init`, `InitApply`…, `InitDone`) replaces the
    /// whole cache when it completes, and marks the cache synced.
    pub fn event(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Apply(obj) => self.apply(obj),
            watcher::Event::Delete(obj) => self.delete(&obj.name_any()),
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(obj.name_any(), obj);
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
            }
        }
    }

    /// The object named `name`.
    pub fn get(&self, name: &str) -> Option<&K> {
        self.objects.get(name)
    }

    /// Every object, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &K)> {
        self.objects.iter()
    }

    /// Whether the first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

/// What the gateway reports: who it is and every node in its view (`Admin.Status` and
/// `Admin.ListNodes`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayView {
    /// This gateway's org.
    pub org: String,
    /// This gateway's site.
    pub site: String,
    /// Every node in its view, with local addresses.
    pub nodes: Vec<pb::NodeInfo>,
    /// The consortium as `Admin.ListMembers` describes it (for the Fabric connection profile).
    pub consortium: Consortium,
}

/// The consortium-wide facts of `Admin.ListMembers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consortium {
    /// The consortium's name.
    pub name: String,
    /// Its DNS domain (`<node>.<org>.<domain>`).
    pub domain: String,
    /// The consortium root certificate, PEM.
    pub root_cert_pem: String,
    /// The active members and their Fabric MSP IDs.
    pub members: Vec<MemberFacts>,
}

impl Consortium {
    /// The facts of a `ListMembers` answer.
    pub fn from_members(r: &pb::ListMembersResponse) -> Self {
        Self {
            name: r.consortium.clone(),
            domain: r.domain.clone(),
            root_cert_pem: r.root_cert_pem.clone(),
            members: crate::fabric::view::member_facts(&r.members),
        }
    }
}

/// The ConfigMap key of the Fabric common connection profile (JSON), present while the view
/// holds a Fabric peer or orderer.
pub const FABRIC_PROFILE_FILE: &str = "fabric-connection-profile.json";

/// Fixed settings of one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The namespace the controller watches and writes in (its own).
    pub namespace: String,
    /// The name of the ConfigMap with the rendered files.
    pub config_map: String,
    /// Labels of the gateway pods: the selector of every remote node's Service.
    pub gateway_selector: BTreeMap<String, String>,
    /// The cluster's DNS domain (`cluster.local` unless the cluster was set up otherwise): a
    /// headless Service's node is reached at `<service>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
}

/// A call to the gateway's admin API.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayCall {
    /// `AddNode`: register or update a local node.
    AddNode(Box<pb::NodeSpec>),
    /// `RemoveNode`: remove a local node (by name).
    RemoveNode(String),
    /// `SetServiceAddress`: a remote node's Service IP (empty: clear).
    SetServiceAddress {
        /// The node's org.
        org: String,
        /// The node's name.
        name: String,
        /// The ClusterIP, or empty.
        ip: String,
    },
}

/// What should be written, in the order the controller writes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Admin API calls.
    pub gateway: Vec<GatewayCall>,
    /// Services to create or update (server-side apply), sorted by name.
    pub apply_services: Vec<Service>,
    /// Owned Services to delete, sorted.
    pub delete_services: Vec<String>,
    /// The peers ConfigMap, when its data differs from what is observed.
    pub config_map: Option<ConfigMap>,
    /// `ConsortiumNode` name → its new status.
    pub statuses: Vec<(String, ConsortiumNodeStatus)>,
}

impl Plan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.gateway.is_empty()
            && self.apply_services.is_empty()
            && self.delete_services.is_empty()
            && self.config_map.is_none()
            && self.statuses.is_empty()
    }
}

/// The controller's index.
#[derive(Debug, Clone)]
pub struct Index {
    settings: Settings,
    /// `ConsortiumNode`s.
    pub nodes: Cache<ConsortiumNode>,
    /// Services of the namespace.
    pub services: Cache<Service>,
    /// Secrets labelled [`NODEKEY_LABEL`].
    pub secrets: Cache<Secret>,
    /// The peers ConfigMap (a watch on its name).
    pub config_maps: Cache<ConfigMap>,
    gateway: Option<GatewayView>,
    /// Node name → (the spec the gateway refused, why): not retried until the spec changes
    /// or [`Index::clear_failures`].
    failures: BTreeMap<String, (pb::NodeSpec, String)>,
}

/// Why a node is not registered (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// `Pending` or `Error`.
    state: &'static str,
    reason: &'static str,
    message: String,
}

impl Problem {
    fn pending(reason: &'static str, message: String) -> Self {
        Self {
            state: "Pending",
            reason,
            message,
        }
    }
    fn error(reason: &'static str, message: String) -> Self {
        Self {
            state: "Error",
            reason,
            message,
        }
    }
}

/// One `ConsortiumNode` worked out against the other inputs.
struct Local {
    /// The consortium node name (may be invalid; then `spec` is an error).
    name: String,
    spec: Result<pb::NodeSpec, Problem>,
    /// The Service the controller creates for a `podSelector`.
    service: Option<Service>,
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Service name for `parts` joined by `-` under `fedgw-`: a DNS-1035 label of at most 63
/// characters (long names are cut and end in a hash of the full name, so they stay unique).
pub fn service_name(parts: &[&str]) -> String {
    let full = format!("fedgw-{}", parts.join("-"));
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across releases, unlike std's hasher
    let hash = full.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let cut = full[..54].trim_end_matches('-');
    format!("{cut}-{hash:08x}")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn tcp_port(name: &str, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn cluster_ip(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn is_owned(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// Whether `observed` already is what `desired` asks for (labels, selector, ports, type).
fn service_matches(desired: &Service, observed: &Service) -> bool {
    let has_labels = desired.metadata.labels.iter().flatten().all(|(k, v)| {
        observed
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .is_some_and(|o| o == v)
    });
    let ports = |s: &Service| {
        let mut v: Vec<(Option<String>, i32, Option<IntOrString>, String)> = s
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.target_port.clone(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    };
    let selector = |s: &Service| s.spec.as_ref().and_then(|s| s.selector.clone());
    let kind = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.type_.clone())
            .unwrap_or_else(|| "ClusterIP".into())
    };
    has_labels
        && selector(desired) == selector(observed)
        && ports(desired) == ports(observed)
        && kind(desired) == kind(observed)
}

fn client_kind(c: Client) -> pb::ClientKind {
    match c {
        Client::Goquorum => pb::ClientKind::Goquorum,
        Client::Besu => pb::ClientKind::Besu,
        Client::Tessera => pb::ClientKind::Tessera,
        Client::FabricPeer => pb::ClientKind::FabricPeer,
        Client::FabricOrderer => pb::ClientKind::FabricOrderer,
        Client::Ipfs => pb::ClientKind::Ipfs,
    }
}

/// Whether the gateway's record is what `spec` publishes.
fn record_matches(info: &pb::NodeInfo, spec: &pb::NodeSpec) -> bool {
    let Some(r) = &info.record else {
        return false;
    };
    info.local_host == spec.host
        && r.client == spec.client
        && r.enode_id == spec.enode_id
        && r.p2p_port == spec.p2p_port
        && r.raft_port == spec.raft_port
        && r.raft_id == spec.raft_id
        && r.tessera_keys == spec.tessera_keys
        && r.tessera_url == spec.tessera_url
        && r.roles == spec.roles
        && r.allowed_orgs == spec.allowed_orgs
        && r.services == spec.services
        && r.ipfs_peer_id == spec.ipfs_peer_id
        && r.tls_cert_der == spec.tls_cert_der
        && info.local_rpc == spec.rpc_url
        && info
            .replicas
            .iter()
            .skip(1)
            .map(|r| &r.host)
            .eq(&spec.replica_hosts)
}

impl Index {
    /// An empty index: nothing synced, no gateway view.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            nodes: Cache::default(),
            services: Cache::default(),
            secrets: Cache::default(),
            config_maps: Cache::default(),
            gateway: None,
            failures: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the gateway view (after each `ListNodes`).
    pub fn set_gateway(&mut self, view: GatewayView) {
        self.gateway = Some(view);
    }

    /// The gateway view, once known.
    pub fn gateway(&self) -> Option<&GatewayView> {
        self.gateway.as_ref()
    }

    /// Records that the gateway refused `spec` (its status shows `message`; it is not sent
    /// again until it changes or [`Index::clear_failures`]).
    pub fn record_failure(&mut self, spec: pb::NodeSpec, message: String) {
        self.failures.insert(spec.name.clone(), (spec, message));
    }

    /// Forgets refusals, so their specs are tried again.
    pub fn clear_failures(&mut self) {
        self.failures.clear();
    }

    /// Whether every input has completed its first list.
    pub fn ready(&self) -> bool {
        self.nodes.synced()
            && self.services.synced()
            && self.secrets.synced()
            && self.config_maps.synced()
            && self.gateway.is_some()
    }

    fn enode_id(&self, cr: &ConsortiumNode) -> Result<Vec<u8>, Problem> {
        let Some(enode) = &cr.spec.enode else {
            return Ok(Vec::new());
        };
        if let Some(key) = &enode.public_key {
            return nodekey::parse_enode_id(key)
                .map(|id| id.to_vec())
                .map_err(|e| Problem::error("InvalidEnode", format!("enode.publicKey: {e}")));
        }
        let Some(r) = &enode.nodekey_secret else {
            return Err(Problem::error(
                "InvalidEnode",
                "enode needs publicKey or nodekeySecret".into(),
            ));
        };
        let key = r.key.as_deref().unwrap_or("nodekey");
        let Some(secret) = self.secrets.get(&r.name) else {
            return Err(Problem::pending(
                "SecretNotFound",
                format!("no Secret {:?} labelled {NODEKEY_LABEL}=true", r.name),
            ));
        };
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
            return Err(Problem::pending(
                "SecretKeyNotFound",
                format!("Secret {:?} has no key {key:?}", r.name),
            ));
        };
        let text = std::str::from_utf8(&bytes.0).unwrap_or_default();
        nodekey::enode_id_from_nodekey(text)
            .map(|id| id.to_vec())
            .map_err(|e| {
                Problem::error(
                    "InvalidNodekey",
                    format!("Secret {:?} key {key:?}: {e}", r.name),
                )
            })
    }

    fn local(&self, cr: &ConsortiumNode) -> Local {
        let name = cr.spec.node_name.clone().unwrap_or_else(|| cr.name_any());
        let service = self.local_service(cr, &name);
        let spec = self.local_spec(cr, &name, service.as_ref());
        Local {
            name,
            spec,
            service,
        }
    }

    /// The node's ports that are set, by name.
    fn spec_ports(cr: &ConsortiumNode) -> Vec<(&str, u16)> {
        let p = &cr.spec.ports;
        [("p2p", p.p2p), ("raft", p.raft), ("tessera", p.tessera)]
            .into_iter()
            .filter_map(|(n, p)| p.filter(|p| *p != 0).map(|p| (n, p)))
            .chain(
                cr.spec
                    .services
                    .iter()
                    .filter(|s| s.port != 0)
                    .map(|s| (s.name.as_str(), s.port)),
            )
            .collect()
    }

    /// The Service made for a `podSelector` (and only one: `service` and `hosts` unset).
    fn local_service(&self, cr: &ConsortiumNode, name: &str) -> Option<Service> {
        let selector = cr.spec.pod_selector.as_ref().filter(|s| !s.is_empty())?;
        let ports = Self::spec_ports(cr);
        if cr.spec.service.is_some()
            || !cr.spec.hosts.is_empty()
            || !is_label(name)
            || ports.is_empty()
        {
            return None;
        }
        Some(Service {
            metadata: ObjectMeta {
                name: Some(service_name(&["node", name])),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(labels(&[
                    (MANAGED_BY, MANAGED_BY_VALUE),
                    (ROLE_LABEL, "local"),
                    (NODE_LABEL, name),
                ])),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(selector.clone()),
                ports: Some(ports.iter().map(|(n, p)| tcp_port(n, *p, *p)).collect()),
                ..Default::default()
            }),
            status: None,
        })
    }

    /// The node's address behind the Service `svc_name`: its ClusterIP, or for a headless
    /// Service its name in the cluster DNS.
    fn service_host(&self, svc_name: &str) -> Result<String, Problem> {
        let Some(svc) = self.services.get(svc_name) else {
            let msg = format!("waiting for Service {svc_name:?}");
            return Err(Problem::pending("ServiceNotFound", msg));
        };
        let declared = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        match (cluster_ip(svc), declared) {
            (Some(ip), _) => Ok(ip.to_owned()),
            // headless: the Service's name in the cluster DNS (the gateway answers a CNAME,
            // which CoreDNS resolves only under the cluster domain)
            (None, Some("None")) => Ok(format!(
                "{svc_name}.{}.svc.{}",
                self.settings.namespace,
                self.settings.cluster_domain.trim_matches('.')
            )),
            (None, _) => {
                let msg = format!("Service {svc_name:?} has no ClusterIP yet");
                Err(Problem::pending("ServiceNotReady", msg))
            }
        }
    }

    fn local_spec(
        &self,
        cr: &ConsortiumNode,
        name: &str,
        made: Option<&Service>,
    ) -> Result<pb::NodeSpec, Problem> {
        let s = &cr.spec;
        if !is_label(name) {
            let msg = format!("node name {name:?} is not a DNS label");
            return Err(Problem::error("InvalidName", msg));
        }
        if Self::spec_ports(cr).is_empty() {
            let msg = "ports: set at least one of p2p, raft, tessera".to_owned();
            return Err(Problem::error("InvalidPorts", msg));
        }
        // the CRD's validation rule refuses this too; a CRD applied before the rule was not
        if s.service.is_some() && s.pod_selector.is_some() {
            let msg = "set service or podSelector, not both".to_owned();
            return Err(Problem::error("InvalidTarget", msg));
        }
        if !s.hosts.is_empty() && (s.service.is_some() || s.pod_selector.is_some()) {
            let msg = "hosts replace service and podSelector: set only one".to_owned();
            return Err(Problem::error("InvalidTarget", msg));
        }
        if s.hosts.len() > MAX_HOSTS {
            let msg = format!(
                "hosts lists {} addresses; at most {MAX_HOSTS}",
                s.hosts.len()
            );
            return Err(Problem::error("InvalidTarget", msg));
        }
        // the Service that reaches the node: named, or made here from a pod selector; or the
        // node's own addresses
        let svc_name = match (&s.service, made, s.hosts.is_empty()) {
            (Some(svc), None, true) => Some(svc.clone()),
            (None, Some(made), true) => Some(made.name_any()),
            (None, None, false) => None,
            _ => {
                let msg = "set exactly one of service, podSelector and hosts".to_owned();
                return Err(Problem::error("InvalidTarget", msg));
            }
        };
        let enode_id = self.enode_id(cr)?;
        if matches!(s.client, Client::Goquorum | Client::Besu) && enode_id.is_empty() {
            let msg = "a GoQuorum or Besu node needs enode".to_owned();
            return Err(Problem::error("InvalidEnode", msg));
        }
        let mut tessera_keys = Vec::new();
        for k in &s.tessera_public_keys {
            match base64::engine::general_purpose::STANDARD.decode(k.trim()) {
                Ok(b) if b.len() == 32 => tessera_keys.push(b),
                _ => {
                    let msg = format!("Tessera public key {k:?} is not base64 of 32 bytes");
                    return Err(Problem::error("InvalidTesseraKey", msg));
                }
            }
        }
        let (host, replica_hosts) = match svc_name {
            Some(svc_name) => (self.service_host(&svc_name)?, vec![]),
            None => {
                let mut hosts = s.hosts.iter().map(|h| h.trim().to_owned());
                // not empty: checked above
                let first = hosts.next().unwrap_or_default();
                (first, hosts.collect())
            }
        };
        let tessera_url = s
            .ports
            .tessera
            .filter(|p| *p != 0)
            .map(|p| {
                let scheme = if s.tessera_tls { "https" } else { "http" };
                format!("{scheme}://{host}:{p}")
            })
            .unwrap_or_default();
        // the gateway keeps the URL in its normal form: send that, so the record compares equal
        let rpc_url = match s.rpc.as_deref().map(str::trim) {
            None | Some("") => String::new(),
            Some(url) => match url.parse::<fedgw_proto::rpc_url::RpcUrl>() {
                Ok(url) => url.to_string(),
                Err(e) => {
                    let msg = format!("rpc {url:?}: {e}");
                    return Err(Problem::error("InvalidRpc", msg));
                }
            },
        };
        Ok(pb::NodeSpec {
            name: name.to_owned(),
            client: client_kind(s.client).into(),
            enode_id,
            host,
            p2p_port: u32::from(s.ports.p2p.unwrap_or(0)),
            raft_port: u32::from(s.ports.raft.unwrap_or(0)),
            raft_id: s.raft_id.unwrap_or(0),
            tessera_keys,
            tessera_url,
            roles: s.roles.clone(),
            allowed_orgs: s.allowed_orgs.clone(),
            rpc_url,
            services: s
                .services
                .iter()
                .map(|p| pb::NamedService {
                    name: p.name.clone(),
                    port: u32::from(p.port),
                })
                .collect(),
            ipfs_peer_id: s.ipfs_peer_id.clone().unwrap_or_default(),
            tls_cert_der: vec![],
            raft_learner: s.raft_learner,
            replica_hosts,
        })
    }

    /// What to write now, or `None` until every input has finished its first list. `now` is
    /// the RFC 3339 time stamped on conditions that change.
    pub fn plan(&self, now: &str) -> Option<Plan> {
        if !self.ready() {
            return None;
        }
        let gw = self.gateway.as_ref()?;
        let mut plan = Plan::default();
        let mut desired_services: BTreeMap<String, Service> = BTreeMap::new();

        // local nodes: one per ConsortiumNode; of several naming the same node, one owns it
        let owners = self.name_owners();
        let mut declared: BTreeSet<String> = BTreeSet::new();
        for (cr_name, cr) in self.nodes.iter() {
            let mut local = self.local(cr);
            declared.insert(local.name.clone());
            let owner = owners.get(&local.name).filter(|o| *o != cr_name);
            if let Some(owner) = owner {
                let msg = format!(
                    "node name {:?} belongs to ConsortiumNode {owner:?}",
                    local.name
                );
                local.spec = Err(Problem::error("NameConflict", msg));
                local.service = None;
            }
            if let Some(svc) = local.service.take() {
                desired_services.insert(svc.name_any(), svc);
            }
            // the gateway's record of this resource's node, if this site publishes it
            let held = gw
                .nodes
                .iter()
                .find(|n| n.org == gw.org && n.name == local.name);
            let held_here = held
                .filter(|h| h.record.as_ref().is_some_and(|r| r.site == gw.site))
                .filter(|_| owner.is_none());
            let outcome: Result<&pb::NodeInfo, Problem> = match (&local.spec, held) {
                (Err(p), _) => Err(p.clone()),
                (Ok(_), Some(h)) if held_here.is_none() => {
                    let site = h
                        .record
                        .as_ref()
                        .map(|r| r.site.clone())
                        .unwrap_or_default();
                    Err(Problem::error(
                        "NameTaken",
                        format!("node {:?} is registered by site {site:?}", local.name),
                    ))
                }
                (Ok(spec), Some(h)) if record_matches(h, spec) => Ok(h),
                (Ok(spec), _) => match self.failures.get(&local.name) {
                    Some((failed, why)) if failed == spec => {
                        Err(Problem::error("GatewayRefused", why.clone()))
                    }
                    _ => {
                        plan.gateway
                            .push(GatewayCall::AddNode(Box::new(spec.clone())));
                        Err(Problem::pending(
                            "Registering",
                            "registering at the gateway".into(),
                        ))
                    }
                },
            };
            if let Some(status) = status_change(cr, outcome, held_here.is_some(), now) {
                plan.statuses.push((cr_name.clone(), status));
            }
        }
        // this site's nodes that no ConsortiumNode declares any more
        for n in &gw.nodes {
            let here = n.record.as_ref().is_some_and(|r| r.site == gw.site);
            if n.org == gw.org && here && !declared.contains(&n.name) {
                plan.gateway.push(GatewayCall::RemoveNode(n.name.clone()));
            }
        }

        // remote nodes: a Service each, and its ClusterIP at the gateway
        for n in gw.nodes.iter().filter(|n| n.org != gw.org) {
            let Some(node) = n.record.as_ref().and_then(|r| Node::try_from(r).ok()) else {
                continue;
            };
            let ports: Vec<ServicePort> = node
                .ports()
                .into_iter()
                .filter_map(|(pname, real)| {
                    let local = n.local_ports.get(&pname).copied()?;
                    let local = u16::try_from(local).ok()?;
                    Some(tcp_port(&pname, real, local))
                })
                .collect();
            let name = service_name(&[&n.org, &n.name]);
            let observed_ip = self
                .services
                .get(&name)
                .filter(|s| is_owned(&s.metadata))
                .and_then(cluster_ip);
            if !ports.is_empty() {
                let svc = Service {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(labels(&[
                            (MANAGED_BY, MANAGED_BY_VALUE),
                            (ROLE_LABEL, "remote"),
                            (ORG_LABEL, &n.org),
                            (NODE_LABEL, &n.name),
                        ])),
                        ..Default::default()
                    },
                    spec: Some(ServiceSpec {
                        type_: Some("ClusterIP".into()),
                        selector: Some(self.settings.gateway_selector.clone()),
                        ports: Some(ports),
                        ..Default::default()
                    }),
                    status: None,
                };
                desired_services.insert(name, svc);
            }
            let want = observed_ip.unwrap_or_default();
            if n.service_ip != want {
                plan.gateway.push(GatewayCall::SetServiceAddress {
                    org: n.org.clone(),
                    name: n.name.clone(),
                    ip: want.to_owned(),
                });
            }
        }

        // Services: apply what differs, delete owned ones nobody wants
        for (name, svc) in &desired_services {
            if !self
                .services
                .get(name)
                .is_some_and(|o| service_matches(svc, o))
            {
                plan.apply_services.push(svc.clone());
            }
        }
        for (name, svc) in self.services.iter() {
            if is_owned(&svc.metadata) && !desired_services.contains_key(name) {
                plan.delete_services.push(name.clone());
            }
        }

        // the rendered files
        let data = self.rendered();
        let current = self
            .config_maps
            .get(&self.settings.config_map)
            .filter(|c| is_owned(&c.metadata))
            .and_then(|c| c.data.as_ref());
        if current != Some(&data) {
            plan.config_map = Some(ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.settings.config_map.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    labels: Some(labels(&[(MANAGED_BY, MANAGED_BY_VALUE)])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            });
        }
        Some(plan)
    }

    /// The ConfigMap data: every renderer's file, from every node in the gateway's view, each
    /// named by its consortium DNS name; and [`FABRIC_PROFILE_FILE`] while the view holds a
    /// Fabric peer or orderer (docs/kubernetes.md "What client pods mount").
    pub fn rendered(&self) -> BTreeMap<String, String> {
        let mut files = self.rendered_chain_files();
        if let Some(profile) = self.fabric_profile() {
            files.insert(FABRIC_PROFILE_FILE.to_owned(), profile);
        }
        files
    }

    /// The common connection profile for a client of this org: every member org with Fabric
    /// nodes, as `fedgw render fabric-connection-profile` writes it. `None` without Fabric
    /// nodes in the view.
    fn fabric_profile(&self) -> Option<String> {
        let gw = self.gateway.as_ref()?;
        let nodes: Vec<_> = gw
            .nodes
            .iter()
            .filter_map(fabric_view::node_facts)
            .collect();
        if nodes.is_empty() {
            return None;
        }
        let c = &gw.consortium;
        let orgs = fabric_view::orgs_from_view(&c.members, &nodes, &c.domain, &c.root_cert_pem);
        // serialising these plain structs does not fail
        connection_profile(&c.name, &gw.org, &orgs, ProfileFormat::Json).ok()
    }

    fn rendered_chain_files(&self) -> BTreeMap<String, String> {
        let nodes: Vec<RenderNode> = self
            .gateway
            .iter()
            .flat_map(|g| g.nodes.iter())
            .filter_map(|n| {
                let node = Node::try_from(n.record.as_ref()?).ok()?;
                let mut r = RenderNode::new(&n.org, &n.name, "", &node);
                if !n.dns_name.is_empty() {
                    r.host = n.dns_name.clone();
                }
                Some(r)
            })
            .collect();
        Kind::ALL
            .iter()
            .map(|(kind, file)| ((*file).to_owned(), kind.render(&nodes)))
            .collect()
    }

    /// Node name → the `ConsortiumNode` that owns it. Of several resources naming one node,
    /// the one whose status shows it registered under that name keeps it, then the oldest,
    /// then the first by resource name; the others are refused (`NameConflict`), so a new
    /// resource never takes over a registered node.
    fn name_owners(&self) -> BTreeMap<String, String> {
        let mut owners: BTreeMap<String, (bool, Option<Time>, &String)> = BTreeMap::new();
        for (cr_name, cr) in self.nodes.iter() {
            let name = cr.spec.node_name.clone().unwrap_or_else(|| cr.name_any());
            let key = (
                !claims(cr, &name),
                cr.metadata.creation_timestamp.clone(),
                cr_name,
            );
            match owners.get(&name) {
                Some(best) if *best <= key => {}
                _ => {
                    owners.insert(name, key);
                }
            }
        }
        owners
            .into_iter()
            .map(|(name, (_, _, cr))| (name, cr.clone()))
            .collect()
    }
}

/// Whether `cr`'s status shows it registered as node `name` (its DNS name starts `name.`).
fn claims(cr: &ConsortiumNode, name: &str) -> bool {
    cr.status
        .as_ref()
        .and_then(|s| s.dns_name.as_deref())
        .and_then(|d| d.split('.').next())
        .is_some_and(|first| first == name)
}

/// One condition, keeping its `lastTransitionTime` from `old` while its status stays.
fn condition(
    old: &ConsortiumNodeStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let time = match old.conditions.iter().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.to_owned(),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: time,
    }
}

/// The status `cr` should have, if it differs from what it has. `outcome` is the gateway's
/// current record of the node or why there is none; `held` says whether the gateway holds a
/// record of this resource's node from this site (perhaps of an older spec).
fn status_change(
    cr: &ConsortiumNode,
    outcome: Result<&pb::NodeInfo, Problem>,
    held: bool,
    now: &str,
) -> Option<ConsortiumNodeStatus> {
    let old = cr.status.clone().unwrap_or_default();
    let generation = cr.metadata.generation;
    let new = match outcome {
        Ok(info) => ConsortiumNodeStatus {
            dns_name: Some(info.dns_name.clone()).filter(|d| !d.is_empty()),
            state: Some("Registered".to_owned()),
            message: None,
            observed_generation: generation,
            conditions: vec![
                condition(
                    &old,
                    READY,
                    true,
                    "Registered",
                    String::new(),
                    generation,
                    now,
                ),
                condition(
                    &old,
                    REGISTERED,
                    true,
                    "Registered",
                    String::new(),
                    generation,
                    now,
                ),
            ],
        },
        Err(p) => {
            let registered = if held {
                let msg = "the gateway still publishes the node as its spec was".to_owned();
                condition(&old, REGISTERED, true, "Registered", msg, generation, now)
            } else {
                condition(
                    &old,
                    REGISTERED,
                    false,
                    p.reason,
                    p.message.clone(),
                    generation,
                    now,
                )
            };
            ConsortiumNodeStatus {
                dns_name: None,
                state: Some(p.state.to_owned()),
                message: Some(p.message.clone()),
                observed_generation: generation,
                conditions: vec![
                    condition(&old, READY, false, p.reason, p.message, generation, now),
                    registered,
                ],
            }
        }
    };
    (new != old).then_some(new)
}

#[cfg(test)]
mod tests;
