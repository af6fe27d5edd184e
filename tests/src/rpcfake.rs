//! A scripted JSON-RPC 2.0 fake of a GoQuorum raft node's RPC endpoint, on a loopback port.
//!
//! It holds a raft cluster (`raft_cluster`, `raft_addPeer`, `raft_addLearner`,
//! `raft_promoteToPeer`, `raft_removePeer`, `raft_role`) and answers `eth_blockNumber` and
//! `net_peerCount`. For live peering it also keeps a peer set (`admin_addPeer`,
//! `admin_removePeer`, `admin_peers`), a Besu node allowlist (`perm_addNodesToAllowlist`,
//! `perm_removeNodesFromAllowlist`, `perm_getNodesAllowlist`) and Tessera's ADMIN
//! `PUT /config/peers` (recorded as method `tessera_addPeer`, params the JSON body). It checks
//! params the way GoQuorum does (an enode URL with
//! `?discport=0&raftport=N`, no duplicate enode id) and records every call. A test can queue a
//! [`Cue`] per method to make the next call of it fail, answer garbage, a huge body, nothing, or
//! a given result.
//! Several gateways may share one fake: it then stands for one raft cluster reached at two sites.
//!
//! For QBFT/IBFT it keeps a validator set (addresses, `0x` and 40 hex digits) with GoQuorum's
//! `istanbul_*` and Besu's `qbft_*`/`ibft_*` namespaces: read the set, propose, discard and list
//! pending votes. [`RaftRpcFake::validator_node`] opens another endpoint on the same chain for
//! another node; each endpoint's votes are that node's. As in QBFT, a change applies once more
//! than half of the current validators hold a vote for it (checked after every vote); votes
//! stay until discarded, and a vote whose change already shows does nothing.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How the next call of a method misbehaves.
#[derive(Clone, Debug)]
pub enum Cue {
    /// A JSON-RPC error object with this message (code -32000).
    Error(String),
    /// A 200 answer whose body is not JSON.
    Garbage,
    /// A 200 answer with a body of this many bytes.
    Huge(usize),
    /// No answer until the fake stops (at most 60 s).
    Hang,
    /// The connection is closed without an answer.
    Close,
    /// The call takes effect, then no answer until the fake stops (at most 60 s): a gateway
    /// stopped meanwhile never learns the outcome.
    Stall,
    /// No answer until the fake stops (at most 60 s), and the call takes effect only after this
    /// long: a node that finishes a call its caller has already given up on (GoQuorum resolving
    /// a raft peer's host name during `raft_addPeer`, say).
    Late(Duration),
    /// This result instead of the real one (a stale `raft_cluster`, say); the call has no
    /// other effect.
    Result(Value),
}

/// One call as the fake saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The method.
    pub method: String,
    /// The params array.
    pub params: Value,
}

#[derive(Default)]
struct State {
    cluster: Vec<Value>,
    next_id: u64,
    calls: Vec<Call>,
    cues: HashMap<String, VecDeque<Cue>>,
    block: u64,
    down: bool,
    /// Enode URLs added with `admin_addPeer` (lost by [`RaftRpcFake::restart`]).
    peers: Vec<String>,
    /// Besu's node allowlist.
    allowlist: Vec<String>,
    /// Tessera peer URLs.
    tessera_peers: Vec<String>,
    /// Connections closed unanswered while down.
    refused: u64,
    /// The validator set, lowercase addresses, in order.
    validators: Vec<String>,
    /// Pending votes: voting node's address → (candidate address → add).
    votes: HashMap<String, std::collections::BTreeMap<String, bool>>,
}

