//! Enode URL and node-list tests. The data files under `proto/data/` are byte-for-byte copies of
//! the shared samples; their sources are listed in `/work/shared/samples/SOURCES.md` and, for
//! `enodes.txt`, on each line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

const ENODES_TXT: &str = include_str!("../../data/enodes.txt");
const GOQUORUM_STATIC: &str = include_str!("../../data/goquorum-static-nodes.raft.json");
const GOQUORUM_PERMISSIONED_DNS: &str =
    include_str!("../../data/goquorum-permissioned-nodes.raft-dns.json");
const BESU_STATIC: &str = include_str!("../../data/besu-static-nodes.json");

/// quorum-dev-quickstart member1 (static-nodes, Besu static-nodes, bootnodes).
const QUICKSTART_ID_1: &str = "8208a3f344695d44e9cf2c023683cbea7b9343e2f70a5e804bd2c93858e945f8f91439eef96a4ab6c47ff06637d6fbe6472f96de1655a1bee57ea896654f3a22";
/// quorum-dev-quickstart member8 (last entry).
const QUICKSTART_ID_8: &str = "af19c92deb635bd7720634de9b2e7908208530d6f5e96eee003a8f1799e5be4037957d7e2fdbe3605e3a38dab05c961679c02133a0e624e23a72f7961e8af6ac";
/// qubernetes 7nodes quorum-node1.
const SEVEN_NODES_ID_1: &str = "ac6b1096ca56b9f6d004b779ae3728bf83f8e22453404cc3cef16a3d9b96608bc67c4b30db88e0a5a6c6390213f7acbe1153ff6d23ce57380104288ae19373ef";

fn id(hex: &str) -> EnodeId {
    hex.parse().expect("test id is 128 hex digits")
}

fn url(id_hex: &str, rest: &str) -> String {
    format!("enode://{id_hex}@{rest}")
}

/// The valid URLs of `enodes.txt` (the first column of non-comment lines).
fn valid_sample_lines() -> Vec<&'static str> {
    ENODES_TXT
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').next().unwrap_or(l))
        .collect()
}

/// The commented-out template URLs after the `# NEGATIVE` marker.
fn negative_sample_lines() -> Vec<&'static str> {
    ENODES_TXT
        .lines()
        .skip_while(|l| !l.starts_with("# NEGATIVE"))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with("enode://"))
        .map(|l| l.split('\t').next().unwrap_or(l))
        .collect()
}

#[test]
fn every_valid_sample_line_parses_and_renders_back_identically() {
    let lines = valid_sample_lines();
    assert_eq!(lines.len(), 11, "enodes.txt has 11 valid URLs");
    for line in lines {
        let parsed = EnodeUrl::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        // Every sample is already canonical: lowercase hex, discport before raftport.
        assert_eq!(parsed.to_string(), line);
    }
}

