//! The `fedgw` command line (docs/DESIGN.md section 11). Each subcommand returns a [`CliError`]
//! carrying a stable exit code; `main` prints it as one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Admission};
use crate::datadir::DataDir;
use crate::provision::{self, InitOptions, NetworkOptions};

/// `println!` for a command's output on standard output, as an expression of type
/// `Result<(), CliError>`: a reader that went away (`fedgw nodes | head -1`) ends the command
/// quietly with exit 0 (see [`write_out`]), where `println!` would panic (exit 101).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// One admin API call on a connection from `admin_conn::connect`, its failure turned into
/// the command's error (`Admin::error`: a time-out names the socket and the limit), `?`-returned:
/// `admin_call!(admin, list_nodes(req))` is the answer's message; with `, raw` the
/// `tonic::Response` itself.
macro_rules! admin_call {
    ($admin:ident, $method:ident($req:expr)) => {
        admin_call!($admin, $method($req), raw).into_inner()
    };
    ($admin:ident, $method:ident($req:expr), raw) => {
        $admin
            .client
            .$method($req)
            .await
            .map_err(|s| $admin.error(s))?
    };
}

mod admin_cmds;
mod admin_conn;
mod audit_cmds;
mod backup_cmds;
mod cert_cmds;
mod chain_cmds;
mod dev_cmds;
mod diagnose_cmds;
mod docs_cmds;
mod export_cmds;
mod fabric_cmds;
mod join_cmds;
mod json;
mod node_file;
mod replica_cmds;
mod service_args;
mod status_cmds;
mod store_cmds;
#[cfg(test)]
mod tests;
mod watch;

/// Standard output was closed by its reader (`EPIPE`); [`main`] turns this into a quiet exit 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
struct StdoutClosed;

/// Writes a rendered file: `bytes` to `path` atomically (missing parent directories created)
/// unless it holds them already, saying which on stderr; returns whether it wrote.
pub(crate) fn write_if_changed(path: &std::path::Path, bytes: &[u8]) -> Result<bool, CliError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        eprintln!("{} unchanged", path.display());
        return Ok(false);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            CliError::new(
                exit::FAILURE,
                anyhow::anyhow!("creating {}: {e}", parent.display()),
            )
        })?;
    }
    crate::datadir::write_atomic(path, bytes, 0o644).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            anyhow::anyhow!("writing {}: {e}", path.display()),
        )
    })?;
    eprintln!("wrote {}", path.display());
    Ok(true)
}

/// Prints `{"path": PATH, "changed": CHANGED}` for a rendered file (`render --out --json`).
pub(crate) fn print_written(path: &std::path::Path, changed: bool) -> Result<(), CliError> {
    let v = serde_json::json!({"path": path.display().to_string(), "changed": changed});
    write_out(format_args!("{v}\n"))
}

/// Writes `args` to standard output and flushes it. A closed pipe gives [`StdoutClosed`] (the
/// command stops, and [`main`] exits 0 without a message, as `head` users expect); any other
/// write error is a failure (exit 1).
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::new(exit::FAILURE, StdoutClosed),
            _ => CliError::new(
                exit::FAILURE,
                anyhow::Error::new(e).context("writing to standard output"),
            ),
        })
}

/// Stable exit codes.
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad usage or configuration (sysexits EX_USAGE).
    pub const USAGE: u8 = 64;
    /// The join token is unknown to the inviter.
    pub const UNKNOWN_TOKEN: u8 = 10;
    /// The join token expired.
    pub const TOKEN_EXPIRED: u8 = 11;
    /// The join token was already used.
    pub const TOKEN_USED: u8 = 12;
    /// The join token is for another org.
    pub const WRONG_ORG: u8 = 13;
    /// The inviter's root does not match the token's pin.
    pub const PIN_MISMATCH: u8 = 14;
    /// The inviter could not be reached.
    pub const UNREACHABLE: u8 = 15;
    /// Too many join attempts for this token.
    pub const RATE_LIMITED: u8 = 16;
    /// The join was refused for another reason (bad proof, already a member, bad request).
    pub const REFUSED: u8 = 17;
    /// The admission policy was not met before `--timeout`.
    pub const NOT_APPROVED: u8 = 18;
    /// `store.redb` is damaged (`fedgw store rebuild` is the way back).
    pub const STORE_DAMAGED: u8 = 20;
    /// `fedgw audit --verify` found the audit trail or a record tampered with.
    pub const TAMPERED: u8 = 21;
    /// `fedgw audit --compare`: the other gateway holds other records.
    pub const DIFFERENT: u8 = 22;
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl CliError {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::new(exit::FAILURE, error)
    }
}

