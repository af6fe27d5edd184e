//! `fedgw cert fabric-msp`, `fedgw cert fabric-org-msp` and `fedgw render fabric-*`: Fabric
//! MSP folders from the org CA and Fabric configs from the view (docs/fabric.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use fedgw_certs::pki;
use fedgw_proto::v1 as pb;

use super::admin_conn::connect;
use super::{AdminDirArg, CliError, exit, usage};
use crate::datadir::DataDir;
use crate::fabric::msp::{self, Cas, LocalMspRequest, MspError, Role};
use crate::fabric::render::{self, ProfileFormat};
use crate::fabric::view;
use crate::provision;

/// `--role` values of `fedgw cert fabric-msp`: the NodeOU in the signing certificate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// A peer (OU=peer).
    Peer,
    /// An orderer (OU=orderer).
    Orderer,
    /// An application client (OU=client).
    Client,
    /// An org admin (OU=admin).
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Peer => Role::Peer,
            RoleArg::Orderer => Role::Orderer,
            RoleArg::Client => Role::Client,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// `--format` values of `fedgw render fabric-connection-profile`.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum FormatArg {
    /// JSON.
    #[default]
    Json,
    /// YAML.
    Yaml,
}

fn msp_err(e: MspError) -> CliError {
    let code = match e {
        MspError::Write { .. } => exit::FAILURE,
        _ => exit::USAGE,
    };
    CliError::new(code, e)
}

/// `fedgw cert fabric-msp NODE --role ROLE --out-dir DIR`: writes DIR/msp and DIR/tls, then
/// publishes a cert record for the signing and the TLS certificate (certificate transparency).
pub async fn fabric_msp(
    data_dir: PathBuf,
    node: &str,
    role: RoleArg,
    lifetime: Duration,
    out_dir: &Path,
    force: bool,
) -> Result<(), CliError> {
    let loaded = provision::load(&DataDir::new(data_dir.clone()))
        .map_err(|e| CliError::new(exit::USAGE, e))?;
    let org = &loaded.config.org;
    let cas = Cas {
        root: &loaded.root_cert,
        org_ca: loaded.org_ca.cert(),
        org,
    };
    let req = LocalMspRequest {
        node,
        role: role.into(),
        domain: &loaded.config.domain,
        lifetime,
        now: SystemTime::now(),
    };
    let files = msp::local_msp_files(&loaded.org_ca, &cas, &req).map_err(msp_err)?;
    msp::write_files(out_dir, &files, force).map_err(msp_err)?;
    let msp_id = loaded
        .config
        .fabric_msp_id
        .clone()
        .unwrap_or_else(|| crate::fabric::default_msp_id(org));
    outln!(
        "wrote the Fabric MSP of {node}.{org}.{} (OU={}, MSP ID {msp_id}) to {}",
        loaded.config.domain,
        Role::from(role).ou(),
        out_dir.display()
    )?;
    outln!("  msp/   CORE_PEER_MSPCONFIGPATH / ORDERER_GENERAL_LOCALMSPDIR (keystore mode 0600)")?;
    outln!("  tls/   server.crt (leaf and org CA), server.key (mode 0600), ca.crt (root)")?;
    // the signing identity and the TLS leaf: the first certificate of each file
    for f in files
        .iter()
        .filter(|f| f.path.starts_with("msp/signcerts/") || f.path == Path::new("tls/server.crt"))
    {
        let text = String::from_utf8_lossy(&f.contents);
        let Some(der) = fedgw_certs::pki::certs_from_pem(&text)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            continue;
        };
        let serial = super::cert_cmds::publish(data_dir.clone(), &der).await?;
        outln!("  published cert record {serial} ({})", f.path.display())?;
    }
    Ok(())
}

