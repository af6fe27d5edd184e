//! A federation of gateways started in-process: each with its own data dir, store and sockets on
//! 127.0.0.1 port 0. Waits poll a condition with a deadline; nothing sleeps for readiness.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::JoinToken;
use fedgw_gateway::app::{self, Running};
use fedgw_gateway::config::{Admission, Config};
use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::provision::{self, InitOptions, NetworkOptions};
use fedgw_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

pub const DOMAIN: &str = "acme.test";
pub const WAIT: Duration = Duration::from_secs(20);

pub fn network(outbound_only: bool) -> NetworkOptions {
    NetworkOptions {
        fabric_msp_id: None,
        site: "dc1".into(),
        advertise: vec!["127.0.0.1:0".into()],
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        dns: "127.0.0.1:0".parse().expect("addr"),
        metrics: "127.0.0.1:0".parse().expect("addr"),
        leaf_lifetime: Duration::from_secs(3600),
        outbound_only,
        addresses: Default::default(),
        tunnel: Default::default(),
    }
}

pub struct Gw {
    pub org: String,
    pub dir: DataDir,
    pub running: Option<Running>,
    pub shutdown: CancellationToken,
}

impl Gw {
    pub fn run(&self) -> &Running {
        self.running.as_ref().expect("gateway is running")
    }

    pub fn digest(&self) -> [u8; 32] {
        self.run().membership.read(|v| v.digest())
    }

    pub fn node_names(&self) -> Vec<String> {
        self.run().membership.read(|v| {
            v.nodes()
                .into_iter()
                .map(|n| format!("{}/{}", n.org, n.name))
                .collect()
        })
    }

    pub async fn admin(&self) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
        fedgw_gateway::admin::connect(&self.dir.admin_socket())
            .await
            .expect("admin socket")
    }

    /// What `fedgw status` shows for this gateway.
    pub async fn status(&self) -> pb::StatusResponse {
        self.admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.wait())
                .await
                .expect("drains");
        }
    }

    /// Starts the gateway. The first start binds port 0; the port the OS chose is then written
    /// into the config, so restarts keep their address as a deployed gateway's would.
    pub async fn start(&mut self) {
        assert!(self.running.is_none());
        self.shutdown = CancellationToken::new();
        let running = app::start(self.dir.clone(), self.shutdown.clone())
            .await
            .expect("start");
        let bound = running.info.gateway;
        edit_config(&self.dir, |c| {
            if c.listen.port() == 0 {
                c.listen = bound;
                if c.advertise == ["127.0.0.1:0"] {
                    c.advertise = vec![bound.to_string()];
                }
            }
        });
        self.running = Some(running);
    }
}

/// Edits a data dir's config (before start).
pub fn edit_config(dir: &DataDir, f: impl FnOnce(&mut Config)) {
    let mut c = Config::load(&dir.config()).expect("config");
    f(&mut c);
    std::fs::write(dir.config(), c.to_toml()).expect("write config");
}

pub struct Fed {
    pub tmp: tempfile::TempDir,
    pub gws: Vec<Gw>,
}

fn fast_sync(c: &mut Config) {
    c.sync.heartbeat_ms = 100;
    c.sync.backoff_base_ms = 50;
    c.sync.backoff_max_ms = 500;
}

impl Fed {
    /// Founds `org1` with `policy` and starts it.
    pub async fn found(policy: Admission) -> Self {
        Self::found_with(policy, |_| {}).await
    }

    /// Founds `org1` with `policy`, edits its config, and starts it.
    pub async fn found_with(policy: Admission, edit: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("org1"));
        provision::init(
            &dir,
            &InitOptions {
                consortium: "acme".into(),
                domain: DOMAIN.into(),
                org: "org1".into(),
                admission: policy,
                consensus: Default::default(),
                genesis: None,
                network: network(false),
            },
            SystemTime::now(),
        )
        .expect("init");
        edit_config(&dir, |c| {
            fast_sync(c);
            edit(c);
        });
        let mut gw = Gw {
            org: "org1".into(),
            dir,
            running: None,
            shutdown: CancellationToken::new(),
        };
        gw.start().await;
        Self { tmp, gws: vec![gw] }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub async fn invite(&self, org: &str) -> JoinToken {
        let resp = self.gws[0]
            .admin()
            .await
            .create_invite(pb::CreateInviteRequest {
                org: org.into(),
                ttl_secs: 600,
                uses: 1,
            })
            .await
            .expect("invite")
            .into_inner();
        JoinToken::parse(&resp.token).expect("token")
    }

