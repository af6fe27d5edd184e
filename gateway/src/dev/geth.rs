//! Real GoQuorum nodes on one machine, for `fedgw lab --geth` and the opt-in tests with a
//! GoQuorum binary: node keys, the raft and IBFT geneses, `static-nodes.json`, the `geth`
//! arguments, a network namespace per node and the command that starts `geth` in it.
//!
//! Written for GoQuorum 21.1 (geth 1.9 flag names: `--rpc`, `--rpcaddr`, `--rpcport`,
//! `--rpcapi`). GoQuorum's raft transport listens on every address (`0.0.0.0:RAFTPORT`,
//! hard-coded), so it cannot share a host with a gateway that keeps a remote node's real ports
//! on a local address (IP mode, which raft needs): each node runs in a network namespace of its
//! own ([`Netns`]), joined to the caller's by a veth pair (`10.200.<k>.1` on the caller's side,
//! `10.200.<k>.2` the node's), with its default route to the caller's side. The gateways then
//! give remote nodes local addresses from a non-loopback pool put on an interface
//! (`--address-pool 10.201.<k>.0/24 --alias-interface lo`), which the nodes reach over that
//! route: every p2p and raft connection between sites goes through the gateways and tunnels.
//!
//! Names: members run with `--raftdnsenable` and know each other as `NODE.ORG.DOMAIN`, which
//! `geth` resolves with the system resolver. Each node's mount namespace (`ip netns exec` makes
//! one) has a file bind-mounted over `/etc/resolv.conf` ([`resolv_conf`]) naming its site's
//! gateway DNS on port 53 of the caller's side of the veth, as a real site's resolver would
//! forward the consortium domain to it. All of it needs root and `ip` (iproute2).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fedgw_proto::enode::{Address, EnodeId};
use serde_json::{Value, json};

/// The RPC APIs every node enables: what the raft keeper, live peering and the transaction
/// check call.
pub const RPC_APIS: &str = "admin,eth,net,raft,personal,txpool,web3";

/// The chain id of the genesis [`raft_genesis`] writes.
pub const CHAIN_ID: u64 = 10;

/// The password the transaction check's account is imported with (a throw-away key).
pub const ACCOUNT_PASSWORD: &str = "fedgw-lab";

/// A secp256k1 private key: a node key, or an account key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a seed gave no key (the hash was zero or above the curve order: practically never).
#[derive(Debug, thiserror::Error)]
#[error("the seed {0:?} gives no secp256k1 key")]
pub struct KeyError(String);

impl Key {
    /// A key derived from `seed` (SHA-256 of it): the same seed gives the same node, so a lab
    /// started again with the same names has the same enode ids. Not for real chains.
    pub fn from_seed(seed: &str) -> Result<Key, KeyError> {
        let bytes: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(seed.as_bytes()),
        )
        .into();
        k256::SecretKey::from_bytes(&bytes.into()).map_err(|_| KeyError(seed.to_owned()))?;
        Ok(Key(bytes))
    }

    /// The key as `geth` reads a `nodekey` file and `personal_importRawKey` takes it: 64 hex
    /// digits, no prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The public key as an enode id.
    pub fn enode_id(&self) -> EnodeId {
        use k256::elliptic_curve::sec1::ToEncodedPoint;
        let secret = k256::SecretKey::from_bytes(&self.0.into()).expect("checked when made");
        let point = secret.public_key().to_encoded_point(false);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&point.as_bytes()[1..]);
        EnodeId::from_key_bytes(raw).expect("a public key is on the curve")
    }

    /// The account address of this key.
    pub fn address(&self) -> Address {
        self.enode_id().address()
    }
}

/// One GoQuorum raft node as the lab or the test runs it.
#[derive(Debug, Clone)]
pub struct GethNode {
    /// The org that runs it.
    pub org: String,
    /// Its name within the org.
    pub name: String,
    /// Its node key.
    pub key: Key,
    /// Its address: the node's side of its namespace's veth pair ([`Netns::node_ip`]).
    pub ip: Ipv4Addr,
    /// devp2p port.
    pub p2p: u16,
    /// Raft port.
    pub raft: u16,
    /// JSON-RPC port (on [`GethNode::ip`]).
    pub rpc: u16,
    /// Its data directory.
    pub datadir: PathBuf,
}

