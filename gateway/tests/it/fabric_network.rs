//! Opt-in: a real Hyperledger Fabric channel across two sites, with fedgw's identities, renders
//! and tunnels. org1 runs an etcdraft orderer, org2 a peer; both carry MSPs from `fedgw cert
//! fabric-msp`. `fedgw render fabric-configtx-orgs` and `fabric-consenters` feed the
//! configtx.yaml this test writes (channel participation, no system channel);
//! `configtxgen -outputBlock` makes the genesis block; `osnadmin channel join` puts the orderer
//! on the channel; org2's admin fetches the blocks from the orderer through org2's gateway and
//! the tunnel, and `peer channel join` puts the peer on the channel.
//!
//! Set `FEDGW_TEST_FABRIC_BIN` to a folder with `configtxgen`, `orderer`, `peer` and
//! `osnadmin` (Fabric 3.x: the channel has V3_0 capabilities), and `FEDGW_TEST_FABRIC_CONFIG`
//! to a folder with Fabric's `core.yaml` and `orderer.yaml` (default: `config` beside the
//! binaries' folder, as Fabric's release archives lay them out); every setting the test needs
//! is given as `CORE_*` / `ORDERER_*` variables over those files. No Docker: the peer runs without a chaincode
//! runtime. Without the variable the test passes at once and says it was skipped.
//!
//! Names: Fabric's processes resolve host names with the system resolver, which cannot be
//! pointed at a gateway's DNS port, so they are given addresses, and the TLS server name is set
//! apart from them: the peer CLI dials the orderer's local address at org2's site with
//! `--ordererTLSHostnameOverride orderer0.org1.acme.test`, and the peer itself with
//! `CORE_PEER_TLS_SERVERHOSTOVERRIDE=peer0.org2.acme.test`. The TLS certificates name only the
//! consortium names, so each handshake proves the name is checked end to end through the
//! tunnel. `osnadmin` has no such override: the orderer's admin endpoint (local to org1's
//! site, never tunnelled) has a certificate for 127.0.0.1 that this test signs with org1's CA,
//! while osnadmin's client certificate is org1's admin TLS pair from `fedgw cert fabric-msp`
//! (mutual TLS, the consortium root as the admin endpoint's client root). The peer's own
//! deliver client dials the orderer endpoints of the channel config, consortium names it cannot
//! resolve here; the test does not depend on it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::procs::{fedgw, s};
use crate::support::*;
use fedgw_gateway::config::{Admission, Config};
use fedgw_proto::v1 as pb;

const BIN_ENV: &str = "FEDGW_TEST_FABRIC_BIN";
const CONFIG_ENV: &str = "FEDGW_TEST_FABRIC_CONFIG";
const CHANNEL: &str = "fedgwchannel";
/// Bound on each Fabric step (a start, a join, a fetch); the orderer elects itself within a
/// few seconds, the rest is quicker.
const STEP: Duration = Duration::from_secs(60);

fn site(i: u8) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
            pool: format!("127.91.{i}.0/24"),
            interface: None,
        };
        c.tunnel.allow_loopback_targets = true;
    }
}

/// A port free on 127.0.0.1 now (bound to 0, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A Fabric process, killed when dropped; its output goes to a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc { child, log }
    }

    /// The last lines of the log, for failure messages.
    fn tail(&self) -> String {
        tail(&self.log)
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}):\n{}", self.tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs a command to its end (killed after [`STEP`]); returns whether it succeeded and its
/// output (stdout, then stderr).
async fn output(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > STEP {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("join")
}

/// Runs `cmd` (made anew by `make` for each try) until it succeeds and `done` holds for its
/// output, for at most [`STEP`]; returns the output, or panics with the last one and `logs`.
async fn until(
    what: &str,
    make: impl Fn() -> Command,
    done: impl Fn(&str) -> bool,
    procs: &mut [(&str, &mut Proc)],
) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let (ok, out) = output(make()).await;
        if ok && done(&out) {
            return out;
        }
        for (name, p) in procs.iter_mut() {
            p.assert_running(name);
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|(name, p)| format!("--- {name} log:\n{}", p.tail()))
                .collect();
            panic!(
                "{what} did not succeed within {STEP:?}:\n{out}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fedgw ARGS`, which must succeed; returns its stdout.
async fn cli(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let run = fedgw().run(&args).expect("spawn fedgw");
        assert_eq!(run.code, Some(0), "fedgw {args:?}: {}", run.stderr);
        run.stdout
    })
    .await
    .expect("join")
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|a| (*a).to_owned()).collect()
}

