//! The far end of a tunnel stream ([`Far`]): admit the stream (a connection permit, global
//! and per caller org), read its header, authorise the caller, map the requested node to the
//! address this site's operator registered, dial it, and splice. The links hand each stream a
//! peer opens to [`Far`] through [`Inbound`]; every authorisation granted is kept as a grant,
//! whose streams end when a later change of the targets withdraws it ([`Far::update`]).
//!
//! A stream is accepted only when every check passes (docs/DESIGN.md section 8, "no open proxy"):
//!
//! 1. the header decodes ([`Answer::BadHeader`] otherwise, also for a header that does not
//!    arrive within [`HEADER_TIMEOUT`]);
//! 2. the caller's org (from its verified certificate) is an admitted, unrevoked member;
//! 3. the node was announced by this gateway's own org for this site and registered here with
//!    a real address ([`Answer::UnknownNode`]);
//! 4. the node has that port ([`Answer::UnknownPort`]);
//! 5. the node's access policy lists the caller's org, or is empty ([`Answer::PolicyDenied`]);
//! 6. the registered address is not one the gateway refuses to dial: the gateway's own
//!    listeners, unspecified, multicast or broadcast addresses, and loopback unless
//!    `tunnel.allow_loopback_targets` is set ([`Answer::ForbiddenTarget`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::class;
use super::header::{self, Answer, Request};
use super::links::Inbound;
use super::replicas::{Check, ReplicaHealth};
use super::splice::{self, End, Ended, Proxying, TunnelStream};
use crate::membership::Membership;
use crate::metrics::Metrics;

/// How long a caller has to send the whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialling the real node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node of this site that tunnel streams may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registered host: an IP address or a DNS name.
    pub host: String,
    /// More addresses of the same node (its replicas, after `host`; see [`super::replicas`]).
    pub replicas: Vec<String>,
    /// Port name → real port.
    pub ports: BTreeMap<String, u16>,
    /// Orgs allowed to reach the node; empty means every member.
    pub allowed_orgs: Vec<String>,
}

/// This site's reachable nodes, by name, and the members allowed to call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The gateway's own org: the only org whose nodes it serves.
    pub org: String,
    /// Node name → target.
    pub nodes: BTreeMap<String, Target>,
    /// Admitted, unrevoked member orgs.
    pub members: std::collections::BTreeSet<String>,
}

/// A change of what the far end serves ([`Far::change_targets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetsChange {
    /// Everything anew (the first pass, or the member orgs changed).
    All(Targets),
    /// Some of this site's nodes: name → its target now (`None`: no longer served).
    Nodes(Vec<(String, Option<Target>)>),
}

/// Addresses the gateway never dials for a stream.
#[derive(Debug, Clone, Default)]
pub struct DialPolicy {
    /// The gateway's own listening sockets (gateway port, metrics, DNS).
    pub own: Vec<SocketAddr>,
    /// Whether loopback targets are allowed (single-host labs and tests).
    pub allow_loopback: bool,
    /// The local addresses of remote nodes this gateway listens on.
    pub local: std::collections::HashSet<SocketAddr>,
}

impl DialPolicy {
    /// Whether `addr` may be dialled. An IPv4-mapped IPv6 address (`::ffff:10.0.0.5`) is judged
    /// as the IPv4 address it carries, and a listener on an unspecified address (`0.0.0.0`,
    /// `::`) covers its port on every address.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        let forbidden_ip = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
            || (ip.is_loopback() && !self.allow_loopback);
        let own = self.own.iter().any(|o| {
            o.port() == addr.port() && (o.ip().to_canonical() == ip || o.ip().is_unspecified())
        });
        // `local` may hold thousands of listeners: three lookups, not a scan per dial
        let local = [
            ip,
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv6Addr::UNSPECIFIED.into(),
        ]
        .into_iter()
        .any(|at| self.local.contains(&SocketAddr::new(at, addr.port())));
        !forbidden_ip && !own && !local
    }
}

impl Target {
    /// Every address of the node: `host`, then its replicas.
    pub fn hosts(&self) -> Vec<String> {
        std::iter::once(&self.host)
            .chain(&self.replicas)
            .cloned()
            .collect()
    }
}

