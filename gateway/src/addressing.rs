//! Local addresses for remote nodes (docs/DESIGN.md section 8). devp2p and raft carry no TLS or
//! SNI, so at each site every remote node needs an address of its own that the gateway answers
//! for:
//!
//! - **IP mode** (default): each remote node gets its own IP from a pool and keeps its real
//!   ports, so `name:port` is the same at every site (raft stores peer addresses in its log for
//!   ever and refuses two members on one IP and port);
//! - **port mode**: one IP, and each remote node's ports are allocated from a range (for
//!   networks without raft).
//!
//! Allocations are stable: a node keeps its address while it exists (the allocator state is
//! persisted by the caller), and a freed address is reused only after every other free one.
//! Pure: no IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// How remote nodes get local addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum AddressMode {
    /// One IP per remote node from `pool` (CIDR, IPv4), real ports kept.
    Ip {
        /// e.g. `127.77.0.0/16` on one host, or the alias range of a container's interface.
        pool: String,
        /// Put each allocated address on this interface as a `/32` alias (`"auto"`: the
        /// interface whose IPv4 subnet contains the pool); the alias module adds them. Unset: the
        /// addresses are local already (loopback) or handled outside fedgw.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
    },
    /// One IP for every remote node, ports allocated from `first_port..=last_port`.
    Port {
        /// The shared IP.
        ip: IpAddr,
        /// First port of the range.
        first_port: u16,
        /// Last port of the range.
        last_port: u16,
    },
}

impl Default for AddressMode {
    fn default() -> Self {
        AddressMode::Ip {
            pool: "127.77.0.0/16".into(),
            interface: None,
        }
    }
}

/// A node's local address at this site: its IP and, per port name (`p2p`, `raft`,
/// `tessera`), the local port (the real port in IP mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAddress {
    /// The IP this site's clients dial.
    pub ip: IpAddr,
    /// Port name → local port.
    pub ports: BTreeMap<String, u16>,
}

/// Errors from address allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The pool is not an IPv4 CIDR with room for at least one host.
    #[error("invalid address pool {0:?} (want an IPv4 CIDR such as 127.77.0.0/16)")]
    Pool(String),
    /// The port range is empty.
    #[error("invalid port range {0}-{1}")]
    PortRange(u16, u16),
    /// Every address (IP mode) or port (port mode) is taken.
    #[error("the address pool is full ({0} in use); widen it in fedgw.toml [addresses]")]
    Full(usize),
}

fn parse_pool(pool: &str) -> Result<(u32, u32), AddressError> {
    let err = || AddressError::Pool(pool.to_owned());
    let (ip, len) = pool.split_once('/').ok_or_else(err)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
    let len: u32 = len.parse().map_err(|_| err())?;
    if !(8..=30).contains(&len) {
        return Err(err());
    }
    let mask = u32::MAX << (32 - len);
    let net = u32::from(ip) & mask;
    // skip the network and broadcast addresses
    Ok((net + 1, (net | !mask) - 1))
}

