//! [`Quiet`]: a future that is polled only after it asked to be.
//!
//! A connection task is woken for every streamed event, and every wake-up polls everything
//! the task waits on: the response body, but also the drain deadline and the shutdown signal.
//! Those two are `Notify`-based (`CancellationToken`, `Notify::notified`), and polling them
//! takes a mutex each time even when nothing happened. `Quiet` gives the inner future a waker
//! of its own and polls it again only once that waker was used (or on the first poll), so a
//! wake-up caused by data costs one atomic swap here instead of the inner future's locks.
//!
//! Written by hand: `futures` has per-future wakers only inside `FuturesUnordered`, which
//! allocates per push and cannot sit in a pinned field of a body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What the inner future's waker does: note the wake-up, then wake the task.
#[derive(Debug, Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// Polls `inner` on the first poll and afterwards only when `inner` woke its waker.
    #[derive(Debug)]
    pub struct Quiet<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        waker: Waker,
    }
}

impl<F: Future> Quiet<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Quiet {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Register first: a wake-up that lands after the check below still wakes this task.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking whoever polled it last when set.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: InnerWaker,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().expect("lock") = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type InnerWaker = Arc<std::sync::Mutex<Option<Waker>>>;

    /// A wrapped probe, its poll count, its readiness switch and the waker it registered.
    struct Rig {
        fut: Pin<Box<Quiet<Probe>>>,
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        inner_waker: InnerWaker,
    }

    fn probe() -> Rig {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None));
        let fut = Box::pin(Quiet::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        }));
        Rig {
            fut,
            polls,
            ready,
            inner_waker,
        }
    }

    #[test]
    fn polls_inner_only_after_its_own_wake_and_wakes_the_task() {
        let mut rig = probe();
        let fut = &mut rig.fut;
        let task = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            rig.polls.load(Ordering::SeqCst),
            1,
            "the first poll reaches the inner future"
        );
        for _ in 0..5 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            rig.polls.load(Ordering::SeqCst),
            1,
            "wake-ups for others skip it"
        );

        rig.ready.store(true, Ordering::SeqCst);
        let w = rig
            .inner_waker
            .lock()
            .expect("lock")
            .take()
            .expect("inner registered a waker");
        w.wake();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the inner wake-up reaches the task"
        );
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(rig.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wake_before_the_task_polls_again_is_not_lost() {
        let mut rig = probe();
        let fut = &mut rig.fut;
        let first = Arc::new(CountWake(AtomicUsize::new(0)));
        let second = Arc::new(CountWake(AtomicUsize::new(0)));
        let w1 = Waker::from(first.clone());
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&w1))
                .is_pending()
        );
        // The task moves to another waker; the inner future wakes afterwards.
        let w2 = Waker::from(second.clone());
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&w2))
                .is_pending()
        );
        rig.ready.store(true, Ordering::SeqCst);
        rig.inner_waker
            .lock()
            .expect("lock")
            .take()
            .expect("registered")
            .wake();
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the latest task waker is woken"
        );
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert!(fut.as_mut().poll(&mut Context::from_waker(&w2)).is_ready());
        assert_eq!(
            rig.polls.load(Ordering::SeqCst),
            2,
            "polled on the first poll and after its wake"
        );
    }
}
