//! Tessera config tests. The two sample configs under `proto/data/` are byte-for-byte copies of
//! the shared samples (qubernetes `7nodes/tessera-config-9.0.json` and quorum-dev-quickstart
//! `files/common/config/tessera/data/tessera-config-template.json`; see
//! `/work/shared/samples/SOURCES.md`).

use super::*;

const QUBERNETES_09: &str = include_str!("../../data/tessera-config-09.json");
const QUICKSTART: &str = include_str!("../../data/tessera-config-template.quickstart.json");

/// qubernetes 7nodes quorum-node1 `tm.pub`.
const NODE1_KEY: &str = "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bo=";
/// qubernetes 7nodes quorum-node2 `tm.pub`.
const NODE2_KEY: &str = "QfeDAys9MPDs2XHExtc84jKGHxZg/aj52DTh0vtA3Xc=";

fn key(text: &str) -> TesseraKey {
    text.parse().expect("test key is valid")
}

#[test]
fn qubernetes_09_sample() {
    let config = parse_tessera_config(QUBERNETES_09).expect("sample parses");
    assert_eq!(
        config.p2p_url.as_deref(),
        Some("http://%THIS_SERVICE_HOST%:9001")
    );
    let want: Vec<String> = (1..=7)
        .map(|n| format!("http://quorum-node{n}:9001"))
        .collect();
    assert_eq!(config.peers, want);
    // keyData gives privateKeyPath / publicKeyPath placeholders only.
    assert_eq!(config.public_keys, vec![]);
}

#[test]
fn quickstart_template_sample() {
    let config = parse_tessera_config(QUICKSTART).expect("sample parses");
    assert_eq!(
        config,
        TesseraConfig {
            p2p_url: Some("http://${HOSTNAME}:9000".into()),
            peers: vec![
                "http://member1tessera:9000".into(),
                "http://member2tessera:9000".into(),
                "http://member3tessera:9000".into(),
            ],
            public_keys: vec![],
        }
    );
}

#[test]
fn inline_public_keys_are_read_and_path_entries_skipped() {
    let json = format!(
        r#"{{
            "serverConfigs": [
                {{"app": "Q2T", "serverAddress": "unix:/tmp/tm.ipc"}},
                {{"app": "P2P", "enabled": false, "serverAddress": "http://old:9001"}},
                {{"app": "P2P", "enabled": true, "serverAddress": "https://tm1.example.org:9001",
                  "sslConfig": {{"tls": "STRICT"}}}}
            ],
            "peer": [],
            "keys": {{
                "passwords": [],
                "keyData": [
                    {{"privateKeyPath": "/k/tm.key", "publicKeyPath": "/k/tm.pub"}},
                    {{"config": {{"data": {{"bytes": "secret"}}, "type": "unlocked"}},
                      "publicKey": "{NODE1_KEY}"}},
                    {{"publicKey": "{NODE2_KEY}"}}
                ]
            }},
            "unknownFutureField": {{"x": [1, 2, 3]}}
        }}"#
    );
    let config = parse_tessera_config(&json).expect("valid");
    assert_eq!(
        config.p2p_url.as_deref(),
        Some("https://tm1.example.org:9001")
    );
    assert_eq!(config.peers, Vec::<String>::new());
    assert_eq!(config.public_keys, vec![key(NODE1_KEY), key(NODE2_KEY)]);
    assert!(
        config
            .public_keys
            .iter()
            .all(crate::demo_keys::is_demo_tessera_key)
    );
}

#[test]
fn missing_sections_give_empty_results() {
    assert_eq!(
        parse_tessera_config("{}").expect("valid"),
        TesseraConfig {
            p2p_url: None,
            peers: vec![],
            public_keys: vec![],
        }
    );
    // Pre-0.9 style (`server` object, no `serverConfigs`): no P2P address is found.
    let legacy = r#"{"server": {"port": 9001, "hostName": "http://localhost"},
                     "peer": [{"url": "http://localhost:9002"}], "keys": null}"#;
    let config = parse_tessera_config(legacy).expect("valid");
    assert_eq!(config.p2p_url, None);
    assert_eq!(config.peers, vec!["http://localhost:9002".to_owned()]);
}

