//! The consortium zone (docs/DESIGN.md section 7), served authoritatively on UDP and TCP with
//! hickory-server.
//!
//! Split horizon: `<node>.<org>.<domain>` answers, at each site, the address that works from
//! there: the node's real address for the site's own org, the local address allocated for it
//! ([`crate::addressing`]) for every other org. Also `_p2p._tcp`, `_raft._tcp` and `_tessera._tcp`
//! SRV records under each node name, `TXT "enode=<128 hex>"`, `gw-<site>.<org>.<domain>` and the
//! zone's SOA and NS. Unknown names inside the zone are NXDOMAIN, names outside it and ANY
//! queries are REFUSED, nothing is recursed; each source address is rate-limited; queries are
//! not logged.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// TTL of every answer, seconds: short, since the view changes as members do.
pub const TTL: u32 = 5;
/// Most sources tracked by the rate limiter.
pub const MAX_SOURCES: usize = 4096;

/// The zone as one site answers it: every name with its records, built from the view.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    origin: Option<Name>,
    /// Lowercase name → records.
    names: HashMap<LowerName, Vec<Record>>,
    soa: Option<Record>,
}

/// One node of the view as this site sees it.
#[derive(Debug, Clone)]
pub struct ZoneNode {
    /// Owning org.
    pub org: String,
    /// Node name.
    pub name: String,
    /// Where clients at this site reach it (real or local address); `None` leaves no A/AAAA.
    pub ip: Option<IpAddr>,
    /// A host name the node is registered by at its own site (e.g. a Kubernetes Service):
    /// answered as a CNAME when there is no `ip`.
    pub alias: Option<String>,
    /// Port name (p2p, raft, tessera) → port at `ip`.
    pub ports: BTreeMap<String, u16>,
    /// The enode id, 64 bytes.
    pub enode_id: Option<Vec<u8>>,
}

/// A gateway name: `gw-<site>.<org>.<domain>` and its address if it advertises an IP.
#[derive(Debug, Clone)]
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
        let Some(origin) = name(domain) else {
            return Self::default();
        };
        let mut zone = Zone {
            origin: Some(origin.clone()),
            ..Default::default()
        };
        let mname = name(&format!("{me_gateway}.{domain}")).unwrap_or_else(|| origin.clone());
        let rname = name(&format!("hostmaster.{domain}")).unwrap_or_else(|| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(mname.clone(), rname, serial, 60, 30, 600, TTL)),
        );
        zone.soa = Some(soa.clone());
        zone.add(&origin, soa);
        zone.add(
            &origin,
            Record::from_rdata(origin.clone(), TTL, RData::NS(NS(mname))),
        );
        for n in nodes {
            let Some(owner) = name(&format!("{}.{}.{domain}", n.name, n.org)) else {
                continue;
            };
            // the name exists even without an address (NODATA rather than NXDOMAIN)
            zone.names.entry(LowerName::from(&owner)).or_default();
            if let Some(ip) = n.ip {
                zone.add(&owner, address(&owner, ip));
            } else if let Some(target) = n.alias.as_deref().and_then(name) {
                zone.add(
                    &owner,
                    Record::from_rdata(owner.clone(), TTL, RData::CNAME(CNAME(target))),
                );
            }
            if let Some(id) = &n.enode_id {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                zone.add(
                    &owner,
                    Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::TXT(TXT::new(vec![format!("enode={hex}")])),
                    ),
                );
            }
            for (service, port) in &n.ports {
                let Some(srv) = name(&format!("_{service}._tcp.{}.{}.{domain}", n.name, n.org))
                else {
                    continue;
                };
                zone.add(
                    &srv,
                    Record::from_rdata(
                        srv.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 0, *port, owner.clone())),
                    ),
                );
            }
        }
        for g in gateways {
            let Some(owner) = name(&format!("gw-{}.{}.{domain}", g.site, g.org)) else {
                continue;
            };
            zone.names.entry(LowerName::from(&owner)).or_default();
            if let Some(ip) = g.ip {
                zone.add(&owner, address(&owner, ip));
            }
        }
        zone
    }

    fn add(&mut self, owner: &Name, record: Record) {
        self.names
            .entry(LowerName::from(owner))
            .or_default()
            .push(record);
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
            Some(records) => {
                // a CNAME answers every type at its name (RFC 1034 section 3.6.2)
                let hits: Vec<Record> = records
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
}

/// Per-source token buckets of `qps` (0: no limit), bounded; refuses (fails closed) when full of
/// active sources.
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

/// The request handler: answers from the current [`Zone`], replaced as the view changes.
#[derive(Debug, Clone)]
pub struct ZoneHandler {
    zone: Arc<RwLock<Arc<Zone>>>,
    limiter: Arc<Limiter>,
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
        }
    }

    /// Installs a new zone; the next query sees it.
    pub fn replace(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }

    fn current(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[tonic::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, None);
        let src: SocketAddr = request.src();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let refuse = |code: ResponseCode| builder.error_msg(&request.metadata, code);
        let result = if !self.limiter.allow(src.ip(), Instant::now()) {
            response_handle
                .send_response(refuse(ResponseCode::Refused))
                .await
        } else if let [query] = request.queries.queries() {
            let zone = self.current();
            let (code, answers, authority) = zone.answer(query.name(), query.query_type());
            if code == ResponseCode::Refused {
                response_handle.send_response(refuse(code)).await
            } else {
                metadata.response_code = code;
                let msg = MessageResponseBuilder::new(&request.queries, None).build(
                    metadata,
                    answers.iter(),
                    authority.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                response_handle.send_response(msg).await
            }
        } else {
            response_handle
                .send_response(refuse(ResponseCode::FormErr))
                .await
        };
        match result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_limit_allows_a_burst_then_refuses_and_zero_is_off() {
        let l = Limiter {
            qps: 5.0,
            buckets: Mutex::default(),
        };
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!((0..5).all(|_| l.allow(a, t0)));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "sources are limited separately");
        assert!(l.allow(a, t0 + std::time::Duration::from_millis(200)));
        let off = Limiter::default();
        assert!((0..100_000).all(|_| off.allow(a, t0)));
    }

    #[test]
    fn answers_follow_the_rules() {
        let nodes = vec![ZoneNode {
            org: "org2".into(),
            name: "n1".into(),
            ip: None,
            alias: None,
            ports: BTreeMap::new(),
            enode_id: None,
        }];
        let z = Zone::build("acme.test", "gw-dc1.org1", 7, &nodes, &[]);
        let q = |s: &str| LowerName::from(Name::from_ascii(s).expect("name"));
        assert_eq!(
            z.answer(&q("n1.org2.acme.test."), RecordType::A).0,
            ResponseCode::NoError
        );
        assert!(
            z.answer(&q("n1.org2.acme.test."), RecordType::A)
                .1
                .is_empty(),
            "no address yet: NODATA"
        );
        assert_eq!(
            z.answer(&q("x.org2.acme.test."), RecordType::A).0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            z.answer(&q("acme.test.example."), RecordType::A).0,
            ResponseCode::Refused
        );
        assert_eq!(
            z.answer(&q("n1.org2.acme.test."), RecordType::ANY).0,
            ResponseCode::Refused
        );
        assert_eq!(
            Zone::default().answer(&q("acme.test."), RecordType::SOA).0,
            ResponseCode::Refused
        );
    }
}
