use super::*;

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn healthy_replicas_take_turns() {
    let mut r = Replicas::default();
    let h = hosts(&["a", "b", "c"]);
    let firsts: Vec<String> = (0..6).map(|_| r.order("tm", &h).0[0].clone()).collect();
    assert_eq!(firsts, hosts(&["a", "b", "c", "a", "b", "c"]));
    // every order lists every replica once
    let (order, _) = r.order("tm", &h);
    assert_eq!(order, hosts(&["a", "b", "c"]));
}

#[test]
fn a_node_with_one_host_is_not_tracked() {
    let mut r = Replicas::default();
    let (order, changed) = r.order("n", &hosts(&["a"]));
    assert_eq!(order, hosts(&["a"]));
    assert!(changed.is_empty());
    assert!(!r.failed("n", "a", Check::Tcp(1), Instant::now()));
    assert!(r.is_up("n", "a"));
    assert_eq!(r.next_due(), None);
}

#[tokio::test(start_paused = true)]
async fn a_failed_replica_gets_no_new_connection_until_it_answers() {
    let mut r = Replicas::default();
    let h = hosts(&["a", "b"]);
    let (_, changed) = r.order("tm", &h);
    assert_eq!(
        changed,
        vec![("a".to_owned(), true), ("b".to_owned(), true)]
    );
    let t0 = Instant::now();
    assert!(r.failed("tm", "a", Check::Upcheck(9000), t0));
    assert!(
        !r.failed("tm", "a", Check::Upcheck(9000), t0),
        "already down"
    );
    // the down one comes last, every time: no new connection goes to it first
    for _ in 0..4 {
        assert_eq!(r.order("tm", &h).0, hosts(&["b", "a"]));
    }
    // its check falls due a second later, then every second
    assert_eq!(r.next_due(), Some(t0 + CHECK_INTERVAL));
    assert!(r.due(t0).is_empty());
    tokio::time::advance(CHECK_INTERVAL).await;
    let now = Instant::now();
    assert_eq!(
        r.due(now),
        vec![Probe {
            node: "tm".into(),
            host: "a".into(),
            check: Check::Upcheck(9000)
        }]
    );
    assert!(r.due(now).is_empty(), "not again within the second");
    assert_eq!(r.next_due(), Some(now + CHECK_INTERVAL));
    // it answers: up, and back in turn
    assert!(r.answered("tm", "a"));
    assert!(!r.answered("tm", "a"));
    assert_eq!(r.next_due(), None);
    let firsts: Vec<String> = (0..2).map(|_| r.order("tm", &h).0[0].clone()).collect();
    assert!(firsts.contains(&"a".to_owned()) && firsts.contains(&"b".to_owned()));
}

#[test]
fn every_replica_down_still_dials_them_all() {
    let mut r = Replicas::default();
    let h = hosts(&["a", "b"]);
    r.order("tm", &h);
    let now = Instant::now();
    r.failed("tm", "a", Check::Tcp(1), now);
    r.failed("tm", "b", Check::Tcp(1), now);
    let (order, _) = r.order("tm", &h);
    assert_eq!(order.len(), 2);
    assert_eq!(r.due(now + CHECK_INTERVAL).len(), 2);
}

#[test]
fn a_changed_host_list_forgets_removed_hosts() {
    let mut r = Replicas::default();
    r.order("tm", &hosts(&["a", "b"]));
    let now = Instant::now();
    r.failed("tm", "a", Check::Tcp(1), now);
    let (order, changed) = r.order("tm", &hosts(&["b", "c"]));
    assert_eq!(changed, vec![("c".to_owned(), true)]);
    assert_eq!(order.len(), 2);
    assert_eq!(r.next_due(), None, "a is gone, not checked");
    assert!(
        !r.failed("tm", "a", Check::Tcp(1), now),
        "a is no longer tracked"
    );
    r.failed("tm", "c", Check::Tcp(1), now);
    r.retain(|n| n != "tm");
    assert_eq!(r.next_due(), None);
    assert!(r.is_up("tm", "c"));
}