#[test]
fn tessera_key_text() {
    let k = key(NODE1_KEY);
    assert_eq!(k.to_string(), NODE1_KEY);
    assert_eq!(k.as_bytes()[..3], [0x05, 0x42, 0xde]);
    assert_eq!(TesseraKey::from_bytes(*k.as_bytes()), k);
    assert_eq!(format!("{k:?}"), format!("TesseraKey({NODE1_KEY})"));

    let cases = [
        // Unpadded, url-safe alphabet, non-canonical trailing bits, too short, too long.
        (&NODE1_KEY[..43], TesseraKeyError::Encoding),
        (
            "BULeR8JyUWhiuuCMU_HLA0Q5pzkYT-cHII3ZKBey3Bo=",
            TesseraKeyError::Encoding,
        ),
        (
            "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bp=",
            TesseraKeyError::Encoding,
        ),
        ("", TesseraKeyError::Encoding),
        (
            "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3BoA",
            TesseraKeyError::Length,
        ),
        (
            "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3A==",
            TesseraKeyError::Length,
        ),
        (
            " BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bo",
            TesseraKeyError::Encoding,
        ),
        ("%THIS_PUB_KEY%", TesseraKeyError::Encoding),
    ];
    for (text, want) in cases {
        assert_eq!(text.parse::<TesseraKey>(), Err(want), "{text:?}");
    }
}

#[test]
fn broken_configs_give_typed_errors() {
    assert!(matches!(
        parse_tessera_config("{"),
        Err(TesseraError::InvalidJson(_))
    ));
    assert!(matches!(
        parse_tessera_config(""),
        Err(TesseraError::InvalidJson(_))
    ));
    assert!(matches!(
        parse_tessera_config("{} {}"),
        Err(TesseraError::InvalidJson(_))
    ));
    for not_object in ["[]", "\"serverConfigs\"", "null", "42"] {
        assert!(
            matches!(
                parse_tessera_config(not_object),
                Err(TesseraError::NotAnObject)
            ),
            "{not_object}"
        );
    }
    let wrong_types = [
        (r#"{"serverConfigs": {}}"#, "serverConfigs"),
        (r#"{"serverConfigs": [1]}"#, "serverConfigs[]"),
        (r#"{"serverConfigs": [{"app": 1}]}"#, "serverConfigs[].app"),
        (
            r#"{"serverConfigs": [{"app": "P2P", "enabled": "yes"}]}"#,
            "serverConfigs[].enabled",
        ),
        (
            r#"{"serverConfigs": [{"app": "P2P", "serverAddress": 9001}]}"#,
            "serverConfigs[].serverAddress",
        ),
        (r#"{"peer": {"url": "http://a:1"}}"#, "peer"),
        (r#"{"keys": []}"#, "keys"),
        (r#"{"keys": {"keyData": {}}}"#, "keys.keyData"),
        (r#"{"keys": {"keyData": ["k"]}}"#, "keys.keyData[]"),
        (
            r#"{"keys": {"keyData": [{"publicKey": 1}]}}"#,
            "keys.keyData[].publicKey",
        ),
    ];
    for (json, field) in wrong_types {
        match parse_tessera_config(json) {
            Err(TesseraError::WrongType(f)) => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: unexpected {other:?}"),
        }
    }
    let two_p2p = r#"{"serverConfigs": [{"app": "P2P", "serverAddress": "http://a:1"},
                                        {"app": "P2P", "serverAddress": "http://b:1"}]}"#;
    assert!(matches!(
        parse_tessera_config(two_p2p),
        Err(TesseraError::DuplicateP2p)
    ));
    let bad_peer = r#"{"peer": [{"url": "http://a:1"}, {"uri": "http://b:1"}]}"#;
    assert!(matches!(
        parse_tessera_config(bad_peer),
        Err(TesseraError::BadPeer { index: 1 })
    ));
    let bad_key = format!(
        r#"{{"keys": {{"keyData": [{{"publicKey": "{NODE1_KEY}"}}, {{"publicKeyPath": "/p"}},
                                  {{"publicKey": "%THIS_PUB_KEY%"}}]}}}}"#
    );
    match parse_tessera_config(&bad_key) {
        Err(err @ TesseraError::BadKey { index: 2, source }) => {
            assert_eq!(source, TesseraKeyError::Encoding);
            assert_eq!(
                err.to_string(),
                "tessera config key 2 has an invalid publicKey"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(r#"{{"x": {}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        parse_tessera_config(&deep),
        Err(TesseraError::InvalidJson(_))
    ));
}
