//! Nodes with replicas: one node name served by several addresses at this site (Tessera
//! instances behind one name, a GoQuorum HA pair). The far end ([`super::far`]) asks
//! [`ReplicaHealth::order`] which addresses to dial, in turn: the healthy ones round robin,
//! so new connections spread over them, then the ones held down (a last resort when none
//! answers). A connect that fails marks its replica down at once ([`ReplicaHealth::failed`]),
//! so no new connection is sent to it, and the stream tries the next one. A background task
//! ([`ReplicaHealth::run_checks`]) checks every down replica each [`CHECK_INTERVAL`] (a TCP
//! connect to the port that failed; for a Tessera port `GET /upcheck`, expecting `200` and
//! `I'm up!`) and brings it back when it answers.
//!
//! [`Replicas`] is the selection and health state, pure (no IO, the time is passed in);
//! [`ReplicaHealth`] is the shell that owns it, the checks' sockets and the metrics.
//! A node with one address is not tracked: it is dialled as before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::header::Answer;
use crate::metrics::Metrics;

/// Whether an address may be dialled (the far end's dial policy).
pub type Permits = Arc<dyn Fn(std::net::SocketAddr) -> bool + Send + Sync>;

/// Most addresses one node may have at this site (its host and its replicas).
pub const MAX_REPLICAS: usize = 8;
/// How often a down replica is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one check (connect, and for Tessera the `/upcheck` answer) may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of an `/upcheck` answer read.
const UPCHECK_MAX_BYTES: usize = 1024;

/// How a down replica is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect to this port.
    Tcp(u16),
    /// Tessera's `GET /upcheck` on this port, expecting `200` and `I'm up!`.
    Upcheck(u16),
}

/// A check that is due: node, replica host, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The node's name.
    pub node: String,
    /// The replica's registered host.
    pub host: String,
    /// How to check it.
    pub check: Check,
}

#[derive(Debug, Clone)]
struct Down {
    check: Check,
    next_check: Instant,
}

#[derive(Debug, Default, Clone)]
struct NodeReplicas {
    hosts: Vec<String>,
    /// Round-robin position over `hosts`.
    next: usize,
    down: BTreeMap<String, Down>,
}

/// Selection and health state of every node with replicas, by node name. Pure: the caller
/// passes the time and does the IO.
#[derive(Debug, Default, Clone)]
pub struct Replicas {
    nodes: HashMap<String, NodeReplicas>,
}

/// What a call changed: replica hosts that came up or went down (for the metrics).
pub type Changed = Vec<(String, bool)>;

impl Replicas {
    /// The order in which a new connection to `node` dials its `hosts` (as registered, `host`
    /// first): the healthy ones starting at the round-robin position (which moves on by one),
    /// then the down ones. A node with one host gets it alone and is not tracked. A change of
    /// the hosts forgets the health of the hosts no longer listed; returns the hosts newly
    /// tracked (up) too.
    pub fn order(&mut self, node: &str, hosts: &[String]) -> (Vec<String>, Changed) {
        let mut changed = vec![];
        if hosts.len() <= 1 {
            self.nodes.remove(node);
            return (hosts.to_vec(), changed);
        }
        let n = self.nodes.entry(node.to_owned()).or_default();
        if n.hosts != hosts {
            let listed: BTreeSet<&String> = hosts.iter().collect();
            n.down.retain(|h, _| listed.contains(h));
            changed.extend(
                hosts
                    .iter()
                    .filter(|h| !n.hosts.contains(h))
                    .map(|h| (h.clone(), true)),
            );
            n.hosts = hosts.to_vec();
        }
        let start = n.next % hosts.len();
        n.next = (start + 1) % hosts.len();
        let turn = hosts.iter().cycle().skip(start).take(hosts.len());
        let (mut up, down): (Vec<&String>, Vec<&String>) =
            turn.partition(|h| !n.down.contains_key(*h));
        up.extend(down);
        (up.into_iter().cloned().collect(), changed)
    }

