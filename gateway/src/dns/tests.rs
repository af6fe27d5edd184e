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
fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_its_address() {
    let l = Limiter {
        qps: 4.0,
        buckets: Mutex::default(),
    };
    let t0 = Instant::now();
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    // one host rotating through its /64 gets one budget
    assert!((1..=4).all(|i| l.allow(ip(&format!("2001:db8:1:2::{i}")), t0)));
    assert!(!l.allow(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t0));
    assert!(
        l.allow(ip("2001:db8:1:3::1"), t0),
        "the next /64 is another source"
    );
    assert!((0..4).all(|_| l.allow(ip("10.0.0.1"), t0)));
    assert!(!l.allow(ip("::ffff:10.0.0.1"), t0), "the same IPv4 host");
    assert!(
        l.allow(ip("::ffff:10.0.0.2"), t0),
        "mapped addresses are not one /64"
    );
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

#[test]
fn a_cname_holds_no_other_data() {
    let nodes = vec![ZoneNode {
        org: "org1".into(),
        name: "node1".into(),
        ip: None,
        alias: Some("quorum-node1.ns.svc.cluster.local".into()),
        ports: [("p2p".to_owned(), 30303u16)].into(),
        enode_id: Some(fedgw_proto::enode::EnodeId::from_bytes([0xab; 64])),
    }];
    let z = Zone::build("acme.test", "gw-dc1.org1", 7, &nodes, &[]);
    let q = LowerName::from(Name::from_ascii("node1.org1.acme.test.").expect("name"));
    let types: Vec<RecordType> = z.names[&q]
        .records
        .iter()
        .map(|r| r.record_type())
        .collect();
    assert_eq!(types, [RecordType::CNAME]);
    let (code, answers, _) = z.answer(&q, RecordType::TXT);
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(answers.len(), 1, "the CNAME answers TXT too");
}

/// Named services (a Fabric peer's `peer`, an IPFS Cluster peer's `cluster`) get their
/// `_<name>._tcp` SRV records beside the chain ports', and their `_tcp` parent exists.
#[test]
fn named_services_are_answered_as_srv_records() {
    let nodes = vec![ZoneNode {
        org: "org2".into(),
        name: "peer0".into(),
        ip: Some("127.77.0.3".parse().expect("ip")),
        alias: None,
        ports: [
            ("peer".to_owned(), 7051u16),
            ("chaincode".to_owned(), 7052),
            ("ops-api".to_owned(), 9443),
        ]
        .into(),
        enode_id: None,
    }];
    let z = Zone::build("acme.test", "gw-dc1.org1", 7, &nodes, &[]);
    let q = |s: &str| LowerName::from(Name::from_ascii(s).expect("name"));
    for (service, port) in [("peer", 7051), ("chaincode", 7052), ("ops-api", 9443)] {
        let (code, answers, _) = z.answer(
            &q(&format!("_{service}._tcp.peer0.org2.acme.test.")),
            RecordType::SRV,
        );
        assert_eq!(code, ResponseCode::NoError, "{service}");
        let srv: Vec<(u16, String)> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            srv,
            [(port, "peer0.org2.acme.test.".to_owned())],
            "{service}"
        );
    }
    let (code, answers, _) = z.answer(&q("_tcp.peer0.org2.acme.test."), RecordType::SRV);
    assert_eq!((code, answers.len()), (ResponseCode::NoError, 0));
    let (code, _, _) = z.answer(&q("_p2p._tcp.peer0.org2.acme.test."), RecordType::SRV);
    assert_eq!(code, ResponseCode::NXDomain);
}

/// A host of several labels is a CNAME to the absolute name (a trailing dot kept as one); a
/// one-label host gets no CNAME, and without an address its name answers NODATA.
#[test]
fn only_a_host_of_several_labels_becomes_a_cname() {
    let target = |h: &str| super::alias_target(h).map(|n| n.to_string());
    assert_eq!(
        target("db.internal.example").as_deref(),
        Some("db.internal.example.")
    );
    assert_eq!(
        target("db.internal.example.").as_deref(),
        Some("db.internal.example.")
    );
    assert_eq!(target("quorum-node1"), None);
    assert_eq!(target("quorum-node1."), None);

    let node = |alias: &str| ZoneNode {
        org: "org1".into(),
        name: "node1".into(),
        ip: None,
        alias: Some(alias.into()),
        ports: BTreeMap::new(),
        enode_id: None,
    };
    let q = LowerName::from(Name::from_ascii("node1.org1.acme.test.").expect("name"));
    let z = Zone::build("acme.test", "gw-dc1.org1", 1, &[node("quorum-node1")], &[]);
    assert_eq!(
        z.answer(&q, RecordType::A),
        (
            ResponseCode::NoError,
            vec![],
            z.soa.iter().cloned().collect()
        )
    );
    let z = Zone::build(
        "acme.test",
        "gw-dc1.org1",
        1,
        &[node("db.internal.example")],
        &[],
    );
    let (_, answers, _) = z.answer(&q, RecordType::A);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].data.to_string(), "db.internal.example.");
}

