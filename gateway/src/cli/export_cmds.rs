//! `fedgw export k8s`: the Secret the Kubernetes gateway pods read (layout:
//! `deploy/k8s/secret-layout.yaml`, guide: `docs/kubernetes.md`), from a data dir that
//! `fedgw init` or `fedgw join` wrote. Its `fedgw.toml` is edited for a pod: listen on every
//! address, port mode for remote nodes, no root key unless asked, and every gateway this data
//! dir knows as `[[peers]]`, so a pod that starts with an empty store knows whom to fetch the
//! membership from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{AdminDirArg, CliError, exit, usage};
use crate::config::{Config, PeerConfig};
use crate::datadir::DataDir;
use crate::provision;

#[derive(Debug, Subcommand)]
pub(crate) enum ExportCommand {
    /// Print the Secret `fedgw-org` for the gateway pods: fedgw.toml edited for a pod (listen
    /// on 0.0.0.0, port mode, every known gateway as [[peers]]), root-ca.pem, org-ca.pem and
    /// org-ca.key. It holds the org CA key: apply it, never commit it.
    K8s(K8sArgs),
}

#[derive(Debug, Args)]
pub(crate) struct K8sArgs {
    #[command(flatten)]
    dir: AdminDirArg,
    /// The namespace the gateway runs in.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The Secret's name (the Deployment in deploy/k8s mounts `fedgw-org`).
    #[arg(long, default_value = "fedgw-org")]
    name: String,
    /// Gateway port listen address in the pod.
    #[arg(long, default_value = "0.0.0.0:7443", value_name = "ADDR")]
    listen: SocketAddr,
    /// DNS listen address in the pod.
    #[arg(long, default_value = "0.0.0.0:5353", value_name = "ADDR")]
    dns: SocketAddr,
    /// Metrics and health listen address in the pod.
    #[arg(long, default_value = "0.0.0.0:9464", value_name = "ADDR")]
    metrics: SocketAddr,
    /// First port of the range remote nodes get in the pod (port mode).
    #[arg(long, default_value_t = 40000, value_name = "PORT")]
    first_port: u16,
    /// Last port of that range.
    #[arg(long, default_value_t = 40999, value_name = "PORT")]
    last_port: u16,
    /// Put root-ca.key (and genesis.json) in the Secret too, so the pods admit new orgs. The
    /// root key is the consortium's: keep it out of the cluster unless this is needed (the
    /// Deployment must then mount those files too).
    #[arg(long)]
    include_root_key: bool,
    /// Write here (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(crate) async fn export(cmd: ExportCommand) -> Result<(), CliError> {
    match cmd {
        ExportCommand::K8s(args) => k8s(args).await,
    }
}

async fn k8s(a: K8sArgs) -> Result<(), CliError> {
    fedgw_certs::names::validate_label("namespace", &a.namespace).map_err(usage)?;
    fedgw_certs::names::validate_label("name", &a.name).map_err(usage)?;
    let dir = DataDir::new(a.dir.data_dir.clone());
    let loaded = provision::load(&dir).map_err(|e| CliError::new(exit::USAGE, e))?;
    if a.include_root_key && loaded.root_ca.is_none() {
        return Err(usage(format!(
            "{} holds no root key to include",
            dir.root().display()
        )));
    }
    let gateways = known_gateways(&a.dir, &dir, &loaded).await?;
    let config = pod_config(&loaded.config, &a, gateways);
    config.validate().map_err(usage)?;

    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let mut files = BTreeMap::new();
    files.insert("fedgw.toml".to_owned(), config.to_toml());
    files.insert("root-ca.pem".to_owned(), read(dir.root_cert())?);
    files.insert("org-ca.pem".to_owned(), read(dir.org_cert())?);
    files.insert("org-ca.key".to_owned(), read(dir.org_key())?);
    if a.include_root_key {
        files.insert("root-ca.key".to_owned(), read(dir.root_key())?);
        if config.genesis_sha256.is_some() {
            files.insert("genesis.json".to_owned(), read(dir.genesis())?);
        }
    }
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": a.name,
            "namespace": a.namespace,
            "labels": {"app.kubernetes.io/name": "fedgw"},
        },
        "type": "Opaque",
        "stringData": files,
    });
    let yaml = serde_yaml::to_string(&secret).context("writing YAML")?;
    let text = format!(
        "# fedgw export k8s from {} ({}/{}): holds the org CA key; apply it, never commit it\n{yaml}",
        dir.root().display(),
        config.org,
        config.site
    );
    match &a.out {
        Some(path) => crate::datadir::write_atomic(path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))?,
        None => crate::cli::write_out(format_args!("{text}"))?,
    }
    Ok(())
}

/// Every gateway of the view but this one: from the running gateway's admin API, or from the
/// store when it is down.
pub(super) async fn known_gateways(
    args: &AdminDirArg,
    dir: &DataDir,
    loaded: &provision::Loaded,
) -> Result<Vec<PeerConfig>, CliError> {
    let me = loaded.config.gateway_id();
    if let Some(mut admin) = super::admin_conn::connect_if_running(args).await {
        let members = admin_call!(admin, list_members(fedgw_proto::v1::ListMembersRequest {}));
        return Ok(members
            .members
            .into_iter()
            .filter(|m| m.status == "active")
            .flat_map(|m| {
                m.gateways.into_iter().map(move |g| PeerConfig {
                    org: m.org.clone(),
                    site: g.site,
                    replica: g.replica,
                    advertise: g.advertise,
                })
            })
            .filter(|p| p.id() != me)
            .collect());
    }
    let store = std::sync::Arc::new(crate::store::Store::open(&dir.store()).map_err(|e| {
        let code = match e {
            crate::store::StoreError::Damaged { .. } => exit::STORE_DAMAGED,
            _ => exit::FAILURE,
        };
        CliError::new(code, e)
    })?);
    let tracker = tokio_util::task::TaskTracker::new();
    let m = crate::membership::Membership::open(
        crate::app::membership_config(&loaded.config),
        store,
        crate::app::membership_keys(loaded).map_err(|e| CliError::new(exit::FAILURE, e))?,
        crate::metrics::Metrics::new(),
        tracker,
        tokio_util::sync::CancellationToken::new(),
    )
    .map_err(|e| CliError::new(exit::FAILURE, e))?;
    Ok(m.read(|v| {
        v.gateways()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, g)| PeerConfig {
                org: id.org,
                site: id.site,
                replica: id.replica,
                advertise: g.advertise,
            })
            .collect()
    }))
}

/// `config` as a pod runs it: the pod's listen addresses, port mode, root key only if asked,
/// genesis only with it (only the root holder hands it out), and `gateways` (plus any listed
/// peers they do not cover) as `[[peers]]`.
fn pod_config(config: &Config, a: &K8sArgs, gateways: Vec<PeerConfig>) -> Config {
    let mut c = config.clone();
    c.listen = a.listen;
    c.dns = a.dns;
    c.metrics = a.metrics;
    c.addresses = crate::addressing::AddressMode::Port {
        ip: IpAddr::from([0, 0, 0, 0]),
        first_port: a.first_port,
        last_port: a.last_port,
    };
    c.root_holder = a.include_root_key;
    if !a.include_root_key {
        c.genesis_sha256 = None;
    }
    let mut peers = gateways;
    for p in &config.peers {
        if !peers.iter().any(|q| q.id() == p.id()) {
            peers.push(p.clone());
        }
    }
    peers.sort_by_key(PeerConfig::id);
    c.peers = peers;
    c
}
