use axum::http::HeaderMap;

use super::*;

#[test]
fn a_token_is_taken_from_the_header_or_the_query_and_compared_whole() {
    let token = "0123456789abcdef0123";
    let mut h = HeaderMap::new();
    assert!(!has_token(&h, None, token));
    assert!(has_token(
        &h,
        Some("org=a&token=0123456789abcdef0123"),
        token
    ));
    assert!(!has_token(&h, Some("token=0123456789abcdef012"), token));
    h.insert(
        header::AUTHORIZATION,
        "Bearer 0123456789abcdef0123".parse().expect("header"),
    );
    assert!(has_token(&h, None, token));
    h.insert(
        header::AUTHORIZATION,
        "Basic 0123456789abcdef0123".parse().expect("header"),
    );
    assert!(!has_token(&h, None, token));
}

#[test]
fn token_files_must_hold_one_reasonable_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
        PathBuf::from(name)
    };
    let good = write("good", "  0123456789abcdef0123\n");
    assert_eq!(
        read_token(dir.path(), &good).expect("good token"),
        "0123456789abcdef0123"
    );
    for (name, text) in [
        ("short", "abc"),
        ("space", "0123456789 abcdef0123"),
        ("empty", ""),
    ] {
        let p = write(name, text);
        assert!(
            matches!(read_token(dir.path(), &p), Err(ConsoleError::BadToken(_))),
            "{name}"
        );
    }
    assert!(matches!(
        read_token(dir.path(), Path::new("missing")),
        Err(ConsoleError::TokenFile { .. })
    ));
}

#[test]
fn only_loopback_is_open_and_other_addresses_need_a_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = access_for(
        "127.0.0.1:9100".parse().expect("addr"),
        &ConsoleConfig::default(),
        dir.path(),
    );
    assert!(matches!(open, Ok(Access::Open)));
    let unguarded = access_for(
        "0.0.0.0:9100".parse().expect("addr"),
        &ConsoleConfig::default(),
        dir.path(),
    );
    assert!(matches!(unguarded, Err(ConsoleError::Unguarded(_))));
    let certs = access_for(
        "[::]:9100".parse().expect("addr"),
        &ConsoleConfig {
            client_cert: true,
            ..Default::default()
        },
        dir.path(),
    );
    assert!(matches!(certs, Ok(Access::Guarded { token: None })));
}

#[test]
fn the_audit_filter_drops_empty_and_oversized_values() {
    let f = Filter {
        org: Some("  org2 ".into()),
        kind: Some(String::new()),
    }
    .cleaned();
    assert_eq!(f.org.as_deref(), Some("org2"));
    assert_eq!(f.kind, None);
    let long = Filter {
        org: Some("x".repeat(65)),
        kind: None,
    }
    .cleaned();
    assert_eq!(long.org, None);
}
