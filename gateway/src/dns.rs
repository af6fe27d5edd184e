//! The consortium zone (docs/DESIGN.md section 7), served authoritatively on UDP and TCP with
//! hickory-server.
//!
//! Split horizon: `<node>.<org>.<domain>` answers, at each site, the address that works from
//! there: the node's real address for the site's own org, the local address allocated for it
//! ([`crate::addressing`]) for every other org. Also `_p2p._tcp`, `_raft._tcp` and `_tessera._tcp`
//! SRV records under each node name, `TXT "enode=<128 hex>"`, `gw-<site>.<org>.<domain>` and the
//! zone's SOA and NS. Nothing is recursed; each source (an IPv4 address, an IPv6 /64) is
//! rate-limited; queries are not logged.
//!
//! What each request gets ([`Zone::respond`]; RFC 1034/1035, RFC 6891, RFC 8906):
//! - opcodes other than QUERY: NOTIMP; a QUERY without exactly one question: FORMERR;
//! - classes other than IN (CH, HS, NONE, ANY): REFUSED, since the zone exists in class IN only:
//!   the same answer as for a name outside it, and what Knot answers; NOTIMP would claim the
//!   class is not implemented by DNS software at all, and QCLASS ANY is not answered with IN
//!   data either;
//! - names outside the zone and QTYPE ANY: REFUSED; unknown names inside it: NXDOMAIN with the
//!   SOA; names that exist without the asked type, empty non-terminals included
//!   (`<org>.<domain>`, `_tcp.<node>.<org>.<domain>`): NOERROR, no answer, the SOA (RFC 8020);
//! - zone transfers are refused: AXFR over UDP is FORMERR (RFC 5936 section 4.2), AXFR over TCP
//!   and IXFR are REFUSED. Every site builds its own view of the zone from signed records, so
//!   no other server has a use for a copy, and no setting allows one;
//! - EDNS(0) (RFC 6891): a request with OPT gets an OPT with [`UDP_PAYLOAD`], version 0 and the
//!   request's DO bit, never an option; EDNS version > 0 gets BADVERS; unknown options are
//!   ignored; two OPT records are FORMERR (hickory's parser);
//! - over UDP an answer larger than the requester's payload size (512 without EDNS, at most
//!   [`UDP_PAYLOAD`]) is sent with TC and empty sections, so the requester retries over TCP
//!   (RFC 1035 section 4.2.1, RFC 2181 section 9).
//!
//! UDP is served by hickory-server; TCP by [`serve_tcp`], which bounds the connections held
//! open per source and in total ([`TcpLimits`]) and closes what is over a cap at once, so one
//! host holding idle connections cannot keep the others from asking over TCP.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::tcp::TcpStream;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, LowerQuery, MessageType, Metadata, OpCode, ResponseCode, emit_message_parts,
};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{
    Request, RequestHandler, ResponseHandle, ResponseHandler, ResponseInfo, TimeoutStream,
};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// TTL of every answer, seconds: short, since the view changes as members do.
pub const TTL: u32 = 5;
/// Most sources tracked by the rate limiter.
pub const MAX_SOURCES: usize = 4096;
/// The largest DNS message sent over UDP, bytes, advertised in every OPT record: the DNS Flag
/// Day 2020 value, which fits an IPv6 packet of the minimum MTU (1280) without fragments.
pub const UDP_PAYLOAD: u16 = 1232;
/// The EDNS version this server implements (RFC 6891 section 6.1.3); a request with a higher
/// one gets BADVERS.
pub const EDNS_VERSION: u8 = 0;
/// A request without OPT may get at most this many bytes over UDP (RFC 1035 section 4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// The zone as one site answers it: every name with its records, built from the view and
/// kept up to date one node at a time ([`Zone::set_node`], [`Zone::remove_node`]), so a change
/// costs what it touches, not the size of the zone.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    origin: Option<Name>,
    domain: String,
    mname: Option<Name>,
    /// Lowercase name → records; an empty entry is a name that exists without data (a node
    /// without an address, an empty non-terminal).
    names: HashMap<LowerName, Owner>,
    soa: Option<Record>,
    /// The records each node put in, by (org, name), to take them out again.
    nodes: HashMap<(String, String), Source>,
    /// The records the gateways put in.
    gateways: Vec<Source>,
}