/// How a down replica of a node is checked when a dial to `port` (named `port_name`) failed:
/// Tessera's `/upcheck` on its Tessera port, a TCP connect otherwise.
fn check_of(port_name: &str, port: u16) -> Check {
    if port_name == "tessera" {
        Check::Upcheck(port)
    } else {
        Check::Tcp(port)
    }
}

impl Targets {
    /// Sets each node's target (`None`: removes it).
    pub fn change(&mut self, nodes: Vec<(String, Option<Target>)>) {
        for (name, target) in nodes {
            match target {
                Some(t) => self.nodes.insert(name, t),
                None => self.nodes.remove(&name),
            };
        }
    }

    /// Checks a request from `caller` (an org); on success, the host and port to dial.
    pub fn authorise(&self, caller: &str, req: &Request) -> Result<(String, u16), Answer> {
        if !self.members.contains(caller) {
            return Err(Answer::NotMember);
        }
        let target = (req.org == self.org)
            .then(|| self.nodes.get(&req.node))
            .flatten()
            .ok_or(Answer::UnknownNode)?;
        let port = *target.ports.get(&req.port).ok_or(Answer::UnknownPort)?;
        if !target.allowed_orgs.is_empty() && !target.allowed_orgs.iter().any(|o| o == caller) {
            return Err(Answer::PolicyDenied);
        }
        Ok((target.host.clone(), port))
    }
}

/// Resolves and dials a target, refusing addresses the policy forbids, and sends `first` (the
/// caller's bytes that came with the header) as soon as the connection is up. Returns the
/// socket and how many bytes of `first` it took; the rest is the caller's to send.
///
/// Errors: [`Answer::ForbiddenTarget`] when the policy refuses every address,
/// [`Answer::Unreachable`] when the name does not resolve or no address accepts within
/// [`CONNECT_TIMEOUT`].
pub async fn dial(
    host: &str,
    port: u16,
    policy: &DialPolicy,
    first: &[u8],
) -> Result<(tokio::net::TcpStream, usize), Answer> {
    let addrs = tokio::time::timeout(CONNECT_TIMEOUT, crate::net::resolve_host(host, port))
        .await
        .map_err(|_| Answer::Unreachable)?
        .map_err(|_| Answer::Unreachable)?;
    let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| policy.permits(*a)).collect();
    if allowed.is_empty() {
        return Err(Answer::ForbiddenTarget);
    }
    for addr in allowed {
        if let Ok(Ok(dialled)) = tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, first)).await {
            return Ok(dialled);
        }
    }
    Err(Answer::Unreachable)
}

/// Connects to `addr` (`TCP_NODELAY` set) and sends what of `first` the socket takes.
///
/// The send is tried right after `connect`, before waiting for writability. For a node on the
/// same host (loopback, a container's veth) the kernel runs the whole handshake inside
/// `connect`, so the node finds the request with the new connection instead of being woken
/// once for the connection and again, a turn of the event loop later, for its bytes. While
/// the handshake is still under way (any real network) the send is refused (`EAGAIN`) and the
/// connection is awaited as usual.
async fn connect(addr: SocketAddr, first: &[u8]) -> io::Result<(tokio::net::TcpStream, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let sent = if first.is_empty() {
        0
    } else {
        match socket.send(first) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        }
    };
    let tcp = tokio::net::TcpStream::from_std(socket.into())?;
    if sent == 0 {
        // a completed connect shows as writability; its outcome is the socket's error
        tcp.writable().await?;
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
    }
    Ok((tcp, sent))
}

/// What [`Far::new`] needs: its limits and how it dials and splices.
#[derive(Debug)]
pub struct FarSetup {
    /// Permits, priority classes and stall time-out, as at the near end.
    pub proxying: Proxying,
    /// Most inbound connections one caller org may hold at once, streams whose header is
    /// still due included (`tunnel.max_connections_per_org`, at least 1).
    pub per_org: usize,
    /// Addresses never dialled; its `local` is replaced on every [`Far::update`].
    pub policy: DialPolicy,
}

