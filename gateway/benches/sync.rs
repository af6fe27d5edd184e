//! Membership sync benchmark (not a test): N gateway processes on loopback.
//!
//! - cold start: N data dirs that have joined but never run (each knows only the snapshot it got
//!   at its join) are started at once; the time until every gateway holds the same view with
//!   all N gateway records;
//! - change propagation: a node is added at one gateway (round robin), the time until every
//!   gateway's view digest includes it; repeated, p50/p99 reported.
//!
//! Every gateway's view is observed through its `WatchStatus` stream, which pushes the status on
//! each change, so the figures carry no polling delay.
//!
//! Run: `cargo bench -p fedgw-gateway --bench sync` (optional args: N values, default 10 30).
//! Prints each figure with its goal and the ratio figure/goal (≤ 1.0 meets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fedgw_gateway::config::{Admission, Config};
use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::provision::{self, InitOptions, NetworkOptions};
use fedgw_proto::v1 as pb;
use tokio_stream::StreamExt;

const CHANGES: usize = 100;

/// `n` distinct free ports below Linux's ephemeral range (32768-60999), so no gateway's
/// outgoing connection can take one as its source port before its owner binds it; every probe
/// listener stays open until all are chosen.
fn free_ports(n: usize) -> Vec<u16> {
    let mut probes = Vec::new();
    while probes.len() < n {
        let port: u16 = rand::random_range(20_000..32_000);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            probes.push(l);
        }
    }
    probes
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn network(port: u16) -> NetworkOptions {
    NetworkOptions {
        fabric_msp_id: None,
        site: "dc1".into(),
        advertise: vec![format!("127.0.0.1:{port}")],
        listen: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
        dns: "127.0.0.1:0".parse().expect("addr"),
        metrics: "127.0.0.1:0".parse().expect("addr"),
        leaf_lifetime: Duration::from_secs(3600),
        outbound_only: false,
        addresses: Default::default(),
        tunnel: Default::default(),
    }
}

fn spawn(bin: &Path, dir: &DataDir) -> Child {
    let _ = std::fs::remove_file(dir.run_info());
    Command::new(bin)
        .arg("run")
        .arg("--data-dir")
        .arg(dir.root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.root().with_extension("log")).expect("log file"))
        .spawn()
        .expect("spawn fedgw")
}

fn stop(children: &mut Vec<Child>) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children.drain(..) {
        let _ = c.wait();
    }
}

