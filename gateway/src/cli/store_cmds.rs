//! `fedgw store rebuild`: the way back from a damaged `store.redb`. The file is moved aside,
//! whatever still reads from it (table by table) goes into a fresh store, and the membership
//! view is fetched again from the peers: every record is signed and every peer holds it. The
//! new store is built beside the old file and replaces it only when complete (a failed rebuild
//! changes nothing). The command reports what it kept and what was lost with the file.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fedgw_certs::tls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CliError, DataDirArg, exit, usage};
use crate::datadir::DataDir;
use crate::membership::bootstrap::{self, BootstrapError, Until};
use crate::membership::dialer::{self, DialerTls};
use crate::membership::{GatewayId, Membership};
use crate::provision;
use crate::store::{self, Member, Salvage, Store, StoreError};

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Move a damaged store.redb aside and rebuild it: keep what still reads (this site's node
    /// addresses, invites, allocations), fetch the membership records again from the peers
    /// (`[[peers]]` in fedgw.toml, the gateways the old file still names, and --peer), and
    /// say what was lost. The gateway must be stopped. Exit 15 if no peer answers in time.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// Another gateway to fetch the records from, ORG/SITE=HOST:PORT (repeatable).
    #[arg(long = "peer", value_name = "ORG/SITE=HOST:PORT", value_parser = parse_peer)]
    peers: Vec<(GatewayId, String)>,
    /// Bound on fetching the records from the peers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Rebuild even a store that opens cleanly.
    #[arg(long)]
    force: bool,
}

fn parse_peer(s: &str) -> Result<(GatewayId, String), String> {
    let (id, endpoint) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ORG/SITE=HOST:PORT"))?;
    let id: GatewayId = id
        .parse()
        .map_err(|e: fedgw_certs::ids::IdError| e.to_string())?;
    crate::config::validate_advertise(endpoint)?;
    Ok((id, endpoint.to_owned()))
}

pub(crate) async fn store(cmd: StoreCommand) -> Result<(), CliError> {
    match cmd {
        StoreCommand::Rebuild(args) => rebuild(args).await,
    }
}

async fn rebuild(args: RebuildArgs) -> Result<(), CliError> {
    let dir = DataDir::new(args.dir.data_dir.clone());
    if dir.admin_socket().exists() && crate::admin::connect(&dir.admin_socket()).await.is_ok() {
        return Err(usage(format!(
            "a gateway is running on {}: stop it first",
            dir.root().display()
        )));
    }
    let loaded = provision::load(&dir).map_err(|e| CliError::new(exit::USAGE, e))?;
    let path = dir.store();
    let salvage = if path.exists() {
        match Store::open(&path) {
            Ok(_) if !args.force => {
                return Err(usage(format!(
                    "{} opens cleanly: nothing to rebuild (--force rebuilds it anyway)",
                    path.display()
                )));
            }
            Err(e @ StoreError::Locked) => return Err(CliError::new(exit::FAILURE, e)),
            Ok(_) | Err(_) => {}
        }
        Some(salvage_copy(&dir)?)
    } else {
        None
    };
    // the new store is built beside the old one and replaces it only once it is complete: a
    // failed rebuild leaves the data dir as it was
    let building = dir.root().join("store.redb.rebuild");
    let _ = std::fs::remove_file(&building);
    let result = build(
        &dir,
        &loaded,
        &building,
        salvage.as_ref(),
        (args.peers, args.timeout),
    )
    .await;
    let (records, agreed) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&building);
            return Err(e);
        }
    };
    let aside = path.with_file_name(format!(
        "store.redb.damaged-{}",
        store::unix(SystemTime::now())
    ));
    if path.exists() {
        std::fs::rename(&path, &aside)
            .with_context(|| format!("moving {} aside", path.display()))?;
    }
    std::fs::rename(&building, &path)
        .with_context(|| format!("moving the rebuilt store to {}", path.display()))?;
    outln!(
        "rebuilt {}: {records} records, the same view as {}",
        path.display(),
        agreed.join(", ")
    )?;
    match &salvage {
        Some(salvage) => {
            outln!("the damaged file is kept as {}", aside.display())?;
            report(salvage)
        }
        None => outln!("there was no store file: this site's local state starts empty"),
    }
}

/// Builds the new store at `path`: what `salvage` kept, then the records from the peers, then
/// the admissions ledger from the view. Returns the record count and the peers in agreement.
async fn build(
    dir: &DataDir,
    loaded: &provision::Loaded,
    path: &std::path::Path,
    salvage: Option<&Salvage>,
    (peers, timeout): (Vec<(GatewayId, String)>, Duration),
) -> Result<(usize, Vec<String>), CliError> {
    let fresh = Arc::new(Store::open(path).map_err(|e| CliError::new(exit::FAILURE, e))?);
    if let Some(salvage) = salvage {
        fresh
            .restore(salvage)
            .map_err(|e| CliError::new(exit::FAILURE, e))?;
    }
    let (fetched, agreed) = fetch(dir, loaded, fresh.clone(), peers, timeout).await?;
    refill_ledger(&fresh, &fetched).map_err(|e| CliError::new(exit::FAILURE, e))?;
    let records = fetched.read(crate::membership::view::View::len);
    // the file closes once the last holder is gone, before it is renamed into place
    drop(fetched);
    drop(fresh);
    Ok((records, agreed))
}