#[test]
fn sample_lines_have_the_expected_fields() {
    let lines = valid_sample_lines();
    let parsed: Vec<EnodeUrl> = lines
        .iter()
        .map(|l| EnodeUrl::parse(l).expect("valid sample"))
        .collect();

    // geth mainnet bootnode: plain IPv4, default port, no query.
    assert_eq!(
        parsed[0],
        EnodeUrl {
            id: id(
                "d860a01f9722d78051619d1e2351aba3f43f943f6f00718d1b9baa4101932a1f5011f16bb2b1bb35db20d6fe28fa0bf09636d26a87d31de9ec6203eeedb1f666"
            ),
            host: Host::Ip(IpAddr::V4(Ipv4Addr::new(18, 138, 108, 67))),
            port: 30303,
            discport: None,
            raftport: None,
        }
    );
    // Goerli bootnode: non-default TCP port.
    assert_eq!(parsed[4].port, 30313);
    // qubernetes: DNS name plus raft.
    assert_eq!(parsed[5].id, id(SEVEN_NODES_ID_1));
    assert_eq!(parsed[5].host, Host::Dns("quorum-node1".into()));
    assert_eq!(
        (parsed[5].port, parsed[5].discport, parsed[5].raftport),
        (30303, Some(0), Some(50401))
    );
    // Multi-cluster NodePort.
    assert_eq!((parsed[7].port, parsed[7].raftport), (31500, Some(50401)));
    // raft.addPeer argument on loopback.
    assert_eq!(parsed[8].host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(parsed[8].raftport, Some(50407));
    // Besu docs: discport differs, no raftport.
    assert_eq!(
        (parsed[9].port, parsed[9].discport, parsed[9].raftport),
        (30303, Some(30301), None)
    );
    // Besu docs: domain name.
    assert_eq!(
        parsed[10].host,
        Host::Dns("mydomain.dev.example.net".into())
    );
    assert_eq!(parsed[10].port, 30301);
    assert_eq!(parsed[9].id, parsed[10].id);
}

#[test]
fn negative_sample_lines_are_refused() {
    let lines = negative_sample_lines();
    assert_eq!(lines.len(), 2, "enodes.txt has 2 negative examples");
    // Helm template `{{ .Values.enodeOverride }}` and syntax placeholder `<id>`: neither is an id.
    for line in &lines {
        assert_eq!(EnodeUrl::parse(line), Err(EnodeError::IdLength), "{line}");
    }
    // The same templates with a real id still fail on their host part.
    let helm_host = lines[0].replace("{{ .Values.enodeOverride }}", SEVEN_NODES_ID_1);
    assert_eq!(EnodeUrl::parse(&helm_host), Err(EnodeError::BadHost));
    let placeholder_host = lines[1].replace("<id>", SEVEN_NODES_ID_1);
    assert_eq!(EnodeUrl::parse(&placeholder_host), Err(EnodeError::BadHost));
}

#[test]
fn goquorum_static_nodes_sample() {
    let nodes = parse_static_nodes(GOQUORUM_STATIC).expect("sample parses");
    assert_eq!(nodes.len(), 8);
    assert_eq!(nodes[0].id, id(QUICKSTART_ID_1));
    assert_eq!(nodes[7].id, id(QUICKSTART_ID_8));
    for (i, node) in nodes.iter().enumerate() {
        let last_octet = 11 + u8::try_from(i).expect("8 entries");
        assert_eq!(
            node.host,
            Host::Ip(IpAddr::V4(Ipv4Addr::new(172, 16, 239, last_octet)))
        );
        assert_eq!(
            (node.port, node.discport, node.raftport),
            (30303, Some(0), Some(53000))
        );
    }
}

#[test]
fn goquorum_permissioned_nodes_dns_sample() {
    let nodes = parse_static_nodes(GOQUORUM_PERMISSIONED_DNS).expect("sample parses");
    assert_eq!(nodes.len(), 7);
    assert_eq!(nodes[0].id, id(SEVEN_NODES_ID_1));
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.host, Host::Dns(format!("quorum-node{}", i + 1)));
        assert_eq!(
            (node.port, node.discport, node.raftport),
            (30303, Some(0), Some(50401))
        );
        // These are the public 7nodes identities.
        assert!(crate::demo_keys::is_demo_enode(&node.id), "entry {i}");
    }
}

#[test]
fn besu_static_nodes_sample() {
    let nodes = parse_static_nodes(BESU_STATIC).expect("sample parses");
    assert_eq!(nodes.len(), 8);
    assert_eq!(nodes[0].id, id(QUICKSTART_ID_1));
    assert_eq!(nodes[7].id, id(QUICKSTART_ID_8));
    assert_eq!(
        nodes[7].host,
        Host::Ip(IpAddr::V4(Ipv4Addr::new(172, 16, 239, 18)))
    );
    assert!(
        nodes
            .iter()
            .all(|n| n.port == 30303 && n.discport.is_none() && n.raftport.is_none())
    );
    assert!(
        nodes
            .iter()
            .all(|n| !crate::demo_keys::is_demo_enode(&n.id))
    );
    // Same ids as the GoQuorum list of the same quickstart.
    let goquorum = parse_static_nodes(GOQUORUM_STATIC).expect("sample parses");
    let ids = |v: &[EnodeUrl]| v.iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ids(&nodes), ids(&goquorum));
}

#[test]
fn display_reparses_to_an_equal_value() {
    let cases = [
        url(QUICKSTART_ID_1, "10.0.0.1:30303"),
        url(QUICKSTART_ID_1, "[::1]:30303?discport=0"),
        url(QUICKSTART_ID_1, "[2001:db8::7]:1?raftport=65535"),
        url(
            QUICKSTART_ID_1,
            "node-1.example.com:30303?discport=30301&raftport=50401",
        ),
        url(QUICKSTART_ID_1, "[::ffff:10.1.2.3]:30303"),
    ];
    for case in cases {
        let parsed = EnodeUrl::parse(&case).expect("valid");
        let text = parsed.to_string();
        assert_eq!(text, case);
        assert_eq!(EnodeUrl::parse(&text), Ok(parsed));
    }
}

