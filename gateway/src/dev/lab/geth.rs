//! `fedgw lab --geth PATH`: real GoQuorum raft nodes in place of the stand-ins. One node per
//! org, each in a network namespace of its own ([`crate::dev::geth`] says why), found a raft
//! cluster; then one more node at the last org is registered there and fedgw alone makes it a
//! member (the acting gateway's `raft_addPeer`, the raft id it publishes as the node's
//! `--raftjoinexisting`). The lab prints the cluster growing by one and a transaction sent at
//! the first org's node mined and seen at every other node.
//!
//! Needs root, `ip` and an empty network namespace (`unshare -n`): the gateways' DNS listens on
//! port 53 of each namespace's veth, and remote nodes' local addresses go on `lo`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::{Child, Command};

use super::{Gateway, LabError, STEP_TIMEOUT, Steps, fail};
use crate::dev::geth::{self, GethNode, Key, Netns};
use crate::provision::NetworkOptions;

/// What the lab keeps running for the GoQuorum nodes: the `geth` processes and the namespaces,
/// stopped and removed by [`Running::stop`].
#[derive(Default)]
pub(super) struct Running {
    children: Vec<Child>,
    namespaces: Vec<Netns>,
}

impl Running {
    /// Stops every `geth` (SIGTERM, then SIGKILL after 10 s) and removes the namespaces.
    pub(super) async fn stop(&mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.children.clear();
        for ns in self.namespaces.drain(..) {
            ns.remove();
        }
    }
}

/// Makes a namespace for each org's node and one for the node added later.
pub(super) fn namespaces(orgs: usize, running: &mut Running) -> Result<Vec<Netns>, LabError> {
    if !geth::in_empty_network_namespace() {
        return Err(fail(
            "options",
            "--geth adds interfaces and addresses: run the lab as root in a network namespace \
             of its own with nothing but lo, e.g. unshare -n sh -c 'ip link set lo up && fedgw \
             lab --geth PATH'",
        ));
    }
    let mut out = vec![];
    for k in 1..=orgs + 1 {
        let ns = Netns::new(
            std::process::id(),
            u8::try_from(k).map_err(|e| fail("network namespaces", e))?,
        );
        ns.create().map_err(|e| fail("network namespaces", e))?;
        running.namespaces.push(ns.clone());
        out.push(ns);
    }
    Ok(out)
}

/// Org `i`'s (1-based) network with GoQuorum nodes: DNS on port 53 of its node's veth, its pool
/// `10.201.<i>.0/24` on `lo`.
pub(super) fn network(mut net: NetworkOptions, ns: &Netns, i: usize) -> NetworkOptions {
    net.dns = std::net::SocketAddr::from((ns.host_ip, 53));
    net.addresses = crate::addressing::AddressMode::Ip {
        pool: format!("10.201.{}.0/24", i % 256),
        interface: Some("lo".into()),
    };
    net
}

