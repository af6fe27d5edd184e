//! Fabric MSP folders from the org CA (docs/fabric.md "MSP folders").
//!
//! A local MSP (what a peer, orderer, client or admin reads as `mspConfigPath`) and the org's
//! verifying MSP (the `MSPDir` configtx.yaml points at) are built as lists of [`MspFile`]s, then
//! written by [`write_files`]. The layout follows Fabric's cryptogen and fabric-ca output:
//!
//! ```text
//! msp/cacerts/root-ca.pem                  consortium root (the only MSP root)
//! msp/intermediatecerts/<org>-ca.pem       the org CA (name-constrained to <org>.<domain>)
//! msp/tlscacerts/root-ca.pem               same root, for TLS
//! msp/tlsintermediatecerts/<org>-ca.pem    same org CA, for TLS
//! msp/signcerts/<node>.<org>.<domain>-cert.pem   signing identity, OU=<role>   (local only)
//! msp/keystore/priv_sk                     its key, PKCS#8 PEM, 0600             (local only)
//! msp/config.yaml                          NodeOUs enabled, certified by the org CA
//! tls/server.crt, tls/server.key, tls/ca.crt   TLS pair (leaf + org CA) and root (local only)
//! ```
//!
//! The org MSP has the same files without `msp/` and without signcerts, keystore and tls.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedgw_certs::names;
use fedgw_certs::pki::{self, CertificateAuthority, PkiError};
use rustls_pki_types::CertificateDer;

/// A Fabric NodeOU role: what the identity's certificate carries in `OU=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A peer (`OU=peer`).
    Peer,
    /// An orderer (`OU=orderer`).
    Orderer,
    /// An application client (`OU=client`).
    Client,
    /// An org admin (`OU=admin`).
    Admin,
}

impl Role {
    /// The OrganizationalUnitIdentifier of this role in `config.yaml` and the certificate.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Orderer => "orderer",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// One file of an MSP folder: a path relative to the output directory, its bytes and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MspFile {
    /// Relative path, `/`-separated (e.g. `msp/cacerts/root-ca.pem`).
    pub path: PathBuf,
    /// The file's contents.
    pub contents: Vec<u8>,
    /// Unix mode (0600 for private keys, 0644 otherwise).
    pub mode: u32,
}

impl MspFile {
    fn public(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
            mode: 0o644,
        }
    }
}

