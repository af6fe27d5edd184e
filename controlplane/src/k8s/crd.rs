//! The `ConsortiumNode` custom resource (`consortiumnodes.fedgw.io/v1alpha1`, namespaced): one
//! chain node of this org that runs in this namespace, as the controller registers it at the
//! gateway. `fedgw-controlplane crdgen` prints the CRD; `deploy/k8s/crd/crd.yaml` holds it.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The validation rule (CEL, `x-kubernetes-validations`) on `spec` that makes the API server
/// refuse a resource naming both a Service and a pod selector.
pub const ONE_TARGET_RULE: &str = "!(has(self.service) && has(self.podSelector))";

/// The validation rule on `spec` that makes the API server refuse `hosts` beside a Service or
/// a pod selector: `hosts` names the node's addresses itself.
pub const HOSTS_ALONE_RULE: &str =
    "!(has(self.hosts) && (has(self.service) || has(self.podSelector)))";

/// Most addresses `hosts` may list: the gateway's limit on a node's replicas.
pub const MAX_HOSTS: usize = 8;

/// Drops schemars' `format: uint16`/`uint32` from integer properties: they are not formats
/// Kubernetes knows (the API server warns about each), and `minimum`/`maximum` already bound
/// the values.
fn no_uint_formats(schema: &mut schemars::Schema) {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    map.remove("format");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.values_mut().for_each(walk);
    }
}

/// A chain node of this org (docs/DESIGN.md section 10).
///
/// Its consortium name is `<nodeName>.<org>.<domain>`; the gateway publishes its signed node
/// record and answers DNS for it with the address of `service` (or of the Service the
/// controller creates for `podSelector`).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[kube(
    group = "fedgw.io",
    version = "v1alpha1",
    kind = "ConsortiumNode",
    namespaced,
    status = "ConsortiumNodeStatus",
    shortname = "cnode",
    category = "fedgw",
    printcolumn = r#"{"name":"Client","type":"string","jsonPath":".spec.client"}"#,
    printcolumn = r#"{"name":"DNS","type":"string","jsonPath":".status.dnsName"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[x_kube(validation = Rule::new(ONE_TARGET_RULE).message("set service or podSelector, not both"))]
#[x_kube(validation = Rule::new(HOSTS_ALONE_RULE).message("hosts replace service and podSelector: set only one"))]
#[schemars(transform = no_uint_formats)]
#[serde(rename_all = "camelCase")]
pub struct ConsortiumNodeSpec {
    /// The node's name in the consortium (a DNS label); defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The chain client the node runs.
    pub client: Client,
    /// A Service in this namespace that reaches the node: its ClusterIP (or, for a headless
    /// Service, its DNS name) becomes the node's real address at this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Instead of `service`: labels of the node's Pod(s); the controller creates a ClusterIP
    /// Service `fedgw-node-<nodeName>` selecting them, with the ports below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<BTreeMap<String, String>>,
    /// Instead of `service` or `podSelector`: the node's addresses at this site (IPs or DNS
    /// names, at most 8), for a node that runs as several replicas behind one consortium name
    /// (Tessera instances, a GoQuorum HA pair; each a pod of a StatefulSet, say). The first is
    /// the node's address; the gateway dials another when one fails, as with `fedgw node add
    /// --host A --host B`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = MAX_HOSTS))]
    pub hosts: Vec<String>,
    /// The node's real ports.
    #[serde(default)]
    pub ports: NodePorts,
    /// The raft id (GoQuorum raft), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_id: Option<u32>,
    /// The enode public key, for devp2p nodes (GoQuorum, Besu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enode: Option<Enode>,
    /// Tessera public keys (base64 of 32 bytes each, as in Tessera's `.pub` files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tessera_public_keys: Vec<String>,
    /// Tessera's P2P listener speaks TLS (`https://`); default `http://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tessera_tls: bool,
    /// Free-form roles (validator, bootnode, ...), published with the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Access policy: the orgs allowed to reach the node; empty means every member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_orgs: Vec<String>,
    /// The node's JSON-RPC endpoint as the gateway reaches it, `http://HOST:PORT[/PATH]` (for a
    /// Tessera node: its ADMIN server), checked as `fedgw node add --rpc` checks it. Kept at this
    /// site, never published; the gateway uses it for live peering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    /// Named TCP services besides `ports` (a Fabric peer's `peer`, an IPFS Cluster peer's
    /// `cluster`): each gets a listener at the other sites and a `_<name>._tcp` SRV record.
    /// Names are lowercase SRV service names of at most 15 bytes, unique, at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<NamedPort>,
    /// The IPFS Cluster peer id (base58, `12D3KooW...`), for `client: ipfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipfs_peer_id: Option<String>,
    /// GoQuorum raft: join the cluster as a learner (`raft_addLearner`), promoted to a voting
    /// peer once caught up, as `fedgw node add --raft-learner`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raft_learner: bool,
}