/// One name of the zone.
#[derive(Debug, Clone, Default)]
struct Owner {
    records: Vec<Record>,
    /// The sources' names at or below this one: the name exists while this is above zero.
    refs: u32,
}

/// What one node or gateway added: its names and records.
#[derive(Debug, Clone, Default)]
struct Source {
    names: Vec<LowerName>,
    records: Vec<Record>,
}

/// One node of the view as this site sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneNode {
    /// Owning org.
    pub org: String,
    /// Node name.
    pub name: String,
    /// Where clients at this site reach it (real or local address); `None` leaves no A/AAAA.
    pub ip: Option<IpAddr>,
    /// A host name the node is registered by at its own site (e.g. a Kubernetes Service):
    /// when there is no `ip`, answered as a CNAME to that name made absolute
    /// ([`alias_target`]) if it has more than one label; a one-label name gets no CNAME.
    pub alias: Option<String>,
    /// Port name (p2p, raft, tessera) → port at `ip`.
    pub ports: BTreeMap<String, u16>,
    /// The enode id, if the node runs devp2p.
    pub enode_id: Option<fedgw_proto::enode::EnodeId>,
}

/// A gateway name: `gw-<site>.<org>.<domain>` and its address if it advertises an IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneGateway {
    /// Org.
    pub org: String,
    /// Site.
    pub site: String,
    /// Address.
    pub ip: Option<IpAddr>,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

/// The CNAME target for a node registered at its own site by host name `host`: the name made
/// absolute (`db.internal.example` → `db.internal.example.`), for a name of two or more
/// labels. A one-label name (`quorum-node1`, a Compose service or container) is `None`: its
/// meaning comes from the search list of the host that resolves it, and `quorum-node1.` is a
/// top-level name that a forwarding resolver would look up in the root zone and not find. The
/// gateway resolves such a host itself ([`resolve_short_hosts`]) and answers its address.
pub fn alias_target(host: &str) -> Option<Name> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.contains('.') {
        return None;
    }
    name(host)
}

/// Whether `host` is a one-label host name (not an IP literal): see [`alias_target`].
pub fn is_short_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_err() && !host.trim_end_matches('.').contains('.')
}

/// Most one-label hosts resolved per zone build; this site's own nodes, so far fewer.
pub const MAX_SHORT_HOSTS: usize = 256;
/// Bound on resolving the one-label hosts of one zone build, all together.
pub const SHORT_HOST_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves one-label host names (see [`alias_target`]; the caller picks them with
/// [`is_short_host`], at most [`MAX_SHORT_HOSTS`]) with the gateway's resolver (its search
/// list, `/etc/hosts`, the container runtime's DNS), each to its first address, within
/// [`SHORT_HOST_TIMEOUT`] in all: every host given maps to its address, or `None` when it did
/// not resolve in time (its name then answers NODATA).
pub async fn resolve_short_hosts(hosts: &[String]) -> BTreeMap<String, Option<IpAddr>> {
    let mut found: BTreeMap<String, Option<IpAddr>> =
        hosts.iter().map(|h| (h.clone(), None)).collect();
    let mut lookups = tokio::task::JoinSet::new();
    for host in hosts.iter().take(MAX_SHORT_HOSTS) {
        let host = host.clone();
        lookups.spawn(async move {
            let addrs = crate::net::resolve_host(host.trim_end_matches('.'), 0).await;
            (host, addrs)
        });
    }
    let collect = async {
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((host, Ok(addrs))) => {
                    found.insert(host, addrs.first().map(std::net::SocketAddr::ip));
                }
                Ok((host, Err(e))) => {
                    tracing::debug!(host = %host, error = %e, "a node's host does not resolve")
                }
                Err(_) => {}
            }
        }
    };
    if tokio::time::timeout(SHORT_HOST_TIMEOUT, collect)
        .await
        .is_err()
    {
        tracing::warn!("resolving this site's nodes' host names timed out");
    }
    found
}