/// The far end of this gateway: serves the streams peers open. Clones share state.
#[derive(Clone, Debug)]
pub struct Far(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    membership: Membership,
    metrics: Metrics,
    targets: RwLock<Arc<Targets>>,
    /// Every authorisation granted (caller org, node, port name → the address it allowed),
    /// with a token that [`Far::update`] cancels once the targets withdraw it: the node is
    /// gone, its port moved, or its access policy leaves the caller out. The lock is taken
    /// after `targets`'.
    grants: Mutex<HashMap<GrantKey, Grant>>,
    policy: RwLock<Arc<DialPolicy>>,
    proxying: Proxying,
    per_org: usize,
    /// Per caller org, its share of the connections (`per_org` permits).
    org_connections: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Health of the replicas of this site's nodes with more than one address.
    replicas: ReplicaHealth,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Caller org, node name, port name.
type GrantKey = (String, String, String);

/// The host and port a far-end authorisation allowed, and the token its streams stop on.
#[derive(Debug)]
struct Grant {
    dial: (String, u16),
    withdrawn: CancellationToken,
}

impl Far {
    /// A far end that serves nothing until the first [`Far::update`].
    pub fn new(
        setup: FarSetup,
        membership: Membership,
        metrics: Metrics,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Far {
        let replicas = ReplicaHealth::new(metrics.clone());
        let far = Far(Arc::new(Inner {
            membership,
            metrics,
            targets: RwLock::new(Arc::new(Targets::default())),
            grants: Mutex::new(HashMap::new()),
            policy: RwLock::new(Arc::new(setup.policy)),
            proxying: setup.proxying,
            per_org: setup.per_org,
            org_connections: Mutex::new(HashMap::new()),
            replicas: replicas.clone(),
            tracker,
            shutdown,
        }));
        // the checks see the dial policy of the moment, and do not keep the far end alive
        let weak = Arc::downgrade(&far.0);
        let permits: super::replicas::Permits = Arc::new(move |addr| {
            weak.upgrade().is_some_and(|inner| {
                let policy = inner.policy.read().unwrap_or_else(|e| e.into_inner());
                policy.permits(addr)
            })
        });
        far.0
            .tracker
            .spawn(replicas.run_checks(permits, far.0.shutdown.clone()));
        far
    }

    /// This site's nodes with replicas: name → each address (`host` first) and whether it is
    /// held healthy.
    pub fn replica_status(&self) -> BTreeMap<String, Vec<(String, bool)>> {
        let targets = self.0.targets.read().unwrap_or_else(|e| e.into_inner());
        targets
            .nodes
            .iter()
            .filter(|(_, t)| !t.replicas.is_empty())
            .map(|(name, t)| (name.clone(), self.0.replicas.status(name, &t.hosts())))
            .collect()
    }

    /// Replaces what the far end serves. Streams whose authorisation the new targets withdraw
    /// end now, like a revoked org's: a far end does not rely on the near end to close them.
    pub fn set_targets(&self, targets: Targets) {
        self.change_targets(TargetsChange::All(targets));
    }

    /// Changes what the far end serves: everything, or some nodes (costing those nodes and
    /// the granted authorisations, not every target). Streams whose authorisation the change
    /// withdraws end now, as with [`Far::set_targets`].
    pub fn change_targets(&self, change: TargetsChange) {
        let mut current = self.0.targets.write().unwrap_or_else(|e| e.into_inner());
        match change {
            TargetsChange::All(targets) => *current = Arc::new(targets),
            TargetsChange::Nodes(nodes) => {
                // readers hold the lock, not a copy of the Arc: this changes it in place
                Arc::make_mut(&mut current).change(nodes);
            }
        }
        let targets: &Targets = &current;
        self.0.replicas.retain(|n| targets.nodes.contains_key(n));
        let mut grants = self.0.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.retain(|(caller, node, port), grant| {
            let req = Request {
                org: targets.org.clone(),
                node: node.clone(),
                port: port.clone(),
            };
            let kept = targets
                .authorise(caller, &req)
                .is_ok_and(|d| d == grant.dial);
            if !kept {
                grant.withdrawn.cancel();
            }
            kept
        });
    }

    /// Changes the set of this gateway's own listener addresses, which a stream must never be
    /// sent into: `removed` leave it, `added` join it.
    pub fn local_changed(
        &self,
        removed: &[SocketAddr],
        added: impl IntoIterator<Item = SocketAddr>,
    ) {
        let mut policy = self.0.policy.write().unwrap_or_else(|e| e.into_inner());
        // changed in place unless a dial holds the current policy (then a copy is changed)
        let next = Arc::make_mut(&mut policy);
        for addr in removed {
            next.local.remove(addr);
        }
        next.local.extend(added);
    }

    /// `caller`'s share of the far end's connections (created on its first stream).
    fn org_connections(&self, caller: &str) -> Arc<Semaphore> {
        let share = self.0.per_org;
        let mut shares = self
            .0
            .org_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shares
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(share)))
            .clone()
    }

    /// Authorises `req` from `caller` against the current targets: the hosts (the node's
    /// `host` and its replicas) and port to dial and a token cancelled once a later change of
    /// the targets withdraws the authorisation (a change of the replicas alone does not).
    fn authorise(
        &self,
        caller: &str,
        req: &header::Request,
    ) -> Result<(Vec<String>, u16, CancellationToken), Answer> {
        let targets = self.0.targets.read().unwrap_or_else(|e| e.into_inner());
        let dial = targets.authorise(caller, req)?;
        let hosts = targets
            .nodes
            .get(&req.node)
            .map_or_else(|| vec![dial.0.clone()], Target::hosts);
        let mut grants = self.0.grants.lock().unwrap_or_else(|e| e.into_inner());
        let key = (caller.to_owned(), req.node.clone(), req.port.clone());
        let grant = grants.entry(key).or_insert_with(|| Grant {
            dial: dial.clone(),
            withdrawn: CancellationToken::new(),
        });
        let withdrawn = grant.withdrawn.child_token();
        Ok((hosts, dial.1, withdrawn))
    }

    async fn refuse(&self, w: &mut splice::TunnelWrite, answer: Answer) {
        self.0.metrics.tunnel_refused(answer);
        header::refuse(w.as_async_write(), answer).await;
    }
}

