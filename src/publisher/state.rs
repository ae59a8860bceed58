//! What the channel workers share: the connection's state (read, and told when a channel lost
//! the topology), how many confirm channels are open, whether the first channel is taking
//! every job, and the metrics they count into.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::amqp::LinkState;
use crate::metrics::Metrics;

/// Shared by the workers and read by the HTTP layer's readiness and admission checks.
pub(super) struct Shared {
    pub(super) link: Arc<LinkState>,
    open_channels: AtomicUsize,
    /// True while the first channel cannot take every job (it is full, or not serving): the
    /// other channels take jobs only then (`worker.rs` says why).
    pub(super) spill: watch::Sender<bool>,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    pub(super) fn new(link: Arc<LinkState>, metrics: Arc<Metrics>) -> Self {
        Self {
            link,
            open_channels: AtomicUsize::new(0),
            spill: watch::Sender::new(true),
            metrics,
        }
    }

    pub(super) fn open_channels(&self) -> usize {
        self.open_channels.load(Ordering::SeqCst)
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