fn address(n: &Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(n.clone(), TTL, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(n.clone(), TTL, RData::AAAA(AAAA(v6))),
    }
}

impl Zone {
    /// Builds the zone for `domain` as the site `me_gateway` (`gw-<site>.<org>`) answers it.
    /// `serial` is the SOA serial (the view version).
    pub fn build(
        domain: &str,
        me_gateway: &str,
        serial: u32,
        nodes: &[ZoneNode],
        gateways: &[ZoneGateway],
    ) -> Self {
        let mut zone = Self::new(domain, me_gateway);
        zone.set_serial(serial);
        for n in nodes {
            zone.set_node(n);
        }
        zone.set_gateways(gateways);
        zone
    }

    /// An empty zone for `domain` as the site `me_gateway` (`gw-<site>.<org>`) answers it: its
    /// SOA (serial 0) and NS only. A domain that is no DNS name gives a zone that refuses
    /// every question.
    pub fn new(domain: &str, me_gateway: &str) -> Self {
        let Some(origin) = name(domain) else {
            return Self::default();
        };
        let mut zone = Zone {
            origin: Some(origin.clone()),
            domain: domain.to_owned(),
            mname: Some(name(&format!("{me_gateway}.{domain}")).unwrap_or_else(|| origin.clone())),
            ..Default::default()
        };
        zone.set_serial(0);
        zone
    }

