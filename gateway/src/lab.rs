//! `fedgw lab`: a whole consortium on one machine with no setup. Each org gets its own data dir
//! and its own `fedgw run` process on loopback (port 0 everywhere, so several labs can share a
//! host). The founder invites every other org, each joins over the network, and every ordered
//! pair of gateways proves a mutual-TLS link. The lab writes `DIR/lab.json` for scripts, prints
//! a table, and stays up until Ctrl-C (or, with `--check`, exits 0 only if every step passed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::JoinToken;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::app::RunInfo;
use crate::config::Admission;
use crate::datadir::DataDir;
use crate::provision::{self, InitOptions, NetworkOptions};

/// Bound on each step that waits for another process.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the lab builds.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of orgs (2..=16).
    pub orgs: usize,
    /// Where the data dirs go.
    pub dir: PathBuf,
    /// Consortium name.
    pub consortium: String,
    /// Consortium domain.
    pub domain: String,
    /// Run the flow, report, and exit instead of staying up.
    pub check: bool,
    /// The `fedgw` binary to start gateways with.
    pub bin: PathBuf,
}

/// One org in `lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LabOrg {
    /// The org name.
    pub org: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its gateway port address.
    pub gateway: String,
    /// Its DNS address.
    pub dns: String,
    /// Its metrics address.
    pub metrics: String,
}

/// `DIR/lab.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LabFile {
    /// Consortium name.
    pub consortium: String,
    /// Consortium domain.
    pub domain: String,
    /// The orgs, founder first.
    pub orgs: Vec<LabOrg>,
    /// Nodes (none yet).
    pub nodes: Vec<serde_json::Value>,
}

/// A failed lab step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct LabError {
    /// The step that failed.
    pub step: String,
    /// Why.
    pub message: String,
}

fn fail(step: &str, e: impl std::fmt::Display) -> LabError {
    LabError {
        step: step.to_owned(),
        message: e.to_string(),
    }
}

struct Gateway {
    org: String,
    dir: DataDir,
    child: Child,
    info: RunInfo,
}

/// Loopback settings for org number `i` (1-based): port 0 everywhere, and a pool of its own
/// (127.77.<i>.0/24) for remote nodes' local addresses.
fn network(i: usize) -> NetworkOptions {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    NetworkOptions {
        site: "dc1".into(),
        advertise: vec!["127.0.0.1:0".into()],
        listen: Some(any),
        dns: any,
        metrics: any,
        leaf_lifetime: Duration::from_secs(24 * 3600),
        outbound_only: false,
        addresses: crate::addressing::AddressMode::Ip {
            pool: format!("127.77.{}.0/24", i % 256),
            interface: None,
        },
        // everything runs on loopback here, the stand-in nodes too
        tunnel: crate::tunnel::TunnelConfig {
            allow_loopback_targets: true,
            ..Default::default()
        },
    }
}