/// `fedgw cert fabric-msp NODE --role ROLE` from `data` into `out`.
async fn msp(data: &Path, node: &str, role: &str, out: &Path) {
    cli(args(&[
        "cert",
        "fabric-msp",
        node,
        "--role",
        role,
        "--data-dir",
        &s(data),
        "--out-dir",
        &s(out),
    ]))
    .await;
}

/// A TLS pair for the orderer's admin endpoint at 127.0.0.1, signed by the org CA in `data`
/// (fedgw issues DNS names only; osnadmin checks the address it dials).
fn admin_endpoint_pair(data: &fedgw_gateway::datadir::DataDir, out: &Path) -> (PathBuf, PathBuf) {
    let ca_pem = std::fs::read_to_string(data.org_cert()).expect("org CA");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.org_key()).expect("key"))
        .expect("org CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "orderer0 admin endpoint");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    std::fs::create_dir_all(out).expect("mkdir");
    let (c, k) = (out.join("admin.crt"), out.join("admin.key"));
    std::fs::write(&c, format!("{}{ca_pem}", cert.pem())).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

/// configtx.yaml around the rendered `Organizations` and `Consenters`: one profile with an
/// etcdraft orderer (org1) and one application org (org2), for channel participation.
fn configtx(orgs: &str, consenters: &str) -> String {
    let consenters: String = consenters
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let implicit = |indent: &str, admins: &str| {
        format!(
            "{indent}Readers:\n{indent}    Type: ImplicitMeta\n{indent}    Rule: \"ANY Readers\"\n\
             {indent}Writers:\n{indent}    Type: ImplicitMeta\n{indent}    Rule: \"ANY Writers\"\n\
             {indent}Admins:\n{indent}    Type: ImplicitMeta\n{indent}    Rule: \"{admins} Admins\"\n"
        )
    };
    let policies = implicit("        ", "MAJORITY");
    format!(
        "{orgs}\
Capabilities:
    Channel: &ChannelCapabilities
        V3_0: true
    Orderer: &OrdererCapabilities
        V2_0: true
    Application: &ApplicationCapabilities
        V2_5: true
Application: &ApplicationDefaults
    Organizations:
    Policies:
{policies}        LifecycleEndorsement:
            Type: ImplicitMeta
            Rule: \"MAJORITY Endorsement\"
        Endorsement:
            Type: ImplicitMeta
            Rule: \"MAJORITY Endorsement\"
    Capabilities:
        <<: *ApplicationCapabilities
Orderer: &OrdererDefaults
    OrdererType: etcdraft
    BatchTimeout: 1s
    BatchSize:
        MaxMessageCount: 10
        AbsoluteMaxBytes: 10 MB
        PreferredMaxBytes: 2 MB
    EtcdRaft:
{consenters}    Organizations:
    Policies:
{policies}        BlockValidation:
            Type: ImplicitMeta
            Rule: \"ANY Writers\"
    Capabilities:
        <<: *OrdererCapabilities
Channel: &ChannelDefaults
    Policies:
{policies}    Capabilities:
        <<: *ChannelCapabilities
Profiles:
    FedgwChannel:
        <<: *ChannelDefaults
        Orderer:
            <<: *OrdererDefaults
            Organizations:
                - *Org1MSP
        Application:
            <<: *ApplicationDefaults
            Organizations:
                - *Org2MSP
"
    )
}

/// The address and port org2's gateway serves `org1/orderer0`'s `orderer` service at, once
/// its listener is up.
async fn local_orderer(gw: &Gw) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes = gw
            .admin()
            .await
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("list nodes")
            .into_inner()
            .nodes;
        let addr = nodes
            .iter()
            .find(|n| n.org == "org1" && n.name == "orderer0")
            .and_then(|n| {
                let ip = n.local_ip.parse().ok()?;
                let port = u16::try_from(*n.local_ports.get("orderer")?).ok()?;
                Some(SocketAddr::new(ip, port))
            });
        if let Some(addr) = addr
            && gw.run().tunnels.listening().contains(&addr)
        {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "org2 has no listener for orderer0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fabric_peer_at_one_site_joins_a_channel_of_an_orderer_at_another() {
    let Ok(bin) = std::env::var(BIN_ENV) else {
        eprintln!(
            "skipped: set {BIN_ENV} to a folder with Fabric's configtxgen, orderer, peer and \
             osnadmin to run a real Fabric channel through the gateways"
        );
        return;
    };
    let started = Instant::now();
    let bin = PathBuf::from(bin);
    let config = std::env::var_os(CONFIG_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| bin.join("../config"));
    for (dir, file) in [
        (&bin, "configtxgen"),
        (&bin, "orderer"),
        (&bin, "peer"),
        (&bin, "osnadmin"),
        (&config, "core.yaml"),
        (&config, "orderer.yaml"),
    ] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing (see {BIN_ENV} and {CONFIG_ENV})",
            dir.join(file).display()
        );
    }
    let tool = |name: &str| {
        let mut cmd = Command::new(bin.join(name));
        cmd.env("FABRIC_CFG_PATH", &config)
            .env("FABRIC_LOGGING_SPEC", "info");
        cmd
    };

    let mut fed = Fed::found_with(Admission::Operator, site(1)).await;
    fed.add("org2", false, site(2)).await;
    fed.converged().await;
    let (org1, org2) = (fed.gws[0].dir.clone(), fed.gws[1].dir.clone());
    let work = fed.path("fabric");
    let root = org1.root_cert();

    // identities: the orderer and org1's admin, the peer and org2's admin
    let orderer_dir = work.join("orderer0");
    let org1_admin = work.join("org1-admin");
    let peer_dir = work.join("peer0");
    let org2_admin = work.join("org2-admin");
    msp(org1.root(), "orderer0", "orderer", &orderer_dir).await;
    msp(org1.root(), "admin", "admin", &org1_admin).await;
    msp(org2.root(), "peer0", "peer", &peer_dir).await;
    msp(org2.root(), "admin", "admin", &org2_admin).await;

    // the nodes, with named services; the orderer publishes its TLS certificate
    let (orderer_port, admin_port, orderer_ops) = (free_port(), free_port(), free_port());
    let (peer_port, chaincode_port, peer_ops) = (free_port(), free_port(), free_port());
    cli(args(&[
        "node",
        "add",
        "orderer0",
        "--client",
        "fabric-orderer",
        "--host",
        "127.0.0.1",
        "--service",
        &format!("orderer={orderer_port}"),
        "--service",
        &format!("admin={admin_port}"),
        "--tls-cert",
        &s(&orderer_dir.join("tls/server.crt")),
        "--data-dir",
        &s(org1.root()),
    ]))
    .await;
    cli(args(&[
        "node",
        "add",
        "peer0",
        "--client",
        "fabric-peer",
        "--host",
        "127.0.0.1",
        "--service",
        &format!("peer={peer_port}"),
        "--role",
        "anchor",
        "--data-dir",
        &s(org2.root()),
    ]))
    .await;
    fed.converged().await;
    let orderer_at_org2 = local_orderer(&fed.gws[1]).await;
    assert!(
        matches!(orderer_at_org2.ip(), std::net::IpAddr::V4(ip) if ip.octets()[..3] == [127, 91, 2]),
        "org2 reaches the orderer at an address of its own pool: {orderer_at_org2}"
    );

    // configtx.yaml from the renderers and each org's verifying MSP
    for (data, org) in [(&org1, "org1"), (&org2, "org2")] {
        let out = work.join(format!("organizations/{org}/msp"));
        cli(args(&[
            "cert",
            "fabric-org-msp",
            "--data-dir",
            &s(data.root()),
            "--out-dir",
            &s(&out),
        ]))
        .await;
    }
    let orgs = cli(args(&[
        "render",
        "fabric-configtx-orgs",
        "--data-dir",
        &s(org1.root()),
    ]))
    .await;
    let consenters_file = work.join("consenters.yaml");
    cli(args(&[
        "render",
        "fabric-consenters",
        "--data-dir",
        &s(org1.root()),
        "--out",
        &s(&consenters_file),
    ]))
    .await;
    let consenters = std::fs::read_to_string(&consenters_file).expect("consenters");
    assert!(
        consenters.contains(&format!("Host: orderer0.org1.{DOMAIN}"))
            && consenters.contains(&format!("Port: {orderer_port}")),
        "{consenters}"
    );
    std::fs::write(work.join("configtx.yaml"), configtx(&orgs, &consenters)).expect("write");
    let genesis = work.join("genesis.block");
    let mut cmd = tool("configtxgen");
    cmd.args(["-profile", "FedgwChannel", "-channelID", CHANNEL])
        .arg("-configPath")
        .arg(&work)
        .arg("-outputBlock")
        .arg(&genesis);
    let (ok, out) = output(cmd).await;
    assert!(ok, "configtxgen:\n{out}");

    // the orderer at org1's site: channel participation, admin endpoint with mutual TLS
    let (admin_crt, admin_key) = admin_endpoint_pair(&org1, &work.join("orderer0-admin"));
    let tls = orderer_dir.join("tls");
    let mut cmd = tool("orderer");
    cmd.env("ORDERER_GENERAL_LISTENADDRESS", "127.0.0.1")
        .env("ORDERER_GENERAL_LISTENPORT", orderer_port.to_string())
        .env("ORDERER_GENERAL_LOCALMSPID", "Org1MSP")
        .env("ORDERER_GENERAL_LOCALMSPDIR", orderer_dir.join("msp"))
        .env("ORDERER_GENERAL_BOOTSTRAPMETHOD", "none")
        .env("ORDERER_GENERAL_TLS_ENABLED", "true")
        .env("ORDERER_GENERAL_TLS_CERTIFICATE", tls.join("server.crt"))
        .env("ORDERER_GENERAL_TLS_PRIVATEKEY", tls.join("server.key"))
        .env("ORDERER_GENERAL_TLS_ROOTCAS", format!("[{}]", s(&root)))
        .env("ORDERER_CHANNELPARTICIPATION_ENABLED", "true")
        .env(
            "ORDERER_ADMIN_LISTENADDRESS",
            format!("127.0.0.1:{admin_port}"),
        )
        .env("ORDERER_ADMIN_TLS_ENABLED", "true")
        .env("ORDERER_ADMIN_TLS_CERTIFICATE", &admin_crt)
        .env("ORDERER_ADMIN_TLS_PRIVATEKEY", &admin_key)
        .env("ORDERER_ADMIN_TLS_ROOTCAS", format!("[{}]", s(&root)))
        .env("ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED", "true")
        .env("ORDERER_ADMIN_TLS_CLIENTROOTCAS", format!("[{}]", s(&root)))
        .env(
            "ORDERER_OPERATIONS_LISTENADDRESS",
            format!("127.0.0.1:{orderer_ops}"),
        )
        .env("ORDERER_METRICS_PROVIDER", "disabled")
        .env("ORDERER_FILELEDGER_LOCATION", work.join("orderer-data"))
        .env("ORDERER_CONSENSUS_WALDIR", work.join("orderer-data/wal"))
        .env("ORDERER_CONSENSUS_SNAPDIR", work.join("orderer-data/snap"));
    let mut orderer = Proc::spawn(cmd, work.join("orderer.log"));

    // osnadmin channel join, as org1's admin (retried until the admin endpoint listens)
    let admin = org1_admin.join("tls");
    let osnadmin = || {
        let mut cmd = tool("osnadmin");
        cmd.args(["channel", "join", "--channelID", CHANNEL])
            .arg("--config-block")
            .arg(&genesis)
            .args(["-o", &format!("127.0.0.1:{admin_port}")])
            .arg("--ca-file")
            .arg(&root)
            .arg("--client-cert")
            .arg(admin.join("server.crt"))
            .arg("--client-key")
            .arg(admin.join("server.key"));
        cmd
    };
    let joined = until(
        "osnadmin channel join",
        osnadmin,
        |out| out.contains("201") || out.contains("already exists"),
        &mut [("orderer", &mut orderer)],
    )
    .await;
    assert!(joined.contains(CHANNEL), "{joined}");

    // the peer at org2's site, without Docker
    let ptls = peer_dir.join("tls");
    let no_builder = work.join("no-builder");
    std::fs::create_dir_all(no_builder.join("bin")).expect("mkdir");
    let mut cmd = tool("peer");
    cmd.args(["node", "start"])
        .env("CORE_PEER_ID", format!("peer0.org2.{DOMAIN}"))
        .env(
            "CORE_PEER_ADDRESS",
            format!("peer0.org2.{DOMAIN}:{peer_port}"),
        )
        .env("CORE_PEER_LISTENADDRESS", format!("127.0.0.1:{peer_port}"))
        .env(
            "CORE_PEER_CHAINCODELISTENADDRESS",
            format!("127.0.0.1:{chaincode_port}"),
        )
        .env(
            "CORE_PEER_CHAINCODEADDRESS",
            format!("127.0.0.1:{chaincode_port}"),
        )
        .env("CORE_PEER_GOSSIP_BOOTSTRAP", "")
        .env("CORE_PEER_GOSSIP_EXTERNALENDPOINT", "")
        .env("CORE_PEER_LOCALMSPID", "Org2MSP")
        .env("CORE_PEER_MSPCONFIGPATH", peer_dir.join("msp"))
        .env("CORE_PEER_TLS_ENABLED", "true")
        .env("CORE_PEER_TLS_CERT_FILE", ptls.join("server.crt"))
        .env("CORE_PEER_TLS_KEY_FILE", ptls.join("server.key"))
        .env("CORE_PEER_TLS_ROOTCERT_FILE", ptls.join("ca.crt"))
        .env("CORE_PEER_FILESYSTEMPATH", work.join("peer-data"))
        .env(
            "CORE_LEDGER_SNAPSHOTS_ROOTDIR",
            work.join("peer-data/snapshots"),
        )
        .env(
            "CORE_OPERATIONS_LISTENADDRESS",
            format!("127.0.0.1:{peer_ops}"),
        )
        .env("CORE_METRICS_PROVIDER", "disabled")
        // no Docker; the peer wants a chaincode runtime named, so an external builder that
        // is never used (no chaincode is installed)
        .env("CORE_VM_ENDPOINT", "")
        .env(
            "CORE_CHAINCODE_EXTERNALBUILDERS",
            format!(r#"[{{"name": "unused", "path": "{}"}}]"#, s(&no_builder)),
        );
    let mut peer = Proc::spawn(cmd, work.join("peer.log"));

    // org2's admin: the peer CLI, dialling the peer here and the orderer through the tunnel
    let peer_cli = |sub: &[&str]| {
        let mut cmd = tool("peer");
        cmd.args(sub)
            .env("CORE_PEER_LOCALMSPID", "Org2MSP")
            .env("CORE_PEER_MSPCONFIGPATH", org2_admin.join("msp"))
            .env("CORE_PEER_ADDRESS", format!("127.0.0.1:{peer_port}"))
            .env("CORE_PEER_TLS_ENABLED", "true")
            .env("CORE_PEER_TLS_ROOTCERT_FILE", &root)
            .env(
                "CORE_PEER_TLS_SERVERHOSTOVERRIDE",
                format!("peer0.org2.{DOMAIN}"),
            );
        cmd
    };
    let via_tunnel = [
        "-o".to_owned(),
        orderer_at_org2.to_string(),
        "--ordererTLSHostnameOverride".to_owned(),
        format!("orderer0.org1.{DOMAIN}"),
        "--tls".to_owned(),
        "--cafile".to_owned(),
        s(&root),
        "-c".to_owned(),
        CHANNEL.to_owned(),
    ];
    let block0 = work.join("block0.block");
    let fetch0 = || {
        let mut cmd = peer_cli(&["channel", "fetch", "0"]);
        cmd.arg(&block0).args(&via_tunnel);
        cmd
    };
    let fetched = until(
        "peer channel fetch 0 through the tunnel",
        fetch0,
        |out| out.contains("Received block: 0"),
        &mut [("orderer", &mut orderer), ("peer", &mut peer)],
    )
    .await;
    let genesis_bytes = std::fs::read(&genesis).expect("genesis");
    assert_eq!(
        std::fs::read(&block0).expect("block 0"),
        genesis_bytes,
        "the orderer's block 0 is the genesis block: {fetched}"
    );

    let join = || {
        let mut cmd = peer_cli(&["channel", "join", "-b"]);
        cmd.arg(&block0);
        cmd
    };
    until(
        "peer channel join",
        join,
        |out| out.contains("Successfully submitted proposal to join channel"),
        &mut [("orderer", &mut orderer), ("peer", &mut peer)],
    )
    .await;
    let info = until(
        "peer channel getinfo",
        || peer_cli(&["channel", "getinfo", "-c", CHANNEL]),
        |out| out.contains("\"height\":"),
        &mut [("peer", &mut peer)],
    )
    .await;
    let height: u64 = info
        .split("\"height\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no height in {info}"));
    assert!(height >= 1, "{info}");

    // the newest block, through the tunnel again
    let newest = work.join("newest.block");
    let fetch_newest = || {
        let mut cmd = peer_cli(&["channel", "fetch", "newest"]);
        cmd.arg(&newest).args(&via_tunnel);
        cmd
    };
    until(
        "peer channel fetch newest through the tunnel",
        fetch_newest,
        |out| out.contains("Received block:"),
        &mut [("orderer", &mut orderer), ("peer", &mut peer)],
    )
    .await;
    assert!(std::fs::metadata(&newest).expect("newest block").len() > 0);
    // the streams crossed org2's gateway into its link to org1
    let status = fed.gws[1].status().await;
    assert!(
        status.tunnels.iter().any(|t| t.org == "org1"),
        "org2 has a link to org1: {status:?}"
    );
    let sent: u64 = status.classes.iter().map(|c| c.bytes).sum();
    assert!(sent > 0, "nothing went into org2's tunnels: {status:?}");

    drop(peer);
    drop(orderer);
    fed.stop_all().await;
    eprintln!(
        "a Fabric channel across two sites: peer height {height}, {sent} bytes into org2's \
         tunnels, done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