    /// Sets the SOA serial (the projection's version).
    pub fn set_serial(&mut self, serial: u32) {
        let (Some(origin), Some(mname)) = (self.origin.clone(), self.mname.clone()) else {
            return;
        };
        let rname = name(&format!("hostmaster.{}", self.domain)).unwrap_or_else(|| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(mname.clone(), rname, serial, 60, 30, 600, TTL)),
        );
        let apex = self.names.entry(LowerName::from(&origin)).or_default();
        apex.records = vec![
            soa.clone(),
            Record::from_rdata(origin, TTL, RData::NS(NS(mname))),
        ];
        self.soa = Some(soa);
    }

    /// The SOA serial.
    pub fn serial(&self) -> Option<u32> {
        match self.soa.as_ref().map(|r| &r.data) {
            Some(RData::SOA(soa)) => Some(soa.serial),
            _ => None,
        }
    }

    /// Puts `n`'s names and records in the zone, replacing what it had there.
    pub fn set_node(&mut self, n: &ZoneNode) {
        self.remove_node(&n.org, &n.name);
        let Some(source) = self.node_source(n) else {
            return;
        };
        self.insert(&source);
        self.nodes.insert((n.org.clone(), n.name.clone()), source);
    }

    /// Takes the node `org`/`name`'s names and records out of the zone.
    pub fn remove_node(&mut self, org: &str, name: &str) {
        if let Some(source) = self.nodes.remove(&(org.to_owned(), name.to_owned())) {
            self.take_out(&source);
        }
    }

    /// Replaces every gateway name (`gw-<site>.<org>`).
    pub fn set_gateways(&mut self, gateways: &[ZoneGateway]) {
        for source in std::mem::take(&mut self.gateways) {
            self.take_out(&source);
        }
        for g in gateways {
            let Some(owner) = name(&format!("gw-{}.{}.{}", g.site, g.org, self.domain)) else {
                continue;
            };
            let source = Source {
                names: vec![LowerName::from(&owner)],
                records: g.ip.map(|ip| address(&owner, ip)).into_iter().collect(),
            };
            self.insert(&source);
            self.gateways.push(source);
        }
    }

    /// The names and records of one node.
    fn node_source(&self, n: &ZoneNode) -> Option<Source> {
        self.origin.as_ref()?;
        let domain = &self.domain;
        let owner = name(&format!("{}.{}.{domain}", n.name, n.org))?;
        // the name exists even without an address (NODATA rather than NXDOMAIN)
        let mut source = Source {
            names: vec![LowerName::from(&owner)],
            records: vec![],
        };
        let mut aliased = false;
        if let Some(ip) = n.ip {
            source.records.push(address(&owner, ip));
        } else if let Some(target) = n.alias.as_deref().and_then(alias_target) {
            source.records.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::CNAME(CNAME(target)),
            ));
            aliased = true;
        }
        // a CNAME's name holds no other data (RFC 1034 section 3.6.2, RFC 2181 section
        // 10.1): an aliased node's enode is left to the rendered client configs
        if let Some(id) = n.enode_id.filter(|_| !aliased) {
            source.records.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::TXT(TXT::new(vec![format!("enode={id}")])),
            ));
        }
        for (service, port) in &n.ports {
            let Some(srv) = name(&format!("_{service}._tcp.{}.{}.{domain}", n.name, n.org)) else {
                continue;
            };
            source.names.push(LowerName::from(&srv));
            source.records.push(Record::from_rdata(
                srv,
                TTL,
                RData::SRV(SRV::new(0, 0, *port, owner.clone())),
            ));
        }
        Some(source)
    }

    /// Adds a source's records, and counts its names and every name between them and the
    /// apex: empty non-terminals (`<org>.<domain>`, `_tcp.<node>.<org>.<domain>`) exist too,
    /// NODATA rather than NXDOMAIN (RFC 8020), or a resolver minimising QNAMEs stops there.
    fn insert(&mut self, source: &Source) {
        for owner in &source.names {
            for up in self.up_to_apex(owner) {
                self.names.entry(up).or_default().refs += 1;
            }
        }
        for r in &source.records {
            self.names
                .entry(LowerName::from(&r.name))
                .or_default()
                .records
                .push(r.clone());
        }
    }

    /// Undoes [`Self::insert`].
    fn take_out(&mut self, source: &Source) {
        for r in &source.records {
            if let Some(owner) = self.names.get_mut(&LowerName::from(&r.name))
                && let Some(pos) = owner.records.iter().position(|x| x == r)
            {
                owner.records.remove(pos);
            }
        }
        for owner in &source.names {
            for up in self.up_to_apex(owner) {
                if let Some(o) = self.names.get_mut(&up) {
                    o.refs = o.refs.saturating_sub(1);
                    if o.refs == 0 && o.records.is_empty() {
                        self.names.remove(&up);
                    }
                }
            }
        }
    }

    /// `name` and each name above it, up to the apex (excluded).
    fn up_to_apex(&self, name: &LowerName) -> Vec<LowerName> {
        let Some(origin) = &self.origin else {
            return vec![];
        };
        let apex = LowerName::from(origin);
        let mut out = vec![];
        let mut up = name.clone();
        while up.num_labels() > apex.num_labels() && apex.zone_of(&up) {
            out.push(up.clone());
            up = up.base_name();
        }
        out
    }

    /// Every record of the zone, SOA first, then in no particular order: what a zone file
    /// for another server would hold.
    pub fn records(&self) -> impl Iterator<Item = &Record> + '_ {
        self.soa.iter().chain(
            self.names
                .values()
                .flat_map(|o| &o.records)
                .filter(|r| r.record_type() != RecordType::SOA),
        )
    }

    /// Answers one question: (response code, answers, authority).
    pub fn answer(
        &self,
        qname: &LowerName,
        qtype: RecordType,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let Some(origin) = &self.origin else {
            return (ResponseCode::Refused, vec![], vec![]);
        };
        if !LowerName::from(origin).zone_of(qname) {
            return (ResponseCode::Refused, vec![], vec![]);
        }
        if qtype == RecordType::ANY {
            return (ResponseCode::Refused, vec![], vec![]);
        }
        let soa: Vec<Record> = self.soa.iter().cloned().collect();
        match self.names.get(qname) {
            None => (ResponseCode::NXDomain, vec![], soa),
            Some(owner) => {
                // a CNAME answers every type at its name (RFC 1034 section 3.6.2)
                let hits: Vec<Record> = owner
                    .records
                    .iter()
                    .filter(|r| r.record_type() == qtype || r.record_type() == RecordType::CNAME)
                    .cloned()
                    .collect();
                if hits.is_empty() {
                    (ResponseCode::NoError, vec![], soa)
                } else {
                    (ResponseCode::NoError, hits, vec![])
                }
            }
        }
    }

    /// Answers one request that arrived over `transport`: the rules in the module
    /// documentation, in this order: EDNS version, opcode, question count, class, zone
    /// transfers, then [`Zone::answer`], then the UDP size.
    pub fn respond(&self, request: &MessageRequest, transport: Transport) -> Reply {
        let mut reply = Reply::error(request, ResponseCode::NoError);
        let fail = |code: ResponseCode| Reply {
            code,
            ..reply.clone()
        };
        if request
            .edns
            .as_ref()
            .is_some_and(|e| e.version() > EDNS_VERSION)
        {
            return fail(ResponseCode::BADVERS);
        }
        if request.metadata.op_code != OpCode::Query {
            return fail(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return fail(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return fail(ResponseCode::Refused);
        }
        match (query.query_type(), transport) {
            (RecordType::AXFR, Transport::Udp) => return fail(ResponseCode::FormErr),
            (RecordType::AXFR | RecordType::IXFR, _) => return fail(ResponseCode::Refused),
            _ => {}
        }
        let (code, answers, authority) = self.answer(query.name(), query.query_type());
        if code == ResponseCode::Refused {
            return fail(code);
        }
        reply.code = code;
        reply.authoritative = true;
        reply.answers = answers;
        // the owner spelled as asked, as Knot does: a resolver that randomises the case of
        // its questions sees its own spelling
        for record in &mut reply.answers {
            record.name = query.original().name().clone();
        }
        reply.authority = authority;
        if transport == Transport::Udp {
            let asked = request.edns.as_ref().map_or(PLAIN_UDP_PAYLOAD, |e| {
                e.max_payload().max(PLAIN_UDP_PAYLOAD)
            });
            if !reply.fits(query, asked.min(UDP_PAYLOAD)) {
                reply.truncated = true;
                reply.answers.clear();
                reply.authority.clear();
            }
        }
        reply
    }
}

/// How a request arrived: answers over UDP are bounded in size, over TCP they are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A stream (TCP; hickory's other stream transports are not registered).
    Tcp,
}