mod requests {
    use super::*;
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    use std::sync::Mutex as StdMutex;

    fn zone() -> Zone {
        let nodes = vec![ZoneNode {
            org: "org2".into(),
            name: "node1".into(),
            ip: Some("127.77.0.1".parse().expect("ip")),
            alias: None,
            ports: [("p2p".to_owned(), 30303u16)].into(),
            enode_id: Some(fedgw_proto::enode::EnodeId::from_bytes([0xab; 64])),
        }];
        let gateways = vec![ZoneGateway {
            org: "org1".into(),
            site: "dc1".into(),
            ip: Some("127.0.0.1".parse().expect("ip")),
        }];
        Zone::build("acme.test", "gw-dc1.org1", 7, &nodes, &gateways)
    }

    /// A zone whose node name has 255 bytes and is a CNAME to a 249-byte name: the answer takes
    /// 532 bytes (543 with OPT).
    fn long_zone() -> (Zone, String) {
        let label = |c: char| c.to_string().repeat(60);
        let domain = format!(
            "{}.{}.{}.{}.test",
            label('a'),
            label('b'),
            label('c'),
            &label('h')[..54]
        );
        let alias = format!(
            "{}.{}.{}.{}.svc",
            label('d'),
            label('e'),
            label('f'),
            label('g')
        );
        let nodes = vec![ZoneNode {
            org: "org2".into(),
            name: "node1".into(),
            ip: None,
            alias: Some(alias),
            ports: BTreeMap::new(),
            enode_id: None,
        }];
        let zone = Zone::build(&domain, "gw-dc1.org1", 1, &nodes, &[]);
        (zone, format!("node1.org2.{domain}."))
    }

    struct Ask {
        msg: Message,
    }

    fn ask(name: &str, qtype: RecordType) -> Ask {
        let mut msg = Message::query();
        msg.metadata.id = 4242;
        msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        Ask { msg }
    }

    impl Ask {
        fn class(mut self, class: DNSClass) -> Self {
            let mut q = self.msg.queries[0].clone();
            q.query_class = class;
            self.msg.queries = vec![q];
            self
        }
        fn op(mut self, op: OpCode) -> Self {
            self.msg.metadata.op_code = op;
            self
        }
        fn edns(mut self, f: impl FnOnce(&mut Edns)) -> Self {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            f(&mut e);
            self.msg.set_edns(e);
            self
        }
        fn request(&self, protocol: Protocol) -> Request {
            let bytes = self.msg.to_vec().expect("encode");
            Request::from_bytes(bytes, "127.0.0.1:5300".parse().expect("addr"), protocol)
                .expect("parse")
        }
        fn udp(&self, zone: &Zone) -> Reply {
            zone.respond(&self.request(Protocol::Udp), Transport::Udp)
        }
        fn tcp(&self, zone: &Zone) -> Reply {
            zone.respond(&self.request(Protocol::Tcp), Transport::Tcp)
        }
    }

    fn is_error(r: &Reply, code: ResponseCode) -> bool {
        r.code == code && !r.authoritative && r.answers.is_empty() && r.authority.is_empty()
    }

    #[test]
    fn opcodes_other_than_query_are_not_implemented() {
        let z = zone();
        let name = "node1.org2.acme.test.";
        assert_eq!(ask(name, RecordType::A).udp(&z).answers.len(), 1);
        for op in [
            OpCode::Unknown(1), // IQUERY, obsolete (RFC 3425)
            OpCode::Status,
            OpCode::Notify,
            OpCode::Update,
            OpCode::Unknown(15),
        ] {
            let r = ask(name, RecordType::A).op(op).udp(&z);
            assert!(is_error(&r, ResponseCode::NotImp), "{op}: {r:?}");
        }
    }

    #[test]
    fn classes_other_than_in_are_refused() {
        let z = zone();
        for class in [DNSClass::CH, DNSClass::HS, DNSClass::NONE, DNSClass::ANY] {
            let r = ask("node1.org2.acme.test.", RecordType::A)
                .class(class)
                .udp(&z);
            assert!(is_error(&r, ResponseCode::Refused), "{class}: {r:?}");
        }
    }

