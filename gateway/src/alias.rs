//! IP aliases for IP mode in a container (docs/DESIGN.md section 8). In IP mode every remote node
//! gets its own address from `[addresses] pool`; on a single host those are loopback addresses
//! (`127.77.0.0/16`, all local already), but in a container they must be put on an interface
//! before the gateway can listen on them and its neighbours can reach them. With
//! `[addresses] interface` set, the gateway owns the `/32` addresses inside the pool on that
//! interface: before binding listeners it adds the ones it needs and removes the others, over
//! rtnetlink (which takes `CAP_NET_ADMIN`).
//!
//! The interface is named (`interface = "eth0"`) or found from the pool
//! (`interface = "auto"`): the one interface holding an IPv4 address whose subnet contains the
//! whole pool. In Docker, where interface names depend on the order networks are attached,
//! `auto` with a pool carved out of the site network's subnet picks the site network.
//!
//! [`plan`] is pure (the kernel's address list in, the changes out); [`Aliases::sync`] reads the
//! lists, applies the plan and reports per-address failures. Netlink calls are synchronous:
//! the kernel answers them at once, like `bind`.
//!
//! Aliases are not removed when the gateway stops: a gateway restarted in the same network
//! namespace takes them over, and its first sync removes the ones no longer wanted. (A
//! restarted container gets a fresh namespace, and the aliases are added again.)

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::addressing::{self, AddressError};

/// Longest Linux interface name (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// Which interface carries the aliases (`[addresses] interface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceChoice {
    /// The interface with this name.
    Named(String),
    /// The one interface with an IPv4 subnet that contains the pool (`"auto"`).
    Auto,
}

impl InterfaceChoice {
    /// Parses `auto` or an interface name (1 to 15 bytes, no `/`, whitespace or NUL).
    pub fn parse(text: &str) -> Result<Self, AliasError> {
        if text == "auto" {
            return Ok(InterfaceChoice::Auto);
        }
        let ok = !text.is_empty()
            && text.len() <= MAX_IFNAME
            && text != "."
            && text != ".."
            && !text
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
        if ok {
            Ok(InterfaceChoice::Named(text.to_owned()))
        } else {
            Err(AliasError::InterfaceName(text.to_owned()))
        }
    }
}

/// One IPv4 address on an interface, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The changes that bring an interface in line with the wanted aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Interface index.
    pub index: u32,
    /// `/32` aliases to add.
    pub add: Vec<Ipv4Addr>,
    /// `/32` aliases inside the pool that nothing wants any more.
    pub remove: Vec<Ipv4Addr>,
}

/// Why aliases could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum AliasError {
    /// `[addresses] interface` is neither `auto` nor a valid interface name.
    #[error("invalid alias interface {0:?} (want an interface name or \"auto\")")]
    InterfaceName(String),
    /// The pool is not a usable IPv4 CIDR.
    #[error(transparent)]
    Pool(#[from] AddressError),
    /// No interface has the configured name.
    #[error("no network interface named {0}")]
    NoSuchInterface(String),
    /// `auto`: no interface has a subnet containing the pool.
    #[error("no network interface has an IPv4 subnet containing the address pool {0}")]
    NoInterfaceForPool(String),
    /// `auto`: several interfaces have a subnet containing the pool.
    #[error(
        "several network interfaces have an IPv4 subnet containing the address pool {0}; name one in [addresses] interface"
    )]
    AmbiguousInterface(String),
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// What was asked.
        what: &'static str,
        /// The socket or kernel error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("netlink: undecodable answer to {0}")]
    Decode(&'static str),
}

/// The aliases of one gateway: the pool and the interface they live on.
#[derive(Debug)]
pub struct Aliases {
    pool: String,
    first: Ipv4Addr,
    last: Ipv4Addr,
    interface: InterfaceChoice,
}

/// What one [`Aliases::sync`] did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Aliases added.
    pub added: Vec<Ipv4Addr>,
    /// Aliases removed.
    pub removed: Vec<Ipv4Addr>,
    /// Aliases that could not be added or removed, with the kernel's error.
    pub failed: Vec<(Ipv4Addr, std::io::Error)>,
}