#[test]
fn non_canonical_input_renders_canonically() {
    let upper = QUICKSTART_ID_1.to_ascii_uppercase();
    let parsed = EnodeUrl::parse(&url(
        &upper,
        "Node-1.Example.COM:30303?raftport=50401&discport=0",
    ))
    .expect("valid");
    assert_eq!(parsed.id, id(QUICKSTART_ID_1));
    assert_eq!(parsed.host, Host::Dns("node-1.example.com".into()));
    assert_eq!(
        parsed.to_string(),
        url(
            QUICKSTART_ID_1,
            "node-1.example.com:30303?discport=0&raftport=50401"
        )
    );
    // raftport alone.
    let raft_only =
        EnodeUrl::parse(&url(QUICKSTART_ID_1, "quorum-node3:21000?raftport=50403")).expect("valid");
    assert_eq!(
        (raft_only.discport, raft_only.raftport),
        (None, Some(50403))
    );
    assert_eq!(
        raft_only.to_string(),
        url(QUICKSTART_ID_1, "quorum-node3:21000?raftport=50403")
    );
    // IPv6 is rendered compressed.
    let v6 =
        EnodeUrl::parse(&url(QUICKSTART_ID_1, "[2001:0db8:0:0:0:0:0:7]:30303")).expect("valid");
    assert_eq!(
        v6.host,
        Host::Ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)))
    );
    assert_eq!(v6.to_string(), url(QUICKSTART_ID_1, "[2001:db8::7]:30303"));
}

#[test]
fn enode_id_text_and_bytes() {
    let parsed = id(QUICKSTART_ID_1);
    assert_eq!(parsed.as_bytes()[..4], [0x82, 0x08, 0xa3, 0xf3]);
    assert_eq!(parsed.as_bytes()[63], 0x22);
    assert_eq!(parsed.to_string(), QUICKSTART_ID_1);
    assert_eq!(EnodeId::from_bytes(*parsed.as_bytes()), parsed);
    assert_eq!(format!("{parsed:?}"), format!("EnodeId({QUICKSTART_ID_1})"));
    assert_eq!(
        QUICKSTART_ID_1[..127].parse::<EnodeId>(),
        Err(EnodeError::IdLength)
    );
    assert_eq!(
        format!("{QUICKSTART_ID_1}0").parse::<EnodeId>(),
        Err(EnodeError::IdLength)
    );
    assert_eq!(
        format!("0x{}", &QUICKSTART_ID_1[2..]).parse::<EnodeId>(),
        Err(EnodeError::IdHex)
    );
}