    /// A connect to `host` of `node` failed: it is down from now, checked with `check` from
    /// `now` + [`CHECK_INTERVAL`]. Returns whether it was up (a change). A host not tracked
    /// (a node with one address, or no longer listed) is ignored.
    pub fn failed(&mut self, node: &str, host: &str, check: Check, now: Instant) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        if !n.hosts.iter().any(|h| h == host) {
            return false;
        }
        n.down
            .insert(
                host.to_owned(),
                Down {
                    check,
                    next_check: now + CHECK_INTERVAL,
                },
            )
            .is_none()
    }

    /// `host` of `node` answered (a connect or a check): it is up. Returns whether it was down.
    pub fn answered(&mut self, node: &str, host: &str) -> bool {
        self.nodes
            .get_mut(node)
            .is_some_and(|n| n.down.remove(host).is_some())
    }

    /// The checks due at `now`; each one's next check moves to `now` + [`CHECK_INTERVAL`].
    pub fn due(&mut self, now: Instant) -> Vec<Probe> {
        let mut out = vec![];
        for (node, n) in &mut self.nodes {
            for (host, d) in &mut n.down {
                if d.next_check <= now {
                    d.next_check = now + CHECK_INTERVAL;
                    out.push(Probe {
                        node: node.clone(),
                        host: host.clone(),
                        check: d.check,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.node, &a.host).cmp(&(&b.node, &b.host)));
        out
    }

    /// When the next check falls due (`None`: no replica is down).
    pub fn next_due(&self) -> Option<Instant> {
        self.nodes
            .values()
            .flat_map(|n| n.down.values().map(|d| d.next_check))
            .min()
    }

    /// Forgets the nodes `keep` refuses (no longer served here).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|name, _| keep(name));
    }

    /// Whether `host` of `node` is held healthy (an untracked host is).
    pub fn is_up(&self, node: &str, host: &str) -> bool {
        self.nodes
            .get(node)
            .is_none_or(|n| !n.down.contains_key(host))
    }
}

/// The shell around [`Replicas`]: shared by the far end's streams and its check task, and
/// keeps `fedgw_node_replica_up` and `fedgw_node_replica_dial_failures_total`. Clones share
/// state.
#[derive(Debug, Clone)]
pub struct ReplicaHealth {
    state: Arc<Mutex<Replicas>>,
    /// Woken when a replica goes down, so the check task plans its next check.
    wake: Arc<Notify>,
    metrics: Metrics,
}

impl ReplicaHealth {
    /// No node tracked yet.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            state: Arc::default(),
            wake: Arc::default(),
            metrics,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Replicas) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn report(&self, node: &str, changed: Changed) {
        for (host, up) in changed {
            self.metrics.set_replica_up(node, &host, up);
        }
    }

    /// See [`Replicas::order`].
    pub fn order(&self, node: &str, hosts: &[String]) -> Vec<String> {
        let (order, changed) = self.with(|r| r.order(node, hosts));
        self.report(node, changed);
        order
    }

    /// A connect to `host` failed: counted, and the replica is down until a check answers.
    pub fn failed(&self, node: &str, host: &str, check: Check) {
        let tracked = self.with(|r| {
            let went_down = r.failed(node, host, check, Instant::now());
            (went_down, !r.is_up(node, host))
        });
        if tracked.1 {
            self.metrics.replica_dial_failed(node, host);
        }
        if tracked.0 {
            tracing::warn!(node = %node, replica = %host, "node replica down: its connect failed; checking it every second");
            self.report(node, vec![(host.to_owned(), false)]);
            self.wake.notify_one();
        }
    }

    /// `host` answered a connect: up again if it was down.
    pub fn answered(&self, node: &str, host: &str) {
        if self.with(|r| r.answered(node, host)) {
            tracing::info!(node = %node, replica = %host, "node replica up again");
            self.report(node, vec![(host.to_owned(), true)]);
        }
    }

    /// Dials `node` on one of `hosts` (as registered, the first is its `host`) with `dial`:
    /// in [`ReplicaHealth::order`], each attempt within its share of `timeout` left (so the
    /// last replica tried still gets time). A replica whose attempt fails or times out is
    /// marked down ([`ReplicaHealth::failed`], checked with `check`), and the next is tried;
    /// one that the dial policy refuses ([`Answer::ForbiddenTarget`]) is skipped, not marked.
    /// Errors: the last attempt's answer, [`Answer::Unreachable`] after a time-out.
    pub async fn dial<T, F>(
        &self,
        node: &str,
        hosts: &[String],
        check: Check,
        timeout: Duration,
        mut dial: impl FnMut(String) -> F,
    ) -> Result<T, Answer>
    where
        F: Future<Output = Result<T, Answer>>,
    {
        let order = self.order(node, hosts);
        if order.len() <= 1 {
            let host = order.into_iter().next().unwrap_or_default();
            return dial(host).await;
        }
        let deadline = Instant::now() + timeout;
        let mut last = Answer::Unreachable;
        let tries = order.len();
        for (i, host) in order.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / u32::try_from(tries - i).unwrap_or(1);
            match tokio::time::timeout(share, dial(host.clone())).await {
                Ok(Ok(dialled)) => {
                    self.answered(node, &host);
                    return Ok(dialled);
                }
                Ok(Err(Answer::ForbiddenTarget)) => last = Answer::ForbiddenTarget,
                Ok(Err(answer)) => {
                    self.failed(node, &host, check);
                    last = answer;
                }
                Err(_) => {
                    self.failed(node, &host, check);
                    last = Answer::Unreachable;
                }
            }
        }
        Err(last)
    }

    /// Forgets the nodes `keep` refuses.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|r| r.retain(keep));
    }

    /// Each of `hosts` of `node` and whether it is held healthy.
    pub fn status(&self, node: &str, hosts: &[String]) -> Vec<(String, bool)> {
        self.with(|r| {
            hosts
                .iter()
                .map(|h| (h.clone(), r.is_up(node, h)))
                .collect()
        })
    }

    /// Checks every down replica each [`CHECK_INTERVAL`] until `shutdown`: a replica that
    /// answers is up again. The checks of one round run at once, each within [`CHECK_TIMEOUT`].
    pub async fn run_checks(self, permits: Permits, shutdown: CancellationToken) {
        loop {
            let next = self.with(|r| r.next_due());
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => continue,
                () = wait => {}
            }
            let probes = self.with(|r| r.due(Instant::now()));
            let mut round = tokio::task::JoinSet::new();
            for p in probes {
                let permits = permits.clone();
                round.spawn(async move {
                    let ok =
                        tokio::time::timeout(CHECK_TIMEOUT, check(&p.host, p.check, &*permits))
                            .await
                            .unwrap_or(false);
                    (p, ok)
                });
            }
            loop {
                let done = tokio::select! {
                    () = shutdown.cancelled() => return,
                    done = round.join_next() => done,
                };
                let Some(done) = done else { break };
                if let Ok((p, true)) = done {
                    self.answered(&p.node, &p.host);
                }
            }
        }
    }
}