/// A named TCP service of a node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_uint_formats)]
#[serde(rename_all = "camelCase")]
pub struct NamedPort {
    /// The service name (`peer`, `cluster`, ...).
    pub name: String,
    /// The node's real port.
    pub port: u16,
}

/// A chain client.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
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

/// A node's real ports (TCP); an absent port is not served.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_uint_formats)]
#[serde(rename_all = "camelCase")]
pub struct NodePorts {
    /// devp2p (GoQuorum/Besu default 30303).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<u16>,
    /// raft (GoQuorum default 50400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<u16>,
    /// Tessera P2P (default 9000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tessera: Option<u16>,
}

/// Where the enode public key comes from: inline, or derived from the node's private key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enode {
    /// The enode id: 128 hex digits (the uncompressed secp256k1 public key without its 0x04
    /// prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// A Secret in this namespace holding the node's `nodekey` (64 hex digits, as geth and
    /// GoQuorum write it); the Secret must carry the label `fedgw.io/nodekey: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodekey_secret: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its data (default `nodekey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What the controller last saw of a node; written whole, and only when it changes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsortiumNodeStatus {
    /// `<node>.<org>.<domain>`, while `state` is `Registered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// `Registered`, `Pending` (waiting for its Service, Secret or the gateway) or `Error`
    /// (the resource is invalid; see `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the node is not registered, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The resource generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions `Ready` (registered as the current spec says) and `Registered` (the gateway
    /// publishes the node, perhaps as an older spec said), as the Kubernetes API conventions
    /// describe them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition, as Kubernetes' `metav1.Condition`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type (`Ready`, `Registered`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// A human-readable message.
    #[serde(default)]
    pub message: String,
    /// The resource generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The fields of [`ConsortiumNodeStatus`], as serialized.
const STATUS_FIELDS: [&str; 5] = [
    "dnsName",
    "state",
    "message",
    "observedGeneration",
    "conditions",
];

impl ConsortiumNodeStatus {
    /// The `status` subresource's JSON merge patch (RFC 7386) that makes the stored status
    /// exactly this one: `{"status": {...}}` with every field, the absent ones as `null` (a
    /// merge patch keeps what it leaves out; `null` removes it).
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut status = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = status.as_object_mut() {
            for field in STATUS_FIELDS {
                map.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        serde_json::json!({ "status": status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_status_patch_names_every_field_of_the_schema() {
        let crd = serde_json::to_value(ConsortiumNode::crd()).expect("json");
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"];
        let mut in_schema: Vec<&str> = props
            .as_object()
            .expect("status properties")
            .keys()
            .map(String::as_str)
            .collect();
        in_schema.sort_unstable();
        let mut listed = STATUS_FIELDS.to_vec();
        listed.sort_unstable();
        assert_eq!(in_schema, listed);
        let patch = ConsortiumNodeStatus::default().merge_patch();
        for f in STATUS_FIELDS {
            assert!(patch["status"][f].is_null(), "{f}: {patch}");
        }
        // conditions are replaced whole (a merge patch replaces arrays)
        let s = ConsortiumNodeStatus {
            state: Some("Registered".into()),
            ..Default::default()
        };
        assert_eq!(s.merge_patch()["status"]["state"], "Registered");
    }

    #[test]
    fn the_crd_refuses_two_targets_and_has_no_uint_formats() {
        let text = serde_json::to_string(&ConsortiumNode::crd()).expect("json");
        assert!(text.contains(&serde_json::to_string(ONE_TARGET_RULE).expect("json")));
        assert!(!text.contains("uint"), "{text}");
        assert!(text.contains(r#""maximum":65535"#), "port bounds stay");
    }
}