/// The fake endpoint; stops when dropped.
pub struct RaftRpcFake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// The address of the node this endpoint stands for (its validator votes).
    me: Arc<String>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl RaftRpcFake {
    /// Starts the fake on a loopback port with an empty cluster.
    pub fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            next_id: 1,
            block: 7,
            ..State::default()
        }));
        Self::start_on(state, String::new())
    }

    /// Another endpoint on the same chain, for the node with validator address `address`
    /// (`0x` and 40 hex digits): its votes are its own, the set and everything else shared.
    /// Stops when dropped, like the first.
    pub fn validator_node(&self, address: &str) -> anyhow::Result<Self> {
        Self::start_on(self.state.clone(), address.to_ascii_lowercase())
    }

    fn start_on(state: Arc<Mutex<State>>, me: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let me = Arc::new(me);
        let (st, sp, who) = (state.clone(), stop.clone(), me.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp, who) = (st.clone(), sp.clone(), who.clone());
                std::thread::spawn(move || serve(conn, &st, &sp, &who));
            }
        });
        Ok(RaftRpcFake {
            addr,
            state,
            stop,
            me,
        })
    }

    /// The validator address this endpoint stands for (empty for the first endpoint).
    pub fn address(&self) -> &str {
        &self.me
    }

    /// Sets the validator set (addresses, any case).
    pub fn set_validators(&self, addresses: &[&str]) {
        lock(&self.state).validators = addresses.iter().map(|a| a.to_ascii_lowercase()).collect();
    }

    /// The validator set, lowercase.
    pub fn validators(&self) -> Vec<String> {
        lock(&self.state).validators.clone()
    }

    /// The pending votes of the node with `address`: candidate → add.
    pub fn votes_of(&self, address: &str) -> std::collections::BTreeMap<String, bool> {
        lock(&self.state)
            .votes
            .get(&address.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Puts a member into the cluster directly (an existing node); returns its raft id.
    pub fn add_member(&self, enode_id: &str, hostname: &str, raft_port: u16) -> u64 {
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        s.cluster.push(json!({
            "raftId": id, "nodeId": enode_id, "hostname": hostname, "raftPort": raft_port,
            "p2pPort": 30303, "role": if id == 1 { "minter" } else { "verifier" }, "nodeActive": true,
        }));
        id
    }

    /// Sets the block height `eth_blockNumber` answers.
    pub fn set_block(&self, block: u64) {
        lock(&self.state).block = block;
    }

    /// Sets whether the member with `enode_id` is listed `nodeActive` (its raft transport up, as
    /// GoQuorum reports once the new member has connected). Members added by
    /// `raft_addPeer`/`raft_addLearner` start inactive.
    pub fn set_active(&self, enode_id: &str, active: bool) {
        for p in &mut lock(&self.state).cluster {
            if p["nodeId"] == enode_id {
                p["nodeActive"] = json!(active);
            }
        }
    }

    /// Makes the next call of `method` misbehave as `cue` (cues queue up per method).
    pub fn cue(&self, method: &str, cue: Cue) {
        lock(&self.state)
            .cues
            .entry(method.to_owned())
            .or_default()
            .push_back(cue);
    }

    /// While down, every connection is closed at once without an answer.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Forgets the dynamic peers, as a node restart does (the allowlist is kept: Besu writes it
    /// to its permissions file).
    pub fn restart(&self) {
        lock(&self.state).peers.clear();
    }

    /// The enode URLs added with `admin_addPeer` and not removed.
    pub fn peers(&self) -> Vec<String> {
        lock(&self.state).peers.clone()
    }

    /// Besu's node allowlist.
    pub fn allowlist(&self) -> Vec<String> {
        lock(&self.state).allowlist.clone()
    }

    /// The Tessera peer URLs put with `PUT /config/peers`.
    pub fn tessera_peers(&self) -> Vec<String> {
        lock(&self.state).tessera_peers.clone()
    }

    /// How many connections were closed unanswered while down.
    pub fn refused(&self) -> u64 {
        lock(&self.state).refused
    }

    /// Every call of `method` so far, in order.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Every call so far, in order.
    pub fn all_calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The cluster as `raft_cluster` answers it.
    pub fn cluster(&self) -> Vec<Value> {
        lock(&self.state).cluster.clone()
    }
}

impl Drop for RaftRpcFake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wakes the accept loop so it sees the flag
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool, me: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((line, body)) = read_request(&mut conn) else {
        return;
    };
    {
        let mut s = lock(state);
        if s.down {
            s.refused += 1;
            return;
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return;
    };
    let tessera = line.starts_with("put ") && line.contains("/config/peers ");
    let (method, params, id) = if tessera {
        ("tessera_addPeer".to_owned(), req.clone(), Value::Null)
    } else {
        (
            req["method"].as_str().unwrap_or_default().to_owned(),
            req["params"].clone(),
            req["id"].clone(),
        )
    };
    let cue = {
        let mut s = lock(state);
        s.calls.push(Call {
            method: method.clone(),
            params: params.clone(),
        });
        s.cues.get_mut(&method).and_then(VecDeque::pop_front)
    };
    let reply = match cue {
        Some(Cue::Stall) => {
            let _ = answer(&mut lock(state), &id, &method, &params);
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Some(Cue::Late(delay)) => {
            let start = Instant::now();
            let mut applied = false;
            let end = start + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                if !applied && start.elapsed() >= delay {
                    let _ = answer(&mut lock(state), &id, &method, &params);
                    applied = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Some(Cue::Hang) => {
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Some(Cue::Close) => return,
        Some(Cue::Garbage) => b"<html>not json".to_vec(),
        Some(Cue::Huge(n)) => {
            let mut v = br#"{"jsonrpc":"2.0","id":1,"result":""#.to_vec();
            v.resize(n, b'a');
            v
        }
        Some(Cue::Error(msg)) if tessera => {
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
                    msg.len()
                )
                .as_bytes(),
            );
            return;
        }
        Some(Cue::Error(msg)) => error(&id, &msg),
        Some(Cue::Result(v)) => result(&id, v),
        None if tessera => {
            let mut s = lock(state);
            let url = params["url"].as_str().unwrap_or_default().to_owned();
            let status = if s.tessera_peers.contains(&url) {
                "200 OK"
            } else {
                s.tessera_peers.push(url);
                "201 Created"
            };
            let _ = conn.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            return;
        }
        None if method.contains("alidator") || VOTE_METHODS.contains(&method.as_str()) => {
            validator_answer(&mut lock(state), me, &id, &method, &params)
        }
        None => answer(&mut lock(state), &id, &method, &params),
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reply.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&reply);
}

/// Reads one request: its request line (lowercase) and its body.
fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = head.lines().next().unwrap_or_default().to_owned();
    Some((line, buf[head_end..head_end + len].to_vec()))
}

fn result(id: &Value, v: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "result": v})
        .to_string()
        .into_bytes()
}

