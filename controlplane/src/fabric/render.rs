//! Fabric client configs from a small model of the consortium's Fabric orgs (docs/fabric.md
//! "Renderers"): pure functions, byte-stable (orgs, peers and orderers sorted by name), so
//! `fedgw render --out` can write only on change.
//!
//! - [`connection_profile`]: the common connection profile SDKs and gateways read (shape of
//!   fabric-samples' `connection-org1.json`), with every org's peers and orderers at their
//!   consortium names and the TLS CA certificates embedded as PEM;
//! - [`configtx_orgs`]: the `Organizations` section of configtx.yaml (Name, ID, MSPDir,
//!   policies, AnchorPeers, OrdererEndpoints);
//! - [`consenters`]: the etcdraft `Consenters` list with the orderers' TLS certificates as
//!   files beside it (configtxgen reads certificates from files).

use std::collections::BTreeMap;

use serde::Serialize;

/// The default port of a Fabric peer's gRPC service.
pub const DEFAULT_PEER_PORT: u16 = 7051;
/// The default port of a Fabric orderer's gRPC service.
pub const DEFAULT_ORDERER_PORT: u16 = 7050;

/// A Fabric org as the renderers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricOrg {
    /// The fedgw org name (`org2`).
    pub name: String,
    /// Its Fabric MSP ID (`Org2MSP`), checked by [`super::validate_msp_id`].
    pub msp_id: String,
    /// PEM of the CA(s) a client trusts for this org's TLS servers (the consortium root).
    pub tls_ca_pem: String,
    /// Its peers.
    pub peers: Vec<FabricPeer>,
    /// Its orderers.
    pub orderers: Vec<FabricOrderer>,
}

/// A peer at its consortium name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricPeer {
    /// `<node>.<org>.<domain>`.
    pub host: String,
    /// The peer's gRPC port ([`DEFAULT_PEER_PORT`] when the record names none).
    pub port: u16,
    /// Listed under AnchorPeers. When no peer of an org is marked, all its peers are listed.
    pub anchor: bool,
}

/// An orderer at its consortium name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricOrderer {
    /// `<node>.<org>.<domain>`.
    pub host: String,
    /// The orderer's gRPC port ([`DEFAULT_ORDERER_PORT`] when the record names none).
    pub port: u16,
    /// Its TLS certificate (PEM), which etcdraft uses as the consenter's identity; `None` when
    /// not published yet.
    pub tls_cert_pem: Option<String>,
}

fn sorted(orgs: &[FabricOrg]) -> Vec<FabricOrg> {
    let mut orgs = orgs.to_vec();
    orgs.sort_by(|a, b| a.name.cmp(&b.name));
    for org in &mut orgs {
        org.peers.sort_by(|a, b| a.host.cmp(&b.host));
        org.orderers.sort_by(|a, b| a.host.cmp(&b.host));
    }
    orgs
}

/// Output format of the connection profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    /// Pretty JSON, two-space indent, newline at the end.
    Json,
    /// YAML.
    Yaml,
}

/// Errors from rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// serde_json failed (not expected for these types).
    #[error("cannot encode the connection profile as JSON")]
    Json(#[source] serde_json::Error),
    /// serde_yaml failed (not expected for these types).
    #[error("cannot encode the connection profile as YAML")]
    Yaml(#[source] serde_yaml::Error),
}

#[derive(Serialize)]
struct Profile<'a> {
    name: &'a str,
    version: &'static str,
    client: ProfileClient<'a>,
    organizations: BTreeMap<&'a str, ProfileOrg<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    orderers: BTreeMap<&'a str, ProfileNode<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    peers: BTreeMap<&'a str, ProfileNode<'a>>,
}

#[derive(Serialize)]
struct ProfileClient<'a> {
    organization: &'a str,
}

#[derive(Serialize)]
struct ProfileOrg<'a> {
    mspid: &'a str,
    peers: Vec<&'a str>,
}

#[derive(Serialize)]
struct ProfileNode<'a> {
    url: String,
    #[serde(rename = "tlsCACerts")]
    tls_ca_certs: Pem<'a>,
    #[serde(rename = "grpcOptions")]
    grpc_options: GrpcOptions<'a>,
}

#[derive(Serialize)]
struct Pem<'a> {
    pem: &'a str,
}

#[derive(Serialize)]
struct GrpcOptions<'a> {
    #[serde(rename = "ssl-target-name-override")]
    target_name: &'a str,
}

fn profile_node<'a>(host: &'a str, port: u16, tls_ca_pem: &'a str) -> ProfileNode<'a> {
    ProfileNode {
        url: format!("grpcs://{host}:{port}"),
        tls_ca_certs: Pem { pem: tls_ca_pem },
        grpc_options: GrpcOptions { target_name: host },
    }
}

