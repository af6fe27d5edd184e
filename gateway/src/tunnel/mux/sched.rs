//! Which stream of a yamux session writes its next data frame while the link is busy.
//!
//! Streams write their own frames into the session's TLS connection (see [`super`]); while
//! the bytes queued for the socket stay under the session's limit a writer goes at once. Once
//! the queue is full, writers wait here, each under its stream's [`Class`], and as the socket
//! takes the queue the session hands out **turns**: one frame each, to the highest class
//! with a waiting stream, round-robin within a class. A stream that wants more after its turn
//! goes to the back of its class. A newly writing stream goes at once only if nothing of its
//! class or above waits or holds a turn (a consensus write passes waiting bulk writers, never
//! another consensus writer).
//!
//! Strict priority alone could leave a lower class waiting for ever behind a busy higher one:
//! once [`AGING`] frames of higher classes have gone while a class waited, that class has the
//! next turn. So a waiting stream has its turn within `AGING × classes + streams of its
//! class` frames.
//!
//! Pure state: no sockets, no wakers (the session wakes the streams [`Scheduler::next`]
//! returns).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::tunnel::class::{CLASSES, Class};

/// Frames of higher classes after which a waiting class has the next turn.
pub const AGING: u32 = 8;

/// The waiting streams and the turns handed out.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Streams waiting for a turn, per class, in order of arrival.
    waiting: [VecDeque<u32>; CLASSES],
    /// The streams in `waiting`, so a poll of a waiting stream and a stream's end cost no
    /// search of the queues.
    queued: HashSet<u32>,
    /// Frames of higher classes sent while each class had a stream waiting.
    passed: [u32; CLASSES],
    /// Streams given a turn (woken) that have not written yet, with their class and when.
    turns: Vec<(u32, Class, Instant)>,
}

impl Scheduler {
    /// Whether stream `id` of `class` may write a frame now, the queue's room aside: it holds
    /// a turn, or nothing waits or holds a turn in its class or above and no lower class is
    /// due by [`AGING`].
    pub fn may_write(&self, id: u32, class: Class) -> bool {
        if self.has_turn(id) {
            return true;
        }
        let c = class.index();
        let ahead = self.waiting[..=c].iter().any(|q| !q.is_empty())
            || self.turns.iter().any(|&(_, k, _)| k <= class);
        let due = (c + 1..CLASSES).any(|l| self.due(l));
        !ahead && !due
    }

    /// Whether stream `id` holds a turn.
    pub fn has_turn(&self, id: u32) -> bool {
        self.turns.iter().any(|&(t, _, _)| t == id)
    }

    /// Whether anything waits or holds a turn: frames are then kept small.
    pub fn contended(&self) -> bool {
        !self.turns.is_empty() || self.waiting.iter().any(|q| !q.is_empty())
    }

    /// Turns handed out and not yet used.
    pub fn turns(&self) -> usize {
        self.turns.len()
    }

    /// Whether some stream waits for a turn.
    pub fn has_waiting(&self) -> bool {
        self.waiting.iter().any(|q| !q.is_empty())
    }

    /// Stream `id` of `class` could not write: it waits for a turn (once, however often it is
    /// polled). A stream holding a turn keeps it.
    pub fn wait(&mut self, id: u32, class: Class) {
        if self.has_turn(id) || !self.queued.insert(id) {
            return;
        }
        self.waiting[class.index()].push_back(id);
    }

    /// Stream `id` of `class` wrote a frame: its turn (if any) is used, and lower classes that
    /// wait count one more frame passed.
    pub fn wrote(&mut self, id: u32, class: Class) {
        self.turns.retain(|&(t, _, _)| t != id);
        let c = class.index();
        self.passed[c] = 0;
        for l in c + 1..CLASSES {
            if !self.waiting[l].is_empty() {
                self.passed[l] = self.passed[l].saturating_add(1);
            }
        }
    }

    /// Stream `id` no longer writes (gone, reset, or waiting for flow-control window rather
    /// than the queue): out of the queue, its turn handed back.
    pub fn remove(&mut self, id: u32) {
        self.turns.retain(|&(t, _, _)| t != id);
        if self.queued.remove(&id) {
            for q in &mut self.waiting {
                q.retain(|&w| w != id);
            }
        }
    }

    /// Hands the next turn out: the stream to wake, or `None` when nothing waits. A lower
    /// class that is due by [`AGING`] goes first (the lowest of them), otherwise the highest
    /// class that waits.
    pub fn next(&mut self, now: Instant) -> Option<u32> {
        let class = (0..CLASSES)
            .rev()
            .find(|&l| self.due(l))
            .or_else(|| (0..CLASSES).find(|&c| !self.waiting[c].is_empty()))?;
        let id = self.waiting[class].pop_front()?;
        self.queued.remove(&id);
        if self.waiting[class].is_empty() {
            self.passed[class] = 0;
        }
        self.turns.push((id, Class::ALL[class], now));
        Some(id)
    }