/// `fedgw cert fabric-org-msp --out-dir DIR`: the org's verifying MSP (no keys).
pub fn fabric_org_msp(data_dir: PathBuf, out_dir: &Path, force: bool) -> Result<(), CliError> {
    let loaded =
        provision::load(&DataDir::new(data_dir)).map_err(|e| CliError::new(exit::USAGE, e))?;
    let cas = Cas {
        root: &loaded.root_cert,
        org_ca: loaded.org_ca.cert(),
        org: &loaded.config.org,
    };
    msp::write_files(out_dir, &msp::org_msp_files(&cas), force).map_err(msp_err)?;
    outln!(
        "wrote the verifying MSP of {} to {} (the MSPDir of configtx.yaml)",
        loaded.config.org,
        out_dir.display()
    )?;
    Ok(())
}

/// Which Fabric config `fedgw render` makes.
#[derive(Debug, Clone, Copy)]
pub enum FabricRender {
    /// The common connection profile.
    ConnectionProfile(FormatArg),
    /// configtx.yaml `Organizations`.
    ConfigtxOrgs,
    /// The etcdraft consenter list.
    Consenters,
}

/// Where configtx.yaml's `MSPDir`s point: `<MSP_ROOT>/<org>/msp`.
const MSP_ROOT: &str = "organizations";
/// Where the consenters' TLS certificates go, beside the consenter list.
const CONSENTER_CERT_DIR: &str = "consenters";

/// `fedgw render fabric-*`: reads members and nodes from the running gateway, builds the orgs
/// with [`view::orgs_from_view`] and renders; with `out`, writes atomically and only on change.
pub async fn render(
    what: FabricRender,
    args: &AdminDirArg,
    out: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    let config =
        crate::config::Config::load(&dir.config()).map_err(|e| CliError::new(exit::USAGE, e))?;
    let root_pem = std::fs::read_to_string(dir.root_cert()).map_err(|e| {
        CliError::new(
            exit::USAGE,
            anyhow::anyhow!("cannot read {}: {e}", dir.root_cert().display()),
        )
    })?;
    // one certificate, re-encoded, whatever else the file holds
    let root = pki::certs_from_pem(&root_pem).map_err(|e| {
        CliError::new(
            exit::USAGE,
            anyhow::anyhow!("{}: {e}", dir.root_cert().display()),
        )
    })?;
    let root_pem = pki::certs_to_pem(&root[..1]);
    let mut admin = connect(args).await?;
    let members = admin_call!(admin, list_members(pb::ListMembersRequest {})).members;
    let nodes = admin_call!(admin, list_nodes(pb::ListNodesRequest {})).nodes;
    let members = view::member_facts(&members);
    let nodes: Vec<_> = nodes.iter().filter_map(view::node_facts).collect();
    let orgs = view::orgs_from_view(&members, &nodes, &config.domain, &root_pem);
    let text = match what {
        FabricRender::ConnectionProfile(format) => {
            let format = match format {
                FormatArg::Json => ProfileFormat::Json,
                FormatArg::Yaml => ProfileFormat::Yaml,
            };
            render::connection_profile(&config.consortium, &config.org, &orgs, format)
                .map_err(|e| CliError::new(exit::FAILURE, e))?
        }
        FabricRender::ConfigtxOrgs => render::configtx_orgs(&orgs, MSP_ROOT),
        FabricRender::Consenters => {
            let Some(path) = &out else {
                return Err(usage(
                    "render fabric-consenters writes the orderers' TLS certificates beside the \
                     list: pass --out FILE",
                ));
            };
            let c = render::consenters(&orgs, CONSENTER_CERT_DIR);
            for host in &c.missing {
                eprintln!("{host}: no TLS certificate published yet; left out of the consenters");
            }
            let base = path.parent().unwrap_or(Path::new("."));
            for (rel, pem) in &c.files {
                super::write_if_changed(&base.join(rel), pem.as_bytes())?;
            }
            c.yaml
        }
    };
    match out {
        None => super::write_out(format_args!("{text}")),
        Some(path) => {
            let changed = super::write_if_changed(&path, text.as_bytes())?;
            if json {
                super::print_written(&path, changed)?;
            }
            Ok(())
        }
    }
}