fn usage(msg: impl std::fmt::Display) -> CliError {
    CliError::new(exit::USAGE, anyhow::anyhow!("{msg}"))
}

/// fedgw: the federation gateway for blockchain consortium networks.
#[derive(Debug, Parser)]
#[command(name = "fedgw", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct DataDirArg {
    /// The gateway's data directory.
    #[arg(long, env = "FEDGW_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

/// The data dir of a running gateway, and how long each call to it over its admin socket may
/// take.
#[derive(Debug, Args)]
pub(crate) struct AdminDirArg {
    /// The gateway's data directory.
    #[arg(long, env = "FEDGW_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// Longest wait for the gateway to answer one call on its admin socket (DIR/admin.sock),
    /// connecting included; then the command fails with a message naming the socket.
    #[arg(
        long,
        env = "FEDGW_ADMIN_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = positive_duration,
    )]
    pub(crate) admin_timeout: Duration,
}

/// A duration in humantime form (`300ms`, `30s`, `2m`) greater than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("a timeout must be longer than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// This site's label: the gateway is gw-<site>.<org>.<domain>.
    #[arg(long, default_value = "dc1")]
    site: String,
    /// Endpoint other gateways dial, host:port (repeatable). Port 0: the port bound at run time.
    #[arg(long, required = true, value_name = "HOST:PORT")]
    advertise: Vec<String>,
    /// Gateway port listen address [default: 0.0.0.0:<advertise port>].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// DNS listen address.
    #[arg(long, default_value = config::DEFAULT_DNS, value_name = "ADDR")]
    dns: SocketAddr,
    /// Metrics and health listen address.
    #[arg(long, default_value = config::DEFAULT_METRICS, value_name = "ADDR")]
    metrics: SocketAddr,
    /// Gateway leaf certificate lifetime (renewed at half-life).
    #[arg(
        long,
        default_value = "24h",
        value_name = "DURATION",
        value_parser = humantime::parse_duration
    )]
    leaf_lifetime: Duration,
    /// This site accepts no inbound connections (behind NAT): it dials out to every gateway.
    #[arg(long)]
    outbound_only: bool,
    /// IPv4 CIDR that remote nodes get their local addresses from [default: 127.77.0.0/16].
    #[arg(long, value_name = "CIDR")]
    address_pool: Option<String>,
    /// Put each remote node's address from --address-pool on this interface as a /32 alias
    /// (needs CAP_NET_ADMIN; "auto": the interface whose IPv4 subnet contains the pool).
    #[arg(long, value_name = "IFACE", requires = "address_pool")]
    alias_interface: Option<String>,
    /// Tunnel transport between sites: QUIC, TCP+TLS, or QUIC with TCP+TLS fallback.
    #[arg(long, value_enum, default_value = "auto", value_name = "TRANSPORT")]
    tunnel_transport: crate::tunnel::Transport,
    /// Let tunnel streams reach nodes registered on loopback addresses (single-host setups).
    #[arg(long)]
    allow_loopback_targets: bool,
    /// Only clients from this network may use the local listeners for remote nodes: a CIDR or
    /// one address (repeatable; default: any source).
    #[arg(long = "allowed-source", value_name = "CIDR")]
    allowed_sources: Vec<crate::tunnel::near::SourceNet>,
    /// This org's Hyperledger Fabric MSP ID, published in its member record [default:
    /// <Org>MSP, e.g. Org2MSP]; refused at join when another member has it.
    #[arg(long, value_name = "ID")]
    msp_id: Option<String>,
}