impl From<Protocol> for Transport {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Udp => Self::Udp,
            _ => Self::Tcp,
        }
    }
}

/// The answer to one request, decided without IO: what [`ZoneHandler`] sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Response code; BADVERS (16) travels in the OPT record's upper bits.
    pub code: ResponseCode,
    /// AA: set on answers from the zone (NOERROR, NXDOMAIN), not on refusals and errors.
    pub authoritative: bool,
    /// TC: the answer did not fit the UDP payload size, so the sections below are empty.
    pub truncated: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    pub authority: Vec<Record>,
    /// The OPT record, present exactly when the request had one (RFC 6891 section 6.1.1).
    pub edns: Option<Edns>,
}

impl Reply {
    /// An error or refusal `code` to `request`: no records, no AA, an OPT if it had one.
    pub fn error(request: &MessageRequest, code: ResponseCode) -> Self {
        let edns = request.edns.as_ref().map(|asked| {
            let mut e = Edns::new();
            e.set_max_payload(UDP_PAYLOAD)
                .set_version(EDNS_VERSION)
                .set_dnssec_ok(asked.flags().dnssec_ok);
            e
        });
        Self {
            code,
            authoritative: false,
            truncated: false,
            answers: vec![],
            authority: vec![],
            edns,
        }
    }

    /// Whether the reply to `query` encodes in `limit` bytes. A cheap upper bound settles
    /// nearly every case; only a reply that may not fit is encoded to be sure, the way hickory
    /// encodes it (which counts a name at its full length before compressing it).
    fn fits(&self, query: &LowerQuery, limit: u16) -> bool {
        const HEADER: usize = 12;
        const OPT: usize = 11;
        let records = self.answers.iter().chain(&self.authority);
        let bound = HEADER
            + query.name().len()
            + 1
            + 4
            + records.map(wire_bound).sum::<usize>()
            + self.edns.as_ref().map_or(0, |_| OPT);
        if bound <= usize::from(limit) {
            return true;
        }
        let mut buf = Vec::with_capacity(usize::from(limit));
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(limit);
        let metadata = Metadata::new(0, MessageType::Response, OpCode::Query);
        let header = emit_message_parts(
            &metadata,
            &mut std::iter::once(query),
            &mut self.answers.iter(),
            &mut self.authority.iter(),
            &mut std::iter::empty::<&Record>(),
            self.edns.as_ref(),
            None,
            &mut encoder,
        );
        header.is_ok_and(|h| !h.metadata.truncation)
    }
}

