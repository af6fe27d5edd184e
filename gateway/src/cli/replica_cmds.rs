//! `fedgw replica add` and `fedgw replica join`: a further gateway for this site
//! ([`crate::replica`], docs/DESIGN.md section 14).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use fedgw_proto::v1 as pb;

use super::admin_conn::connect_if_running;
use super::{AdminDirArg, CliError, exit, usage};
use crate::backup::{self, Contents};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::membership::GatewayId;
use crate::replica::{self, KnownReplica, ReplicaError};
use crate::store::{SNAPSHOT_FORMAT, Snapshot};

/// `fedgw replica add` and `fedgw replica join`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReplicaCommand {
    /// On a gateway of this site: write an encrypted bundle for a new replica NAME (the org CA,
    /// the root certificate, the consortium settings, the lowest unused replica index and the
    /// gateways to dial, its siblings first). Keep it offline: it holds the org CA key.
    Add {
        /// The new replica's name (a DNS label, unique within the site).
        name: String,
        /// Where other gateways reach the new replica, `host:port` (repeatable).
        #[arg(long, value_name = "HOST:PORT", required = true)]
        advertise: Vec<String>,
        /// The bundle to write (created 0600; an existing file is replaced).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        dir: AdminDirArg,
        /// Read the passphrase from the first line of this file [default: prompt on the
        /// terminal].
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// On the new replica's host: write a data dir from a bundle of `fedgw replica add`; then
    /// `fedgw run --data-dir DIR` (it issues its leaf and fills its store from its siblings).
    Join {
        /// The bundle `fedgw replica add` wrote.
        file: PathBuf,
        /// The data dir to create (must not hold a fedgw file yet).
        #[arg(long, visible_alias = "dir", value_name = "DIR")]
        data_dir: PathBuf,
        /// Gateway port listen address [default: as on the replica that wrote the bundle].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// DNS listen address [default: as on the replica that wrote the bundle].
        #[arg(long, value_name = "ADDR")]
        dns: Option<std::net::SocketAddr>,
        /// Metrics listen address [default: as on the replica that wrote the bundle].
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Read the passphrase from the first line of this file [default: prompt on the
        /// terminal].
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

/// Runs a [`ReplicaCommand`].
pub(crate) async fn replica(command: ReplicaCommand) -> Result<(), CliError> {
    match command {
        ReplicaCommand::Add {
            name,
            advertise,
            out,
            dir,
            passphrase_file,
        } => add(&dir, &name, advertise, &out, passphrase_file.as_deref()).await,
        ReplicaCommand::Join {
            file,
            data_dir,
            listen,
            dns,
            metrics,
            passphrase_file,
        } => join(
            &file,
            &DataDir::new(data_dir),
            (listen, dns, metrics),
            passphrase_file.as_deref(),
        ),
    }
}

fn replica_error(e: ReplicaError) -> CliError {
    let code = match e {
        ReplicaError::Name(_) | ReplicaError::Taken(_) | ReplicaError::Config(_) => exit::USAGE,
        ReplicaError::Full | ReplicaError::NotABundle(_) => exit::FAILURE,
    };
    CliError::new(code, e)
}

/// This site's replicas as the view knows them, this gateway with its endpoints as bound.
async fn known_replicas(
    args: &AdminDirArg,
    dir: &DataDir,
    loaded: &crate::provision::Loaded,
) -> Result<Vec<KnownReplica>, CliError> {
    let config = &loaded.config;
    let me = config.gateway_id();
    // the running gateway holds the store: then its view comes over the admin socket, with
    // its own endpoints as bound (an advertised port 0 is the port bound at run time)
    let (own_advertise, records) = match connect_if_running(args).await {
        Some(mut admin) => {
            let status = admin_call!(admin, status(pb::StatusRequest {}));
            let own = status.advertise.into_iter().map(|a| a.endpoint).collect();
            (own, admin_replicas(&mut admin).await?)
        }
        None => {
            let store = crate::store::Store::open(&dir.store()).with_context(|| {
                format!("opening {} (no gateway is running)", dir.store().display())
            })?;
            (config.advertise.clone(), view_replicas(store, loaded)?)
        }
    };
    let mut out = vec![KnownReplica {
        id: me.clone(),
        index: config.replica_index,
        advertise: own_advertise,
    }];
    for r in records {
        if r.id != me && r.id.same_site(&me) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The site's replicas from the store (the gateway is down).
fn view_replicas(
    store: crate::store::Store,
    loaded: &crate::provision::Loaded,
) -> Result<Vec<KnownReplica>, CliError> {
    let m = crate::membership::Membership::open(
        crate::app::membership_config(&loaded.config),
        std::sync::Arc::new(store),
        crate::app::membership_keys(loaded).map_err(|e| CliError::new(exit::FAILURE, e))?,
        crate::metrics::Metrics::new(),
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    )
    .map_err(|e| CliError::new(exit::FAILURE, e))?;
    let me = loaded.config.gateway_id();
    Ok(m.read(|v| {
        v.replicas_of(&me)
            .into_iter()
            .map(|(id, g)| KnownReplica {
                id,
                index: u8::try_from(g.replica_index).unwrap_or(u8::MAX),
                advertise: g.advertise,
            })
            .collect()
    }))
}

/// The site's replicas from the running gateway's member list.
async fn admin_replicas(
    admin: &mut super::admin_conn::Admin,
) -> Result<Vec<KnownReplica>, CliError> {
    let members = admin_call!(admin, list_members(pb::ListMembersRequest {}));
    Ok(members
        .members
        .into_iter()
        .flat_map(|m| {
            m.gateways.into_iter().map(move |g| KnownReplica {
                id: GatewayId::replica(m.org.clone(), g.site, g.replica),
                index: u8::try_from(g.replica_index).unwrap_or(u8::MAX),
                advertise: g.advertise,
            })
        })
        .collect())
}

async fn add(
    args: &AdminDirArg,
    name: &str,
    advertise: Vec<String>,
    out: &Path,
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    let dir = DataDir::new(args.data_dir.clone());
    let loaded = crate::provision::load(&dir).map_err(|e| match e {
        crate::provision::ProvisionError::Config(_) => {
            usage(format!("{e} (is --data-dir a gateway's data dir?)"))
        }
        e => CliError::new(exit::FAILURE, e),
    })?;
    let replicas = known_replicas(args, &dir, &loaded).await?;
    let others = super::export_cmds::known_gateways(args, &dir, &loaded).await?;
    let config = replica::new_replica_config(&loaded.config, name, advertise, &replicas, &others)
        .map_err(replica_error)?;
    let passphrase = super::backup_cmds::passphrase(passphrase_file, true)?;
    let mut files = std::collections::BTreeMap::new();
    files.insert("fedgw.toml".to_owned(), config.to_toml().into_bytes());
    for (file, _) in &replica::BUNDLE_FILES[1..] {
        let path = dir.root().join(file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert((*file).to_owned(), bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *file == "genesis.json" => {}
            Err(e) => {
                return Err(CliError::new(
                    exit::FAILURE,
                    anyhow::Error::new(e).context(format!("reading {}", path.display())),
                ));
            }
        }
    }
    let contents = Contents {
        files,
        store: Snapshot {
            format: SNAPSHOT_FORMAT,
            tables: Default::default(),
        },
    };
    super::backup_cmds::write_archive(out, &contents, &passphrase, &config)?;
    outln!(
        "wrote {}: replica {} (index {}) of {}; on its host: fedgw replica join {} --data-dir DIR; it holds the org CA key, keep it offline",
        out.display(),
        config.replica,
        config.replica_index,
        config.gateway_id().site_id(),
        out.display()
    )
}

fn join(
    file: &Path,
    dir: &DataDir,
    (listen, dns, metrics): (
        Option<std::net::SocketAddr>,
        Option<std::net::SocketAddr>,
        Option<std::net::SocketAddr>,
    ),
    passphrase_file: Option<&Path>,
) -> Result<(), CliError> {
    let (archive, passphrase) =
        super::backup_cmds::open_archive(file, dir, "bundle", passphrase_file)?;
    let contents = backup::open(&archive, passphrase.as_bytes())
        .map_err(|e| CliError::new(exit::FAILURE, e))?;
    let mut config: Config = replica::check_bundle(&contents.files).map_err(replica_error)?;
    config.listen = listen.unwrap_or(config.listen);
    config.dns = dns.unwrap_or(config.dns);
    config.metrics = metrics.unwrap_or(config.metrics);
    config
        .validate()
        .map_err(|e| usage(format!("the replica's configuration: {e}")))?;
    dir.create_fresh()
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let written = (|| -> Result<(), CliError> {
        for (name, secret) in &replica::BUNDLE_FILES[1..] {
            let Some(bytes) = contents.files.get(*name) else {
                continue;
            };
            let path = dir.root().join(name);
            let w = if *secret {
                dir.write_secret(&path, bytes)
            } else {
                dir.write_public(&path, bytes)
            };
            w.with_context(|| format!("writing {}", path.display()))?;
        }
        dir.create_store_file()
            .with_context(|| format!("creating {}", dir.store().display()))?;
        // fedgw.toml last: its presence marks a complete data dir
        dir.write_public(&dir.config(), config.to_toml().as_bytes())
            .with_context(|| format!("writing {}", dir.config().display()))?;
        Ok(())
    })();
    if let Err(e) = written {
        for (name, _) in replica::BUNDLE_FILES {
            let _ = std::fs::remove_file(dir.root().join(name));
        }
        let _ = std::fs::remove_file(dir.store());
        return Err(e);
    }
    outln!(
        "joined {} as replica {} (index {}) in {}; start it with `fedgw run --data-dir {}`",
        config.gateway_id().site_id(),
        config.replica,
        config.replica_index,
        dir.root().display(),
        dir.root().display()
    )
}