impl Inbound for Far {
    /// Admits, authorises and serves the stream in a task of its own.
    fn serve(&self, caller_org: String, stream: TunnelStream) {
        let this = self.clone();
        // split here: a value captured by the task stays in its state for its whole life
        let (mut r, mut w) = stream.split();
        self.0.tracker.spawn(async move {
            let permits = this
                .org_connections(&caller_org)
                .try_acquire_owned()
                .ok()
                .zip(this.0.proxying.connections.clone().try_acquire_owned().ok());
            let Some(permits) = permits else {
                this.0.metrics.tunnel_refused(Answer::Overloaded);
                header::refuse(w.as_async_write(), Answer::Overloaded).await;
                return;
            };
            let header =
                tokio::time::timeout(HEADER_TIMEOUT, header::read_request(&mut r)).await;
            let (req, mut early) = match header {
                Ok(Ok(h)) => h,
                Ok(Err(answer)) => return this.refuse(&mut w, answer).await,
                Err(_) => return this.refuse(&mut w, Answer::BadHeader).await,
            };
            // taken before the targets are read: a revocation that lands from here on cancels
            // it, whatever the copy of the targets below still says
            let revoked = this.0.membership.revocation().token(&caller_org);
            let (hosts, port, withdrawn) = match this.authorise(&caller_org, &req) {
                Ok(t) => t,
                Err(answer) => return this.refuse(&mut w, answer).await,
            };
            let policy = this
                .0
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            // the dial may take seconds (name resolution, several addresses): a revocation or
            // shutdown meanwhile abandons it before the node sees the caller's bytes
            let dialled = tokio::select! {
                biased;
                () = revoked.cancelled() => Err(Answer::NotMember),
                () = this.0.shutdown.cancelled() => return,
                dialled = this.0.replicas.dial(&req.node, &hosts, check_of(&req.port, port), CONNECT_TIMEOUT, |host| {
                    let (policy, early) = (&policy, &early);
                    async move { dial(&host, port, policy, early).await }
                }) => dialled,
            };
            let (mut tcp, sent) = match dialled {
                Ok(dialled) => dialled,
                Err(answer) => return this.refuse(&mut w, answer).await,
            };
            early.drain(..sent);
            // the buffer held up to 16 KiB; an idle connection keeps none of it
            early.shrink_to_fit();
            this.0.metrics.tunnel_connection(&caller_org, "inbound");
            let class = class::class_of(&this.0.proxying.priority, &req.org, &req.node, &req.port);
            w.set_class(class);
            let counters = this.0.metrics.tunnel_counters(&caller_org, class);
            counters.rx.inc_by(sent as u64);
            let _active = this.0.metrics.tunnel_stream_guard();
            let stop = std::pin::pin!(async {
                tokio::select! {
                    () = revoked.cancelled() => {}
                    () = withdrawn.cancelled() => {}
                    () = this.0.shutdown.cancelled() => {}
                }
            });
            // bytes that came with the header and the dial did not send go first; the answer
            // goes with the node's first bytes
            let stall = this.0.proxying.stall;
            let ended = splice::splice(
                &mut tcp,
                &mut r,
                &mut w,
                End::Far(&early),
                &counters,
                stall,
                stop,
            )
            .await;
            drop(permits);
            match ended {
                Ended::Failed(e) => {
                    debug!(node = %req.node, error = %e, "proxied connection failed")
                }
                Ended::Stalled => {
                    debug!(node = %req.node, "node read nothing for the stall time-out; connection reset");
                    this.0.metrics.tunnel_stalled("far");
                }
                Ended::Done | Ended::Stopped | Ended::Refused(_) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "node1".to_owned(),
            Target {
                host: "10.0.0.5".into(),
                replicas: vec![],
                ports: [("p2p".to_owned(), 30303), ("tessera".to_owned(), 9000)].into(),
                allowed_orgs: vec![],
            },
        );
        nodes.insert(
            "tm".to_owned(),
            Target {
                host: "10.0.0.6".into(),
                replicas: vec![],
                ports: [("tessera".to_owned(), 9000)].into(),
                allowed_orgs: vec!["org1".into()],
            },
        );
        Targets {
            org: "org2".into(),
            nodes,
            members: ["org1".to_owned(), "org2".to_owned(), "org3".to_owned()].into(),
        }
    }

    fn req(org: &str, node: &str, port: &str) -> Request {
        Request::new(org, node, port).expect("valid")
    }

    #[test]
    fn authorises_members_for_announced_nodes_only() {
        let t = targets();
        assert_eq!(
            t.authorise("org1", &req("org2", "node1", "p2p")),
            Ok(("10.0.0.5".into(), 30303))
        );
        assert_eq!(
            t.authorise("org9", &req("org2", "node1", "p2p")),
            Err(Answer::NotMember)
        );
        assert_eq!(
            t.authorise("org1", &req("org3", "node1", "p2p")),
            Err(Answer::UnknownNode)
        );
        assert_eq!(
            t.authorise("org1", &req("org2", "node2", "p2p")),
            Err(Answer::UnknownNode)
        );
        assert_eq!(
            t.authorise("org1", &req("org2", "node1", "raft")),
            Err(Answer::UnknownPort)
        );
        assert_eq!(
            t.authorise("org1", &req("org2", "tm", "tessera")),
            Ok(("10.0.0.6".into(), 9000))
        );
        assert_eq!(
            t.authorise("org3", &req("org2", "tm", "tessera")),
            Err(Answer::PolicyDenied)
        );
    }

    #[test]
    fn a_change_of_some_nodes_leaves_the_others() {
        let mut t = targets();
        let moved = Target {
            host: "10.0.0.7".into(),
            replicas: vec![],
            ports: [("p2p".to_owned(), 30304)].into(),
            allowed_orgs: vec![],
        };
        t.change(vec![
            ("node1".into(), Some(moved)),
            ("tm".into(), None),
            ("gone".into(), None),
        ]);
        assert_eq!(
            t.authorise("org1", &req("org2", "node1", "p2p")),
            Ok(("10.0.0.7".into(), 30304))
        );
        assert_eq!(
            t.authorise("org1", &req("org2", "tm", "tessera")),
            Err(Answer::UnknownNode)
        );
        assert_eq!(t.nodes.len(), 1);
    }

    #[tokio::test]
    async fn a_dial_sends_the_first_bytes_with_the_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let policy = DialPolicy {
            allow_loopback: true,
            ..DialPolicy::default()
        };
        // on loopback the kernel completes the handshake inside connect, so the bytes go at
        // once; unless the kernel left the handshake to its softirq thread (a loaded machine),
        // when the caller sends what the dial did not. Either way the node gets every byte.
        let mut at_once = 0;
        for _ in 0..20 {
            let (mut tcp, sent) = dial("127.0.0.1", port, &policy, b"hello")
                .await
                .expect("dial");
            assert!(sent == 0 || sent == 5, "sent {sent}");
            if sent == 5 {
                at_once += 1;
            } else {
                tokio::io::AsyncWriteExt::write_all(&mut tcp, b"hello")
                    .await
                    .expect("write");
            }
            let (mut node, _) = listener.accept().await.expect("accept");
            let mut got = [0u8; 5];
            node.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"hello");
        }
        assert!(
            at_once > 0,
            "no dial sent its first bytes with the connection"
        );
        // nothing to send: the dial still waits for the connection
        let (tcp, sent) = dial("127.0.0.1", port, &policy, b"").await.expect("dial");
        assert_eq!(sent, 0);
        assert!(tcp.peer_addr().is_ok(), "connected");
        // a port bound but not listening refuses the connection
        let closed = tokio::net::TcpSocket::new_v4().expect("socket");
        closed
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let closed_port = closed.local_addr().expect("address").port();
        for first in [&b"hello"[..], b""] {
            assert_eq!(
                dial("127.0.0.1", closed_port, &policy, first)
                    .await
                    .map(|(_, n)| n),
                Err(Answer::Unreachable)
            );
        }
    }