    /// Invites, joins (writing the data dir), optionally edits the config, and starts `org`.
    pub async fn add(
        &mut self,
        org: &str,
        outbound_only: bool,
        edit: impl FnOnce(&mut Config),
    ) -> usize {
        let token = self.invite(org).await;
        self.admit(org, token, outbound_only, edit).await
    }

    /// Joins `org` with an invite `token` (writing the data dir), optionally edits the config,
    /// and starts it.
    pub async fn admit(
        &mut self,
        org: &str,
        token: JoinToken,
        outbound_only: bool,
        edit: impl FnOnce(&mut Config),
    ) -> usize {
        let dir = DataDir::new(self.path(org));
        fedgw_gateway::join::client::join_into(
            token,
            org,
            &dir,
            &network(outbound_only),
            WAIT,
            &|_| {},
        )
        .await
        .expect("join");
        edit_config(&dir, |c| {
            fast_sync(c);
            edit(c);
        });
        let mut gw = Gw {
            org: org.into(),
            dir,
            running: None,
            shutdown: CancellationToken::new(),
        };
        gw.start().await;
        self.gws.push(gw);
        self.gws.len() - 1
    }

    pub async fn with_orgs(n: usize) -> Self {
        let mut fed = Self::found(Admission::Operator).await;
        for i in 2..=n {
            fed.add(&format!("org{i}"), false, |_| {}).await;
        }
        fed
    }

    pub fn running(&self) -> impl Iterator<Item = &Gw> {
        self.gws.iter().filter(|g| g.running.is_some())
    }

    /// Waits until every running gateway holds the same view; on timeout, panics with each
    /// gateway's digest, record count and peers.
    pub async fn converged(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let digests: Vec<_> = self.running().map(Gw::digest).collect();
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            if Instant::now() >= deadline {
                let report: Vec<String> = self
                    .running()
                    .map(|g| {
                        let m = &g.run().membership;
                        format!(
                            "{}: {} records, digest {:02x?}, peers {:?}",
                            g.org,
                            m.read(|v| v.len()),
                            &g.digest()[..4],
                            m.peer_reports()
                                .iter()
                                .map(|p| format!("{} {} {}", p.id, p.state, p.last_error))
                                .collect::<Vec<_>>()
                        )
                    })
                    .collect();
                panic!("no convergence:\n{}", report.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop_all(&mut self) {
        for g in &mut self.gws {
            g.stop().await;
        }
    }
}

/// Polls `cond` every 10 ms until true; panics after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn spec(name: &str, enode: u8, host: &str) -> pb::NodeSpec {
    pb::NodeSpec {
        name: name.into(),
        client: pb::ClientKind::Goquorum.into(),
        enode_id: fedgw_tests::enode_key(u64::from(enode)),
        host: host.into(),
        p2p_port: 30303,
        raft_port: 50400,
        raft_id: u32::from(enode),
        tessera_keys: vec![],
        tessera_url: String::new(),
        roles: vec![],
        allowed_orgs: vec![],
        rpc_url: String::new(),
        ..Default::default()
    }
}

/// `dig +short` (or the status line with `full`) against a gateway's DNS address.
pub fn dig(dns: std::net::SocketAddr, name: &str, qtype: &str, full: bool) -> String {
    let mut cmd = std::process::Command::new("dig");
    cmd.arg(format!("@{}", dns.ip()))
        .args([
            "-p",
            &dns.port().to_string(),
            "+time=2",
            "+tries=1",
            "+norecurse",
        ])
        .args([name, qtype]);
    if !full {
        cmd.arg("+short");
    }
    let out = cmd
        .output()
        .expect("dig must be installed (scripts/test installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A TCP echo server on 127.0.0.1 standing in for a node's p2p or raft port; it half-closes
/// back when the client has.
pub async fn echo_server() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt as _;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}