    #[test]
    fn edns_is_answered_with_our_size_and_a_higher_version_with_badvers() {
        let z = zone();
        let name = "node1.org2.acme.test.";
        assert_eq!(ask(name, RecordType::A).udp(&z).edns, None, "no OPT asked");

        let r = ask(name, RecordType::A)
            .edns(|e| {
                e.set_max_payload(4096).set_dnssec_ok(true);
                e.options_mut()
                    .insert(EdnsOption::Unknown(65001, vec![1, 2]));
                e.options_mut()
                    .insert(EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7; 8]));
            })
            .udp(&z);
        assert_eq!(r.code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1, "unknown options are ignored");
        let e = r.edns.expect("an OPT answers an OPT");
        assert_eq!(
            (e.max_payload(), e.version(), e.flags().dnssec_ok),
            (UDP_PAYLOAD, 0, true)
        );
        assert!(e.options().as_ref().is_empty(), "no option is echoed");

        let r = ask(name, RecordType::A)
            .edns(|e| {
                e.set_version(1);
            })
            .udp(&z);
        assert!(is_error(&r, ResponseCode::BADVERS), "{r:?}");
        assert_eq!(r.edns.map(|e| e.version()), Some(0));
        // BADVERS comes before the opcode check, as in Knot
        let r = ask(name, RecordType::A)
            .op(OpCode::Status)
            .edns(|e| {
                e.set_version(3);
            })
            .udp(&z);
        assert_eq!(r.code, ResponseCode::BADVERS);
    }

    #[test]
    fn empty_non_terminals_are_nodata_not_nxdomain() {
        let z = zone();
        for name in [
            "org2.acme.test.",
            "_tcp.node1.org2.acme.test.",
            "org1.acme.test.",
            "ORG2.Acme.Test.",
        ] {
            let r = ask(name, RecordType::A).udp(&z);
            assert_eq!(r.code, ResponseCode::NoError, "{name}");
            assert!(r.authoritative && r.answers.is_empty(), "{name}");
            assert_eq!(
                r.authority
                    .iter()
                    .map(|r| r.record_type())
                    .collect::<Vec<_>>(),
                [RecordType::SOA],
                "{name}"
            );
        }
        for name in [
            "x.org2.acme.test.",
            "_udp.node1.org2.acme.test.",
            "org3.acme.test.",
        ] {
            assert_eq!(
                ask(name, RecordType::A).udp(&z).code,
                ResponseCode::NXDomain,
                "{name}"
            );
        }
        assert_eq!(
            ask("test.", RecordType::A).udp(&z).code,
            ResponseCode::Refused,
            "the parent is not ours"
        );
    }

    #[test]
    fn zone_transfers_are_refused() {
        let z = zone();
        let axfr = ask("acme.test.", RecordType::AXFR);
        assert!(is_error(&axfr.udp(&z), ResponseCode::FormErr));
        assert!(is_error(&axfr.tcp(&z), ResponseCode::Refused));
        let ixfr = ask("acme.test.", RecordType::IXFR);
        assert!(is_error(&ixfr.udp(&z), ResponseCode::Refused));
        assert!(is_error(&ixfr.tcp(&z), ResponseCode::Refused));
    }

    #[test]
    fn answers_larger_than_the_requesters_size_are_truncated_over_udp() {
        let (z, name) = long_zone();
        let q = ask(&name, RecordType::A);
        let full = q.tcp(&z);
        assert_eq!(full.answers.len(), 1);
        assert!(!full.truncated);

        let r = q.udp(&z);
        assert!(r.truncated && r.authoritative, "512 without EDNS: {r:?}");
        assert!(r.answers.is_empty() && r.authority.is_empty());
        assert_eq!(r.code, ResponseCode::NoError);

        let small = ask(&name, RecordType::A).edns(|e| {
            e.set_max_payload(520);
        });
        let r = small.udp(&z);
        assert!(r.truncated && r.edns.is_some(), "520 asked: {r:?}");
        let big = ask(&name, RecordType::A).edns(|e| {
            e.set_max_payload(4096);
        });
        assert_eq!(big.udp(&z), full_with_edns(&big, &z));
    }

    #[test]
    fn an_answer_that_fits_once_compressed_is_not_truncated() {
        // a 210-byte SRV name whose 200-byte target compresses to a pointer: 652 bytes
        // uncompressed, 246 sent
        let label = |c: char| c.to_string().repeat(60);
        let domain = format!("{}.{}.{}.test", label('a'), label('b'), label('c'));
        let nodes = vec![ZoneNode {
            org: "org2".into(),
            name: "node1".into(),
            ip: Some("127.77.0.1".parse().expect("ip")),
            alias: None,
            ports: [("p2p".to_owned(), 30303u16)].into(),
            enode_id: None,
        }];
        let z = Zone::build(&domain, "gw-dc1.org1", 1, &nodes, &[]);
        let r = ask(&format!("_p2p._tcp.node1.org2.{domain}."), RecordType::SRV).udp(&z);
        assert!(!r.truncated && r.answers.len() == 1, "{r:?}");
        let question = format!("_p2p._tcp.node1.org2.{domain}.").len() + 1 + 4;
        assert!(
            12 + question + wire_bound(&r.answers[0]) > 512,
            "the exact check ran"
        );
    }

    fn full_with_edns(q: &Ask, z: &Zone) -> Reply {
        let r = q.tcp(z);
        assert!(!r.truncated && r.edns.is_some());
        r
    }

    /// The bytes the handler sends, as a response handler with a UDP size would encode them.
    #[derive(Clone, Default)]
    struct Capture(Arc<StdMutex<Vec<Vec<u8>>>>);

    #[tonic::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: hickory_server::zone_handler::MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, hickory_server::net::NetError> {
            let mut buf = Vec::new();
            let info = response.destructive_emit(&mut BinEncoder::new(&mut buf))?;
            self.0.lock().expect("lock").push(buf);
            Ok(info)
        }
    }

    async fn exchange(handler: &ZoneHandler, q: &Ask, protocol: Protocol) -> Vec<u8> {
        let capture = Capture::default();
        handler
            .handle_request::<_, hickory_server::net::runtime::TokioTime>(
                &q.request(protocol),
                capture.clone(),
            )
            .await;
        let mut sent = capture.0.lock().expect("lock");
        assert_eq!(sent.len(), 1);
        sent.pop().expect("one response")
    }

    #[tokio::test]
    async fn the_handler_encodes_the_reply_within_the_size_asked() {
        let (z, name) = long_zone();
        let handler = ZoneHandler::new(0);
        handler.replace(z);

        let bytes = exchange(&handler, &ask(&name, RecordType::A), Protocol::Udp).await;
        assert!(bytes.len() <= 512, "{}", bytes.len());
        let m = Message::from_vec(&bytes).expect("decode");
        assert!(m.metadata.truncation && m.metadata.authoritative);
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.queries.len(), 1, "the question is echoed");

        let bytes = exchange(&handler, &ask(&name, RecordType::A), Protocol::Tcp).await;
        let m = Message::from_vec(&bytes).expect("decode");
        assert!(!m.metadata.truncation && m.answers.len() == 1);
        assert!(bytes.len() > 512, "{}", bytes.len());

        let v1 = ask(&name, RecordType::A).edns(|e| {
            e.set_version(1);
        });
        let m = Message::from_vec(&exchange(&handler, &v1, Protocol::Udp).await).expect("decode");
        assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
        let e = m.edns.expect("OPT");
        assert_eq!((e.version(), e.max_payload()), (0, UDP_PAYLOAD));
    }
}