/// The common connection profile named `name` for a client of `client_org`: every org with its
/// MSP ID and peers, every peer and orderer at `grpcs://<host>:<port>` with its org's TLS CA
/// PEM and `ssl-target-name-override` set to the same consortium name.
pub fn connection_profile(
    name: &str,
    client_org: &str,
    orgs: &[FabricOrg],
    format: ProfileFormat,
) -> Result<String, RenderError> {
    let orgs = sorted(orgs);
    let mut profile = Profile {
        name,
        version: "1.0.0",
        client: ProfileClient {
            organization: client_org,
        },
        organizations: BTreeMap::new(),
        orderers: BTreeMap::new(),
        peers: BTreeMap::new(),
    };
    for org in &orgs {
        profile.organizations.insert(
            &org.name,
            ProfileOrg {
                mspid: &org.msp_id,
                peers: org.peers.iter().map(|p| p.host.as_str()).collect(),
            },
        );
        for p in &org.peers {
            profile
                .peers
                .insert(&p.host, profile_node(&p.host, p.port, &org.tls_ca_pem));
        }
        for o in &org.orderers {
            profile
                .orderers
                .insert(&o.host, profile_node(&o.host, o.port, &org.tls_ca_pem));
        }
    }
    match format {
        ProfileFormat::Json => serde_json::to_string_pretty(&profile)
            .map(|s| s + "\n")
            .map_err(RenderError::Json),
        ProfileFormat::Yaml => serde_yaml::to_string(&profile).map_err(RenderError::Yaml),
    }
}

/// The `Organizations:` section of configtx.yaml, one `- &<MSP ID>` entry per org, shaped
/// like fabric-samples' configtx.yaml (four-space indent). `MSPDir` is
/// `<msp_root>/<org>/msp`, where `fedgw cert fabric-org-msp` writes each org's verifying MSP.
///
/// Policies (NodeOU roles): Readers `admin`, `peer`, `client` (and `orderer` for an org with
/// orderers); Writers `admin`, `client` (and `orderer`); Admins `admin`; Endorsement `peer`.
/// AnchorPeers: the peers marked anchor, or all of them; OrdererEndpoints: every orderer.
pub fn configtx_orgs(orgs: &[FabricOrg], msp_root: &str) -> String {
    use std::fmt::Write;
    let mut out = String::from("Organizations:\n");
    for org in sorted(orgs) {
        let id = &org.msp_id;
        let has_orderers = !org.orderers.is_empty();
        let mut readers = vec!["admin", "peer", "client"];
        let mut writers = vec!["admin", "client"];
        if has_orderers {
            readers.push("orderer");
            writers.push("orderer");
        }
        let rule = |roles: &[&str]| {
            let parts: Vec<String> = roles.iter().map(|r| format!("'{id}.{r}'")).collect();
            format!("OR({})", parts.join(", "))
        };
        // writing to a String cannot fail
        let _ = writeln!(out, "    - &{id}");
        let _ = writeln!(out, "        Name: {id}");
        let _ = writeln!(out, "        ID: {id}");
        let _ = writeln!(out, "        MSPDir: {msp_root}/{}/msp", org.name);
        let _ = writeln!(out, "        Policies:");
        for (policy, roles) in [
            ("Readers", readers.as_slice()),
            ("Writers", writers.as_slice()),
            ("Admins", &["admin"][..]),
            ("Endorsement", &["peer"][..]),
        ] {
            let _ = writeln!(out, "            {policy}:");
            let _ = writeln!(out, "                Type: Signature");
            let _ = writeln!(out, "                Rule: \"{}\"", rule(roles));
        }
        if has_orderers {
            let _ = writeln!(out, "        OrdererEndpoints:");
            for o in &org.orderers {
                let _ = writeln!(out, "            - {}:{}", o.host, o.port);
            }
        }
        let marked: Vec<&FabricPeer> = org.peers.iter().filter(|p| p.anchor).collect();
        let anchors = if marked.is_empty() {
            org.peers.iter().collect()
        } else {
            marked
        };
        if !anchors.is_empty() {
            let _ = writeln!(out, "        AnchorPeers:");
            for p in anchors {
                let _ = writeln!(out, "            - Host: {}", p.host);
                let _ = writeln!(out, "              Port: {}", p.port);
            }
        }
    }
    out
}

/// The etcdraft consenter list and the certificate files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consenters {
    /// `Consenters:` YAML for configtx.yaml's `Orderer.EtcdRaft`.
    pub yaml: String,
    /// (path relative to the YAML file's directory, PEM) of each orderer's TLS certificate.
    pub files: Vec<(String, String)>,
    /// Orderers left out because their TLS certificate is not published yet.
    pub missing: Vec<String>,
}

/// The etcdraft `Consenters:` list: every orderer with a published TLS certificate, `Host` and
/// `Port` its consortium name and port, `ClientTLSCert` and `ServerTLSCert` both
/// `<cert_dir>/<host>-tls.pem` (an orderer uses one TLS pair for both ends of cluster
/// connections).
pub fn consenters(orgs: &[FabricOrg], cert_dir: &str) -> Consenters {
    use std::fmt::Write;
    let mut yaml = String::from("Consenters:\n");
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for org in sorted(orgs) {
        for o in &org.orderers {
            let Some(pem) = &o.tls_cert_pem else {
                missing.push(o.host.clone());
                continue;
            };
            let file = format!("{cert_dir}/{}-tls.pem", o.host);
            // writing to a String cannot fail
            let _ = writeln!(yaml, "    - Host: {}", o.host);
            let _ = writeln!(yaml, "      Port: {}", o.port);
            let _ = writeln!(yaml, "      ClientTLSCert: {file}");
            let _ = writeln!(yaml, "      ServerTLSCert: {file}");
            files.push((file, pem.clone()));
        }
    }
    if files.is_empty() {
        yaml = String::from("Consenters: []\n");
    }
    Consenters {
        yaml,
        files,
        missing,
    }
}

#[cfg(test)]
mod tests;
