//! The keeper's schedule on paused time: backoff after failed dials, redial after a closed
//! link, a new link when the old one retires (link ageing), and stopping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;
use crate::tunnel::BACKOFF;

/// A link that closes when its token is cancelled and retires at `retire_at`.
#[derive(Clone)]
struct FakeLink {
    closed: CancellationToken,
    retire_at: Instant,
}

impl Kept for FakeLink {
    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.closed.clone().cancelled_owned()
    }
    fn retire_at(&self) -> Instant {
        self.retire_at
    }
}

/// What a scripted dial does.
enum Dial {
    /// Fails.
    Fail,
    /// Returns a link that closes after the first duration and retires after the second.
    Link(Duration, Duration),
}

/// Runs a keeper whose dials follow `script` (then fail), for `simulated` of paused time; the
/// times of its dials, from the start.
async fn dials(script: Vec<Dial>, simulated: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let (log, links) = (seen.clone(), script.clone());
    let keeper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            keep(
                move || {
                    log.lock().expect("dials").push(start.elapsed());
                    let next = links.lock().expect("script").pop_front();
                    async move {
                        match next {
                            Some(Dial::Link(closes, retires)) => {
                                let closed = CancellationToken::new();
                                let close = closed.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(closes).await;
                                    close.cancel();
                                });
                                Ok(FakeLink {
                                    closed,
                                    retire_at: Instant::now() + retires,
                                })
                            }
                            Some(Dial::Fail) | None => Err("refused"),
                        }
                    }
                },
                || false,
                &stop,
                BACKOFF,
                |_: &&str| {},
                |_: &FakeLink| std::future::pending::<()>(),
            )
            .await;
        })
    };
    tokio::time::sleep(simulated).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), keeper)
        .await
        .expect("the keeper stops")
        .expect("keeper task");
    seen.lock().expect("dials").clone()
}

/// Asserts `gap` is `delay` ±25 %.
fn jittered(gap: Duration, delay: Duration) {
    assert!(
        gap >= delay.mul_f64(0.75) && gap <= delay.mul_f64(1.25),
        "waited {gap:?}, not {delay:?} ±25 %"
    );
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn failed_dials_back_off_doubling_up_to_the_cap() {
    let at = dials(vec![], Duration::from_secs(60)).await;
    assert_eq!(at[0], Duration::ZERO);
    // the first failure already doubles the first delay: 200 ms, 400 ms, ... 10 s
    let mut delay = BACKOFF.0;
    for pair in at.windows(2) {
        delay = (delay * 2).min(BACKOFF.1);
        jittered(pair[1] - pair[0], delay);
    }
    // 0.2 + 0.4 + ... + 6.4 s = 12.6 s, then every 10 s ± 25 %: 12 to 13 dials in a minute
    assert!((11..=14).contains(&at.len()), "{} dials: {at:?}", at.len());
}

#[tokio::test(start_paused = true)]
async fn a_closed_link_is_redialled_after_the_first_delay() {
    let at = dials(
        vec![
            Dial::Fail,
            Dial::Fail,
            Dial::Link(Duration::from_secs(30), HOUR),
            Dial::Link(HOUR, HOUR),
        ],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(at.len(), 4, "{at:?}");
    jittered(at[1] - at[0], BACKOFF.0 * 2);
    jittered(at[2] - at[1], BACKOFF.0 * 4);
    // the link lived 30 s; a success resets the backoff
    jittered(at[3] - at[2] - Duration::from_secs(30), BACKOFF.0);
}

#[tokio::test(start_paused = true)]
async fn a_retired_link_is_replaced_at_once_and_left_open() {
    // links age out after 20 s: a new one is dialled at each retirement, with no backoff
    let at = dials(
        (0..4)
            .map(|_| Dial::Link(HOUR, Duration::from_secs(20)))
            .collect(),
        Duration::from_secs(70),
    )
    .await;
    let secs: Vec<u64> = at.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [0, 20, 40, 60]);
    assert!(at.iter().all(|t| t.subsec_nanos() == 0), "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_revoked_peer_is_not_dialled() {
    let stop = CancellationToken::new();
    let dialled = Arc::new(Mutex::new(0));
    let count = dialled.clone();
    tokio::time::timeout(
        Duration::from_secs(1),
        keep(
            move || {
                *count.lock().expect("count") += 1;
                async { Err::<FakeLink, _>("refused") }
            },
            || true,
            &stop,
            BACKOFF,
            |_: &&str| {},
            |_: &FakeLink| std::future::pending::<()>(),
        ),
    )
    .await
    .expect("the keeper returns at once");
    assert_eq!(*dialled.lock().expect("count"), 0);
}