/// An upper bound of the encoded size of `record`, bytes: its size without name compression.
fn wire_bound(record: &Record) -> usize {
    let name = |n: &Name| n.len() + 1;
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(CNAME(n)) | RData::NS(NS(n)) => name(n),
        RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
        RData::SRV(srv) => 6 + name(&srv.target),
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len() + 1).sum(),
        // the zone holds no other type; an unknown one is encoded to be sure
        _ => usize::from(u16::MAX),
    };
    name(&record.name) + 10 + rdata
}

/// Per-source token buckets of `qps` (0: no limit), a source being an IPv4 address or an IPv6
/// /64 ([`source_of`]); bounded to [`MAX_SOURCES`]; refuses (fails closed) a new source when
/// the table is full of active ones.
#[derive(Debug, Default)]
struct Limiter {
    qps: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Limiter {
    fn allow(&self, src: IpAddr, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return true;
        }
        let rate = self.qps;
        let src = source_of(src);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let level = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate)
        };
        if !map.contains_key(&src) && map.len() >= MAX_SOURCES {
            map.retain(|_, b| level(*b) < rate);
            if map.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = map.entry(src).or_insert((rate, now));
        let l = level(*b);
        if l < 1.0 {
            return false;
        }
        *b = (l - 1.0, now);
        true
    }
}

/// The unit the rate limiter counts: an IPv4 address (also when mapped into IPv6), or the /64
/// of an IPv6 address, since one host may use every address of its /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
        v4 => v4,
    }
}

/// The request handler: answers from the current [`Zone`], replaced as the view changes.
#[derive(Debug, Clone)]
pub struct ZoneHandler {
    /// Changed in place ([`ZoneHandler::update`]); a query holds the read lock while it is
    /// answered (no await in between).
    zone: Arc<RwLock<Zone>>,
    limiter: Arc<Limiter>,
    /// Counts each answer by response code (`fedgw_dns_queries_total`), when set.
    metrics: Option<crate::metrics::Metrics>,
}

impl ZoneHandler {
    /// A handler with an empty zone allowing `qps` queries per second per source (0: no limit).
    pub fn new(qps: u32) -> Self {
        Self {
            zone: Arc::default(),
            limiter: Arc::new(Limiter {
                qps: f64::from(qps),
                buckets: Mutex::default(),
            }),
            metrics: None,
        }
    }

    /// This handler, counting every answer in `metrics`.
    pub fn counted(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Installs a new zone; the next query sees it.
    pub fn replace(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = zone;
    }

    /// Changes the served zone in place with `f`; queries wait while it runs, then see every
    /// change it made at once.
    pub fn update<T>(&self, f: impl FnOnce(&mut Zone) -> T) -> T {
        f(&mut self.zone.write().unwrap_or_else(|e| e.into_inner()))
    }

    fn respond(&self, request: &MessageRequest, transport: Transport) -> Reply {
        self.zone
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .respond(request, transport)
    }
}

#[tonic::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let src: SocketAddr = request.src();
        let reply = if self.limiter.allow(src.ip(), Instant::now()) {
            self.respond(request, Transport::from(request.protocol()))
        } else {
            Reply::error(request, ResponseCode::Refused)
        };
        if let Some(m) = &self.metrics {
            m.dns_query(reply.code);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.truncation = reply.truncated;
        metadata.recursion_available = false;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &reply.edns {
            builder.edns(edns);
        }
        let msg = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(msg).await {
            Ok(info) => info,
            Err(_) => {
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_server::proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// Caps on the DNS server's TCP connections ([`serve_tcp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Most connections open at once from one source (an IPv4 address or an IPv6 /64).
    pub per_source: usize,
    /// Most connections open at once in total.
    pub total: usize,
    /// A connection that sends no complete request for this long is closed (hickory's
    /// per-request timeout).
    pub idle: Duration,
}

/// Why a DNS TCP connection was closed on accept: the `reason` label of
/// `fedgw_dns_tcp_refused_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRefusal {
    /// Its source already holds [`TcpLimits::per_source`] connections.
    PerSource,
    /// [`TcpLimits::total`] connections are open.
    Total,
}

impl TcpRefusal {
    /// The metric label: `per_source` or `total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::Total => "total",
        }
    }
}

