//! The broker's state as the publisher sees it: written by the connection supervisor and the
//! channel workers, read by the HTTP layer's readiness and admission checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::metrics::Metrics;

/// Broker state shared by the supervisor, the workers and the HTTP layer.
pub(super) struct Shared {
    pub(super) connected: AtomicBool,
    pub(super) blocked: AtomicBool,
    pub(super) open_channels: AtomicUsize,
    /// Raised by a worker whose channel the broker closed: the topology may be gone.
    pub(super) redeclare: tokio::sync::Notify,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            open_channels: AtomicUsize::new(0),
            redeclare: tokio::sync::Notify::new(),
            metrics,
        }
    }

    pub(super) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(connected));
    }

    /// A channel was closed under a batch (the exchange may be gone): not ready, and no
    /// publish is attempted, until the supervisor has declared the topology again.
    pub(super) fn topology_lost(&self) {
        self.set_connected(false);
        self.redeclare.notify_one();
    }

    pub(super) fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        self.metrics.broker_blocked.set(i64::from(blocked));
    }

    pub(super) fn channel_opened(&self) {
        self.open_channels.fetch_add(1, Ordering::SeqCst);
        self.metrics.open_channels.inc();
    }

    pub(super) fn channel_closed(&self) {
        self.open_channels.fetch_sub(1, Ordering::SeqCst);
        self.metrics.open_channels.dec();
    }
}