#[test]
fn upcheck_wants_200_and_the_tessera_answer() {
    assert!(upcheck_ok(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nI'm up!"
    ));
    assert!(!upcheck_ok(
        b"HTTP/1.1 503 Service Unavailable\r\n\r\nI'm up!"
    ));
    assert!(!upcheck_ok(b"HTTP/1.1 200 OK\r\n\r\nsomething else"));
    assert!(!upcheck_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"));
    assert!(!upcheck_ok(b"SSH-2.0-OpenSSH\r\n\r\nI'm up!"));
    assert!(!upcheck_ok(b""));
}

#[tokio::test]
async fn a_down_replica_comes_back_when_its_port_answers() {
    let metrics = Metrics::new();
    let health = ReplicaHealth::new(metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let h = hosts(&["127.0.0.1", "localhost-replica.invalid"]);
    health.order("tm", &h);
    health.failed("tm", "127.0.0.1", Check::Tcp(port));
    assert_eq!(
        health.status("tm", &h),
        vec![
            ("127.0.0.1".to_owned(), false),
            ("localhost-replica.invalid".to_owned(), true)
        ]
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        health
            .clone()
            .run_checks(Arc::new(|_| true), shutdown.clone()),
    );
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        while !health.status("tm", &h)[0].1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the replica did not come back within 10 s");
    shutdown.cancel();
    task.await.expect("check task");
}

#[tokio::test(start_paused = true)]
async fn a_stream_tries_the_next_replica_within_its_connect_time_out() {
    let health = ReplicaHealth::new(Metrics::new());
    let h = hosts(&["a", "b"]);
    let timeout = Duration::from_secs(5);
    // a refuses at once: the same stream gets b, and a is down
    let got = health
        .dial("tm", &h, Check::Tcp(1), timeout, |host| async move {
            if host == "a" {
                Err(Answer::Unreachable)
            } else {
                Ok(host)
            }
        })
        .await;
    assert_eq!(got, Ok("b".to_owned()));
    assert_eq!(
        health.status("tm", &h),
        vec![("a".to_owned(), false), ("b".to_owned(), true)]
    );
    // the next streams go to b first
    for _ in 0..3 {
        let first = Arc::new(Mutex::new(None));
        let seen = first.clone();
        let got = health
            .dial("tm", &h, Check::Tcp(1), timeout, move |host| {
                seen.lock().expect("lock").get_or_insert(host.clone());
                async move { Ok::<_, Answer>(host) }
            })
            .await;
        assert_eq!(got, Ok("b".to_owned()));
        assert_eq!(first.lock().expect("lock").as_deref(), Some("b"));
    }
    // a replica that hangs uses up its share of the time-out only; the next still answers,
    // all within the stream's connect time-out
    health.answered("tm", "a");
    let started = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let got = health
        .dial("tm", &h, Check::Tcp(1), timeout, move |host| {
            let first = {
                let mut calls = seen.lock().expect("lock");
                calls.push(host.clone());
                calls.len() == 1
            };
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Answer>(host)
            }
        })
        .await;
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(got, Ok(calls[1].clone()));
    assert!(started.elapsed() <= timeout, "{:?}", started.elapsed());
    assert!(
        started.elapsed() >= timeout / 2,
        "the first had half: {:?}",
        started.elapsed()
    );
    let hung = calls[0].clone();
    assert_eq!(
        health.status("tm", std::slice::from_ref(&hung)),
        vec![(hung, false)],
        "the replica that timed out is down"
    );
    // every replica failing: the stream is refused as unreachable
    let got = health
        .dial("tm", &h, Check::Tcp(1), timeout, |_| async {
            Err::<String, _>(Answer::Unreachable)
        })
        .await;
    assert_eq!(got, Err(Answer::Unreachable));
    // a node with one address is dialled as before, untracked
    let one = hosts(&["solo"]);
    let got = health
        .dial("n", &one, Check::Tcp(1), timeout, |_| async {
            Err::<String, _>(Answer::Unreachable)
        })
        .await;
    assert_eq!(got, Err(Answer::Unreachable));
    assert_eq!(health.status("n", &one), vec![("solo".to_owned(), true)]);
}
