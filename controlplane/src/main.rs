//! `fedgw-controlplane`: the Kubernetes controller that runs beside each fedgw gateway pod.
//!
//! - `fedgw-controlplane run`: watch `ConsortiumNode`s, Services, nodekey Secrets and the
//!   peers ConfigMap of this namespace, and the gateway over its admin socket; the replica
//!   holding the Lease registers nodes, creates Services and writes the rendered files, and
//!   releases the Lease on SIGTERM; `/livez` and `/readyz` on `--health-listen`;
//! - `fedgw-controlplane crdgen`: print the `ConsortiumNode` CRD as YAML.
//!
//! Exit codes: 0 on success or a signal, 64 for bad usage, 1 for any other failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fedgw_controlplane::k8s::crd::ConsortiumNode;
use fedgw_controlplane::k8s::health::Health;
use fedgw_controlplane::k8s::index::{DEFAULT_CLUSTER_DOMAIN, Settings};
use fedgw_controlplane::k8s::run::{RunConfig, run};
use kube::CustomResourceExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "fedgw-controlplane",
    version,
    about = "fedgw's Kubernetes controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (in a gateway pod, beside the gateway).
    Run(Box<RunArgs>),
    /// Print the ConsortiumNode CRD (YAML).
    Crdgen,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The namespace to watch and write in (the pod's own).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: String,
    /// The gateway's admin socket.
    #[arg(
        long,
        env = "FEDGW_ADMIN_SOCKET",
        default_value = "/var/lib/fedgw/admin.sock"
    )]
    admin_socket: PathBuf,
    /// The ConfigMap that receives the rendered files.
    #[arg(long, default_value = "fedgw-peers")]
    config_map: String,
    /// Labels of the gateway pods, `k=v[,k=v...]`: with `fedgw.io/leader=true` added, the
    /// selector of remote nodes' Services.
    #[arg(long, default_value = "app.kubernetes.io/name=fedgw")]
    gateway_selector: String,
    /// The Lease used for leader election.
    #[arg(long, default_value = "fedgw-controlplane")]
    lease: String,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between reads of the gateway's node list (it is also read on every change).
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// The cluster's DNS domain: a node behind a headless Service is reached at
    /// `<service>.<namespace>.svc.<domain>`.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Where `/livez` and `/readyz` are served (HTTP), for the container's probes.
    #[arg(long, default_value = "0.0.0.0:9465")]
    health_listen: SocketAddr,
    /// How log lines are written to stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(long, env = "FEDGW_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

/// `--log-format` (the same values as the gateway's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, as tracing-subscriber's `json` formatter writes it.
    Json,
}

fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// How long the loop may stand still before `/livez` fails: well above its longest wait (the
/// poll period, or a Kubernetes request's own timeout).
fn stale_after(poll: Duration) -> Duration {
    (poll * 6).max(Duration::from_secs(60))
}

fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--gateway-selector: {pair:?} is not k=v"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    if out.is_empty() {
        return Err("--gateway-selector is empty".into());
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Crdgen => match serde_yaml::to_string(&ConsortiumNode::crd()) {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fedgw-controlplane: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let gateway_selector = match parse_selector(&args.gateway_selector) {
                // remote nodes' Services reach the leader's pod only: its ports are theirs
                Ok(mut s) => {
                    s.insert(
                        fedgw_controlplane::k8s::leader::LEADER_LABEL.to_owned(),
                        "true".to_owned(),
                    );
                    s
                }
                Err(e) => {
                    eprintln!("fedgw-controlplane: {e}");
                    return ExitCode::from(64);
                }
            };
            init_logging(args.log_format);
            let poll = Duration::from_secs(args.poll_seconds.max(1));
            let cfg = RunConfig {
                settings: Settings {
                    namespace: args.namespace,
                    config_map: args.config_map,
                    gateway_selector,
                    cluster_domain: args.cluster_domain,
                },
                admin_socket: args.admin_socket,
                lease: args.lease,
                identity: args.identity,
                lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
                poll,
                retry: Duration::from_secs(60),
                health: Health::new(stale_after(poll)),
            };
            match serve(cfg, args.health_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fedgw-controlplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(cfg: RunConfig, health_listen: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = kube::Client::try_default().await?;
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(health_listen)
            .await
            .map_err(|e| anyhow::anyhow!("--health-listen {health_listen}: {e}"))?;
        let probes = tokio::spawn(fedgw_controlplane::k8s::health::serve(
            listener,
            cfg.health.clone(),
            shutdown.clone(),
        ));
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            sd.cancel();
        });
        let result = run(client, cfg, shutdown.clone()).await;
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), probes).await;
        result?;
        Ok(())
    })
}