/// Salvages a copy of `store.redb` (redb may repair the file it opens; the original stays as
/// it was until it is moved aside).
fn salvage_copy(dir: &DataDir) -> Result<Salvage, CliError> {
    let path = dir.store();
    let copy = dir.root().join(".store.redb.salvage");
    std::fs::copy(&path, &copy).with_context(|| format!("copying {}", path.display()))?;
    let salvage = store::salvage(&copy);
    let _ = std::fs::remove_file(&copy);
    Ok(salvage)
}

/// Runs the membership subsystem and its dialer until a peer's view digest equals this one's;
/// returns it and the peers in agreement.
async fn fetch(
    dir: &DataDir,
    loaded: &provision::Loaded,
    store: Arc<Store>,
    extra: Vec<(GatewayId, String)>,
    timeout: Duration,
) -> Result<(Membership, Vec<String>), CliError> {
    let mut cfg = crate::app::membership_config(&loaded.config);
    for (id, endpoint) in extra {
        cfg.bootstrap.push((id, vec![endpoint]));
    }
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let membership = Membership::open(
        cfg,
        store,
        crate::app::membership_keys(loaded).map_err(|e| CliError::new(exit::FAILURE, e))?,
        crate::metrics::Metrics::new(),
        tracker.clone(),
        shutdown.clone(),
    )
    .map_err(|e| CliError::new(exit::FAILURE, e))?;
    let provider = tls::provider();
    let (leaf, _) = provision::current_leaf(dir, loaded, SystemTime::now())
        .map_err(|e| CliError::new(exit::FAILURE, e))?;
    let identity = tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &provider)
        .context("loading the gateway certificate")?;
    tracker.spawn(dialer::run(
        membership.clone(),
        DialerTls {
            identity,
            root: loaded.root_cert.clone(),
            domain: loaded.config.domain.clone(),
            revoked: membership.revocation().set().clone(),
            // a rebuild fetches records from any peer: the check is for serving, not this
            issued: fedgw_certs::IssuedSet::default(),
        },
    ));
    let result = bootstrap::wait(&membership, Until::CaughtUp, Some(timeout)).await;
    let agreed = membership.peers_in_sync();
    shutdown.cancel();
    membership.close_all();
    tracker.close();
    let _ = tokio::time::timeout(crate::app::SHUTDOWN_GRACE, tracker.wait()).await;
    result.map_err(|e| match e {
        BootstrapError::NoPeers { .. } => CliError::new(
            exit::USAGE,
            anyhow::Error::new(e).context("give a peer with --peer ORG/SITE=HOST:PORT"),
        ),
        e @ BootstrapError::TimedOut { .. } => CliError::new(exit::UNREACHABLE, e),
        e => CliError::new(exit::FAILURE, e),
    })?;
    Ok((membership, agreed))
}

/// Puts every member of the view that the admissions ledger lacks into it (the root holder's
/// join service refuses to admit an org twice by this ledger).
fn refill_ledger(store: &Store, m: &Membership) -> Result<(), StoreError> {
    let have: std::collections::BTreeSet<String> =
        store.members()?.into_iter().map(|m| m.org).collect();
    let missing: Vec<Member> = m.read(|v| {
        let gateways = v.gateways();
        v.members()
            .into_iter()
            .filter(|(org, _)| !have.contains(org))
            .map(|(org, rec)| {
                let gw = gateways.iter().find(|(id, _)| id.org == org);
                Member {
                    org_ca_pem: fedgw_certs::pki::certs_to_pem(&[rec.org_ca_der.clone().into()]),
                    site: gw.map(|(id, _)| id.site.clone()).unwrap_or_default(),
                    advertise: gw.map(|(_, g)| g.advertise.clone()).unwrap_or_default(),
                    admitted_unix: u64::try_from(rec.admitted_unix).unwrap_or(0),
                    org,
                }
            })
            .collect()
    });
    for member in &missing {
        store.put_member(member)?;
    }
    Ok(())
}

/// Prints what the damaged file still gave and what went with it.
fn report(s: &Salvage) -> Result<(), CliError> {
    let lines = [
        (
            s.local_nodes.as_ref().map(|m| m.len()),
            "this site's node addresses",
            "register the nodes again (`fedgw node add` / `node import`; in Kubernetes the \
             controller does)",
        ),
        (
            s.local_urls.as_ref().map(|m| m.len()),
            "this site's nodes' Tessera URLs",
            "register the Tessera nodes again",
        ),
        (
            s.local_rpc.as_ref().map(|m| m.len()),
            "this site's nodes' RPC endpoints",
            "register the nodes again with --rpc",
        ),
        (
            s.allocations.as_ref().map(|a| a.nodes.len()),
            "local addresses of remote nodes",
            "new ones are allocated at start: clients that cached the old ones must resolve \
             the names again",
        ),
        (
            s.service_addresses.as_ref().map(|m| m.len()),
            "Service addresses of remote nodes",
            "the Kubernetes controller sets them again",
        ),
        (
            s.invites.as_ref().map(Vec::len),
            "invites",
            "open invites are gone: create new ones with `fedgw invite`",
        ),
        (
            s.records.as_ref().map(Vec::len),
            "membership records",
            "fetched from the peers instead",
        ),
    ];
    outln!("kept: fedgw.toml, keys and certificates")?;
    for (count, what, remedy) in lines {
        match count {
            Some(c) => outln!("kept: {c} {what}")?,
            None => outln!("lost: {what} (unreadable in the damaged file): {remedy}")?,
        }
    }
    Ok(())
}