/// Whether `host` answers `check` (resolved and filtered by `permits` as a stream's dial is).
async fn check(
    host: &str,
    check: Check,
    permits: &(dyn Fn(std::net::SocketAddr) -> bool + Send + Sync),
) -> bool {
    let port = match check {
        Check::Tcp(p) | Check::Upcheck(p) => p,
    };
    let Ok(addrs) = crate::net::resolve_host(host, port).await else {
        return false;
    };
    for addr in addrs.into_iter().filter(|a| permits(*a)) {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        return match check {
            Check::Tcp(_) => true,
            Check::Upcheck(_) => upcheck(&mut tcp, host).await,
        };
    }
    false
}

/// Tessera's health check on a connected socket: `GET /upcheck` answered `200` with `I'm up!`.
async fn upcheck(tcp: &mut tokio::net::TcpStream, host: &str) -> bool {
    let request = format!("GET /upcheck HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(256);
    let mut limited = tcp.take(UPCHECK_MAX_BYTES as u64);
    if limited.read_to_end(&mut answer).await.is_err() {
        return false;
    }
    upcheck_ok(&answer)
}

/// Whether an HTTP answer is `200` with `I'm up!` in its body.
pub fn upcheck_ok(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let status = head.lines().next().unwrap_or_default();
    let mut parts = status.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts.next() == Some("200")
        && body.contains("I'm up!")
}

#[cfg(test)]
mod tests;
