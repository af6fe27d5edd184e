//! `fedgw run`: the one place that knows every subsystem. It loads the data dir, binds every
//! listener (gateway port, metrics, admin socket), starts the servers as tracked tasks, writes
//! `DIR/run.json`, and on shutdown drains them with a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fedgw_certs::PeerVerifier;
use fedgw_certs::tls::{self, ReloadableIdentity};
use fedgw_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminService};
use crate::datadir::DataDir;
use crate::federation::FederationService;
use crate::join::limiter::JoinLimiter;
use crate::join::server::JoinService;
use crate::listener::{self, Dispatch, TlsConn};
use crate::membership::bootstrap::{self, BootstrapError, Until};
use crate::membership::dialer::{self, DialerTls};
use crate::membership::{Keys, Membership, MembershipConfig, SignAs};
use crate::metrics::{self, Metrics};
use crate::provision::{self, Loaded, ProvisionError};
use crate::store::{self, Store, StoreError};
use crate::tunnel::{Transport, TunnelSetup, TunnelTls, Tunnels};

mod console;
mod servers;

/// How long running tasks get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bound of the queues between the TLS acceptor and the gRPC servers.
const ACCEPT_QUEUE: usize = 64;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data dir is incomplete or invalid.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another gateway already serves this data dir.
    #[error("another fedgw is already running on {0} (its admin socket answers)")]
    AlreadyRunning(std::path::PathBuf),
    /// A listener could not be bound.
    #[error("cannot listen on {what} {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup failed")]
    Tls(#[from] rustls::Error),
    /// The membership subsystem could not start.
    #[error(transparent)]
    Membership(#[from] crate::membership::MembershipError),
    /// The data plane could not start.
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::TunnelError),
    /// The store holds no membership for this org and the peers could not supply it.
    #[error("fetching the membership from peers: {0}")]
    Bootstrap(#[from] BootstrapError),
    /// This gateway's own member or gateway record could not be published.
    #[error("publishing this gateway's own record")]
    Publish(#[source] crate::membership::PublishError),
    /// The gateway leaf certificate names no federation identity under the consortium domain.
    #[error("the gateway leaf certificate")]
    LeafIdentity(#[source] fedgw_certs::identity::IdentityError),
    /// The `[addresses]` pool or interface for local address aliases is invalid.
    #[error("the local address aliases")]
    Aliases(#[source] crate::alias::AliasError),
    /// The org CA key cannot sign membership records.
    #[error("the record signer")]
    Signer(#[source] fedgw_certs::envelope::EnvelopeError),
    /// The web console's address or access control is not usable.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// Writing `run.json` failed.
    #[error("cannot write {0}")]
    RunInfo(std::path::PathBuf, #[source] std::io::Error),
}

/// `DIR/run.json`: where a running gateway listens. Written once everything is bound; removed
/// on clean shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Process id.
    pub pid: u32,
    /// Bound gateway port address.
    pub gateway: SocketAddr,
    /// Advertised endpoints (port 0 replaced by the bound port).
    pub advertise: Vec<String>,
    /// Bound metrics address.
    pub metrics: SocketAddr,
    /// Bound DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// Admin socket path.
    pub admin: std::path::PathBuf,
    /// The web console's URL (`http://` on loopback, `https://` otherwise); `null` when it is
    /// not served (the metrics address is not loopback and no `[console]` is set).
    #[serde(default)]
    pub console: Option<String>,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub info: RunInfo,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its store (shared with the servers).
    pub store: Arc<Store>,
    /// The membership subsystem.
    pub membership: Membership,
    /// The data plane.
    pub tunnels: Tunnels,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    dir: DataDir,
}

impl Running {
    /// Waits for shutdown, then drains tasks for up to [`SHUTDOWN_GRACE`] and removes the run
    /// files.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("tasks still running after the shutdown grace period");
        }
        let _ = std::fs::remove_file(self.dir.run_info());
        let _ = std::fs::remove_file(self.dir.admin_socket());
        info!("gateway stopped");
    }
}

async fn bind_admin(dir: &DataDir) -> Result<UnixListener, RunError> {
    let path = dir.admin_socket();
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(RunError::AlreadyRunning(dir.root().to_owned()));
        }
        let _ = std::fs::remove_file(&path);
    }
    let bind_err = |source| RunError::Bind {
        what: "admin socket",
        addr: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Binds the DNS UDP socket and a TCP listener on the same port; with port 0 the UDP port the
/// OS picks is tried for TCP, a few times over if it is taken.
async fn bind_dns(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, TcpListener), RunError> {
    let err = |source| RunError::Bind {
        what: "DNS",
        addr: addr.to_string(),
        source,
    };
    let mut last = None;
    for _ in 0..16 {
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(err)?;
        let bound = udp.local_addr().map_err(err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(
        last.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into())
    ))
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// The membership settings `config` gives (bootstrap peers: its `[[peers]]`).
pub fn membership_config(config: &crate::config::Config) -> MembershipConfig {
    MembershipConfig {
        domain: config.domain.clone(),
        me: config.gateway_id(),
        replica_index: config.replica_index,
        outbound_only: config.outbound_only,
        heartbeat: Duration::from_millis(config.sync.heartbeat_ms),
        backoff_base: Duration::from_millis(config.sync.backoff_base_ms),
        backoff_max: Duration::from_millis(config.sync.backoff_max_ms),
        deny: config.sync.deny.iter().cloned().collect(),
        bootstrap: config
            .peers
            .iter()
            .map(|p| (p.id(), p.advertise.clone()))
            .collect(),
        max_session_age: config.max_session_age(),
    }
}

/// The record signers of a loaded data dir (the root's only where it holds the root key).
pub fn membership_keys(loaded: &Loaded) -> Result<Keys, RunError> {
    Ok(Keys {
        root_cert: loaded.root_cert.to_vec(),
        org_signer: loaded.org_ca.envelope_signer().map_err(signer_err)?,
        root_signer: loaded
            .root_ca
            .as_ref()
            .map(|r| r.envelope_signer())
            .transpose()
            .map_err(signer_err)?,
    })
}

/// Starts the gateway for `dir`; it runs until `shutdown` is cancelled. A store without this
/// org's membership (a new pod, a rebuilt store) is filled from the peers first
/// ([`bootstrap`]); the gateway is ready (`/readyz`, `run.json`) only after that.
pub async fn start(dir: DataDir, shutdown: CancellationToken) -> Result<Running, RunError> {
    start_with(dir, RunOptions::default(), shutdown).await
}

/// What `fedgw run` may set over `fedgw.toml`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--console ADDR`: the web console's own address, over `[console] listen`.
    pub console: Option<SocketAddr>,
}

/// As [`start`], with command-line overrides.
pub async fn start_with(
    dir: DataDir,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Running, RunError> {
    raise_open_files_limit();
    let loaded = provision::load(&dir)?;
    let Loaded {
        config,
        root_cert,
        root_ca,
        genesis,
        ..
    } = &loaded;
    let store = Arc::new(Store::open(&dir.store())?);
    // the name stamped on the site state this replica shares with its siblings
    store.set_replica(&config.replica);
    // rows from before site state was shared get entries; old tombstones go
    store.adopt_shared()?;
    let provider = tls::provider();
    let metrics = Metrics::new();
    let tracker = TaskTracker::new();
    let me = config.gateway_id();
    let membership = Membership::open(
        membership_config(config),
        store.clone(),
        membership_keys(&loaded)?,
        metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    )?;
    membership.set_address_mode(config.addresses.clone());
    let revoked = membership.revocation().set().clone();
    let issued = membership.revocation().issued().clone();
    issued.set_grace(config.federation.grace());

    let (leaf, renew_at) = provision::current_leaf(&dir, &loaded, SystemTime::now())?;
    metrics.set_leaf_not_after(store::unix(leaf.not_after));
    let org_ca: &[u8] = loaded.org_ca.cert();
    for (cert, der) in [("org_ca", org_ca), ("root_ca", &loaded.root_cert[..])] {
        if let Ok(t) = fedgw_certs::pki::not_after(der) {
            metrics.set_cert_not_after(cert, store::unix(t));
        }
    }
    let identity = ReloadableIdentity::new(leaf.chain.clone(), &leaf.key, &provider)?;
    let own_id = fedgw_certs::peer_identity(&leaf.chain[0], &config.domain)
        .map_err(RunError::LeafIdentity)?;
    let verifier: Arc<PeerVerifier> = Arc::new(
        PeerVerifier::new(
            root_cert.clone(),
            &config.domain,
            revoked.clone(),
            &provider,
        )?
        .with_issued(issued.clone()),
    );

    let gateway_listener = bind_tcp("gateway port", config.listen).await?;
    let gateway_addr = gateway_listener
        .local_addr()
        .map_err(|source| RunError::Bind {
            what: "gateway port",
            addr: config.listen.to_string(),
            source,
        })?;
    let metrics_listener = bind_tcp("metrics", config.metrics).await?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| RunError::Bind {
            what: "metrics",
            addr: config.metrics.to_string(),
            source,
        })?;
    let admin_listener = bind_admin(&dir).await?;
    let (dns_udp, dns_tcp) = bind_dns(config.dns).await?;
    let dns_addr = dns_udp.local_addr().map_err(|source| RunError::Bind {
        what: "DNS",
        addr: config.dns.to_string(),
        source,
    })?;
    let advertise = config.effective_advertise(gateway_addr.port());

    let (join_tx, join_rx) = mpsc::channel::<TlsConn>(ACCEPT_QUEUE);
    let (fed_tx, fed_rx) = mpsc::channel::<TlsConn>(ACCEPT_QUEUE);
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TlsConn>(ACCEPT_QUEUE);
    let udp = match config.tunnel.transport {
        Transport::Tcp => None,
        transport => match std::net::UdpSocket::bind(gateway_addr) {
            Ok(u) => Some(u),
            Err(source) if transport == Transport::Quic => {
                return Err(RunError::Bind {
                    what: "QUIC (UDP)",
                    addr: gateway_addr.to_string(),
                    source,
                });
            }
            Err(e) => {
                warn!(addr = %gateway_addr, error = %e, "no QUIC endpoint; tunnels use TCP+TLS");
                None
            }
        },
    };
    let tunnels = Tunnels::new(
        TunnelSetup {
            me: me.clone(),
            domain: config.domain.clone(),
            outbound_only: config.outbound_only,
            config: config.tunnel.clone(),
            tls: TunnelTls {
                identity: identity.clone(),
                verifier: verifier.clone(),
            },
            udp,
            own: vec![gateway_addr, metrics_addr, dns_addr],
            max_link_age: config.max_link_age(),
            keys: crate::tunnel::quic::RestartKeys::derive(
                zeroize::Zeroizing::new(loaded.org_ca.key_pem()).as_bytes(),
                &me.to_string(),
            ),
            aliases: match &config.addresses {
                crate::addressing::AddressMode::Ip {
                    pool,
                    interface: Some(interface),
                } => Some(crate::alias::Aliases::new(pool, interface).map_err(RunError::Aliases)?),
                _ => None,
            },
        },
        membership.clone(),
        metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    )?;
    let dispatch = Dispatch {
        join_config: Arc::new(tls::join_server_config(
            &identity,
            root_cert.clone(),
            provider.clone(),
        )?),
        federation_config: Arc::new(tls::federation_server_config(
            &identity,
            verifier.clone(),
            provider.clone(),
        )?),
        tunnel_config: Arc::new(tls::tunnel_server_config(
            &identity,
            verifier,
            provider.clone(),
        )?),
        tunnel_tx,
        domain: config.domain.clone(),
        join_tx,
        federation_tx: fed_tx,
        revocation: membership.revocation().clone(),
        limits: config.port.clone(),
        membership: membership.clone(),
    };
    tunnels.start(tunnel_rx);
    tracker.spawn(listener::serve(
        gateway_listener,
        dispatch,
        metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));

    // join: only the root holder can sign org CAs; elsewhere join connections are dropped
    match root_ca {
        Some(root) => {
            let service = Arc::new(JoinService {
                store: store.clone(),
                root: Arc::new(clone_ca(root)?),
                consortium: pb::ConsortiumInfo {
                    name: config.consortium.clone(),
                    domain: config.domain.clone(),
                    admission: admission_policy(config.admission).into(),
                    consensus: config.consensus.to_pb().into(),
                },
                genesis: genesis.clone(),
                gateway: pb::GatewayEndpoint {
                    org: config.org.clone(),
                    site: config.site.clone(),
                    advertise: advertise.clone(),
                },
                limiter: JoinLimiter::default(),
                metrics: metrics.clone(),
                membership: membership.clone(),
                policy: config.admission,
            });
            let router = tonic::transport::Server::builder().add_service(
                pb::join_server::JoinServer::from_arc(service)
                    .max_decoding_message_size(fedgw_proto::MAX_JOIN_REQUEST_BYTES),
            );
            spawn_server(&tracker, "join", router, join_rx, &metrics, &shutdown);
        }
        None => drop(join_rx),
    }

    let federation = Arc::new(FederationService {
        identity: own_id,
        site: config.site.clone(),
        revoked: revoked.clone(),
        metrics: metrics.clone(),
        membership: membership.clone(),
    });
    let router = tonic::transport::Server::builder().add_service(
        pb::federation_server::FederationServer::from_arc(federation)
            .max_decoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(fedgw_proto::MAX_MESSAGE_BYTES),
    );
    spawn_server(&tracker, "federation", router, fed_rx, &metrics, &shutdown);

    let allocations = Arc::new(std::sync::RwLock::new(store.allocations()?));
    let zone = crate::dns::ZoneHandler::new(config.dns_rate_limit_qps).counted(metrics.clone());
    let (first_pass, first_pass_done) = tokio::sync::oneshot::channel();
    tracker.spawn(crate::site::keeper::run(
        crate::site::keeper::Keeper {
            membership: membership.clone(),
            store: store.clone(),
            mode: config.addresses.clone(),
            allocations: allocations.clone(),
            zone: zone.clone(),
            domain: config.domain.clone(),
            me_gateway: format!("gw-{}.{}", config.site, config.org),
            tunnels: tunnels.clone(),
            first_pass: Some(first_pass),
        },
        shutdown.clone(),
    ));
    tracker.spawn(crate::chain::peering::run(
        crate::chain::peering::Keeper {
            membership: membership.clone(),
            store: store.clone(),
            domain: config.domain.clone(),
            metrics: metrics.clone(),
            reconcile: config.peering.reconcile(),
        },
        shutdown.clone(),
    ));
    let mut dns_server = hickory_server::Server::new(zone.clone());
    dns_server.register_socket(dns_udp);
    let dns_metrics = metrics.clone();
    let dns_tcp = crate::dns::serve_tcp(
        dns_tcp,
        zone,
        crate::dns::TcpLimits {
            per_source: config.dns_tcp_max_per_source,
            total: config.dns_tcp_max_connections,
            idle: Duration::from_secs(5),
        },
        move |why| dns_metrics.dns_tcp_refused(why),
        shutdown.clone(),
    );
    let dns_tcp = async move {
        dns_tcp.await;
        Ok::<(), std::convert::Infallible>(())
    };
    servers::spawn_watched(&tracker, "dns_tcp", &metrics, &shutdown, dns_tcp);
    let (sd, dns_stop) = (shutdown.clone(), dns_server.shutdown_token().clone());
    tracker.spawn(async move {
        sd.cancelled().await;
        dns_stop.cancel();
    });
    let dns_udp = async move { dns_server.block_until_done().await };
    servers::spawn_watched(&tracker, "dns", &metrics, &shutdown, dns_udp);
    let chain = crate::chain::keeper::KeeperHandle::default();
    tracker.spawn(crate::chain::keeper::run(
        crate::chain::keeper::Keeper {
            membership: membership.clone(),
            store: store.clone(),
            consensus: config.consensus,
            metrics: metrics.clone(),
            handle: chain.clone(),
        },
        shutdown.clone(),
    ));
    let votes = crate::chain::validators::VotesHandle::default();
    tracker.spawn(crate::chain::validators::keeper::run(
        crate::chain::validators::keeper::Keeper {
            membership: membership.clone(),
            store: store.clone(),
            consensus: config.consensus,
            admission: config.admission,
            metrics: metrics.clone(),
            handle: votes.clone(),
        },
        shutdown.clone(),
    ));
    let admin_service = Arc::new(AdminService {
        store: store.clone(),
        config: config.clone(),
        root_cert: root_cert.to_vec(),
        advertise: advertise.clone(),
        membership: membership.clone(),
        allocations,
        tunnels: tunnels.clone(),
        metrics: metrics.clone(),
        chain,
        votes,
    });
    let console_on_metrics = console::start(
        console::Setup {
            dir: &dir,
            config: &config.console,
            listen: options.console,
            metrics: metrics_addr,
            identity: &identity,
            org_ca: loaded.org_ca.cert(),
            admin: admin_service.clone(),
            store: store.clone(),
        },
        &tracker,
        &metrics,
        &shutdown,
    )
    .await?;
    let console_url = console_on_metrics.url.clone();
    let admin = admin::serve(admin_listener, admin_service, shutdown.clone());
    servers::spawn_watched(&tracker, "admin", &metrics, &shutdown, admin);
    let served = metrics::serve_with(
        metrics_listener,
        metrics.clone(),
        console_on_metrics.router,
        shutdown.clone(),
    );
    servers::spawn_watched(&tracker, "metrics", &metrics, &shutdown, served);
    tracker.spawn(dialer::run(
        membership.clone(),
        DialerTls {
            identity: identity.clone(),
            root: root_cert.clone(),
            domain: config.domain.clone(),
            revoked: revoked.clone(),
            issued: issued.clone(),
        },
    ));
    let running = |info| Running {
        info,
        metrics: metrics.clone(),
        store: store.clone(),
        membership: membership.clone(),
        tunnels: tunnels.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        dir: dir.clone(),
    };
    let mut info = RunInfo {
        pid: std::process::id(),
        gateway: gateway_addr,
        advertise: advertise.clone(),
        metrics: metrics_addr,
        dns: dns_addr,
        admin: dir.admin_socket(),
        console: console_url,
    };
    if bootstrap::needed(&membership)
        && membership.is_root_holder()
        && membership.dial_targets().is_empty()
    {
        // the root holder with no peer to ask (the first gateway of a consortium, its pod
        // started from a Secret with the root key): it admits its own org again, as `init` did
        info!("the store holds no membership and no peer is known; the root admits this org");
        let admitted_unix = i64::try_from(store::unix(SystemTime::now())).unwrap_or(0);
        membership
            .publish(
                &me.org,
                "",
                pb::record_body::Body::Member(pb::MemberRecord {
                    org_ca_der: loaded.org_ca.cert().to_vec(),
                    fabric_msp_id: config.fabric_msp_id.clone().unwrap_or_default(),
                    admitted_unix,
                }),
                SignAs::Root,
            )
            .await
            .map_err(RunError::Publish)?;
    }
    if bootstrap::needed(&membership) {
        info!(
            store = %dir.store().display(),
            "the store holds no membership for this org; fetching it from peers"
        );
        match bootstrap::wait(&membership, Until::Member, None).await {
            Ok(()) => {}
            // not ready, no run.json: the caller's wait() drains what started
            Err(BootstrapError::Cancelled) => return Ok(running(info)),
            Err(e) => {
                shutdown.cancel();
                return Err(e.into());
            }
        }
    }
    // announce this gateway (signed by our org CA) if the view does not hold it as it is now
    let local_rpc = store.local_rpc()?;
    let gateway_record = pb::GatewayRecord {
        advertise: advertise.clone(),
        outbound_only: config.outbound_only,
        replica_index: u32::from(config.replica_index),
        raft_adder: membership
            .read(|v| crate::chain::keeper::is_adder(config.consensus, v, &me.org, &local_rpc)),
    };
    let held = membership.read(|v| {
        v.gateways()
            .into_iter()
            .any(|(id, g)| id == me && g == gateway_record)
    });
    if !held {
        membership
            .publish(
                &me.org,
                &me.record_name(),
                pb::record_body::Body::Gateway(gateway_record),
                SignAs::Org,
            )
            .await
            .map_err(RunError::Publish)?;
    }
    // certificate transparency: the leaf in use is published (once per serial)
    publish_leaf(&membership, &leaf.chain[0]).await;
    tracker.spawn(renew_leaf(
        dir.clone(),
        loaded,
        identity,
        renew_at,
        metrics.clone(),
        membership.clone(),
        shutdown.clone(),
    ));

    info.advertise = advertise;
    // not ready before the zone and the data plane reflect the stored view: a restarted
    // gateway would otherwise refuse its peers' first streams (no targets yet) and answer
    // NXDOMAIN (an empty zone); an Err means the keeper stopped (shutdown)
    let _ = first_pass_done.await;
    // ready before run.json appears: whoever waits on the file finds /readyz already 200
    metrics.set_ready();
    let json = serde_json::to_vec_pretty(&info).expect("RunInfo serialises");
    dir.write_public(&dir.run_info(), &json)
        .map_err(|e| RunError::RunInfo(dir.run_info(), e))?;
    info!(gateway = %gateway_addr, metrics = %metrics_addr, "gateway ready");
    Ok(running(info))
}

use tokio_stream::StreamExt as _;

/// Open files a gateway should be able to hold without running short: two listeners per remote
/// node port (a few hundred nodes) and two sockets per proxied connection (thousands).
pub const WANTED_OPEN_FILES: u64 = 65_536;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (commonly 1024 soft, 524 288 hard, so a
/// gateway with 500 remote nodes would fail its binds with `EMFILE`), logs what it got, and
/// warns when that is below [`WANTED_OPEN_FILES`]. Returns the soft limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum;
    if limit.current != target {
        let raised = Rlimit {
            current: target,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open files limit");
        }
    }
    // `None` is unlimited
    let now = getrlimit(Resource::Nofile).current;
    match now {
        Some(n) if n < WANTED_OPEN_FILES => warn!(
            open_files = n,
            wanted = WANTED_OPEN_FILES,
            "the open files limit is low: each remote node port takes a listener and each proxied connection two sockets (raise LimitNOFILE / ulimit -Hn)"
        ),
        n => info!(open_files = ?n, "open files limit"),
    }
    now
}

/// Serves `router` on the TLS connections the acceptor hands over `conns`, until `shutdown`.
fn spawn_server(
    tracker: &TaskTracker,
    what: &'static str,
    router: tonic::transport::server::Router,
    conns: mpsc::Receiver<TlsConn>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let server = router.serve_with_incoming_shutdown(
        ReceiverStream::new(conns).map(Ok::<_, std::io::Error>),
        shutdown.clone().cancelled_owned(),
    );
    servers::spawn_watched(tracker, what, metrics, shutdown, server);
}

fn signer_err(e: fedgw_certs::envelope::EnvelopeError) -> RunError {
    RunError::Signer(e)
}

fn clone_ca(
    ca: &fedgw_certs::CertificateAuthority,
) -> Result<fedgw_certs::CertificateAuthority, RunError> {
    fedgw_certs::CertificateAuthority::from_parts(ca.cert().clone(), &ca.key_pem()).map_err(
        |source| {
            RunError::Provision(ProvisionError::Pki {
                what: "root CA".into(),
                source,
            })
        },
    )
}

fn admission_policy(a: crate::config::Admission) -> pb::AdmissionPolicy {
    match a {
        crate::config::Admission::Operator => pb::AdmissionPolicy::Operator,
        crate::config::Admission::Majority => pb::AdmissionPolicy::Majority,
        crate::config::Admission::All => pb::AdmissionPolicy::All,
    }
}

/// Publishes the cert record of this gateway's leaf `der` unless held; a failure is logged
/// (peers that require cert records refuse the leaf after their grace period).
async fn publish_leaf(membership: &Membership, der: &[u8]) {
    match membership.publish_cert(der).await {
        Ok(true) => info!("gateway leaf published as a cert record"),
        Ok(false) => {}
        Err(e) => {
            error!(error = %crate::net::with_sources(&e), "cannot publish the gateway leaf's cert record; peers that require cert records will refuse it");
        }
    }
}

/// Reissues the gateway leaf at half-life and swaps it into every TLS config.
async fn renew_leaf(
    dir: DataDir,
    loaded: Loaded,
    identity: ReloadableIdentity,
    mut renew_at: SystemTime,
    metrics: Metrics,
    membership: Membership,
    shutdown: CancellationToken,
) {
    let provider = tls::provider();
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = SystemTime::now();
        let issued = provision::issue_leaf(&dir, &loaded.config, &loaded.org_ca, now);
        if let Ok(leaf) = &issued {
            // published before use, so that peers requiring cert records hold it in time
            publish_leaf(&membership, &leaf.chain[0]).await;
        }
        match issued {
            Ok(leaf) => match identity.replace(leaf.chain, &leaf.key, &provider) {
                Ok(()) => {
                    metrics.set_leaf_not_after(store::unix(leaf.not_after));
                    renew_at = now + Duration::from_secs(loaded.config.leaf_lifetime_secs / 2);
                    info!("gateway leaf renewed");
                }
                Err(e) => {
                    warn!(error = %e, "renewed leaf rejected by TLS; retrying in 60 s");
                    renew_at = now + Duration::from_secs(60);
                }
            },
            Err(e) => {
                warn!(error = %e, "leaf renewal failed; retrying in 60 s");
                renew_at = now + Duration::from_secs(60);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        // a common default soft limit, as systemd and most shells give a process
        let low = hard.map_or(1024, |h| h.min(1024));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: hard,
            },
        )
        .expect("lower the soft limit");
        assert_eq!(getrlimit(Resource::Nofile).current, Some(low));
        assert_eq!(raise_open_files_limit(), hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }
}