/// The first and last host address of an IPv4 pool (`10.0.0.0/24` → `10.0.0.1`, `10.0.0.254`):
/// the range IP mode allocates from.
pub fn pool_range(pool: &str) -> Result<(Ipv4Addr, Ipv4Addr), AddressError> {
    let (first, last) = parse_pool(pool)?;
    Ok((Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

/// The allocator state: which node (`org/name`) holds what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// `org/name` → address.
    pub nodes: BTreeMap<String, LocalAddress>,
    /// Addresses freed, oldest first; reused only when nothing never-used is left.
    #[serde(default)]
    pub freed: Vec<u32>,
    /// What `nodes` and `freed` hold, indexed (not persisted: derived from them).
    #[serde(skip)]
    index: Index,
}

/// The values (IPs in IP mode, ports in port mode) `nodes` uses and those ever handed out
/// (used or freed), so that one allocation costs `log n`, not a scan of every node. Built on
/// first use; derived data, so two allocators compare equal whatever their index holds.
#[derive(Debug, Clone, Default)]
struct Index {
    /// The mode the index was built for (`None`: not built).
    built: Option<ModeKind>,
    used: BTreeSet<u32>,
    ever: BTreeSet<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModeKind {
    Ip,
    Port,
}

impl PartialEq for Index {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Index {}

/// The values an address takes up: its IP in IP mode, its ports in port mode.
fn values(kind: ModeKind, addr: &LocalAddress) -> Vec<u32> {
    match (kind, addr.ip) {
        (ModeKind::Ip, IpAddr::V4(ip)) => vec![u32::from(ip)],
        (ModeKind::Ip, IpAddr::V6(_)) => vec![],
        (ModeKind::Port, _) => addr.ports.values().map(|p| u32::from(*p)).collect(),
    }
}

/// What a remote node needs an address for: its real ports by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// `org/name`.
    pub node: String,
    /// Port name → the node's real port.
    pub ports: BTreeMap<String, u16>,
}

/// What one change did to the allocations, node by node, so that the store writes only the
/// rows it touched ([`crate::store::Store::write_allocations`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationChange {
    /// Nodes whose address is new or changed: (`org/name`, address).
    pub set: Vec<(String, LocalAddress)>,
    /// Nodes that hold no address any more (`org/name`).
    pub removed: Vec<String>,
    /// The whole freed list, when the change added to it or took from it.
    pub freed: Option<Vec<u32>>,
}

impl AllocationChange {
    /// Whether the change changed nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty() && self.freed.is_none()
    }

    /// Adds a `later` change to this one: for a node in both, the later row wins; the later
    /// freed list, if any, replaces this one's. Costs the size of both.
    pub fn merge(&mut self, later: AllocationChange) {
        if self.is_empty() {
            *self = later;
            return;
        }
        let touched: BTreeSet<String> = later
            .set
            .iter()
            .map(|(k, _)| k)
            .chain(&later.removed)
            .cloned()
            .collect();
        self.set.retain(|(k, _)| !touched.contains(k));
        self.removed.retain(|k| !touched.contains(k));
        self.set.extend(later.set);
        self.removed.extend(later.removed);
        if later.freed.is_some() {
            self.freed = later.freed;
        }
    }

    /// What changed between `before` and `after` for the nodes `keys` (each key once).
    fn between<'a, 'b>(
        keys: impl Iterator<Item = &'a String>,
        before: impl Fn(&String) -> Option<&'b LocalAddress>,
        after: &Allocations,
    ) -> Self {
        let mut change = Self::default();
        for key in keys {
            match (before(key), after.nodes.get(key)) {
                (Some(_), None) => change.removed.push(key.clone()),
                (old, Some(new)) if old != Some(new) => change.set.push((key.clone(), new.clone())),
                _ => {}
            }
        }
        change
    }
}

impl Allocations {
    /// An allocator holding `nodes` (`org/name` → address) and the `freed` values, oldest first:
    /// the state [`crate::store::Store`] persists.
    pub fn from_parts(nodes: BTreeMap<String, LocalAddress>, freed: Vec<u32>) -> Self {
        Self {
            nodes,
            freed,
            index: Index::default(),
        }
    }

    /// [`Self::sync`], returning also what it changed, node by node. Costs a copy of every
    /// node (a full pass, not a single change).
    pub fn sync_change(
        &mut self,
        mode: &AddressMode,
        needs: &[Need],
    ) -> (AllocationChange, Vec<(String, AddressError)>) {
        let before = self.nodes.clone();
        let freed = self.freed.clone();
        let failed = self.sync(mode, needs);
        let keys: BTreeSet<&String> = before.keys().chain(self.nodes.keys()).collect();
        let mut change = AllocationChange::between(keys.into_iter(), |k| before.get(k), self);
        change.freed = (self.freed != freed).then(|| self.freed.clone());
        (change, failed)
    }

    /// [`Self::update`], returning also what it changed, node by node. Costs about
    /// `(needs + gone) · log n` plus a copy of the freed list.
    pub fn update_change(
        &mut self,
        mode: &AddressMode,
        needs: &[Need],
        gone: &[String],
    ) -> (AllocationChange, Vec<(String, AddressError)>) {
        let keys: BTreeSet<&String> = needs.iter().map(|n| &n.node).chain(gone).collect();
        let before: BTreeMap<&String, LocalAddress> = keys
            .iter()
            .filter_map(|k| Some((*k, self.nodes.get(*k)?.clone())))
            .collect();
        let freed = self.freed.clone();
        let failed = self.update(mode, needs, gone);
        let mut change = AllocationChange::between(keys.into_iter(), |k| before.get(k), self);
        change.freed = (self.freed != freed).then(|| self.freed.clone());
        (change, failed)
    }

    /// Brings the allocations in line with `needs` (every remote node): nodes no longer there
    /// are freed, new nodes get an address, existing ones keep theirs (in port mode, a new port
    /// name gets a new port). Returns the nodes that could not be given an address.
    pub fn sync(&mut self, mode: &AddressMode, needs: &[Need]) -> Vec<(String, AddressError)> {
        let wanted: BTreeSet<&str> = needs.iter().map(|n| n.node.as_str()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        self.update(mode, needs, &gone)
    }

    /// Applies a change: the nodes in `gone` free their address, each of `needs` gets one or
    /// keeps its own (as [`Self::sync`] does, for these nodes only). Costs about
    /// `(needs + gone) · log n`. Returns the nodes that could not be given an address.
    pub fn update(
        &mut self,
        mode: &AddressMode,
        needs: &[Need],
        gone: &[String],
    ) -> Vec<(String, AddressError)> {
        self.index_for(mode);
        for node in gone {
            if let Some(addr) = self.nodes.remove(node) {
                self.free(mode, &addr);
            }
        }
        let mut failed = Vec::new();
        for need in needs {
            if let Err(e) = self.assign(mode, need) {
                failed.push((need.node.clone(), e));
            }
        }
        failed
    }

    fn kind(mode: &AddressMode) -> ModeKind {
        match mode {
            AddressMode::Ip { .. } => ModeKind::Ip,
            AddressMode::Port { .. } => ModeKind::Port,
        }
    }

    /// Builds the index for `mode` unless it is built already.
    fn index_for(&mut self, mode: &AddressMode) {
        let kind = Self::kind(mode);
        if self.index.built == Some(kind) {
            return;
        }
        let used: BTreeSet<u32> = self.nodes.values().flat_map(|a| values(kind, a)).collect();
        let mut ever = used.clone();
        ever.extend(self.freed.iter().copied());
        self.index = Index {
            built: Some(kind),
            used,
            ever,
        };
    }

    fn free(&mut self, mode: &AddressMode, addr: &LocalAddress) {
        for v in values(Self::kind(mode), addr) {
            self.index.used.remove(&v);
            self.freed.push(v);
        }
    }

    /// The next free value in `first..=last`: never-used values first (the highest handed out
    /// + 1 onwards, then the gaps), freed ones last, oldest first.
    fn take(&mut self, first: u32, last: u32) -> Option<u32> {
        let index = &mut self.index;
        let above = index
            .ever
            .range(first..=last)
            .next_back()
            .map_or(Some(first), |v| v.checked_add(1))
            .filter(|v| *v <= last);
        let fresh = above.or_else(|| (first..=last).find(|v| !index.ever.contains(v)));
        let v = match fresh {
            Some(v) => v,
            None => {
                let pos = self
                    .freed
                    .iter()
                    .position(|v| (first..=last).contains(v) && !index.used.contains(v))?;
                self.freed.remove(pos)
            }
        };
        index.used.insert(v);
        index.ever.insert(v);
        Some(v)
    }

    fn assign(&mut self, mode: &AddressMode, need: &Need) -> Result<(), AddressError> {
        match mode {
            AddressMode::Ip { pool, .. } => {
                let (first, last) = parse_pool(pool)?;
                if let Some(held) = self.nodes.get_mut(&need.node) {
                    held.ports = need.ports.clone();
                    return Ok(());
                }
                let v = self
                    .take(first, last)
                    .ok_or(AddressError::Full(self.index.used.len()))?;
                self.nodes.insert(
                    need.node.clone(),
                    LocalAddress {
                        ip: IpAddr::V4(Ipv4Addr::from(v)),
                        ports: need.ports.clone(),
                    },
                );
                Ok(())
            }
            AddressMode::Port {
                ip,
                first_port,
                last_port,
            } => {
                if first_port > last_port || *first_port == 0 {
                    return Err(AddressError::PortRange(*first_port, *last_port));
                }
                let mut addr = self.nodes.get(&need.node).cloned().unwrap_or(LocalAddress {
                    ip: *ip,
                    ports: BTreeMap::new(),
                });
                addr.ip = *ip;
                let stale: Vec<String> = addr
                    .ports
                    .keys()
                    .filter(|k| !need.ports.contains_key(*k))
                    .cloned()
                    .collect();
                for k in stale {
                    if let Some(p) = addr.ports.remove(&k) {
                        self.index.used.remove(&u32::from(p));
                        self.freed.push(u32::from(p));
                    }
                }
                let mut result = Ok(());
                for name in need.ports.keys() {
                    if addr.ports.contains_key(name) {
                        continue;
                    }
                    let Some(v) = self.take(u32::from(*first_port), u32::from(*last_port)) else {
                        result = Err(AddressError::Full(self.index.used.len()));
                        break;
                    };
                    // v lies in first_port..=last_port, so it fits a u16
                    addr.ports
                        .insert(name.clone(), u16::try_from(v).unwrap_or(*last_port));
                }
                // what was taken stays with the node, so the index and `nodes` agree
                self.nodes.insert(need.node.clone(), addr);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(node: &str, ports: &[(&str, u16)]) -> Need {
        Need {
            node: node.into(),
            ports: ports.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    fn ip(a: &Allocations, node: &str) -> String {
        a.nodes[node].ip.to_string()
    }

    #[test]
    fn ip_mode_gives_each_node_its_own_ip_and_keeps_real_ports() {
        let mode = AddressMode::Ip {
            pool: "127.77.0.0/29".into(),
            interface: None,
        };
        let mut a = Allocations::default();
        let needs = vec![
            need("org2/node1", &[("p2p", 30303), ("raft", 50400)]),
            need("org2/node2", &[("p2p", 30303)]),
        ];
        assert!(a.sync(&mode, &needs).is_empty());
        assert_eq!(ip(&a, "org2/node1"), "127.77.0.1");
        assert_eq!(ip(&a, "org2/node2"), "127.77.0.2");
        assert_eq!(a.nodes["org2/node1"].ports["raft"], 50400);
        // stable across syncs and input order
        let mut reversed = needs.clone();
        reversed.reverse();
        a.sync(&mode, &reversed);
        assert_eq!(ip(&a, "org2/node1"), "127.77.0.1");
        assert_eq!(ip(&a, "org2/node2"), "127.77.0.2");
    }

    #[test]
    fn removed_nodes_free_their_address_which_is_reused_last() {
        let mode = AddressMode::Ip {
            pool: "127.77.0.0/29".into(),
            interface: None,
        }; // 6 hosts
        let mut a = Allocations::default();
        a.sync(&mode, &[need("o/a", &[]), need("o/b", &[])]);
        a.sync(&mode, &[need("o/b", &[])]);
        assert!(!a.nodes.contains_key("o/a"));
        a.sync(&mode, &[need("o/b", &[]), need("o/c", &[])]);
        assert_eq!(
            ip(&a, "o/c"),
            "127.77.0.3",
            "a never-used address before a freed one"
        );
        let all: Vec<Need> = ["b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|n| need(&format!("o/{n}"), &[]))
            .collect();
        assert!(a.sync(&mode, &all).is_empty());
        assert_eq!(
            ip(&a, "o/g"),
            "127.77.0.1",
            "the freed address once nothing else is left"
        );
        let mut more = all.clone();
        more.push(need("o/h", &[]));
        let failed = a.sync(&mode, &more);
        assert_eq!(failed, vec![("o/h".to_owned(), AddressError::Full(6))]);
    }

    #[test]
    fn port_mode_allocates_distinct_ports_on_one_ip() {
        let mode = AddressMode::Port {
            ip: "10.0.0.5".parse().expect("ip"),
            first_port: 40000,
            last_port: 40003,
        };
        let mut a = Allocations::default();
        a.sync(
            &mode,
            &[
                need("o/a", &[("p2p", 30303), ("raft", 50400)]),
                need("o/b", &[("p2p", 30303)]),
            ],
        );
        let ports: BTreeSet<u16> = a
            .nodes
            .values()
            .flat_map(|x| x.ports.values().copied())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(a.nodes.values().all(|x| x.ip.to_string() == "10.0.0.5"));
        let before = a.nodes["o/a"].ports.clone();
        a.sync(
            &mode,
            &[
                need("o/a", &[("p2p", 30303), ("raft", 50400)]),
                need("o/b", &[("p2p", 30303)]),
            ],
        );
        assert_eq!(a.nodes["o/a"].ports, before, "stable");
        let failed = a.sync(
            &mode,
            &[
                need("o/a", &[("p2p", 1), ("raft", 2)]),
                need("o/b", &[("p2p", 1), ("raft", 2), ("tessera", 3)]),
            ],
        );
        assert_eq!(failed.len(), 1, "five ports do not fit in four");
    }

    #[test]
    fn bad_pools_and_ranges_are_errors() {
        for pool in [
            "127.77.0.0",
            "127.77.0.0/31",
            "10.0.0.0/7",
            "::1/64",
            "x/16",
        ] {
            let mut a = Allocations::default();
            let failed = a.sync(
                &AddressMode::Ip {
                    pool: pool.into(),
                    interface: None,
                },
                &[need("o/a", &[])],
            );
            assert!(matches!(failed[0].1, AddressError::Pool(_)), "{pool}");
        }
        let mut a = Allocations::default();
        let mode = AddressMode::Port {
            ip: "10.0.0.5".parse().expect("ip"),
            first_port: 5,
            last_port: 4,
        };
        let failed = a.sync(&mode, &[need("o/a", &[("p2p", 1)])]);
        assert_eq!(failed[0].1, AddressError::PortRange(5, 4));
    }

    /// An unsaved change merged with a later one keeps each node's latest row once.
    #[test]
    fn a_later_change_wins_node_by_node() {
        let mode = AddressMode::default();
        let mut a = Allocations::default();
        let (mut unsaved, _) = a.update_change(&mode, &[need("o/a", &[]), need("o/b", &[])], &[]);
        assert_eq!(unsaved.set.len(), 2);
        assert!(unsaved.freed.is_none());
        let (later, _) = a.update_change(&mode, &[need("o/c", &[])], &["o/a".into()]);
        unsaved.merge(later);
        let set: Vec<&str> = unsaved.set.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(set, ["o/b", "o/c"]);
        assert_eq!(unsaved.removed, ["o/a"]);
        assert_eq!(unsaved.freed, Some(vec![0x7f4d_0001]));
        let (again, _) = a.update_change(&mode, &[need("o/a", &[])], &[]);
        unsaved.merge(again);
        assert!(unsaved.removed.is_empty(), "o/a is back: {unsaved:?}");
        assert_eq!(unsaved.set.len(), 3);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mode = AddressMode::default();
        let mut a = Allocations::default();
        a.sync(&mode, &[need("o/a", &[("p2p", 30303)])]);
        let back: Allocations =
            serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("parse");
        assert_eq!(back, a);
    }
}