fn error(id: &Value, msg: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": msg}})
        .to_string()
        .into_bytes()
}

/// Parses `enode://ID@HOST:PORT?discport=0&raftport=N` as GoQuorum's raft_addPeer requires.
fn parse_enode(url: &str) -> Result<(String, String, u64), &'static str> {
    let rest = url
        .strip_prefix("enode://")
        .ok_or("invalid enode: no enode:// scheme")?;
    let (id, rest) = rest.split_once('@').ok_or("invalid enode: no @")?;
    if id.len() != 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid enode: bad node id");
    }
    let (hostport, query) = rest.split_once('?').ok_or("raftport not given")?;
    let (host, _port) = hostport.rsplit_once(':').ok_or("invalid enode: no port")?;
    let mut raftport = None;
    let mut discport = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("raftport", v)) => raftport = v.parse::<u64>().ok(),
            Some(("discport", v)) => discport = Some(v.to_owned()),
            _ => return Err("invalid enode: unknown query parameter"),
        }
    }
    if discport.as_deref() != Some("0") {
        return Err("invalid enode: discport must be 0");
    }
    let raftport = raftport.filter(|p| *p > 0).ok_or("raftport not given")?;
    Ok((id.to_ascii_lowercase(), host.to_owned(), raftport))
}

/// Checks `enode://ID@HOST:PORT[?discport=0[&raftport=N]]` as geth's parser would.
fn check_enode(url: &str) -> Result<(), &'static str> {
    let rest = url.strip_prefix("enode://").ok_or("no enode:// scheme")?;
    let (id, rest) = rest.split_once('@').ok_or("no @")?;
    if id.len() != 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("bad node id");
    }
    let hostport = rest.split_once('?').map_or(rest, |(h, _)| h);
    let (host, port) = hostport.rsplit_once(':').ok_or("no port")?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("bad host or port");
    }
    Ok(())
}

fn answer(s: &mut State, id: &Value, method: &str, params: &Value) -> Vec<u8> {
    let arg = params.get(0);
    match method {
        "raft_cluster" => result(id, Value::Array(s.cluster.clone())),
        "raft_role" => result(id, json!("minter")),
        "eth_blockNumber" => result(id, json!(format!("0x{:x}", s.block))),
        "net_peerCount" => result(id, json!(format!("0x{:x}", s.cluster.len().saturating_sub(1)))),
        "raft_addPeer" | "raft_addLearner" => {
            let Some(url) = arg.and_then(Value::as_str) else {
                return error(id, "missing value for required argument 0");
            };
            let (node, host, raft_port) = match parse_enode(url) {
                Ok(v) => v,
                Err(e) => return error(id, e),
            };
            if s.cluster.iter().any(|p| p["nodeId"] == node.as_str()) {
                return error(id, "node with this enode has already been added to the cluster");
            }
            let raft_id = s.next_id;
            s.next_id += 1;
            let role = if method == "raft_addPeer" { "verifier" } else { "learner" };
            s.cluster.push(json!({
                "raftId": raft_id, "nodeId": node, "hostname": host, "raftPort": raft_port,
                "p2pPort": 30303, "role": role, "nodeActive": false,
            }));
            result(id, json!(raft_id))
        }
        "raft_promoteToPeer" | "raft_removePeer" => {
            let Some(raft_id) = arg.and_then(Value::as_u64) else {
                return error(id, "missing value for required argument 0");
            };
            let Some(i) = s.cluster.iter().position(|p| p["raftId"] == raft_id) else {
                return error(id, "raftId does not exist");
            };
            if method == "raft_removePeer" {
                s.cluster.remove(i);
                result(id, Value::Null)
            } else if s.cluster[i]["role"] != "learner" {
                error(id, "raftId is not a learner")
            } else {
                s.cluster[i]["role"] = json!("verifier");
                result(id, json!(true))
            }
        }
        "admin_addPeer" | "admin_removePeer" => {
            let Some(url) = arg.and_then(Value::as_str) else {
                return error(id, "missing value for required argument 0");
            };
            if let Err(e) = check_enode(url) {
                return error(id, &format!("invalid enode: {e}"));
            }
            s.peers.retain(|p| p != url);
            if method == "admin_addPeer" {
                s.peers.push(url.to_owned());
            }
            result(id, json!(true))
        }
        "admin_peers" => {
            let peers: Vec<Value> = s
                .peers
                .iter()
                .map(|p| json!({"enode": p, "id": "0000", "name": "Geth/v1.10.3-stable"}))
                .collect();
            result(id, Value::Array(peers))
        }
        "perm_getNodesAllowlist" => result(id, json!(s.allowlist)),
        "perm_addNodesToAllowlist" | "perm_removeNodesFromAllowlist" => {
            let Some(list) = arg.and_then(Value::as_array) else {
                return error(id, "missing value for required argument 0");
            };
            let urls: Vec<String> = list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            if urls.len() != list.len() || urls.iter().any(|u| check_enode(u).is_err()) {
                return error(id, "Invalid enode URL syntax");
            }
            let adding = method == "perm_addNodesToAllowlist";
            // Besu refuses the whole request when one entry is already (or not) there
            if urls.iter().any(|u| s.allowlist.contains(u) == adding) {
                return error(
                    id,
                    if adding {
                        "Cannot add an existing node to allowlist"
                    } else {
                        "Cannot remove an absent node from allowlist"
                    },
                );
            }
            if adding {
                s.allowlist.extend(urls);
            } else {
                s.allowlist.retain(|u| !urls.contains(u));
            }
            result(id, json!("Success"))
        }
        _ => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("the method {method} does not exist/is not available")}})
            .to_string()
            .into_bytes(),
    }
}