/// Errors from building or writing an MSP folder.
#[derive(Debug, thiserror::Error)]
pub enum MspError {
    /// The node name is not a DNS label, or the certificate could not be issued.
    #[error("cannot issue the Fabric identity")]
    Issue(#[source] PkiError),
    /// The node name is not a DNS label.
    #[error("node name is not valid")]
    Name(#[source] names::NameError),
    /// The lifetime is zero.
    #[error("--lifetime must be longer than zero")]
    ZeroLifetime,
    /// An output file exists and replacing was not asked for.
    #[error("{} exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// A directory or file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The CA side of an MSP: the consortium root and this org's CA.
#[derive(Debug, Clone, Copy)]
pub struct Cas<'a> {
    /// The consortium root certificate.
    pub root: &'a CertificateDer<'static>,
    /// This org's CA certificate (issued by the root).
    pub org_ca: &'a CertificateDer<'static>,
    /// This org's name.
    pub org: &'a str,
}

/// What a local MSP is issued for.
#[derive(Debug, Clone)]
pub struct LocalMspRequest<'a> {
    /// The node's name (a DNS label): names are `<node>.<org>.<domain>`.
    pub node: &'a str,
    /// Its NodeOU role.
    pub role: Role,
    /// The consortium domain.
    pub domain: &'a str,
    /// Validity of the signing and TLS certificates from `now`.
    pub lifetime: Duration,
    /// The issue time.
    pub now: SystemTime,
}

/// File name of the root in `cacerts` and `tlscacerts`.
pub const ROOT_FILE: &str = "root-ca.pem";

/// File name of the org CA in `intermediatecerts` and `tlsintermediatecerts`.
pub fn org_ca_file(org: &str) -> String {
    format!("{org}-ca.pem")
}

/// `config.yaml` of an MSP whose identities are certified by the org CA: NodeOUs enabled, each
/// role's `Certificate` the org CA in `intermediatecerts`, so Fabric also checks that an
/// identity's chain passes through it (its certifiers identifier).
pub fn config_yaml(org: &str) -> String {
    let cert = format!("intermediatecerts/{}", org_ca_file(org));
    let mut out = String::from("NodeOUs:\n  Enable: true\n");
    for (key, ou) in [
        ("ClientOUIdentifier", "client"),
        ("PeerOUIdentifier", "peer"),
        ("AdminOUIdentifier", "admin"),
        ("OrdererOUIdentifier", "orderer"),
    ] {
        out.push_str(&format!(
            "  {key}:\n    Certificate: {cert}\n    OrganizationalUnitIdentifier: {ou}\n"
        ));
    }
    out
}

/// The verifying part shared by local and org MSPs, under `prefix` (`msp/` or empty).
fn verifying_files(cas: &Cas<'_>, prefix: &str) -> Vec<MspFile> {
    let root = pki::certs_to_pem(std::slice::from_ref(cas.root));
    let org_ca = pki::certs_to_pem(std::slice::from_ref(cas.org_ca));
    let org_file = org_ca_file(cas.org);
    vec![
        MspFile::public(format!("{prefix}cacerts/{ROOT_FILE}"), root.clone()),
        MspFile::public(
            format!("{prefix}intermediatecerts/{org_file}"),
            org_ca.clone(),
        ),
        MspFile::public(format!("{prefix}tlscacerts/{ROOT_FILE}"), root),
        MspFile::public(format!("{prefix}tlsintermediatecerts/{org_file}"), org_ca),
        MspFile::public(format!("{prefix}config.yaml"), config_yaml(cas.org)),
    ]
}

/// The org's verifying MSP (no keys): what every channel member uses to check this org's
/// identities.
pub fn org_msp_files(cas: &Cas<'_>) -> Vec<MspFile> {
    verifying_files(cas, "")
}

/// A node's local MSP and TLS pair, freshly issued from `org_ca` (which must be the CA in
/// `cas`). The signing identity is `CN=<node>.<org>.<domain>, OU=<role>` with that DNS SAN; the
/// TLS certificate has the same SAN, serverAuth and clientAuth.
pub fn local_msp_files(
    org_ca: &CertificateAuthority,
    cas: &Cas<'_>,
    req: &LocalMspRequest<'_>,
) -> Result<Vec<MspFile>, MspError> {
    names::validate_label("node", req.node).map_err(MspError::Name)?;
    if req.lifetime.is_zero() {
        return Err(MspError::ZeroLifetime);
    }
    let name = format!("{}.{}", req.node, names::org_subtree(cas.org, req.domain));
    let dns = std::slice::from_ref(&name);
    let sign = org_ca
        .issue_fabric_identity(
            dns,
            req.role.ou(),
            cas.org,
            req.domain,
            req.lifetime,
            req.now,
        )
        .map_err(MspError::Issue)?;
    let tls = org_ca
        .issue_node_leaf(dns, cas.org, req.domain, req.lifetime, req.now)
        .map_err(MspError::Issue)?;
    let mut files = verifying_files(cas, "msp/");
    // signcerts holds the identity alone: Fabric serializes the first certificate of the file
    let sign_leaf = sign.chain.first().map(std::slice::from_ref).unwrap_or(&[]);
    files.push(MspFile::public(
        format!("msp/signcerts/{name}-cert.pem"),
        pki::certs_to_pem(sign_leaf),
    ));
    files.push(MspFile {
        path: "msp/keystore/priv_sk".into(),
        contents: crate::provision::pem_key(&sign.key).into_bytes(),
        mode: 0o600,
    });
    files.push(MspFile::public(
        "tls/server.crt",
        pki::certs_to_pem(&tls.chain),
    ));
    files.push(MspFile {
        path: "tls/server.key".into(),
        contents: crate::provision::pem_key(&tls.key).into_bytes(),
        mode: 0o600,
    });
    files.push(MspFile::public(
        "tls/ca.crt",
        pki::certs_to_pem(std::slice::from_ref(cas.root)),
    ));
    Ok(files)
}

/// Writes `files` under `out_dir`, creating missing directories with mode 0700, each file
/// atomically with its mode. Without `force`, refuses (before writing anything) when any of
/// the files exists.
pub fn write_files(out_dir: &Path, files: &[MspFile], force: bool) -> Result<(), MspError> {
    if !force
        && let Some(existing) = files
            .iter()
            .map(|f| out_dir.join(&f.path))
            .find(|p| p.exists())
    {
        return Err(MspError::Exists(existing));
    }
    for file in files {
        let path = out_dir.join(&file.path);
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        for dir in dirs.into_iter().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                crate::datadir::create_private_dir(dir).map_err(|source| MspError::Write {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
        crate::datadir::write_atomic(&path, &file.contents, file.mode)
            .map_err(|source| MspError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