async fn wait_ready(dirs: &[DataDir]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for d in dirs {
        while !d.run_info().exists() {
            assert!(
                Instant::now() < deadline,
                "gateway {} did not start: {}",
                d.root().display(),
                std::fs::read_to_string(d.root().with_extension("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

async fn admins(dirs: &[DataDir]) -> Vec<Admin> {
    let mut out = Vec::new();
    for d in dirs {
        out.push(
            fedgw_gateway::admin::connect(&d.admin_socket())
                .await
                .expect("admin"),
        );
    }
    out
}

/// The latest (digest, records) each gateway pushed, fed by one WatchStatus stream per gateway:
/// the gateways report changes as they happen, nothing is polled.
#[derive(Clone)]
struct Views {
    latest: Arc<Mutex<Vec<(String, u64)>>>,
    at: Arc<Mutex<Vec<Instant>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Views {
    async fn watch(admins: &[Admin]) -> Self {
        let views = Views {
            latest: Arc::new(Mutex::new(vec![(String::new(), 0); admins.len()])),
            at: Arc::new(Mutex::new(vec![Instant::now(); admins.len()])),
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        for (i, a) in admins.iter().enumerate() {
            let mut stream = a
                .clone()
                .watch_status(pb::StatusRequest {})
                .await
                .expect("watch")
                .into_inner();
            let v = views.clone();
            tokio::spawn(async move {
                while let Some(Ok(s)) = stream.next().await {
                    v.latest.lock().expect("lock")[i] = (s.digest, s.records);
                    v.at.lock().expect("lock")[i] = Instant::now();
                    v.changed.notify_waiters();
                }
            });
        }
        views
    }

    /// Waits until `cond` holds over every gateway's latest view.
    async fn until(&self, limit: Duration, cond: impl Fn(&[(String, u64)]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if cond(&self.latest.lock().expect("lock")) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "condition not reached: {:?}",
                self.latest.lock().expect("lock")
            );
        }
    }
}

async fn run(bin: &Path, n: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(n);
    let dirs: Vec<DataDir> = (0..n)
        .map(|i| DataDir::new(tmp.path().join(format!("org{}", i + 1))))
        .collect();
    provision::init(
        &dirs[0],
        &InitOptions {
            consortium: "acme".into(),
            domain: "acme.test".into(),
            org: "org1".into(),
            admission: Admission::Operator,
            consensus: Default::default(),
            genesis: None,
            network: network(ports[0]),
        },
        SystemTime::now(),
    )
    .expect("init");
    // FEDGW_BENCH_HEARTBEAT_MS overrides the sync heartbeat of every gateway
    let heartbeat_ms: Option<u64> = std::env::var("FEDGW_BENCH_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let tune = |dir: &DataDir| {
        let mut c = Config::load(&dir.config()).expect("config");
        if let Some(ms) = heartbeat_ms {
            c.sync.heartbeat_ms = ms;
        }
        std::fs::write(dir.config(), c.to_toml()).expect("config");
    };
    tune(&dirs[0]);
    let heartbeat = Config::load(&dirs[0].config()).expect("config").sync;
    // joins need the founder up; the joiners never run before the measurement
    let mut children = vec![spawn(bin, &dirs[0])];
    wait_ready(&dirs[..1]).await;
    let mut founder = admins(&dirs[..1]).await.remove(0);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let org = format!("org{}", i + 1);
        let token = founder
            .create_invite(pb::CreateInviteRequest {
                org: org.clone(),
                ttl_secs: 600,
                uses: 1,
            })
            .await
            .expect("invite")
            .into_inner()
            .token;
        let token = fedgw_certs::JoinToken::parse(&token).expect("token");
        fedgw_gateway::join::client::join_into(
            token,
            &org,
            dir,
            &network(ports[i]),
            Duration::from_secs(30),
            &|_| {},
        )
        .await
        .expect("join");
        tune(dir);
    }
    stop(&mut children);

    // cold start
    let expected_records = (2 * n) as u64; // a member and a gateway record per org
    let t0 = Instant::now();
    for d in &dirs {
        children.push(spawn(bin, d));
    }
    wait_ready(&dirs).await;
    let listening = t0.elapsed();
    let mut clients = admins(&dirs).await;
    let views = Views::watch(&clients).await;
    views
        .until(Duration::from_secs(60), |d| {
            d.iter()
                .all(|(dg, r)| *r == expected_records && *dg == d[0].0)
        })
        .await;
    let cold = t0.elapsed();
    if std::env::var("FEDGW_BENCH_DETAIL").is_ok() {
        let at = views.at.lock().expect("lock").clone();
        let mut order: Vec<(usize, Duration)> = at
            .iter()
            .enumerate()
            .map(|(i, t)| (i + 1, t.duration_since(t0)))
            .collect();
        order.sort_by_key(|(_, d)| *d);
        println!(
            "last view change per gateway (org, ms): {:?}",
            order
                .iter()
                .map(|(i, d)| (i, d.as_millis()))
                .collect::<Vec<_>>()
        );
    }

    // change propagation, in steady state: once every gateway has a stream with every other
    let mesh_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut full = true;
        for c in clients.iter_mut() {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            full &= s.peers.iter().filter(|p| p.state == "connected").count() == n - 1;
        }
        if full {
            break;
        }
        assert!(Instant::now() < mesh_deadline, "the mesh did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mesh = t0.elapsed();
    let mut samples = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        let at = k % n;
        let before = views.latest.lock().expect("lock")[0].0.clone();
        let t = Instant::now();
        let mut id = [0u8; 64];
        id[..8].copy_from_slice(&(k as u64 + 1).to_be_bytes());
        id[8] = 0x5a;
        clients[at]
            .add_node(pb::AddNodeRequest {
                node: Some(pb::NodeSpec {
                    name: format!("n{k}"),
                    client: pb::ClientKind::Goquorum.into(),
                    enode_id: id.to_vec(),
                    host: "10.0.0.1".into(),
                    p2p_port: 30303,
                    ..Default::default()
                }),
            })
            .await
            .expect("add node");
        views
            .until(Duration::from_secs(10), |d| {
                d[0].0 != before && d.iter().all(|(dg, _)| *dg == d[0].0)
            })
            .await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let (p50, p99) = (p(0.50), p(0.99));
    stop(&mut children);

    let cold_goal = if n <= 10 {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "sync N={n:<3} heartbeat={}ms backoff_base={}ms | cold start {:7.1} ms (all listening at {:6.1} ms; \
         goal {:5.0} ms, ratio {:.2}; full mesh at {:6.1} ms) | change p50 {:5.1} ms  p99 {:5.1} ms (goal 20 ms, ratio {:.2}) over {CHANGES} changes",
        heartbeat.heartbeat_ms,
        heartbeat.backoff_base_ms,
        ms(cold),
        ms(listening),
        ms(cold_goal),
        ms(cold) / ms(cold_goal),
        ms(mesh),
        ms(p50),
        ms(p99),
        ms(p99) / 20.0,
    );
}

fn main() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_fedgw"));
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() { vec![10, 30] } else { ns };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for n in ns {
        rt.block_on(run(&bin, n));
    }
}
