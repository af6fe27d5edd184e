//! `fedgw-controlplane`: the Kubernetes controller that runs beside each fedgw gateway pod.
//!
//! - `fedgw-controlplane run`: watch `ConsortiumNode`s, Services, nodekey Secrets and the
//!   peers ConfigMap of this namespace, and the gateway over its admin socket; the replica
//!   holding the Lease registers nodes, creates Services and writes the rendered files;
//! - `fedgw-controlplane crdgen`: print the `ConsortiumNode` CRD as YAML.
//!
//! Exit codes: 0 on success or a signal, 64 for bad usage, 1 for any other failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fedgw_controlplane::k8s::crd::ConsortiumNode;
use fedgw_controlplane::k8s::index::Settings;
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
    Run(RunArgs),
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
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let cfg = RunConfig {
                settings: Settings {
                    namespace: args.namespace,
                    config_map: args.config_map,
                    gateway_selector,
                },
                admin_socket: args.admin_socket,
                lease: args.lease,
                identity: args.identity,
                lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
                poll: Duration::from_secs(args.poll_seconds.max(1)),
                retry: Duration::from_secs(60),
            };
            match serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fedgw-controlplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(cfg: RunConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = kube::Client::try_default().await?;
        let shutdown = CancellationToken::new();
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
        run(client, cfg, shutdown).await?;
        Ok(())
    })
}