async fn register(gw: &Gateway, n: &GethNode) -> Result<(), LabError> {
    let step = format!("register {} at {}", n.name, gw.org);
    let mut client = crate::admin::connect(&gw.info.admin)
        .await
        .map_err(|e| fail(&step, e))?;
    client
        .add_node(fedgw_proto::v1::AddNodeRequest {
            node: Some(fedgw_proto::v1::NodeSpec {
                name: n.name.clone(),
                client: fedgw_proto::v1::ClientKind::Goquorum.into(),
                enode_id: n.key.enode_id().as_bytes().to_vec(),
                host: n.ip.to_string(),
                p2p_port: u32::from(n.p2p),
                raft_port: u32::from(n.raft),
                rpc_url: n.rpc_url(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| fail(&step, e.message()))?;
    Ok(())
}

/// The raft id `gw` lists for its node `name` once published.
async fn raft_id(gw: &Gateway, name: &str) -> Result<u32, LabError> {
    let step = format!("raft id of {name}.{}", gw.org);
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut client = crate::admin::connect(&gw.info.admin)
            .await
            .map_err(|e| fail(&step, e))?;
        let nodes = client
            .list_nodes(fedgw_proto::v1::ListNodesRequest {})
            .await
            .map_err(|e| fail(&step, e.message()))?
            .into_inner()
            .nodes;
        if let Some(id) = nodes
            .iter()
            .find(|i| i.org == gw.org && i.name == name)
            .map(|i| i.raft_id)
            .filter(|id| *id != 0)
        {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err(fail(&step, "not published in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` reports a raft cluster of `count` active members.
async fn cluster_of(n: &GethNode, count: usize) -> Result<(), LabError> {
    let step = format!("raft cluster of {count}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = geth::rpc(&n.rpc_url(), "raft_cluster", json!([])).await;
        if let Ok(v) = &last
            && let Some(members) = v.as_array()
            && members.len() == count
            && members.iter().all(|m| m["nodeActive"] == true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(&step, format!("{}/{}: {last:?}", n.org, n.name)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What every node of the lab's chain starts from.
struct Chain<'a> {
    /// The `geth` binary.
    bin: &'a Path,
    /// The genesis file.
    genesis: &'a Path,
    /// `static-nodes.json`: the first members.
    statics: &'a str,
}

/// `geth init`, then `geth` with `args` in `ns` with `resolv` as its `/etc/resolv.conf`.
async fn init_and_start(
    chain: &Chain<'_>,
    n: &GethNode,
    ns: &Netns,
    resolv: &Path,
    args: &[String],
    running: &mut Running,
) -> Result<(), LabError> {
    let Chain {
        bin,
        genesis,
        statics,
    } = *chain;
    let step = format!("start GoQuorum {}.{}", n.name, n.org);
    geth::prepare(n, Some(statics)).map_err(|e| fail(&step, e))?;
    let out = Command::new(bin)
        .args(geth::init_args(n, genesis))
        .output()
        .await
        .map_err(|e| fail(&step, e))?;
    if !out.status.success() {
        return Err(fail(
            &step,
            format!("geth init: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    let log = std::fs::File::create(n.datadir.with_extension("log")).map_err(|e| fail(&step, e))?;
    let log2 = log.try_clone().map_err(|e| fail(&step, e))?;
    let (program, argv) = ns.command(bin, resolv, args);
    let child = Command::new(program)
        .args(argv)
        .env("PRIVATE_CONFIG", "ignore")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(&step, e))?;
    running.children.push(child);
    Ok(())
}

/// The GoQuorum part of the lab, after the gateways are up and linked.
pub(super) async fn run(
    bin: &Path,
    dir: &Path,
    domain: &str,
    gateways: &[Gateway],
    namespaces: &[Netns],
    steps: &mut Steps,
    running: &mut Running,
) -> Result<(), LabError> {
    let node = |org: &str, name: &str, ns: &Netns| -> Result<GethNode, LabError> {
        Ok(GethNode {
            org: org.to_owned(),
            name: name.to_owned(),
            key: Key::from_seed(&format!("fedgw lab {org}/{name}")).map_err(|e| fail("keys", e))?,
            ip: ns.node_ip,
            p2p: 30303,
            raft: 50400,
            rpc: 8545,
            datadir: dir.join("geth").join(format!("{org}-{name}")),
        })
    };
    let mut nodes = vec![];
    for (gw, ns) in gateways.iter().zip(namespaces) {
        nodes.push(node(&gw.org, "node1", ns)?);
    }
    let last = gateways.last().ok_or_else(|| fail("options", "no orgs"))?;
    let extra_ns = namespaces
        .get(gateways.len())
        .ok_or_else(|| fail("options", "no namespace for the added node"))?;
    let extra = node(&last.org, "node2", extra_ns)?;
    let resolv = |n: &GethNode, site: &Netns| -> Result<PathBuf, LabError> {
        let path = dir
            .join("geth")
            .join(format!("resolv-{}-{}.conf", n.org, n.name));
        std::fs::create_dir_all(dir.join("geth")).map_err(|e| fail("resolv.conf", e))?;
        std::fs::write(&path, geth::resolv_conf(site.host_ip))
            .map_err(|e| fail("resolv.conf", e))?;
        Ok(path)
    };

    for (gw, n) in gateways.iter().zip(&nodes) {
        let t = Instant::now();
        let r = register(gw, n).await;
        steps.report(
            &format!("register GoQuorum {}.{} at {}", n.name, n.org, gw.org),
            t,
            &r,
        );
        r?;
    }
    let t = Instant::now();
    let r = super::converge(gateways, nodes.len()).await;
    steps.report("every gateway lists every node with a local address", t, &r);
    r?;

    let account = Key::from_seed("fedgw lab account").map_err(|e| fail("keys", e))?;
    let genesis = dir.join("geth").join("genesis.json");
    std::fs::create_dir_all(dir.join("geth")).map_err(|e| fail("genesis", e))?;
    std::fs::write(&genesis, geth::raft_genesis(&[account.address()]))
        .map_err(|e| fail("genesis", e))?;
    let first: Vec<&GethNode> = nodes.iter().collect();
    let statics = geth::static_nodes(&first, domain);
    let chain = Chain {
        bin,
        genesis: &genesis,
        statics: &statics,
    };
    let t = Instant::now();
    let r = async {
        for (n, ns) in nodes.iter().zip(namespaces) {
            let resolv = resolv(n, ns)?;
            init_and_start(&chain, n, ns, &resolv, &n.raft_args(&[]), running).await?;
        }
        cluster_of(&nodes[0], nodes.len()).await
    }
    .await;
    steps.report(
        &format!(
            "GoQuorum raft cluster of {} members, one per org",
            nodes.len()
        ),
        t,
        &r,
    );
    r?;

    let t = Instant::now();
    let r = async {
        register(last, &extra).await?;
        raft_id(last, &extra.name).await
    }
    .await;
    steps.report(
        &format!(
            "register {}.{} at {}: fedgw adds it to the cluster",
            extra.name, extra.org, last.org
        ),
        t,
        &r,
    );
    let id = r?;
    let t = Instant::now();
    let r = async {
        super::converge(gateways, nodes.len() + 1).await?;
        let site = namespaces
            .get(gateways.len() - 1)
            .ok_or_else(|| fail("options", "no namespace"))?;
        let resolv = resolv(&extra, site)?;
        let join = vec![
            "--raftjoinexisting".to_owned(),
            id.to_string(),
            "--raftdnsenable".to_owned(),
        ];
        init_and_start(
            &chain,
            &extra,
            extra_ns,
            &resolv,
            &extra.raft_args(&join),
            running,
        )
        .await?;
        cluster_of(&nodes[0], nodes.len() + 1).await
    }
    .await;
    steps.report(
        &format!(
            "raft cluster grows from {} to {} members ({}.{} started with --raftjoinexisting {id})",
            nodes.len(),
            nodes.len() + 1,
            extra.name,
            extra.org
        ),
        t,
        &r,
    );
    r?;

    nodes.push(extra);
    let t = Instant::now();
    let r = transaction(&nodes, &account).await;
    steps.report(
        &format!(
            "a transaction sent at {}.{} is mined and seen at every other node",
            nodes[0].name, nodes[0].org
        ),
        t,
        &r,
    );
    r.map(|_| ())
}

/// Sends a transaction at the first node and waits for its receipt at every node.
async fn transaction(nodes: &[GethNode], account: &Key) -> Result<String, LabError> {
    let step = "transaction";
    let at = &nodes[0];
    geth::rpc(
        &at.rpc_url(),
        "personal_importRawKey",
        json!([account.hex(), geth::ACCOUNT_PASSWORD]),
    )
    .await
    .map_err(|e| fail(step, e))?;
    let tx = geth::rpc(
        &at.rpc_url(),
        "personal_sendTransaction",
        json!([{
            "from": account.address().to_string(),
            "to": format!("0x{}dead", "0".repeat(36)),
            "value": "0x1",
            "gas": "0x5208",
            "gasPrice": "0x0"
        }, geth::ACCOUNT_PASSWORD]),
    )
    .await
    .map_err(|e| fail(step, e))?;
    for n in nodes {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let r = geth::rpc(
                &n.rpc_url(),
                "eth_getTransactionReceipt",
                json!([tx.clone()]),
            )
            .await;
            if let Ok(receipt) = &r
                && !receipt.is_null()
            {
                if receipt["status"] != "0x1" {
                    return Err(fail(step, format!("{}.{}: {receipt}", n.name, n.org)));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(
                    step,
                    format!("no receipt at {}.{}: {r:?}", n.name, n.org),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(tx.to_string())
}