impl GethNode {
    /// `NAME.ORG.DOMAIN`.
    pub fn dns_name(&self, domain: &str) -> String {
        format!("{}.{}.{domain}", self.name, self.org)
    }

    /// The enode URL `fedgw node add --enode` takes: the real address and both ports.
    pub fn registered_enode(&self) -> String {
        format!(
            "enode://{}@{}:{}?discport=0&raftport={}",
            self.key.enode_id(),
            self.ip,
            self.p2p,
            self.raft
        )
    }

    /// The enode URL the cluster knows the node by: its consortium name, as the raft keeper's
    /// `raft_addPeer` spells it (docs/DESIGN.md section 13).
    pub fn cluster_enode(&self, domain: &str) -> String {
        format!(
            "enode://{}@{}:{}?discport=0&raftport={}",
            self.key.enode_id(),
            self.dns_name(domain),
            self.p2p,
            self.raft
        )
    }

    /// The JSON-RPC URL `fedgw node add --rpc` takes.
    pub fn rpc_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.rpc)
    }

    /// The `geth` arguments that run this node as a raft member: a first member with `join`
    /// `None` (the cluster is `static-nodes.json`), or a node added later with the arguments
    /// `fedgw render raft-join` printed (`--raftjoinexisting ID --raftdnsenable`).
    pub fn raft_args(&self, join: &[String]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--datadir",
            &self.datadir.display().to_string(),
            "--port",
            &self.p2p.to_string(),
            "--nodiscover",
            "--nousb",
            "--raft",
            "--raftport",
            &self.raft.to_string(),
            "--emitcheckpoints",
            "--rpc",
            "--rpcaddr",
            &self.ip.to_string(),
            "--rpcport",
            &self.rpc.to_string(),
            "--rpcapi",
            RPC_APIS,
            "--lightkdf",
            "--verbosity",
            "3",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        if join.is_empty() {
            args.push("--raftdnsenable".into());
        } else {
            args.extend(join.iter().cloned());
        }
        args
    }
}

/// A raft genesis (GoQuorum 21.1): every fork at block 0, `isQuorum`, a high gas limit, and
/// `funded` accounts with a balance (gas is free on GoQuorum, the balance only for show).
pub fn raft_genesis(funded: &[Address]) -> String {
    genesis(
        funded,
        None,
        "0x0",
        "0x".into(),
        &format!("0x{}", "0".repeat(64)),
    )
}

/// An IBFT genesis (GoQuorum 21.1 `istanbul`): as [`raft_genesis`], plus the `istanbul` config
/// (epoch 30000, round-robin proposers, Ceil(2N/3) from block 0), difficulty 1, the IBFT mix
/// digest and `validators` in the extra data ([`istanbul_extra`]).
pub fn istanbul_genesis(validators: &[Address], funded: &[Address]) -> String {
    genesis(
        funded,
        Some(json!({"epoch": 30000, "policy": 0, "ceil2Nby3Block": 0})),
        "0x1",
        istanbul_extra(validators),
        ISTANBUL_DIGEST,
    )
}

/// The mix digest every IBFT block carries ("ctical byzantine fault tolerance").
pub const ISTANBUL_DIGEST: &str =
    "0x63746963616c2062797a616e74696e65206661756c7420746f6c6572616e6365";