async fn start_gateway(bin: &Path, org: &str, dir: DataDir) -> Result<Gateway, LabError> {
    let step = format!("start gateway {org}");
    let _ = std::fs::remove_file(dir.run_info());
    let log =
        std::fs::File::create(dir.root().with_extension("log")).map_err(|e| fail(&step, e))?;
    let log2 = log.try_clone().map_err(|e| fail(&step, e))?;
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--data-dir")
        .arg(dir.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(&step, e))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read(dir.run_info())
            && let Ok(info) = serde_json::from_slice::<RunInfo>(&text)
        {
            return Ok(Gateway {
                org: org.to_owned(),
                dir,
                child,
                info,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(
                &step,
                format!("exited early ({status}); see {}.log", dir.root().display()),
            ));
        }
        if Instant::now() > deadline {
            return Err(fail(&step, "not ready in time"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop_gateway(gw: &mut Gateway) {
    if let Some(pid) = gw.child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), gw.child.wait())
        .await
        .is_err()
    {
        let _ = gw.child.kill().await;
    }
}

/// Progress reporting: one line per step.
struct Steps {
    check: bool,
    passed: usize,
    failed: usize,
}

impl Steps {
    fn report<T>(&mut self, name: &str, started: Instant, r: &Result<T, LabError>) {
        let ms = started.elapsed().as_millis();
        match (r, self.check) {
            (Ok(_), true) => {
                self.passed += 1;
                println!("PASS  {name} ({ms} ms)");
            }
            (Ok(_), false) => {
                self.passed += 1;
                println!("[ok]  {name} ({ms} ms)");
            }
            (Err(e), true) => {
                self.failed += 1;
                println!("FAIL  {name} ({ms} ms): {}", e.message);
            }
            (Err(e), false) => {
                self.failed += 1;
                println!("[!!]  {name} ({ms} ms): {}", e.message);
            }
        }
    }
}

async fn invite(founder: &Gateway, org: &str) -> Result<JoinToken, LabError> {
    let step = format!("invite {org}");
    let mut client = crate::admin::connect(&founder.info.admin)
        .await
        .map_err(|e| fail(&step, e))?;
    let resp = client
        .create_invite(fedgw_proto::v1::CreateInviteRequest {
            org: org.to_owned(),
            ttl_secs: 600,
            uses: 1,
        })
        .await
        .map_err(|e| fail(&step, e.message()))?
        .into_inner();
    JoinToken::parse(&resp.token).map_err(|e| fail(&step, e))
}

async fn ping(from: &Gateway, to: &Gateway, domain: &str) -> Result<(), LabError> {
    let step = format!("mTLS {} -> {}", from.org, to.org);
    let (_, config) = provision::federation_client_config(&from.dir, Some(&to.org))
        .map_err(|e| fail(&step, e))?;
    let out = crate::federation::hello(
        to.info
            .advertise
            .first()
            .ok_or_else(|| fail(&step, "the gateway advertises no endpoint"))?,
        config,
        domain,
        "dc1",
        STEP_TIMEOUT,
    )
    .await
    .map_err(|e| fail(&step, e))?;
    if out.server.org != to.org || out.seen_as.org != from.org {
        return Err(fail(
            &step,
            format!(
                "identities {} / {} do not match",
                out.server.org, out.seen_as.org
            ),
        ));
    }
    Ok(())
}

/// Runs the lab. Returns the number of failed steps (0 means every step passed).
pub async fn run(opts: LabOptions) -> Result<usize, LabError> {
    if !(2..=16).contains(&opts.orgs) {
        return Err(fail("options", "--orgs must be between 2 and 16"));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| fail("create lab dir", e))?;
    let dir = std::path::absolute(&opts.dir).map_err(|e| fail("lab dir", e))?;
    if dir.join("org1").join("fedgw.toml").exists() {
        return Err(fail(
            "options",
            format!(
                "{} already holds a lab; remove it or pass another --dir",
                dir.display()
            ),
        ));
    }
    let mut steps = Steps {
        check: opts.check,
        passed: 0,
        failed: 0,
    };
    let orgs: Vec<String> = (1..=opts.orgs).map(|i| format!("org{i}")).collect();
    let mut gateways: Vec<Gateway> = Vec::new();

    let result = async {
        let t = Instant::now();
        let founder_dir = DataDir::new(dir.join(&orgs[0]));
        let r = provision::init(
            &founder_dir,
            &InitOptions {
                consortium: opts.consortium.clone(),
                domain: opts.domain.clone(),
                org: orgs[0].clone(),
                admission: Admission::Operator,
                genesis: None,
                network: network(1),
            },
            SystemTime::now(),
        )
        .map_err(|e| fail("init", e));
        steps.report(
            &format!("init consortium {} as {}", opts.consortium, orgs[0]),
            t,
            &r,
        );
        r?;
        let t = Instant::now();
        let r = start_gateway(&opts.bin, &orgs[0], founder_dir).await;
        steps.report(&format!("start gateway {}", orgs[0]), t, &r);
        gateways.push(r?);

        for (index, org) in orgs[1..].iter().enumerate() {
            let t = Instant::now();
            let r = invite(&gateways[0], org).await;
            steps.report(&format!("invite {org}"), t, &r);
            let token = r?;
            let t = Instant::now();
            let org_dir = DataDir::new(dir.join(org));
            let r = crate::join::client::join_into(
                token,
                org,
                &org_dir,
                &network(index + 2),
                STEP_TIMEOUT,
                &|_| {},
            )
            .await
            .map_err(|e| fail(&format!("join {org}"), e));
            steps.report(&format!("join {org}"), t, &r);
            r?;
            let t = Instant::now();
            let r = start_gateway(&opts.bin, org, org_dir).await;
            steps.report(&format!("start gateway {org}"), t, &r);
            gateways.push(r?);
        }
        for a in &gateways {
            for b in &gateways {
                if a.org != b.org {
                    let t = Instant::now();
                    let r = ping(a, b, &opts.domain).await;
                    steps.report(&format!("mTLS {} -> {}", a.org, b.org), t, &r);
                }
            }
        }
        let lab = LabFile {
            consortium: opts.consortium.clone(),
            domain: opts.domain.clone(),
            orgs: gateways
                .iter()
                .map(|g| LabOrg {
                    org: g.org.clone(),
                    data_dir: g.dir.root().to_owned(),
                    gateway: g.info.gateway.to_string(),
                    dns: g.info.dns.to_string(),
                    metrics: g.info.metrics.to_string(),
                })
                .collect(),
            nodes: vec![],
        };
        let json = serde_json::to_vec_pretty(&lab).expect("LabFile serialises");
        crate::datadir::write_atomic(&dir.join("lab.json"), &json, 0o644)
            .map_err(|e| fail("write lab.json", e))?;
        Ok::<LabFile, LabError>(lab)
    }
    .await;

    match result {
        Ok(lab) if !opts.check => {
            print_table(&lab, &dir);
            println!("\nthe lab is up; Ctrl-C stops it");
            let _ = tokio::signal::ctrl_c().await;
        }
        Ok(_) => {}
        Err(e) => {
            if steps.failed == 0 {
                steps.failed = 1;
                println!("FAIL  {e}");
            }
        }
    }
    for gw in gateways.iter_mut().rev() {
        stop_gateway(gw).await;
    }
    if opts.check {
        println!(
            "lab check: {} passed, {} failed",
            steps.passed, steps.failed
        );
    }
    Ok(steps.failed)
}

fn print_table(lab: &LabFile, dir: &Path) {
    println!("\nconsortium {} ({})", lab.consortium, lab.domain);
    println!(
        "{:<8} {:<22} {:<22} {:<22} data dir",
        "org", "gateway", "metrics", "dns"
    );
    for o in &lab.orgs {
        println!(
            "{:<8} {:<22} {:<22} {:<22} {}",
            o.org,
            o.gateway,
            o.metrics,
            o.dns,
            o.data_dir.display()
        );
    }
    println!("\ntry:");
    if let (Some(a), Some(b)) = (lab.orgs.first(), lab.orgs.get(1)) {
        println!(
            "  fedgw ping {} --data-dir {}",
            a.gateway,
            b.data_dir.display()
        );
        println!("  curl -s http://{}/metrics", a.metrics);
    }
    println!("  cat {}", dir.join("lab.json").display());
}
