//! Graceful shutdown: the signal, the "shutting down" flag and the count of requests in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Tracks callback requests so shutdown can finish them before closing the broker.
#[derive(Default)]
pub struct Lifecycle {
    shutting_down: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

/// Held while a callback request is being handled.
pub struct InflightGuard<'a>(&'a Lifecycle);

impl Lifecycle {
    /// Admits a request, or `None` once shutdown has begun.
    pub fn enter(&self) -> Option<InflightGuard<'_>> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InflightGuard(self);
        (!self.is_shutting_down()).then_some(guard)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// From now on `enter` refuses and readiness is false.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Resolves when no admitted request is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn refuses_new_requests_and_waits_for_admitted_ones() {
        let lifecycle = std::sync::Arc::new(Lifecycle::default());
        let guard = lifecycle.enter().expect("admitted before shutdown");
        lifecycle.begin_shutdown();
        assert!(lifecycle.enter().is_none());
        let waiter = {
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move { lifecycle.wait_idle().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait for the admitted request");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle after the last request")
            .expect("task");
    }
}