/// The IBFT genesis extra data: 32 zero bytes of vanity, then the RLP list
/// `[validators, seal (empty), committed seals (empty list)]`, as `0x` hex.
pub fn istanbul_extra(validators: &[Address]) -> String {
    let mut list = vec![];
    for v in validators {
        list.push(0x80 + 20);
        list.extend_from_slice(v.as_bytes());
    }
    let mut body = rlp_list_header(list.len());
    body.extend(list);
    body.push(0x80); // seal: the empty string
    body.push(0xc0); // committed seals: the empty list
    let mut extra = vec![0u8; 32];
    extra.extend(rlp_list_header(body.len()));
    extra.extend(body);
    format!(
        "0x{}",
        extra.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// An RLP list header for a payload of `len` bytes.
fn rlp_list_header(len: usize) -> Vec<u8> {
    if len < 56 {
        return vec![0xc0 + u8::try_from(len).expect("below 56")];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0xf7 + u8::try_from(bytes.len()).expect("at most 8")];
    out.extend(bytes);
    out
}

fn genesis(
    funded: &[Address],
    istanbul: Option<Value>,
    difficulty: &str,
    extra: String,
    mixhash: &str,
) -> String {
    let zero32 = format!("0x{}", "0".repeat(64));
    let alloc: serde_json::Map<String, Value> = funded
        .iter()
        .map(|a| {
            (
                a.to_string(),
                json!({"balance": "1000000000000000000000000000"}),
            )
        })
        .collect();
    let mut config = json!({
        "chainId": CHAIN_ID,
        "homesteadBlock": 0,
        "eip150Block": 0,
        "eip155Block": 0,
        "eip158Block": 0,
        "byzantiumBlock": 0,
        "constantinopleBlock": 0,
        "petersburgBlock": 0,
        "istanbulBlock": 0,
        "isQuorum": true
    });
    if let Some(i) = istanbul {
        config["istanbul"] = i;
    }
    let genesis = json!({
        "config": config,
        "alloc": alloc,
        "coinbase": format!("0x{}", "0".repeat(40)),
        "difficulty": difficulty,
        "extraData": extra,
        "gasLimit": "0xE0000000",
        "mixhash": mixhash,
        "nonce": "0x0",
        "parentHash": zero32,
        "timestamp": "0x00"
    });
    serde_json::to_string_pretty(&genesis).expect("a JSON value serialises")
}

impl GethNode {
    /// The `geth` arguments that run this node on an IBFT chain ([`istanbul_genesis`]): it
    /// mines (seals blocks once it is a validator, every second), and learns its peers from
    /// fedgw's live peering (`admin_addPeer`), so its RPC API has `admin` and `istanbul`.
    pub fn istanbul_args(&self) -> Vec<String> {
        [
            "--datadir",
            &self.datadir.display().to_string(),
            "--port",
            &self.p2p.to_string(),
            "--nodiscover",
            "--nousb",
            "--syncmode",
            "full",
            "--mine",
            "--minerthreads",
            "1",
            "--istanbul.blockperiod",
            "1",
            "--rpc",
            "--rpcaddr",
            &self.ip.to_string(),
            "--rpcport",
            &self.rpc.to_string(),
            "--rpcapi",
            ISTANBUL_RPC_APIS,
            "--verbosity",
            "3",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
}

/// The RPC APIs an IBFT node enables: live peering and the validator keeper's calls.
pub const ISTANBUL_RPC_APIS: &str = "admin,eth,net,istanbul,personal,web3";

/// `static-nodes.json` naming `members` by their consortium names: the initial raft cluster
/// (every first member holds the same file).
pub fn static_nodes(members: &[&GethNode], domain: &str) -> String {
    let urls: Vec<String> = members.iter().map(|n| n.cluster_enode(domain)).collect();
    serde_json::to_string_pretty(&urls).expect("strings serialise")
}

/// An `/etc/resolv.conf` naming one name server (the site's gateway DNS, port 53), quick to
/// give up: a name not yet in the zone fails at once and the caller retries.
pub fn resolv_conf(dns: Ipv4Addr) -> String {
    format!("nameserver {dns}\noptions timeout:1 attempts:1\n")
}

/// Writes the node's data directory (before `geth init`): the node key (`geth/nodekey`) and
/// `static-nodes.json`.
pub fn prepare(node: &GethNode, static_nodes: Option<&str>) -> std::io::Result<()> {
    let geth_dir = node.datadir.join("geth");
    std::fs::create_dir_all(&geth_dir)?;
    crate::datadir::write_atomic(&geth_dir.join("nodekey"), node.key.hex().as_bytes(), 0o600)?;
    if let Some(text) = static_nodes {
        crate::datadir::write_atomic(
            &node.datadir.join("static-nodes.json"),
            text.as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// The `geth init` arguments.
pub fn init_args(node: &GethNode, genesis: &Path) -> Vec<OsString> {
    vec![
        "--datadir".into(),
        node.datadir.clone().into(),
        "init".into(),
        genesis.into(),
    ]
}

/// A network namespace of the caller's making for node number `k` (1 to 254): named
/// `fedgw-<pid>-<k>`, joined to the caller's namespace by a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The veth on the caller's side.
    pub host_veth: String,
    /// The veth inside the namespace.
    pub node_veth: String,
    /// The caller's side: `10.200.<k>.1`.
    pub host_ip: Ipv4Addr,
    /// The node's side: `10.200.<k>.2`.
    pub node_ip: Ipv4Addr,
}

impl Netns {
    /// Names and addresses for node `k` of process `pid` (interface names stay within 15
    /// bytes).
    pub fn new(pid: u32, k: u8) -> Netns {
        Netns {
            name: format!("fedgw-{pid}-{k}"),
            host_veth: format!("fg{pid}h{k}"),
            node_veth: format!("fg{pid}n{k}"),
            host_ip: Ipv4Addr::new(10, 200, k, 1),
            node_ip: Ipv4Addr::new(10, 200, k, 2),
        }
    }

    /// The `ip` commands that make it: the namespace, the veth pair with a /30 at each end,
    /// both ends and the namespace's loopback up, its default route to the caller's side.
    pub fn setup(&self) -> Vec<Vec<String>> {
        let inside = |args: &[&str]| -> Vec<String> {
            ["netns", "exec", &self.name, "ip"]
                .iter()
                .chain(args)
                .map(|a| (*a).to_owned())
                .collect()
        };
        let host_cidr = format!("{}/30", self.host_ip);
        let node_cidr = format!("{}/30", self.node_ip);
        let host_ip = self.host_ip.to_string();
        vec![
            vec!["netns".into(), "add".into(), self.name.clone()],
            [
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &self.node_veth,
                "netns",
                &self.name,
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
            ["addr", "add", &host_cidr, "dev", &self.host_veth]
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            ["link", "set", &self.host_veth, "up"]
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            inside(&["addr", "add", &node_cidr, "dev", &self.node_veth]),
            inside(&["link", "set", &self.node_veth, "up"]),
            inside(&["link", "set", "lo", "up"]),
            inside(&["route", "add", "default", "via", &host_ip]),
        ]
    }

    /// The `ip` command that removes it (the veth pair goes with it).
    pub fn teardown(&self) -> Vec<String> {
        vec!["netns".into(), "del".into(), self.name.clone()]
    }

    /// Runs [`Netns::setup`] with `ip`, removing what was made if a step fails.
    pub fn create(&self) -> Result<(), String> {
        for args in self.setup() {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                self.remove();
                return Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// Removes it (errors ignored: it may be gone already).
    pub fn remove(&self) {
        let _ = std::process::Command::new("ip")
            .args(self.teardown())
            .output();
    }

    /// The program and arguments that run `geth` with `args` in this namespace, with
    /// `resolv_conf` bind-mounted over `/etc/resolv.conf` in the mount namespace `ip netns exec`
    /// makes: `ip netns exec NAME sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    /// RESOLV GETH ARGS...`. Run it with `PRIVATE_CONFIG=ignore` (no Tessera) in the
    /// environment.
    pub fn command(
        &self,
        geth: &Path,
        resolv_conf: &Path,
        args: &[String],
    ) -> (OsString, Vec<OsString>) {
        let mut all: Vec<OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            "sh".into(),
            "-c".into(),
            r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#.into(),
            resolv_conf.into(),
            geth.into(),
        ];
        all.extend(args.iter().map(OsString::from));
        ("ip".into(), all)
    }
}

/// Whether this process's network namespace has no interface but `lo` (as `unshare -n` makes
/// one) and the veths of other [`Netns`] (`fg…`, tests running beside each other): where the
/// lab and the opt-in tests may add interfaces and addresses without touching a host's.
pub fn in_empty_network_namespace() -> bool {
    std::fs::read_to_string("/proc/self/net/dev").is_ok_and(|text| only_loopback(&text))
}

/// Whether a `/proc/net/dev` text lists `lo` and, besides it, only [`Netns`] veths.
fn only_loopback(text: &str) -> bool {
    let names: Vec<&str> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    names.contains(&"lo")
        && names.iter().all(|n| {
            *n == "lo"
                || n.strip_prefix("fg")
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == 'h'))
        })
}

/// Calls `method` on a node's JSON-RPC endpoint (bounded by the client's 5 s).
pub async fn rpc(url: &str, method: &'static str, params: Value) -> Result<Value, String> {
    let url = url
        .parse::<fedgw_proto::rpc_url::RpcUrl>()
        .map_err(|e| format!("{url}: {e}"))?;
    crate::chain::rpc::RpcClient::new(url)
        .call::<Value>(method, params)
        .await
        .map_err(|e| format!("{method}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> GethNode {
        GethNode {
            org: format!("org{n}"),
            name: "node1".into(),
            key: Key::from_seed(&format!("test {n}")).expect("key"),
            ip: Netns::new(1, n).node_ip,
            p2p: 21000 + u16::from(n),
            raft: 50400 + u16::from(n),
            rpc: 22000 + u16::from(n),
            datadir: PathBuf::from(format!("/tmp/lab/geth/org{n}")),
        }
    }

    #[test]
    fn keys_give_the_enode_id_and_address_geth_derives() {
        // private key 1: the public key is the generator, whose address is well known
        let mut one = [0u8; 32];
        one[31] = 1;
        let key = Key(one);
        assert_eq!(
            key.enode_id().to_string()[..16],
            "79be667ef9dcbbac55a06295ce870b07"[..16]
        );
        assert_eq!(
            key.address().to_string(),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
        assert_eq!(key.hex(), format!("{}01", "0".repeat(62)));
        let a = Key::from_seed("fedgw lab org1/node1").expect("key");
        assert_eq!(a, Key::from_seed("fedgw lab org1/node1").expect("key"));
        assert_ne!(a, Key::from_seed("fedgw lab org2/node1").expect("key"));
        assert_eq!(format!("{a:?}"), "Key(..)");
    }

    #[test]
    fn genesis_static_nodes_and_arguments_for_a_raft_member() {
        let (a, b) = (node(1), node(2));
        let genesis: Value = serde_json::from_str(&raft_genesis(&[a.key.address()])).expect("json");
        assert_eq!(genesis["config"]["isQuorum"], true);
        assert_eq!(genesis["config"]["chainId"], CHAIN_ID);
        assert_eq!(genesis["difficulty"], "0x0");
        assert!(genesis["alloc"][a.key.address().to_string()]["balance"].is_string());

        let statics: Vec<String> =
            serde_json::from_str(&static_nodes(&[&a, &b], "acme.test")).expect("json");
        assert_eq!(
            statics[1],
            format!(
                "enode://{}@node1.org2.acme.test:21002?discport=0&raftport=50402",
                b.key.enode_id()
            )
        );
        let parsed = fedgw_proto::enode::parse_static_nodes(&static_nodes(&[&a], "acme.test"))
            .expect("fedgw reads it");
        assert_eq!(parsed[0].id, a.key.enode_id());
        assert_eq!(
            a.registered_enode(),
            format!(
                "enode://{}@10.200.1.2:21001?discport=0&raftport=50401",
                a.key.enode_id()
            )
        );
        assert_eq!(a.rpc_url(), "http://10.200.1.2:22001");

        let first = a.raft_args(&[]);
        let at = |flag: &str, args: &[String]| {
            args.iter()
                .position(|x| x == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(at("--raftport", &first).as_deref(), Some("50401"));
        assert_eq!(at("--rpcport", &first).as_deref(), Some("22001"));
        assert_eq!(at("--rpcapi", &first).as_deref(), Some(RPC_APIS));
        assert_eq!(at("--rpcaddr", &first).as_deref(), Some("10.200.1.2"));
        assert_eq!(at("--port", &first).as_deref(), Some("21001"));
        assert!(first.contains(&"--raftdnsenable".to_owned()));
        assert!(!first.iter().any(|x| x == "--raftjoinexisting"));
        let join: Vec<String> = "--raftjoinexisting 4 --raftdnsenable"
            .split(' ')
            .map(str::to_owned)
            .collect();
        let later = b.raft_args(&join);
        assert_eq!(at("--raftjoinexisting", &later).as_deref(), Some("4"));
        assert_eq!(later.iter().filter(|x| *x == "--raftdnsenable").count(), 1);
    }

    #[test]
    fn an_istanbul_genesis_names_its_validators_in_rlp() {
        let v: Vec<Address> = [
            "0x0102030405060708090a0b0c0d0e0f1011121314".to_owned(),
            "0x".to_owned() + &"ab".repeat(20),
        ]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
        let extra = istanbul_extra(&v);
        // vanity, list(45) [ list(42) [ 0x94 addr, 0x94 addr ], 0x80, 0xc0 ]
        let expected = format!(
            "0x{}ed{}{}{}{}80c0",
            "00".repeat(32),
            "ea",
            "94",
            "0102030405060708090a0b0c0d0e0f1011121314",
            "94".to_owned() + &"ab".repeat(20)
        );
        assert_eq!(extra, expected);
        // four validators: a long list header
        let four = istanbul_extra(&[v[0], v[1], v[0], v[1]]);
        assert!(
            four.starts_with(&format!("0x{}f858f854", "00".repeat(32))),
            "{four}"
        );
        assert!(four.ends_with("80c0"));
        let g: Value = serde_json::from_str(&istanbul_genesis(&v, &[])).expect("json");
        assert_eq!(g["extraData"], extra);
        assert_eq!(g["mixhash"], ISTANBUL_DIGEST);
        assert_eq!(g["difficulty"], "0x1");
        assert_eq!(g["config"]["istanbul"]["epoch"], 30000);
        let raft: Value = serde_json::from_str(&raft_genesis(&[])).expect("json");
        assert!(raft["config"]["istanbul"].is_null());
        let args = node(1).istanbul_args();
        assert!(args.contains(&"--mine".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--raft")));
        assert!(args.contains(&ISTANBUL_RPC_APIS.to_owned()));
    }

    #[test]
    fn resolver_namespaces_and_the_command() {
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 200, 1, 1)),
            "nameserver 10.200.1.1\noptions timeout:1 attempts:1\n"
        );
        let ns = Netns::new(4_194_304, 254);
        assert!(
            ns.host_veth.len() <= 15 && ns.node_veth.len() <= 15,
            "{ns:?}"
        );
        assert_eq!(ns.name, "fedgw-4194304-254");
        let ns = Netns::new(77, 3);
        let (program, args) = ns.command(
            Path::new("/opt/geth"),
            Path::new("/tmp/h"),
            &["--raft".to_owned()],
        );
        assert_eq!(program, "ip");
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..3], ["netns", "exec", "fedgw-77-3"]);
        assert_eq!(args[6..], ["/tmp/h", "/opt/geth", "--raft"]);
        let setup: Vec<String> = ns.setup().iter().map(|a| a.join(" ")).collect();
        assert_eq!(setup[0], "netns add fedgw-77-3");
        assert_eq!(
            setup[1],
            "link add fg77h3 type veth peer name fg77n3 netns fedgw-77-3"
        );
        assert_eq!(setup[2], "addr add 10.200.3.1/30 dev fg77h3");
        assert_eq!(
            setup.last().map(String::as_str),
            Some("netns exec fedgw-77-3 ip route add default via 10.200.3.1")
        );
        assert_eq!(ns.teardown().join(" "), "netns del fedgw-77-3");
        let dev = "Inter-|   Receive\n face |bytes\n    lo:       0       0\n";
        assert!(only_loopback(dev));
        assert!(!only_loopback(&format!("{dev}  eth0: 330390099\n")));
        assert!(!only_loopback(""));
        assert!(only_loopback(&format!("{dev}fg77h3: 0 0\n")));
        assert!(!only_loopback(&format!("{dev}fgeth0: 0 0\n")));
    }
}