    #[test]
    fn dial_policy_refuses_own_listeners_loopback_and_specials() {
        let p = DialPolicy {
            own: vec![
                "0.0.0.0:7443".parse().expect("addr"),
                "127.0.0.1:9464".parse().expect("addr"),
            ],
            allow_loopback: false,
            local: ["10.9.0.1:30303".parse().expect("addr")].into(),
        };
        assert!(p.permits("10.0.0.5:30303".parse().expect("addr")));
        assert!(!p.permits("10.9.0.1:30303".parse().expect("addr")));
        assert!(!p.permits("10.0.0.5:7443".parse().expect("addr")));
        assert!(!p.permits("127.0.0.1:30303".parse().expect("addr")));
        assert!(!p.permits("[::1]:30303".parse().expect("addr")));
        assert!(!p.permits("0.0.0.0:30303".parse().expect("addr")));
        assert!(!p.permits("224.0.0.1:30303".parse().expect("addr")));
        assert!(!p.permits("255.255.255.255:30303".parse().expect("addr")));
        // IPv4-mapped IPv6 forms of refused addresses are refused too
        assert!(!p.permits("[::ffff:127.0.0.1]:30303".parse().expect("addr")));
        assert!(!p.permits("[::ffff:10.9.0.1]:30303".parse().expect("addr")));
        assert!(!p.permits("[::ffff:10.0.0.5]:7443".parse().expect("addr")));
        assert!(p.permits("[::ffff:10.0.0.5]:30303".parse().expect("addr")));
        // port mode on all addresses (0.0.0.0): the listener's port is refused on any address,
        // the pod's own included
        let port_mode = DialPolicy {
            own: Vec::new(),
            allow_loopback: false,
            local: ["0.0.0.0:40001".parse().expect("addr")].into(),
        };
        assert!(!port_mode.permits("10.0.0.5:40001".parse().expect("addr")));
        assert!(!port_mode.permits("[::ffff:10.0.0.5]:40001".parse().expect("addr")));
        assert!(port_mode.permits("10.0.0.5:40002".parse().expect("addr")));
        let lab = DialPolicy {
            allow_loopback: true,
            ..p
        };
        assert!(lab.permits("127.0.0.1:30303".parse().expect("addr")));
        assert!(!lab.permits("127.0.0.1:9464".parse().expect("addr")));
    }
}