    /// Takes back turns handed out `timeout` or longer before `now` and not used: their
    /// writers stopped writing without saying so. Returns how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> usize {
        let before = self.turns.len();
        self.turns
            .retain(|&(_, _, at)| now.saturating_duration_since(at) < timeout);
        before - self.turns.len()
    }

    /// Whether class `l` waits and has seen [`AGING`] frames of higher classes go meanwhile.
    fn due(&self, l: usize) -> bool {
        !self.waiting[l].is_empty() && self.passed[l] >= AGING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one turn and lets that stream write (and want more): the order of service.
    fn serve(s: &mut Scheduler, classes: &[(u32, Class)], frames: usize) -> Vec<u32> {
        let class = |id| classes.iter().find(|(i, _)| *i == id).expect("known").1;
        let mut order = Vec::new();
        for _ in 0..frames {
            let Some(id) = s.next(Instant::now()) else {
                break;
            };
            assert!(s.may_write(id, class(id)), "a stream with a turn writes");
            s.wrote(id, class(id));
            order.push(id);
            // still has data: back of the queue
            s.wait(id, class(id));
        }
        order
    }

    #[test]
    fn a_new_writer_goes_at_once_only_with_nothing_ahead_of_it() {
        let mut s = Scheduler::default();
        assert!(s.may_write(1, Class::Bulk));
        assert!(!s.contended());
        s.wait(1, Class::Bulk);
        assert!(s.contended());
        // a second bulk stream queues behind the first; consensus and interactive pass it
        assert!(!s.may_write(3, Class::Bulk));
        assert!(s.may_write(5, Class::Consensus));
        assert!(s.may_write(7, Class::Interactive));
        s.wait(5, Class::Consensus);
        assert!(
            !s.may_write(9, Class::Consensus),
            "no passing within a class"
        );
        assert_eq!(s.next(Instant::now()), Some(5), "the highest class first");
        assert!(s.may_write(5, Class::Consensus));
        assert!(
            !s.may_write(9, Class::Consensus),
            "a turn handed out is ahead too"
        );
        s.wrote(5, Class::Consensus);
        assert!(s.may_write(9, Class::Consensus));
        assert_eq!(s.next(Instant::now()), Some(1));
        assert_eq!(s.turns(), 1);
        s.remove(1);
        assert!(!s.contended());
        assert_eq!(s.next(Instant::now()), None);
    }

    #[test]
    fn streams_of_a_class_take_turns_and_waiting_twice_keeps_one_place() {
        let mut s = Scheduler::default();
        let streams = [(1, Class::Bulk), (3, Class::Bulk), (5, Class::Bulk)];
        for (id, c) in streams {
            s.wait(id, c);
            s.wait(id, c);
        }
        assert_eq!(serve(&mut s, &streams, 7), vec![1, 3, 5, 1, 3, 5, 1]);
    }

    #[test]
    fn a_busy_higher_class_leaves_a_lower_one_a_turn_within_the_aging_bound() {
        let mut s = Scheduler::default();
        let streams = [
            (1, Class::Consensus),
            (3, Class::Interactive),
            (5, Class::Bulk),
        ];
        for (id, c) in streams {
            s.wait(id, c);
        }
        let order = serve(&mut s, &streams, 60);
        // every stream is served, and none waits more than the bound between its turns
        let bound = AGING as usize * CLASSES + 1;
        for (id, _) in streams {
            let at: Vec<usize> = order
                .iter()
                .enumerate()
                .filter(|&(_, &o)| o == id)
                .map(|(i, _)| i)
                .collect();
            assert!(!at.is_empty(), "stream {id} never served: {order:?}");
            assert!(at[0] <= bound, "stream {id} first served at {}", at[0]);
            for w in at.windows(2) {
                assert!(w[1] - w[0] <= bound, "stream {id} waited {}", w[1] - w[0]);
            }
        }
        // and the consensus stream had most of the turns
        let consensus = order.iter().filter(|&&o| o == 1).count();
        assert!(consensus >= order.len() * 3 / 4, "{order:?}");
        // a due lower class also holds back a new higher-class writer
        let mut s = Scheduler::default();
        s.wait(5, Class::Bulk);
        for _ in 0..AGING {
            assert!(s.may_write(1, Class::Consensus));
            s.wrote(1, Class::Consensus);
        }
        assert!(!s.may_write(1, Class::Consensus), "bulk is due");
        assert_eq!(s.next(Instant::now()), Some(5));
        s.wrote(5, Class::Bulk);
        assert!(s.may_write(1, Class::Consensus));
    }

    #[test]
    fn an_unused_turn_expires() {
        let mut s = Scheduler::default();
        let t0 = Instant::now();
        s.wait(1, Class::Bulk);
        s.wait(3, Class::Bulk);
        assert_eq!(s.next(t0), Some(1));
        assert!(!s.may_write(5, Class::Bulk));
        assert_eq!(
            s.expire(t0 + Duration::from_millis(999), Duration::from_secs(1)),
            0
        );
        assert_eq!(
            s.expire(t0 + Duration::from_secs(1), Duration::from_secs(1)),
            1
        );
        assert!(!s.has_turn(1));
        assert_eq!(s.next(t0), Some(3));
    }

    #[test]
    fn a_removed_stream_gives_its_place_and_turn_back() {
        let mut s = Scheduler::default();
        s.wait(1, Class::Bulk);
        s.wait(3, Class::Bulk);
        assert_eq!(s.next(Instant::now()), Some(1));
        s.remove(1);
        assert!(!s.has_turn(1));
        s.remove(3);
        assert!(!s.has_waiting());
        assert!(s.may_write(7, Class::Bulk));
    }
}
