use std::time::{Duration, SystemTime};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn healthy() -> Gathered {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    Gathered {
        now,
        leaf_lifetime: DAY,
        running: Ok(()),
        certs: vec![
            CertExpiry {
                name: "gateway leaf".into(),
                ca: false,
                not_after: Ok(now + DAY / 2),
            },
            CertExpiry {
                name: "org CA".into(),
                ca: true,
                not_after: Ok(now + 365 * DAY),
            },
        ],
        clocks: vec![PeerClock {
            peer: "org2/dc1".into(),
            offset: Ok(Some((120, 3))),
        }],
        dns: Some(DnsProbe {
            addr: "127.0.0.1:53".into(),
            name: "node1.org2.acme.test.".into(),
            answers: Ok(1),
        }),
        peers: vec![PeerLink {
            peer: "org2/dc1".into(),
            state: "connected".into(),
            last_error: String::new(),
            transport: Some("quic".into()),
            quic_failed: false,
        }],
        listeners: Some((3, false)),
        pool: Some(PoolUse {
            used: 3,
            size: 65_534,
        }),
        render_outputs: vec![],
        store: StoreHealth {
            file_bytes: Some(1 << 20),
            tables: Ok(vec![("records".into(), 4)]),
        },
    }
}

fn level_of(checks: &[Check], name: &str) -> Level {
    checks
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.level)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[test]
fn a_healthy_gateway_passes_every_check_and_skips_rendered_files() {
    let checks = checks(&healthy());
    assert_eq!(worst(&checks), Level::Ok, "{checks:#?}");
    assert_eq!(level_of(&checks, "rendered files"), Level::Skip);
    assert!(
        checks
            .iter()
            .filter(|c| c.level == Level::Ok)
            .all(|c| c.fix.is_empty())
    );
}

#[test]
fn clock_skew_warns_past_two_seconds_and_fails_past_a_minute() {
    for (offset, level) in [
        (1_900, Level::Ok),
        (-2_500, Level::Warn),
        (61_000, Level::Fail),
        (-61_000, Level::Fail),
    ] {
        let mut g = healthy();
        g.clocks[0].offset = Ok(Some((offset, 4)));
        let c = checks(&g);
        assert_eq!(level_of(&c, "clock org2/dc1"), level, "offset {offset}");
    }
    let mut g = healthy();
    g.clocks[0].offset = Ok(None);
    assert_eq!(level_of(&checks(&g), "clock org2/dc1"), Level::Skip);
}

#[test]
fn certificates_fail_when_expired_and_warn_before() {
    let mut g = healthy();
    // a leaf with less than a quarter of its lifetime left: its renewal is failing
    g.certs[0].not_after = Ok(g.now + DAY / 5);
    // a CA within 30 days
    g.certs[1].not_after = Ok(g.now + 10 * DAY);
    let c = checks(&g);
    assert_eq!(level_of(&c, "certificate gateway leaf"), Level::Warn);
    assert_eq!(level_of(&c, "certificate org CA"), Level::Warn);
    g.certs[1].not_after = Ok(g.now - Duration::from_secs(1));
    g.certs[0].not_after = Err("no such file".into());
    let c = checks(&g);
    assert_eq!(level_of(&c, "certificate org CA"), Level::Fail);
    assert_eq!(level_of(&c, "certificate gateway leaf"), Level::Fail);
    assert_eq!(worst(&c), Level::Fail);
    assert!(
        c.iter()
            .filter(|c| c.level == Level::Fail)
            .all(|c| !c.fix.is_empty())
    );
}

#[test]
fn a_tcp_link_after_quic_failed_says_udp_is_blocked() {
    let mut g = healthy();
    g.peers[0].transport = Some("tcp".into());
    g.peers[0].quic_failed = true;
    let c = checks(&g);
    let t = c
        .iter()
        .find(|c| c.name == "tunnel org2/dc1")
        .expect("tunnel");
    assert_eq!(t.level, Level::Warn);
    assert!(t.detail.contains("UDP"), "{t:?}");
    g.peers[0].quic_failed = false;
    assert_eq!(level_of(&checks(&g), "tunnel org2/dc1"), Level::Ok);
}

#[test]
fn an_unreachable_or_revoking_peer_fails() {
    let mut g = healthy();
    g.peers[0].state = "backoff".into();
    g.peers[0].last_error = "connection refused".into();
    g.peers[0].transport = None;
    let c = checks(&g);
    assert_eq!(level_of(&c, "sync org2/dc1"), Level::Fail);
    assert_eq!(level_of(&c, "tunnel org2/dc1"), Level::Fail);
    g.peers[0].state = "revoked".into();
    assert_eq!(level_of(&checks(&g), "sync org2/dc1"), Level::Fail);
}

#[test]
fn dns_listeners_pool_and_store_failures_fail() {
    let mut g = healthy();
    g.dns.as_mut().expect("dns").answers = Err("timed out after 2s".into());
    g.listeners = Some((2, true));
    g.pool = Some(PoolUse {
        used: 254,
        size: 254,
    });
    g.store.tables = Err("store is damaged".into());
    let c = checks(&g);
    for name in ["dns", "listeners", "address pool", "store"] {
        assert_eq!(level_of(&c, name), Level::Fail, "{name}");
    }
    g.pool = Some(PoolUse {
        used: 230,
        size: 254,
    });
    assert_eq!(level_of(&checks(&g), "address pool"), Level::Warn);
}

#[test]
fn a_stopped_gateway_fails_and_skips_what_needs_it() {
    let mut g = healthy();
    g.running = Err("no such file".into());
    g.dns = None;
    g.listeners = None;
    g.pool = None;
    g.peers.clear();
    g.clocks.clear();
    let c = checks(&g);
    assert_eq!(level_of(&c, "gateway"), Level::Fail);
    for name in ["dns", "listeners", "address pool", "clock"] {
        assert_eq!(level_of(&c, name), Level::Skip, "{name}");
    }
    assert_eq!(level_of(&c, "store"), Level::Ok);
}

#[test]
fn rendered_files_are_ok_when_current_and_warn_with_the_fix_otherwise() {
    let mut g = healthy();
    let file = |state| RenderedFile {
        kind: "static-nodes".into(),
        path: "/etc/quorum/static-nodes.json".into(),
        state,
    };
    g.render_outputs = vec![file(RenderState::Current)];
    let name = "rendered /etc/quorum/static-nodes.json";
    assert_eq!(level_of(&checks(&g), name), Level::Ok);
    for state in [
        RenderState::Stale,
        RenderState::Missing,
        RenderState::Unknown("the gateway does not answer".into()),
    ] {
        g.render_outputs = vec![file(state.clone())];
        let all = checks(&g);
        assert_eq!(level_of(&all, name), Level::Warn, "{state:?}");
        assert_eq!(worst(&all), Level::Warn, "a stale file fails nothing");
        let c = all.iter().find(|c| c.name == name).expect("check");
        assert!(!c.fix.is_empty(), "{c:?}");
    }
}