impl NetworkArgs {
    fn options(&self) -> Result<NetworkOptions, CliError> {
        fedgw_certs::names::validate_label("site", &self.site).map_err(usage)?;
        for a in &self.advertise {
            config::validate_advertise(a).map_err(usage)?;
        }
        if let Some(id) = &self.msp_id {
            crate::fabric::validate_msp_id(id).map_err(|e| usage(format!("--msp-id {id}: {e}")))?;
        }
        Ok(NetworkOptions {
            fabric_msp_id: self.msp_id.clone(),
            site: self.site.clone(),
            advertise: self.advertise.clone(),
            listen: self.listen,
            dns: self.dns,
            metrics: self.metrics,
            leaf_lifetime: self.leaf_lifetime,
            outbound_only: self.outbound_only,
            addresses: match &self.address_pool {
                Some(pool) => crate::addressing::AddressMode::Ip {
                    pool: pool.clone(),
                    interface: self.alias_interface.clone(),
                },
                None => Default::default(),
            },
            tunnel: crate::tunnel::TunnelConfig {
                transport: self.tunnel_transport,
                allow_loopback_targets: self.allow_loopback_targets,
                allowed_sources: self.allowed_sources.clone(),
                ..Default::default()
            },
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Found a consortium: root CA, this org's CA and gateway certificate, fedgw.toml.
    Init {
        /// Consortium name (a DNS label).
        #[arg(long)]
        consortium: String,
        /// Consortium DNS domain, e.g. acme.example.
        #[arg(long)]
        domain: String,
        /// The founding org (a DNS label).
        #[arg(long)]
        org: String,
        /// Who must approve a join.
        #[arg(long, value_enum, default_value = "operator")]
        admission: Admission,
        /// The chain's consensus, handed to every member.
        #[arg(long, value_enum, default_value = "none")]
        consensus: crate::config::Consensus,
        /// The consortium genesis file, handed to every joiner (hash-checked).
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
        #[command(flatten)]
        dir: DataDirArg,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Run the gateway daemon.
    Run {
        #[command(flatten)]
        dir: DataDirArg,
        /// If DIR has no fedgw.toml yet, wait until `fedgw init` or `fedgw join` writes one
        /// (a container's main process can start before the data dir is provisioned).
        #[arg(long)]
        wait_for_config: bool,
        /// How log lines are written to stderr: `text` (coloured only on a terminal) or `json`
        /// (one object per line, for log collectors).
        #[arg(
            long,
            env = "FEDGW_LOG_FORMAT",
            value_enum,
            default_value_t,
            value_name = "FORMAT"
        )]
        log_format: crate::telemetry::LogFormat,
        /// Threads that run the gateway. 1 (the default): one event loop carries everything, so
        /// a proxied byte crosses no thread on its way (a QUIC or TCP+TLS link to one peer site
        /// is driven by one task whatever the count, so more threads help only with several
        /// busy peer sites). N > 1: a work-stealing pool of N threads. 0: one per CPU.
        /// Blocking store writes run on separate threads in every case.
        #[arg(
            long,
            env = "FEDGW_WORKER_THREADS",
            default_value_t = 1,
            value_name = "N",
            value_parser = clap::value_parser!(u16).range(0..=MAX_WORKER_THREADS),
        )]
        worker_threads: u16,
        /// Serve the web console on its own address, IP:PORT, over `[console] listen`
        /// [default: at `/` on the metrics address]. A non-loopback address serves HTTPS and
        /// needs `[console] client_cert` or `[console] token_file`.
        #[arg(long, value_name = "ADDR")]
        console: Option<SocketAddr>,
    },
    /// Run stand-in nodes: TCP echo servers (p2p, raft) and Tessera-like `GET /upcheck` HTTP
    /// servers, until SIGINT or SIGTERM.
    StandIn {
        /// Echo server address (repeatable).
        #[arg(long, value_name = "ADDR")]
        echo: Vec<SocketAddr>,
        /// Upcheck server address (repeatable).
        #[arg(long, value_name = "ADDR")]
        http: Vec<SocketAddr>,
    },
    /// Check that a node answers: resolve it (optionally through a given DNS server), connect,
    /// and echo bytes or ask `GET /upcheck`. Exits 0 on success, 1 on failure.
    Probe {
        /// The node, host:port (e.g. node1.org2.acme.test:30303).
        target: String,
        /// DNS server to resolve through, IP:PORT [default: the system resolver].
        #[arg(long, value_name = "IP:PORT")]
        dns: Option<SocketAddr>,
        /// Ask `GET /upcheck` instead of echoing.
        #[arg(long)]
        http: bool,
        /// Bytes to echo.
        #[arg(long, default_value_t = 1024)]
        bytes: usize,
        /// Bound on the whole probe.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print one JSON object (target, ok, addr, elapsed_ms, error); the exit code is the
        /// same.
        #[arg(long)]
        json: bool,
    },
    /// Create a join token for an org (prints the token on stdout).
    Invite {
        /// The org the token admits.
        org: String,
        #[command(flatten)]
        dir: AdminDirArg,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many joins the token admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Print one JSON object (org, token_id, token, uses, ttl_s) instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// Join a consortium with a token from its operator.
    ///
    /// The token holds a secret: give it in a file (`--token-file`), on standard input (`-`), or
    /// in the FEDGW_JOIN_TOKEN environment variable rather than as an argument, which every local
    /// user can read in `ps`.
    #[command(group(clap::ArgGroup::new("token_source").required(true).args(["token", "token_file"])))]
    Join {
        /// The token printed by `fedgw invite`, or `-` to read it from standard input. Prefer
        /// `-`, --token-file or FEDGW_JOIN_TOKEN: an argument is visible to every local user.
        #[arg(env = "FEDGW_JOIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        token: Option<String>,
        /// Read the token from the first line of this file (at most 4 KiB).
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The org to join as (must match the invite).
        #[arg(long)]
        org: String,
        #[command(flatten)]
        dir: DataDirArg,
        #[command(flatten)]
        network: NetworkArgs,
        /// Bound on the exchange with the inviting gateway.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print the outcome as one JSON object (consortium, domain, org, site, gateway,
        /// data_dir); progress still goes to stderr.
        #[arg(long)]
        json: bool,
    },
    /// Run a whole consortium on this machine: one gateway process per org on loopback.
    Lab {
        /// Number of orgs.
        #[arg(long, default_value_t = 3)]
        orgs: usize,
        /// Where the orgs' data dirs go [default: a new temporary directory].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Run every step, print PASS/FAIL per step, and exit (0 only if all passed).
        #[arg(long)]
        check: bool,
        /// Consortium name.
        #[arg(long, default_value = "acme")]
        consortium: String,
        /// Consortium domain.
        #[arg(long, default_value = "acme.test")]
        domain: String,
    },
    /// TLS certificates for this org's nodes (Tessera, Fabric), from the org CA.
    Cert {
        #[command(subcommand)]
        command: cert_cmds::CertCommand,
    },
    /// Manage this org's nodes.
    Node {
        #[command(subcommand)]
        command: admin_cmds::NodeCommand,
    },
    /// List every node in this gateway's view.
    Nodes {
        #[command(flatten)]
        dir: AdminDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List member orgs (and pending joins).
    Members {
        #[command(flatten)]
        dir: AdminDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show peers, link state, last sync and the view digest.
    Status {
        #[command(flatten)]
        dir: AdminDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Render a client config from this gateway's view (stdout, or --out FILE).
    Render {
        /// What to render.
        #[arg(value_enum)]
        kind: admin_cmds::RenderKind,
        /// The node, for raft-join: `NAME` (this org's) or `ORG/NAME`.
        node: Option<String>,
        #[command(flatten)]
        dir: AdminDirArg,
        /// Write here (atomically, only when the content changes) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only the nodes registered with this client software [default: every node].
        #[arg(long, value_enum, value_name = "CLIENT")]
        client: Option<admin_cmds::ClientArg>,
        /// Keep --out current: render again on every change of the gateway's view until
        /// stopped, waiting for the gateway while it is down.
        #[arg(long, requires = "out")]
        watch: bool,
        /// With --watch: a `sh -c` command run after each rewrite of --out (the file's path in
        /// FEDGW_RENDERED); a failed hook is reported and the watch goes on.
        #[arg(long, value_name = "COMMAND", requires = "watch")]
        hook: Option<String>,
        /// Format of fabric-connection-profile [default: json].
        #[arg(long, value_enum)]
        format: Option<fabric_cmds::FormatArg>,
        /// With --out: print {"path", "changed"} for each write (without --out the rendered
        /// file itself is the output).
        #[arg(long, requires = "out")]
        json: bool,
    },
    /// The chain behind the gateways.
    Chain {
        #[command(subcommand)]
        command: chain_cmds::ChainCommand,
    },
    /// Vote for a pending join (majority/all admission).
    Approve {
        /// The candidate org.
        org: String,
        #[command(flatten)]
        dir: AdminDirArg,
    },
    /// Revoke an org (on the gateway holding the root key).
    Revoke {
        /// The org to revoke.
        org: String,
        #[command(flatten)]
        dir: AdminDirArg,
        /// Why, recorded in the revocation.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The audit trail, newest first: every record this gateway accepted and every action it
    /// took (invites, chain RPC calls); `--verify` re-checks it (gateway stopped).
    Audit(audit_cmds::AuditArgs),
    /// The certificates each member org published (certificate transparency).
    Certs(audit_cmds::CertsArgs),
    /// The gateway's store (`store rebuild` after damage).
    Store {
        #[command(subcommand)]
        command: store_cmds::StoreCommand,
    },
    /// Write deployment manifests from this data dir (`export k8s`: the Secret the pods read).
    Export {
        #[command(subcommand)]
        command: export_cmds::ExportCommand,
    },
    /// Check a mutual-TLS federation link to another gateway.
    Ping {
        /// The other gateway, host:port.
        endpoint: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Bound on the exchange.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    #[command(flatten)]
    Diagnose(diagnose_cmds::DiagnoseCommand),
    #[command(flatten)]
    Backup(backup_cmds::BackupCommand),
    /// Further gateways of this site (`replica add` on a gateway of the site, `replica join`
    /// on the new one's host).
    Replica {
        #[command(subcommand)]
        command: replica_cmds::ReplicaCommand,
    },
    #[command(flatten)]
    Docs(docs_cmds::DocsCommand),
}

/// Parses arguments and runs the command.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<(), CliError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return Err(CliError::new(exit::USAGE, anyhow::anyhow!("invalid usage")));
        }
        Err(e) => {
            let _ = e.print();
            return Ok(());
        }
    };
    let threads = match &cli.command {
        Command::Run { worker_threads, .. } => *worker_threads,
        // the other commands are short-lived clients, or the lab, which runs its gateways as
        // `fedgw run` processes
        _ => 1,
    };
    match runtime(threads)
        .context("starting the tokio runtime")?
        .block_on(dispatch(cli.command))
    {
        // the reader has what it wanted: nothing to report, nobody to report it to
        Err(e) if e.error.is::<StdoutClosed>() => Ok(()),
        result => result,
    }
}

/// Most threads `fedgw run --worker-threads` accepts: a typo such as 100000 is refused rather
/// than spawning that many threads.
const MAX_WORKER_THREADS: i64 = 1024;

/// The runtime for `threads` (see `fedgw run --worker-threads`): a current-thread runtime for 1,
/// a multi-thread one otherwise (0: one worker per CPU).
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Runtime::new(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
}

async fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Init {
            consortium,
            domain,
            org,
            admission,
            consensus,
            genesis,
            dir,
            network,
        } => {
            let genesis = genesis
                .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()?;
            let opts = InitOptions {
                consortium,
                domain,
                org,
                admission,
                consensus,
                genesis,
                network: network.options()?,
            };
            let data = DataDir::new(dir.data_dir);
            let config = provision::init(&data, &opts, SystemTime::now()).map_err(|e| match e {
                provision::ProvisionError::Advertise(_)
                | provision::ProvisionError::Config(_)
                | provision::ProvisionError::Genesis(_)
                | provision::ProvisionError::Occupied(_) => CliError::new(exit::USAGE, e),
                e => CliError::new(exit::FAILURE, e),
            })?;
            outln!(
                "founded consortium {} ({}) as {}; data dir {}",
                config.consortium,
                config.domain,
                config.org,
                data.root().display()
            )?;
            Ok(())
        }
        Command::Run {
            dir,
            wait_for_config,
            log_format,
            worker_threads: _,
            console,
        } => {
            crate::telemetry::init(log_format);
            let options = crate::app::RunOptions { console };
            run(DataDir::new(dir.data_dir), wait_for_config, options).await
        }
        Command::StandIn { echo, http } => dev_cmds::stand_in(echo, http).await,
        Command::Probe {
            target,
            dns,
            http,
            bytes,
            timeout,
            json,
        } => {
            let kind = if http {
                crate::dev::standin::ProbeKind::Upcheck
            } else {
                crate::dev::standin::ProbeKind::Echo(bytes)
            };
            let result = crate::dev::standin::probe(&target, dns, kind, timeout).await;
            if json {
                let v = match &result {
                    Ok(ok) => serde_json::json!({
                        "target": target, "ok": true, "addr": ok.addr.to_string(),
                        "elapsed_ms": ok.elapsed.as_millis() as u64, "error": null,
                    }),
                    Err(e) => serde_json::json!({
                        "target": target, "ok": false, "addr": null, "elapsed_ms": null,
                        "error": format!("{e:#}"),
                    }),
                };
                outln!("{v}")?;
                return result
                    .map(|_| ())
                    .map_err(|e| CliError::new(exit::FAILURE, e));
            }
            match result {
                Ok(ok) => {
                    outln!(
                        "ok {target} -> {} in {} ms",
                        ok.addr,
                        ok.elapsed.as_millis()
                    )?;
                    Ok(())
                }
                Err(e) => Err(CliError::new(exit::FAILURE, e)),
            }
        }
        Command::Invite {
            org,
            dir,
            ttl,
            uses,
            json,
        } => join_cmds::invite(dir, org, ttl, uses, json).await,
        Command::Join {
            token,
            token_file,
            org,
            dir,
            network,
            timeout,
            json,
        } => {
            let token = join_cmds::read_token(token, token_file)?;
            join_cmds::join(
                token,
                org,
                DataDir::new(dir.data_dir),
                network.options()?,
                timeout,
                json,
            )
            .await
        }
        Command::Lab {
            orgs,
            dir,
            check,
            consortium,
            domain,
        } => dev_cmds::lab(orgs, dir, check, consortium, domain).await,
        Command::Cert { command } => cert_cmds::cert(command).await,
        Command::Node { command } => admin_cmds::node(command).await,
        Command::Nodes { dir, json } => admin_cmds::nodes(dir, json).await,
        Command::Members { dir, json } => admin_cmds::members(dir, json).await,
        Command::Status { dir, json } => status_cmds::status(dir, json).await,
        Command::Approve { org, dir } => admin_cmds::approve(org, dir).await,
        Command::Render {
            kind,
            node,
            dir,
            out,
            client,
            watch,
            hook,
            format,
            json,
        } => {
            let output = admin_cmds::RenderOutput {
                out,
                watch: watch.then_some(hook),
                json,
            };
            admin_cmds::render(kind, node, dir, client, format, output).await
        }
        Command::Chain { command } => chain_cmds::chain(command).await,
        Command::Revoke { org, dir, reason } => admin_cmds::revoke(org, dir, reason).await,
        Command::Store { command } => store_cmds::store(command).await,
        Command::Audit(args) => audit_cmds::audit(args).await,
        Command::Certs(args) => audit_cmds::certs(args).await,
        Command::Export { command } => export_cmds::export(command).await,
        Command::Ping {
            endpoint,
            dir,
            json,
            timeout,
        } => ping(endpoint, DataDir::new(dir.data_dir), json, timeout).await,
        Command::Diagnose(command) => diagnose_cmds::diagnose(command).await,
        Command::Backup(command) => backup_cmds::backup(command).await,
        Command::Replica { command } => replica_cmds::replica(command).await,
        Command::Docs(command) => docs_cmds::docs(command),
    }
}

async fn run(
    dir: DataDir,
    wait_for_config: bool,
    options: crate::app::RunOptions,
) -> Result<(), CliError> {
    if wait_for_config && !dir.config().exists() {
        tracing::info!(dir = %dir.root().display(), "waiting for fedgw init or fedgw join");
        let stop = tokio::spawn(wait_for_signal());
        while !dir.config().exists() {
            if stop.is_finished() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // fedgw.toml is renamed into place last, so its presence means a complete data dir
        stop.abort();
    }
    if !dir.config().exists() {
        return Err(usage(format!(
            "{} has no fedgw.toml (run `fedgw init` or `fedgw join` first)",
            dir.root().display()
        )));
    }
    let shutdown = CancellationToken::new();
    // before start: a gateway still fetching its membership from peers stops cleanly too
    let sd = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        sd.cancel();
    });
    let rebuild = format!(
        "`fedgw store rebuild --data-dir {}` moves it aside and fetches the records again from \
         the peers",
        dir.root().display()
    );
    let running = crate::app::start_with(dir, options, shutdown.clone())
        .await
        .map_err(|e| {
            use crate::app::RunError;
            use crate::membership::bootstrap::BootstrapError;
            use crate::store::StoreError;
            match e {
                RunError::Provision(provision::ProvisionError::Config(_))
                | RunError::Console(_)
                | RunError::Bootstrap(BootstrapError::NoPeers { .. }) => {
                    CliError::new(exit::USAGE, e)
                }
                RunError::Store(StoreError::Damaged { .. })
                | RunError::Provision(provision::ProvisionError::Store(StoreError::Damaged {
                    ..
                })) => CliError::new(exit::STORE_DAMAGED, anyhow::anyhow!("{e}; {rebuild}")),
                e => CliError::new(exit::FAILURE, e),
            }
        })?;
    running.wait().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn ping(
    endpoint: String,
    dir: DataDir,
    json: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let (loaded, config) =
        provision::federation_client_config(&dir, None).map_err(|e| match e {
            provision::ProvisionError::Config(_) => CliError::new(exit::USAGE, e),
            e => CliError::new(exit::FAILURE, e),
        })?;
    let outcome = crate::federation::hello(
        &endpoint,
        config,
        &loaded.config.domain,
        &loaded.config.site,
        timeout,
    )
    .await
    .map_err(|e| {
        CliError::new(
            exit::UNREACHABLE,
            anyhow::anyhow!("{}", crate::net::with_sources(&e)),
        )
    })?;
    if json {
        let v = serde_json::json!({
            "server": {"org": outcome.server.org, "dns_name": outcome.server.dns_name,
                       "spiffe_id": outcome.server.spiffe_id, "site": outcome.server_site},
            "seen_as": {"org": outcome.seen_as.org, "dns_name": outcome.seen_as.dns_name,
                        "spiffe_id": outcome.seen_as.spiffe_id},
        });
        outln!("{v}")?;
    } else {
        outln!(
            "mTLS ok: {} is {} ({}); it sees us as {} ({})",
            endpoint,
            outcome.server.org,
            outcome.server.dns_name,
            outcome.seen_as.org,
            outcome.seen_as.dns_name
        )?;
    }
    Ok(())
}