fn contains(net_ip: Ipv4Addr, prefix_len: u8, ip: Ipv4Addr) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix_len.min(32)));
    u32::from(net_ip) & mask == u32::from(ip) & mask
}

/// Works out which interface carries the pool's aliases and what to add and remove there.
/// `addrs` is every IPv4 address of the host (or namespace); `links` maps interface names to
/// indexes (only consulted for a named interface). Only `/32` addresses inside the pool are
/// ever removed: the interface's own addresses are left alone.
pub fn plan(
    addrs: &[InterfaceAddress],
    links: &[(String, u32)],
    interface: &InterfaceChoice,
    pool: (&str, Ipv4Addr, Ipv4Addr),
    wanted: &BTreeSet<Ipv4Addr>,
) -> Result<Plan, AliasError> {
    let (pool_text, first, last) = pool;
    let in_pool = |ip: Ipv4Addr| (first..=last).contains(&ip);
    let index = match interface {
        InterfaceChoice::Named(name) => links
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
            .ok_or_else(|| AliasError::NoSuchInterface(name.clone()))?,
        InterfaceChoice::Auto => {
            let candidates: BTreeSet<u32> = addrs
                .iter()
                .filter(|a| a.prefix_len < 32 && !in_pool(a.ip))
                .filter(|a| {
                    contains(a.ip, a.prefix_len, first) && contains(a.ip, a.prefix_len, last)
                })
                .map(|a| a.index)
                .collect();
            let mut it = candidates.into_iter();
            match (it.next(), it.next()) {
                (Some(i), None) => i,
                (None, _) => return Err(AliasError::NoInterfaceForPool(pool_text.to_owned())),
                (Some(_), Some(_)) => {
                    return Err(AliasError::AmbiguousInterface(pool_text.to_owned()));
                }
            }
        }
    };
    let present: BTreeSet<Ipv4Addr> = addrs
        .iter()
        .filter(|a| a.index == index)
        .map(|a| a.ip)
        .collect();
    let add = wanted
        .iter()
        .filter(|ip| !present.contains(ip))
        .copied()
        .collect();
    let remove = addrs
        .iter()
        .filter(|a| a.index == index && a.prefix_len == 32 && in_pool(a.ip))
        .filter(|a| !wanted.contains(&a.ip))
        .map(|a| a.ip)
        .collect();
    Ok(Plan { index, add, remove })
}

impl Aliases {
    /// Aliases from `pool` (an IPv4 CIDR) on `interface` (a name or `auto`).
    pub fn new(pool: &str, interface: &str) -> Result<Aliases, AliasError> {
        let (first, last) = addressing::pool_range(pool)?;
        Ok(Aliases {
            pool: pool.to_owned(),
            first,
            last,
            interface: InterfaceChoice::parse(interface)?,
        })
    }

    /// Puts every address of `wanted` on the interface as a `/32` and removes the other `/32`s
    /// inside the pool. An address that is there already counts as added, one that is gone
    /// already as removed. Fails as a whole only when the interface or the address list cannot
    /// be read; single failures are in the outcome.
    pub fn sync(&self, wanted: &BTreeSet<Ipv4Addr>) -> Result<SyncOutcome, AliasError> {
        let mut nl = Netlink::open()?;
        let addrs = nl.addresses()?;
        let links = match &self.interface {
            InterfaceChoice::Named(_) => nl.links()?,
            InterfaceChoice::Auto => vec![],
        };
        let plan = plan(
            &addrs,
            &links,
            &self.interface,
            (&self.pool, self.first, self.last),
            wanted,
        )?;
        let mut outcome = SyncOutcome::default();
        for ip in plan.add {
            match nl.change(true, plan.index, ip) {
                Ok(()) => outcome.added.push(ip),
                Err(e) if e.raw_os_error() == Some(EEXIST) => {}
                Err(e) => outcome.failed.push((ip, e)),
            }
        }
        for ip in plan.remove {
            match nl.change(false, plan.index, ip) {
                Ok(()) => outcome.removed.push(ip),
                Err(e) if e.raw_os_error() == Some(EADDRNOTAVAIL) => {}
                Err(e) => outcome.failed.push((ip, e)),
            }
        }
        Ok(outcome)
    }
}