/// The vote methods that do not name "validator".
const VOTE_METHODS: [&str; 5] = [
    "istanbul_propose",
    "istanbul_discard",
    "istanbul_candidates",
    "qbft_getPendingVotes",
    "ibft_getPendingVotes",
];

/// An address argument as the clients take it: `0x` and 40 hex digits, any case.
fn address_arg(v: Option<&Value>) -> Option<String> {
    let a = v?.as_str()?;
    let digits = a.strip_prefix("0x")?;
    (digits.len() == 40 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| a.to_ascii_lowercase())
}

/// Applies every change that more than half of the current validators vote for.
fn tally(s: &mut State) {
    loop {
        let mut counts: std::collections::BTreeMap<(String, bool), usize> = Default::default();
        for v in &s.validators {
            for (cand, auth) in s.votes.get(v).into_iter().flatten() {
                if s.validators.contains(cand) != *auth {
                    *counts.entry((cand.clone(), *auth)).or_default() += 1;
                }
            }
        }
        let n = s.validators.len();
        let Some(((cand, auth), _)) = counts.into_iter().find(|(_, c)| 2 * c > n) else {
            return;
        };
        if auth {
            s.validators.push(cand);
        } else {
            s.validators.retain(|v| *v != cand);
        }
        s.block += 1;
    }
}

fn validator_answer(s: &mut State, me: &str, id: &Value, method: &str, params: &Value) -> Vec<u8> {
    let besu = !method.starts_with("istanbul_");
    match method {
        "istanbul_getValidators"
        | "qbft_getValidatorsByBlockNumber"
        | "ibft_getValidatorsByBlockNumber" => {
            if besu && params.get(0).and_then(Value::as_str) != Some("latest") {
                return error(id, "Invalid params");
            }
            result(id, json!(s.validators))
        }
        "istanbul_candidates" | "qbft_getPendingVotes" | "ibft_getPendingVotes" => {
            result(id, json!(s.votes.get(me).cloned().unwrap_or_default()))
        }
        "istanbul_propose" | "qbft_proposeValidatorVote" | "ibft_proposeValidatorVote" => {
            let (Some(cand), Some(auth)) = (
                address_arg(params.get(0)),
                params.get(1).and_then(Value::as_bool),
            ) else {
                return error(id, "Invalid params");
            };
            s.votes.entry(me.to_owned()).or_default().insert(cand, auth);
            tally(s);
            result(id, if besu { json!(true) } else { Value::Null })
        }
        "istanbul_discard" | "qbft_discardValidatorVote" | "ibft_discardValidatorVote" => {
            let Some(cand) = address_arg(params.get(0)) else {
                return error(id, "Invalid params");
            };
            if let Some(v) = s.votes.get_mut(me) {
                v.remove(&cand);
            }
            result(id, if besu { json!(true) } else { Value::Null })
        }
        _ => error(
            id,
            &format!("the method {method} does not exist/is not available"),
        ),
    }
}