/// The fuzz target's seeds (real and broken requests), answered over both transports: never a
/// panic, never TC over TCP, never an OPT with an option or another size.
#[test]
fn every_fuzz_seed_gets_a_reply() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dns_request");
    let z = Zone::build("acme.test", "gw-dc1.org1", 1, &[], &[]);
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("seed");
        let src = "127.0.0.1:5300".parse().expect("addr");
        let Ok(request) = Request::from_bytes(bytes, src, Protocol::Udp) else {
            continue;
        };
        parsed += 1;
        for transport in [Transport::Udp, Transport::Tcp] {
            let r = z.respond(&request, transport);
            assert!(!r.truncated || transport == Transport::Udp);
            if let Some(e) = &r.edns {
                assert_eq!((e.max_payload(), e.version()), (UDP_PAYLOAD, 0));
                assert!(e.options().as_ref().is_empty());
            }
        }
    }
    assert!(parsed >= 10, "{parsed} seeds parsed");
}

#[test]
fn tcp_slots_are_counted_per_ipv4_address_and_ipv6_64_and_freed_on_drop() {
    let counts = Arc::new(TcpCounts {
        limits: TcpLimits {
            per_source: 2,
            total: 5,
            idle: std::time::Duration::from_secs(5),
        },
        state: Mutex::default(),
    });
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let a = counts.admit(ip("2001:db8:0:1::1")).expect("first");
    let _b = counts
        .admit(ip("2001:db8:0:1::ffff"))
        .expect("second, same /64");
    assert_eq!(
        counts.admit(ip("2001:db8:0:1:8000::1")).err(),
        Some(TcpRefusal::PerSource)
    );
    let _c = counts.admit(ip("2001:db8:0:2::1")).expect("another /64");
    let _d = counts.admit(ip("192.0.2.1")).expect("v4");
    let _e = counts
        .admit(ip("::ffff:192.0.2.1"))
        .expect("the same v4, mapped");
    assert_eq!(
        counts.admit(ip("192.0.2.1")).err(),
        Some(TcpRefusal::PerSource)
    );
    assert_eq!(counts.admit(ip("192.0.2.2")).err(), Some(TcpRefusal::Total));
    drop(a);
    let _f = counts
        .admit(ip("2001:db8:0:1::2"))
        .expect("a slot came back");
    assert_eq!(counts.admit(ip("192.0.2.2")).err(), Some(TcpRefusal::Total));
}