impl crate::metrics::Label for TcpRefusal {
    fn label(self) -> &'static str {
        TcpRefusal::label(self)
    }
}

/// Open connections per source and in total; a [`TcpSlot`] holds one until dropped.
#[derive(Debug)]
struct TcpCounts {
    limits: TcpLimits,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection, counted until dropped.
#[derive(Debug)]
struct TcpSlot {
    counts: Arc<TcpCounts>,
    source: IpAddr,
}

impl TcpCounts {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<TcpSlot, TcpRefusal> {
        let source = source_of(peer);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *state;
        let n = per.get(&source).copied().unwrap_or(0);
        if n >= self.limits.per_source {
            return Err(TcpRefusal::PerSource);
        }
        if *total >= self.limits.total {
            return Err(TcpRefusal::Total);
        }
        *total += 1;
        per.insert(source, n + 1);
        Ok(TcpSlot {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut state = self.counts.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *state;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.source);
            }
        }
    }
}

/// Serves DNS over TCP (RFC 1035 section 4.2.2, RFC 7766: two-byte length, then the message;
/// several requests per connection, answered in order) on `listener` with `handler` until
/// `shutdown`, in place of hickory's `register_listener`, which accepts without limit.
///
/// A connection over a [`TcpLimits`] cap is closed as soon as it is accepted, and `refused` is
/// called with the reason; a connection with no complete request for [`TcpLimits::idle`] is
/// closed. Requests are handled as hickory does: shorter than a header, dropped; a header with
/// an unreadable rest, FORMERR; a response, dropped. Open connections are dropped at shutdown.
pub async fn serve_tcp(
    listener: TcpListener,
    handler: ZoneHandler,
    limits: TcpLimits,
    refused: impl Fn(TcpRefusal) + Send + 'static,
    shutdown: CancellationToken,
) {
    let counts = Arc::new(TcpCounts {
        limits,
        state: Mutex::default(),
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // per-connection errors (reset before accept) and descriptor exhaustion:
                    // the listener itself stays usable
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        // out of descriptors: back off rather than spin on the ready listener
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let slot = match counts.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused(why);
                drop(stream);
                continue;
            }
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            handler.clone(),
            limits.idle,
            slot,
        ));
    }
}

/// One DNS TCP connection: requests in order until EOF, an error or [`TcpLimits::idle`].
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handler: ZoneHandler,
    idle: Duration,
    _slot: TcpSlot,
) {
    // the answers of one connection are sent in order; 64 queued at most (as before)
    let (stream, sender) =
        TcpStream::from_stream_with_buffer_size(AsyncIoTokioAsStd(stream), peer, 64);
    let mut requests = TimeoutStream::new(stream, idle);
    while let Some(message) = requests.next().await {
        let Ok(message) = message else { return };
        let (bytes, src) = message.into_parts();
        let response = ResponseHandle::new(src, sender.clone(), Protocol::Tcp);
        let Ok(header) = Header::read(&mut BinDecoder::new(&bytes)) else {
            continue;
        };
        match Request::from_bytes(bytes, src, Protocol::Tcp) {
            Ok(request) if request.metadata.message_type == MessageType::Response => {}
            Ok(request) => {
                handler
                    .handle_request::<_, TokioTime>(&request, response)
                    .await;
            }
            Err(_) => {
                let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                    return;
                };
                let reply = MessageResponseBuilder::new(&queries, None)
                    .error_msg(&header.metadata, ResponseCode::FormErr);
                let mut response = response;
                if response.send_response(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
