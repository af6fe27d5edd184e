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
use crate::membership::{GatewayId, Keys, Membership, MembershipConfig, SignAs};
use crate::metrics::{self, Metrics};
use crate::provision::{self, Loaded, ProvisionError};
use crate::store::{self, Store, StoreError};
use crate::tunnel::{PeerGateway, Transport, TunnelSetup, TunnelTls, Tunnels};

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
        me: GatewayId {
            org: config.org.clone(),
            site: config.site.clone(),
        },
        outbound_only: config.outbound_only,
        heartbeat: Duration::from_millis(config.sync.heartbeat_ms),
        backoff_base: Duration::from_millis(config.sync.backoff_base_ms),
        backoff_max: Duration::from_millis(config.sync.backoff_max_ms),
        deny: config.sync.deny.iter().cloned().collect(),
        bootstrap: config
            .peers
            .iter()
            .map(|p| {
                (
                    GatewayId {
                        org: p.org.clone(),
                        site: p.site.clone(),
                    },
                    p.advertise.clone(),
                )
            })
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
    let provider = tls::provider();
    let metrics = Metrics::new();
    let tracker = TaskTracker::new();
    let me = GatewayId {
        org: config.org.clone(),
        site: config.site.clone(),
    };
    let membership = Membership::open(
        membership_config(config),
        store.clone(),
        membership_keys(&loaded)?,
        metrics.clone(),
        tracker.clone(),
        shutdown.clone(),
    )?;
    let revoked = membership.revocation().set().clone();

    let (leaf, renew_at) = provision::current_leaf(&dir, &loaded, SystemTime::now())?;
    metrics.set_leaf_not_after(store::unix(leaf.not_after));
    let identity = ReloadableIdentity::new(leaf.chain.clone(), &leaf.key, &provider)?;
    let own_id = fedgw_certs::peer_identity(&leaf.chain[0], &config.domain)
        .map_err(RunError::LeafIdentity)?;
    let verifier: Arc<PeerVerifier> = Arc::new(PeerVerifier::new(
        root_cert.clone(),
        &config.domain,
        revoked.clone(),
        &provider,
    )?);

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
    let zone = crate::dns::ZoneHandler::new(config.dns_rate_limit_qps);
    let (first_pass, first_pass_done) = tokio::sync::oneshot::channel();
    tracker.spawn(keep_local_addresses(
        membership.clone(),
        store.clone(),
        config.addresses.clone(),
        allocations.clone(),
        ZoneInputs {
            handler: zone.clone(),
            domain: config.domain.clone(),
            me_gateway: format!("gw-{}.{}", config.site, config.org),
            first_pass: Some(first_pass),
        },
        tunnels.clone(),
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
    let admin_service = Arc::new(AdminService {
        store: store.clone(),
        config: config.clone(),
        root_cert: root_cert.to_vec(),
        advertise: advertise.clone(),
        membership: membership.clone(),
        allocations,
        tunnels: tunnels.clone(),
        metrics: metrics.clone(),
    });
    let admin = admin::serve(admin_listener, admin_service, shutdown.clone());
    servers::spawn_watched(&tracker, "admin", &metrics, &shutdown, admin);
    let served = metrics::serve(metrics_listener, metrics.clone(), shutdown.clone());
    servers::spawn_watched(&tracker, "metrics", &metrics, &shutdown, served);
    tracker.spawn(dialer::run(
        membership.clone(),
        DialerTls {
            identity: identity.clone(),
            root: root_cert.clone(),
            domain: config.domain.clone(),
            revoked: revoked.clone(),
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
    let gateway_record = pb::GatewayRecord {
        advertise: advertise.clone(),
        outbound_only: config.outbound_only,
    };
    let held = membership.read(|v| {
        v.gateways()
            .into_iter()
            .any(|(o, s, g)| o == me.org && s == me.site && g == gateway_record)
    });
    if !held {
        membership
            .publish(
                &me.org,
                &me.site,
                pb::record_body::Body::Gateway(gateway_record),
                SignAs::Org,
            )
            .await
            .map_err(RunError::Publish)?;
    }
    tracker.spawn(renew_leaf(
        dir.clone(),
        loaded,
        identity,
        renew_at,
        metrics.clone(),
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

/// What the zone is rebuilt from.
struct ZoneInputs {
    handler: crate::dns::ZoneHandler,
    domain: String,
    me_gateway: String,
    /// Fires once the first zone is served and the data plane reflects the stored view
    /// (readiness waits for it).
    first_pass: Option<tokio::sync::oneshot::Sender<()>>,
}

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

/// Gives every remote node a local address at this site (IP or port mode) and keeps the
/// allocations in line with the view: new nodes get one, removed nodes free theirs. Persisted on
/// every change, so a restart keeps every address. Then rebuilds the DNS zone from the view, the
/// allocations and this site's real node addresses.
async fn keep_local_addresses(
    membership: Membership,
    store: Arc<Store>,
    mode: crate::addressing::AddressMode,
    allocations: Arc<std::sync::RwLock<crate::addressing::Allocations>>,
    mut zone: ZoneInputs,
    tunnels: Tunnels,
    shutdown: CancellationToken,
) {
    let mut serial: u32 = 0;
    let mut last_good = LastGood::default();
    let mut changed = membership.subscribe();
    let me = membership.me().org.clone();
    loop {
        let needs: Vec<crate::addressing::Need> = membership.read(|v| {
            v.nodes()
                .into_iter()
                .filter(|n| n.org != me)
                .map(|n| crate::addressing::Need {
                    node: format!("{}/{}", n.org, n.name),
                    ports: fedgw_proto::node_ports(&n.record),
                })
                .collect()
        });
        let (updated, failed) = {
            let mut a = allocations.write().unwrap_or_else(|e| e.into_inner());
            let before = a.clone();
            let failed = a.sync(&mode, &needs);
            ((*a != before).then(|| a.clone()), failed)
        };
        for (node, e) in failed {
            warn!(node = %node, error = %e, "no local address for a remote node");
        }
        if let Some(a) = updated {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.put_allocations(&a)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "persisting local addresses failed"),
                Err(e) => warn!(error = %e, "persisting local addresses failed"),
            }
        }
        // a failed read keeps what is served: an empty map here would withdraw every route,
        // DNS name and far-end grant of this site's nodes
        let site = last_good.take(SiteState::read(&store).await);
        let retry_read = site.is_none() || last_good.failed;
        let Some(SiteState {
            local,
            services: service_ips,
        }) = site
        else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(READ_RETRY) => continue,
            }
        };
        // this site's nodes registered by a one-label host name are answered by address
        let short_hosts = crate::dns::resolve_short_hosts(local.values().map(String::as_str)).await;
        serial = serial.wrapping_add(1);
        let alloc = allocations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // a Service address (Kubernetes ClusterIP) replaces the allocation, with the real ports
        let services = service_ips;
        let (nodes, gateways) = membership.read(|v| {
            let nodes: Vec<crate::dns::ZoneNode> = v
                .nodes()
                .into_iter()
                .map(|n| {
                    let (ip, alias, ports) = if n.org == me {
                        let host = local.get(&n.name);
                        let ip = host.and_then(|h| h.parse().ok().or(short_hosts.get(h).copied()));
                        let alias = if ip.is_none() { host.cloned() } else { None };
                        (ip, alias, fedgw_proto::node_ports(&n.record))
                    } else {
                        let key = format!("{}/{}", n.org, n.name);
                        match (services.get(&key), alloc.nodes.get(&key)) {
                            (Some(ip), _) => (Some(*ip), None, fedgw_proto::node_ports(&n.record)),
                            (None, Some(a)) => (Some(a.ip), None, a.ports.clone()),
                            (None, None) => (None, None, Default::default()),
                        }
                    };
                    crate::dns::ZoneNode {
                        alias,
                        enode_id: (n.record.enode_id.len() == 64)
                            .then(|| n.record.enode_id.clone()),
                        org: n.org,
                        name: n.name,
                        ip,
                        ports,
                    }
                })
                .collect();
            let gateways: Vec<crate::dns::ZoneGateway> = v
                .gateways()
                .into_iter()
                .map(|(org, site, g)| crate::dns::ZoneGateway {
                    ip: g
                        .advertise
                        .first()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        .map(|s| s.ip()),
                    org,
                    site,
                })
                .collect();
            (nodes, gateways)
        });
        zone.handler.replace(crate::dns::Zone::build(
            &zone.domain,
            &zone.me_gateway,
            serial,
            &nodes,
            &gateways,
        ));
        let (targets, routes, peers) = data_plane(&membership, &local, &alloc);
        tunnels.update(targets, routes, peers);
        if let Some(done) = zone.first_pass.take() {
            let _ = done.send(());
        }
        // a listener that could not be bound is retried until it can, a failed read sooner;
        // one-label hosts are resolved again, and the zone rebuilt when an address changed
        let retry = async {
            if retry_read {
                tokio::time::sleep(READ_RETRY).await;
            } else if tunnels.listener_failures() {
                tokio::time::sleep(LISTENER_RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let moved = async {
            loop {
                tokio::time::sleep(SHORT_HOST_REFRESH).await;
                let now = crate::dns::resolve_short_hosts(local.values().map(String::as_str)).await;
                if now != short_hosts {
                    return;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changed.changed() => if c.is_err() { return },
            () = retry => {}
            () = moved => {}
        }
    }
}

/// How often this site's nodes' one-label host names are resolved again
/// ([`crate::dns::resolve_short_hosts`]): a restarted container may have a new address.
const SHORT_HOST_REFRESH: Duration = Duration::from_secs(10);
/// How often listeners that could not be bound are retried.
const LISTENER_RETRY: Duration = Duration::from_secs(5);
/// How soon a failed read of this site's state is retried.
const READ_RETRY: Duration = Duration::from_secs(1);

/// This site's own state that the projection (DNS zone, tunnel routes and far-end targets)
/// combines with the view, read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SiteState {
    /// This site's nodes' real hosts: name → host.
    local: std::collections::BTreeMap<String, String>,
    /// Remote nodes' Service addresses: `org/name` → IP.
    services: std::collections::BTreeMap<String, std::net::IpAddr>,
}

impl SiteState {
    async fn read(store: &Arc<Store>) -> Result<Self, StoreError> {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            Ok(Self {
                local: store.local_nodes()?,
                services: store.service_addresses()?,
            })
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
    }
}

/// The last [`SiteState`] read without error.
#[derive(Debug, Default)]
struct LastGood {
    state: Option<SiteState>,
    /// The latest read failed.
    failed: bool,
}

impl LastGood {
    /// What to project from: `read` when it succeeded, otherwise the last good state (`None`
    /// when no read ever succeeded: then nothing is projected, and what is served stays).
    fn take(&mut self, read: Result<SiteState, StoreError>) -> Option<SiteState> {
        match read {
            Ok(state) => {
                self.failed = false;
                self.state = Some(state.clone());
                Some(state)
            }
            Err(e) => {
                self.failed = true;
                error!(
                    error = %e,
                    "reading this site's node addresses from the store failed; keeping the last \
                     good DNS zone, routes and targets, retrying in 1 s"
                );
                self.state.clone()
            }
        }
    }
}

/// What the data plane serves, from the view: this site's nodes that tunnel streams may reach
/// (far end), a route per remote node port at its local address (near end), and the peer
/// gateways.
fn data_plane(
    membership: &Membership,
    local: &std::collections::BTreeMap<String, String>,
    alloc: &crate::addressing::Allocations,
) -> (
    crate::tunnel::far::Targets,
    Vec<crate::tunnel::near::Route>,
    Vec<PeerGateway>,
) {
    let me = membership.me().clone();
    membership.read(|v| {
        let members = v
            .members()
            .into_iter()
            .map(|(org, _)| org)
            .filter(|org| v.is_member(org))
            .collect();
        let mut targets = crate::tunnel::far::Targets {
            org: me.org.clone(),
            nodes: Default::default(),
            members,
        };
        let mut routes = vec![];
        for n in v.nodes() {
            if n.org == me.org {
                if n.record.site != me.site {
                    continue;
                }
                if let Some(host) = local.get(&n.name) {
                    targets.nodes.insert(
                        n.name.clone(),
                        crate::tunnel::far::Target {
                            host: host.clone(),
                            ports: fedgw_proto::node_ports(&n.record),
                            allowed_orgs: n.record.allowed_orgs.clone(),
                        },
                    );
                }
                continue;
            }
            let Some(addr) = alloc.nodes.get(&format!("{}/{}", n.org, n.name)) else {
                continue;
            };
            let site = GatewayId {
                org: n.org.clone(),
                site: n.record.site.clone(),
            };
            for (port_name, port) in &addr.ports {
                match crate::tunnel::near::Route::new(
                    SocketAddr::new(addr.ip, *port),
                    site.clone(),
                    &n.org,
                    &n.name,
                    port_name,
                ) {
                    Ok(r) => routes.push(r),
                    Err(e) => warn!(org = %n.org, node = %n.name, error = %e, "no route for a remote node"),
                }
            }
        }
        let peers = v
            .gateways()
            .into_iter()
            .map(|(org, site, g)| PeerGateway {
                id: GatewayId { org, site },
                advertise: g.advertise,
                outbound_only: g.outbound_only,
            })
            .collect();
        (targets, routes, peers)
    })
}

/// Serves `router` on the TLS connections the acceptor hands over `conns`, until `shutdown`
/// (watched: see [`servers`]).
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

/// Reissues the gateway leaf at half-life and swaps it into every TLS config.
async fn renew_leaf(
    dir: DataDir,
    loaded: Loaded,
    identity: ReloadableIdentity,
    mut renew_at: SystemTime,
    metrics: Metrics,
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
        match provision::issue_leaf(&dir, &loaded.config, &loaded.org_ca, now) {
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

    /// A read error of the store never becomes an empty set of local nodes or Service
    /// addresses: the last state read without error is projected instead, and before any good
    /// read nothing is (what is served stays as it is).
    #[tokio::test]
    async fn a_failed_store_read_keeps_the_last_good_site_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).expect("open"));
        store.put_local_node("node1", "10.0.0.1").expect("put");
        store
            .set_service_address("org2/node1", Some("10.96.0.9".parse().expect("ip")), |_| {
                true
            })
            .expect("put");
        let mut last = LastGood::default();
        let good = last.take(SiteState::read(&store).await).expect("read");
        assert_eq!(good.local["node1"], "10.0.0.1");
        assert_eq!(good.services.len(), 1);
        assert!(!last.failed);

        store.fail_reads(true);
        assert!(
            SiteState::read(&store).await.is_err(),
            "the fault is injected"
        );
        assert_eq!(last.take(SiteState::read(&store).await), Some(good.clone()));
        assert!(last.failed, "a failed read asks for a retry");
        let mut never_read = LastGood::default();
        assert_eq!(never_read.take(SiteState::read(&store).await), None);

        store.fail_reads(false);
        store.put_local_node("node2", "10.0.0.2").expect("put");
        let next = last.take(SiteState::read(&store).await).expect("read");
        assert_eq!(next.local.len(), 2);
        assert!(!last.failed);
    }

    /// Asks the gateway's DNS over UDP; returns the answers' data as text.
    async fn ask(dns: SocketAddr, name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<String> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name.parse().expect("name"), qtype));
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        sock.send_to(&q.to_vec().expect("encode"), dns)
            .await
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        Message::from_vec(&buf[..n])
            .expect("decode")
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect()
    }

    /// The running keeper, end to end: with the store's reads failing, a view change rebuilds
    /// the zone (its SOA serial moves) from the last good site state, so this site's node keeps
    /// its DNS answer instead of losing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_served_zone_survives_a_failed_store_read() {
        use hickory_proto::rr::RecordType;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("org1"));
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        provision::init(
            &dir,
            &provision::InitOptions {
                consortium: "acme".into(),
                domain: "acme.test".into(),
                org: "org1".into(),
                admission: crate::config::Admission::Operator,
                consensus: crate::config::Consensus::None,
                genesis: None,
                network: provision::NetworkOptions {
                    site: "dc1".into(),
                    advertise: vec!["127.0.0.1:0".into()],
                    listen: Some(any),
                    dns: any,
                    metrics: any,
                    leaf_lifetime: Duration::from_secs(3600),
                    outbound_only: false,
                    addresses: Default::default(),
                    tunnel: Default::default(),
                },
            },
            SystemTime::now(),
        )
        .expect("init");
        let shutdown = CancellationToken::new();
        let running = start(dir.clone(), shutdown.clone()).await.expect("start");
        let dns = running.info.dns;
        let mut admin = crate::admin::connect(&dir.admin_socket())
            .await
            .expect("admin");
        admin
            .add_node(pb::AddNodeRequest {
                node: Some(pb::NodeSpec {
                    name: "tm1".into(),
                    client: pb::ClientKind::Tessera.into(),
                    host: "10.0.0.1".into(),
                    tessera_url: "http://10.0.0.1:9000".into(),
                    tessera_keys: vec![vec![7; 32]],
                    ..Default::default()
                }),
            })
            .await
            .expect("add");
        let serial = || async {
            ask(dns, "acme.test.", RecordType::SOA)
                .await
                .first()
                .and_then(|soa| soa.split_whitespace().nth(2)?.parse::<u32>().ok())
                .expect("SOA serial")
        };
        let name = "tm1.org1.acme.test.";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ask(dns, name, RecordType::A).await != ["10.0.0.1"] {
            assert!(tokio::time::Instant::now() < deadline, "the node is served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = serial().await;

        running.store.fail_reads(true);
        running.membership.touch();
        while serial().await == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the zone is rebuilt"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            ask(dns, name, RecordType::A).await,
            ["10.0.0.1"],
            "a failed read kept the node's answer"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), running.wait())
            .await
            .expect("stops");
    }

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
