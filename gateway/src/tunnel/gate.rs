//! Per-branch wake-ups for futures that share one task.
//!
//! A proxied connection's task runs three futures side by side: the TCP → tunnel pump, the
//! tunnel → TCP pump and the stop signal (revocation, removal of the node, shutdown). With
//! `tokio::select!` every wake-up of the task polls all three, whichever of them was woken:
//! a byte from the client also polls the QUIC stream (a lock of the connection's state and a
//! map insert of the waker) and three cancellation tokens (a mutex each). [`Gated`] gives each
//! future a waker of its own and polls the future only once that waker has fired, as
//! `FuturesUnordered` does for its members.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The wake-up flag of one [`Gated`] future, and the task to wake on its behalf.
#[derive(Debug)]
struct Gate {
    /// The inner future's waker fired since it was last polled.
    woken: AtomicBool,
    /// The waker of the task that polls the [`Gated`] future.
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `F` polled only on its first poll and after its own waker fired: polling a [`Gated`]
/// future whose inner future was not woken costs one waker registration and returns
/// `Pending`. The inner future must keep the contract of [`Future::poll`] (a `Pending` result
/// arranges a wake-up), which every tokio, quinn and fedgw future does.
///
/// One allocation of 48 bytes per gated future.
#[derive(Debug)]
pub struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    waker: Waker,
}

impl<F> Gated<F> {
    /// Wraps `inner`; its first poll goes through.
    pub fn new(inner: F) -> Gated<F> {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(gate.clone());
        Gated { inner, gate, waker }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // registered before the flag is taken: a wake-up between the two polls again
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, woken through the waker it kept.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Counts the wake-ups of the task polling the gated future.
    struct TaskWakes(AtomicUsize);
    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_waker_fired() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let kept = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut gated = Gated::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: kept.clone(),
        });
        let wakes = Arc::new(TaskWakes(AtomicUsize::new(0)));
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);

        // the first poll goes through
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // the task woken for something else: the inner future is left alone
        for _ in 0..3 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        // the inner future's waker fires: the task is woken and the next poll goes through
        ready.store(true, Ordering::SeqCst);
        let inner_waker = kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        inner_waker.expect("the probe kept its waker").wake();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_select_over_gated_futures_sees_each_one_complete() {
        let (tx_a, rx_a) = tokio::sync::oneshot::channel::<u8>();
        let (tx_b, rx_b) = tokio::sync::oneshot::channel::<u8>();
        let mut a = Gated::new(rx_a);
        let mut b = Gated::new(rx_b);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx_b.send(2).ok();
            tokio::task::yield_now().await;
            tx_a.send(1).ok();
        });
        let (mut got_a, mut got_b) = (None, None);
        while got_a.is_none() || got_b.is_none() {
            tokio::select! {
                biased;
                v = &mut a, if got_a.is_none() => got_a = v.ok(),
                v = &mut b, if got_b.is_none() => got_b = v.ok(),
            }
        }
        assert_eq!((got_a, got_b), (Some(1), Some(2)));
        sender.await.expect("sender");
    }
}