/// `EEXIST`: the address is there already.
const EEXIST: i32 = 17;
/// `EADDRNOTAVAIL`: the address to delete is not there.
const EADDRNOTAVAIL: i32 = 99;

/// A blocking rtnetlink socket for one round of requests.
struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Netlink, AliasError> {
        let err = |source| AliasError::Netlink {
            what: "opening a socket",
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        // the kernel answers at once; a bound keeps a wedged socket from stalling reconcile
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .map_err(err)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the inner messages of the answer, up to `NLMSG_DONE`
    /// (dumps) or the acknowledgement (everything else).
    fn request(
        &mut self,
        what: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, AliasError> {
        let io = |source| AliasError::Netlink { what, source };
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io)?;
        let mut out = vec![];
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|_| AliasError::Decode(what))?;
                let len = usize::try_from(msg.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(AliasError::Decode(what));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(io(e.to_io())),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every IPv4 address of every interface.
    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>, AliasError> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let answer = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.family == AddressFamily::Inet => {
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some(InterfaceAddress {
                        index: a.header.index,
                        ip,
                        prefix_len: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Every interface: name and index.
    fn links(&mut self) -> Result<Vec<(String, u32)>, AliasError> {
        let answer = self.request(
            "listing interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some((name.clone(), l.header.index)),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// Adds (`add`) or deletes a `/32` on interface `index`; the kernel's refusal is the
    /// returned error.
    fn change(&mut self, add: bool, index: u32, ip: Ipv4Addr) -> std::io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        let (what, message, flags) = if add {
            (
                "adding an address",
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (
                "removing an address",
                RouteNetlinkMessage::DelAddress(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
        };
        match self.request(what, message, flags) {
            Ok(_) => Ok(()),
            Err(AliasError::Netlink { source, .. }) => Err(source),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn addr(index: u32, s: &str, prefix_len: u8) -> InterfaceAddress {
        InterfaceAddress {
            index,
            ip: ip(s),
            prefix_len,
        }
    }

    /// A container on two networks: lo, the site network (eth0, 172.31.1.2/24, pool in its
    /// upper half) and the WAN (eth1, 172.31.100.2/24).
    fn container() -> Vec<InterfaceAddress> {
        vec![
            addr(1, "127.0.0.1", 8),
            addr(7, "172.31.100.2", 24),
            addr(5, "172.31.1.2", 24),
            addr(5, "172.31.1.129", 32),
            addr(5, "172.31.1.130", 32),
        ]
    }

    const POOL: (&str, Ipv4Addr, Ipv4Addr) = (
        "172.31.1.128/25",
        Ipv4Addr::new(172, 31, 1, 129),
        Ipv4Addr::new(172, 31, 1, 254),
    );

    #[test]
    fn auto_picks_the_interface_whose_subnet_holds_the_pool() {
        let wanted = BTreeSet::from([ip("172.31.1.129"), ip("172.31.1.131")]);
        let p = plan(&container(), &[], &InterfaceChoice::Auto, POOL, &wanted).expect("plan");
        assert_eq!(p.index, 5);
        assert_eq!(p.add, vec![ip("172.31.1.131")]);
        assert_eq!(p.remove, vec![ip("172.31.1.130")]);
    }

    #[test]
    fn a_named_interface_is_looked_up_and_its_own_address_is_never_removed() {
        let links = vec![("lo".to_owned(), 1), ("eth0".to_owned(), 5)];
        let named = InterfaceChoice::Named("eth0".into());
        let p = plan(&container(), &links, &named, POOL, &BTreeSet::new()).expect("plan");
        assert_eq!(p.index, 5);
        assert!(p.add.is_empty());
        assert_eq!(p.remove, vec![ip("172.31.1.129"), ip("172.31.1.130")]);
        let missing = InterfaceChoice::Named("eth9".into());
        assert!(matches!(
            plan(&container(), &links, &missing, POOL, &BTreeSet::new()),
            Err(AliasError::NoSuchInterface(n)) if n == "eth9"
        ));
    }

    #[test]
    fn auto_refuses_no_match_and_several_matches() {
        let elsewhere = ("10.9.0.0/24", ip("10.9.0.1"), ip("10.9.0.254"));
        assert!(matches!(
            plan(
                &container(),
                &[],
                &InterfaceChoice::Auto,
                elsewhere,
                &BTreeSet::new()
            ),
            Err(AliasError::NoInterfaceForPool(_))
        ));
        let mut two = container();
        two.push(addr(9, "172.31.0.1", 16));
        assert!(matches!(
            plan(&two, &[], &InterfaceChoice::Auto, POOL, &BTreeSet::new()),
            Err(AliasError::AmbiguousInterface(_))
        ));
    }

    #[test]
    fn interface_names_are_checked() {
        assert_eq!(
            InterfaceChoice::parse("auto").ok(),
            Some(InterfaceChoice::Auto)
        );
        assert_eq!(
            InterfaceChoice::parse("eth0").ok(),
            Some(InterfaceChoice::Named("eth0".into()))
        );
        for bad in ["", "a/b", "eth 0", "eth0:1", "..", "sixteen-chars-xx"] {
            assert!(InterfaceChoice::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Aliases::new("10.0.0.0/33", "auto"),
            Err(AliasError::Pool(_))
        ));
    }

    /// Reading the kernel's lists needs no privileges: loopback holds 127.0.0.1/8, so `auto`
    /// finds it for a loopback pool, and nothing needs adding when nothing is wanted.
    #[test]
    fn the_kernel_lists_loopback_and_auto_finds_it() {
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                eprintln!("skipped: no netlink socket here: {e}");
                return;
            }
        };
        let addrs = nl.addresses().expect("address dump");
        let lo = addrs
            .iter()
            .find(|a| a.ip == Ipv4Addr::LOCALHOST)
            .expect("127.0.0.1 is listed");
        assert_eq!(lo.prefix_len, 8);
        let links = nl.links().expect("link dump");
        assert!(links.iter().any(|(n, i)| n == "lo" && *i == lo.index));
        let pool = ("127.77.0.0/16", ip("127.77.0.1"), ip("127.77.255.254"));
        let p = plan(
            &addrs,
            &links,
            &InterfaceChoice::Auto,
            pool,
            &BTreeSet::new(),
        )
        .expect("plan");
        assert_eq!(p.index, lo.index);
        assert!(p.add.is_empty());
    }

    /// Adds and removes real aliases, so it needs CAP_NET_ADMIN and must not run on a host's
    /// own interfaces: run it in a private network namespace,
    /// `unshare -n cargo test -p fedgw-gateway --lib alias -- --ignored`.
    #[test]
    #[ignore = "needs CAP_NET_ADMIN in a private network namespace (unshare -n)"]
    fn adds_and_removes_aliases_in_a_private_namespace() {
        let aliases = Aliases::new("10.99.0.0/24", "lo").expect("aliases");
        let wanted = BTreeSet::from([ip("10.99.0.5"), ip("10.99.0.6")]);
        let outcome = aliases.sync(&wanted).expect("sync");
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        assert_eq!(outcome.added.len(), 2);
        let listed = |nl: &mut Netlink| -> BTreeSet<Ipv4Addr> {
            nl.addresses()
                .expect("dump")
                .into_iter()
                .filter(|a| a.prefix_len == 32)
                .map(|a| a.ip)
                .collect()
        };
        let mut nl = Netlink::open().expect("netlink");
        assert_eq!(listed(&mut nl), wanted);
        // in line already: nothing to do
        let again = aliases.sync(&wanted).expect("sync");
        assert!(again.added.is_empty() && again.removed.is_empty());
        let fewer = BTreeSet::from([ip("10.99.0.6")]);
        let outcome = aliases.sync(&fewer).expect("sync");
        assert_eq!(outcome.removed, vec![ip("10.99.0.5")]);
        assert_eq!(listed(&mut nl), fewer);
        aliases.sync(&BTreeSet::new()).expect("sync");
        assert!(listed(&mut nl).is_empty());
    }
}
