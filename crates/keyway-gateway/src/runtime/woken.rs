//! A future polled only once something it waits on has woken it. A session's end
//! (its token revoked, cut or expired, a reload it no longer fits, the gateway
//! stopping) is watched beside the relay that carries its bytes, in one `select!`,
//! which polls every branch at each of the task's wake-ups: without this, each read
//! and write of the session polled the five things its end waits on, for nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `inner`, polled on its first poll and then only after it has woken its task.
pub(crate) struct WhenWoken<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Flag>,
    /// `flag` as the waker `inner` is polled with, made once.
    waker: Waker,
}

/// What `inner` wakes: it notes the wake, then wakes the task that polls.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

// === impl WhenWoken ===

impl<F: Future> WhenWoken<F> {
    pub(crate) fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake after the read wakes this task.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

// === impl Flag ===

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Ready once `open` is set; counts its polls and keeps the last waker.
    #[derive(Default)]
    struct Gate {
        open: AtomicBool,
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
    }

    struct Wait(Arc<Gate>);

    impl Future for Wait {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.0.open.load(Ordering::SeqCst) {
                Poll::Ready("ended")
            } else {
                Poll::Pending
            }
        }
    }

    impl Gate {
        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_it_woke_the_task() {
        let gate = Arc::new(Gate::default());
        let mut w = WhenWoken::new(Wait(gate.clone()));
        let wakes = Arc::new(Wakes::default());
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);

        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Pending);
        assert_eq!(gate.polls.load(Ordering::SeqCst), 1);
        // The task woken by something else (the relay's bytes): not polled again.
        for _ in 0..10 {
            assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Pending);
        }
        assert_eq!(gate.polls.load(Ordering::SeqCst), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        // What it waits on wakes it: the task is woken, and the next poll ends it.
        gate.open();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Ready("ended"));
        assert_eq!(gate.polls.load(Ordering::SeqCst), 2);
    }

    /// Woken from another task while this one sleeps: the wake reaches the task
    /// that waits, and it ends (a lost wake would leave it waiting, and the timeout
    /// fail the test).
    #[tokio::test]
    async fn a_wake_from_another_task_ends_it() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let ended = WhenWoken::new({
            let notify = notify.clone();
            async move {
                notify.notified().await;
                "ended"
            }
        });
        let waiter = tokio::spawn(async move {
            let mut busy = tokio::time::interval(std::time::Duration::from_millis(1));
            let mut ticks = 0u32;
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    biased;
                    why = &mut ended => return (why, ticks),
                    _ = busy.tick(), if ticks < 5 => ticks += 1,
                }
            }
        });
        // Once the waiter has only `ended` left to wait on.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        notify.notify_one();
        let (why, ticks) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the wake reached the waiting task")
            .unwrap();
        assert_eq!((why, ticks), ("ended", 5));
    }
}
