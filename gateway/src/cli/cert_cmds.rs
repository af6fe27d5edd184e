//! `fedgw cert issue`: TLS certificates for this org's nodes (Tessera P2P, Fabric peers and
//! orderers), issued offline from the org CA in the data dir (docs/DESIGN.md section 4).
//!
//! The leaf names the node as every site resolves it, `<node>.<org>.<domain>`, so a TLS client
//! that reaches the node through a gateway's local listener verifies the name it dialled
//! against the consortium root. The org CA's name constraint keeps every name under
//! `<org>.<domain>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use fedgw_certs::{names, pki};

use super::{CliError, DataDirArg, exit, usage};
use crate::datadir::{DataDir, create_private_dir, write_atomic};
use crate::provision;

/// `fedgw cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a TLS certificate for one of this org's nodes from the org CA: a fresh P-256 key,
    /// DNS SAN <NAME>.<org>.<domain> (plus any --dns), serverAuth and clientAuth. Writes
    /// <NAME>.crt (leaf and org CA, PEM), <NAME>.key (PKCS#8 PEM, mode 0600) and ca.crt (the
    /// consortium root, the trust anchor for peers).
    Issue {
        /// The node's name, a DNS label (as in `fedgw node add NAME`).
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Another DNS name for the certificate, under <org>.<domain> (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Where to write the files (created with mode 0700 if missing; an existing directory
        /// keeps its mode).
        #[arg(long, default_value = ".", value_name = "DIR")]
        out_dir: PathBuf,
        /// Replace existing files of the same names.
        #[arg(long)]
        force: bool,
        /// Print one JSON object (dns_names, not_after, cert, key, ca, serial) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a Fabric local MSP for one of this org's nodes, issued from the org CA: DIR/msp
    /// (cacerts: the consortium root; intermediatecerts: the org CA; signcerts: a P-256
    /// identity CN=NAME.<org>.<domain>, OU=ROLE; keystore/priv_sk, mode 0600; tlscacerts,
    /// tlsintermediatecerts; config.yaml with NodeOUs) and DIR/tls (server.crt, server.key,
    /// ca.crt). See docs/fabric.md.
    FabricMsp {
        /// The node's name, a DNS label (as in `fedgw node add NAME`).
        name: String,
        /// The NodeOU of the signing identity.
        #[arg(long, value_enum)]
        role: super::fabric_cmds::RoleArg,
        #[command(flatten)]
        dir: DataDirArg,
        /// How long the signing and TLS certificates are valid (Fabric does not renew them).
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Where to write msp/ and tls/ (directories are created with mode 0700).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Replace existing files (a new key and certificates).
        #[arg(long)]
        force: bool,
    },
    /// Write this org's verifying Fabric MSP (no keys): cacerts, intermediatecerts,
    /// tlscacerts, tlsintermediatecerts and config.yaml, the MSPDir of configtx.yaml.
    FabricOrgMsp {
        #[command(flatten)]
        dir: DataDirArg,
        /// Where to write the MSP (created with mode 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `cert` subcommand.
pub async fn cert(command: CertCommand) -> Result<(), CliError> {
    match command {
        CertCommand::Issue {
            name,
            dir,
            dns,
            lifetime,
            out_dir,
            force,
            json,
        } => {
            let data_dir = dir.data_dir.clone();
            let issued = issue(&IssueRequest {
                dir: DataDir::new(dir.data_dir),
                name,
                extra_dns: dns,
                lifetime,
                out_dir,
                force,
                now: SystemTime::now(),
            })?;
            if json {
                let serial = publish(data_dir, &issued.der).await?;
                let v = serde_json::json!({
                    "dns_names": issued.dns_names,
                    "not_after": humantime::format_rfc3339_seconds(issued.not_after).to_string(),
                    "cert": issued.cert.display().to_string(),
                    "key": issued.key.display().to_string(),
                    "ca": issued.ca.display().to_string(),
                    "serial": serial,
                });
                outln!("{v}")?;
                return Ok(());
            }
            outln!(
                "issued {} (valid until {})",
                issued.dns_names.join(", "),
                humantime::format_rfc3339_seconds(issued.not_after)
            )?;
            outln!(
                "  certificate  {}  (leaf and org CA)",
                issued.cert.display()
            )?;
            outln!("  key          {}  (mode 0600)", issued.key.display())?;
            outln!(
                "  trust root   {}  (consortium root CA)",
                issued.ca.display()
            )?;
            let serial = publish(data_dir, &issued.der).await?;
            outln!("  published    cert record {serial} (certificate transparency)")?;
            Ok(())
        }
        CertCommand::FabricMsp {
            name,
            role,
            dir,
            lifetime,
            out_dir,
            force,
        } => {
            super::fabric_cmds::fabric_msp(dir.data_dir, &name, role, lifetime, &out_dir, force)
                .await
        }
        CertCommand::FabricOrgMsp {
            dir,
            out_dir,
            force,
        } => super::fabric_cmds::fabric_org_msp(dir.data_dir, &out_dir, force),
    }
}

/// What `fedgw cert issue` was asked for.
#[derive(Debug)]
pub struct IssueRequest {
    /// The data dir holding `fedgw.toml`, `org-ca.pem`, `org-ca.key` and `root-ca.pem`.
    pub dir: DataDir,
    /// The node's name: the first DNS SAN is `<name>.<org>.<domain>`.
    pub name: String,
    /// More DNS SANs, each under `<org>.<domain>`.
    pub extra_dns: Vec<String>,
    /// Validity from `now`.
    pub lifetime: Duration,
    /// Output directory, created with mode 0700 if missing.
    pub out_dir: PathBuf,
    /// Overwrite existing output files.
    pub force: bool,
    /// The issue time.
    pub now: SystemTime,
}

/// What was written.
#[derive(Debug)]
pub struct Issued {
    /// The certificate's DNS SANs, the node name first.
    pub dns_names: Vec<String>,
    /// `<out>/<name>.crt`.
    pub cert: PathBuf,
    /// `<out>/<name>.key`.
    pub key: PathBuf,
    /// `<out>/ca.crt`.
    pub ca: PathBuf,
    /// End of validity.
    pub not_after: SystemTime,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// Publishes the cert record of an issued certificate: through the running gateway's admin
/// socket, or into the store while the gateway is stopped (it loads the record at its next
/// start). Returns the serial.
pub(super) async fn publish(data_dir: PathBuf, der: &[u8]) -> Result<String, CliError> {
    let admin_dir = super::AdminDirArg {
        data_dir: data_dir.clone(),
        admin_timeout: Duration::from_secs(30),
    };
    if let Some(mut admin) = super::admin_conn::connect_if_running(&admin_dir).await {
        let resp = admin_call!(
            admin,
            publish_cert(fedgw_proto::v1::PublishCertRequest {
                cert_der: der.to_vec(),
            })
        );
        return Ok(resp.serial);
    }
    let dir = DataDir::new(data_dir);
    let loaded = provision::load(&dir).map_err(|e| CliError::new(exit::USAGE, e))?;
    let store = crate::store::Store::open(&dir.store()).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            anyhow::Error::new(e).context(
                "the certificate was written but its cert record was not published; run `fedgw cert issue --force` again",
            ),
        )
    })?;
    crate::membership::certs::publish_offline(
        &store,
        &loaded.org_ca,
        &loaded.root_cert,
        &loaded.config.domain,
        &loaded.config.org,
        der,
    )
    .map_err(|e| CliError::new(exit::FAILURE, e))
}

/// Issues the certificate and writes the three files. Errors (exit 64) for a bad name, a name
/// outside the org, a lifetime of zero, or existing files without `force`; nothing is written
/// then.
pub fn issue(req: &IssueRequest) -> Result<Issued, CliError> {
    names::validate_label("node", &req.name).map_err(usage)?;
    if req.lifetime.is_zero() {
        return Err(usage("--lifetime must be longer than zero"));
    }
    let loaded = provision::load(&req.dir).map_err(|e| CliError::new(exit::USAGE, e))?;
    let (org, domain) = (&loaded.config.org, &loaded.config.domain);
    let mut dns_names = vec![format!("{}.{}", req.name, names::org_subtree(org, domain))];
    for extra in &req.extra_dns {
        let extra = extra.trim_end_matches('.').to_ascii_lowercase();
        if !dns_names.contains(&extra) {
            dns_names.push(extra);
        }
    }
    let cert = req.out_dir.join(format!("{}.crt", req.name));
    let key = req.out_dir.join(format!("{}.key", req.name));
    let ca = req.out_dir.join("ca.crt");
    let ca_pem = pki::certs_to_pem(std::slice::from_ref(&loaded.root_cert));
    // certificates of several nodes share one ca.crt: the same root is no conflict
    let same_ca = std::fs::read(&ca).is_ok_and(|have| have == ca_pem.as_bytes());
    if !req.force {
        let mut outputs = [&cert, &key, &ca].into_iter();
        if let Some(existing) = outputs.find(|p| p.exists() && !(*p == &ca && same_ca)) {
            return Err(usage(format!(
                "{} exists; pass --force to replace it",
                existing.display()
            )));
        }
    }
    let leaf = loaded
        .org_ca
        .issue_node_leaf(&dns_names, org, domain, req.lifetime, req.now)
        .map_err(usage)?;
    create_private_dir(&req.out_dir).map_err(|e| write_err(&req.out_dir, e))?;
    write_atomic(&key, provision::pem_key(&leaf.key).as_bytes(), 0o600)
        .map_err(|e| write_err(&key, e))?;
    write_atomic(&cert, pki::certs_to_pem(&leaf.chain).as_bytes(), 0o644)
        .map_err(|e| write_err(&cert, e))?;
    if !same_ca {
        write_atomic(&ca, ca_pem.as_bytes(), 0o644).map_err(|e| write_err(&ca, e))?;
    }
    Ok(Issued {
        dns_names,
        cert,
        key,
        ca,
        not_after: leaf.not_after,
        der: leaf.chain[0].to_vec(),
    })
}

fn write_err(path: &Path, e: std::io::Error) -> CliError {
    CliError::new(
        exit::FAILURE,
        anyhow::anyhow!("cannot write {}: {e}", path.display()),
    )
}