#[test]
fn broken_urls_give_typed_errors() {
    let id = QUICKSTART_ID_1;
    let bad_hex = format!("{}g", &id[..127]);
    let cases: Vec<(String, EnodeError)> = vec![
        // Scheme.
        (format!("enr://{id}@1.2.3.4:30303"), EnodeError::Scheme),
        (format!("ENODE://{id}@1.2.3.4:30303"), EnodeError::Scheme),
        (format!(" enode://{id}@1.2.3.4:30303"), EnodeError::Scheme),
        (id.to_owned(), EnodeError::Scheme),
        // Id.
        (url(&id[..127], "1.2.3.4:30303"), EnodeError::IdLength),
        (
            url(&format!("{id}00"), "1.2.3.4:30303"),
            EnodeError::IdLength,
        ),
        (
            url(&format!("04{id}"), "1.2.3.4:30303"),
            EnodeError::IdLength,
        ),
        (url(&bad_hex, "1.2.3.4:30303"), EnodeError::IdHex),
        (
            url(&format!("{}é", &id[..126]), "1.2.3.4:30303"),
            EnodeError::IdHex,
        ),
        (format!("enode://{id}"), EnodeError::MissingHost),
        // Host.
        (url(id, ""), EnodeError::MissingHost),
        (url(id, ":30303"), EnodeError::MissingHost),
        (url(id, "?discport=0"), EnodeError::MissingHost),
        (url(id, "::1:30303"), EnodeError::BadHost),
        (url(id, "2001:db8::7:30303"), EnodeError::BadHost),
        (url(id, "[2001:db8::7:30303"), EnodeError::BadHost),
        (url(id, "[1.2.3.4]:30303"), EnodeError::BadHost),
        (url(id, "[fe80::1%eth0]:30303"), EnodeError::BadHost),
        (url(id, "[::1]x:30303"), EnodeError::BadHost),
        (url(id, "256.1.1.1:30303"), EnodeError::BadHost),
        (url(id, "010.0.0.1:30303"), EnodeError::BadHost),
        (url(id, "1.2.3:30303"), EnodeError::BadHost),
        (url(id, "-node:30303"), EnodeError::BadHost),
        (url(id, "node_1:30303"), EnodeError::BadHost),
        (url(id, "node..example:30303"), EnodeError::BadHost),
        (url(id, "example.com.:30303"), EnodeError::BadHost),
        (url(id, "user@example.com:30303"), EnodeError::BadHost),
        (url(id, "%THIS_SERVICE_HOST%:30303"), EnodeError::BadHost),
        (
            url(id, &format!("{}:30303", "a".repeat(64))),
            EnodeError::BadHost,
        ),
        (
            url(
                id,
                &format!("{}.com:30303", vec!["a".repeat(63); 4].join(".")),
            ),
            EnodeError::BadHost,
        ),
        // Port.
        (url(id, "1.2.3.4"), EnodeError::MissingPort),
        (url(id, "1.2.3.4:"), EnodeError::MissingPort),
        (url(id, "[::1]"), EnodeError::MissingPort),
        (url(id, "1.2.3.4:0"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:65536"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:030303"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:+30303"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:-1"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:http"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:999999"), EnodeError::BadPort("port")),
        (
            url(id, "1.2.3.4:30303?discport=65536"),
            EnodeError::BadPort("discport"),
        ),
        (
            url(id, "1.2.3.4:30303?discport="),
            EnodeError::BadPort("discport"),
        ),
        (
            url(id, "1.2.3.4:30303?raftport=0"),
            EnodeError::BadPort("raftport"),
        ),
        (
            url(id, "1.2.3.4:30303?raftport=%35%30"),
            EnodeError::BadPort("raftport"),
        ),
        // Trailing garbage.
        (url(id, "1.2.3.4:30303/"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:30303 "), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:30303\n"), EnodeError::BadPort("port")),
        (url(id, "1.2.3.4:30303#frag"), EnodeError::BadPort("port")),
        (url(id, "[::1]:30303]"), EnodeError::BadPort("port")),
        (
            url(id, "1.2.3.4:30303?raftport=50401x"),
            EnodeError::BadPort("raftport"),
        ),
        (
            url(id, "1.2.3.4:30303?raftport=50401?x"),
            EnodeError::BadPort("raftport"),
        ),
        // Query.
        (url(id, "1.2.3.4:30303?"), EnodeError::BadQuery),
        (url(id, "1.2.3.4:30303?discport"), EnodeError::BadQuery),
        (url(id, "1.2.3.4:30303?discport=0&"), EnodeError::BadQuery),
        (url(id, "1.2.3.4:30303?&discport=0"), EnodeError::BadQuery),
        (url(id, "1.2.3.4:30303?=0"), EnodeError::BadQuery),
        (
            url(id, "1.2.3.4:30303?foo=1"),
            EnodeError::UnknownParam("foo".into()),
        ),
        (
            url(id, "1.2.3.4:30303?discport=0&RaftPort=1"),
            EnodeError::UnknownParam("RaftPort".into()),
        ),
        (
            url(id, "1.2.3.4:30303?discport=0&discport=0"),
            EnodeError::DuplicateParam("discport"),
        ),
        (
            url(id, "1.2.3.4:30303?raftport=1&discport=0&raftport=1"),
            EnodeError::DuplicateParam("raftport"),
        ),
        // Length.
        (
            url(id, &format!("{}.example:30303", "a".repeat(900))),
            EnodeError::TooLong,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(EnodeUrl::parse(&input), Err(want), "{input:?}");
    }
}

#[test]
fn length_limit_is_on_the_whole_text() {
    // A valid URL with a long name, padded to exactly the limit: it gets past the length check
    // and fails on the padding; one byte more is refused before anything else is looked at.
    let host = format!(
        "{}.{}.{}.example",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63)
    );
    assert!(host.len() <= MAX_HOSTNAME_LEN);
    let ok = url(QUICKSTART_ID_1, &format!("{host}:30303"));
    assert_eq!(
        EnodeUrl::parse(&ok).map(|u| u.host),
        Ok(Host::Dns(host.clone()))
    );
    let long = format!("{ok}{}", " ".repeat(MAX_ENODE_URL_LEN - ok.len()));
    assert_eq!(long.len(), MAX_ENODE_URL_LEN);
    assert_eq!(EnodeUrl::parse(&long), Err(EnodeError::BadPort("port")));
    let too_long = format!("{long} ");
    assert_eq!(EnodeUrl::parse(&too_long), Err(EnodeError::TooLong));
}

#[test]
fn static_nodes_errors_name_the_entry() {
    let good = url(QUICKSTART_ID_1, "1.2.3.4:30303");
    let json = format!(r#"["{good}", "{good}", "enode://{{{{ .Values.enodeOverride }}}}@x:1"]"#);
    match parse_static_nodes(&json) {
        Err(StaticNodesError::Entry { index, source }) => {
            assert_eq!((index, source), (2, EnodeError::IdLength));
        }
        other => panic!("unexpected {other:?}"),
    }
    let json = format!(r#"["{good}", "{}"]"#, url(QUICKSTART_ID_1, "1.2.3.4:0"));
    assert!(matches!(
        parse_static_nodes(&json),
        Err(StaticNodesError::Entry {
            index: 1,
            source: EnodeError::BadPort("port")
        })
    ));
}

#[test]
fn static_nodes_shape_errors() {
    for bad in [
        "",
        "{}",
        r#"{"nodes": []}"#,
        "[1]",
        "[null]",
        r#"["a",]"#,
        r#"["a"] x"#,
        r#"[["enode://"]]"#,
        "[",
    ] {
        assert!(
            matches!(
                parse_static_nodes(bad),
                Err(StaticNodesError::InvalidJson(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(parse_static_nodes(" [ ] \n").ok(), Some(vec![]));
}

#[test]
fn static_nodes_cap() {
    let entry = format!("\"{}\"", url(QUICKSTART_ID_1, "1.2.3.4:30303"));
    let at_cap = format!("[{}]", vec![entry.as_str(); MAX_STATIC_NODES].join(","));
    assert_eq!(
        parse_static_nodes(&at_cap).map(|v| v.len()).ok(),
        Some(MAX_STATIC_NODES)
    );
    let over_cap = format!("[{}]", vec![entry.as_str(); MAX_STATIC_NODES + 1].join(","));
    assert!(matches!(
        parse_static_nodes(&over_cap),
        Err(StaticNodesError::TooMany)
    ));
    // Still a JSON error when the surplus is broken JSON.
    let broken = format!(
        "[{},]",
        vec![entry.as_str(); MAX_STATIC_NODES + 1].join(",")
    );
    assert!(matches!(
        parse_static_nodes(&broken),
        Err(StaticNodesError::InvalidJson(_))
    ));
}

#[test]
fn error_messages_are_lowercase_and_name_the_part() {
    assert_eq!(
        EnodeError::BadPort("raftport").to_string(),
        "invalid raftport in enode url"
    );
    assert_eq!(
        EnodeError::UnknownParam("foo".into()).to_string(),
        "unknown query parameter \"foo\" in enode url"
    );
    let err = parse_static_nodes(r#"["x"]"#).expect_err("not an enode url");
    assert_eq!(
        err.to_string(),
        "node list entry 0 is not a valid enode url"
    );
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("not an enode url (expected it to start with \"enode://\")")
    );
}

/// The secp256k1 generator G (SEC 2 section 2.4.1), X then Y.
const GENERATOR: &str = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

#[test]
fn an_id_must_be_a_point_on_the_curve() {
    // real keys: every sample id, and the generator
    for line in valid_sample_lines() {
        EnodeUrl::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    for list in [GOQUORUM_STATIC, GOQUORUM_PERMISSIONED_DNS, BESU_STATIC] {
        parse_static_nodes(list).expect("the samples are real keys");
    }
    let g = id(GENERATOR);
    assert_eq!(EnodeId::from_key_bytes(*g.as_bytes()), Ok(g));

    // 64 bytes that are no point: random-looking bytes, Y of another point, all zeros, X or Y
    // at or beyond the field prime p
    let mut wrong_y = *g.as_bytes();
    wrong_y[63] ^= 1;
    let p_and_y = format!(
        "{}{}",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f",
        &GENERATOR[64..]
    );
    for bytes in [
        [0xab; 64],
        wrong_y,
        [0; 64],
        [0xff; 64],
        *EnodeId::from_bytes([0x11; 64]).as_bytes(),
    ] {
        assert_eq!(
            EnodeId::from_key_bytes(bytes),
            Err(EnodeError::NotOnCurve),
            "{bytes:02x?}"
        );
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text.parse::<EnodeId>(), Err(EnodeError::NotOnCurve));
        assert_eq!(
            EnodeUrl::parse(&url(&text, "10.0.0.1:30303")),
            Err(EnodeError::NotOnCurve)
        );
    }
    assert!(
        p_and_y.parse::<EnodeId>().is_err(),
        "x = p is out of the field"
    );
    // a list with one such entry names it
    let list = format!(
        r#"["{}", "{}"]"#,
        url(GENERATOR, "10.0.0.1:30303"),
        url(&"ab".repeat(64), "10.0.0.2:30303")
    );
    match parse_static_nodes(&list) {
        Err(StaticNodesError::Entry { index, source }) => {
            assert_eq!((index, source), (1, EnodeError::NotOnCurve));
        }
        other => panic!("{other:?}"),
    }
}
